"""JSMA: the chosen pair against a brute-force pairwise saliency map on a linear model."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks

from testing_utils import linear_apply as _linear

_B, _H, _W, _C, _K = 4, 3, 3, 2, 3
_F = _H * _W * _C


@pytest.fixture
def linear():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(_F, _K)).astype(np.float32)
  params = {'w': jnp.asarray(w), 'b': jnp.zeros((1, _K), jnp.float32)}
  x = rng.uniform(0.0, 1.0, size=(_B, _H, _W, _C)).astype(np.float32)
  x[:, 0, 0, 0] = 1.0  # saturated: outside the search domain when increasing
  pred = np.argmax(x.reshape(_B, -1) @ w, axis=1)
  targets = ((pred + 1) % _K).astype(np.int32)
  return params, w, x, targets


def _output_jacobian(w, x, output):
  """d y / dx, [F, K], in closed form: W for logits, W (diag(p) - p p^T) for softmax."""
  if output == 'logits':
    return w
  z = x.reshape(-1) @ w
  p = np.exp(z - z.max())
  p /= p.sum()
  return w @ (np.diag(p) - np.outer(p, p))


def _brute_force_pair(w, x, target, *, increase, output, candidates=None):
  """The paper's pair: max (a_p + a_q) |b_p + b_q| s.t. a_p + a_q > 0, b_p + b_q < 0."""
  sign = 1.0 if increase else -1.0
  jac = _output_jacobian(w, x, output)
  a = sign * jac[:, target]
  b = sign * (jac.sum(axis=1) - jac[:, target])
  flat = x.reshape(-1)
  domain = [p for p in range(_F) if (flat[p] < 1.0 if increase else flat[p] > 0.0)]
  if candidates is not None:
    domain = sorted(domain, key=lambda p: -(a[p] - b[p]))[:candidates]
  best, best_score = None, -np.inf
  for p, q in itertools.combinations(domain, 2):
    alpha, beta = a[p] + a[q], b[p] + b[q]
    if alpha > 0 and beta < 0 and alpha * -beta > best_score:
      best, best_score = {p, q}, alpha * -beta
  return best


@pytest.mark.parametrize('theta', [1.0, -1.0])
@pytest.mark.parametrize('num_candidates', [_F, 5])
@pytest.mark.parametrize('output', ['logits', 'probabilities'])
def test_first_pair_is_the_pairwise_saliency_argmax(linear, theta, num_candidates, output):
  params, w, x, targets = linear
  gamma = 2.5 / _F  # room for exactly one pair
  out = np.asarray(attacks.jsma(_linear, params, x, targets, targeted=True, theta=theta,
                                gamma=gamma, num_candidates=num_candidates, output=output))
  for b in range(_B):
    changed = set(np.flatnonzero(out[b].reshape(-1) != x[b].reshape(-1)))
    expected = _brute_force_pair(w, x[b], targets[b], increase=theta > 0, output=output,
                                 candidates=num_candidates)
    assert changed == expected, (b, changed, expected)
    np.testing.assert_array_equal(out[b].reshape(-1)[sorted(changed)], 1.0 if theta > 0 else 0.0)


def test_budget_mask_and_success(linear):
  params, w, x, targets = linear
  mask = np.ones((1, _H, _W, 1), np.float32)
  mask[0, 0] = 0.0
  gamma = 0.6
  out = np.asarray(attacks.jsma(_linear, params, x, targets, targeted=True, gamma=gamma,
                                mask=mask))
  ev = attacks.evaluate_attack(_linear, params, x, out, targets, targeted=True)
  assert (np.asarray(ev.l0) <= np.floor(gamma * _F)).all()
  outside = np.broadcast_to(mask == 0, x.shape)
  np.testing.assert_array_equal(out[outside], x[outside])
  # An example only stops early by succeeding; otherwise it used its budget or its domain.
  domain = ((x < 1.0) & (np.broadcast_to(mask, x.shape) == 1)).reshape(_B, -1).sum(axis=1)
  l0 = np.asarray(ev.l0)
  ran_out = (l0 + 2 > np.floor(gamma * _F)) | (l0 + 2 > domain)
  assert (np.asarray(ev.success) | ran_out).all(), (ev.success, l0, domain)
  assert np.asarray(ev.success).any()


def test_already_successful_examples_are_unchanged(linear):
  params, w, x, _ = linear
  pred = np.argmax(x.reshape(_B, -1) @ w, axis=1).astype(np.int32)
  out = attacks.jsma(_linear, params, x, pred, targeted=True)
  np.testing.assert_array_equal(out, x)
