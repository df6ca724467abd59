"""The exact gradient rewrites (fast_max_pool, fast_gradients) against the plain model.

fast_max_pool against flax's nn.max_pool and fast_gradients against the unrewritten model:
identical outputs and gradients (ties included), and the slow forms gone from the graph.
"""

import collections
import dataclasses

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
  slow_grad = lambda v, x: jax.grad(lambda x: apply_fn(v, x)[jnp.arange(3), target].sum())(x)
  fast_grad = lambda v, x: jax.grad(lambda x: fast(v, x)[jnp.arange(3), target].sum())(x)
  np.testing.assert_array_equal(jax.jit(fast_grad)(variables, x),
                                jax.jit(slow_grad)(variables, x))
  assert 'select_and_scatter_add' in _primitives(slow_grad, variables, x)
  assert not _primitives(fast_grad, variables, x) & {'select_and_scatter_add',
                                                       'reduce_window_max'}


def test_tied_maxima_send_the_gradient_to_the_first_like_select_and_scatter():
  x = jnp.array([[1., 1., 0., 2.], [1., 0., 2., 2.], [3., 3., 5., 5.], [3., 3., 5., 5.]])
  x = x[None, :, :, None]
  weights = jnp.arange(1., 5.).reshape(1, 2, 2, 1)
  flax_grad = jax.grad(lambda a: (nn.max_pool(a, (2, 2), (2, 2)) * weights).sum())(x)
  fast_grad = jax.grad(lambda a: (rewrites.tiled_max(a, (1, 2, 2, 1)) * weights).sum())(x)
  np.testing.assert_array_equal(fast_grad, flax_grad)
  # Each window's gradient sits on its first maximum in row-major order.
  np.testing.assert_array_equal(fast_grad[0, :, :, 0], [[1, 0, 0, 2], [0, 0, 0, 0],
                                                        [3, 0, 4, 0], [0, 0, 0, 0]])


