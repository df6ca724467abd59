"""Fast Gradient Sign Method (and its L2 variant, the fast gradient method)."""

from typing import Optional, Union

import jax
import jax.numpy as jnp

from advsal_jax import _checks
from advsal_jax.attacks import _objectives
from advsal_jax.attacks import _projections
from advsal_jax.types import ApplyFn, Params


def fgsm(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
         labels: jax.typing.ArrayLike, *, targeted: bool = False,
         bounds: tuple[float, float] = (0.0, 1.0), mask: Optional[jax.typing.ArrayLike] = None,
         key: Optional[jax.Array] = None, eps: jax.typing.ArrayLike = 8 / 255,
         norm: str = 'linf',
         objective: Union[str, _objectives.Objective] = 'cross_entropy') -> jax.Array:
  """One gradient step of size ``eps``: ``x + eps * sign(grad)`` (L-inf) or ``eps * g/||g||``.

  Untargeted steps up the objective of the true class, targeted steps down that of the target.
  The default ``eps = 8/255`` is the usual CIFAR-10 L-inf budget.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B, H, W, C] within ``bounds``.
    labels: i32[B]: true classes (untargeted) or target classes (targeted).
    targeted: whether ``labels`` are targets.
    bounds: (low, high) valid input range.
    mask: optional 0/1 array broadcastable to x; nothing outside it changes.
    key: unused (FGSM is deterministic); accepted for a uniform attack signature.
    eps: step size = perturbation budget, scalar or [B], >= 0 (may be traced).
    norm: 'linf' (FGSM) or 'l2' (fast gradient method).
    objective: 'cross_entropy', 'cw_margin' or a callable (logits, labels) -> f32[B].

  Returns:
    x_adv: x's shape and dtype, within ``bounds`` and within ``eps`` of x in ``norm``.

  Raises:
    ValueError, TypeError: on invalid arguments (before any compilation).

  References:
    Goodfellow, Shlens & Szegedy, Explaining and Harnessing Adversarial Examples,
    arXiv:1412.6572.
  """
  del key
  bounds = _checks.check_attack_inputs(apply_fn, params, x, labels, bounds=bounds, mask=mask)
  _checks.check_budget(eps, 'eps', batch=jnp.shape(x)[0])
  _checks.check_norm(norm)
  fn = _objectives.signed_objective(objective, targeted=targeted)
  x = jnp.asarray(x)
  m = _projections.prepare_mask(mask, x)
  grad = _objectives.input_gradient(apply_fn, params, x, jnp.asarray(labels), fn) * m
  step = _projections.per_example(eps, x) * _projections.steepest_ascent(grad, norm)
  return _projections.clip_to_bounds(x + step * m, bounds)
