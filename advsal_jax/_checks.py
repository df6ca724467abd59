"""Argument checks of the saliency methods and the attacks, run before any compilation.

Shapes and dtypes are always checked; values only when they are concrete (a value traced
under ``jax.jit`` cannot be inspected, so the checks cost nothing while tracing). The number
of classes comes from ``jax.eval_shape`` (a trace, no compilation). Every error names the
argument, what was expected and what came.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax.types import ApplyFn, Params

NORMS = ('linf', 'l2')


def is_concrete(*values: Any) -> bool:
  """Whether none of ``values`` is a tracer (so their values can be inspected)."""
  return not any(isinstance(v, jax.core.Tracer) for v in values)


def check_count(value: Any, name: str, *, minimum: int = 1):
  """Checks a static count (a loop length or chunk size compiled into the program).

  Raises:
    TypeError: ``value`` is not a Python (or numpy) int; bools are refused.
    ValueError: ``value < minimum``.
  """
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f'{name} must be a Python int (it is static under jax.jit), got '
                    f'{type(value).__name__} {value!r}.')
  if value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value}.')


def num_classes(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike) -> int:
  """Number of logits K of ``apply_fn`` on ``x``, from an abstract evaluation.

  Raises:
    ValueError: ``apply_fn(params, x)`` does not return logits [B, K].
  """
  batch = np.shape(x)[0]
  out = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)))
  if not hasattr(out, 'shape') or len(out.shape) != 2 or out.shape[0] != batch:
    raise ValueError(f'apply_fn(params, x) must return logits f32[B,K] with B={batch}, got '
                     f'{getattr(out, "shape", type(out))}.')
  return int(out.shape[1])


def check_images(x: jax.typing.ArrayLike):
  """Checks ``x`` is a floating-point batch of images [B,H,W,C].

  Raises:
    ValueError: ``x`` is not of rank 4.
    TypeError: ``x`` is not floating point.
  """
  shape = tuple(np.shape(x))
  if len(shape) != 4:
    raise ValueError(f'x must be a batch of images f32[B,H,W,C], got shape {shape} '
                     f'(rank {len(shape)}); add a batch axis for a single image.')
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise TypeError(f'x must be floating point, got dtype {jnp.result_type(x)}.')


def check_labels(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                 labels: jax.typing.ArrayLike, *, name: str = 'labels') -> int:
  """Checks one class index per image of ``x`` and returns the number of classes K.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: the model variables.
    x: f32[B,H,W,C] images.
    labels: i32[B] class indices in [0, K) (range checked when concrete).
    name: the argument's name in error messages ('labels', 'target', ...).

  Returns:
    K.

  Raises:
    ValueError: ``labels`` not of shape [B], out of range, or logits that are not [B, K].
    TypeError: non-integer ``labels``.
  """
  batch = np.shape(x)[0]
  shape = tuple(np.shape(labels))
  if shape != (batch,):
    raise ValueError(f'{name} must be i32[B] with B={batch} (one class per image), got '
                     f'shape {shape}.')
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise TypeError(f'{name} must be integer class indices, got dtype '
                    f'{jnp.result_type(labels)}.')
  k = num_classes(apply_fn, params, x)
  if is_concrete(labels):
    arr = np.asarray(labels)
    if arr.size and (arr.min() < 0 or arr.max() >= k):
      raise ValueError(f'{name} must lie in [0, {k}) (the model has {k} classes), got values '
                       f'in [{arr.min()}, {arr.max()}].')
  return k


def check_classifier_inputs(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                            labels: jax.typing.ArrayLike, *, name: str = 'labels') -> int:
  """``check_images(x)`` then ``check_labels(...)``; returns the number of classes K.

  Raises:
    ValueError, TypeError: as ``check_images`` and ``check_labels``.
  """
  check_images(x)
  return check_labels(apply_fn, params, x, labels, name=name)


def check_norm(norm: str):
  """Raises ValueError unless ``norm`` is 'linf' or 'l2'."""
  if norm not in NORMS:
    raise ValueError(f'norm must be one of {NORMS}, got {norm!r}.')


def check_bounds(bounds) -> tuple[float, float]:
  """Returns ``bounds`` as two Python floats ``low < high`` or raises.

  Raises:
    TypeError: if bounds is not a pair of concrete numbers (they are static).
    ValueError: unless both are finite and low < high.
  """
  try:
    lo, hi = (float(b) for b in bounds)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError) as e:
    raise TypeError(f'bounds must be a pair of concrete numbers (low, high), got {bounds!r}.'
                    ) from e
  if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
    raise ValueError(f'bounds must be finite with low < high, got ({lo}, {hi}).')
  return lo, hi


def check_budget(value: jax.typing.ArrayLike, name: str, *, batch: int, positive: bool = False,
                 signed: bool = False):
  """Checks a budget: a scalar, a vector [B] or an array [B|1,H|1,W|1,C|1] of finite values.

  Values must be >= 0 (> 0 with ``positive``); with ``signed`` the sign is free and the
  conditions apply to the magnitude.

  Raises:
    ValueError: on a wrong shape, NaN/inf or a negative (non-positive) value.
  """
  shape = np.shape(value)
  full_rank = len(shape) == 4 and shape[0] in (1, batch)  # e.g. per-channel [1, 1, 1, C]
  if shape not in ((), (batch,)) and not full_rank:
    raise ValueError(f'{name} must be a scalar, a per-example vector of shape ({batch},) or an '
                     f'array [B|1, H|1, W|1, C|1] broadcastable to x, got shape {shape}.')
  if is_concrete(value):
    arr = np.asarray(value, dtype=np.float64)
    if signed:
      arr = np.abs(arr)
    if not np.isfinite(arr).all():
      raise ValueError(f'{name} must be finite, got {arr}.')
    if positive and (arr <= 0).any():
      raise ValueError(f'{name} must be {"nonzero" if signed else "> 0"}, got {value}.')
    if (arr < 0).any():
      raise ValueError(f'{name} must be >= 0, got min {arr.min()}.')


def check_attack_inputs(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                        labels: jax.typing.ArrayLike, *, bounds,
                        mask=None) -> tuple[float, float]:
  """Validates the arguments shared by every attack, before anything is compiled.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B,H,W,C] within bounds.
    labels: i32[B] in [0, K).
    bounds: (low, high).
    mask: None or an array broadcastable to x with values in {0, 1}.

  Returns:
    ``bounds`` as two floats.

  Raises:
    TypeError: for non-float images, non-integer labels or non-numeric bounds.
    ValueError: naming the offending argument, for wrong shapes or values.
  """
  lo, hi = check_bounds(bounds)
  check_images(x)
  if is_concrete(x):
    arr = np.asarray(x)
    if not np.isfinite(arr).all():
      raise ValueError('x contains NaN or inf.')
    if arr.size and (arr.min() < lo - 1e-6 or arr.max() > hi + 1e-6):
      raise ValueError(f'x must lie within bounds [{lo}, {hi}], got values in '
                       f'[{arr.min():.4g}, {arr.max():.4g}].')
  check_labels(apply_fn, params, x, labels, name='labels')
  if mask is not None:
    shape = np.shape(x)
    try:
      ok = np.broadcast_shapes(np.shape(mask), shape) == shape
    except ValueError:
      ok = False
    if not ok:
      raise ValueError(f'mask must broadcast to x.shape {shape}, got shape {np.shape(mask)}.')
    if is_concrete(mask) and not np.isin(np.asarray(mask), (0, 1)).all():
      raise ValueError('mask must contain only 0 and 1.')
  return lo, hi
