"""White-box attack on a classifier guarded by an adversarial-example detector.

Paper 003's adaptive attack (eqs. 3-4): signed-gradient steps that alternate between the
classifier's loss (to fool the classifier) and the detector's (to make the detector call the
image clean), T rounds, each step projected onto the eps-ball and the box; and, as a stronger
adaptive baseline, Metzen et al.'s joint step on a weighted sum of both objectives. The
detector is any ``detector_fn(detector_params, x) -> logits f32[B,2]`` of the *image*, e.g. an
``advsal_jax.detection.Detector`` (input transform, such as a learnt saliency mask times the
image, then the binary network), so the gradient flows through the transform.

It lives with the attacks because it is one of them (objective + projection + loop, the
shared argument checks and budgets); it knows nothing of how detectors are built, which keeps
``attacks`` free of a dependency on ``detection`` (which uses the attacks).
"""

import functools
from typing import Optional, Union

import jax
import jax.numpy as jnp

from advsal_jax import _checks
from advsal_jax.attacks import _iterative
from advsal_jax.attacks import _objectives
from advsal_jax.attacks import _projections
from advsal_jax.types import ApplyFn, Params

MODES = ('alternate', 'joint')
CLEAN_CLASS = 1
"""The detector class of clean images: paper 003 labels clean images 1 and adversarial ones 0."""


def _check_detector(detector_fn: ApplyFn, detector_params: Params, x: jax.typing.ArrayLike,
                    clean_class: int, mode: str, detector_weight: jax.typing.ArrayLike):
  """Raises before compilation unless the detector has two logits and the options are valid."""
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}.')
  if not callable(detector_fn):
    raise TypeError(f'detector_fn must be a callable (detector_params, x) -> logits f32[B,2], '
                    f'got {type(detector_fn).__name__}.')
  try:
    k = _checks.num_classes(detector_fn, detector_params, x)
  except ValueError as e:
    raise ValueError(f'detector_fn: {e}') from e
  if k != 2:
    raise ValueError(f'detector_fn must return two logits per image (adversarial, clean), got '
                     f'{k}.')
  _checks.check_count(clean_class, 'clean_class', minimum=0)
  if clean_class > 1:
    raise ValueError(f'clean_class must be 0 or 1, got {clean_class}.')
  _checks.check_scalar(detector_weight, 'detector_weight')
  if _checks.is_concrete(detector_weight) and float(detector_weight) > 1:
    raise ValueError(f'detector_weight must lie in [0, 1], got {float(detector_weight)}.')


