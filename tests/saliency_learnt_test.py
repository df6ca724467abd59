"""Tests of the learnt saliency (saliency/_learnt.py): the objective against numpy, Phi, the
alternative images against scipy, masks in [0, 1] with batch == per-image, the features read
by layer name against flax's captured intermediates, and the masker checkpoint round trip."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from advsal_jax import checkpoints
from advsal_jax import saliency

from testing_utils import linear_apply, random_study_checkpoint, TinyNet

B, H, W, C, K = 4, 8, 8, 3, 3


def _log_softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture(scope='module')
def linear():
  """A linear classifier, images, alternatives, hand-made masks and targets (float64 numpy)."""
  rng = np.random.default_rng(0)
  params = {'w': (0.3 * rng.normal(size=(H * W * C, K))).astype(np.float32),
            'b': rng.normal(size=(1, K)).astype(np.float32)}
  x = rng.uniform(size=(B, H, W, C)).astype(np.float32)
  alt = rng.uniform(size=(B, H, W, C)).astype(np.float32)
  masks = np.zeros((B, H, W, 1), np.float32)
  masks[0] = 1.0                                     # keep everything
  masks[2, :, :W // 2] = 1.0                         # keep the left half
  masks[3] = rng.uniform(size=(H, W, 1))             # soft
  return params, x, alt, masks, np.array([0, 1, 2, 1], np.int32)


def _reference_loss(params, x, alt, mask, target, loss: saliency.MaskerLoss):
  """The objective, written out in numpy (float64) from its definition."""
  w, b = np.float64(params['w']), np.float64(params['b'])
  x, alt, mask = np.float64(x), np.float64(alt), np.float64(mask)
  keep, drop = mask * x + (1 - mask) * alt, (1 - mask) * x + mask * alt
  z_keep, z_drop = keep.reshape(B, -1) @ w + b, drop.reshape(B, -1) @ w + b
  rows = np.arange(B)
  lp_keep, lp_drop = _log_softmax(z_keep)[rows, target], _log_softmax(z_drop)[rows, target]
  area = mask.mean(axis=(1, 2, 3))
  if loss.form == 'paper':
    per = loss.lambda1 * area - lp_keep + loss.lambda2 * np.exp(lp_drop) ** loss.lambda3
  else:
    def runner_up(z):
      other = z.copy()
      other[rows, target] = -np.inf
      return other.max(1)
    per = (np.maximum(z_drop[rows, target] - runner_up(z_drop) + loss.destroyer_confidence, 0)
           + loss.area_weight * ((mask + 5e-4) ** loss.area_power).mean(axis=(1, 2, 3))
           + loss.preserver_weight * np.maximum(
               runner_up(z_keep) - z_keep[rows, target] + loss.preserver_confidence, 0))
  return per.mean(), area.mean(), np.exp(lp_keep).mean(), np.exp(lp_drop).mean()


@pytest.mark.parametrize('loss', [
    saliency.MaskerLoss(),
    saliency.MaskerLoss(lambda1=1.5, lambda2=3.0, lambda3=0.5),
    saliency.MaskerLoss(form='margin'),
    saliency.MaskerLoss(form='margin', area_weight=6.0, area_power=0.5, preserver_weight=0.7,
                        preserver_confidence=2.0, destroyer_confidence=4.0),
], ids=['paper', 'paper_weights', 'margin', 'margin_weights'])
def test_loss_on_hand_made_masks_equals_numpy(linear, loss):
  params, x, alt, masks, target = linear
  got, terms = saliency.masker_loss(linear_apply, params, x, masks, target, alt, loss=loss)
  want, area, p_keep, p_drop = _reference_loss(params, x, alt, masks, target, loss)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose([terms['area'], terms['preserved_prob'], terms['destroyed_prob']],
                             [area, p_keep, p_drop], rtol=1e-5)
  np.testing.assert_allclose(terms['area_term'] + terms['preserver'] + terms['destroyer'], want,
                             rtol=1e-5)
  jitted = jax.jit(saliency.masker_loss, static_argnums=0, static_argnames='loss')
  np.testing.assert_allclose(jitted(linear_apply, params, x, masks, target, alt, loss=loss)[0],
                             want, rtol=1e-5)


def test_paper_destroyer_has_a_finite_gradient_at_probability_zero():
  # p ** 0.3 has an infinite derivative at p = 0; the objective differentiates exp(0.3 log p).
  params = {'w': np.zeros((H * W * C, 2), np.float32), 'b': np.array([[-200.0, 200.0]],
                                                                      np.float32)}
  x = np.ones((1, H, W, C), np.float32)
  grad = jax.grad(lambda m: saliency.masker_loss(
      linear_apply, params, x, m, np.array([0]), x)[0])(np.full((1, H, W, 1), 0.5, np.float32))
  assert np.isfinite(np.asarray(grad)).all()


def test_loss_settings_are_checked():
  with pytest.raises(ValueError, match="form must be one of.*got 'tv'"):
    saliency.MaskerLoss(form='tv')
  with pytest.raises(ValueError, match='lambda3 must be >= 0, got -1'):
    saliency.MaskerLoss(lambda3=-1.0)


def test_phi_keeps_x_where_the_mask_is_one_and_broadcasts_over_channels(linear):
  _, x, alt, masks, _ = linear
  np.testing.assert_allclose(saliency.phi(x, masks, alt), masks * x + (1 - masks) * alt,
                             rtol=1e-6)
  np.testing.assert_array_equal(saliency.phi(x, masks, alt)[0], x[0])
  np.testing.assert_array_equal(saliency.phi(x, masks, alt)[1], alt[1])


@pytest.mark.parametrize('shape,sigma', [((3, 28, 28, 1), None), ((2, 32, 32, 3), None),
                                         ((2, 16, 12, 3), 2.0)])
def test_blurred_alternatives_equal_scipy_gaussian_filter(shape, sigma):
  x = np.asarray(jax.random.uniform(jax.random.key(0), shape))
  got = np.asarray(saliency.alternative_images(jax.random.key(1), x, blur_prob=1.0,
                                               blur_sigma=sigma))
  # The reference's sigma 11 at 224 px, scaled to the image; radius 27/11 sigma, rounded.
  s = sigma or 11.0 * max(shape[1:3]) / 224
  radius = round(27 / 11 * s)
  for b in range(shape[0]):
    want = scipy.ndimage.gaussian_filter(np.float64(x[b]), sigma=(s, s, 0), mode='reflect',
                                         truncate=radius / s)
    np.testing.assert_allclose(got[b], want, atol=2e-6)


def test_noise_alternatives_are_a_random_colour_plus_noise():
  x = np.zeros((64, 32, 32, 3), np.float32)
  plain = np.asarray(saliency.alternative_images(jax.random.key(0), x, blur_prob=0.0,
                                                 noise_std=0.0, colour_range=0.3))
  colours = plain[:, 0, 0, :]
  np.testing.assert_array_equal(plain, np.broadcast_to(colours[:, None, None], plain.shape))
  assert colours.min() >= 0.35 and colours.max() <= 0.65
  assert colours.max() - colours.min() > 0.25 and len(np.unique(colours)) == colours.size
  noisy = np.asarray(saliency.alternative_images(jax.random.key(0), x, blur_prob=0.0,
                                                 noise_std=0.05, colour_range=0.3))
  residual = noisy - noisy.mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(residual.std(), 0.05, rtol=0.05)
  clipped = saliency.alternative_images(jax.random.key(0), x, blur_prob=0.0, noise_std=2.0)
  assert float(clipped.min()) == 0.0 and float(clipped.max()) == 1.0


def test_alternatives_mix_blur_and_noise_per_image_from_the_key():
  n = 400
  x = np.asarray(jax.random.uniform(jax.random.key(0), (n, 6, 6, 1)))
  key = jax.random.key(3)
  alt = np.asarray(saliency.alternative_images(key, x))
  blurred = np.asarray(saliency.alternative_images(key, x, blur_prob=1.0))
  is_blur = np.all(alt == blurred, axis=(1, 2, 3))
  # Binomial(400, 0.5): 0.5 +- 0.1 is five standard deviations.
  assert abs(is_blur.mean() - 0.5) < 0.1
  np.testing.assert_array_equal(saliency.alternative_images(key, x), alt)
  assert np.abs(np.asarray(saliency.alternative_images(jax.random.key(4), x)) - alt).max() > 0.1
  keys = jax.random.split(key, n)
  for b in (0, 7, n - 1):
    np.testing.assert_array_equal(
        saliency.alternative_images(keys[b][None], x[b:b + 1])[0], alt[b])


def test_alternative_settings_are_checked():
  x = np.zeros((1, 4, 4, 1), np.float32)
  with pytest.raises(ValueError, match='blur_prob must lie in'):
    saliency.alternative_images(jax.random.key(0), x, blur_prob=1.5)
  with pytest.raises(ValueError, match='blur_sigma must be > 0'):
    saliency.alternative_images(jax.random.key(0), x, blur_sigma=0.0)
  with pytest.raises(ValueError, match='rank'):
    saliency.alternative_images(jax.random.key(0), x[0])


@pytest.fixture(scope='module')
def tiny():
  """TinyNet, its variables, a masker over its 'stem' and 'features' and the masker's variables."""
  model = TinyNet(num_classes=K)
  variables = model.init(jax.random.key(0), jnp.zeros((1, H, W, C)))
  masker = saliency.Masker(model, ('stem', 'features'), width=4)
  mvars = saliency.init_masker(masker, variables, jnp.zeros((1, H, W, C)),
                               key=jax.random.key(1))
  # A random class embedding (it starts at zero), so masks depend on the class.
  emb = mvars['params']['class_embedding']['embedding']
  mvars['params']['class_embedding']['embedding'] = 3 * jax.random.normal(
      jax.random.key(2), emb.shape)
  return model, variables, masker, mvars


