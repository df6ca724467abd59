"""The saliency contract, checked for every method in ``saliency.REGISTRY``.

Shape, dtype, finiteness, jit == eager, batch == per-example, key determinism, errors on bad
inputs, and guards that fail when a registered or exported method is missing from the table
or its spec disagrees with its function. Methods are called through ``saliency.explain`` with
``key`` and ``layer`` passed to every one of them; ``MASKER_METHODS`` get a small masking
model over the same TinyNet instead of TinyNet itself.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import saliency

from testing_utils import grid_segments, TinyNet

B, H, W, C, K = 3, 8, 8, 3, 3
LAYER = 'features'

# name -> (hyper-parameters (static), per-example array arguments (sliced with the batch),
#          channels of the result). Whether a method is stochastic comes from its spec.
CASES = {
    'gradient': ({}, {}, C),
    'gradient_x_input': ({}, {}, C),
    'smoothgrad': ({'num_samples': 5, 'batch_size': 2}, {}, C),
    'guided_backprop': ({}, {}, C),
    'enhanced_guided_backprop': ({}, {'contrast_class': np.array([1, 0, 2], np.int32)}, C),
    'grad_cam': ({}, {}, 1),
    'guided_grad_cam': ({}, {}, C),
    'cam': ({}, {}, 1),
    'integrated_gradients': ({'num_steps': 5, 'batch_size': 2},
                             {'baseline': np.full((B, H, W, C), 0.5, np.float32)}, C),
    'lime': ({'num_samples': 12, 'batch_size': 5, 'num_segments': 4},
             {'segments': grid_segments(B, H, W)}, C),
    'learnt_saliency': ({}, {}, 1),
    'gbvs': ({'grid_size': 8, 'batch_size': 2}, {}, 1),
}

# Exported names that are not attribution methods (registry, helpers, diagnostics, types).
NOT_METHODS = {'FAMILIES', 'LAYER_METHODS', 'MASKER_METHODS', 'METHODS', 'ONE_CHANNEL_FAMILIES',
               'REGISTRY', 'STOCHASTIC_METHODS', 'LimeResult', 'MethodSpec', 'explain',
               'guided_relu', 'heatmap', 'lime_explain', 'normalize', 'segment_images',
               'to_heatmap', 'with_guided_relu',
               # The masking model of learnt_saliency, its objective and checkpoints.
               'Masker', 'MaskerLoss', 'alternative_images', 'attach_classifier',
               'classifier_variables', 'decoder_params', 'init_masker', 'load_masker',
               'masker_from_metadata', 'masker_loss', 'phi',
               # Label-free (no model): the AdVis saliency differences.
               'log_ratio_difference', 'saliency_difference'}

# Exported label-free functions registered behind the saliency signature (fn wraps them).
WRAPPED = {'gbvs'}


@pytest.fixture(scope='module')
def setup():
  model = TinyNet(num_classes=K)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, H, W, C)))
  x = jax.random.uniform(jax.random.key(1), (B, H, W, C))
  target = jnp.array([0, 2, 1], jnp.int32)
  return model, variables, x, target


@pytest.fixture(scope='module')
def masker(setup):
  """A small masking model over the TinyNet of ``setup``: ``(masker, variables)``."""
  model, variables, x, _ = setup
  masker = saliency.Masker(model, ('stem', 'features'), width=4)
  return masker, saliency.init_masker(masker, variables, x, key=jax.random.key(2))


def _subject(name, setup, masker):
  """``(apply_fn, params)`` a method explains with: the masker's for MASKER_METHODS."""
  if name in saliency.MASKER_METHODS:
    return masker[0].apply, masker[1]
  return setup[0].apply, setup[1]


def test_table_covers_every_registered_and_exported_method():
  assert set(CASES) == set(saliency.REGISTRY), 'a registered method has no CASES row'
  for name in saliency.__all__:
    if name not in NOT_METHODS:
      assert name in saliency.REGISTRY, f'{name} is exported but not registered'
      if name not in WRAPPED:
        assert saliency.REGISTRY[name].fn is getattr(saliency, name)
  assert saliency.METHODS == {n: s.fn for n, s in saliency.REGISTRY.items()}
  assert saliency.STOCHASTIC_METHODS == {n for n, s in saliency.REGISTRY.items() if s.needs_key}
  assert saliency.LAYER_METHODS == {n for n, s in saliency.REGISTRY.items() if s.needs_layer}
  assert saliency.MASKER_METHODS == {n for n, s in saliency.REGISTRY.items() if s.needs_masker}
  assert saliency.MASKER_METHODS == {'learnt_saliency'}


