"""Property-based tests (hypothesis) of the metrics and of the attacks' projections.

Metrics: symmetry, ranges, invariances (Spearman under strictly monotone maps, Pearson under
positive affine maps, cosine under positive scaling), identities (SSIM(a, a) = 1, Jaccard and
Hamming likeness of a mask with itself = 1), the documented NaN/0 of constant maps, and brute-
force references (top-k, L0). Attacks: the projections, the random start and FGSM/PGD on a
linear model never leave the eps-ball (L-inf or L2), the mask or the box.

Shapes come from a few fixed lists and every function runs under ``jax.jit`` with its options
bound, so each compiles once per shape (eager dispatch would dominate the run time); values
come from hypothesis. The white-box attack on a classifier and its detector
(``attacks.whitebox_detector``, both modes) stays in the ball, the mask and [0, 1] too.
"""

import functools
import math

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from advsal_jax import attacks
from advsal_jax import metrics
from advsal_jax.attacks import _projections
from testing_utils import linear_apply

_SETTINGS = hypothesis.settings(max_examples=20, deadline=None,
                                suppress_health_check=[hypothesis.HealthCheck.too_slow])
_MAP_SHAPES = [(1, 5, 4), (2, 3, 7), (3, 6, 6)]
_SSIM_SHAPES = [(1, 11, 11), (2, 12, 13)]
_HOG_SHAPES = [(1, 16, 16), (2, 16, 24)]
_IMAGE_SHAPES = [(1, 4, 4, 1), (2, 3, 5, 3)]


def _f32(low: float, high: float) -> st.SearchStrategy:
  """f32 values in [low, high]; no subnormals (XLA on CPU flushes them to 0)."""
  return st.floats(low, high, width=32, allow_subnormal=False)


_VALUES = _f32(-10, 10)
# Small integers: many ties and constant maps, and exact arithmetic under the transforms.
_GRID = st.integers(-8, 8)
# Zero or magnitudes in [2**-10, 10]: scaling by a power of two stays exact (no subnormals).
_NORM_VALUES = st.one_of(st.just(0.0), _f32(2**-10, 10), _f32(-10, -2**-10))
_NORMS = ('linf', 'l2')


@functools.cache
def _jit(fn, *args, **options):
  """``fn`` with ``args`` and ``options`` bound, jitted once."""
  return jax.jit(functools.partial(fn, *args, **options))


@st.composite
def _pair(draw, shapes, elements=_VALUES):
  """Two f32 maps of one shape drawn from ``shapes``."""
  shape = draw(st.sampled_from(shapes))
  a, b = (draw(hnp.arrays(np.float32, shape, elements=elements)) for _ in range(2))
  return a, b


@st.composite
def _grid_pair(draw, shapes):
  """Two f32 maps of small integers (ties likely)."""
  shape = draw(st.sampled_from(shapes))
  a, b = (draw(hnp.arrays(np.int8, shape, elements=_GRID)).astype(np.float32) for _ in range(2))
  return a, b


@st.composite
def _masks(draw, shapes):
  shape = draw(st.sampled_from(shapes))
  return tuple(draw(hnp.arrays(np.bool_, shape)) for _ in range(2))


_SYMMETRIC = {
    'pearson': _jit(metrics.pearson),
    'spearman': _jit(metrics.spearman),
    'spearman_abs': _jit(metrics.spearman, absolute=True),
    'cosine': _jit(metrics.cosine),
    'l2_distance': _jit(metrics.l2_distance),
    'l2_distance_minmax': _jit(metrics.l2_distance, normalize='minmax'),
    'l2_distance_l2': _jit(metrics.l2_distance, normalize='l2'),
    'sim_ratio': _jit(metrics.sim_ratio),
    'avg_diff': _jit(metrics.avg_diff),
}
_CORRELATIONS = ('pearson', 'spearman', 'spearman_abs', 'cosine')


