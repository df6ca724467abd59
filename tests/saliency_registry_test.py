"""saliency.REGISTRY, explain and heatmap: explain == the method called directly, its errors,
heatmap by family against to_heatmap + normalize and against the old channel-count rule."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import saliency

from testing_utils import grid_segments, TinyNet

B, H, W, C, K = 2, 8, 8, 3, 3
LAYER = 'features'

# Per-example arguments for the methods that take them (the rest: none).
_PER_EXAMPLE = {
    'enhanced_guided_backprop': {'contrast_class': np.array([2, 0], np.int32)},
    'integrated_gradients': {'baseline': np.full((B, H, W, C), 0.25, np.float32)},
    'lime': {'segments': grid_segments(B, H, W)},
}


@pytest.fixture(scope='module')
def setup():
  model = TinyNet(num_classes=K)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, H, W, C)))
  x = jax.random.uniform(jax.random.key(1), (B, H, W, C))
  return model, variables, x, jnp.array([0, 2], jnp.int32)


@pytest.fixture(scope='module')
def masker(setup):
  """A small masking model over the TinyNet of ``setup``: ``(masker, variables)``."""
  model, variables, x, _ = setup
  masker = saliency.Masker(model, ('stem', 'features'), width=4)
  return masker, saliency.init_masker(masker, variables, x, key=jax.random.key(2))


@pytest.mark.parametrize('name', sorted(saliency.REGISTRY))
def test_explain_equals_direct_call_with_the_function_defaults(name, setup, masker):
  model, variables, x, target = setup
  apply_fn = model.apply
  if name in saliency.MASKER_METHODS:
    apply_fn, variables = masker[0].apply, masker[1]
  spec = saliency.REGISTRY[name]
  key = jax.random.key(3)
  per_example = _PER_EXAMPLE.get(name, {})
  assert set(per_example) == set(spec.per_example)
  got = saliency.explain(name, apply_fn, variables, x, target, key=key, layer=LAYER,
                         **per_example)
  direct = spec.fn(apply_fn, variables, x, target, **per_example,
                   **({'key': key} if spec.needs_key else {}),
                   **({'layer': LAYER} if spec.needs_layer else {}))
  np.testing.assert_array_equal(got, direct)


def test_explain_passes_overrides_and_ignores_unneeded_key_and_layer(setup):
  model, variables, x, target = setup
  key = jax.random.key(5)
  np.testing.assert_array_equal(
      saliency.explain('smoothgrad', model.apply, variables, x, target, key=key,
                       layer=LAYER, num_samples=3, noise_level=0.3),
      saliency.smoothgrad(model.apply, variables, x, target, key=key, num_samples=3,
                          noise_level=0.3))
  np.testing.assert_array_equal(
      saliency.explain('gradient', model.apply, variables, x, target, key=key, layer='nope'),
      saliency.gradient(model.apply, variables, x, target))


def test_explain_traces_under_jit(setup):
  model, variables, x, target = setup
  run = jax.jit(functools.partial(saliency.explain, 'grad_cam', model.apply, layer=LAYER))
  np.testing.assert_allclose(run(variables, x, target),
                             saliency.grad_cam(model.apply, variables, x, target, layer=LAYER),
                             rtol=1e-5, atol=1e-7)


def test_explain_errors(setup):
  model, variables, x, target = setup
  explain = functools.partial(saliency.explain, apply_fn=model.apply, params=variables, x=x,
                              target=target)
  with pytest.raises(ValueError, match=r"unknown saliency method 'gradcam'.*'grad_cam'"):
    explain('gradcam')
  with pytest.raises(ValueError, match=r"'lime' is stochastic: pass key="):
    explain('lime', segments=grid_segments(B, H, W))
  with pytest.raises(ValueError, match=r"'cam' needs layer="):
    explain('cam')
  with pytest.raises(TypeError, match=r"'smoothgrad' got unexpected keyword.*\['num_steps'\]"):
    explain('smoothgrad', key=jax.random.key(0), num_steps=3)
  with pytest.raises(TypeError, match=r"'gradient' got unexpected keyword.*\['baseline'\]"):
    explain('gradient', baseline=0.5)
  with pytest.raises(TypeError, match=r"'gbvs' got unexpected keyword.*\['num_steps'\]"):
    explain('gbvs', num_steps=3)
  # A classifier is not a masking model: the error says what learnt_saliency needs.
  with pytest.raises(ValueError, match='apply_fn and variables of a masking model'):
    explain('learnt_saliency')


def test_spec_is_read_only_and_checks_its_family():
  spec = saliency.REGISTRY['smoothgrad']
  with pytest.raises(TypeError):
    spec.defaults['num_samples'] = 1  # type: ignore[index]
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.needs_key = False  # type: ignore[misc]
  with pytest.raises(ValueError, match="family of 'x' must be one of"):
    saliency.MethodSpec('x', saliency.gradient, 'gradients')
  with pytest.raises(ValueError, match='both in defaults and per_example'):
    saliency.MethodSpec('x', saliency.gradient, 'gradient', defaults={'a': 1},
                        per_example=('a',))
  # Hashable (a static argument under jit): an equal copy hashes alike.
  copy = dataclasses.replace(spec)
  assert copy is not spec and copy == spec and hash(copy) == hash(spec)


def _attr(channels: int) -> np.ndarray:
  """Signed attributions f32[3,20,16,channels] with one outlier pixel per map."""
  a = np.random.default_rng(0).normal(size=(3, 20, 16, channels)).astype(np.float32)
  a[:, 0, 0] = 40.0
  return a


def _old_heatmap(attr):
  """The pre-registry rule of study 000: min-max for one channel, else 99th percentile."""
  maps = saliency.to_heatmap(attr, reduce='abs_sum')
  mode = 'minmax' if attr.shape[-1] == 1 else 'percentile'
  return saliency.normalize(maps, mode=mode)


@pytest.mark.parametrize('family,mode', [('gradient', 'percentile'), ('cam', 'minmax'),
                                         ('perturbation', 'minmax'), ('mask', 'minmax'),
                                         ('label_free', 'minmax')])
@pytest.mark.parametrize('channels', [1, 3])
def test_heatmap_by_family(family, mode, channels):
  attr = _attr(channels)
  reduced = np.abs(attr).sum(-1)  # numpy reference: abs-sum over channels, then per map
  flat = reduced.reshape(len(attr), -1)
  if mode == 'percentile':
    lo, hi = (np.percentile(flat, q, axis=1, keepdims=True) for q in (1.0, 99.0))
    flat = np.clip(flat, lo, hi)
  else:
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
  want = ((flat - lo) / (hi - lo)).reshape(reduced.shape)
  np.testing.assert_allclose(saliency.heatmap(attr, family), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(saliency.heatmap(attr, family, normalize=False), reduced,
                             rtol=1e-6)
  run = jax.jit(saliency.heatmap, static_argnames=('family', 'normalize'))
  np.testing.assert_allclose(run(attr, family=family), saliency.heatmap(attr, family),
                             rtol=1e-5, atol=1e-6)


def test_heatmap_takes_a_method_name():
  attr = _attr(3)
  for name, spec in saliency.REGISTRY.items():
    np.testing.assert_array_equal(saliency.heatmap(attr, name),
                                  saliency.heatmap(attr, spec.family))
  with pytest.raises(ValueError, match="family must be one of.*got 'pixels'"):
    saliency.heatmap(attr, 'pixels')


def test_heatmap_equals_old_rule_on_rgb_gradient_and_cam_maps():
  """Study 000's maps (3-channel gradient family, 1-channel Grad-CAM) are unchanged, bit for bit."""
  rgb, one = _attr(3), np.abs(_attr(1))
  for name in ('gradient', 'smoothgrad', 'guided_backprop', 'guided_grad_cam'):
    np.testing.assert_array_equal(saliency.heatmap(rgb, name), _old_heatmap(rgb))
  for name in ('grad_cam', 'cam'):
    np.testing.assert_array_equal(saliency.heatmap(one, name), _old_heatmap(one))


def test_one_channel_gradient_map_uses_the_percentile_rule():
  """An MNIST gradient map is normalised as a gradient map, not min-max like a CAM map."""
  attr = _attr(1)
  got = np.asarray(saliency.heatmap(attr, 'gradient'))
  np.testing.assert_array_equal(
      got, saliency.normalize(saliency.to_heatmap(attr), mode='percentile'))
  # The outlier no longer squeezes the other pixels towards 0, as min-max (the old rule) did.
  assert np.median(got) > 2 * np.median(np.asarray(_old_heatmap(attr)))
