"""advsal_jax.metrics.hog / hog_pearson / hog_spearman against skimage.feature.hog + scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from skimage.feature import hog as skimage_hog

from advsal_jax import metrics

_RNG = np.random.default_rng(2)
_STUDY = dict(orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
              block_norm='L2-Hys')

_MAPS = {
    'random': _RNG.random((3, 32, 32)),
    # Integer-valued maps put gradients exactly on 0, 45, 90 and 135 degrees: bin edges for
    # some orientation counts.
    'integer': _RNG.integers(0, 3, (3, 32, 32)).astype(np.float64),
    'constant_and_zero': np.stack([np.zeros((32, 32)), np.full((32, 32), 0.7)]),
    'small_signed': (_RNG.random((2, 32, 32)) - 0.5) * 1e-4,
    'odd_size': _RNG.random((2, 37, 29)),
    'rgb': _RNG.random((2, 32, 32, 3)),
    'rgb_ties': np.round(_RNG.random((2, 24, 24, 3)) * 2),
}

_PARAMS = {
    'study': {},
    'odd_cells_l1': dict(orientations=4, pixels_per_cell=(7, 5), cells_per_block=(3, 2),
                         block_norm='L1'),
    'l1_sqrt': dict(orientations=8, pixels_per_cell=(6, 6), block_norm='L1-sqrt'),
    'l2': dict(orientations=6, cells_per_block=(1, 1), block_norm='L2'),
}


def _skimage(images, **kwargs):
  params = dict(_STUDY, **kwargs)
  channel_axis = -1 if images.ndim == 4 else None
  return np.stack([skimage_hog(x, channel_axis=channel_axis, **params) for x in images])


# Every map with the study's parameters; the other parameter sets on a gray and an RGB map.
_HOG_CASES = ([(maps, 'study') for maps in sorted(_MAPS)]
              + [(maps, params) for params in sorted(_PARAMS) if params != 'study'
                 for maps in ('integer', 'rgb_ties')])


@pytest.mark.parametrize('maps,params', _HOG_CASES)
def test_hog_matches_skimage(maps, params):
  images = _MAPS[maps]
  want = _skimage(images, **_PARAMS[params])
  got = metrics.hog(images.astype(np.float32), **_PARAMS[params])
  assert got.shape == want.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_hog_length_for_cifar_maps():
  # 4x4 cells of 8 pixels, 3x3 blocks of 2x2 cells, 9 bins: 3 * 3 * 2 * 2 * 9.
  assert metrics.hog(np.zeros((1, 32, 32), np.float32)).shape == (1, 324)


def test_hog_pearson_and_spearman_match_scipy():
  a = _MAPS['random']
  b = np.clip(a + 0.3 * _RNG.normal(size=a.shape), 0, 1)
  ha, hb = _skimage(a), _skimage(b)
  a32, b32 = a.astype(np.float32), b.astype(np.float32)
  np.testing.assert_allclose(
      metrics.hog_pearson(a32, b32),
      [scipy.stats.pearsonr(x, y).statistic for x, y in zip(ha, hb)], rtol=0, atol=1e-5)
  np.testing.assert_allclose(
      metrics.hog_spearman(a32, b32),
      [scipy.stats.spearmanr(x, y).statistic for x, y in zip(ha, hb)], rtol=0, atol=1e-5)
  np.testing.assert_allclose(metrics.hog_pearson(a32, a32), 1.0, atol=1e-6)
  np.testing.assert_allclose(metrics.hog_pearson(a32, b32), metrics.hog_pearson(b32, a32),
                             atol=1e-7)


def test_hog_pearson_of_constant_map_is_nan_like_scipy():
  a = _MAPS['constant_and_zero'].astype(np.float32)
  b = _MAPS['random'][:2].astype(np.float32)
  with pytest.warns(scipy.stats.ConstantInputWarning):
    want = scipy.stats.pearsonr(_skimage(a[:1])[0], _skimage(b[:1])[0]).statistic
  assert np.isnan(want)
  assert np.all(np.isnan(metrics.hog_pearson(a, b)))


def test_hog_is_invariant_to_shift_and_positive_scale():
  a = _MAPS['random'].astype(np.float32)
  np.testing.assert_allclose(metrics.hog(3 * a + 1), metrics.hog(a), atol=1e-5)


def test_jit_matches_eager_with_non_default_params():
  images = _MAPS['rgb'].astype(np.float32)
  params = _PARAMS['odd_cells_l1']
  jitted = jax.jit(lambda x: metrics.hog(x, **params))
  np.testing.assert_allclose(jitted(images), metrics.hog(images, **params), atol=1e-7)


def test_errors():
  a = _MAPS['random'].astype(np.float32)
  with pytest.raises(ValueError, match='at least 16x16'):
    metrics.hog(a[:, :15])
  with pytest.raises(ValueError, match='at least 24x16'):
    metrics.hog_pearson(a[:, :20, :20], a[:, :20, :20], cells_per_block=(3, 2))
  with pytest.raises(ValueError, match='a and b must have the same shape'):
    metrics.hog_pearson(a, a[:2])
  with pytest.raises(ValueError, match='images contains NaN'):
    metrics.hog(np.where(a > 0.5, np.nan, a))
  with pytest.raises(ValueError, match='block_norm'):
    metrics.hog(a, block_norm='L3')
  with pytest.raises(ValueError, match='pixels_per_cell'):
    metrics.hog(a, pixels_per_cell=8)
  with pytest.raises(ValueError, match='images must have 3 to 4 dimensions'):
    metrics.hog(a[0])


def test_matches_skimage_on_checkpoint_saliency_maps(checkpoint_saliency_pairs):
  a, b = checkpoint_saliency_pairs
  ha, hb = _skimage(np.float64(a)), _skimage(np.float64(b))
  np.testing.assert_allclose(metrics.hog(a), ha, rtol=0, atol=1e-5)
  np.testing.assert_allclose(
      metrics.hog_pearson(a, b),
      [scipy.stats.pearsonr(x, y).statistic for x, y in zip(ha, hb)], rtol=0, atol=1e-5)