def test_registered_gbvs_is_the_label_free_gbvs_and_ignores_model_and_target(setup):
  model, variables, x, target = setup
  other = model.init(jax.random.key(9), x)
  want = saliency.gbvs(x, grid_size=8)
  for params, t in ((variables, target), (other, target[::-1])):
    np.testing.assert_array_equal(
        saliency.explain('gbvs', model.apply, params, x, t, grid_size=8), want)


@pytest.mark.parametrize('name', sorted(saliency.REGISTRY))
def test_spec_matches_function(name):
  spec = saliency.REGISTRY[name]
  assert spec.name == name
  params = inspect.signature(spec.fn).parameters
  assert list(params)[:4] == ['apply_fn', 'params', 'x', 'target']
  assert params['key'].kind is inspect.Parameter.KEYWORD_ONLY
  assert params['key'].default is None
  assert spec.needs_layer == ('layer' in params)
  if spec.needs_layer:
    assert params['layer'].default is inspect.Parameter.empty
  if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    assert set(spec.defaults) | set(spec.per_example) <= set(params)
  assert set(CASES[name][1]) <= set(spec.per_example)
  assert (CASES[name][2] == 1) == (spec.family in saliency.ONE_CHANNEL_FAMILIES)


@pytest.mark.parametrize('name', sorted(CASES))
def test_contract(name, setup, masker):
  apply_fn, variables = _subject(name, setup, masker)
  _, _, x, target = setup
  static, batched, channels = CASES[name]
  stochastic = saliency.REGISTRY[name].needs_key
  key = jax.random.key(7)
  explain = functools.partial(saliency.explain, name, apply_fn, layer=LAYER, **static)
  eager = explain(variables, x, target, key=key, **batched)
  assert eager.shape == (B, H, W, channels)
  assert eager.dtype == jnp.float32
  assert np.isfinite(np.asarray(eager)).all()
  assert np.abs(np.asarray(eager)).max() > 0

  jitted = jax.jit(explain)
  np.testing.assert_allclose(jitted(variables, x, target, key=key, **batched), eager,
                             rtol=1e-4, atol=1e-6)

  # Example b alone (with key split(key, B)[b] for stochastic methods) == row b of the batch.
  keys = jax.random.split(key, B)
  for b in range(B):
    alone = jitted(variables, x[b:b + 1], target[b:b + 1],
                   key=keys[b][None] if stochastic else key,
                   **{k: v[b:b + 1] for k, v in batched.items()})
    np.testing.assert_allclose(alone[0], eager[b], rtol=1e-4, atol=1e-6)

  first = jitted(variables, x, target, key=key, **batched)
  np.testing.assert_array_equal(jitted(variables, x, target, key=key, **batched), first)
  other = np.asarray(jitted(variables, x, target, key=jax.random.key(8), **batched))
  if stochastic:
    assert np.abs(other - np.asarray(first)).max() > 1e-6
    with pytest.raises(ValueError, match='key'):
      explain(variables, x, target, **batched)
    with pytest.raises(ValueError, match='key'):
      saliency.REGISTRY[name].fn(apply_fn, variables, x, target, **static, **batched,
                                 **({'layer': LAYER} if name in saliency.LAYER_METHODS else {}))
  else:
    np.testing.assert_array_equal(other, first)  # A deterministic method ignores the key.


@pytest.mark.parametrize('name', sorted(CASES))
def test_bad_inputs(name, setup, masker):
  apply_fn, variables = _subject(name, setup, masker)
  _, _, x, target = setup
  static, batched, _ = CASES[name]
  explain = functools.partial(saliency.explain, name, apply_fn, variables,
                              key=jax.random.key(0), layer=LAYER, **static, **batched)
  with pytest.raises(ValueError, match=r'x must be a batch of images'):
    explain(x[0], target)
  with pytest.raises(ValueError, match=rf'\[0, {K}\)'):
    explain(x, target.at[1].set(K))
  with pytest.raises(ValueError, match='target'):
    explain(x, target[:2])
  with pytest.raises(TypeError, match='target'):
    explain(x, target.astype(jnp.float32))
