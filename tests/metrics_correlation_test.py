"""advsal_jax.metrics correlation/distance metrics against scipy and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats

from advsal_jax import metrics
from advsal_jax.metrics import _correlation

_RNG = np.random.default_rng(0)
_A = _RNG.normal(size=(6, 16, 16)).astype(np.float32)
_B = (_A + _RNG.normal(size=_A.shape)).astype(np.float32)

# Pairs of [B,H,W] or [B,H,W,C] maps; scipy is the reference for each pair.
_CASES = {
    'random': (_A, _B),
    'many_ties': (np.round(_A), np.round(_B)),
    'mostly_zero': (np.maximum(np.round(_A * 2), 0), np.maximum(np.round(_B), 0)),
    'binary': ((_A > 0).astype(np.float32), (_B > 0.5).astype(np.float32)),
    'signed_zeros': (np.where(_A > 1, 1.0, np.where(_A > 0, 0.0, -0.0)).astype(np.float32),
                     np.where(_B > 1, 1.0, np.where(_B > 0, -0.0, 0.0)).astype(np.float32)),
    'multichannel': (_RNG.random((3, 8, 8, 3), dtype=np.float32),
                     np.round(_RNG.random((3, 8, 8, 3)) * 4).astype(np.float32)),
}


def _per_pair(fn, a, b):
  return np.array([fn(np.float64(x).ravel(), np.float64(y).ravel()) for x, y in zip(a, b)])


@pytest.mark.parametrize('case', sorted(_CASES))
def test_spearman_matches_scipy(case):
  a, b = _CASES[case]
  want = _per_pair(lambda x, y: scipy.stats.spearmanr(x, y).statistic, a, b)
  np.testing.assert_allclose(metrics.spearman(a, b), want, rtol=0, atol=1e-6)
  want_abs = _per_pair(lambda x, y: scipy.stats.spearmanr(np.abs(x), np.abs(y)).statistic, a, b)
  np.testing.assert_allclose(metrics.spearman(a, b, absolute=True), want_abs, rtol=0, atol=1e-6)


@pytest.mark.parametrize('case', sorted(_CASES))
def test_pearson_and_cosine_match_scipy(case):
  a, b = _CASES[case]
  want = _per_pair(lambda x, y: scipy.stats.pearsonr(x, y).statistic, a, b)
  np.testing.assert_allclose(metrics.pearson(a, b), want, rtol=0, atol=1e-6)
  want_cos = 1 - _per_pair(scipy.spatial.distance.cosine, a, b)
  np.testing.assert_allclose(metrics.cosine(a, b), want_cos, rtol=0, atol=1e-6)


def test_spearman_many_ties_on_large_maps():
  # 224x224 maps with a handful of distinct values: ties in the tens of thousands, and three
  # radix passes instead of two.
  a = _RNG.integers(0, 5, size=(2, 224, 224)).astype(np.float32)
  b = (a + _RNG.integers(0, 3, size=a.shape)).astype(np.float32)
  want = _per_pair(lambda x, y: scipy.stats.spearmanr(x, y).statistic, a, b)
  np.testing.assert_allclose(metrics.spearman(a, b), want, rtol=0, atol=1e-6)


def test_constant_and_all_zero_maps_are_nan_like_scipy():
  a = np.stack([np.zeros((8, 8)), np.full((8, 8), 0.3), _A[0, :8, :8]]).astype(np.float32)
  b = np.stack([_B[0, :8, :8], _B[1, :8, :8], np.full((8, 8), -2.0)]).astype(np.float32)
  for fn, ref in ((metrics.spearman, scipy.stats.spearmanr), (metrics.pearson, scipy.stats.pearsonr)):
    with pytest.warns(scipy.stats.ConstantInputWarning):
      want = _per_pair(lambda x, y: ref(x, y).statistic, a, b)
    assert np.all(np.isnan(want))
    got = np.asarray(fn(a, b))
    assert got.dtype == np.float32 and np.all(np.isnan(got)), (fn.__name__, got)
  cos = np.asarray(metrics.cosine(a, b))
  assert np.isnan(cos[0]) and np.isfinite(cos[1:]).all()


def test_identity_symmetry_and_sign():
  a, b = _CASES['many_ties']
  for fn in (metrics.spearman, metrics.pearson, metrics.cosine):
    np.testing.assert_allclose(fn(a, a), 1.0, atol=1e-6, err_msg=fn.__name__)
    np.testing.assert_allclose(fn(a, -a), -1.0, atol=1e-6, err_msg=fn.__name__)
    # f32 rounding only: spearman sums in the sorted order of its first argument.
    np.testing.assert_allclose(fn(a, b), fn(b, a), atol=1e-6, err_msg=fn.__name__)
  np.testing.assert_allclose(metrics.l2_distance(a, a), 0.0, atol=0)


def test_spearman_is_invariant_to_monotone_maps():
  a, b = _CASES['random']
  np.testing.assert_allclose(metrics.spearman(np.exp(a), b ** 3), metrics.spearman(a, b),
                             atol=1e-6)


def test_l2_distance_closed_forms():
  a, b = _CASES['random']
  flat_a, flat_b = np.float64(a).reshape(len(a), -1), np.float64(b).reshape(len(b), -1)
  np.testing.assert_allclose(metrics.l2_distance(a, b), np.linalg.norm(flat_a - flat_b, axis=1),
                             rtol=1e-6)

  def minmax(x):
    return (x - x.min(1, keepdims=True)) / np.ptp(x, axis=1, keepdims=True)
  np.testing.assert_allclose(metrics.l2_distance(a, b, normalize='minmax'),
                             np.linalg.norm(minmax(flat_a) - minmax(flat_b), axis=1), rtol=1e-6)
  unit_a = flat_a / np.linalg.norm(flat_a, axis=1, keepdims=True)
  unit_b = flat_b / np.linalg.norm(flat_b, axis=1, keepdims=True)
  np.testing.assert_allclose(metrics.l2_distance(a, b, normalize='l2'),
                             np.linalg.norm(unit_a - unit_b, axis=1), rtol=1e-6)
  # Normalised distances ignore the scale of each map; tiny maps do not underflow.
  np.testing.assert_allclose(metrics.l2_distance(a * 1e-3, b * 7, normalize='l2'),
                             metrics.l2_distance(a, b, normalize='l2'), rtol=1e-5)
  np.testing.assert_allclose(metrics.l2_distance(a * 1e-30, b * 1e-30),
                             np.linalg.norm(flat_a - flat_b, axis=1) * 1e-30, rtol=1e-5)
  zero = np.zeros((1, 4, 4), np.float32)
  np.testing.assert_allclose(metrics.l2_distance(zero, np.ones_like(zero), normalize='minmax'), 0.0)


def test_jit_matches_eager_for_spearman_absolute():
  a, b = _CASES['mostly_zero']
  jitted = jax.jit(lambda x, y: metrics.spearman(x, y, absolute=True))
  np.testing.assert_allclose(jitted(a, b), metrics.spearman(a, b, absolute=True), atol=1e-7)


def test_spearman_under_vmap_equals_the_batched_call():
  a, b = _CASES['many_ties']
  stacked = jax.vmap(metrics.spearman)(a.reshape(2, 3, 16, 16), b.reshape(2, 3, 16, 16))
  np.testing.assert_array_equal(stacked.reshape(-1), metrics.spearman(a, b))


@pytest.mark.parametrize('batched', [False, True])
def test_row_sort_matches_numpy_under_jit_and_vmap(batched):
  # On CPU the rows are sorted by the host (a callback); the result must be NumPy's sort.
  x = jax.random.bits(jax.random.key(0), (2, 5, 300), jnp.uint32)
  sort = jax.jit(jax.vmap(_correlation._sort_rows) if batched
                 else lambda v: _correlation._sort_rows(v.reshape(10, 300)).reshape(2, 5, 300))
  np.testing.assert_array_equal(sort(x), np.sort(np.asarray(x), axis=-1))
  np.testing.assert_array_equal(sort(x), jnp.sort(x, axis=-1))


@pytest.mark.parametrize('batched', [False, True])
def test_tie_ranks_match_scipy_on_cpu_and_on_the_other_backends_path(batched):
  # On CPU the host ranks sorted rows (a callback); other backends use _tie_ranks_xla.
  keys = np.sort(np.asarray(jax.random.randint(jax.random.key(0), (2, 5, 300), 0, 40)),
                 axis=-1).astype(np.uint32)
  keys[0, 0] = np.arange(300)  # One row without ties.
  expected = scipy.stats.rankdata(keys, axis=-1).astype(np.float32)
  host = jax.jit(jax.vmap(_correlation._tie_ranks) if batched
                 else lambda k: _correlation._tie_ranks(k.reshape(10, 300)).reshape(2, 5, 300))
  np.testing.assert_array_equal(host(keys), expected)
  np.testing.assert_array_equal(jax.jit(_correlation._tie_ranks_xla)(keys), expected)


def test_spearman_rejects_maps_too_large_for_exact_ranks():
  with pytest.raises(ValueError, match='2\\*\\*23'):
    metrics.spearman(np.zeros((1, 2**23), np.float32), np.zeros((1, 2**23), np.float32))


@pytest.mark.parametrize('fn', [metrics.spearman, metrics.pearson, metrics.cosine,
                                metrics.l2_distance])
def test_errors_name_the_argument(fn):
  a, b = _CASES['random']
  with pytest.raises(ValueError, match='a and b must have the same shape'):
    fn(a, b[:, :8])
  with pytest.raises(ValueError, match='b contains NaN'):
    fn(a, np.where(b > 2, np.nan, b))
  with pytest.raises(ValueError, match='a contains NaN'):
    fn(np.where(a > 2, np.inf, a), b)
  with pytest.raises(ValueError, match='a must have at least 2 dimensions'):
    fn(a[0, 0], b[0, 0])
  with pytest.raises(TypeError, match='a must have a real dtype'):
    fn(a.astype(np.complex64), b)
  with pytest.raises(ValueError, match='a must not be empty'):
    fn(a[:0], b[:0])


def test_l2_distance_rejects_unknown_normalisation():
  with pytest.raises(ValueError, match='normalize'):
    metrics.l2_distance(_A, _B, normalize='max')


def test_match_scipy_on_checkpoint_saliency_maps(checkpoint_saliency_pairs):
  a, b = checkpoint_saliency_pairs
  want = _per_pair(lambda x, y: scipy.stats.spearmanr(x, y).statistic, a, b)
  np.testing.assert_allclose(metrics.spearman(a, b), want, rtol=0, atol=1e-6)
  want = _per_pair(lambda x, y: scipy.stats.pearsonr(x, y).statistic, a, b)
  np.testing.assert_allclose(metrics.pearson(a, b), want, rtol=0, atol=1e-6)