def test_masks_are_in_unit_interval_batched_equals_per_image_and_jit_equals_eager(tiny):
  _, _, masker, mvars = tiny
  x = jax.random.uniform(jax.random.key(5), (B, H, W, C))
  target = jnp.array([0, 1, 2, 0])
  eager = np.asarray(saliency.learnt_saliency(masker.apply, mvars, x, target))
  assert eager.shape == (B, H, W, 1) and eager.dtype == np.float32
  jitted = jax.jit(saliency.learnt_saliency, static_argnums=0)
  np.testing.assert_allclose(jitted(masker.apply, mvars, x, target), eager, atol=1e-6)
  for b in range(B):
    np.testing.assert_allclose(jitted(masker.apply, mvars, x[b:b + 1], target[b:b + 1])[0],
                               eager[b], atol=1e-6)
  # Saturated decoders and extreme images stay in [0, 1].
  big = jax.tree.map(lambda p: 50 * p, mvars)
  for images in (x, jnp.zeros_like(x), jnp.ones_like(x)):
    m = np.asarray(saliency.learnt_saliency(masker.apply, big, images, target))
    assert m.min() >= 0.0 and m.max() <= 1.0
  other = np.asarray(saliency.learnt_saliency(masker.apply, mvars, x, (target + 1) % K))
  assert np.abs(other - eager).max() > 1e-3, 'the class embedding changes nothing'