class _UserNet(nn.Module):
  """Strided, dilated, unpadded and grouped convolutions, a flax max pool and ReLUs."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(6, (3, 3), padding='VALID', kernel_dilation=2)(x))
    x = nn.relu(nn.Conv(6, (1, 1), feature_group_count=2)(x))
    return nn.Dense(5)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize('quantize', [False, True])  # True: many tied maxima.
def test_fast_gradients_keeps_values_and_gradients_identical(quantize):
  x = jax.random.uniform(jax.random.key(0), (3, 20, 20, 2))
  if quantize:
    x = jnp.round(x * 2) / 2
  module = _UserNet()
  variables = module.init(jax.random.key(1), x)
  fast = rewrites.fast_gradients(module.apply)
  loss = lambda fn: jax.jit(jax.value_and_grad(lambda v, a: fn(v, a).sum(), argnums=(0, 1)))
  (value, grads), (fast_value, fast_grads) = loss(module.apply)(variables, x), loss(fast)(
      variables, x)
  np.testing.assert_array_equal(fast_value, value)
  jax.tree.map(np.testing.assert_array_equal, fast_grads, grads)
  counts = _primitive_counts(lambda v, a: jax.grad(lambda a: fast(v, a).sum())(a), variables, x)
  assert counts['select_and_scatter_add'] == 0
  assert counts['custom_vjp_call'] == 3  # Two dense convolutions and the pool.


def test_fast_conv_handles_any_dimension_numbers():
  lhs = jax.random.normal(jax.random.key(0), (2, 3, 9, 7))  # NCHW
  rhs = jax.random.normal(jax.random.key(1), (3, 5, 3, 2))  # IOHW
  conv = lambda a, k: jax.lax.conv_general_dilated(
      a, k, (2, 1), [(1, 0), (0, 2)], lhs_dilation=(1, 2), rhs_dilation=(2, 1),
      dimension_numbers=('NCHW', 'IOHW', 'NHWC'))
  fast = rewrites.rewrite(conv, rewrites.FAST_CONV)
  np.testing.assert_array_equal(fast(lhs, rhs), conv(lhs, rhs))
  cotangent = jax.random.normal(jax.random.key(2), conv(lhs, rhs).shape)
  grads = jax.vjp(conv, lhs, rhs)[1](cotangent)
  fast_grads = jax.vjp(fast, lhs, rhs)[1](cotangent)
  for fast_g, g in zip(fast_grads, grads):
    np.testing.assert_array_equal(fast_g, g)


@pytest.mark.parametrize('features,padded', [(1, 1), (2, 2), (3, 4), (5, 8), (6, 6), (7, 8)])
def test_odd_input_features_are_zero_padded_to_a_multiple_of_four(features, padded):
  lhs = jax.random.uniform(jax.random.key(0), (2, 6, 6, features))
  rhs = jax.random.normal(jax.random.key(1), (3, 3, features, 4))
  conv = lambda a, k: jax.lax.conv(a.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1), (1, 1),
                                   'SAME')
  fast = rewrites.rewrite(conv, rewrites.FAST_CONV)
  widths = [eqn.invars[0].aval.shape[1] for eqn in jax.make_jaxpr(
      lambda a, k: jax.grad(lambda a: fast(a, k).sum())(a))(lhs, rhs).jaxpr.eqns
            if eqn.primitive.name == 'custom_vjp_call']
  assert widths == [padded]
  # The same sum, possibly added in another order: equal to float rounding.
  np.testing.assert_allclose(fast(lhs, rhs), conv(lhs, rhs), rtol=1e-5, atol=1e-5)
  grads = jax.grad(lambda a, k: (conv(a, k) ** 2).sum(), argnums=(0, 1))(lhs, rhs)
  fast_grads = jax.grad(lambda a, k: (fast(a, k) ** 2).sum(), argnums=(0, 1))(lhs, rhs)
  for fast_g, g in zip(fast_grads, grads):
    assert fast_g.shape == g.shape
    np.testing.assert_allclose(fast_g, g, rtol=1e-4, atol=1e-4)


def _loop_convolutions(apply_fn, variables, x) -> list[str]:
  """dim_labels of every convolution XLA compiles for 3 gradient steps in a fori_loop."""

  def steps(v, a):
    grad = lambda a: jax.grad(lambda a: apply_fn(v, a).sum())(a)
    return jax.lax.fori_loop(0, 3, lambda _, a: a + 1e-3 * grad(a), a)

  hlo = jax.jit(steps).lower(variables, x).compile().as_text()
  return [line.split('dim_labels=')[1].split(',')[0] for line in hlo.splitlines()
          if ' convolution(' in line]


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='an XLA:CPU layout property')
def test_loop_input_gradient_uses_the_forward_kernel_layout_on_cpu():
  apply_fn, variables, x = _setup()
  plain = _loop_convolutions(apply_fn, variables, x)
  fast = _loop_convolutions(rewrites.fast_gradients(apply_fn), variables, x)
  # Unrewritten, the loop's input-gradient convolutions read the kernel with in/out
  # swapped (01oi), XLA:CPU's slow path; rewritten, every one reads it as HWIO (01io).
  assert any(labels.endswith('01oi->b01f') for labels in plain), plain
  assert fast and all(labels == 'b01f_01io->b01f' for labels in fast), fast


def test_unreachable_matches_are_left_alone_by_exact_rules():
  @jax.custom_vjp
  def custom_conv(a, k):
    return jax.lax.conv(a, k, (1, 1), 'SAME')

  custom_conv.defvjp(lambda a, k: (custom_conv(a, k), None),
                     lambda _, g: (2 * jnp.ones((1, 1, 4, 4)), jnp.zeros((1, 1, 3, 3))))

  def fn(a, k):
    scanned = jax.lax.scan(lambda c, _: (nn.max_pool(c, (1, 1), (1, 1)), None), a,
                           None, length=1)[0]
    return (custom_conv(scanned, k) + jax.lax.conv(a, k, (1, 1), 'SAME')).sum()

  a, k = jnp.ones((1, 1, 4, 4)), jnp.ones((1, 1, 3, 3))
  fast = rewrites.fast_gradients(fn)
  assert fast(a, k) == fn(a, k)
  # The user's custom rule (constant 2) still applies: the rewrite did not inline it.
  np.testing.assert_array_equal(jax.grad(fast)(a, k), jax.grad(fn)(a, k))
  assert _primitive_counts(lambda a, k: jax.grad(fast)(a, k), a, k)['scan'] >= 1


def test_attack_through_the_rewrite_is_unchanged():
  apply_fn, variables, x = _setup()
  labels = jnp.array([1, 2, 3])
  slow = attacks.fgsm(apply_fn, variables, x, labels, eps=0.05)
  fast = attacks.fgsm(rewrites.fast_max_pool(apply_fn), variables, x, labels, eps=0.05)
  np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize('method', [m for m in saliency.METHODS
                                    if m not in ('cam', 'lime', 'gbvs', *saliency.MASKER_METHODS)])
def test_gradient_based_saliency_methods_differentiate_through_the_rewrite(method):
  # CAM needs global average pooling; LIME, GBVS and the learnt masks take no gradient of
  # the classifier.
  apply_fn, variables, x = _setup()
  kwargs = {'layer': 'Conv_1'} if 'cam' in method else {}
  fn = lambda v, a: saliency.METHODS[method](apply_fn, v, a, jnp.array([0, 1, 2]),
                                             key=jax.random.key(0), **kwargs)
  assert 'select_and_scatter_add' not in _primitives(fn, variables, x)


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


def test_a_changing_rule_raises_on_matches_inside_control_flow():
  def scanned(x):
    def body(carry, _):
      return nn.max_pool(carry, (1, 1), (1, 1)) * 0.5, None
    return jax.lax.scan(body, x, None, length=2)[0]

  changing = dataclasses.replace(rewrites.FAST_MAX_POOL, name='changing',
                                 skip_unreachable=False)
  x = jnp.ones((1, 4, 4, 1))
  with pytest.raises(NotImplementedError, match='changing.*scan'):
    rewrites.rewrite(scanned, changing)(x)
  np.testing.assert_array_equal(rewrites.fast_max_pool(scanned)(x), scanned(x))
