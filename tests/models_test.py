"""Tests of advsal_jax.models: every registered model, its layers, fast ops and input checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import models

ALL_MODELS = sorted(models.MODELS)


@pytest.fixture(scope='module', params=ALL_MODELS)
def built(request):
  name = request.param
  model, variables = models.init(name, jax.random.key(0))
  return name, model, variables


def test_every_registered_model_is_tested():
  # The parametrised fixture covers models.MODELS; guard against an empty or stale registry.
  assert set(ALL_MODELS) == {'alexnet_cifar', 'alexnet_catdog', 'mobilenet_v1_cifar',
                             'mobilenet_v2_cifar', 'cnn_mnist'} | set(models.MODELS)


def test_output_shape_finite_and_param_count(built):
  name, model, variables = built
  spec = models.get_spec(name)
  x = jax.random.uniform(jax.random.key(1), (3, *spec.input_shape))
  logits = model.apply(variables, x)
  assert logits.shape == (3, spec.num_classes) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  assert models.param_count(variables) > 10_000
  assert models.forward_flops(name) > 1e6


def test_alexnet_catdog_is_alexnet_cifar_with_two_logits():
  _, cifar = models.init('alexnet_cifar', jax.random.key(0))
  _, catdog = models.init('alexnet_catdog', jax.random.key(0))
  shapes = lambda v: jax.tree.map(jnp.shape, v)
  assert shapes(catdog) == {**shapes(cifar), 'params': {
      **shapes(cifar)['params'], 'logits': {'kernel': (256, 2), 'bias': (2,)}}}
  assert models.get_spec('alexnet_catdog').num_classes == 2
  assert models.get_spec('alexnet_catdog').dataset == 'cifar10_catdog'


def test_last_conv_is_a_named_post_relu_layer(built):
  name, model, variables = built
  spec = models.get_spec(name)
  x = jax.random.uniform(jax.random.key(2), (2, *spec.input_shape))
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])
  act = state['intermediates'][spec.last_conv]['__call__'][0]
  assert act.ndim == 4 and act.shape[0] == 2
  assert float(act.min()) >= 0.0  # post-ReLU


def test_eval_needs_no_mutable_state_and_is_deterministic(built):
  name, model, variables = built
  x = jax.random.uniform(jax.random.key(3), (2, *models.get_spec(name).input_shape))
  np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))


def test_batch_equals_per_example(built):
  name, model, variables = built
  x = jax.random.uniform(jax.random.key(4), (3, *models.get_spec(name).input_shape))
  batched = model.apply(variables, x)
  single = jnp.concatenate([model.apply(variables, x[i:i + 1]) for i in range(3)])
  np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def test_max_pool_matches_flax():
  x = jax.random.normal(jax.random.key(0), (2, 8, 6, 5))
  np.testing.assert_array_equal(models.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))


@pytest.mark.parametrize('features,strides', [(3, 1), (3, 2), (5, 1), (2, 1)])
def test_conv_padding_odd_features_matches_plain_conv(features, strides):
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, features))
  plain = nn.Conv(4, (3, 3), strides=strides, padding='SAME')
  padded = nn.Conv(4, (3, 3), strides=strides, padding='SAME',
                   conv_general_dilated=models.conv_padding_odd_features)
  v = plain.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, padded.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, v)
  np.testing.assert_allclose(padded.apply(v, x), plain.apply(v, x), rtol=1e-5, atol=1e-5)
  grad = lambda conv: jax.grad(lambda a: (conv.apply(v, a) ** 2).sum())(x)
  np.testing.assert_allclose(grad(padded), grad(plain), rtol=1e-4, atol=1e-4)


def test_plain_model_is_stock_flax_with_the_same_parameters_and_function(built):
  name, model, variables = built
  plain = model.clone(plain=True)
  x = jax.random.uniform(jax.random.key(1), (2, *models.get_spec(name).input_shape))
  plain_vars = jax.eval_shape(plain.init, jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, plain_vars) == jax.tree.map(jnp.shape, variables)
  np.testing.assert_allclose(jax.jit(plain.apply)(variables, x),
                             jax.jit(model.apply)(variables, x), rtol=1e-4, atol=1e-5)
  grad = lambda m: jax.jit(jax.grad(lambda a: m.apply(variables, a)[:, 0].sum()))(x)
  np.testing.assert_allclose(grad(plain), grad(model), rtol=1e-4, atol=1e-6)
  # Stock layers: nn.max_pool is a reduce_window; the first conv sees the image's own channels.
  assert _primitives(plain.apply, variables, x).count('reduce_window_max') == (
      {'cnn_mnist': 2, 'alexnet_cifar': 3, 'alexnet_catdog': 3}.get(name, 0))
  assert 'reduce_window_max' not in _primitives(model.apply, variables, x)
  first_conv_features = lambda m: _conv_input_features(m.apply, variables, x)[0]
  assert first_conv_features(plain) == x.shape[-1]
  assert first_conv_features(model) == (4 if x.shape[-1] == 3 else x.shape[-1])


def _eqns(jaxpr):
  """Every equation of ``jaxpr`` and of the jaxprs nested in its equations, in order."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else (param,)):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _eqns(inner)


def _primitives(fn, *args):
  return [e.primitive.name for e in _eqns(jax.make_jaxpr(fn)(*args).jaxpr)]


def _conv_input_features(fn, *args):
  """The input feature count of each conv in ``fn``, in order (NHWC lhs)."""
  return [e.invars[0].aval.shape[-1] for e in _eqns(jax.make_jaxpr(fn)(*args).jaxpr)
          if e.primitive.name == 'conv_general_dilated']


@pytest.mark.parametrize('strides,hw', [(1, 8), (2, 8), (2, 7)])
def test_depthwise_conv_matches_grouped_conv(strides, hw):
  x = jax.random.normal(jax.random.key(0), (2, hw, hw, 6))
  dw = models.DepthwiseConv(3, strides)
  v = dw.init(jax.random.key(1), x)
  ref = nn.Conv(6, (3, 3), strides=strides, padding='SAME', feature_group_count=6, use_bias=False)
  want = ref.apply({'params': {'kernel': v['params']['kernel']}}, x)
  np.testing.assert_allclose(dw.apply(v, x), want, rtol=1e-5, atol=1e-5)


def test_normalisation_happens_inside_the_model():
  model, variables = models.init('cnn_mnist', jax.random.key(0))
  x = jnp.full((1, 28, 28, 1), models.MNIST_MEAN[0])
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])
  conv = variables['params']['conv1']['conv']
  # A mean-valued image normalises to zero, so conv1 sees only its bias.
  np.testing.assert_allclose(state['intermediates']['conv1']['__call__'][0][0, 5, 5],
                             jax.nn.relu(conv['bias']), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('x,err,match', [
    (np.zeros((32, 32, 3), np.float32), ValueError, 'rank'),
    (np.zeros((1, 32, 32, 1), np.float32), ValueError, 'per-image shape'),
    (np.zeros((1, 32, 32, 3), np.uint8), TypeError, 'floating'),
    (np.full((1, 32, 32, 3), 2.0, np.float32), ValueError, r'\[0, 1\]'),
    (np.full((1, 32, 32, 3), np.nan, np.float32), ValueError, 'NaN'),
])
def test_bad_input_is_rejected(x, err, match):
  model, variables = models.init('alexnet_cifar', jax.random.key(0))
  with pytest.raises(err, match=match):
    model.apply(variables, x)


def test_unknown_model_lists_registered():
  with pytest.raises(ValueError, match='alexnet_cifar'):
    models.create('resnet9000')
