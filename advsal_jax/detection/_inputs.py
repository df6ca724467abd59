"""What a detector sees: paper 003's four detector inputs, one small function each.

* SMD (saliency map defense): the saliency map of the image for its predicted class;
* SPD (salient pixel defense): the salient pixels ``m * x``;
* ID (image defense, Gong et al.): the image itself;
* JSD (Jacobian saliency defense, Zhang et al.): the image concatenated with the gradient of
  the predicted class's logit (paper 003 differentiates the logit, not the softmax, which
  underflows).

SMD and SPD take any method of ``saliency.REGISTRY`` (``method``): the paper's learnt mask
('learnt_saliency', whose ``apply_fn``/``params`` are a masking model's, e.g. from
``saliency.load_masker``) or a gradient method of the classifier ('gradient', ...). The class
explained is always the *predicted* one, never the label (no label leak, as in the paper);
the prediction is an argmax, so no gradient flows through it. Everything else is
differentiable in ``x``, so a white-box attack can follow the transform.
"""

from typing import Any

import flax.errors
import jax
import jax.numpy as jnp

from advsal_jax import _checks
from advsal_jax import saliency
from advsal_jax.types import ApplyFn, Params

INPUT_KINDS = ('smd', 'spd', 'id', 'jsd')


def _classify(method: str, apply_fn: ApplyFn) -> ApplyFn:
  """The classifier behind ``apply_fn``: a masker's ``classify`` method for masker methods."""
  if method in saliency.MASKER_METHODS:
    return lambda params, x: apply_fn(params, x, method='classify')
  return apply_fn


def predicted_class(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike, *,
                    method: str = 'learnt_saliency') -> jax.Array:
  """The classifier's predicted class of each image (argmax of its logits).

  Args:
    apply_fn: for ``method`` in ``saliency.MASKER_METHODS`` a masking model's apply (its
      ``classify`` method gives the logits), else the classifier's ``apply_fn(params, x)``.
    params: their variables.
    x: f32[B,H,W,C] images in [0, 1].
    method: the saliency method the prediction will be explained with.

  Returns:
    i32[B] in [0, K).

  Raises:
    ValueError: unknown ``method``; ``x`` malformed, non-finite or outside [0, 1] (when
      concrete); ``apply_fn``/``params`` that do not give logits [B, K] (e.g. a classifier
      where a masker is needed).
    TypeError: non-float ``x``.
  """
  if method not in saliency.REGISTRY:
    raise ValueError(f'method must be a saliency method of {sorted(saliency.REGISTRY)}, got '
                     f'{method!r}.')
  _checks.check_images(x)
  _checks.check_pixels(x)
  classify = _classify(method, apply_fn)
  try:
    _checks.num_classes(classify, params, x)
  except (AttributeError, TypeError, KeyError, ValueError, flax.errors.FlaxError) as e:
    what = ('a masking model (saliency.load_masker)' if method in saliency.MASKER_METHODS
            else 'a classifier apply_fn(params, x) -> logits f32[B,K]')
    raise ValueError(f'apply_fn/params must be {what} for method {method!r}; they failed as '
                     f'one ({type(e).__name__}: {e}).') from e
  return jnp.argmax(classify(params, jnp.asarray(x)), axis=-1).astype(jnp.int32)


def saliency_map_input(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike, *,
                       method: str = 'learnt_saliency', **explain_kwargs: Any) -> jax.Array:
  """SMD's input: ``saliency.explain(method, ...)`` of each image for its predicted class.

  Args:
    apply_fn: a masking model's apply for 'learnt_saliency', else the classifier's.
    params: their variables.
    x: f32[B,H,W,C] images in [0, 1].
    method: a key of ``saliency.REGISTRY``.
    **explain_kwargs: passed to ``saliency.explain`` (``key``, ``layer``, hyper-parameters).

  Returns:
    The map as ``saliency.explain`` returns it: f32[B,H,W,1] for masks and CAMs (in [0, 1]
    for the learnt mask), f32[B,H,W,C] signed attributions for gradient methods.

  Raises:
    ValueError, TypeError: as ``predicted_class`` and ``saliency.explain``.
  """
  target = predicted_class(apply_fn, params, x, method=method)
  return saliency.explain(method, apply_fn, params, x, target, **explain_kwargs)