@pytest.mark.parametrize('name', sorted(_SYMMETRIC))
@_SETTINGS
@hypothesis.given(pair=_pair(_MAP_SHAPES))
def test_pair_metrics_are_symmetric_and_in_range(name, pair):
  a, b = pair
  fn = _SYMMETRIC[name]
  ab, ba = np.asarray(fn(a, b)), np.asarray(fn(b, a))
  np.testing.assert_allclose(ab, ba, rtol=1e-5, atol=1e-5, equal_nan=True)
  finite = ab[~np.isnan(ab)]
  n = math.prod(a.shape[1:])
  if name in _CORRELATIONS:
    assert np.all(np.abs(finite) <= 1)
  elif name.startswith('l2_distance'):
    assert not np.isnan(ab).any() and np.all(ab >= 0)
    bound = {'l2_distance_minmax': math.sqrt(n), 'l2_distance_l2': 2.0}.get(name, np.inf)
    assert np.all(ab <= bound * (1 + 1e-6))
  elif name == 'sim_ratio':  # Exact range: test_agreement_stays_in_unit_interval_under_jit.
    assert np.all((ab >= -1e-6) & (ab <= 1 + 1e-6))


@pytest.mark.parametrize('name', sorted(_SYMMETRIC))
@_SETTINGS
@hypothesis.given(pair=_grid_pair(_MAP_SHAPES))
def test_constant_maps_give_the_documented_value(name, pair):
  a, _ = pair
  constant = np.broadcast_to(a[:, :1, :1], a.shape).copy()  # One value per map.
  out = np.asarray(_SYMMETRIC[name](a, constant))
  value = constant[:, 0, 0]
  if name in ('pearson', 'spearman', 'spearman_abs'):
    assert np.isnan(out).all()
  elif name == 'cosine':
    np.testing.assert_array_equal(np.isnan(out), (value == 0) | ~a.reshape(len(a), -1).any(1))
  elif name == 'l2_distance_minmax':
    # Min-max maps a constant map to zeros; a varying map to [0, 1] with a 0 and a 1.
    varying = np.ptp(a.reshape(len(a), -1), axis=1) > 0
    np.testing.assert_array_equal(out > 0, varying)
  both_constant = np.asarray(_SYMMETRIC[name](constant, constant))
  if name in ('pearson', 'spearman', 'spearman_abs'):
    assert np.isnan(both_constant).all()
  elif name.startswith('l2_distance'):
    np.testing.assert_array_equal(both_constant, 0)
  elif name == 'sim_ratio':
    np.testing.assert_array_equal(both_constant, 1)
  elif name == 'avg_diff':
    np.testing.assert_array_equal(np.isnan(both_constant), value < 0)
    np.testing.assert_array_equal(both_constant[value >= 0], 0)


@_SETTINGS
@hypothesis.given(pair=_pair(_MAP_SHAPES, elements=_f32(0, 10)))
def test_avg_diff_of_non_negative_maps_is_in_unit_interval(pair):
  a, b = pair
  out = np.asarray(_SYMMETRIC['avg_diff'](a, b))
  assert np.all((out >= 0) & (out <= 1))
  np.testing.assert_array_equal(np.asarray(_SYMMETRIC['avg_diff'](a, a)), 0)


_INCREASING = {
    'affine': lambda x: 3 * x + 7,
    'cubic': lambda x: x ** 3 + x,
    'exp': lambda x: np.exp(x / 4),
    'arctan': np.arctan,
}


@pytest.mark.parametrize('transform', sorted(_INCREASING))
@_SETTINGS
@hypothesis.given(pair=_grid_pair(_MAP_SHAPES), which=st.sampled_from(['a', 'b', 'both']),
                  absolute=st.booleans())
def test_spearman_is_invariant_under_strictly_increasing_maps(transform, pair, which,
                                                              absolute):
  a, b = pair
  if absolute:  # spearman(absolute=True) ranks |a|: transform the magnitudes.
    a, b = np.abs(a), np.abs(b)
  f = _INCREASING[transform]
  fa = f(a).astype(np.float32) if which in ('a', 'both') else a
  fb = f(b).astype(np.float32) if which in ('b', 'both') else b
  for before, after in ((a, fa), (b, fb)):  # f kept every order and every tie.
    np.testing.assert_array_equal(scipy.stats.rankdata(after.reshape(len(a), -1), axis=1),
                                  scipy.stats.rankdata(before.reshape(len(a), -1), axis=1))
  want = np.asarray(_jit(metrics.spearman, absolute=absolute)(a, b))
  got = np.asarray(_jit(metrics.spearman, absolute=absolute)(fa, fb))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, equal_nan=True)


