"""Our LIME against the lime package's LimeImageExplainer on the same superpixels.

Skipped without lime (``pip install -e '.[peers]'``). The model is linear in the superpixels'
on/off vector with known coefficients, so the top-5 superpixels are known and both
implementations must recover them, though each draws its own perturbations.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import saliency
from advsal_jax.benchmarks import lime_peer

lime_image = pytest.importorskip('lime.lime_image')

_SIDE, _CELL = 16, 4  # A 4x4 grid of 4x4-pixel superpixels: S = 16.
_NUM_SAMPLES = 1000
_TARGET = 1


def _grid_segments() -> np.ndarray:
  rows, cols = np.mgrid[:_SIDE, :_SIDE] // _CELL
  return (rows * (_SIDE // _CELL) + cols).astype(np.int32)


def _fill_image(image: np.ndarray, segments: np.ndarray, fill: float | None) -> np.ndarray:
  """What "off" superpixels show: each superpixel's mean colour, or ``fill``."""
  if fill is not None:
    return np.full_like(image, fill)
  out = np.empty_like(image)
  for label in np.unique(segments):
    out[segments == label] = image[segments == label].mean(axis=0)
  return out


def _linear_model(image: np.ndarray, segments: np.ndarray, fill: float | None,
                  coefficients: np.ndarray):
  """``apply_fn, params`` with logit 1 = c + sum_s coefficients[s] z_s on perturbed copies.

  A perturbed copy is ``z * image + (1 - z) * fill_image`` per superpixel, so the logit
  ``<w, x>`` with ``w_s = coefficients[s] (image_s - fill_s) / |image_s - fill_s|^2`` on
  superpixel ``s`` is exactly linear in the on/off vector ``z``; logit 0 is constant.
  """
  delta = image - _fill_image(image, segments, fill)
  norms = np.array([np.sum(delta[segments == s] ** 2) for s in range(coefficients.size)])
  w = (coefficients / norms)[segments][..., None] * delta

  def apply_fn(params, x):
    logit = jnp.einsum('bhwc,hwc->b', x, params)
    return jnp.stack([jnp.zeros_like(logit), logit], axis=-1)

  return apply_fn, jnp.asarray(w, jnp.float32)


@pytest.mark.parametrize('channels,fill', [(3, None), (3, 0.0), (1, None)])
def test_both_recover_the_top5_superpixels_of_a_linear_model(channels, fill):
  rng = np.random.default_rng(channels)
  image = rng.uniform(0.05, 0.95, (_SIDE, _SIDE, channels)).astype(np.float32)
  segments = _grid_segments()
  # Coefficients 2/15 apart: ridge shrinkage and the sampling move them far less than that.
  truth = rng.permutation(np.linspace(-1.0, 1.0, (_SIDE // _CELL) ** 2))
  top5 = np.argsort(-truth)[:5]
  apply_fn, params = _linear_model(image, segments, fill, truth)
  settings = dict(num_samples=_NUM_SAMPLES, kernel_width=0.25, ridge_alpha=1.0)

  ours = jax.jit(lambda p, x, k: saliency.lime_explain(
      apply_fn, p, x, jnp.array([_TARGET], jnp.int32), key=k, segments=segments[None],
      num_segments=truth.size, fill=fill, batch_size=250, **settings))(
          params, image[None], jax.random.key(0))
  classifier_fn = lime_peer.classifier(apply_fn, params, channels, options=None)
  theirs = lime_peer.explain(lime_image, image, segments, classifier_fn, _TARGET,
                             batch_size=250, fill=fill, seed=0, **settings)

  np.testing.assert_array_equal(ours.ranking[0, :5], top5)
  np.testing.assert_array_equal(lime_peer.top_k(theirs), top5)
  np.testing.assert_allclose(ours.coefficients[0], truth, atol=0.05)
  np.testing.assert_allclose(theirs, truth, atol=0.05)
  np.testing.assert_allclose(ours.coefficients[0], theirs, atol=0.01)
  np.testing.assert_allclose(lime_peer.segment_coefficients(
      np.asarray(ours.pixel_weights[0]), segments), ours.coefficients[0], rtol=1e-6)


def test_package_path_refuses_labels_it_would_misnumber():
  segments = _grid_segments() * 2  # Labels 0, 2, 4, ...: the package indexes features 0..S-1.
  image = np.full((_SIDE, _SIDE, 3), 0.5, np.float32)
  with pytest.raises(ValueError, match='segments must hold the labels 0..S-1'):
    lime_peer.explain(lime_image, image, segments, lambda x: np.zeros((len(x), 2)), _TARGET,
                      num_samples=10, batch_size=10, kernel_width=0.25, ridge_alpha=1.0,
                      fill=None, seed=0)
