"""Contract shared by every exported attack: shape/dtype, bounds, mask, jit == eager, validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks

from testing_utils import tanh_mlp as _apply_fn, tanh_mlp_params

_B, _H, _W, _C, _K = 3, 4, 4, 2, 3
_F = _H * _W * _C


def _params():
  return tanh_mlp_params(_F, _K)


# Every exported attack with the extra keyword arguments it needs in this test (small budgets so
# the table runs in seconds). Targeted-only attacks run targeted.
TABLE = {
    'fgsm': dict(eps=0.1),
    'bim': dict(eps=0.1, step_size=0.03, num_steps=4),
    'pgd': dict(eps=0.1, step_size=0.03, num_steps=4, key=jax.random.key(1)),
    'mim': dict(eps=0.1, step_size=0.03, num_steps=4),
    'carlini_wagner_l2': dict(binary_search_steps=2, max_iterations=20, initial_const=1.0),
    'deepfool': dict(max_iter=5),
    'jsma': dict(targeted=True, gamma=0.5),
}


def _inputs(bounds=(0.0, 1.0)):
  rng = np.random.default_rng(1)
  lo, hi = bounds
  x = jnp.asarray(rng.uniform(lo, hi, size=(_B, _H, _W, _C)), jnp.float32)
  labels = jnp.asarray([0, 1, 2], jnp.int32)
  mask = jnp.asarray(rng.integers(0, 2, size=(_B, _H, _W, 1)), jnp.float32)
  return x, labels, mask


def test_every_exported_attack_is_in_the_table():
  exported = {name for name in attacks.__all__ if name in attacks.ATTACKS}
  assert set(attacks.ATTACKS) == exported
  assert set(TABLE) == set(attacks.ATTACKS), (
      f'attacks missing from the contract table: {set(attacks.ATTACKS) - set(TABLE)}')
  for name, fn in attacks.ATTACKS.items():
    assert getattr(attacks, name) is fn


@pytest.mark.parametrize('name', sorted(TABLE))
def test_shape_dtype_bounds_mask_and_jit_equals_eager(name):
  bounds = (-0.5, 0.25)  # not the default, so attacks must honour the argument
  fn = attacks.ATTACKS[name]
  kwargs = dict(TABLE[name])
  x, labels, mask = _inputs(bounds)
  params = _params()
  eager = fn(_apply_fn, params, x, labels, bounds=bounds, mask=mask, **kwargs)
  jitted = jax.jit(functools.partial(fn, _apply_fn, bounds=bounds, **kwargs))(
      params, x, labels, mask=mask)
  assert eager.shape == x.shape and eager.dtype == x.dtype
  assert jitted.shape == x.shape and jitted.dtype == x.dtype
  np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-5)
  assert float(eager.min()) >= bounds[0] and float(eager.max()) <= bounds[1]
  outside = np.broadcast_to(np.asarray(mask) == 0, x.shape)
  np.testing.assert_array_equal(np.asarray(eager)[outside], np.asarray(x)[outside])
  # The attack does something: at least one example moved (inside the mask).
  assert np.abs(np.asarray(eager) - np.asarray(x)).max() > 0


# A non-negative budget of each attack.
_BUDGET = {'fgsm': 'eps', 'bim': 'eps', 'pgd': 'eps', 'mim': 'step_size',
           'carlini_wagner_l2': 'confidence', 'deepfool': 'overshoot', 'jsma': 'gamma'}

# case -> (change, error, message; '{budget}' is the name of the attack's budget in _BUDGET).
_BAD_INPUTS = {
    'negative budget': (dict(negative=True), ValueError, '{budget} must be'),
    'x above bounds': (dict(x_scale=2.0), ValueError, 'x must lie within bounds'),
    'label out of range': (dict(labels=[0, 1, _K]), ValueError, r'labels must lie in \[0, 3\)'),
    'NaN in x': (dict(nan=True), ValueError, 'x must be finite'),
    'integer labels required': (dict(labels=[0.0, 1.0, 2.0]), TypeError,
                                'labels must be integer'),
    'mask of wrong shape': (dict(mask=np.ones((_B, _H + 1, _W, 1))), ValueError,
                            'mask must broadcast to x'),
    'non-binary mask': (dict(mask=np.full((_B, _H, _W, 1), 0.5)), ValueError,
                        'mask must contain only 0 and 1'),
    'bad bounds': (dict(bounds=(1.0, 0.0)), ValueError, 'bounds must be finite with low < high'),
}


@pytest.mark.parametrize('name', sorted(TABLE))
@pytest.mark.parametrize('case', sorted(_BAD_INPUTS))
def test_bad_inputs_raise_before_compilation(name, case, compile_counter):
  change, error, word = _BAD_INPUTS[case]
  kwargs = dict(TABLE[name])
  if change.get('negative'):
    kwargs[_BUDGET[name]] = -0.1
  x, labels, _ = _inputs()
  x = np.asarray(x) * change.get('x_scale', 1.0)
  if change.get('nan'):
    x[0, 0, 0, 0] = np.nan
  if 'labels' in change:
    labels = np.asarray(change['labels'])
  if 'mask' in change:
    kwargs['mask'] = change['mask']
  if 'bounds' in change:
    kwargs['bounds'] = change['bounds']
  params = _params()
  before = compile_counter.compiles  # Building the inputs may compile conversions.
  with pytest.raises(error, match=word.format(budget=_BUDGET[name])):
    attacks.ATTACKS[name](_apply_fn, params, x, labels, **kwargs)
  assert compile_counter.compiles == before


@pytest.mark.parametrize('name,kwargs,word', [
    ('bim', dict(norm='l1'), 'norm'),
    ('bim', dict(num_steps=2.5), 'num_steps'),
    ('bim', dict(step_size=np.ones(_B + 1)), 'step_size'),
    ('pgd', dict(key=None), 'key'),
    ('fgsm', dict(objective='hinge'), 'objective'),
    ('carlini_wagner_l2', dict(initial_const=0.0), 'initial_const'),
    ('deepfool', dict(overshoot=-0.1), 'overshoot'),
    ('jsma', dict(targeted=False), 'targeted'),
    ('jsma', dict(targeted=True, theta=0.0), 'theta'),
    ('jsma', dict(targeted=True, output='softmax'), 'output'),
])
def test_attack_specific_validation(name, kwargs, word, compile_counter):
  x, labels, _ = _inputs()
  params = _params()
  before = compile_counter.compiles  # Building the inputs may compile conversions.
  with pytest.raises((ValueError, TypeError), match=word):
    attacks.ATTACKS[name](_apply_fn, params, x, labels, **kwargs)
  assert compile_counter.compiles == before


def test_value_checks_are_skipped_under_jit():
  """Traced budgets cannot be inspected; shape checks still run while tracing."""
  x, labels, _ = _inputs()
  run = jax.jit(lambda p, x, y, e: attacks.fgsm(_apply_fn, p, x, y, eps=e))
  out = run(_params(), x, labels, jnp.float32(0.1))
  assert out.shape == x.shape
  with pytest.raises(ValueError, match='eps'):
    run(_params(), x, labels, jnp.ones((_B + 1,), jnp.float32))
