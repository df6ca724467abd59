"""BIM / PGD / MIM (and FGSM): eps-ball, bounds and mask properties, vmap over budgets, identities."""

import functools

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks

from testing_utils import linear_apply as _linear, tanh_mlp as _mlp, tanh_mlp_params

_B, _H, _W, _C, _K = 3, 4, 4, 2, 3
_F = _H * _W * _C
_BOUNDS = (-1.0, 0.5)



def _params():
  return tanh_mlp_params(_F, _K)


@functools.cache
def _jitted(name, norm):
  """One compiled attack per (name, norm); budgets, mask and key are traced arguments."""
  fn = attacks.ATTACKS[name]

  def run(params, x, labels, mask, key, eps, step_size):
    kwargs = dict(eps=eps, norm=norm, mask=mask, bounds=_BOUNDS)
    if name != 'fgsm':
      kwargs.update(step_size=step_size, num_steps=5)
    if name == 'pgd':
      kwargs.update(key=key)
    return fn(_mlp, params, x, labels, **kwargs)

  return jax.jit(run)


def _draw(seed):
  rng = np.random.default_rng(seed)
  x = rng.uniform(*_BOUNDS, size=(_B, _H, _W, _C)).astype(np.float32)
  x[0, 0] = _BOUNDS[0]  # some pixels exactly on the box edges
  x[1, 1] = _BOUNDS[1]
  mask = rng.integers(0, 2, size=(_B, _H, _W, 1)).astype(np.float32)
  labels = rng.integers(0, _K, size=_B).astype(np.int32)
  return x, labels, mask


@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(
    name=st.sampled_from(['fgsm', 'bim', 'pgd', 'mim']),
    norm=st.sampled_from(['linf', 'l2']),
    seed=st.integers(0, 2**16),
    eps=st.floats(0.0, 2.0),
    step_fraction=st.floats(0.0, 1.0),
)
def test_stays_in_ball_bounds_and_mask(name, norm, seed, eps, step_fraction):
  x, labels, mask = _draw(seed)
  out = np.asarray(_jitted(name, norm)(_params(), x, labels, mask, jax.random.key(seed),
                                       np.float32(eps), np.float32(eps * step_fraction)))
  assert out.min() >= _BOUNDS[0] and out.max() <= _BOUNDS[1]
  delta = (out - x).reshape(_B, -1)
  size = np.abs(delta).max(axis=1) if norm == 'linf' else np.linalg.norm(delta, axis=1)
  assert (size <= np.float32(eps) * (1 + 1e-5) + 1e-6).all(), (size, eps)
  outside = np.broadcast_to(mask == 0, x.shape)
  np.testing.assert_array_equal(out[outside], x[outside])


@pytest.mark.parametrize('name', ['fgsm', 'bim', 'pgd', 'mim'])
@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_vmap_over_eps_equals_loop(name, norm):
  x, labels, mask = _draw(0)
  run = _jitted(name, norm)
  eps = np.asarray([0.0, 0.05, 0.2, 0.7], np.float32)
  key = jax.random.key(3)
  batched = jax.vmap(run, in_axes=(None, None, None, None, None, 0, 0))(
      _params(), x, labels, mask, key, eps, eps / 4)
  looped = np.stack([run(_params(), x, labels, mask, key, e, e / 4) for e in eps])
  np.testing.assert_allclose(batched, looped, rtol=0, atol=1e-6)


def test_per_example_eps_equals_separate_runs():
  x, labels, mask = _draw(1)
  run = _jitted('bim', 'l2')
  eps = np.asarray([0.1, 0.4, 0.9], np.float32)
  together = run(_params(), x, labels, mask, jax.random.key(0), eps, eps / 3)
  for b in range(_B):
    alone = run(_params(), x, labels, mask, jax.random.key(0), eps[b], eps[b] / 3)
    np.testing.assert_allclose(together[b], alone[b], rtol=0, atol=1e-6)


