"""AUROC and TPR at a fixed FPR against brute-force numpy and scipy's Mann-Whitney U, with ties."""

import numpy as np
import pytest
import scipy.stats

from advsal_jax import metrics


def _auroc_by_pairs(scores, labels):
  """Counts every (positive, negative) pair: 1 if the positive scores higher, 1/2 on a tie."""
  pos, neg = scores[labels == 1], scores[labels == 0]
  wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
  return wins / (pos.size * neg.size)


def _tpr_by_thresholds(scores, labels, fpr):
  """Tries every threshold ``score >= t`` (t a score, or above all) and keeps the best allowed."""
  pos, neg = scores[labels == 1], scores[labels == 0]
  best = 0.0
  for t in [*scores, np.inf]:
    if (neg >= t).mean() <= fpr:
      best = max(best, (pos >= t).mean())
  return best


def _cases():
  rng = np.random.default_rng(0)
  cases = []
  for n, grid in [(7, None), (30, 4), (200, None), (101, 3), (50, 1)]:
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)  # Both classes.
    scores = rng.normal(size=n) + labels
    if grid:  # Few distinct values: many ties, across and within classes.
      scores = np.round(scores * grid / 3)
    cases.append((scores.astype(np.float32), labels))
  return cases


@pytest.mark.parametrize('case', range(5))
def test_auroc_counts_pairs_and_equals_mann_whitney(case):
  scores, labels = _cases()[case]
  got = metrics.auroc(scores, labels)
  np.testing.assert_allclose(got, _auroc_by_pairs(scores, labels), rtol=1e-12)
  pos, neg = scores[labels == 1].astype(np.float64), scores[labels == 0].astype(np.float64)
  u = scipy.stats.mannwhitneyu(pos, neg, alternative='two-sided').statistic
  np.testing.assert_allclose(got, u / (pos.size * neg.size), rtol=1e-12)
  # Bool labels, flipped scores and swapped classes.
  assert metrics.auroc(scores, labels.astype(bool)) == got
  np.testing.assert_allclose(metrics.auroc(-scores, labels), 1 - got, rtol=1e-12)
  np.testing.assert_allclose(metrics.auroc(scores, 1 - labels), 1 - got, rtol=1e-12)


def test_auroc_extremes_and_ties():
  labels = np.array([0, 0, 1, 1])
  assert metrics.auroc([0.1, 0.2, 0.3, 0.4], labels) == 1.0
  assert metrics.auroc([0.4, 0.3, 0.2, 0.1], labels) == 0.0
  assert metrics.auroc([1.0, 1.0, 1.0, 1.0], labels) == 0.5
  # One of four pairs tied, the other three won: (3 + 1/2) / 4.
  assert metrics.auroc([0.0, 0.5, 0.5, 0.9], labels) == 0.875


@pytest.mark.parametrize('case', range(5))
@pytest.mark.parametrize('fpr', [0.0, 0.05, 0.1, 0.29, 0.5, 1.0])
def test_tpr_at_fpr_equals_the_best_allowed_threshold(case, fpr):
  scores, labels = _cases()[case]
  assert metrics.tpr_at_fpr(scores, labels, fpr) == _tpr_by_thresholds(scores, labels, fpr)


def test_tpr_at_fpr_flags_ties_together():
  labels = np.array([0, 0, 0, 0, 1, 1])
  # The top score is shared by a negative and a positive: flagging the positive costs 1/4 FPR.
  scores = np.array([0.0, 0.1, 0.6, 0.9, 0.9, 0.5])
  assert metrics.tpr_at_fpr(scores, labels, 0.2) == 0.0
  assert metrics.tpr_at_fpr(scores, labels, 0.25) == 0.5
  assert metrics.tpr_at_fpr(scores, labels, 0.5) == 1.0
  assert metrics.tpr_at_fpr(scores, labels) == 0.0  # Default 5 %.


@pytest.mark.parametrize('fn', [metrics.auroc, metrics.tpr_at_fpr])
def test_errors_name_the_argument(fn):
  scores, labels = np.array([0.1, 0.2, 0.3]), np.array([0, 1, 1])
  with pytest.raises(ValueError, match='scores contains NaN'):
    fn(np.array([0.1, np.nan, 0.3]), labels)
  with pytest.raises(ValueError, match=r'scores must be 1-D'):
    fn(scores[None], labels)
  with pytest.raises(TypeError, match='scores must be real'):
    fn(np.array(['a', 'b', 'c']), labels)
  with pytest.raises(ValueError, match='labels must have the shape of scores'):
    fn(scores, labels[:2])
  with pytest.raises(ValueError, match='labels must be 0 or 1'):
    fn(scores, np.array([0, 1, 2]))
  with pytest.raises(TypeError, match='labels must be bool or integer'):
    fn(scores, labels.astype(np.float32))
  with pytest.raises(ValueError, match='labels must hold at least one positive and one'):
    fn(scores, np.ones(3, np.int32))
  if fn is metrics.tpr_at_fpr:
    with pytest.raises(ValueError, match=r'fpr must be a number in \[0, 1\]'):
      fn(scores, labels, 1.5)
