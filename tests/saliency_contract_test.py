"""The saliency contract, checked for every method in ``saliency.METHODS``.

Shape, dtype, finiteness, jit == eager, batch == per-example, key determinism, and a guard
that fails when an exported method is missing from the table.
"""

import functools
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import saliency

B, H, W, C, K = 3, 8, 8, 3, 3


class ConvRelu(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(self.features, (3, 3), name='conv')(x))


class TinyNet(nn.Module):
  """conv-relu, conv-relu ('features', 4x4), global average pooling, dense: CAM-exact."""

  @nn.compact
  def __call__(self, x):
    x = ConvRelu(6, name='stem')(x)
    x = x.reshape(x.shape[0], H // 2, 2, W // 2, 2, 6).max(axis=(2, 4))
    x = ConvRelu(8, name='features')(x)
    return nn.Dense(K, name='logits')(x.mean(axis=(1, 2)))


def _grid_segments(batch):
  """Four quadrant superpixels per image: i32[batch,H,W] in [0, 4)."""
  seg = (np.arange(H)[:, None] >= H // 2) * 2 + (np.arange(W)[None, :] >= W // 2)
  return np.broadcast_to(seg, (batch, H, W)).astype(np.int32)


# name -> (static hyper-parameters, per-example array arguments (sliced with the batch),
#          stochastic, channels of the result)
CASES = {
    'gradient': ({}, {}, False, C),
    'gradient_x_input': ({}, {}, False, C),
    'smoothgrad': ({'num_samples': 5, 'batch_size': 2}, {}, True, C),
    'guided_backprop': ({}, {}, False, C),
    'enhanced_guided_backprop': ({}, {}, False, C),
    'grad_cam': ({'layer': 'features'}, {}, False, 1),
    'guided_grad_cam': ({'layer': 'features'}, {}, False, C),
    'cam': ({'layer': 'features'}, {}, False, 1),
    'integrated_gradients': ({'num_steps': 5, 'batch_size': 2}, {}, False, C),
    'lime': ({'num_samples': 12, 'batch_size': 5, 'num_segments': 4},
             {'segments': _grid_segments(B)}, True, C),
}

# Exported names that are not attribution methods (helpers, diagnostics, types).
NOT_METHODS = {'METHODS', 'STOCHASTIC_METHODS', 'LAYER_METHODS', 'LimeResult',
               'guided_relu', 'with_guided_relu', 'lime_explain', 'segment_images',
               'normalize', 'to_heatmap'}


@pytest.fixture(scope='module')
def setup():
  model = TinyNet()
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, H, W, C)))
  x = jax.random.uniform(jax.random.key(1), (B, H, W, C))
  target = jnp.array([0, 2, 1], jnp.int32)
  return model, variables, x, target


def test_table_covers_every_exported_method():
  assert set(CASES) == set(saliency.METHODS)
  for name in saliency.__all__:
    obj = getattr(saliency, name)
    if name not in NOT_METHODS:
      assert name in saliency.METHODS, f'{name} is exported but not in METHODS/CASES'
      assert saliency.METHODS[name] is obj
  assert saliency.STOCHASTIC_METHODS == {n for n, case in CASES.items() if case[2]}
  assert saliency.LAYER_METHODS == {
      n for n, f in saliency.METHODS.items() if 'layer' in inspect.signature(f).parameters}


@pytest.mark.parametrize('name', sorted(saliency.METHODS))
def test_signature(name):
  params = inspect.signature(saliency.METHODS[name]).parameters
  assert list(params)[:4] == ['apply_fn', 'params', 'x', 'target']
  assert params['key'].kind is inspect.Parameter.KEYWORD_ONLY
  assert params['key'].default is None


@pytest.mark.parametrize('name', sorted(CASES))
def test_contract(name, setup):
  model, variables, x, target = setup
  static, batched, stochastic, channels = CASES[name]
  method = saliency.METHODS[name]
  key = jax.random.key(7) if stochastic else None
  eager = method(model.apply, variables, x, target, key=key, **static, **batched)
  assert eager.shape == (B, H, W, channels)
  assert eager.dtype == jnp.float32
  assert np.isfinite(np.asarray(eager)).all()
  assert np.abs(np.asarray(eager)).max() > 0

  jitted = jax.jit(functools.partial(method, model.apply, **static))
  np.testing.assert_allclose(jitted(variables, x, target, key=key, **batched), eager,
                             rtol=1e-4, atol=1e-6)

  # Example b alone (with key split(key, B)[b] for stochastic methods) == row b of the batch.
  keys = jax.random.split(key, B) if stochastic else [None] * B
  for b in range(B):
    alone = jitted(variables, x[b:b + 1], target[b:b + 1],
                   key=None if keys[b] is None else keys[b][None],
                   **{k: v[b:b + 1] for k, v in batched.items()})
    np.testing.assert_allclose(alone[0], eager[b], rtol=1e-4, atol=1e-6)

  first = jitted(variables, x, target, key=key, **batched)
  np.testing.assert_array_equal(jitted(variables, x, target, key=key, **batched), first)
  if stochastic:
    other = jitted(variables, x, target, key=jax.random.key(8), **batched)
    assert np.abs(np.asarray(other) - np.asarray(first)).max() > 1e-6
    with pytest.raises(ValueError, match='key'):
      method(model.apply, variables, x, target, **static, **batched)


@pytest.mark.parametrize('name', sorted(CASES))
def test_bad_inputs(name, setup):
  model, variables, x, target = setup
  static, batched, stochastic, _ = CASES[name]
  method = saliency.METHODS[name]
  key = jax.random.key(0) if stochastic else None
  with pytest.raises(ValueError, match='rank'):
    method(model.apply, variables, x[0], target, key=key, **static, **batched)
  with pytest.raises(ValueError, match=rf'\[0, {K}\)'):
    method(model.apply, variables, x, target.at[1].set(K), key=key, **static, **batched)
  with pytest.raises(ValueError, match='target'):
    method(model.apply, variables, x, target[:2], key=key, **static, **batched)
  with pytest.raises(TypeError, match='target'):
    method(model.apply, variables, x, target.astype(jnp.float32), key=key, **static,
           **batched)