def whitebox_detector(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                      labels: jax.typing.ArrayLike, *, detector_fn: ApplyFn,
                      detector_params: Params, targeted: bool = False,
                      bounds: tuple[float, float] = (0.0, 1.0),
                      mask: Optional[jax.typing.ArrayLike] = None,
                      key: Optional[jax.Array] = None, eps: jax.typing.ArrayLike = 8 / 255,
                      step_size: jax.typing.ArrayLike = 2 / 255, num_steps: int = 5,
                      mode: str = 'alternate', detector_weight: jax.typing.ArrayLike = 0.5,
                      clean_class: int = CLEAN_CLASS, norm: str = 'linf',
                      objective: Union[str, _objectives.Objective] = 'cross_entropy',
                      unroll: Union[int, bool] = 1) -> jax.Array:
  """Fools the classifier and its detector at once: ``num_steps`` rounds of projected steps.

  ``mode='alternate'`` (paper 003, eqs. 3-4): each round takes a step up the classifier's
  objective (``objective`` on ``labels``, as ``bim``), then a step up the detector's
  log-probability of ``clean_class`` at the new point; 2 T steps in all. ``mode='joint'``
  (Metzen et al.): each round takes one step up ``(1 - w) * classifier objective + w *
  detector log p(clean)`` with ``w = detector_weight`` (their alpha, 0.5 in paper 003).
  Every step is ``x_t + step_size * dir(grad)`` projected onto the masked eps-ball around
  ``x`` and ``bounds``. The paper writes each step as ``Clip(x + eps sign(grad))`` from the
  clean image; with ``norm='linf'`` and ``step_size >= 2 eps`` the projected step is exactly
  that wherever the gradient is not zero.

  Args:
    apply_fn: the classifier, ``apply_fn(params, x) -> logits f32[B,K]``.
    params: its variables.
    x: f32[B, H, W, C] within ``bounds``.
    labels: i32[B]: true classes (untargeted) or target classes (targeted).
    detector_fn: the detector of images, ``detector_fn(detector_params, x) -> logits
      f32[B,2]`` (e.g. ``detection.Detector``), differentiable in ``x``.
    detector_params: its variables (traced: one compilation serves every detector).
    targeted: whether ``labels`` are targets (of the classifier).
    bounds: (low, high) valid input range.
    mask: optional 0/1 array broadcastable to x; nothing outside it changes.
    key: unused (deterministic); accepted for a uniform attack signature.
    eps: radius of the perturbation ball, scalar or [B], >= 0 (may be traced).
    step_size: per-step size, scalar or [B], >= 0 (may be traced).
    num_steps: static number of rounds T (paper 003: 5).
    mode: 'alternate' or 'joint'.
    detector_weight: the detector's weight w in [0, 1] of a joint step (unused by
      'alternate').
    clean_class: the detector's class of clean images, 0 or 1 (paper 003 and
      ``advsal_jax.detection``: 1).
    norm: 'linf' or 'l2'.
    objective: the classifier's objective: 'cross_entropy', 'cw_margin' or a callable
      (logits, labels) -> f32[B].
    unroll: ``lax.fori_loop`` unroll factor.

  Returns:
    x_adv: x's shape and dtype, within ``bounds`` and within ``eps`` of x in ``norm``.

  Raises:
    ValueError, TypeError: on invalid arguments, naming them (before any compilation).

  References:
    Paper 003: Model-based Saliency for the Detection of Adversarial Examples (ICLR 2020
    submission), Sec. "White-box attack", eqs. 3-4.
    Metzen et al., On Detecting Adversarial Perturbations, arXiv:1702.04267.
  """
  del key
  bounds = _iterative.check_stepped_attack(apply_fn, params, x, labels, bounds=bounds,
                                           mask=mask, eps=eps, step_size=step_size,
                                           num_steps=num_steps, norm=norm)
  batch = jnp.shape(x)[0]
  _check_detector(detector_fn, detector_params, x, clean_class, mode, detector_weight)
  classifier_fn = _objectives.signed_objective(objective, targeted=targeted)
  x = jnp.asarray(x)
  labels = jnp.asarray(labels)
  clean = jnp.full((batch,), clean_class, jnp.int32)
  m = _projections.prepare_mask(mask, x)
  alpha = _projections.per_example(step_size, x)
  project = functools.partial(_projections.project, x=x, norm=norm, eps=eps, bounds=bounds,
                              mask=m)

  def says_clean(logits, targets):  # Ascended: the detector's log p(clean).
    return -_objectives.cross_entropy(logits, targets)

  def classifier_grad(x_adv):
    return _objectives.input_gradient(apply_fn, params, x_adv, labels, classifier_fn)

  def detector_grad(x_adv):
    return jax.grad(lambda xa: jnp.sum(says_clean(detector_fn(detector_params, xa), clean)))(
        x_adv)

  def step(x_adv, grad):
    return project(x_adv + alpha * _projections.steepest_ascent(grad * m, norm))

  def alternate(_, x_adv):
    x_adv = step(x_adv, classifier_grad(x_adv))
    return step(x_adv, detector_grad(x_adv))

  def joint(_, x_adv):
    w = jnp.asarray(detector_weight, x.dtype)
    return step(x_adv, (1 - w) * classifier_grad(x_adv) + w * detector_grad(x_adv))

  body = alternate if mode == 'alternate' else joint
  return jax.lax.fori_loop(0, num_steps, body, x, unroll=unroll)