@pytest.fixture
def linear_binary():
  rng = np.random.default_rng(5)
  w = rng.normal(size=(_F, 2)).astype(np.float32)
  params = {'w': jnp.asarray(w), 'b': jnp.zeros((1, 2), jnp.float32)}
  x = rng.uniform(0.3, 0.7, size=(_B, _H, _W, _C)).astype(np.float32)
  labels = np.asarray([0, 1, 1], np.int32)
  d = w[:, 1] - w[:, 0]
  away = np.stack([d if y == 0 else -d for y in labels]).reshape(x.shape)
  return params, x, labels, away


def test_bim_on_linear_model_reaches_the_linf_corner(linear_binary):
  """The gradient sign of a linear model is constant, so BIM ends at x + eps * sign(w)."""
  params, x, labels, away = linear_binary
  out = attacks.bim(_linear, params, x, labels, eps=0.1, step_size=0.03, num_steps=5)
  np.testing.assert_allclose(out - x, 0.1 * np.sign(away), rtol=0, atol=1e-6)
  targeted = attacks.bim(_linear, params, x, labels, targeted=True, eps=0.1, step_size=0.03,
                         num_steps=5)
  np.testing.assert_allclose(targeted - x, -0.1 * np.sign(away), rtol=0, atol=1e-6)


def test_bim_l2_on_linear_model_ends_on_the_sphere_along_w(linear_binary):
  params, x, labels, away = linear_binary
  out = attacks.bim(_linear, params, x, labels, eps=0.3, step_size=0.1, num_steps=5, norm='l2')
  unit = away / np.linalg.norm(away.reshape(_B, -1), axis=1).reshape(-1, 1, 1, 1)
  np.testing.assert_allclose(out - x, 0.3 * unit, rtol=0, atol=1e-5)


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_mim_without_momentum_is_bim(norm):
  """decay = 0 leaves grad / ||grad||_1, whose sign / L2 direction is the gradient's own."""
  x, labels, mask = _draw(2)
  kwargs = dict(eps=0.3, step_size=0.07, num_steps=4, norm=norm, mask=mask, bounds=_BOUNDS)
  np.testing.assert_allclose(attacks.mim(_mlp, _params(), x, labels, decay=0.0, **kwargs),
                             attacks.bim(_mlp, _params(), x, labels, **kwargs), rtol=0, atol=1e-6)


def test_pgd_random_start():
  """With step 0, PGD returns its random start: key-determined, inside the masked ball."""
  x, labels, mask = _draw(3)
  run = lambda key: np.asarray(attacks.pgd(_mlp, _params(), x, labels, key=key, eps=0.2,
                                           step_size=0.0, mask=mask, bounds=_BOUNDS))
  a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  inside = np.broadcast_to(mask == 1, x.shape) & (x > _BOUNDS[0] + 0.2) & (x < _BOUNDS[1] - 0.2)
  assert np.abs(a - c)[inside].min() > 0  # different keys, different starts
  assert np.abs(a - x)[inside].max() <= 0.2 + 1e-6
  # Roughly uniform on [-eps, eps]: mean |noise| = eps / 2.
  np.testing.assert_allclose(np.abs(a - x)[inside].mean(), 0.1, atol=0.03)


def test_vmap_over_targets_equals_loop():
  x, _, mask = _draw(4)
  run = jax.jit(lambda p, x, t: attacks.bim(_mlp, p, x, t, targeted=True, eps=0.3,
                                             step_size=0.1, num_steps=4, mask=mask,
                                             bounds=_BOUNDS))
  targets = np.stack([np.full(_B, k, np.int32) for k in range(_K)])  # [K, B]
  batched = jax.vmap(run, in_axes=(None, None, 0))(_params(), x, targets)
  looped = np.stack([run(_params(), x, t) for t in targets])
  np.testing.assert_allclose(batched, looped, rtol=0, atol=1e-6)
