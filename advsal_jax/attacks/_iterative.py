"""Iterative gradient attacks: BIM, PGD (random start) and MIM (momentum), L-inf and L2.

All three are the same loop: objective gradient -> steepest-ascent step -> projection onto the
masked eps-ball and the box (jax_verify's objective + projection + loop). Defaults are the
usual CIFAR-10 L-inf settings: ``eps = 8/255``, ``step_size = 2/255``, 10 steps.
"""

import functools
from typing import Optional, Union

import jax
import jax.numpy as jnp

from advsal_jax import _checks
from advsal_jax.attacks import _objectives
from advsal_jax.attacks import _projections
from advsal_jax.types import ApplyFn, Params

_TINY = 1e-12


def check_stepped_attack(apply_fn, params, x, labels, *, bounds, mask, eps, step_size,
                         num_steps, norm) -> tuple[float, float]:
  """The argument checks of an attack of ``num_steps`` projected steps; returns the bounds."""
  bounds = _checks.check_attack_inputs(apply_fn, params, x, labels, bounds=bounds, mask=mask)
  batch = jnp.shape(x)[0]
  _checks.check_budget(eps, 'eps', batch=batch)
  _checks.check_budget(step_size, 'step_size', batch=batch)
  _checks.check_count(num_steps, 'num_steps')
  _checks.check_norm(norm)
  return bounds


def _iterate(apply_fn, params, x, labels, *, start_key, targeted, bounds, mask, eps, step_size,
             num_steps, norm, objective, decay, unroll):
  """Runs ``num_steps`` projected steps from x (or a random point of the ball if ``start_key``).

  Momentum when ``decay`` is not None.
  """
  bounds = check_stepped_attack(apply_fn, params, x, labels, bounds=bounds, mask=mask, eps=eps,
                                step_size=step_size, num_steps=num_steps, norm=norm)
  batch = jnp.shape(x)[0]
  if decay is not None:
    _checks.check_budget(decay, 'decay', batch=batch)
  fn = _objectives.signed_objective(objective, targeted=targeted)
  x = jnp.asarray(x)
  labels = jnp.asarray(labels)
  m = _projections.prepare_mask(mask, x)
  alpha = _projections.per_example(step_size, x)
  project = functools.partial(_projections.project, x=x, norm=norm, eps=eps, bounds=bounds, mask=m)
  x_start = x
  if start_key is not None:
    x_start = x + _projections.sample_ball(start_key, x, norm=norm, eps=eps, mask=m)

  def body(_, carry):
    x_adv, velocity = carry
    grad = _objectives.input_gradient(apply_fn, params, x_adv, labels, fn) * m
    if decay is not None:
      l1 = jnp.sum(jnp.abs(grad), axis=tuple(range(1, x.ndim)), keepdims=True)
      velocity = _projections.per_example(decay, x) * velocity + grad / jnp.maximum(l1, _TINY)
      grad = velocity
    x_adv = project(x_adv + alpha * _projections.steepest_ascent(grad, norm))
    return x_adv, velocity

  x_adv, _ = jax.lax.fori_loop(0, num_steps, body, (project(x_start), jnp.zeros_like(x)),
                               unroll=unroll)
  return x_adv


def bim(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
        labels: jax.typing.ArrayLike, *, targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0), mask: Optional[jax.typing.ArrayLike] = None,
        key: Optional[jax.Array] = None, eps: jax.typing.ArrayLike = 8 / 255,
        step_size: jax.typing.ArrayLike = 2 / 255, num_steps: int = 10, norm: str = 'linf',
        objective: Union[str, _objectives.Objective] = 'cross_entropy',
        unroll: Union[int, bool] = 1) -> jax.Array:
  """Basic Iterative Method: ``num_steps`` FGSM steps, each projected onto the eps-ball.

  ``x_{t+1} = Proj(x_t + step_size * dir(grad))`` from ``x_0 = x``, where ``dir`` is ``sign``
  (L-inf) or ``g / ||g||_2`` (L2) and ``Proj`` keeps the perturbation inside ``mask``, the
  eps-ball and ``bounds``. With a mask this is the localized attack of Göpfert et al.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B, H, W, C] within ``bounds``.
    labels: i32[B]: true classes (untargeted) or target classes (targeted).
    targeted: whether ``labels`` are targets.
    bounds: (low, high) valid input range.
    mask: optional 0/1 array broadcastable to x; nothing outside it changes.
    key: unused (BIM is deterministic); accepted for a uniform attack signature.
    eps: radius of the perturbation ball, scalar or [B], >= 0 (may be traced).
    step_size: per-step size, scalar or [B], >= 0 (may be traced).
    num_steps: static number of iterations.
    norm: 'linf' or 'l2'.
    objective: 'cross_entropy', 'cw_margin' or a callable (logits, labels) -> f32[B].
    unroll: ``lax.fori_loop`` unroll factor (``True`` = fully; faster on CPU, slower compile).

  Returns:
    x_adv: x's shape and dtype, within ``bounds`` and within ``eps`` of x in ``norm``.

  Raises:
    ValueError, TypeError: on invalid arguments (before any compilation).

  References:
    Kurakin, Goodfellow & Bengio, Adversarial examples in the physical world, arXiv:1607.02533.
    Göpfert, Wersing & Hammer, Recovering Localized Adversarial Attacks, preprint 2019.
  """
  del key
  return _iterate(apply_fn, params, x, labels, start_key=None, targeted=targeted, bounds=bounds,
                  mask=mask, eps=eps, step_size=step_size, num_steps=num_steps, norm=norm,
                  objective=objective, decay=None, unroll=unroll)


