"""advsal_jax.metrics localisation metrics against set arithmetic in numpy."""

import jax
import numpy as np
import pytest

from advsal_jax import metrics

_RNG = np.random.default_rng(3)


def _numpy_top_k(x, k):
  """Reference: stable argsort of -x (ties to the lower index), first k marked."""
  flat = x.reshape(len(x), -1)
  mask = np.zeros(flat.shape, bool)
  for i, row in enumerate(flat):
    kk = k if np.ndim(k) == 0 else k[i]
    mask[i, np.argsort(-row, kind='stable')[:kk]] = True
  return mask.reshape(x.shape)


@pytest.mark.parametrize('k', [0, 1, 17, 64, np.array([0, 5, 64], np.int32)])
def test_top_k_mask_matches_numpy_with_ties(k):
  x = np.round(_RNG.random((3, 8, 8)) * 4).astype(np.float32)  # 5 values: many ties
  got = np.asarray(metrics.top_k_mask(x, k))
  np.testing.assert_array_equal(got, _numpy_top_k(x, k))
  np.testing.assert_array_equal(got.reshape(3, -1).sum(1), np.broadcast_to(k, (3,)))


def test_top_k_mask_tie_break_is_lowest_index():
  x = np.zeros((1, 2, 3), np.float32)
  x[0, 1, 2] = 1.0
  np.testing.assert_array_equal(metrics.top_k_mask(x, 3)[0],
                                [[True, True, False], [False, False, True]])


def test_top_k_mask_under_jit_with_per_example_k():
  x = _RNG.random((4, 6, 6, 3)).astype(np.float32)
  k = np.array([1, 7, 0, 108], np.int32)
  np.testing.assert_array_equal(jax.jit(metrics.top_k_mask)(x, k), _numpy_top_k(x, k))


def _numpy_jaccard_hamming(a, b):
  a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
  union = (a | b).sum(1)
  jac = np.where(union > 0, (a & b).sum(1) / np.maximum(union, 1), 1.0)
  return jac, 1 - (a != b).mean(1)


def test_jaccard_and_hamming_match_set_arithmetic():
  a = _RNG.random((5, 10, 10)) > 0.7
  b = _RNG.random((5, 10, 10)) > 0.4
  a[0] = False
  b[0] = False  # both empty: Jaccard defined as 1
  b[1] = False  # one empty: Jaccard 0
  jac, ham = _numpy_jaccard_hamming(a, b)
  np.testing.assert_allclose(metrics.jaccard(a, b), jac, rtol=1e-6)
  np.testing.assert_allclose(metrics.hamming_likeness(a, b), ham, rtol=1e-6)
  assert jac[0] == 1.0 and jac[1] == 0.0
  np.testing.assert_allclose(metrics.jaccard(a[2:], a[2:]), 1.0)
  np.testing.assert_allclose(metrics.hamming_likeness(a, ~a), 0.0)
  np.testing.assert_allclose(metrics.jaccard(a, b), metrics.jaccard(b, a))


def test_study004_pipeline_on_a_known_region():
  # A map that is largest exactly on a 3x3 region C recovers it with k = |C|.
  region = np.zeros((1, 8, 8), bool)
  region[0, 2:5, 3:6] = True
  saliency = np.where(region, 2.0, _RNG.random((1, 8, 8))).astype(np.float32)
  top = metrics.top_k_mask(saliency, 9)
  np.testing.assert_allclose(metrics.jaccard(top, region), 1.0)
  np.testing.assert_allclose(metrics.hamming_likeness(top, region), 1.0)
  # Twice as many pixels: P contains C plus 9 others, J = 9 / 18, H = 1 - 9 / 64.
  top = metrics.top_k_mask(saliency, 18)
  np.testing.assert_allclose(metrics.jaccard(top, region), 0.5)
  np.testing.assert_allclose(metrics.hamming_likeness(top, region), 1 - 9 / 64)


def test_sim_ratio_and_avg_diff_closed_forms():
  a = _RNG.random((4, 8, 8)).astype(np.float32) * (_RNG.random((4, 8, 8)) > 0.5)
  b = _RNG.random((4, 8, 8)).astype(np.float32) * (_RNG.random((4, 8, 8)) > 0.5)
  b = -b  # Guided Backprop maps can be negative: binarisation uses |map|.
  want = ((np.abs(a) > 0.1) == (np.abs(b) > 0.1)).reshape(4, -1).mean(1)
  np.testing.assert_allclose(metrics.sim_ratio(a, b, threshold=0.1), want, rtol=1e-6)
  np.testing.assert_allclose(metrics.sim_ratio(a, a), 1.0)
  ma, mb = np.abs(a).mean((1, 2)), (np.abs(b) * 3).mean((1, 2))
  np.testing.assert_allclose(metrics.avg_diff(np.abs(a), np.abs(b) * 3),
                             np.abs(ma - mb) / np.maximum(ma, mb), rtol=1e-5)
  np.testing.assert_allclose(metrics.avg_diff(np.abs(a), np.abs(a) * 4), 0.75, rtol=1e-6)
  zero = np.zeros((1, 8, 8), np.float32)
  np.testing.assert_allclose(metrics.avg_diff(zero, zero), 0.0)
  np.testing.assert_allclose(metrics.avg_diff(zero, zero + 1), 1.0)
  assert np.isnan(metrics.avg_diff(zero, zero - 1))[0]


def test_errors():
  x = _RNG.random((2, 8, 8)).astype(np.float32)
  masks = x > 0.5
  with pytest.raises(ValueError, match=r'k must be in \[0, 64\]'):
    metrics.top_k_mask(x, 65)
  with pytest.raises(ValueError, match=r'shape \[2\]'):
    metrics.top_k_mask(x, np.array([1, 2, 3]))
  with pytest.raises(TypeError, match='k must be an int'):
    metrics.top_k_mask(x, 2.5)
  with pytest.raises(ValueError, match='maps contains NaN'):
    metrics.top_k_mask(np.where(masks, np.nan, x), 3)
  with pytest.raises(TypeError, match='mask_b must be a bool mask'):
    metrics.jaccard(masks, x)
  with pytest.raises(ValueError, match='mask_a and mask_b must have the same shape'):
    metrics.hamming_likeness(masks, masks[:1])
  with pytest.raises(ValueError, match='a and b must have the same shape'):
    metrics.sim_ratio(x, x[:, :4])
  with pytest.raises(ValueError, match='threshold'):
    metrics.sim_ratio(x, x, threshold=-1.0)
  with pytest.raises(ValueError, match='b contains NaN'):
    metrics.avg_diff(x, np.where(masks, np.nan, x))