@_SETTINGS
@hypothesis.given(pair=_grid_pair(_MAP_SHAPES))
def test_spearman_of_a_decreasing_map_changes_sign(pair):
  a, b = pair
  want = -np.asarray(_SYMMETRIC['spearman'](a, b))
  np.testing.assert_allclose(np.asarray(_SYMMETRIC['spearman'](-2 * a + 1, b)), want, atol=1e-5,
                             equal_nan=True)


@_SETTINGS
@hypothesis.given(pair=_grid_pair(_MAP_SHAPES), scale=st.sampled_from([0.5, 2.0, 3.0]),
                  shift=st.integers(-5, 5))
def test_pearson_and_cosine_invariances(pair, scale, shift):
  a, b = pair
  np.testing.assert_allclose(np.asarray(_SYMMETRIC['pearson'](scale * a + shift, b)),
                             np.asarray(_SYMMETRIC['pearson'](a, b)), atol=1e-5, equal_nan=True)
  np.testing.assert_allclose(np.asarray(_SYMMETRIC['cosine'](scale * a, b)),
                             np.asarray(_SYMMETRIC['cosine'](a, b)), atol=1e-5, equal_nan=True)
  # A map against itself: 1 wherever defined.
  for fn in (_SYMMETRIC[n] for n in ('pearson', 'spearman', 'cosine')):
    self_corr = np.asarray(fn(a, a))
    np.testing.assert_allclose(self_corr[~np.isnan(self_corr)], 1, atol=1e-6)


@_SETTINGS
@hypothesis.given(pair=_pair(_SSIM_SHAPES, elements=_f32(0, 1)), constant=st.booleans())
def test_ssim_of_a_map_with_itself_is_one(pair, constant):
  a, _ = pair
  if constant:  # Documented: constant maps included.
    a = np.broadcast_to(a[:, :1, :1], a.shape).copy()
  for fn in (metrics.mean_ssim, metrics.ssim):
    np.testing.assert_allclose(np.asarray(_jit(fn, data_range=1.0)(a, a)), 1, atol=1e-6)


@_SETTINGS
@hypothesis.given(pair=_pair(_SSIM_SHAPES, elements=_f32(0, 1)), gaussian=st.booleans())
def test_ssim_is_symmetric_and_in_range(pair, gaussian):
  a, b = pair
  kwargs = dict(data_range=1.0, gaussian_weights=gaussian, use_sample_covariance=not gaussian)
  local = np.asarray(_jit(metrics.ssim, **kwargs)(a, b))
  np.testing.assert_allclose(local, np.asarray(_jit(metrics.ssim, **kwargs)(b, a)), atol=1e-5)
  assert np.all(np.abs(local) <= 1 + 1e-5)
  mean = np.asarray(_jit(metrics.mean_ssim, **kwargs)(a, b))
  np.testing.assert_allclose(mean, np.asarray(_jit(metrics.mean_ssim, **kwargs)(b, a)), atol=1e-5)
  assert np.all(np.abs(mean) <= 1 + 1e-5)


@hypothesis.settings(_SETTINGS, max_examples=12)
@hypothesis.given(pair=_pair(_HOG_SHAPES))
def test_hog_range_symmetry_and_constant_maps(pair):
  a, b = pair
  features = np.asarray(_jit(metrics.hog)(a))
  assert np.all((features >= 0) & (features <= 1))
  for fn in (_jit(metrics.hog_pearson), _jit(metrics.hog_spearman)):
    ab = np.asarray(fn(a, b))
    np.testing.assert_allclose(ab, np.asarray(fn(b, a)), atol=1e-5, equal_nan=True)
    assert np.all(np.abs(ab[~np.isnan(ab)]) <= 1)
    # A constant map has no gradient, hence an all-zero HOG: NaN, never a correlation.
    constant = np.full_like(a, a.flat[0])
    assert np.isnan(np.asarray(fn(a, constant))).all()


