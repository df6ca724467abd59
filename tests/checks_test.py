"""advsal_jax._checks: the argument checks the saliency methods and attacks share."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import _checks

from testing_utils import linear_apply

_PARAMS = {'w': jnp.ones((2 * 2 * 1, 3)), 'b': jnp.zeros((1, 3))}
_X = np.zeros((2, 2, 2, 1), np.float32)


@pytest.mark.parametrize('value,error,match', [
    (2.5, TypeError, 'num_steps must be a Python int'),
    (True, TypeError, 'num_steps must be a Python int'),
    (0, ValueError, 'num_steps must be >= 1, got 0'),
])
def test_check_count(value, error, match):
  with pytest.raises(error, match=match):
    _checks.check_count(value, 'num_steps')
  _checks.check_count(np.int32(3), 'num_steps')
  _checks.check_count(2, 'num_candidates', minimum=2)


def test_check_labels_names_the_argument_and_returns_the_class_count():
  assert _checks.check_labels(linear_apply, _PARAMS, _X, np.array([0, 2]), name='target') == 3
  with pytest.raises(ValueError, match=r'contrast_class must lie in \[0, 3\)'):
    _checks.check_labels(linear_apply, _PARAMS, _X, np.array([0, 3]), name='contrast_class')
  with pytest.raises(ValueError, match=r'target must be i32\[B\] with B=2'):
    _checks.check_labels(linear_apply, _PARAMS, _X, np.array([0]), name='target')
  with pytest.raises(TypeError, match='labels must be integer'):
    _checks.check_labels(linear_apply, _PARAMS, _X, np.array([0.0, 1.0]))
  with pytest.raises(ValueError, match=r'logits f32\[B,K\]'):
    _checks.check_labels(lambda p, x: x.sum(), _PARAMS, _X, np.array([0, 1]))


def test_range_check_is_skipped_while_tracing():
  k = jax.jit(lambda t: jnp.float32(
      _checks.check_labels(linear_apply, _PARAMS, _X, t, name='target')))(np.array([0, 7]))
  assert int(k) == 3


def test_check_images():
  with pytest.raises(ValueError, match=r'rank 3\); add a batch axis'):
    _checks.check_images(_X[0])
  with pytest.raises(TypeError, match='x must be floating point'):
    _checks.check_images(_X.astype(np.uint8))


def test_check_attack_inputs():
  labels = np.array([0, 1])
  assert _checks.check_attack_inputs(linear_apply, _PARAMS, _X, labels, bounds=(0, 1)) == (0., 1.)
  with pytest.raises(ValueError, match='bounds'):
    _checks.check_attack_inputs(linear_apply, _PARAMS, _X + 2, labels, bounds=(0, 1))
  with pytest.raises(ValueError, match='mask must contain only 0 and 1'):
    _checks.check_attack_inputs(linear_apply, _PARAMS, _X, labels, bounds=(0, 1),
                                mask=np.full((2, 2, 2, 1), 0.5))
  with pytest.raises(ValueError, match='norm must be one of'):
    _checks.check_norm('l1')
  with pytest.raises(ValueError, match='eps must be >= 0'):
    _checks.check_budget(-0.1, 'eps', batch=2)


@pytest.mark.parametrize('value,kwargs,error,match', [
    (True, {}, TypeError, 'noise_level must be a real number'),
    ('0.1', {}, TypeError, 'noise_level must be a real number'),
    (np.ones(2), {}, ValueError, 'noise_level must be a scalar'),
    (np.nan, {}, ValueError, r'noise_level must be finite and >= 0, got nan'),
    (-0.5, {}, ValueError, r'noise_level must be finite and >= 0, got -0.5'),
    (0.0, {'positive': True}, ValueError, r'noise_level must be finite and > 0, got 0.0'),
])
def test_check_scalar(value, kwargs, error, match):
  with pytest.raises(error, match=match):
    _checks.check_scalar(value, 'noise_level', **kwargs)


def test_check_scalar_accepts_numbers_and_skips_traced_values():
  for ok in (0, 0.0, np.float32(2.5), jnp.float32(1.0)):
    _checks.check_scalar(ok, 'noise_level')
  jax.jit(lambda v: _checks.check_scalar(v, 'noise_level', positive=True))(jnp.float32(-1.0))


def test_check_pixels_counts_non_finite_values_and_allows_rounding_slack():
  x = np.full((1, 2, 2, 1), 0.5, np.float32)
  with pytest.raises(ValueError, match='x must be finite, got 2 NaN or inf values'):
    _checks.check_pixels(np.where(np.arange(4).reshape(x.shape) < 2, np.inf, x))
  _checks.check_pixels(x + 0.5 + 1e-7)  # 1 + f32 rounding is still in [0, 1].
  with pytest.raises(ValueError, match=r'baseline must lie within bounds \[0.0, 1.0\]'):
    _checks.check_pixels(x + 0.5 + 1e-5, name='baseline')
  jax.jit(lambda v: _checks.check_pixels(v))(x * np.nan)  # Traced: values unseen.


def test_check_images_refuses_an_empty_batch():
  with pytest.raises(ValueError, match=r'x must hold at least one image .*\(0, 2, 2, 1\)'):
    _checks.check_images(_X[:0])
  with pytest.raises(ValueError, match='x_adv must hold at least one image'):
    _checks.check_images(_X[:, :0], name='x_adv')
