"""advsal_jax.metrics.ssim / mean_ssim against skimage.metrics.structural_similarity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from advsal_jax import metrics

_RNG = np.random.default_rng(1)
_A = _RNG.random((3, 24, 24))
_B = np.clip(_A + 0.3 * _RNG.normal(size=_A.shape), 0, 1)

# (our keyword arguments, skimage's keyword arguments): the Wang et al. settings the studies
# use, skimage's own defaults, and two mixed ones (Gaussian filter with a smaller crop, sample
# covariance with a 5x5 uniform window).
_SETTINGS = {
    'wang2004': ({}, dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)),
    'skimage_default': (dict(gaussian_weights=False, win_size=7, use_sample_covariance=True),
                        {}),
    'gaussian_win7': (dict(win_size=7, sigma=1.2),
                      dict(gaussian_weights=True, sigma=1.2, win_size=7,
                           use_sample_covariance=False)),
    'uniform5_k': (dict(gaussian_weights=False, win_size=5, k1=0.02, k2=0.05),
                   dict(win_size=5, use_sample_covariance=False, K1=0.02, K2=0.05)),
}

_MAPS = {
    'random': (_A, _B),
    'many_ties': (np.round(_A * 3) / 3, np.round(_B * 2) / 2),
    'constant_and_zero': (np.stack([np.zeros((24, 24)), np.full((24, 24), 0.5), _A[2]]),
                          np.stack([_B[0], np.full((24, 24), 0.5), np.zeros((24, 24))])),
    'rgb': (_RNG.random((2, 16, 20, 3)), _RNG.random((2, 16, 20, 3))),
}


def _skimage(a, b, full, data_range, kwargs):
  channel_axis = -1 if a.ndim == 4 else None
  out = [structural_similarity(x, y, data_range=data_range, channel_axis=channel_axis, full=full,
                               **kwargs) for x, y in zip(a, b)]
  if full:
    return np.stack([s for _, s in out])
  return np.array(out)


# Every map with the studies' setting; the other settings on a gray and an RGB pair.
_CASES = ([(maps, 'wang2004') for maps in sorted(_MAPS)]
          + [(maps, setting) for setting in sorted(_SETTINGS) if setting != 'wang2004'
             for maps in ('many_ties', 'rgb')])


@pytest.mark.parametrize('maps,setting', _CASES)
def test_matches_skimage(maps, setting):
  ours, theirs = _SETTINGS[setting]
  a, b = _MAPS[maps]
  a32, b32 = a.astype(np.float32), b.astype(np.float32)
  np.testing.assert_allclose(metrics.mean_ssim(a32, b32, data_range=1.0, **ours),
                             _skimage(a, b, False, 1.0, theirs), rtol=0, atol=1e-5)
  # The full map checks the 'reflect' border handling too, which the crop hides in the mean.
  np.testing.assert_allclose(metrics.ssim(a32, b32, data_range=1.0, **ours),
                             _skimage(a, b, True, 1.0, theirs), rtol=0, atol=1e-5)


def test_large_offset_maps_keep_precision():
  # Unnormalised maps with a large mean and small variance: E[x^2] - E[x]^2 cancels in f32
  # unless the maps are centred first.
  a, b = 100 + _A, 100 + _B
  np.testing.assert_allclose(
      metrics.mean_ssim(a.astype(np.float32), b.astype(np.float32), data_range=2.0),
      _skimage(a, b, False, 2.0, _SETTINGS['wang2004'][1]), rtol=0, atol=1e-5)


def test_identity_and_symmetry():
  a, b = _MAPS['constant_and_zero']
  np.testing.assert_allclose(metrics.mean_ssim(a, a, data_range=1.0), 1.0, atol=1e-6)
  np.testing.assert_allclose(metrics.ssim(b, b, data_range=1.0), 1.0, atol=1e-6)
  np.testing.assert_allclose(metrics.mean_ssim(a, b, data_range=1.0),
                             metrics.mean_ssim(b, a, data_range=1.0), atol=1e-7)


def test_jit_with_traced_data_range():
  a, b = _MAPS['random']
  fn = jax.jit(lambda x, y, r: metrics.mean_ssim(x, y, data_range=r))
  np.testing.assert_allclose(fn(a, b, jnp.float32(2.0)), metrics.mean_ssim(a, b, data_range=2.0),
                             atol=1e-6)


def test_errors():
  a, b = _MAPS['random']
  with pytest.raises(ValueError, match='at least win_size x win_size = 11x11'):
    metrics.mean_ssim(a[:, :10], b[:, :10], data_range=1.0)
  with pytest.raises(ValueError, match='7x7'):
    metrics.ssim(a[:, :6, :6], b[:, :6, :6], data_range=1.0, gaussian_weights=False)
  with pytest.raises(ValueError, match='a and b must have the same shape'):
    metrics.mean_ssim(a, b[:2], data_range=1.0)
  with pytest.raises(ValueError, match='b contains NaN'):
    metrics.mean_ssim(a, np.where(b > 0.5, np.nan, b), data_range=1.0)
  with pytest.raises(ValueError, match='a must have 3 to 4 dimensions'):
    metrics.mean_ssim(a[0], b[0], data_range=1.0)
  with pytest.raises(ValueError, match='data_range'):
    metrics.mean_ssim(a, b, data_range=0.0)
  with pytest.raises(ValueError, match='win_size'):
    metrics.mean_ssim(a, b, data_range=1.0, win_size=6)
  with pytest.raises(TypeError, match='data_range'):
    metrics.mean_ssim(a, b)  # data_range is required: float maps have no implied range.


def test_matches_skimage_on_checkpoint_saliency_maps(checkpoint_saliency_pairs):
  # Min-max normalised to [0, 1] so data_range=1 is the maps' real range.
  a, b = (m - m.min(axis=(1, 2), keepdims=True) for m in checkpoint_saliency_pairs)
  a, b = a / a.max(axis=(1, 2), keepdims=True), b / b.max(axis=(1, 2), keepdims=True)
  for ours, theirs in _SETTINGS.values():
    np.testing.assert_allclose(metrics.mean_ssim(a, b, data_range=1.0, **ours),
                               _skimage(np.float64(a), np.float64(b), False, 1.0, theirs),
                               rtol=0, atol=1e-5)
