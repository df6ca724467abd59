"""Carlini-Wagner L2 against the closed-form minimal perturbation of a linear classifier."""

import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks

from testing_utils import linear_apply as _linear

_B, _H, _W, _C = 4, 3, 3, 2
_F = _H * _W * _C


@pytest.fixture
def binary():
  """Linear binary classifier centred on the image 0.5: boundaries are near, never at the box."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(_F, 2)).astype(np.float32)
  b = (-0.5 * w.sum(axis=0, keepdims=True)).astype(np.float32)
  x = rng.uniform(0.4, 0.6, size=(_B, _H, _W, _C)).astype(np.float32)
  params = {'w': jnp.asarray(w), 'b': jnp.asarray(b)}
  labels = np.argmax(x.reshape(_B, -1) @ w + b, axis=1).astype(np.int32)
  d = w[:, 1] - w[:, 0]
  f = x.reshape(_B, -1) @ d + (b[0, 1] - b[0, 0])
  min_dist = np.abs(f) / np.linalg.norm(d)  # distance to the decision boundary
  return params, x, labels, min_dist


_SETTINGS = dict(binary_search_steps=6, max_iterations=300, learning_rate=0.02,
                 initial_const=1.0)


def test_l2_is_near_the_minimal_distance(binary):
  params, x, labels, min_dist = binary
  out = attacks.carlini_wagner_l2(_linear, params, x, labels, **_SETTINGS)
  ev = attacks.evaluate_attack(_linear, params, x, out, labels, targeted=False)
  assert np.asarray(ev.success).all()
  l2 = np.asarray(ev.l2)
  # No successful example can beat the closed-form minimum; C&W should come close to it.
  assert (l2 >= min_dist * (1 - 1e-4)).all(), (l2, min_dist)
  np.testing.assert_allclose(l2, min_dist, rtol=0.05)


def test_confidence_is_honoured(binary):
  params, x, labels, _ = binary
  out = attacks.carlini_wagner_l2(_linear, params, x, labels, confidence=1.0, **_SETTINGS)
  logits = np.asarray(_linear(params, out))
  margin = logits[np.arange(_B), 1 - labels] - logits[np.arange(_B), labels]
  assert (margin > 1.0).all(), margin


def test_targeted_with_mask(binary):
  params, x, labels, _ = binary
  mask = np.zeros((1, _H, _W, 1), np.float32)
  mask[0, 1:] = 1.0
  targets = (1 - labels).astype(np.int32)
  out = np.asarray(attacks.carlini_wagner_l2(_linear, params, x, targets, targeted=True,
                                             mask=mask, **_SETTINGS))
  np.testing.assert_array_equal(np.argmax(np.asarray(_linear(params, out)), axis=1), targets)
  outside = np.broadcast_to(mask == 0, x.shape)
  np.testing.assert_array_equal(out[outside], x[outside])


def test_returns_the_input_where_no_iterate_succeeds(binary):
  params, x, labels, _ = binary
  out = attacks.carlini_wagner_l2(_linear, params, x, labels, binary_search_steps=1,
                                  max_iterations=5, initial_const=1e-6)
  np.testing.assert_array_equal(out, x)


def test_binary_search_raises_the_constant_until_success(binary):
  """From a constant far too small, the x10 search phase must still find adversarials."""
  params, x, labels, _ = binary
  out = attacks.carlini_wagner_l2(_linear, params, x, labels, binary_search_steps=8,
                                  max_iterations=200, learning_rate=0.02, initial_const=1e-4)
  ev = attacks.evaluate_attack(_linear, params, x, out, labels, targeted=False)
  assert np.asarray(ev.success).all()
