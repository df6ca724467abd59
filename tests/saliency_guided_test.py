"""Guided Backprop: hand-computed rule, jaxpr rewrite == hand-written guided model, enhanced GBP."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import saliency

B, H, W, C, HID, K = 3, 3, 3, 2, 7, 4


def _mlp_params():
  rng = np.random.default_rng(0)
  return {'w': rng.normal(size=(H * W * C, HID)).astype(np.float32),
          'b': rng.normal(size=(HID,)).astype(np.float32) * 0.5,
          'v': rng.normal(size=(HID, K)).astype(np.float32)}


def _mlp(act):
  def apply_fn(p, x):
    h = act(x.reshape(x.shape[0], -1) @ p['w'] + p['b'][None, :])
    return h @ p['v']
  return apply_fn


X = np.random.default_rng(1).uniform(size=(B, H, W, C)).astype(np.float32)
T = np.array([0, 3, 1], np.int32)


def _hand_guided(p, x, t):
  """000 eq. 3 by hand: R_h = 1[v_t > 0 and pre > 0] v_t, then R_x = W R_h."""
  pre = x.reshape(B, -1) @ p['w'] + p['b']
  r = p['v'][:, t].T                      # [B, HID] gradient reaching the ReLU output
  r = r * (r > 0) * (pre > 0)
  return (r @ p['w'].T).reshape(x.shape)


def test_one_hidden_layer_matches_hand_rule():
  p = _mlp_params()
  expected = _hand_guided(p, X, T)
  got = saliency.guided_backprop(_mlp(jax.nn.relu), p, X, T)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # The plain gradient differs (negative routes exist), so the rewrite did something.
  plain = saliency.gradient(_mlp(jax.nn.relu), p, X, T)
  assert np.abs(np.asarray(plain) - expected).max() > 1e-3


@jax.custom_vjp
def _relu_custom_vjp(x):
  return jax.nn.relu(x)


_relu_custom_vjp.defvjp(lambda x: (_relu_custom_vjp(x), x),
                        lambda x, g: (g * (x > 0),))


@pytest.mark.parametrize('act', [
    jax.nn.relu,                               # custom_jvp around a jit
    jax.jit(jax.nn.relu),                      # relu inside a pjit
    lambda h: jnp.maximum(h, 0.0),             # plain max with a literal zero
    lambda h: jnp.maximum(0.0, h),
    _relu_custom_vjp,                          # a user custom_vjp hiding the relu
    jax.jit(lambda h: jax.jit(jax.nn.relu)(h)),  # pjit inside pjit
], ids=['nn_relu', 'jit_relu', 'maximum', 'maximum_swapped', 'custom_vjp', 'nested'])
def test_functional_relus_are_caught(act):
  p = _mlp_params()
  np.testing.assert_allclose(saliency.guided_backprop(_mlp(act), p, X, T),
                             _hand_guided(p, X, T), rtol=1e-5, atol=1e-6)


class Net(nn.Module):
  act: callable

  @nn.compact
  def __call__(self, x):
    x = self.act(nn.Conv(4, (3, 3), name='conv1')(x))
    x = self.act(nn.Conv(4, (3, 3), name='conv2')(x))
    x = self.act(nn.Dense(6, name='fc')(x.reshape(x.shape[0], -1)))
    return nn.Dense(K, name='logits')(x)


def test_rewrite_equals_model_written_with_guided_relu():
  x = jax.random.uniform(jax.random.key(1), (2, 6, 6, 3))
  t = jnp.array([1, 2], jnp.int32)
  relu_net, guided_net = Net(nn.relu), Net(saliency.guided_relu)
  variables = jax.jit(relu_net.init)(jax.random.key(0), x)

  @jax.jit
  def run(v):
    return (saliency.guided_backprop(relu_net.apply, v, x, t),
            saliency.gradient(guided_net.apply, v, x, t),
            saliency.gradient(relu_net.apply, v, x, t),
            saliency.with_guided_relu(relu_net.apply)(v, x), relu_net.apply(v, x))

  rewritten, by_hand, plain, guided_logits, logits = run(variables)
  np.testing.assert_allclose(rewritten, by_hand, rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(rewritten - plain)).max() > 1e-4
  # Forward values are unchanged by the rewrite.
  np.testing.assert_allclose(guided_logits, logits, rtol=1e-6)


def test_relu_in_control_flow_is_not_silently_missed():
  def scanned(p, x):
    h, _ = jax.lax.scan(lambda c, _: (jax.nn.relu(c), None), x.reshape(x.shape[0], -1) @ p['w'],
                        None, length=2)
    return h @ p['v']
  with pytest.raises(NotImplementedError, match='scan'):
    saliency.guided_backprop(scanned, _mlp_params(), X, T)


def _energy_norm(s):
  energy = np.abs(s).sum(axis=(1, 2), keepdims=True)
  return np.where(energy > 0, s / np.where(energy > 0, energy, 1.0), 0.0)


def test_enhanced_guided_backprop_matches_paper_formula():
  p = _mlp_params()
  contrast = np.array([2, 0, 3], np.int32)
  expected = np.maximum(0, _energy_norm(_hand_guided(p, X, T))
                        - _energy_norm(_hand_guided(p, X, contrast)))
  got = saliency.enhanced_guided_backprop(_mlp(jax.nn.relu), p, X, T, contrast_class=contrast)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
  # Default contrast: the best-scoring class other than the target.
  logits = np.array(_mlp(jax.nn.relu)(p, X))
  logits[np.arange(B), T] = -np.inf
  best_other = logits.argmax(1).astype(np.int32)
  np.testing.assert_allclose(
      saliency.enhanced_guided_backprop(_mlp(jax.nn.relu), p, X, T),
      saliency.enhanced_guided_backprop(_mlp(jax.nn.relu), p, X, T, contrast_class=best_other),
      rtol=1e-6)
  with pytest.raises(ValueError, match='contrast_class must lie'):
    saliency.enhanced_guided_backprop(_mlp(jax.nn.relu), p, X, T,
                                      contrast_class=np.array([0, 9, 0], np.int32))
