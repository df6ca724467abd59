"""LIME: a model that looks at one superpixel ranks it first; ridge and segmentation parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.segmentation

from advsal_jax import saliency
from advsal_jax.saliency import _lime


def _blob_images():
  """Two smooth 24x24 RGB images with colour regions felzenszwalb separates."""
  yy, xx = np.mgrid[:24, :24] / 24.0
  a = np.stack([xx > 0.5, yy > 0.5, (xx + yy) > 1.0], -1).astype(np.float32) * 0.8 + 0.1
  b = np.stack([yy > 0.3, xx > 0.6, xx < 0.3], -1).astype(np.float32) * 0.7 + 0.2
  return np.stack([a, b])


def test_model_looking_at_one_segment_ranks_it_first():
  x = _blob_images()
  segments = saliency.segment_images(x, segmentation='felzenszwalb', scale=10, min_size=10)
  sizes = [np.bincount(s.ravel()) for s in segments]
  chosen = np.array([np.argsort(sz)[-2] for sz in sizes])  # second-largest segment
  masks = (segments == chosen[:, None, None]).astype(np.float32)[..., None]

  truth = (x * masks).sum(axis=(1, 2, 3))

  def apply_fn(mask, xx):
    # Logit 0 sums the pixels of the chosen segment (``mask``); logit 1 is constant.
    s = (xx * mask[None]).sum(axis=(1, 2, 3))
    return jnp.stack([s, jnp.zeros_like(s)], axis=1)

  explain = jax.jit(lambda mask, xb, seg, k: saliency.lime_explain(
      apply_fn, mask, xb, jnp.zeros(1, jnp.int32), key=k, segments=seg,
      num_segments=int(segments.max()) + 1, num_samples=300, fill=0.0, batch_size=64))
  for b in range(2):  # one image per call: the synthetic model is image-specific
    result = explain(masks[b], x[b:b + 1], segments[b:b + 1], jax.random.key(b))
    assert int(result.ranking[0, 0]) == chosen[b]
    # The model is linear in the on/off vector: coef = the segment's pixel sum (ridge
    # shrinks it by about alpha / sum_n w_n var(z), a few %), other coefficients ~ 0.
    coef = np.asarray(result.coefficients[0])
    np.testing.assert_allclose(coef[chosen[b]], truth[b], rtol=0.06)
    assert np.abs(np.delete(coef, chosen[b])).max() < 0.05 * truth[b]
    np.testing.assert_allclose(result.pixel_weights[0, ..., 0], coef[segments[b]], rtol=1e-6)


def test_weighted_ridge_matches_normal_equations():
  rng = np.random.default_rng(0)
  z = rng.integers(0, 2, size=(50, 6)).astype(np.float32)
  y = rng.normal(size=50).astype(np.float32)
  w = rng.uniform(0.1, 1.0, size=50).astype(np.float32)
  beta, c = _lime.weighted_ridge(jnp.asarray(z), jnp.asarray(y), jnp.asarray(w), alpha=1.0)
  # Augmented design [1, z] with the intercept unpenalised.
  design = np.concatenate([np.ones((50, 1)), z], axis=1).astype(np.float64)
  penalty = np.diag([0.0] + [1.0] * 6)
  sol = np.linalg.solve(design.T @ (w[:, None] * design) + penalty, design.T @ (w * y))
  np.testing.assert_allclose(beta, sol[1:], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(c, sol[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('method,kwargs', [('felzenszwalb', {'scale': 10}),
                                           ('slic', {'n_segments': 8}),
                                           ('quickshift', {'kernel_size': 2, 'max_dist': 200,
                                                           'ratio': 0.2})])
def test_segment_images_matches_skimage_partition(method, kwargs):
  x = _blob_images()
  got = saliency.segment_images(x, segmentation=method, **kwargs)
  for b in range(2):
    ref = getattr(skimage.segmentation, method)(x[b].astype(np.float64), **kwargs)
    relabelled = np.unique(ref, return_inverse=True)[1].reshape(ref.shape)
    np.testing.assert_array_equal(got[b], relabelled)
  gray = saliency.segment_images(x[..., :1], segmentation=method, **kwargs)
  assert gray.shape == (2, 24, 24) and gray.min() == 0


def test_chunked_equals_unchunked_and_errors():
  x = _blob_images()
  segments = saliency.segment_images(x, segmentation='slic', n_segments=8)
  weights = jnp.asarray(np.random.default_rng(0).normal(size=(24 * 24 * 3, 2)), jnp.float32)

  def apply_fn(p, xx):
    return jnp.tanh(xx.reshape(xx.shape[0], -1) @ p)

  run = jax.jit(lambda p, s: [saliency.lime(apply_fn, p, x, jnp.array([0, 1]),
                                            key=jax.random.key(1), segments=s,
                                            num_segments=int(segments.max()) + 1,
                                            num_samples=20, batch_size=bs)
                              for bs in (7, None)])
  chunked, unchunked = run(weights, segments)
  np.testing.assert_allclose(chunked, unchunked, rtol=1e-5, atol=1e-6)
  target = np.zeros(2, np.int32)
  with pytest.raises(ValueError, match='key'):
    saliency.lime(apply_fn, weights, x, target, segments=segments)
  with pytest.raises(ValueError, match='segments must be'):
    saliency.lime(apply_fn, weights, x, target, key=jax.random.key(0), segments=segments[:1])
  with pytest.raises(ValueError, match='num_segments'):
    jax.jit(lambda s: saliency.lime(apply_fn, weights, x, target, key=jax.random.key(0),
                                    segments=s))(segments)
  with pytest.raises(ValueError, match='segmentation must be one of'):
    saliency.segment_images(x, segmentation='watershed')


def test_default_quickshift_scales_lime_kernel_to_the_image():
  """LIME's kernel_size=4 (for 224-pixel images) becomes 1 on 32x32 CIFAR-10 images."""
  x = np.random.default_rng(0).uniform(size=(1, 32, 32, 3)).astype(np.float32)
  got = saliency.segment_images(x)[0]
  ref = skimage.segmentation.quickshift(x[0].astype(np.float64), kernel_size=1, max_dist=200,
                                        ratio=0.2, rng=42)
  relabelled = np.unique(ref, return_inverse=True)[1].reshape(ref.shape)
  np.testing.assert_array_equal(got, relabelled)
  assert len(np.unique(got)) > 1
