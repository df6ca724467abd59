"""Aggregates of a tidy per-example table: mean, std, undefined count, bootstrap CI, by group.

A *table* is a mapping of column name -> 1-D array, all of one length (one row per example,
or per example x variant x method): the long format every study's per-example file uses.
"""

import itertools
from typing import Any, Mapping, Sequence

import numpy as np

from advsal_jax import metrics

Table = Mapping[str, np.ndarray]
SPLITS = {'all': None, 'success': True, 'failed': False}
"""The attack-outcome splits ``by_success`` reports."""


def describe(values: Any, *, seed: int, n_resamples: int = 1000,
             confidence: float = 0.95) -> dict[str, float] | None:
  """n, NaN count, mean, std and a percentile-bootstrap CI of the mean of the finite values.

  Undefined values (NaN, e.g. the rank correlation of a constant map) are counted in
  ``n_undefined`` and left out of the statistics.

  Args:
    values: numbers of any shape (flattened).
    seed: the bootstrap's seed.
    n_resamples: bootstrap resamples.
    confidence: the CI's level.

  Returns:
    ``{'n', 'n_undefined', 'mean', 'std' (ddof 1; 0 for one value), 'ci_low', 'ci_high'}``,
    or None when no value is finite.
  """
  values = np.asarray(values, np.float64).ravel()
  finite = np.isfinite(values)
  undefined = int((~finite).sum())
  values = values[finite]
  if len(values) == 0:
    return None
  out = {'n': int(len(values)), 'n_undefined': undefined, 'mean': float(values.mean()),
         'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0}
  if len(values) > 1:
    ci = metrics.bootstrap_ci(values, rng=seed, n_resamples=n_resamples,
                              confidence=confidence, method='percentile')
    out.update(ci_low=ci.low, ci_high=ci.high)
  else:
    out.update(ci_low=out['mean'], ci_high=out['mean'])
  return out


def _check_table(table: Table, columns: Sequence[str]):
  lengths = {k: len(np.asarray(v)) for k, v in table.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f'table: columns must have one length, got {lengths}.')
  missing = [c for c in columns if c not in table]
  if missing:
    raise ValueError(f'table: no column {missing}; it has {sorted(table)}.')


def by_success(values: Any, success: Any, *, seed: int) -> dict[str, dict[str, float] | None]:
  """``describe`` of all values, of those where ``success`` holds and of the others.

  Args:
    values: f[N] values.
    success: bool[N], e.g. whether the attack reached its goal.
    seed: the bootstrap's seed.

  Returns:
    ``{'all': ..., 'success': ..., 'failed': ...}`` (None for an empty split).
  """
  values, success = np.asarray(values).ravel(), np.asarray(success, bool).ravel()
  if values.shape != success.shape:
    raise ValueError(f'success must match values, got {success.shape} and {values.shape}.')
  return {split: describe(values if want is None else values[success == want], seed=seed)
          for split, want in SPLITS.items()}


def group_by(table: Table, values: Sequence[str], by: Sequence[str], *, seed: int,
             where: np.ndarray | None = None) -> list[dict[str, Any]]:
  """One row per group of ``by`` and value column, with ``describe``'s statistics.

  Args:
    table: the per-example table.
    values: the columns to aggregate.
    by: the grouping columns (groups in order of first appearance; none: one group).
    seed: the bootstrap's seed.
    where: optional bool[N] row filter.

  Returns:
    Tidy rows ``{**group, 'value': column, 'n', 'n_undefined', 'mean', 'std', 'ci_low',
    'ci_high'}`` (statistics None-valued for a group with no finite value).
  """
  _check_table(table, [*values, *by])
  n = len(np.asarray(table[values[0] if values else by[0]]))
  keep = np.ones(n, bool) if where is None else np.asarray(where, bool)
  keys = list(zip(*(np.asarray(table[c])[keep].tolist() for c in by))) if by else [()] * int(
      keep.sum())
  groups = list(dict.fromkeys(keys))
  cols = [np.asarray(table[c])[keep] for c in by]
  rows = []
  for group, value in itertools.product(groups, values):
    rows_in = np.ones(int(keep.sum()), bool)
    for col, g in zip(cols, group):
      rows_in &= col == g
    stats = describe(np.asarray(table[value])[keep][rows_in], seed=seed)
    rows.append({**dict(zip(by, group)), 'value': value,
                 **(stats or dict.fromkeys(('n', 'n_undefined', 'mean', 'std', 'ci_low',
                                            'ci_high')))})
  return rows