@_SETTINGS
@hypothesis.given(masks=_masks(_MAP_SHAPES))
def test_jaccard_and_hamming_against_set_arithmetic(masks):
  a, b = masks
  flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
  union = (flat_a | flat_b).sum(axis=1)
  want_jaccard = np.where(union > 0, (flat_a & flat_b).sum(axis=1) / np.maximum(union, 1), 1.0)
  np.testing.assert_allclose(np.asarray(_jit(metrics.jaccard)(a, b)), want_jaccard, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(_jit(metrics.hamming_likeness)(a, b)),
                             (flat_a == flat_b).mean(axis=1), rtol=1e-6, atol=1e-6)
  for fn in (_jit(metrics.jaccard), _jit(metrics.hamming_likeness)):
    np.testing.assert_array_equal(np.asarray(fn(a, a)), 1)  # Empty masks included.
    np.testing.assert_allclose(np.asarray(fn(a, b)), np.asarray(fn(b, a)), rtol=1e-6)


_DISJOINT = (np.zeros((1, 5, 4), bool), np.ones((1, 5, 4), bool))


@_SETTINGS
@hypothesis.example(masks=_DISJOINT)
@hypothesis.given(masks=_masks(_MAP_SHAPES))
def test_agreement_stays_in_unit_interval_under_jit(masks):
  a, b = masks
  for out in (_jit(metrics.hamming_likeness)(a, b),
              _jit(metrics.sim_ratio)(a.astype(np.float32), b.astype(np.float32))):
    out = np.asarray(out)
    assert np.all((out >= 0) & (out <= 1)), out


@_SETTINGS
@hypothesis.given(pair=_grid_pair(_MAP_SHAPES), data=st.data())
def test_top_k_mask_matches_a_stable_sort(pair, data):
  maps, _ = pair
  n = math.prod(maps.shape[1:])
  k = data.draw(st.integers(0, n))
  top_k = _jit(metrics.top_k_mask)  # k traced: one compilation for every k.
  mask = np.asarray(top_k(maps, np.int32(k))).reshape(len(maps), -1)
  for row, m in zip(maps.reshape(len(maps), -1), mask):
    want = np.zeros(n, bool)
    want[np.argsort(-row, kind='stable')[:k]] = True  # ties to the lower index
    np.testing.assert_array_equal(m, want)
  # Identical maps give identical masks: Hamming likeness and Jaccard 1.
  np.testing.assert_array_equal(np.asarray(_jit(metrics.hamming_likeness)(
      top_k(maps, np.int32(k)), top_k(maps.copy(), np.int32(k)))), 1)


@_SETTINGS
@hypothesis.given(pair=_pair(_MAP_SHAPES, elements=_NORM_VALUES),
                  scale=st.sampled_from([-4.0, -0.5, 0.0, 0.25, 2.0]))
def test_perturbation_norms_order_and_homogeneity(pair, scale):
  delta, _ = pair
  n = math.prod(delta.shape[1:])
  l0 = np.asarray(_jit(metrics.l0_norm)(delta))
  l2 = np.asarray(_jit(metrics.l2_norm)(delta))
  linf = np.asarray(_jit(metrics.linf_norm)(delta))
  np.testing.assert_array_equal(l0, (delta.reshape(len(delta), -1) != 0).sum(axis=1))
  assert np.all(linf <= l2 * (1 + 1e-6)) and np.all(l2 <= math.sqrt(n) * linf * (1 + 1e-6))
  scaled = (np.float32(scale) * delta).astype(np.float32)
  np.testing.assert_allclose(np.asarray(_jit(metrics.l2_norm)(scaled)), abs(scale) * l2, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(_jit(metrics.linf_norm)(scaled)), abs(scale) * linf)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(x=hnp.arrays(np.float64, st.integers(2, 12), elements=_GRID.map(float)),
                  y=hnp.arrays(np.float64, st.integers(2, 12), elements=_GRID.map(float)))
def test_mann_whitney_swapping_samples(x, y):
  xy, yx = metrics.mann_whitney_u(x, y), metrics.mann_whitney_u(y, x)
  assert 0 <= xy.pvalue <= 1 and -1 <= xy.rank_biserial <= 1
  np.testing.assert_allclose(yx.rank_biserial, -xy.rank_biserial, atol=1e-12)
  np.testing.assert_allclose(yx.pvalue, xy.pvalue, rtol=1e-9)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(values=hnp.arrays(np.float64, st.integers(2, 30), elements=_VALUES),
                  seed=st.integers(0, 2**32 - 1))
