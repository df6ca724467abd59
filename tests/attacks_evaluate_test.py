"""evaluate_attack against a numpy reference."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from advsal_jax import attacks

_B, _H, _W, _C, _K = 6, 3, 3, 2, 4
_F = _H * _W * _C


def _linear(params, x):
  return x.reshape(x.shape[0], -1) @ params['w']


@pytest.mark.parametrize('targeted', [False, True])
def test_matches_numpy_reference(targeted):
  rng = np.random.default_rng(0)
  w = rng.normal(size=(_F, _K)).astype(np.float32)
  x = rng.uniform(size=(_B, _H, _W, _C)).astype(np.float32)
  x_adv = x.copy()
  x_adv[1:] += rng.normal(size=(_B - 1, _H, _W, _C)).astype(np.float32) * 0.3
  x_adv[2, :, :, 0] = x[2, :, :, 0]  # only some values change
  labels = rng.integers(0, _K, size=_B).astype(np.int32)
  ev = attacks.evaluate_attack(_linear, {'w': jnp.asarray(w)}, x, x_adv, labels,
                               targeted=targeted)
  adv_logits = x_adv.reshape(_B, -1).astype(np.float64) @ w
  adv_pred = adv_logits.argmax(axis=1)
  delta = (x_adv - x).reshape(_B, -1)
  np.testing.assert_array_equal(ev.clean_pred, (x.reshape(_B, -1) @ w).argmax(axis=1))
  np.testing.assert_array_equal(ev.adv_pred, adv_pred)
  np.testing.assert_array_equal(ev.success, adv_pred == labels if targeted else adv_pred != labels)
  np.testing.assert_allclose(ev.adv_confidence, scipy.special.softmax(adv_logits, axis=1).max(1),
                             rtol=1e-5)
  np.testing.assert_array_equal(ev.l0, (delta != 0).sum(axis=1))
  assert ev.l0[0] == 0 and ev.l0[2] == _F // 2
  np.testing.assert_allclose(ev.l2, np.linalg.norm(delta, axis=1), rtol=1e-5)
  np.testing.assert_allclose(ev.linf, np.abs(delta).max(axis=1), rtol=1e-6)


def test_rejects_mismatched_shapes_and_bad_labels():
  w = {'w': jnp.ones((_F, _K))}
  x = np.zeros((_B, _H, _W, _C), np.float32)
  with pytest.raises(ValueError, match='x_adv must have the shape of x'):
    attacks.evaluate_attack(_linear, w, x, x[:1], np.zeros(_B, np.int32), targeted=False)
  with pytest.raises(ValueError, match='labels'):
    attacks.evaluate_attack(_linear, w, x, x, np.full(_B, _K, np.int32), targeted=False)
