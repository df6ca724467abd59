"""Batched attack loops whose examples exit early: the batch shrinks as examples finish.

A batched ``lax.while_loop`` runs until its last example is done, every iteration costing a
full batch: one DeepFool straggler on a CIFAR-10 batch of 64 kept all 64 images iterating
for 45 of the loop's 50 steps. ``shrinking_while_loop`` instead runs the loop in stages on
ever smaller batches (B, B/4, B/16, ..., 1): each stage gathers the examples still active,
iterates until they fit the next stage, and scatters them back. Each stage is its own
``while_loop`` (a few more copies of the body to compile); shapes stay static, so it runs
under ``jit`` on any backend.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import _checks

Body = Callable[[Any, Any], Any]
Active = Callable[[Any, Any], jax.Array]


def stage_sizes(batch: int, shrink: int) -> list[int]:
  """Batch sizes of the stages: ``batch``, then divided by ``shrink`` (rounded up) down to 1."""
  sizes = [batch]
  while sizes[-1] > 1:
    sizes.append(-(-sizes[-1] // shrink))
  return sizes


def shrinking_while_loop(body: Body, active: Active, carry: Any, consts: Any, *,
                         max_iter: int, shrink: int = 4) -> Any:
  """``while it < max_iter and any(active): carry = body(carry, consts)``, on shrinking batches.

  Equals the plain batched loop when ``body`` treats examples independently and leaves
  inactive ones unchanged (up to float rounding: the model runs on other batch sizes).

  Args:
    body: ``body(carry, consts) -> carry`` on a sub-batch of b examples.
    active: ``active(carry, consts) -> bool[b]``, the examples still iterating.
    carry: pytree of per-example state, arrays with leading axis B.
    consts: pytree of per-example constants, arrays with leading axis B (gathered with the
      carry at each stage).
    max_iter: static total number of iterations (over all stages).
    shrink: static factor between the batch sizes of consecutive stages, >= 2.

  Returns:
    The final carry, leading axis B.

  Raises:
    ValueError: ``max_iter < 0``, ``shrink < 2``, or ``carry``/``consts`` without arrays of
      one leading batch axis B >= 1.
    TypeError: ``max_iter`` or ``shrink`` not a Python int.
  """
  _checks.check_count(max_iter, 'max_iter', minimum=0)
  _checks.check_count(shrink, 'shrink', minimum=2)
  for name, tree in (('carry', carry), ('consts', consts)):
    leading = {np.shape(a)[0] if np.ndim(a) else 0 for a in jax.tree.leaves(tree)}
    if len(leading) != 1 or 0 in leading:
      raise ValueError(f'{name} must be a non-empty pytree of arrays with one leading batch '
                       f'axis B >= 1, got shapes {jax.tree.map(np.shape, tree)}.')
  batch = jax.tree.leaves(carry)[0].shape[0]
  if jax.tree.leaves(consts)[0].shape[0] != batch:
    raise ValueError(f'consts must have the batch axis B={batch} of carry, got shapes '
                     f'{jax.tree.map(np.shape, consts)}.')
  sizes = stage_sizes(batch, shrink)
  it = jnp.int32(0)
  for stage, size in enumerate(sizes):
    fits_next = sizes[stage + 1] if stage + 1 < len(sizes) else 0
    # The active examples first (stable), as many as the stage holds.
    order = jnp.argsort(~active(carry, consts), stable=True)[:size]
    sub_consts = jax.tree.map(lambda a, o=order: a[o], consts)
    sub_carry = jax.tree.map(lambda a, o=order: a[o], carry)

    def cond(state, sub_consts=sub_consts, fits_next=fits_next):
      it, sub = state
      return (it < max_iter) & (jnp.sum(active(sub, sub_consts)) > fits_next)

    def step(state, sub_consts=sub_consts):
      it, sub = state
      return it + 1, body(sub, sub_consts)

    it, sub_carry = jax.lax.while_loop(cond, step, (it, sub_carry))
    carry = jax.tree.map(lambda a, s, o=order: a.at[o].set(s, unique_indices=True), carry,
                         sub_carry)
  return carry
