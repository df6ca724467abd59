"""FGSM against closed forms on a linear binary classifier."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks

from testing_utils import linear_apply as _linear

_B, _H, _W, _C = 4, 3, 3, 2
_F = _H * _W * _C


@pytest.fixture
def setup():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(_F, 2)).astype(np.float32)
  params = {'w': jnp.asarray(w), 'b': jnp.zeros((1, 2), jnp.float32)}
  x = rng.uniform(0.3, 0.7, size=(_B, _H, _W, _C)).astype(np.float32)  # eps never clips
  labels = np.asarray([0, 1, 0, 1], np.int32)
  return params, w, x, labels


def _away_from(w, labels):
  """Per example, the input-space gradient direction w_other - w_label, shaped like x."""
  d = w[:, 1] - w[:, 0]
  return np.stack([d if y == 0 else -d for y in labels]).reshape(-1, _H, _W, _C)


@pytest.mark.parametrize('objective', ['cross_entropy', 'cw_margin'])
def test_linf_step_is_eps_sign_w(setup, objective):
  params, w, x, labels = setup
  eps = 0.05
  out = attacks.fgsm(_linear, params, x, labels, eps=eps, objective=objective)
  np.testing.assert_allclose(out - x, eps * np.sign(_away_from(w, labels)), rtol=0, atol=1e-6)
  targeted = attacks.fgsm(_linear, params, x, labels, eps=eps, targeted=True,
                          objective=objective)
  np.testing.assert_allclose(targeted - x, -eps * np.sign(_away_from(w, labels)), rtol=0,
                             atol=1e-6)


def test_l2_step_is_eps_along_w(setup):
  params, w, x, labels = setup
  eps = 0.2
  out = attacks.fgsm(_linear, params, x, labels, eps=eps, norm='l2')
  d = _away_from(w, labels)
  expected = eps * d / np.linalg.norm(d.reshape(_B, -1), axis=1).reshape(-1, 1, 1, 1)
  np.testing.assert_allclose(out - x, expected, rtol=0, atol=1e-6)


def test_per_example_eps(setup):
  params, w, x, labels = setup
  eps = np.asarray([0.0, 0.01, 0.02, 0.04], np.float32)
  out = attacks.fgsm(_linear, params, x, labels, eps=eps)
  expected = eps.reshape(-1, 1, 1, 1) * np.sign(_away_from(w, labels))
  np.testing.assert_allclose(out - x, expected, rtol=0, atol=1e-6)


def test_user_objective_is_used(setup):
  """An objective that ignores labels and favours class 1 moves every example along w1 - w0."""
  params, w, x, labels = setup
  objective = lambda logits, labels: logits[:, 1] - logits[:, 0]
  out = attacks.fgsm(_linear, params, x, labels, eps=0.05, objective=objective)
  expected = 0.05 * np.sign(np.broadcast_to((w[:, 1] - w[:, 0]).reshape(1, _H, _W, _C), x.shape))
  np.testing.assert_allclose(out - x, expected, rtol=0, atol=1e-6)


def test_clipping_and_mask(setup):
  params, w, _, labels = setup
  x = np.zeros((_B, _H, _W, _C), np.float32)
  x[:2] = 1.0
  mask = np.zeros((1, _H, _W, 1), np.float32)
  mask[0, 1:, :2] = 1.0
  out = np.asarray(attacks.fgsm(_linear, params, x, labels, eps=0.3, mask=mask))
  step = 0.3 * np.sign(_away_from(w, labels)) * mask
  np.testing.assert_allclose(out, np.clip(x + step, 0.0, 1.0), rtol=0, atol=1e-6)


def test_per_channel_budget_equals_one_scalar_budget_per_channel():
  """A [1,1,1,C] eps (study 000's normalised-space budgets) acts channel by channel."""
  x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1)) * 0.5 + 0.25
  x3 = jnp.concatenate([x, x[..., ::-1] * 0.9, x * 0.8], axis=-1)
  w = jax.random.normal(jax.random.key(2), (28 * 28 * 3, 4))
  apply_fn = lambda p, xx: xx.reshape(xx.shape[0], -1) @ p
  eps = jnp.array([0.01, 0.02, 0.03]).reshape(1, 1, 1, 3)
  y = jnp.array([1, 2])
  got = attacks.fgsm(apply_fn, w, x3, y, eps=eps)
  for c in range(3):
    want = attacks.fgsm(apply_fn, w, x3, y, eps=float(eps[0, 0, 0, c]))
    np.testing.assert_array_equal(got[..., c], want[..., c])
  np.testing.assert_allclose(np.abs(np.asarray(got - x3)).max(axis=(0, 1, 2)), [0.01, 0.02, 0.03],
                             rtol=1e-5)
