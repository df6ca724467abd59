"""Closed forms for gradient and gradient x input on a linear model, and input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import saliency

B, H, W, C, K = 4, 5, 6, 2, 3


def _linear():
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(H * W * C, K)).astype(np.float32)
  bias = rng.normal(size=(K,)).astype(np.float32)
  params = {'w': jnp.asarray(weights), 'b': jnp.asarray(bias)}

  def apply_fn(p, x):
    return x.reshape(x.shape[0], -1) @ p['w'] + p['b'][None, :]

  x = rng.uniform(size=(B, H, W, C)).astype(np.float32)
  target = np.array([0, 2, 1, 2], np.int32)
  return apply_fn, params, x, target, weights, bias


def test_gradient_is_weight_row_of_target():
  apply_fn, params, x, target, weights, _ = _linear()
  grad = saliency.gradient(apply_fn, params, x, target)
  expected = weights[:, target].T.reshape(B, H, W, C)
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


def test_gradient_x_input_is_per_feature_contribution():
  apply_fn, params, x, target, weights, bias = _linear()
  attr = saliency.gradient_x_input(apply_fn, params, x, target)
  expected = x * weights[:, target].T.reshape(B, H, W, C)
  np.testing.assert_allclose(attr, expected, rtol=1e-6, atol=1e-6)
  # Contributions add up to the target logit minus the bias.
  logits = x.reshape(B, -1) @ weights + bias
  np.testing.assert_allclose(attr.sum(axis=(1, 2, 3)),
                             logits[np.arange(B), target] - bias[target], rtol=1e-5)


def test_validation_messages():
  apply_fn, params, x, target, _, _ = _linear()
  with pytest.raises(ValueError, match=r'x must be a batch of images.*rank 3'):
    saliency.gradient(apply_fn, params, x[0], target)
  with pytest.raises(ValueError, match=r'target must lie in \[0, 3\)'):
    saliency.gradient(apply_fn, params, x, np.array([0, 1, 3, 0], np.int32))
  with pytest.raises(ValueError, match=r'target must lie'):
    saliency.gradient(apply_fn, params, x, np.array([0, -1, 2, 0], np.int32))
  with pytest.raises(ValueError, match=r'target must be i32\[B\] with B=4'):
    saliency.gradient(apply_fn, params, x, target[None])
  with pytest.raises(TypeError, match='x must be floating point'):
    saliency.gradient(apply_fn, params, (x * 255).astype(np.uint8), target)
  with pytest.raises(ValueError, match=r'logits f32\[B,K\]'):
    saliency.gradient(lambda p, xx: xx.sum(), params, x, target)


def test_traced_target_skips_range_check_under_jit():
  apply_fn, params, x, target, weights, _ = _linear()
  grad = jax.jit(lambda xx, t: saliency.gradient(apply_fn, params, xx, t))(x, target)
  np.testing.assert_allclose(grad, weights[:, target].T.reshape(B, H, W, C), rtol=1e-6,
                             atol=1e-6)
