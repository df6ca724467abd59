"""to_heatmap and normalize against numpy references."""

import numpy as np
import pytest

from advsal_jax import saliency


@pytest.fixture
def attr():
  return np.random.default_rng(0).normal(size=(3, 5, 4, 3)).astype(np.float32)


def test_to_heatmap_reductions(attr):
  np.testing.assert_allclose(saliency.to_heatmap(attr), np.abs(attr).sum(-1), rtol=1e-6)
  np.testing.assert_allclose(saliency.to_heatmap(attr, 'abs_max'), np.abs(attr).max(-1),
                             rtol=1e-6)
  np.testing.assert_allclose(saliency.to_heatmap(attr, 'sum'), attr.sum(-1), rtol=1e-5,
                             atol=1e-6)
  idx = np.abs(attr).argmax(-1)
  signed = np.take_along_axis(attr, idx[..., None], -1)[..., 0]
  np.testing.assert_array_equal(saliency.to_heatmap(attr, 'max_abs_channel'), signed)
  assert (np.asarray(saliency.to_heatmap(attr, 'max_abs_channel')) < 0).any()


def test_to_heatmap_errors(attr):
  with pytest.raises(ValueError, match="reduce must be one of.*'abs_sum'"):
    saliency.to_heatmap(attr, 'l2')
  with pytest.raises(ValueError, match=r'attr must be f32\[B,H,W,C\]'):
    saliency.to_heatmap(attr[0])


def test_normalize_modes(attr):
  maps = attr[..., 0]
  flat = maps.reshape(3, -1)
  lo, hi = flat.min(1)[:, None, None], flat.max(1)[:, None, None]
  np.testing.assert_allclose(saliency.normalize(maps), (maps - lo) / (hi - lo), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(saliency.normalize(maps, 'maxabs'),
                             maps / np.abs(flat).max(1)[:, None, None], rtol=1e-6)
  energy = saliency.normalize(maps, 'energy')
  np.testing.assert_allclose(np.abs(energy).sum(axis=(1, 2)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(energy, maps / np.abs(flat).sum(1)[:, None, None], rtol=1e-6)
  p_hi = np.percentile(flat, 90, axis=1)[:, None, None]
  p_lo = np.percentile(flat, 10, axis=1)[:, None, None]
  np.testing.assert_allclose(saliency.normalize(maps, 'percentile', percentile=90.0),
                             (np.clip(maps, p_lo, p_hi) - p_lo) / (p_hi - p_lo), rtol=1e-5,
                             atol=1e-6)


def test_normalize_constant_map_is_zero_and_errors():
  const = np.full((2, 4, 4), 3.0, np.float32)
  for mode in ('minmax', 'percentile'):
    np.testing.assert_array_equal(saliency.normalize(const, mode), 0.0)
  np.testing.assert_array_equal(saliency.normalize(np.zeros((2, 3, 3)), 'energy'), 0.0)
  with pytest.raises(ValueError, match='mode must be one of'):
    saliency.normalize(const, 'zscore')
  with pytest.raises(ValueError, match='maps must be .* with a batch axis'):
    saliency.normalize(np.ones(4), 'minmax')