def salient_pixels_input(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike, *,
                         method: str = 'learnt_saliency', **explain_kwargs: Any) -> jax.Array:
  """SPD's input: the salient pixels ``m * x`` (elementwise; a one-channel map broadcasts).

  Args:
    apply_fn, params, x, method, explain_kwargs: as ``saliency_map_input``.

  Returns:
    f32[B,H,W,C]: in [0, 1] for the learnt mask; for 'gradient' it is gradient x input.

  Raises:
    ValueError, TypeError: as ``saliency_map_input``.
  """
  m = saliency_map_input(apply_fn, params, x, method=method, **explain_kwargs)
  return m * jnp.asarray(x)


def image_input(x: jax.typing.ArrayLike) -> jax.Array:
  """ID's input: the image itself (checked, as a float32 array).

  Args:
    x: f32[B,H,W,C] images in [0, 1].

  Returns:
    f32[B,H,W,C] equal to ``x``.

  Raises:
    ValueError: ``x`` malformed, non-finite or outside [0, 1] (when concrete).
    TypeError: non-float ``x``.
  """
  _checks.check_images(x)
  _checks.check_pixels(x)
  return jnp.asarray(x, jnp.float32)


def jacobian_input(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike) -> jax.Array:
  """JSD's input: the image and the gradient of its predicted class's logit, concatenated.

  Args:
    apply_fn: the classifier, ``apply_fn(params, x) -> logits f32[B,K]``.
    params: its variables.
    x: f32[B,H,W,C] images in [0, 1].

  Returns:
    f32[B,H,W,2C]: channels ``[:C]`` are ``x``, ``[C:]`` are ``d z_pred / d x`` (signed).

  Raises:
    ValueError, TypeError: as ``predicted_class``.

  References:
    Zhang et al., Detecting adversarial perturbations with saliency, 2018 (as cited and
    adapted by paper 003).
  """
  target = predicted_class(apply_fn, params, x, method='gradient')
  grad = saliency.gradient(apply_fn, params, x, target)
  return jnp.concatenate([jnp.asarray(x, grad.dtype), grad], axis=-1)


def detector_input(kind: str, apply_fn: ApplyFn | None, params: Params,
                   x: jax.typing.ArrayLike, *, method: str = 'learnt_saliency',
                   **explain_kwargs: Any) -> jax.Array:
  """The detector input ``kind`` of ``x``: one of the four functions above by name.

  Args:
    kind: 'smd', 'spd', 'id' or 'jsd'.
    apply_fn: what the transform explains with: for 'smd'/'spd' as ``saliency_map_input``;
      for 'jsd' the classifier; unused (may be None) for 'id'.
    params: its variables (unused for 'id').
    x: f32[B,H,W,C] images in [0, 1].
    method: the saliency method of 'smd' and 'spd' (unused by 'id' and 'jsd').
    **explain_kwargs: passed to ``saliency.explain`` by 'smd' and 'spd'.

  Returns:
    f32[B,H,W,C'] with C' = 1 or C ('smd'), C ('spd', 'id') or 2C ('jsd').

  Raises:
    ValueError: unknown ``kind``; keyword arguments for a kind that takes none; as the
      chosen function.
  """
  if kind not in INPUT_KINDS:
    raise ValueError(f'kind must be one of {INPUT_KINDS}, got {kind!r}.')
  if kind in ('smd', 'spd'):
    fn = saliency_map_input if kind == 'smd' else salient_pixels_input
    return fn(apply_fn, params, x, method=method, **explain_kwargs)
  if explain_kwargs:
    raise ValueError(f'kind {kind!r} explains nothing with a saliency method; got keyword '
                     f'arguments {sorted(explain_kwargs)}.')
  if kind == 'id':
    return image_input(x)
  return jacobian_input(apply_fn, params, x)
