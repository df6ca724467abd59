"""The four detector inputs against direct computations; batched == per-example; jit == eager."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import detection
from advsal_jax import saliency

from testing_utils import tanh_mlp, tanh_mlp_params, TinyNet

B, H, W, C, K = 3, 8, 8, 3, 3
X = np.random.default_rng(0).uniform(size=(B, H, W, C)).astype(np.float32)


@functools.cache
def _classifier():
  return tanh_mlp_params(H * W * C, K)


@functools.cache
def _masker():
  net = TinyNet(num_classes=K)
  variables = net.init(jax.random.key(0), jnp.zeros((1, H, W, C)))
  masker = saliency.Masker(net, ('stem', 'features'), width=4)
  return masker, saliency.init_masker(masker, variables, X, key=jax.random.key(1))


def _source(kind, method):
  """(apply_fn, params) the input ``kind`` explains with."""
  if kind in ('smd', 'spd') and method == 'learnt_saliency':
    masker, variables = _masker()
    return masker.apply, variables
  return tanh_mlp, _classifier()


_CASES = [('smd', 'learnt_saliency'), ('smd', 'gradient'), ('spd', 'learnt_saliency'),
          ('spd', 'gradient'), ('id', 'gradient'), ('jsd', 'gradient')]


def _predicted():
  return np.argmax(np.asarray(tanh_mlp(_classifier(), X)), -1)


def test_smd_is_the_saliency_map_of_the_predicted_class():
  apply_fn, params = tanh_mlp, _classifier()
  got = detection.saliency_map_input(apply_fn, params, X, method='gradient')
  want = saliency.explain('gradient', apply_fn, params, X, jnp.asarray(_predicted()))
  np.testing.assert_array_equal(got, want)
  masker, variables = _masker()
  pred = jnp.argmax(masker.apply(variables, X, method='classify'), -1)
  np.testing.assert_array_equal(detection.saliency_map_input(masker.apply, variables, X),
                                saliency.learnt_saliency(masker.apply, variables, X, pred))


@pytest.mark.parametrize('method', ['learnt_saliency', 'gradient'])
def test_spd_is_map_times_image(method):
  apply_fn, params = _source('spd', method)
  m = np.asarray(detection.saliency_map_input(apply_fn, params, X, method=method))
  got = detection.salient_pixels_input(apply_fn, params, X, method=method)
  np.testing.assert_allclose(got, m * X, rtol=1e-6, atol=0)
  assert got.shape == X.shape


def test_id_is_the_image():
  np.testing.assert_array_equal(detection.image_input(X), X)
  np.testing.assert_array_equal(detection.detector_input('id', None, None, X), X)


def test_jsd_is_image_and_gradient_of_the_predicted_logit():
  params = _classifier()
  pred = _predicted()
  grad = jax.grad(lambda x: jnp.sum(tanh_mlp(params, x)[jnp.arange(B), pred]))(X)
  got = np.asarray(detection.jacobian_input(tanh_mlp, params, X))
  assert got.shape == (B, H, W, 2 * C)
  np.testing.assert_array_equal(got[..., :C], X)
  np.testing.assert_allclose(got[..., C:], grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kind,method', _CASES)
def test_batched_equals_per_example_and_jit_equals_eager(kind, method):
  apply_fn, params = _source(kind, method)
  fn = functools.partial(detection.detector_input, kind, apply_fn, method=method)
  batched = np.asarray(fn(params, X))
  for b in range(B):
    np.testing.assert_allclose(batched[b:b + 1], fn(params, X[b:b + 1]), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(jax.jit(fn)(params, X), batched, rtol=1e-4, atol=1e-5)


def test_the_mask_is_differentiable_in_x():
  """White-box attacks follow SPD through the masker, not only through the factor x."""
  masker, variables = _masker()
  spd = lambda x: jnp.sum(detection.salient_pixels_input(masker.apply, variables, x))
  frozen_mask = detection.saliency_map_input(masker.apply, variables, X)
  through_x_only = jax.grad(lambda x: jnp.sum(frozen_mask * x))(X)
  assert np.abs(np.asarray(jax.grad(spd)(X) - through_x_only)).max() > 1e-4


def test_detector_joins_input_and_network():
  network = lambda v, inputs: jnp.stack([inputs.sum((1, 2, 3)) * v, -inputs.mean((1, 2, 3))], 1)
  detector = detection.Detector(network, 'jsd', tanh_mlp)
  params = {'source': _classifier(), 'detector': 2.0}
  inputs = detection.detector_input('jsd', tanh_mlp, _classifier(), X)
  np.testing.assert_array_equal(detector(params, X), network(2.0, inputs))
  np.testing.assert_allclose(detector.inputs(params['source'], X, batch_size=2), inputs,
                             rtol=1e-4, atol=1e-5)
  assert hash(detector) == hash(detection.Detector(network, 'jsd', tanh_mlp))


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match='kind must be one of'):
    detection.detector_input('lid', tanh_mlp, _classifier(), X)
  with pytest.raises(ValueError, match="kind 'id' explains nothing"):
    detection.detector_input('id', None, None, X, layer='conv1')
  with pytest.raises(ValueError, match='method must be a saliency method'):
    detection.saliency_map_input(tanh_mlp, _classifier(), X, method='saliency')
  with pytest.raises(ValueError, match='must be a masking model'):
    detection.saliency_map_input(tanh_mlp, _classifier(), X)
  with pytest.raises(ValueError, match='x must lie within bounds'):
    detection.image_input(X + 2)
  with pytest.raises(ValueError, match="kind 'smd' needs source="):
    detection.Detector(tanh_mlp, 'smd')
  with pytest.raises(ValueError, match='kind must be one of'):
    detection.Detector(tanh_mlp, 'image')