def test_bootstrap_ci_lies_within_the_sample(values, seed):
  ci = metrics.bootstrap_ci(values, rng=seed, n_resamples=200)
  assert ci.mean == pytest.approx(values.mean(), rel=1e-12, abs=1e-12)
  assert values.min() <= ci.low <= ci.high <= values.max()


# Attacks: projections, random start, FGSM and PGD.


@st.composite
def _attack_case(draw, any_bounds=True):
  """(x in bounds, a candidate anywhere, 0/1 mask, per-example eps [B], bounds, norm)."""
  shape = draw(st.sampled_from(_IMAGE_SHAPES))
  low, high = 0.0, 1.0
  if any_bounds:
    low = draw(st.sampled_from([0.0, -1.0, 0.25]))
    high = low + draw(st.sampled_from([1.0, 0.5, 2.0]))
  unit = _f32(0, 1)
  x = low + (high - low) * draw(hnp.arrays(np.float32, shape, elements=unit))
  x = np.clip(x, low, high).astype(np.float32)
  # Scaling can make a subnormal (0.5 * 2**-126); XLA on CPU flushes those to 0.
  x = np.where(np.abs(x) < np.finfo(np.float32).tiny, np.float32(0), x)
  candidate = draw(hnp.arrays(np.float32, shape, elements=_f32(-3, 3)))
  mask = draw(hnp.arrays(np.bool_, shape)).astype(np.float32)
  eps = draw(hnp.arrays(np.float32, shape[0], elements=_f32(0, 2)))
  norm = draw(st.sampled_from(_NORMS))
  return x, candidate, mask, eps, (low, high), norm


def _assert_in_ball(delta: np.ndarray, eps: np.ndarray, norm: str):
  """Every example of ``delta`` within its eps (f32 rounding of x + delta - x allowed)."""
  flat = np.abs(delta.reshape(len(delta), -1)).astype(np.float64)
  size = np.max(flat, axis=1) if norm == 'linf' else np.sqrt(np.sum(flat ** 2, axis=1))
  tol = 1e-6 * (1 if norm == 'linf' else math.sqrt(flat.shape[1]))
  assert np.all(size <= eps * (1 + 1e-5) + tol), (size, eps)


@_SETTINGS
@hypothesis.given(case=_attack_case())
def test_project_stays_in_ball_mask_and_box(case):
  x, candidate, mask, eps, bounds, norm = case
  project = _jit(_projections.project, norm=norm)  # bounds traced, like eps.
  out = np.asarray(project(candidate, x, eps=eps, bounds=bounds, mask=mask))
  assert np.all((out >= bounds[0]) & (out <= bounds[1]))
  _assert_in_ball(out - x, eps, norm)
  np.testing.assert_array_equal(out[mask == 0], x[mask == 0])
  again = np.asarray(project(out, x, eps=eps, bounds=bounds, mask=mask))
  np.testing.assert_allclose(again, out, atol=1e-6)  # A projection is idempotent.


@_SETTINGS
@hypothesis.given(case=_attack_case(), scalar_eps=st.booleans())
def test_ball_projections_shrink_only_what_is_outside(case, scalar_eps):
  _, candidate, _, eps, _, norm = case
  eps = eps[0] if scalar_eps else eps
  project = _jit(_projections.project_linf if norm == 'linf' else _projections.project_l2)
  out = np.asarray(project(candidate, eps))
  eps_b = np.broadcast_to(eps, (len(candidate),))
  _assert_in_ball(out, eps_b, norm)
  flat_in, flat_out = candidate.reshape(len(candidate), -1), out.reshape(len(out), -1)
  if norm == 'linf':
    np.testing.assert_array_equal(out, np.clip(candidate, -eps_b[:, None, None, None],
                                               eps_b[:, None, None, None]))
  else:
    # Away from the sphere (f32 norms may round across it): unchanged inside; outside, the
    # multiple of the candidate of norm eps.
    norms = np.linalg.norm(flat_in.astype(np.float64), axis=1)
    inside, outside = norms < eps_b * (1 - 1e-5), norms > eps_b * (1 + 1e-5)
    np.testing.assert_array_equal(flat_out[inside], flat_in[inside])
    for row_in, row_out, e in zip(flat_in[outside], flat_out[outside], eps_b[outside]):
      np.testing.assert_allclose(row_out, row_in * (e / np.linalg.norm(row_in)), rtol=1e-5,
                                 atol=1e-7)


