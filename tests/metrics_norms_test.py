"""advsal_jax.metrics perturbation norms against numpy."""

import numpy as np
import pytest

from advsal_jax import metrics

_RNG = np.random.default_rng(4)


def test_norms_match_numpy():
  x = _RNG.random((4, 6, 6, 3)).astype(np.float32)
  x_adv = np.clip(x + 0.05 * np.sign(_RNG.normal(size=x.shape)) * (_RNG.random(x.shape) > 0.7),
                  0, 1).astype(np.float32)
  delta = x_adv - x
  flat = np.float64(delta).reshape(4, -1)
  np.testing.assert_allclose(metrics.l2_norm(delta), np.linalg.norm(flat, axis=1), rtol=1e-6)
  np.testing.assert_allclose(metrics.linf_norm(delta), np.abs(flat).max(1), rtol=0)
  np.testing.assert_array_equal(metrics.l0_norm(delta), (flat != 0).sum(1))
  np.testing.assert_array_equal(metrics.l0_norm(delta, atol=0.03),
                                (np.abs(flat) > 0.03).sum(1))
  np.testing.assert_array_equal(metrics.l0_norm(delta, per_pixel=True),
                                np.any(delta != 0, axis=-1).reshape(4, -1).sum(1))


def test_closed_forms():
  # FGSM with step eps changes every entry by exactly eps: L-inf = eps, L2 = eps sqrt(n).
  eps = 0.03
  delta = eps * np.sign(_RNG.normal(size=(2, 5, 5, 3))).astype(np.float32)
  np.testing.assert_allclose(metrics.linf_norm(delta), eps, rtol=1e-6)
  np.testing.assert_allclose(metrics.l2_norm(delta), eps * np.sqrt(75), rtol=1e-6)
  np.testing.assert_array_equal(metrics.l0_norm(delta), 75)
  zero = np.zeros((1, 4, 4), np.float32)
  np.testing.assert_array_equal(metrics.l2_norm(zero), 0.0)
  # Tiny perturbations must not underflow in the squares.
  np.testing.assert_allclose(metrics.l2_norm(delta * 1e-25), eps * 1e-25 * np.sqrt(75), rtol=1e-5)


def test_errors():
  delta = np.zeros((2, 4, 4), np.float32)
  with pytest.raises(ValueError, match='delta must have 4 dimensions'):
    metrics.l0_norm(delta, per_pixel=True)
  with pytest.raises(ValueError, match='atol'):
    metrics.l0_norm(delta, atol=-1.0)
  with pytest.raises(ValueError, match='delta contains NaN'):
    metrics.l2_norm(np.full((1, 3), np.nan, np.float32))
  with pytest.raises(ValueError, match='delta must have at least 2 dimensions'):
    metrics.linf_norm(np.zeros(3, np.float32))
