"""Per-example outcome of an attack: success, adversarial prediction and perturbation norms."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import _checks
from advsal_jax import metrics
from advsal_jax.types import ApplyFn, Params


class AttackEvaluation(NamedTuple):
  """Per-example results (all arrays of length B).

  Attributes:
    success: bool[B]: adversarial prediction != label (untargeted) or == label (targeted).
    clean_pred: i32[B]: arg-max class on the clean input (for "correctly classified" counts).
    adv_pred: i32[B]: arg-max class on the adversarial input.
    adv_confidence: f32[B] in [0, 1]: softmax probability of ``adv_pred``.
    l0: i32[B]: number of input values (of H*W*C) that differ at all.
    l2: f32[B]: L2 norm of x_adv - x over all H*W*C values.
    linf: f32[B]: largest absolute change.
  """
  success: jax.Array
  clean_pred: jax.Array
  adv_pred: jax.Array
  adv_confidence: jax.Array
  l0: jax.Array
  l2: jax.Array
  linf: jax.Array


def evaluate_attack(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                    x_adv: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                    targeted: bool) -> AttackEvaluation:
  """Evaluates adversarial examples ``x_adv`` of clean inputs ``x``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B, H, W, C] clean inputs; finite (checked when concrete).
    x_adv: f32[B, H, W, C] adversarial inputs; finite (checked when concrete).
    labels: i32[B]: true classes (untargeted) or target classes (targeted).
    targeted: whether ``labels`` are targets.

  Returns:
    An ``AttackEvaluation`` of per-example arrays.

  Raises:
    ValueError: if x and x_adv differ in shape, are not non-empty [B,H,W,C] batches or hold
      NaN/inf, or on invalid labels.
    TypeError: for non-float images or non-integer labels.
  """
  _checks.check_images(x)
  if np.shape(x) != np.shape(x_adv):
    raise ValueError(f'x_adv must have the shape of x {np.shape(x)}, got {np.shape(x_adv)}.')
  _checks.check_images(x_adv, name='x_adv')
  _checks.check_finite(x, name='x')
  _checks.check_finite(x_adv, name='x_adv')
  _checks.check_labels(apply_fn, params, x, labels, name='labels')
  x = jnp.asarray(x)
  x_adv = jnp.asarray(x_adv)
  labels = jnp.asarray(labels)
  logits = apply_fn(params, jnp.concatenate([x, x_adv]))
  clean_logits, adv_logits = jnp.split(logits, 2)
  adv_pred = jnp.argmax(adv_logits, axis=-1)
  success = (adv_pred == labels) if targeted else (adv_pred != labels)
  delta = (x_adv - x).reshape(x.shape[0], -1)
  return AttackEvaluation(
      success=success,
      clean_pred=jnp.argmax(clean_logits, axis=-1),
      adv_pred=adv_pred,
      adv_confidence=jnp.max(jax.nn.softmax(adv_logits, axis=-1), axis=-1),
      l0=jnp.sum(delta != 0, axis=1),
      l2=metrics.l2_norm(delta),
      linf=metrics.linf_norm(delta),
  )
