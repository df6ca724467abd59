"""DeepFool: iterated minimal steps to the nearest linearised decision boundary."""

from typing import Optional

import jax
import jax.numpy as jnp

from advsal_jax import _checks
from advsal_jax import rewrites
from advsal_jax.attacks import _loops
from advsal_jax.attacks import _objectives
from advsal_jax.attacks import _projections
from advsal_jax.types import ApplyFn, Params

_TINY = 1e-12


def deepfool(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
             labels: jax.typing.ArrayLike, *, targeted: bool = False,
             bounds: tuple[float, float] = (0.0, 1.0), mask: Optional[jax.typing.ArrayLike] = None,
             key: Optional[jax.Array] = None, num_classes: int = 10,
             overshoot: jax.typing.ArrayLike = 0.02, max_iter: int = 50) -> jax.Array:
  """Multi-class DeepFool (L2).

  Untargeted, the reference class is ``labels`` and the candidates are the ``num_classes - 1``
  other classes with the largest clean logits (the paper's top-k restriction). At each step,
  with ``f_k = z_k - z_ref`` and ``w_k = grad f_k`` (restricted to ``mask``), the step to the
  nearest linearised boundary ``l = argmin_k |f_k| / ||w_k||`` is ``r = |f_l| / ||w_l||^2
  w_l``; the accumulated ``r_tot`` gives ``x_adv = clip(x + (1 + overshoot) * r_tot)``. All
  candidate gradients of a step come from one vjp evaluated on a batch of ``num_classes``
  cotangents (``vmap`` of the vjp). Examples stop updating once fooled; the loop exits when all
  are fooled or after ``max_iter`` steps, and runs on ever smaller batches as examples finish
  (``attacks.shrinking_while_loop``), so a few hard examples do not keep the whole batch busy.
  The reference implementation adds 1e-4 to each step length; here the overshoot alone
  pushes the iterate across the boundary, so a linear classifier is fooled in exactly one
  step of ``(1 + overshoot)`` times the minimal perturbation.

  Targeted (an extension, not in the paper): the single candidate is the target and the
  reference class is the current top class, until the target is on top.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B, H, W, C] within ``bounds``.
    labels: i32[B]: true classes (untargeted) or target classes (targeted).
    targeted: whether ``labels`` are targets.
    bounds: (low, high) valid input range; every iterate is clipped into it.
    mask: optional 0/1 array broadcastable to x; nothing outside it changes.
    key: unused (deterministic); accepted for a uniform attack signature.
    num_classes: static number of classes considered (reference + candidates), >= 2, capped
      at the model's K. Default 10 as in the paper.
    overshoot: >= 0, scalar or [B] (may be traced). Default 0.02 as in the paper.
    max_iter: static maximum number of steps. Default 50 as in the paper.

  Returns:
    x_adv: x's shape and dtype, within ``bounds`` (the last iterate for examples not fooled).

  Raises:
    ValueError, TypeError: on invalid arguments (before any compilation).

  References:
    Moosavi-Dezfooli, Fawzi & Frossard, DeepFool: a simple and accurate method to fool deep
    neural networks, arXiv:1511.04599.
  """
  del key
  bounds = _checks.check_attack_inputs(apply_fn, params, x, labels, bounds=bounds, mask=mask)
  _checks.check_budget(overshoot, 'overshoot', batch=jnp.shape(x)[0])
  _checks.check_count(max_iter, 'max_iter')
  _checks.check_count(num_classes, 'num_classes', minimum=2)
  k_model = _checks.num_classes(apply_fn, params, x)
  num_classes = min(num_classes, k_model)
  x = jnp.asarray(x)
  labels = jnp.asarray(labels)
  batch = x.shape[0]
  m = _projections.prepare_mask(mask, x)
  scale = jnp.broadcast_to(1.0 + _projections.per_example(overshoot, x),
                           (batch,) + (1,) * (x.ndim - 1))
  axes = tuple(range(1, x.ndim))
  fast_apply = rewrites.fast_gradients(apply_fn)
  forward = lambda xa: fast_apply(params, xa)

  logits0 = forward(x)
  if targeted:
    candidates = labels[:, None]  # Unused: the target is the only candidate.
  else:
    others = jnp.where(jax.nn.one_hot(labels, k_model, dtype=bool), -jnp.inf, logits0)
    candidates = jax.lax.top_k(others, num_classes - 1)[1]

  def active(carry, consts):
    return ~_objectives.succeeded(carry[2], consts[1], targeted=targeted)

  def body(carry, consts):
    r_tot, x_adv, logits = carry
    x0, lab, cand, m_b, scale_b = consts
    go = active(carry, consts)
    if targeted:
      classes = jnp.stack([jnp.argmax(logits, axis=-1), lab], axis=1)
    else:
      classes = jnp.concatenate([lab[:, None], cand], axis=1)
    _, vjp = jax.vjp(forward, x_adv)
    cotangents = jax.nn.one_hot(classes.T, k_model, dtype=logits.dtype)  # [n, b, K]
    grads = jax.vmap(lambda c: vjp(c)[0])(cotangents)  # [n, b, H, W, C]
    w = (grads[1:] - grads[:1]) * m_b[None]  # [n-1, b, H, W, C]
    z = jnp.take_along_axis(logits, classes, axis=1)
    f = (z[:, 1:] - z[:, :1]).T  # [n-1, b]
    w_norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=tuple(a + 1 for a in axes)))  # [n-1, b]
    nearest = jnp.argmin(jnp.abs(f) / (w_norm + _TINY), axis=0)  # [b]
    w_l = jnp.take_along_axis(w, nearest[None, :, None, None, None], axis=0)[0]
    f_l = jnp.take_along_axis(f, nearest[None], axis=0)[0]
    n_l = jnp.take_along_axis(w_norm, nearest[None], axis=0)[0]
    step = jnp.abs(f_l) / (jnp.square(n_l) + _TINY) * go
    r_tot = r_tot + step.reshape(scale_b.shape) * w_l
    x_adv = _projections.clip_to_bounds(x0 + scale_b * r_tot, bounds)
    return r_tot, x_adv, forward(x_adv)

  carry = (jnp.zeros_like(x), x, logits0)
  consts = (x, labels, candidates, m, scale)
  _, x_adv, _ = _loops.shrinking_while_loop(body, active, carry, consts, max_iter=max_iter)
  return x_adv
