"""fast_max_pool against flax's nn.max_pool: same outputs, same gradients, no reduce_window."""

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks
from advsal_jax import rewrites
from advsal_jax import saliency


class _PoolNet(nn.Module):
  """A user's plain flax model: conv, relu, 2x2 max pools, dense."""
  window: int = 2
  stride: int = 2
  padding: str = 'VALID'

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.max_pool(x, (self.window, self.window), (self.stride, self.stride), self.padding)
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    return nn.Dense(5)(x.reshape(x.shape[0], -1))


def _setup(module=_PoolNet(), size=8):
  x = jax.random.uniform(jax.random.key(0), (3, size, size, 2))
  variables = module.init(jax.random.key(1), x)
  return module.apply, variables, x


def _primitive_counts(fn, *args) -> collections.Counter:
  counts = collections.Counter()

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      counts[eqn.primitive.name] += 1
      for sub in rewrites._sub_jaxprs(eqn):  # pylint: disable=protected-access
        visit(sub)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return counts


def _primitives(fn, *args):
  return set(_primitive_counts(fn, *args))


def test_tiled_max_equals_flax_max_pool():
  x = jax.random.normal(jax.random.key(0), (2, 6, 8, 3))
  np.testing.assert_array_equal(rewrites.tiled_max(x, (1, 3, 2, 1)),
                                nn.max_pool(x, (3, 2), (3, 2)))


def test_outputs_and_gradients_match_and_select_and_scatter_is_gone():
  apply_fn, variables, x = _setup()
  fast = rewrites.fast_max_pool(apply_fn)
  np.testing.assert_array_equal(jax.jit(fast)(variables, x), jax.jit(apply_fn)(variables, x))
  target = jnp.array([0, 3, 4])
  slow_grad = lambda v, x: saliency.gradient(apply_fn, v, x, target)
  fast_grad = lambda v, x: saliency.gradient(fast, v, x, target)
  # Continuous random inputs: no ties inside a window, so the gradients agree.
  np.testing.assert_allclose(jax.jit(fast_grad)(variables, x),
                             jax.jit(slow_grad)(variables, x), rtol=1e-5, atol=1e-7)
  assert 'select_and_scatter_add' in _primitives(slow_grad, variables, x)
  assert not _primitives(fast_grad, variables, x) & {'select_and_scatter_add',
                                                       'reduce_window_max'}
  assert rewrites.has_slow_max_pool(apply_fn, variables, x)
  assert not rewrites.has_slow_max_pool(fast, variables, x)


def test_attack_through_the_rewrite_is_unchanged():
  apply_fn, variables, x = _setup()
  labels = jnp.array([1, 2, 3])
  slow = attacks.fgsm(apply_fn, variables, x, labels, eps=0.05)
  fast = attacks.fgsm(rewrites.fast_max_pool(apply_fn), variables, x, labels, eps=0.05)
  np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize('module,size', [(_PoolNet(window=3, stride=2), 9),  # overlapping
                                         (_PoolNet(padding='SAME', window=3, stride=3), 10)])
def test_overlapping_or_padded_pools_are_left_alone(module, size):
  apply_fn, variables, x = _setup(module, size=size)
  fast = rewrites.fast_max_pool(apply_fn)
  # The first pool stays; the second (2x2 on a 4x4 map) tiles and is replaced.
  assert _primitive_counts(apply_fn, variables, x)['reduce_window_max'] == 2
  assert _primitive_counts(fast, variables, x)['reduce_window_max'] == 1
  np.testing.assert_array_equal(fast(variables, x), apply_fn(variables, x))


def test_pools_inside_jit_are_rewritten():
  apply_fn, variables, x = _setup()
  nested = jax.jit(apply_fn)
  fast = rewrites.fast_max_pool(nested)
  assert 'reduce_window_max' in _primitives(nested, variables, x)
  assert 'reduce_window_max' not in _primitives(fast, variables, x)
  np.testing.assert_array_equal(fast(variables, x), apply_fn(variables, x))


def test_pool_inside_control_flow_raises():
  def scanned(x):
    def body(carry, _):
      return nn.max_pool(carry, (1, 1), (1, 1)) * 0.5, None
    return jax.lax.scan(body, x, None, length=2)[0]

  x = jnp.ones((1, 4, 4, 1))
  with pytest.raises(NotImplementedError, match='fast_max_pool.*scan'):
    rewrites.fast_max_pool(scanned)(x)
