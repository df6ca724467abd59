"""shrinking_while_loop against the plain batched while_loop it replaces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax.attacks import _loops


def _plain(body, active, carry, consts, max_iter):
  def cond(state):
    it, c = state
    return (it < max_iter) & jnp.any(active(c, consts))

  return jax.lax.while_loop(cond, lambda s: (s[0] + 1, body(s[1], consts)), (0, carry))[1]


def _toy():
  """Each example counts up to its own goal (some never reach it) and accumulates a sum."""
  goals = jnp.array([3, 50, 1, 7, 0, 12, 2, 30, 5, 9, 4, 1000, 6], jnp.int32)
  scale = jnp.linspace(0.5, 2.0, goals.shape[0])

  def active(carry, consts):
    return carry[0] < consts[0]

  def body(carry, consts):
    count, total = carry
    go = active(carry, consts)
    return count + go, total + jnp.where(go, consts[1] * (count + 1), 0.0)

  carry = (jnp.zeros_like(goals), jnp.zeros_like(scale))
  return body, active, carry, (goals, scale)


@pytest.mark.parametrize('max_iter,shrink', [(40, 4), (40, 2), (2000, 3), (1, 4)])
def test_equals_the_plain_loop(max_iter, shrink):
  body, active, carry, consts = _toy()
  plain = _plain(body, active, carry, consts, max_iter)
  run = jax.jit(lambda c, k: _loops.shrinking_while_loop(body, active, c, k, max_iter=max_iter,
                                                        shrink=shrink))
  shrunk = run(carry, consts)
  # Every example iterates min(goal, max_iter) times, in stages or not.
  np.testing.assert_array_equal(shrunk[0], np.minimum(consts[0], max_iter))
  jax.tree.map(np.testing.assert_array_equal, shrunk, plain)


def test_stage_sizes():
  assert _loops.stage_sizes(64, 4) == [64, 16, 4, 1]
  assert _loops.stage_sizes(13, 2) == [13, 7, 4, 2, 1]
  assert _loops.stage_sizes(1, 4) == [1]


def test_bad_shrink_is_rejected():
  body, active, carry, consts = _toy()
  with pytest.raises(ValueError, match='shrink'):
    _loops.shrinking_while_loop(body, active, carry, consts, max_iter=3, shrink=1)
