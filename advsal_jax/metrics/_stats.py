"""Host-side statistics over per-example metric values: thin, validated wrappers of scipy.

Study 003 tests whether L2 distances between the saliency maps of natural and adversarial
images come from the same distribution as those between different natural images with a
two-sided Mann-Whitney U test; the studies report means, here with bootstrap confidence
intervals. These run once per table cell on a few thousand numbers, so they stay in
numpy/scipy rather than JAX.

References:
  Mann & Whitney, On a test of whether one of two random variables is stochastically larger
    than the other, Ann. Math. Statist. 18(1), 1947.
  Kerby, The simple difference formula: an approach to teaching nonparametric correlation,
    Comprehensive Psychology 3, 2014 (rank-biserial correlation).
  Efron & Tibshirani, An Introduction to the Bootstrap, 1993 (BCa intervals).
"""

from typing import NamedTuple

import numpy as np
import scipy.stats
from jax.typing import ArrayLike

BOOTSTRAP_METHODS = ('BCa', 'percentile', 'basic')


class MannWhitneyResult(NamedTuple):
  """Result of ``mann_whitney_u``.

  Attributes:
    statistic: U of the first sample: #{(i, j): x_i > y_j} + 0.5 #{(i, j): x_i == y_j}, in
      [0, n_x * n_y].
    pvalue: two-sided p-value, in [0, 1].
    rank_biserial: effect size 2 U / (n_x n_y) - 1 = P(x > y) - P(x < y), in [-1, 1];
      positive when ``x`` tends to be larger.
  """
  statistic: float
  pvalue: float
  rank_biserial: float


class MeanCI(NamedTuple):
  """A sample mean and its bootstrap confidence interval."""
  mean: float
  low: float
  high: float


def _check_sample(x: ArrayLike, name: str, min_size: int = 1) -> np.ndarray:
  x = np.asarray(x)
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise TypeError(f'{name} must be real numbers; got dtype {x.dtype}.')
  if x.ndim != 1 or x.shape[0] < min_size:
    raise ValueError(f'{name} must be 1-D with at least {min_size} values; got shape {x.shape}.')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} contains NaN or infinite values; drop undefined pairs first '
                     '(e.g. x[np.isfinite(x)]) and report how many.')
  return x.astype(np.float64)


def mann_whitney_u(x: ArrayLike, y: ArrayLike, *, method: str = 'auto',
                   use_continuity: bool = True) -> MannWhitneyResult:
  """Two-sided Mann-Whitney U test of two independent samples, with its effect size.

  ``statistic`` and ``pvalue`` are those of ``scipy.stats.mannwhitneyu(x, y,
  alternative='two-sided', method=method, use_continuity=use_continuity)``.

  Args:
    x: f[n_x] sample, e.g. L2 distances between clean and adversarial saliency maps; finite.
    y: f[n_y] sample, e.g. L2 distances between maps of different clean images; finite.
    method: scipy's p-value method: 'auto' (exact for small samples without ties,
      asymptotic otherwise), 'exact' or 'asymptotic'.
    use_continuity: continuity correction of the asymptotic p-value.

  Returns:
    ``MannWhitneyResult(statistic, pvalue, rank_biserial)`` as Python floats. Two samples of
    one common value give ``U = n_x n_y / 2``, p-value 1 and rank-biserial 0.

  Raises:
    ValueError: a sample is not 1-D, empty, or has NaN/inf.
    TypeError: a sample is not real-valued.
  """
  x, y = _check_sample(x, 'x'), _check_sample(y, 'y')
  res = scipy.stats.mannwhitneyu(x, y, use_continuity=use_continuity, alternative='two-sided',
                                 method=method)
  u = float(res.statistic)
  return MannWhitneyResult(statistic=u, pvalue=float(res.pvalue),
                           rank_biserial=2.0 * u / (x.shape[0] * y.shape[0]) - 1.0)


def bootstrap_ci(values: ArrayLike, *, rng: int | np.random.Generator,
                 confidence: float = 0.95, n_resamples: int = 9999,
                 method: str = 'BCa') -> MeanCI:
  """Bootstrap confidence interval for the mean of ``values`` (``scipy.stats.bootstrap``).

  Args:
    values: f[n] per-example metric values, n >= 2; finite (drop NaN pairs first).
    rng: a seed or ``np.random.Generator``: the resampling is reproducible only through it.
    confidence: confidence level in (0, 1).
    n_resamples: bootstrap resamples, >= 1.
    method: 'BCa' (bias-corrected and accelerated), 'percentile' or 'basic'.

  Returns:
    ``MeanCI(mean, low, high)`` as Python floats, low <= high. A constant sample gives the
    degenerate interval (v, v) (scipy's BCa would return NaN there).

  Raises:
    ValueError: ``values`` not 1-D, fewer than 2 values, NaN/inf; bad ``confidence``,
      ``n_resamples`` or ``method``.
    TypeError: ``values`` not real-valued, or ``rng`` not a seed or Generator.
  """
  x = _check_sample(values, 'values', min_size=2)
  if not 0 < confidence < 1:
    raise ValueError(f'confidence must be in (0, 1); got {confidence!r}.')
  if not isinstance(n_resamples, int) or n_resamples < 1:
    raise ValueError(f'n_resamples must be a positive int; got {n_resamples!r}.')
  if method not in BOOTSTRAP_METHODS:
    raise ValueError(f'method must be one of {BOOTSTRAP_METHODS}; got {method!r}.')
  if isinstance(rng, bool) or not isinstance(rng, (int, np.integer, np.random.Generator)):
    raise TypeError(f'rng must be an int seed or a np.random.Generator; got {rng!r}.')
  mean = float(np.mean(x))
  if np.all(x == x[0]):
    return MeanCI(mean=mean, low=mean, high=mean)
  res = scipy.stats.bootstrap((x,), np.mean, n_resamples=n_resamples, vectorized=True,
                              confidence_level=confidence, method=method,
                              rng=np.random.default_rng(rng))
  ci = res.confidence_interval
  return MeanCI(mean=mean, low=float(ci.low), high=float(ci.high))
