"""advsal_jax.perturbation against direct numpy/scipy computations and closed forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from advsal_jax import perturbation
from testing_utils import linear_apply


def _numpy_ranks(scores, tiebreak):
  """Reference: lexicographic sort on (-score, tiebreak) per map, then each pixel's place."""
  flat, tb = scores.reshape(len(scores), -1), tiebreak.reshape(len(scores), -1)
  ranks = np.empty(flat.shape, np.int64)
  for i in range(len(flat)):
    ranks[i, np.lexsort((tb[i], -flat[i]))] = np.arange(flat.shape[1])
  return ranks.reshape(scores.shape)


def test_pixel_counts_round_each_percentage_of_the_pixels():
  grid = (0, 5, 10, 12.5, 33, 50, 100)
  got = perturbation.pixel_counts(grid, 1024)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, [0, 51, 102, 128, 338, 512, 1024])
  np.testing.assert_array_equal(perturbation.pixel_counts((0, 10, 25, 50, 75, 100), 16),
                                [0, 2, 4, 8, 12, 16])


@pytest.mark.parametrize('shape', [(3, 6, 5), (2, 4, 4, 2)])
def test_pixel_ranks_match_a_lexsort_with_ties(shape):
  rng = np.random.default_rng(0)
  scores = np.round(rng.random(shape) * 3).astype(np.float32)  # 4 values: many ties
  tiebreak = rng.random(shape).astype(np.float32)
  got = np.asarray(perturbation.pixel_ranks(scores, tiebreak))
  assert got.shape == shape and got.dtype == np.int32
  np.testing.assert_array_equal(got, _numpy_ranks(scores, tiebreak))
  np.testing.assert_array_equal(jax.jit(perturbation.pixel_ranks)(scores, tiebreak), got)


def test_equal_scores_are_ranked_by_the_tiebreak_not_by_position():
  tiebreak = jnp.asarray([[0.5, 0.1, 0.9, 0.3, 0.7, 0.2]])
  # Ascending tiebreak: 0.1 (pixel 1) first, 0.9 (pixel 2) last.
  np.testing.assert_array_equal(perturbation.pixel_ranks(jnp.zeros((1, 6)), tiebreak),
                                [[3, 0, 5, 2, 4, 1]])
  np.testing.assert_array_equal(
      perturbation.pixel_ranks(jnp.asarray([[1.0, 0, 0, 0, 0, 2]]), tiebreak),
      [[1, 2, 5, 3, 4, 0]])


@pytest.mark.parametrize('k', [0, 7, 30])
def test_replace_top_changes_exactly_the_top_k_pixels(k):
  rng = np.random.default_rng(1)
  x = rng.random((2, 5, 6, 3)).astype(np.float32)
  ranks = np.stack([rng.permutation(30).reshape(5, 6) for _ in range(2)])
  colour = np.asarray([0.1, 0.2, 0.3], np.float32)
  images = rng.random(x.shape).astype(np.float32)
  for fill, want_fill in ((colour, np.broadcast_to(colour, x.shape)), (images, images)):
    got = np.asarray(perturbation.replace_top(x, ranks, fill, k))
    top = ranks < k
    np.testing.assert_array_equal(got[top], want_fill[top])
    np.testing.assert_array_equal(got[~top], x[~top])


def test_gaussian_blur_matches_scipy():
  x = np.random.default_rng(2).random((2, 9, 7, 3)).astype(np.float32)
  for sigma, radius in ((0.7, 3), (2.0, 6)):  # radius ceil(3 sigma)
    want = scipy.ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode='nearest',
                                         radius=(0, radius, radius, 0))
    np.testing.assert_allclose(perturbation.gaussian_blur(jnp.asarray(x), sigma), want,
                               atol=1e-5)


def test_fill_images_mean_blur_and_noise():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.random((3, 6, 6, 2)), jnp.float32)
  mean = jnp.asarray([0.4, 0.6])
  np.testing.assert_array_equal(perturbation.fill_images(x, 'mean', mean=mean),
                                np.broadcast_to(np.asarray(mean), x.shape))
  np.testing.assert_array_equal(perturbation.fill_images(x, 'blur', sigma=1.5),
                                perturbation.gaussian_blur(x, 1.5))
  keys = jax.random.split(jax.random.key(4), 3)
  noise = np.asarray(perturbation.fill_images(x, 'noise', keys=keys))
  for i in range(3):  # one draw per image, from its own key: batch == per-example
    np.testing.assert_array_equal(noise[i], jax.random.uniform(keys[i], (6, 6, 2)))
    np.testing.assert_array_equal(
        perturbation.fill_images(x[i:i + 1], 'noise', keys=keys[i:i + 1])[0], noise[i])
  assert 0 <= noise.min() and noise.max() < 1


