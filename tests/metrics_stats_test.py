"""advsal_jax.metrics host statistics: Mann-Whitney U (scipy + brute force) and bootstrap CIs."""

import numpy as np
import pytest
import scipy.stats

from advsal_jax import metrics

_RNG = np.random.default_rng(5)


@pytest.mark.parametrize('method', ['auto', 'asymptotic', 'exact'])
def test_mann_whitney_matches_scipy_and_pair_counts(method):
  x = _RNG.normal(0.5, 1, size=12)
  y = np.concatenate([_RNG.normal(0, 1, size=9), x[:3]])  # shared values: ties across samples
  if method == 'exact':
    x, y = x[:8], y[:6]  # scipy's exact distribution is for samples without ties
  res = metrics.mann_whitney_u(x, y, method=method)
  want = scipy.stats.mannwhitneyu(x, y, alternative='two-sided', method=method)
  assert res.statistic == pytest.approx(float(want.statistic), abs=1e-12)
  assert res.pvalue == pytest.approx(float(want.pvalue), abs=1e-12)
  # Independent check of U and of the rank-biserial effect size by counting pairs.
  diff = x[:, None] - y[None, :]
  u = np.sum(diff > 0) + 0.5 * np.sum(diff == 0)
  assert res.statistic == pytest.approx(u, abs=1e-12)
  assert res.rank_biserial == pytest.approx(np.mean(np.sign(diff)), abs=1e-12)


def test_mann_whitney_extremes():
  x, y = np.arange(10.0) + 100, np.arange(10.0)
  res = metrics.mann_whitney_u(x, y)
  assert res.statistic == 100 and res.rank_biserial == 1.0 and res.pvalue < 1e-3
  assert metrics.mann_whitney_u(y, x).rank_biserial == -1.0
  same = metrics.mann_whitney_u(x, x)
  assert same.rank_biserial == 0.0 and same.pvalue == pytest.approx(1.0)


def test_bootstrap_ci_is_seeded_and_has_normal_theory_width():
  values = _RNG.normal(2.0, 1.5, size=400)
  ci = metrics.bootstrap_ci(values, rng=0, n_resamples=2000)
  assert ci == metrics.bootstrap_ci(values, rng=0, n_resamples=2000)
  assert ci != metrics.bootstrap_ci(values, rng=1, n_resamples=2000)
  assert ci.mean == pytest.approx(values.mean())
  assert ci.low < ci.mean < ci.high
  # For a mean of n normal values the 95% interval is about mean +- 1.96 s / sqrt(n).
  half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
  assert ci.low == pytest.approx(values.mean() - half, abs=0.15 * half)
  assert ci.high == pytest.approx(values.mean() + half, abs=0.15 * half)
  narrow = metrics.bootstrap_ci(values, rng=np.random.default_rng(0), confidence=0.5,
                                method='percentile', n_resamples=2000)
  assert ci.low < narrow.low < narrow.high < ci.high


def test_bootstrap_ci_of_constant_sample_is_degenerate():
  assert metrics.bootstrap_ci(np.full(20, 0.25), rng=0) == (0.25, 0.25, 0.25)


def test_errors():
  with pytest.raises(ValueError, match='x contains NaN'):
    metrics.mann_whitney_u([1.0, np.nan], [1.0, 2.0])
  with pytest.raises(ValueError, match='y must be 1-D'):
    metrics.mann_whitney_u([1.0, 2.0], np.ones((2, 2)))
  with pytest.raises(ValueError, match='values must be 1-D with at least 2'):
    metrics.bootstrap_ci([1.0], rng=0)
  with pytest.raises(TypeError, match='rng'):
    metrics.bootstrap_ci([1.0, 2.0], rng=None)
  with pytest.raises(ValueError, match='confidence'):
    metrics.bootstrap_ci([1.0, 2.0], rng=0, confidence=95)
  with pytest.raises(ValueError, match='method'):
    metrics.bootstrap_ci([1.0, 2.0], rng=0, method='studentized')
