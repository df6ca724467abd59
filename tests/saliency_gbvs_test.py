"""GBVS: Markov chains against dense eigenvectors, blob localisation, translation, batching."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from advsal_jax.saliency import _gbvs as gbvs_lib

jax.config.update('jax_numpy_rank_promotion', 'raise')

YY, XX = np.mgrid[:32, :32]


def _eig_stationary(p: np.ndarray) -> np.ndarray:
  """The eigenvalue-1 eigenvector of a column-stochastic matrix (scipy), summing to 1."""
  values, vectors = scipy.linalg.eig(p)
  v = np.real(vectors[:, np.argmin(np.abs(values - 1))])
  return v / v.sum()


def _falloff(h: int, w: int, sigma: float) -> np.ndarray:
  """exp(-D / (2 sigma^2)) with D the squared distance of row-major grid cells: [N,N]."""
  cells = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij'), -1).reshape(-1, 2)
  d2 = ((cells[:, None, :] - cells[None, :, :])**2).sum(-1)
  return np.exp(-d2 / (2 * sigma**2))


def _blob(channels: int, center=(10, 20), radius=3) -> np.ndarray:
  """A disc on a flat grey (0.3) background: grey 0.9 for C=1, red-orange for C=3."""
  fg = (0.9,) if channels == 1 else (0.95, 0.4, 0.2)
  img = np.full((32, 32, channels), 0.3, np.float32)
  img[(YY - center[0])**2 + (XX - center[1])**2 <= radius**2] = fg
  return img


def _smooth_images(n: int, size: int = 16, channels: int = 3, seed: int = 0) -> np.ndarray:
  coarse = np.random.default_rng(seed).uniform(size=(n, 4, 4, channels)).astype(np.float32)
  return np.asarray(jax.image.resize(coarse, (n, size, size, channels), 'linear'))


@pytest.mark.parametrize('graph', ['random', 'bipartite'])
def test_stationary_matches_dense_eigenvector(graph):
  rng = np.random.default_rng(1)
  w = rng.uniform(0.1, 1.0, size=(12, 12))
  if graph == 'bipartite':  # Periodic: the plain chain would oscillate, the lazy one converges.
    w[:6, :6] = w[6:, 6:] = 0.0
  p = w / w.sum(axis=0, keepdims=True)
  pj = jnp.asarray(p, jnp.float32)
  got = gbvs_lib._stationary(lambda v: pj @ v, jnp.full((12,), 1 / 12, jnp.float32),
                             tol=1e-8, max_iter=10_000)
  np.testing.assert_allclose(got, _eig_stationary(p), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('dissimilarity', gbvs_lib.DISSIMILARITIES)
def test_activation_matches_dense_eigenvector(dissimilarity):
  m = np.random.default_rng(2).uniform(0.0, 1.0, size=(5, 7))
  m /= m.max()
  f = np.log(m.ravel() + gbvs_lib._LOG_EPS) if dissimilarity == 'log_ratio' else m.ravel()
  w = np.abs(f[:, None] - f[None, :]) * _falloff(5, 7, 1.2) + gbvs_lib._WEIGHT_FLOOR
  expected = _eig_stationary(w / w.sum(axis=0, keepdims=True)).reshape(5, 7)
  got = gbvs_lib._activation(jnp.asarray(m, jnp.float32), 1.2, dissimilarity, 1e-4, 100)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
  flat = gbvs_lib._activation(jnp.zeros((5, 7)), 1.2, dissimilarity, 1e-4, 100)
  np.testing.assert_allclose(flat, 1 / 35, rtol=1e-5)  # The reference's flat-map fallback.


def test_normalization_matches_dense_eigenvector():
  a = np.random.default_rng(3).uniform(0.01, 1.0, size=(6, 5))
  a /= a.sum()
  w = a.ravel()[:, None] * _falloff(6, 5, 0.9)  # w2(b -> a) = A_a F(a - b)
  expected = _eig_stationary(w / w.sum(axis=0, keepdims=True)).reshape(6, 5)
  got = gbvs_lib._normalization(jnp.asarray(a, jnp.float32), 0.9, 1e-8, 10_000)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
  assert np.abs(expected - a).max() > 1e-3  # The chain moves mass: not a trivial fixed point.


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('dissimilarity,normalization',
                         [('log_ratio', 'graph'), ('difference', 'power')])
def test_blob_gets_most_of_the_mass(channels, dissimilarity, normalization):
  s = np.asarray(gbvs_lib.gbvs(_blob(channels)[None], dissimilarity=dissimilarity,
                               normalization=normalization))[0, :, :, 0]
  near = (YY - 10)**2 + (XX - 20)**2 <= 8**2  # 19 % of the image.
  assert s[near].sum() > 0.5
  peak = np.unravel_index(np.argmax(s), s.shape)
  assert np.hypot(peak[0] - 10, peak[1] - 20) <= 4  # At most one cell past the disc's rim.


def test_translation_moves_the_peak():
  images = np.stack([_blob(3), _blob(3, center=(21, 8))])
  s = np.asarray(gbvs_lib.gbvs(images))[..., 0]
  peaks = [np.array(np.unravel_index(np.argmax(m), m.shape)) for m in s]
  np.testing.assert_allclose(peaks[1] - peaks[0], [11, -12], atol=1)
  assert s[1][(YY - 21)**2 + (XX - 8)**2 <= 8**2].sum() > 0.5


def test_batched_equals_per_image_and_jit_equals_eager():
  x = _smooth_images(3)
  batched = gbvs_lib.gbvs(x, batch_size=2)  # One full chunk and a remainder.
  singles = np.concatenate([gbvs_lib.gbvs(x[i:i + 1]) for i in range(3)])
  np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-8)
  jitted = jax.jit(functools.partial(gbvs_lib.gbvs, batch_size=2))(x)
  np.testing.assert_allclose(jitted, batched, rtol=1e-5, atol=1e-8)


def test_output_contract_and_resizing():
  for shape in [(2, 28, 28, 1), (1, 48, 64, 3)]:  # MNIST grid as is; 64 wide -> 32x24 grid.
    x = np.random.default_rng(4).uniform(size=shape).astype(np.float32)
    s = np.asarray(gbvs_lib.gbvs(x))
    assert s.shape == shape[:3] + (1,) and s.dtype == np.float32
    assert (s >= 0).all()
    np.testing.assert_allclose(s.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)


def test_power_normalization_is_activation_to_the_1_5():
  # Grey image, no orientations: one feature map (intensity) on the 16x16 pixel grid.
  x = _smooth_images(1, channels=1)
  m = x[0, :, :, 0] / x[0, :, :, 0].max()
  f = np.log(m.ravel() + gbvs_lib._LOG_EPS)
  w = np.abs(f[:, None] - f[None, :]) * _falloff(16, 16, 0.15 * 16) + gbvs_lib._WEIGHT_FLOOR
  act = _eig_stationary(w / w.sum(axis=0, keepdims=True))
  expected = (act**1.5 / (act**1.5).sum()).reshape(16, 16)
  power = gbvs_lib.gbvs(x, orientations=(), normalization='power')[0, :, :, 0]
  np.testing.assert_allclose(power, expected, rtol=1e-4, atol=1e-8)
  graph = gbvs_lib.gbvs(x, orientations=())[0, :, :, 0]
  difference = gbvs_lib.gbvs(x, orientations=(), dissimilarity='difference')[0, :, :, 0]
  for other in (graph, difference):
    assert np.abs(np.asarray(other) - expected).max() > 1e-4
  # The normalisation graph concentrates the activation: fewer cells hold half the mass.
  def cells_for_half(s):
    return np.searchsorted(np.cumsum(np.sort(np.asarray(s).ravel())[::-1]), 0.5)
  assert cells_for_half(graph) < cells_for_half(act)


def test_differences_match_numpy():
  rng = np.random.default_rng(5)
  adv, clean = rng.uniform(size=(2, 2, 8, 8, 1)).astype(np.float32)
  clean[0, 0, 0, 0] = 0.0
  np.testing.assert_allclose(gbvs_lib.saliency_difference(adv, clean), adv - clean, atol=1e-7)
  np.testing.assert_allclose(gbvs_lib.log_ratio_difference(adv, clean, eps=1e-3),
                             np.log((adv + 1e-3) / (clean + 1e-3)), rtol=1e-5, atol=1e-6)
  for fn in (gbvs_lib.saliency_difference, gbvs_lib.log_ratio_difference):
    with pytest.raises(ValueError, match='adv_map and clean_map'):
      fn(adv, clean[:, :4])
  with pytest.raises(ValueError, match='eps'):
    gbvs_lib.log_ratio_difference(adv, clean, eps=0.0)


_X = np.full((1, 8, 8, 3), 0.5, np.float32)


@pytest.mark.parametrize('x,kwargs,error,name', [
    (_X[0], {}, ValueError, 'x must be a batch'),
    (_X.astype(np.int32), {}, TypeError, 'x must be floating'),
    (np.full((1, 8, 8, 2), 0.5, np.float32), {}, ValueError, 'x must have C=1'),
    (np.full((1, 8, 8, 1), np.nan, np.float32), {}, ValueError, r'x must lie in \[0, 1\]'),
    (_X + 1, {}, ValueError, r'x must lie in \[0, 1\]'),
    (_X, {'grid_size': 0}, ValueError, 'grid_size'),
    (_X, {'max_iter': 2.5}, ValueError, 'max_iter'),
    (_X, {'batch_size': -1}, ValueError, 'batch_size'),
    (_X, {'sigma_frac_act': 0.0}, ValueError, 'sigma_frac_act'),
    (_X, {'sigma_frac_norm': 1.5}, ValueError, 'sigma_frac_norm'),
    (_X, {'tol': -1e-4}, ValueError, 'tol'),
    (_X, {'dissimilarity': 'ratio'}, ValueError, 'dissimilarity'),
    (_X, {'normalization': 'itti'}, ValueError, 'normalization'),
    (_X, {'orientations': '0,45'}, TypeError, 'orientations'),
])
def test_bad_arguments_name_the_argument(x, kwargs, error, name):
  with pytest.raises(error, match=name):
    gbvs_lib.gbvs(x, **kwargs)