def test_features_are_the_named_classifier_layers(tiny):
  model, variables, masker, mvars = tiny
  x = jax.random.uniform(jax.random.key(6), (2, H, W, C))
  feats, logits = masker.apply(mvars, x, method='features')
  _, state = model.apply(variables, x, capture_intermediates=True)
  inter = state['intermediates']
  np.testing.assert_array_equal(feats[0], inter['stem']['__call__'][0])
  np.testing.assert_array_equal(feats[1], inter['features']['__call__'][0])
  np.testing.assert_allclose(logits, model.apply(variables, x), rtol=1e-6)
  np.testing.assert_allclose(masker.apply(mvars, x, method='classify'), model.apply(variables, x),
                             rtol=1e-6)
  path = saliency.Masker(model, ('features/conv',), width=4)
  feats, _ = path.apply(saliency.attach_classifier({'params': {}}, variables), x,
                        method='features')
  np.testing.assert_array_equal(feats[0], inter['features']['conv']['__call__'][0])


@pytest.mark.parametrize('layers,match', [
    (('nope',), r"'nope' is not a layer of the classifier; valid layers.*'features'"),
    (('conv',), "'conv' is ambiguous"),
    (('logits',), r"'logits' must output an activation map \[B,h,w,k\]"),
    ((), 'at least one classifier layer'),
])
def test_bad_layers(tiny, layers, match):
  model, variables, _, _ = tiny
  with pytest.raises(ValueError, match=match):
    saliency.init_masker(saliency.Masker(model, layers), variables, jnp.zeros((1, H, W, C)),
                         key=jax.random.key(0))