def pgd(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
        labels: jax.typing.ArrayLike, *, targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0), mask: Optional[jax.typing.ArrayLike] = None,
        key: Optional[jax.Array] = None, eps: jax.typing.ArrayLike = 8 / 255,
        step_size: jax.typing.ArrayLike = 2 / 255, num_steps: int = 10, norm: str = 'linf',
        objective: Union[str, _objectives.Objective] = 'cross_entropy',
        unroll: Union[int, bool] = 1) -> jax.Array:
  """Projected Gradient Descent: BIM from a uniformly random point of the (masked) eps-ball.

  Args:
    apply_fn, params, x, labels, targeted, bounds, mask, eps, step_size, num_steps, norm,
      objective, unroll: as in ``bim``.
    key: required typed PRNG key (``jax.random.key``) for the random start.

  Returns:
    x_adv: x's shape and dtype, within ``bounds`` and within ``eps`` of x in ``norm``.

  Raises:
    ValueError: if ``key`` is None, or on other invalid arguments (before any compilation).

  References:
    Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks,
    arXiv:1706.06083.
  """
  if key is None:
    raise ValueError('pgd draws a random start: pass key=jax.random.key(seed), got None.')
  return _iterate(apply_fn, params, x, labels, start_key=key, targeted=targeted, bounds=bounds,
                  mask=mask, eps=eps, step_size=step_size, num_steps=num_steps, norm=norm,
                  objective=objective, decay=None, unroll=unroll)


def mim(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
        labels: jax.typing.ArrayLike, *, targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0), mask: Optional[jax.typing.ArrayLike] = None,
        key: Optional[jax.Array] = None, eps: jax.typing.ArrayLike = 8 / 255,
        step_size: jax.typing.ArrayLike = 2 / 255, num_steps: int = 10,
        decay: jax.typing.ArrayLike = 1.0, norm: str = 'linf',
        objective: Union[str, _objectives.Objective] = 'cross_entropy',
        unroll: Union[int, bool] = 1) -> jax.Array:
  """Momentum Iterative Method: BIM stepping along an accumulated, L1-normalised gradient.

  ``g_{t+1} = decay * g_t + grad / ||grad||_1`` and ``x_{t+1} = Proj(x_t + step_size *
  dir(g_{t+1}))``. Dong et al. use ``decay = 1.0`` (the default) and ``step_size = eps /
  num_steps``; the default here keeps BIM's 2/255 so the two are directly comparable.

  Args:
    apply_fn, params, x, labels, targeted, bounds, mask, eps, step_size, num_steps, norm,
      objective, unroll: as in ``bim``.
    key: unused (MIM is deterministic); accepted for a uniform attack signature.
    decay: momentum factor mu, scalar or [B], >= 0 (may be traced).

  Returns:
    x_adv: x's shape and dtype, within ``bounds`` and within ``eps`` of x in ``norm``.

  Raises:
    ValueError, TypeError: on invalid arguments (before any compilation).

  References:
    Dong et al., Boosting Adversarial Attacks with Momentum, arXiv:1710.06081.
  """
  del key
  return _iterate(apply_fn, params, x, labels, start_key=None, targeted=targeted, bounds=bounds,
                  mask=mask, eps=eps, step_size=step_size, num_steps=num_steps, norm=norm,
                  objective=objective, decay=decay, unroll=unroll)
