"""Carlini & Wagner L2 attack: tanh box, Adam, binary search over the constant, one jit."""

from typing import Optional, Union

import jax
import jax.numpy as jnp
import optax

from advsal_jax import _checks
from advsal_jax import rewrites
from advsal_jax.attacks import _objectives
from advsal_jax.attacks import _projections
from advsal_jax.types import ApplyFn, Params

_UPPER = 1e10  # "no successful constant yet" (the reference implementation's sentinel)


def carlini_wagner_l2(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                      labels: jax.typing.ArrayLike, *, targeted: bool = False,
                      bounds: tuple[float, float] = (0.0, 1.0),
                      mask: Optional[jax.typing.ArrayLike] = None,
                      key: Optional[jax.Array] = None,
                      confidence: jax.typing.ArrayLike = 0.0,
                      learning_rate: jax.typing.ArrayLike = 1e-2,
                      initial_const: jax.typing.ArrayLike = 1e-3,
                      binary_search_steps: int = 9, max_iterations: int = 10000,
                      abort_early: bool = True,
                      objective: Union[str, _objectives.Objective] = 'cw_margin') -> jax.Array:
  """Minimises ``||x' - x||_2^2 + c * max(-s(x'), -kappa)`` over ``x' = box(tanh(w))``.

  ``s`` is the signed objective (``cw_margin`` by default: the logit margin by which the true
  class is beaten, or by which the target wins). For each of ``binary_search_steps`` values
  of the per-example constant ``c`` (starting at ``initial_const``), Adam runs up to
  ``max_iterations`` steps from ``w`` = the input; with ``abort_early`` the inner loop stops
  once the batch loss has improved by less than 0.01 % over the last ``max_iterations // 10``
  steps (the reference implementation's rule). ``c`` is then bisected (halved towards the
  smallest successful value) or, while no success was seen, multiplied by 10. Every step's
  iterate that succeeds with margin > ``confidence`` and has the smallest L2 so far is kept.

  Defaults are the reference implementation's (lr 1e-2, 9 search steps, 10,000 iterations,
  initial_const 1e-3, kappa 0). Everything runs in ``lax`` loops, so the attack compiles under
  one ``jax.jit``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B, H, W, C] within ``bounds``.
    labels: i32[B]: true classes (untargeted) or target classes (targeted).
    targeted: whether ``labels`` are targets.
    bounds: (low, high) valid input range (the tanh box maps onto it).
    mask: optional 0/1 array broadcastable to x; nothing outside it changes.
    key: unused (deterministic); accepted for a uniform attack signature.
    confidence: kappa >= 0, scalar or [B] (may be traced).
    learning_rate: Adam step size > 0, scalar or [B] (may be traced).
    initial_const: first c > 0, scalar or [B] (may be traced).
    binary_search_steps: static number of values of c tried.
    max_iterations: static maximum number of Adam steps per value of c.
    abort_early: stop the inner loop when the loss stalls.
    objective: 'cw_margin' (default), 'cross_entropy' or a callable (logits, labels) -> f32[B].

  Returns:
    x_adv: x's shape and dtype within ``bounds``: per example, the smallest-L2 successful
    iterate found, or x itself where no iterate succeeded.

  Raises:
    ValueError, TypeError: on invalid arguments (before any compilation).

  References:
    Carlini & Wagner, Towards Evaluating the Robustness of Neural Networks, arXiv:1608.04644.
  """
  del key
  lo, hi = _checks.check_attack_inputs(apply_fn, params, x, labels, bounds=bounds, mask=mask)
  batch = jnp.shape(x)[0]
  _checks.check_budget(confidence, 'confidence', batch=batch)
  _checks.check_budget(learning_rate, 'learning_rate', batch=batch, positive=True)
  _checks.check_budget(initial_const, 'initial_const', batch=batch, positive=True)
  _checks.check_count(binary_search_steps, 'binary_search_steps')
  _checks.check_count(max_iterations, 'max_iterations')
  fn = _objectives.signed_objective(objective, targeted=targeted)
  x = jnp.asarray(x)
  labels = jnp.asarray(labels)
  m = _projections.prepare_mask(mask, x) > 0
  kappa = jnp.broadcast_to(jnp.asarray(confidence, x.dtype), (batch,))
  half = (hi - lo) / 2

  def to_image(w):
    return jnp.where(m, lo + half * (jnp.tanh(w) + 1.0), x)

  w0 = jnp.arctanh(jnp.clip((x - lo) / half - 1.0, -1 + 1e-6, 1 - 1e-6))
  optimizer = optax.adam(_projections.per_example(learning_rate, x))
  check_every = max(max_iterations // 10, 1)
  axes = tuple(range(1, x.ndim))

  fast_apply = rewrites.fast_gradients(apply_fn)

  def loss_fn(w, const):
    x_adv = to_image(w)
    logits = fast_apply(params, x_adv)
    l2sq = jnp.sum(jnp.square(x_adv - x), axis=axes)
    per_example = l2sq + const * jnp.maximum(-fn(logits, labels), -kappa)
    return jnp.sum(per_example), (x_adv, logits, l2sq)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def search_step(_, outer):
    const, lower, upper, best_l2sq, best_adv = outer

    def cond(inner):
      it, *_, stop = inner
      return (it < max_iterations) & ~stop

    def body(inner):
      it, w, opt_state, best_l2sq, best_adv, found, prev, stop = inner
      (loss, (x_adv, logits, l2sq)), grad = grad_fn(w, const)
      success = _objectives.succeeded(logits, labels, targeted=targeted, confidence=kappa)
      better = success & (l2sq < best_l2sq)
      best_l2sq = jnp.where(better, l2sq, best_l2sq)
      best_adv = jnp.where(better.reshape((-1,) + (1,) * len(axes)), x_adv, best_adv)
      found = found | success
      updates, opt_state = optimizer.update(grad, opt_state)
      w = optax.apply_updates(w, updates)
      checkpoint = it % check_every == 0
      stop = abort_early & checkpoint & (loss > prev * 0.9999)
      prev = jnp.where(checkpoint, loss, prev)
      return it + 1, w, opt_state, best_l2sq, best_adv, found, prev, stop

    inner = (jnp.int32(0), w0, optimizer.init(w0), best_l2sq, best_adv,
             jnp.zeros((batch,), bool), jnp.asarray(jnp.inf, x.dtype), jnp.asarray(False))
    _, _, _, best_l2sq, best_adv, found, _, _ = jax.lax.while_loop(cond, body, inner)
    upper = jnp.where(found, jnp.minimum(upper, const), upper)
    lower = jnp.where(found, lower, jnp.maximum(lower, const))
    const = jnp.where(upper < _UPPER, (lower + upper) / 2, const * 10)
    return const, lower, upper, best_l2sq, best_adv

  const0 = jnp.broadcast_to(jnp.asarray(initial_const, x.dtype), (batch,))
  outer = (const0, jnp.zeros((batch,), x.dtype), jnp.full((batch,), _UPPER, x.dtype),
           jnp.full((batch,), jnp.inf, x.dtype), x)
  *_, best_adv = jax.lax.fori_loop(0, binary_search_steps, search_step, outer)
  return best_adv