def test_variables_split_into_decoder_and_classifier_and_join_again(tiny):
  model, variables, masker, mvars = tiny
  decoder = saliency.decoder_params(mvars)
  assert 'classifier' not in decoder['params'] and set(decoder) == {'params'}
  assert jax.tree.all(jax.tree.map(np.array_equal, saliency.classifier_variables(mvars),
                                   variables))
  joined = saliency.attach_classifier(decoder, variables)
  assert jax.tree.all(jax.tree.map(np.array_equal, joined, mvars))
  other = TinyNet(num_classes=K + 1).init(jax.random.key(0), jnp.zeros((1, H, W, C)))
  with pytest.raises(ValueError, match='classifier_vars must match'):
    saliency.init_masker(masker, other, jnp.zeros((1, H, W, C)), key=jax.random.key(0))


def test_learnt_saliency_refuses_a_classifier(tiny):
  model, variables, masker, _ = tiny
  x = jnp.zeros((2, H, W, C))
  with pytest.raises(ValueError, match='apply_fn and variables of a masking model'):
    saliency.learnt_saliency(model.apply, variables, x, jnp.array([0, 1]))
  with pytest.raises(ValueError, match='apply_fn and variables of a masking model'):
    saliency.learnt_saliency(masker.apply, variables, x, jnp.array([0, 1]))


def _save_masker(root, classifier_dir):
  """A random masker of the random alexnet_cifar checkpoint at ``classifier_dir``."""
  classifier, cvars, cmeta = checkpoints.load(classifier_dir)
  masker = saliency.Masker(classifier, ('conv1', 'conv2', 'conv5'), width=8)
  mvars = saliency.init_masker(masker, cvars, jnp.zeros((1, 32, 32, 3)), key=jax.random.key(3))
  metadata = {'kind': 'masker', 'classifier': classifier_dir,
              'classifier_checkpoint': {k: cmeta.get(k) for k in ('model', 'test_accuracy')},
              'masker': {'layers': list(masker.layers), 'width': 8, 'mask_downsample': 2}}
  directory = checkpoints.save(root / 'masker', model_name='alexnet_cifar',
                               variables=saliency.decoder_params(mvars), metadata=metadata,
                               step=7)
  return masker, mvars, directory


def test_load_masker_restores_the_decoder_and_joins_the_classifier(tmp_path):
  _, classifier_dir, _ = random_study_checkpoint(tmp_path)
  masker, mvars, directory = _save_masker(tmp_path, classifier_dir)
  loaded, lvars, meta = saliency.load_masker(str(directory))
  assert loaded.layers == masker.layers and meta['step'] == 7
  assert jax.tree.all(jax.tree.map(np.array_equal, lvars, mvars))
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  np.testing.assert_array_equal(
      saliency.learnt_saliency(loaded.apply, lvars, x, jnp.array([1, 9])),
      saliency.learnt_saliency(masker.apply, mvars, x, jnp.array([1, 9])))
  with pytest.raises(checkpoints.CheckpointError, match='not a masker checkpoint'):
    saliency.load_masker(classifier_dir)
  with pytest.raises(checkpoints.CheckpointError, match='missing'):
    saliency.load_masker(str(tmp_path / 'absent'))
  # A retrained classifier (other metadata) no longer matches the masker.
  meta_file = tmp_path / 'ckpt' / checkpoints.METADATA_FILE
  classifier_meta = json.loads(meta_file.read_text())
  meta_file.write_text(json.dumps({**classifier_meta, 'test_accuracy': 0.5}))
  with pytest.raises(checkpoints.CheckpointError, match='retrain the masker'):
    saliency.load_masker(str(directory))