@_SETTINGS
@hypothesis.given(case=_attack_case(), seed=st.integers(0, 2**31 - 1))
def test_random_start_is_in_the_masked_ball(case, seed):
  x, _, mask, eps, _, norm = case
  sample = np.asarray(_jit(_projections.sample_ball, norm=norm)(jax.random.key(seed), x,
                                                                 eps=eps, mask=mask))
  _assert_in_ball(sample, eps, norm)
  np.testing.assert_array_equal(sample[mask == 0], 0)


_NUM_CLASSES = 3


def _linear_params(shape, seed):
  """Random weights of ``linear_apply`` for images of ``shape``, 3 classes."""
  rng = np.random.default_rng(seed)
  features = math.prod(shape[1:])
  return {'w': jnp.asarray(rng.normal(size=(features, _NUM_CLASSES)), jnp.float32),
          'b': jnp.asarray(rng.normal(size=(1, _NUM_CLASSES)), jnp.float32)}


@pytest.mark.parametrize('name,targeted', [('fgsm', False), ('fgsm', True), ('pgd', False)])
@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(case=_attack_case(any_bounds=False), seed=st.integers(0, 2**31 - 1),
                  step=_f32(0, 1))
def test_attack_outputs_stay_in_ball_mask_and_box(name, targeted, case, seed, step):
  x, _, mask, eps, bounds, norm = case
  params = _linear_params(x.shape, seed)
  labels = jnp.asarray(np.random.default_rng(seed).integers(0, _NUM_CLASSES, len(x)))
  kwargs = dict(mask=mask, eps=eps)
  if name == 'pgd':
    kwargs.update(key=jax.random.key(seed), step_size=np.full(len(x), step, np.float32))
  # eps, step size, key, mask and weights are traced: one compilation per shape and options.
  attack = _jit(attacks.ATTACKS[name], linear_apply, norm=norm, targeted=targeted,
                **({'num_steps': 3} if name == 'pgd' else {}))
  out = np.asarray(attack(params, x, labels, **kwargs))
  assert np.all((out >= bounds[0]) & (out <= bounds[1]))
  _assert_in_ball(out - x, eps, norm)
  np.testing.assert_array_equal(out[mask == 0], x[mask == 0])


def _linear_detector(params, x):
  """Two logits linear in the flattened image (the detector of the white-box property test)."""
  return x.reshape(x.shape[0], -1) @ params['v'] + params['c']


@pytest.mark.parametrize('mode', ['alternate', 'joint'])
@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(case=_attack_case(any_bounds=False), seed=st.integers(0, 2**31 - 1),
                  step=_f32(0, 1), weight=_f32(0, 1))
def test_whitebox_detector_stays_in_ball_mask_and_box(mode, case, seed, step, weight):
  x, _, mask, eps, bounds, norm = case
  params = _linear_params(x.shape, seed)
  rng = np.random.default_rng(seed + 1)
  detector = {'v': jnp.asarray(rng.normal(size=(math.prod(x.shape[1:]), 2)), jnp.float32),
              'c': jnp.asarray(rng.normal(size=(1, 2)), jnp.float32)}
  labels = jnp.asarray(rng.integers(0, _NUM_CLASSES, len(x)))
  attack = _jit(attacks.whitebox_detector, linear_apply, detector_fn=_linear_detector,
                norm=norm, mode=mode, num_steps=3)
  out = np.asarray(attack(params, x, labels, detector_params=detector, mask=mask, eps=eps,
                          step_size=np.full(len(x), step, np.float32), detector_weight=weight))
  assert np.all((out >= bounds[0]) & (out <= bounds[1]))
  _assert_in_ball(out - x, eps, norm)
  np.testing.assert_array_equal(out[mask == 0], x[mask == 0])
