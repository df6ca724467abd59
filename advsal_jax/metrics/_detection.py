"""Detection metrics on the host: AUROC and the true-positive rate at a false-positive rate.

A detector gives every example a real score, larger = more likely positive (in
``advsal_jax.detection``: adversarial). Both metrics depend on the scores only through their
order, and both count tied scores the standard way: AUROC counts a tied (positive, negative)
pair as half a correct pair, which makes it the Mann-Whitney U statistic of the positive
scores against the negative ones divided by ``n_pos * n_neg``; the TPR at a given FPR uses
thresholds ``score >= t``, so tied examples are always on the same side of a threshold. They
run once per evaluation on a few thousand scores, so they stay in numpy/scipy.

References:
  Hanley & McNeil, The meaning and use of the area under a receiver operating characteristic
    (ROC) curve, Radiology 143(1), 1982 (AUROC = Mann-Whitney U / (n_pos n_neg)).
  Fawcett, An introduction to ROC analysis, Pattern Recognition Letters 27(8), 2006.
"""

import numpy as np
import scipy.stats
from jax.typing import ArrayLike


def _check_scores_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """Validated ``(scores f64[N], positive bool[N])`` with both classes present.

  Raises:
    TypeError: non-real ``scores``; ``labels`` neither bool nor integer.
    ValueError: ``scores`` not 1-D or with NaN/inf; ``labels`` of another shape, with values
      other than 0 and 1, or without a positive or a negative example.
  """
  scores, labels = np.asarray(scores), np.asarray(labels)
  if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
    raise TypeError(f'scores must be real numbers, got dtype {scores.dtype}.')
  if scores.ndim != 1:
    raise ValueError(f'scores must be 1-D f32[N], got shape {scores.shape}.')
  if not np.all(np.isfinite(scores)):
    raise ValueError('scores contains NaN or infinite values.')
  if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f'labels must be bool or integer 0/1 (1 = positive), got dtype '
                    f'{labels.dtype}.')
  if labels.shape != scores.shape:
    raise ValueError(f'labels must have the shape of scores {scores.shape}, got {labels.shape}.')
  if not np.isin(labels, (0, 1)).all():
    raise ValueError(f'labels must be 0 or 1 (1 = positive), got values {np.unique(labels)}.')
  positive = labels.astype(bool)
  if positive.all() or not positive.any():
    raise ValueError(f'labels must hold at least one positive and one negative example, got '
                     f'{int(positive.sum())} positives of {positive.size}.')
  return scores.astype(np.float64), positive


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
  """Area under the ROC curve: P(positive score > negative score) + P(tie) / 2.

  Computed from average ranks: ``(sum of the positives' ranks - n_pos (n_pos + 1) / 2) /
  (n_pos n_neg)``, i.e. ``scipy.stats.mannwhitneyu(pos, neg).statistic / (n_pos n_neg)``.

  Args:
    scores: f[N] finite scores, larger = more likely positive.
    labels: bool[N] or integer 0/1 [N], 1 = positive; both classes present.

  Returns:
    AUROC in [0, 1] as a Python float: 1 when every positive outscores every negative, 0.5
    for scores that carry no information (e.g. all equal).

  Raises:
    ValueError: ``scores`` not 1-D or not finite; ``labels`` of another shape, not 0/1, or
      without both classes.
    TypeError: non-real ``scores``, ``labels`` neither bool nor integer.
  """
  scores, positive = _check_scores_labels(scores, labels)
  ranks = scipy.stats.rankdata(scores)  # Ties get their average rank.
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
  return float(u / (n_pos * n_neg))


def tpr_at_fpr(scores: ArrayLike, labels: ArrayLike, fpr: float = 0.05) -> float:
  """The highest true-positive rate of a rule ``score >= t`` whose false-positive rate <= ``fpr``.

  The thresholds ``t`` are the distinct scores and +inf (no example flagged, TPR = FPR = 0),
  so the result is a point of the empirical ROC curve that one threshold achieves, without
  interpolation; tied scores are flagged together.

  Args:
    scores: f[N] finite scores, larger = more likely positive.
    labels: bool[N] or integer 0/1 [N], 1 = positive; both classes present.
    fpr: the largest false-positive rate allowed, in [0, 1] (default 5 %).

  Returns:
    TPR in [0, 1] as a Python float.

  Raises:
    ValueError: ``scores`` not 1-D or not finite; ``labels`` of another shape, not 0/1, or
      without both classes; ``fpr`` outside [0, 1].
    TypeError: non-real ``scores``, ``labels`` neither bool nor integer.
  """
  scores, positive = _check_scores_labels(scores, labels)
  if isinstance(fpr, bool) or not isinstance(fpr, (int, float, np.integer, np.floating)) or (
      not 0.0 <= fpr <= 1.0):
    raise ValueError(f'fpr must be a number in [0, 1], got {fpr!r}.')
  neg, pos = np.sort(scores[~positive]), np.sort(scores[positive])
  thresholds = np.unique(scores)
  false_pos = neg.size - np.searchsorted(neg, thresholds, side='left')  # #{neg >= t}
  true_pos = pos.size - np.searchsorted(pos, thresholds, side='left')
  allowed = false_pos / neg.size <= fpr  # A rounded quotient, compared like the user's fpr.
  return float(true_pos[allowed].max(initial=0) / pos.size)
