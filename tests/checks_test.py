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
