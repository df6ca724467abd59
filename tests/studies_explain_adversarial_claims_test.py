"""Study 001's class-separation claim: its verdict rule and its evidence, from per-pair data."""

import numpy as np
import pytest

from advsal_jax.studies import explain_adversarial_config as settings
from advsal_jax.studies import explain_adversarial_summary as study_summary

_CONFIG = {'pair_classes': 3, 'seed': 0, 'overlap_percent': 10.0, 'methods': settings.METHODS}


def _pairs(rng, n, *, egbp_drop, first_order, agreement, below):
  """Synthetic pairs-stage results for n images (3 pairs each), with the given means."""
  def col(mean, spread=0.05):
    return (mean + spread * rng.normal(size=(n, 3))).astype(np.float32)

  res = {'index': np.arange(n), 'label': np.zeros(n, np.int64),
         'top_classes': np.tile([0, 1, 2], (n, 1)), 'seconds': np.zeros(n),
         'gbp_on_fraction': col(0.5, 0.01)}
  res.update({c: col(0.5) for c in study_summary.PAIR_COLUMNS})
  res.update({'egbp_margin_drop': col(egbp_drop), 'gbp_margin_drop': col(1.0),
              'random_margin_drop': col(1.0), 'egbp_first_order_drop': col(first_order),
              'random_first_order_drop': col(0.0), 'egbp_gradient_agreement': col(agreement),
              'gradient_positive_share': col(0.5), 'egbp_below_fill': col(below),
              'below_fill_share': col(0.5)})
  return {'pairs': res}


def _claim(summary):
  claim, = [c for c in summary['claims'] if c['text'].startswith('Enhanced GBP separates')]
  return claim


@pytest.mark.parametrize('egbp_drop,verdict', [(2.0, 'holds'), (1.0, 'does not hold'),
                                               (0.3, 'does not hold')])
def test_the_verdict_follows_the_paired_margin_drops(egbp_drop, verdict):
  res = _pairs(np.random.default_rng(0), 50, egbp_drop=egbp_drop, first_order=0.0,
               agreement=0.5, below=0.5)
  claim = _claim(study_summary.summarize(res, _CONFIG))
  assert claim['verdict'] == verdict
  assert 'not a sign or class error' not in claim['why']  # no agreement above the image's


def test_a_map_that_points_right_but_loses_to_random_says_why():
  # Margin gradient positive on 70 % of EGBP's entries (50 % over the image), 65 % of them
  # darker than the fill, first-order drop -2 against random's 0: the evidence is given.
  res = _pairs(np.random.default_rng(1), 50, egbp_drop=0.5, first_order=-2.0, agreement=0.7,
               below=0.65)
  summary = study_summary.summarize(res, _CONFIG)
  claim = _claim(summary)
  assert claim['verdict'] == 'does not hold'
  assert 'not a sign or class error' in claim['why']
  ent = summary['class_discriminative']['egbp_entries']
  assert f"{ent['egbp_gradient_agreement']['mean']:.3f}" in claim['why']
  assert f"{ent['egbp_below_fill']['mean']:.3f}" in claim['why']
  np.testing.assert_allclose(ent['egbp_gradient_agreement']['mean'],
                             res['pairs']['egbp_gradient_agreement'].mean(), rtol=1e-6)
  # The same drops with a map whose entries share the gradient's sign no more than the
  # image's (a reversed or unrelated map): no such explanation.
  res = _pairs(np.random.default_rng(1), 50, egbp_drop=0.5, first_order=-2.0, agreement=0.5,
               below=0.65)
  assert 'not a sign or class error' not in _claim(study_summary.summarize(res, _CONFIG))['why']
