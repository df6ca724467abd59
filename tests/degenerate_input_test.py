"""Degenerate but legal input has defined answers.

* Constant and all-zero maps through every metric: NaN where the metric documents an undefined
  value (a correlation with a constant map), otherwise the closed form; never a confident
  correlation. ``bootstrap_ci`` of a constant sample is asserted in
  ``metrics_stats_test.py::test_bootstrap_ci_of_constant_sample_is_degenerate``.
* A model whose logits do not depend on the input (zero gradient) through every registered
  saliency method: finite maps, all zero for every attribution family (the dummy axiom), a
  zero heatmap, and then no correlation.
* A batch of one through every attack equals that example's row of a larger batch (the
  saliency methods' batch of one is asserted in ``saliency_contract_test.py::test_contract``).
* LIME on images of one segment (given, or found by the segmentation of a constant image):
  the surrogate's coefficient and intercept equal the one-feature weighted ridge in closed
  form, rebuilt from the documented sampling.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks
from advsal_jax import metrics
from advsal_jax import saliency

from testing_utils import grid_segments, TinyNet

B, H, W, C, K = 2, 8, 8, 3, 3
LAYER = 'features'

_RNG = np.random.default_rng(0)
_RANDOM = _RNG.uniform(size=(1, 16, 16)).astype(np.float32)
_ZERO = np.zeros((1, 16, 16), np.float32)
_N = _ZERO.size


def _const(value: float) -> np.ndarray:
  return np.full((1, 16, 16), value, np.float32)


# Metrics on constant and all-zero maps.

# name -> [(function of the maps, inputs, expected value (NaN: undefined))].
_SSIM_C1, _SSIM_C2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
_LUMINANCE = (2 * 0.2 * 0.6 + _SSIM_C1) / (0.2**2 + 0.6**2 + _SSIM_C1)
METRIC_CASES = {
    'spearman': [(metrics.spearman, (_const(0.3), _RANDOM), np.nan),
                 (metrics.spearman, (_ZERO, _ZERO), np.nan)],
    'pearson': [(metrics.pearson, (_RANDOM, _const(0.3)), np.nan),
                (metrics.pearson, (_ZERO, _ZERO), np.nan)],
    'cosine': [(metrics.cosine, (_ZERO, _RANDOM), np.nan),
               (metrics.cosine, (_const(0.3), _RANDOM),
                _RANDOM.sum() / (np.sqrt(_N) * np.linalg.norm(_RANDOM)))],
    'l2_distance': [(metrics.l2_distance, (_const(0.2), _const(0.7)), 0.5 * np.sqrt(_N)),
                    (functools.partial(metrics.l2_distance, normalize='minmax'),
                     (_const(0.2), _const(0.7)), 0.0),
                    (functools.partial(metrics.l2_distance, normalize='l2'), (_ZERO, _RANDOM),
                     1.0)],
    'ssim': [(functools.partial(metrics.ssim, data_range=1.0), (_const(0.4), _const(0.4)), 1.0),
             (functools.partial(metrics.ssim, data_range=1.0), (_const(0.2), _const(0.6)),
              _LUMINANCE)],
    'mean_ssim': [(functools.partial(metrics.mean_ssim, data_range=1.0), (_ZERO, _ZERO), 1.0),
                  (functools.partial(metrics.mean_ssim, data_range=1.0),
                   (_const(0.2), _const(0.6)), _LUMINANCE)],
    'hog': [(metrics.hog, (_const(0.5),), 0.0)],
    'hog_pearson': [(metrics.hog_pearson, (_const(0.5), _RANDOM), np.nan)],
    'hog_spearman': [(metrics.hog_spearman, (_RANDOM, _ZERO), np.nan)],
    'top_k_mask': [(lambda m: metrics.top_k_mask(m, 5), (_const(0.5),),
                    (np.arange(_N) < 5).reshape(1, 16, 16))],
    'jaccard': [(metrics.jaccard, (_ZERO > 0, _ZERO > 0), 1.0)],
    'hamming_likeness': [(metrics.hamming_likeness, (_ZERO > 0, _ZERO > 0), 1.0),
                         (metrics.hamming_likeness, (_ZERO > 0, _ZERO == 0), 0.0)],
    'sim_ratio': [(metrics.sim_ratio, (_ZERO, _ZERO), 1.0),
                  (metrics.sim_ratio, (_ZERO, _const(0.5)), 0.0)],
    'avg_diff': [(metrics.avg_diff, (_ZERO, _ZERO), 0.0),
                 (metrics.avg_diff, (_ZERO, _const(0.5)), 1.0)],
    'l0_norm': [(metrics.l0_norm, (_ZERO,), 0.0)],
    'l2_norm': [(metrics.l2_norm, (_ZERO,), 0.0)],
    'linf_norm': [(metrics.linf_norm, (_ZERO,), 0.0)],
    'mann_whitney_u': [(lambda x, y: tuple(metrics.mann_whitney_u(x, y)),
                        (np.zeros(5), np.zeros(7)), (5 * 7 / 2, 1.0, 0.0))],
    # Constant scores carry no information: chance AUROC; flagging any flags every negative.
    'auroc': [(metrics.auroc, (np.zeros(6), np.arange(6) % 2), 0.5)],
    'tpr_at_fpr': [(metrics.tpr_at_fpr, (np.zeros(6), np.arange(6) % 2), 0.0),
                   (lambda s, y: metrics.tpr_at_fpr(s, y, 1.0), (np.zeros(6), np.arange(6) % 2),
                    1.0)],
}
# Exported metric names without a case here, and why.
NOT_METRICS = {'MannWhitneyResult': 'result type', 'MeanCI': 'result type',
               'bootstrap_ci': 'constant sample: metrics_stats_test.py::'
                               'test_bootstrap_ci_of_constant_sample_is_degenerate'}


def test_every_metric_has_a_degenerate_case():
  assert set(METRIC_CASES) | set(NOT_METRICS) == set(metrics.__all__)


@pytest.mark.parametrize('name', sorted(METRIC_CASES))
def test_constant_and_zero_maps_give_the_documented_value(name):
  for fn, inputs, want in METRIC_CASES[name]:
    got = fn(*inputs)
    if isinstance(want, float) and np.isnan(want):
      assert np.isnan(np.asarray(got)).all(), f'{name}: a confident {got} where NaN is documented'
    else:
      np.testing.assert_allclose(np.asarray(got, np.float64),
                                 np.broadcast_to(want, np.shape(got)), rtol=1e-5, atol=1e-6)


# Saliency of a model whose logits do not depend on its input.

@pytest.fixture(scope='module')
def flat_model():
  """TinyNet with every weight zero and distinct logit biases: logits constant in x."""
  model = TinyNet(num_classes=K)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, H, W, C)))
  variables = jax.tree.map(jnp.zeros_like, variables)
  variables['params']['logits']['bias'] = jnp.asarray([0.5, -1.0, 2.0])
  x = jax.random.uniform(jax.random.key(1), (B, H, W, C))
  masker = saliency.Masker(model, ('stem', LAYER), width=4)
  masker_vars = saliency.init_masker(masker, variables, x, key=jax.random.key(2))
  return model, variables, x, (masker, masker_vars)


_HYPER = {'smoothgrad': {'num_samples': 3}, 'integrated_gradients': {'num_steps': 3},
          'lime': {'num_samples': 16, 'segments': grid_segments(B, H, W)},
          'gbvs': {'grid_size': 8}}
# Family -> what a constant-logit model gets: the attribution families are exactly zero; a
# mask is whatever the masker predicts, in [0, 1]; a label-free map does not see the model.
_ZERO_FAMILIES = {'gradient', 'cam', 'perturbation'}
_OTHER_FAMILIES = {'mask', 'label_free'}


def test_every_family_has_an_expectation():
  assert set(saliency.FAMILIES) == _ZERO_FAMILIES | _OTHER_FAMILIES


@pytest.mark.parametrize('name', sorted(saliency.REGISTRY))
def test_zero_gradient_model_gives_finite_documented_maps(name, flat_model):
  model, variables, x, (masker, masker_vars) = flat_model
  np.testing.assert_array_equal(model.apply(variables, x), [[0.5, -1.0, 2.0]] * B)
  apply_fn, params = (masker.apply, masker_vars) if name in saliency.MASKER_METHODS else (
      model.apply, variables)
  attr = np.asarray(saliency.explain(name, apply_fn, params, x, jnp.asarray([0, 2]),
                                     key=jax.random.key(3), layer=LAYER,
                                     **_HYPER.get(name, {})))
  assert np.isfinite(attr).all()
  family = saliency.REGISTRY[name].family
  if family in _ZERO_FAMILIES:
    np.testing.assert_array_equal(attr, 0.0)
    maps = saliency.heatmap(attr, family)
    np.testing.assert_array_equal(maps, 0.0)  # normalize: an all-zero map stays zero
    assert np.isnan(np.asarray(metrics.spearman(maps, maps))).all()
  elif family == 'mask':
    assert attr.min() >= 0 and attr.max() <= 1


# A batch of one through every attack.

_ATTACK_KWARGS = {
    'fgsm': dict(eps=0.1),
    'bim': dict(eps=0.1, step_size=0.05, num_steps=3),
    'pgd': dict(eps=0.1, step_size=0.05, num_steps=3, key=jax.random.key(4)),
    'mim': dict(eps=0.1, step_size=0.05, num_steps=3),
    'carlini_wagner_l2': dict(binary_search_steps=2, max_iterations=10, initial_const=1.0),
    'deepfool': dict(max_iter=5),
    'jsma': dict(targeted=True, gamma=0.2),
}


@pytest.fixture(scope='module')
def tiny_net():
  model = TinyNet(num_classes=K)
  variables = jax.jit(model.init)(jax.random.key(5), jnp.zeros((1, H, W, C)))
  x = jax.random.uniform(jax.random.key(6), (3, H, W, C))
  return model, variables, x, jnp.asarray([0, 1, 2], jnp.int32)


def test_every_attack_has_a_batch_of_one_case():
  assert set(_ATTACK_KWARGS) == set(attacks.ATTACKS)


@pytest.mark.parametrize('name', sorted(_ATTACK_KWARGS))
def test_a_batch_of_one_equals_its_row_of_the_batch(name, tiny_net):
  model, variables, x, labels = tiny_net
  attack = functools.partial(attacks.ATTACKS[name], model.apply, variables,
                             **_ATTACK_KWARGS[name])
  one = np.asarray(attack(x[1:2], labels[1:2]))
  assert one.shape == (1, H, W, C) and np.isfinite(one).all()
  assert one.min() >= 0 and one.max() <= 1
  if name == 'pgd':
    # The random start is drawn for the batch's shape, so rows do not match across batch
    # sizes; the batch of one stays in its eps-ball.
    assert np.abs(one - np.asarray(x[1:2])).max() <= 0.1 + 1e-6
  else:
    np.testing.assert_allclose(one[0], np.asarray(attack(x, labels))[1], rtol=0, atol=1e-5)


# LIME on images of one segment.

def _one_segment_reference(apply_fn, params, x, target, key, *, num_samples, kernel_width,
                           ridge_alpha):
  """The documented LIME sampling for S = 1, and the one-feature weighted ridge in numpy."""
  coef, intercept = [], []
  for b, k in enumerate(jax.random.split(key, x.shape[0])):
    bits = np.asarray([bool(jax.random.bernoulli(jax.random.fold_in(k, n), 0.5, (1,))[0])
                       for n in range(num_samples)])
    bits[0] = True
    image = np.asarray(x[b:b + 1], np.float64)
    fill = np.broadcast_to(image.mean(axis=(1, 2), keepdims=True), image.shape)
    logits = np.asarray(apply_fn(params, jnp.asarray(np.concatenate([image, fill]),
                                                      jnp.float32)))
    y = np.where(bits, logits[0, target[b]], logits[1, target[b]])
    z = bits.astype(np.float64)
    # Cosine distance to the all-ones vector is 0 (segment on) or 1 (off).
    w = np.sqrt(np.exp(-(1.0 - z) ** 2 / kernel_width**2))
    z_mean, y_mean = (w * z).sum() / w.sum(), (w * y).sum() / w.sum()
    beta = (w * (z - z_mean) * (y - y_mean)).sum() / ((w * (z - z_mean) ** 2).sum()
                                                      + ridge_alpha)
    coef.append(beta)
    intercept.append(y_mean - z_mean * beta)
  return np.asarray(coef), np.asarray(intercept)


@pytest.mark.parametrize('segments_from', ['given', 'constant image'])
def test_lime_on_one_segment_is_the_one_feature_ridge(segments_from, tiny_net):
  model, variables, x, labels = tiny_net
  target = labels[:B]
  if segments_from == 'given':
    images, segments = x[:B], np.zeros((B, H, W), np.int32)
  else:
    images = jnp.broadcast_to(jnp.asarray([0.2, 0.5, 0.7]), (B, H, W, C))
    segments = None
    np.testing.assert_array_equal(saliency.segment_images(images), 0)
  key = jax.random.key(7)
  res = saliency.lime_explain(model.apply, variables, images, target, key=key,
                              segments=segments, num_samples=40)
  coef, intercept = _one_segment_reference(model.apply, variables, images, target, key,
                                           num_samples=40, kernel_width=0.25, ridge_alpha=1.0)
  assert res.coefficients.shape == (B, 1)
  np.testing.assert_allclose(res.coefficients[:, 0], coef, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(res.intercept, intercept, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(res.ranking, 0)
  np.testing.assert_array_equal(
      res.pixel_weights,
      np.broadcast_to(np.asarray(res.coefficients)[:, 0, None, None, None], (B, H, W, C)))