def _two_class_linear(rng, h, w, c):
  """logit_1 - logit_0 = v . x - 0.3 with v random: a model whose margin is known exactly."""
  v = rng.normal(size=(h * w * c,)).astype(np.float32)
  wts = np.stack([np.zeros_like(v), v], 1)
  return {'w': jnp.asarray(wts), 'b': jnp.asarray([[0.0, -0.3]], jnp.float32)}, v


def test_perturbation_curves_match_the_closed_form_on_a_linear_model():
  rng = np.random.default_rng(1)
  b, h, w, c = 5, 4, 4, 2
  params, v = _two_class_linear(rng, h, w, c)
  x = jnp.asarray(rng.random((b, h, w, c)), jnp.float32)
  # Ranking 0 distinct, ranking 1 with ties (left to the tiebreak), ranking 2 constant.
  scores = np.stack([rng.random((b, h, w)), np.round(rng.random((b, h, w)) * 2),
                     np.zeros((b, h, w))]).astype(np.float32)
  tiebreak = rng.random((b, h, w)).astype(np.float32)
  fill_value = np.array([0.2, 0.7], np.float32)
  fill = jnp.broadcast_to(jnp.asarray(fill_value), x.shape)
  counts = perturbation.pixel_counts((0, 10, 25, 50, 75, 100), h * w)
  curves = jax.jit(functools.partial(perturbation.perturbation_curves, linear_apply))
  got = np.asarray(curves(params, x, scores, tiebreak, fill, counts))
  assert got.shape == (b, 3, len(counts)) and got.dtype == np.int32
  xa, vv = np.asarray(x), v.reshape(h * w, c)
  for i in range(b):
    margin = xa[i].reshape(-1) @ v - 0.3
    change = ((fill_value - xa[i].reshape(h * w, c)) * vv).sum(1)  # per pixel
    for r in range(3):
      order = np.lexsort((tiebreak[i].ravel(), -scores[r, i].ravel()))
      for j, k in enumerate(counts):
        assert got[i, r, j] == int(margin + change[order[:k]].sum() > 0), (i, r, k)
  # Eager == jit, and each image alone == its row of the batch.
  eager = perturbation.perturbation_curves(linear_apply, params, x, scores, tiebreak, fill,
                                           counts)
  np.testing.assert_array_equal(eager, got)
  for i in range(b):
    np.testing.assert_array_equal(
        curves(params, x[i:i + 1], scores[:, i:i + 1], tiebreak[i:i + 1], fill[i:i + 1],
               counts)[0], got[i])


@pytest.mark.parametrize('call,match', [
    (lambda: perturbation.pixel_counts((0, 101), 10), 'percentages'),
    (lambda: perturbation.pixel_counts((0, 50), 0), 'num_pixels'),
    (lambda: perturbation.pixel_ranks(np.zeros((2, 3, 3)), np.zeros((2, 9))), 'tiebreak'),
    (lambda: perturbation.pixel_ranks(np.zeros((4,)), np.zeros((4,))), 'scores'),
    (lambda: perturbation.replace_top(np.zeros((1, 3, 3, 2)), np.zeros((1, 3, 2), np.int32),
                                      np.zeros(2), 1), 'ranks'),
    (lambda: perturbation.replace_top(np.zeros((1, 3, 3, 2)), np.zeros((1, 3, 3), np.int32),
                                      np.zeros(3), 1), 'fill'),
    (lambda: perturbation.gaussian_blur(np.zeros((1, 3, 3, 1)), 0.0), 'sigma'),
    (lambda: perturbation.fill_images(np.zeros((1, 3, 3, 2)), 'clean'), 'fill'),
    (lambda: perturbation.fill_images(np.zeros((1, 3, 3, 2)), 'mean', mean=np.zeros(3)),
     'mean'),
    (lambda: perturbation.fill_images(np.zeros((2, 3, 3, 2)), 'noise'), 'keys'),
    (lambda: perturbation.perturbation_curves(
        linear_apply, {}, np.zeros((2, 3, 3, 1)), np.zeros((1, 2, 3, 2)), np.zeros((2, 3, 3)),
        np.zeros((2, 3, 3, 1)), np.zeros(1, np.int32)), 'scores'),
    (lambda: perturbation.perturbation_curves(
        linear_apply, {}, np.zeros((2, 3, 3, 1)), np.zeros((1, 2, 3, 3)), np.zeros((2, 3, 3)),
        np.zeros((2, 3, 3, 1)), np.asarray([0, 10], np.int32)), 'num_pixels'),
])
def test_bad_arguments_raise_naming_the_argument(call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call()
