"""DeepFool against closed-form minimal perturbations of linear classifiers."""

import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks

from testing_utils import linear_apply as _linear

_B, _H, _W, _C = 4, 3, 3, 2
_F = _H * _W * _C


def _model(k, seed=0):
  """A linear model centred on the image 0.5, so boundaries are near and steps never clip."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(_F, k)).astype(np.float32)
  b = (-0.5 * w.sum(axis=0, keepdims=True) + rng.normal(size=(1, k)) * 0.05).astype(np.float32)
  x = rng.uniform(0.4, 0.6, size=(_B, _H, _W, _C)).astype(np.float32)
  params = {'w': jnp.asarray(w), 'b': jnp.asarray(b)}
  labels = np.argmax(x.reshape(_B, -1) @ w + b, axis=1).astype(np.int32)
  return params, w, b, x, labels


def _closed_form_step(w, b, x, labels, candidates, mask=None):
  """argmin_k |f_k| / ||w_k|| and the step |f_l| / ||w_l||^2 w_l, in numpy float64."""
  m = np.ones(_F) if mask is None else np.broadcast_to(mask[0], x.shape[1:]).reshape(-1)
  steps = []
  for xb, y, cands in zip(x.reshape(_B, -1).astype(np.float64), labels, candidates):
    z = xb @ w + b[0]
    best = None
    for k in cands:
      wk = (w[:, k] - w[:, y]) * m
      fk = z[k] - z[y]
      dist = abs(fk) / np.linalg.norm(wk)
      if best is None or dist < best[0]:
        best = (dist, abs(fk) / np.dot(wk, wk) * wk)
    steps.append(best[1])
  return np.stack(steps).reshape(x.shape)


def test_binary_linear_first_step_is_minimal_perturbation_times_overshoot():
  params, w, b, x, labels = _model(2)
  out = attacks.deepfool(_linear, params, x, labels, overshoot=0.02)
  r = _closed_form_step(w, b, x, labels, [[1 - y] for y in labels])
  assert np.abs(x + 1.02 * r - 0.5).max() < 0.5  # no clipping: the closed form applies
  np.testing.assert_allclose(out - x, 1.02 * r, rtol=1e-4, atol=1e-6)
  # One step suffices: every example now lies on the other side of the boundary.
  pred = np.argmax(np.asarray(_linear(params, out)), axis=1)
  np.testing.assert_array_equal(pred, 1 - labels)


@pytest.mark.parametrize('num_classes', [2, 3, 5])
def test_multiclass_first_step_uses_nearest_of_top_candidates(num_classes):
  params, w, b, x, labels = _model(5, seed=1)
  out = attacks.deepfool(_linear, params, x, labels, num_classes=num_classes, max_iter=1,
                         overshoot=0.0)
  logits = x.reshape(_B, -1) @ w + b
  order = np.argsort(-logits, axis=1)
  candidates = [[k for k in row if k != y][:num_classes - 1] for row, y in zip(order, labels)]
  r = _closed_form_step(w, b, x, labels, candidates)
  np.testing.assert_allclose(out - x, r, rtol=1e-4, atol=1e-6)


def test_mask_restricts_the_linearised_step():
  params, w, b, x, labels = _model(3, seed=2)
  mask = np.zeros((1, _H, _W, 1), np.float32)
  mask[0, :2] = 1.0
  out = attacks.deepfool(_linear, params, x, labels, mask=mask, max_iter=1, overshoot=0.0)
  r = _closed_form_step(w, b, x, labels, [[k for k in range(3) if k != y] for y in labels],
                        mask=mask)
  np.testing.assert_allclose(out - x, r, rtol=1e-4, atol=1e-6)
  outside = np.broadcast_to(mask == 0, x.shape)
  np.testing.assert_array_equal(np.asarray(out)[outside], x[outside])


def test_misclassified_examples_are_left_alone_and_others_fooled():
  params, w, b, x, labels = _model(4, seed=3)
  wrong = labels.copy()
  wrong[0] = (labels[0] + 1) % 4  # "true" label the model already gets wrong
  out = np.asarray(attacks.deepfool(_linear, params, x, wrong))
  np.testing.assert_array_equal(out[0], x[0])
  pred = np.argmax(np.asarray(_linear(params, out)), axis=1)
  assert (pred[1:] != wrong[1:]).all()


def test_targeted_reaches_target():
  params, w, b, x, labels = _model(4, seed=4)
  targets = ((labels + 2) % 4).astype(np.int32)
  out = attacks.deepfool(_linear, params, x, targets, targeted=True)
  pred = np.argmax(np.asarray(_linear(params, out)), axis=1)
  np.testing.assert_array_equal(pred, targets)
