"""Argument checks of the saliency methods and the attacks, run before any compilation.

Shapes and dtypes are always checked; values (NaN/inf, the pixel range, label ranges,
budgets) only when they are concrete: a value traced under ``jax.jit`` cannot be inspected,
so under jit only the shape and dtype checks run. The number of classes comes from
``jax.eval_shape`` (a trace, no compilation). Every error names the argument, what was
expected and what came.

Images must be floating point: integer images (e.g. uint8 in [0, 255]) raise a TypeError
rather than being rescaled silently. Any float dtype is accepted and converted by JAX on
entry; with JAX's default (x64 disabled) float64 images are computed in float32, with the
same result as float32 images.
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


def check_key(key: Any, *, caller: str):
  """Checks ``key`` is one typed PRNG key (shape ``()``) from ``jax.random.key``.

  Raises:
    ValueError: ``key`` is None or not a single key.
    TypeError: ``key`` is not a typed key (e.g. a legacy uint32 ``PRNGKey``).
  """
  if key is None:
    raise ValueError(f'{caller} draws random numbers: pass key=jax.random.key(seed), got None.')
  if not (hasattr(key, 'dtype') and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
    raise TypeError(f'key must be a typed PRNG key from jax.random.key, got '
                    f'{getattr(key, "dtype", type(key).__name__)}; wrap legacy uint32 keys '
                    'with jax.random.wrap_key_data.')
  if key.shape != ():
    raise ValueError(f'key must be a single key (shape ()), got shape {key.shape}.')


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


def check_images(x: jax.typing.ArrayLike, *, name: str = 'x'):
  """Checks ``x`` is a non-empty floating-point batch of images [B,H,W,C].

  Raises:
    ValueError: ``x`` is not of rank 4 or has an empty axis (e.g. a batch of zero).
    TypeError: ``x`` is not floating point.
  """
  shape = tuple(np.shape(x))
  if len(shape) != 4:
    raise ValueError(f'{name} must be a batch of images f32[B,H,W,C], got shape {shape} '
                     f'(rank {len(shape)}); add a batch axis for a single image.')
  if 0 in shape:
    raise ValueError(f'{name} must hold at least one image of at least one pixel and channel '
                     f'(B, H, W, C >= 1), got shape {shape}.')
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise TypeError(f'{name} must be floating point, got dtype {jnp.result_type(x)}; divide '
                    'uint8 images by 255.')


def check_finite(x: jax.typing.ArrayLike, *, name: str):
  """Checks that concrete ``x`` has no NaN or inf; a no-op while tracing.

  Raises:
    ValueError: NaN or inf values.
  """
  if not is_concrete(x):
    return
  finite = np.isfinite(np.asarray(x))
  if not finite.all():
    raise ValueError(f'{name} must be finite, got {finite.size - finite.sum()} NaN or inf '
                     'values.')


def check_pixels(x: jax.typing.ArrayLike, *, bounds: tuple[float, float] = (0.0, 1.0),
                 name: str = 'x'):
  """Checks that concrete ``x`` is finite and within ``bounds`` (1e-6 slack); no-op if traced.

  Raises:
    ValueError: NaN/inf or values outside ``bounds``.
  """
  if not is_concrete(x):
    return
  check_finite(x, name=name)
  arr = np.asarray(x)
  lo, hi = bounds
  if arr.size and (arr.min() < lo - 1e-6 or arr.max() > hi + 1e-6):
    raise ValueError(f'{name} must lie within bounds [{lo}, {hi}], got values in '
                     f'[{arr.min():.4g}, {arr.max():.4g}].')


def check_scalar(value: Any, name: str, *, positive: bool = False):
  """Checks a scalar hyper-parameter: finite and >= 0 (> 0 with ``positive``) when concrete.

  Raises:
    TypeError: a value that is not a real number (bools are refused).
    ValueError: a non-scalar, NaN/inf or a negative (non-positive) value.
  """
  try:
    dtype = jnp.result_type(value)
  except TypeError:
    dtype = None
  if isinstance(value, bool) or dtype is None or not (
      jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise TypeError(f'{name} must be a real number, got {value!r}.')
  if np.shape(value) != ():
    raise ValueError(f'{name} must be a scalar, got shape {np.shape(value)}.')
  if is_concrete(value):
    v = float(value)
    if not np.isfinite(v) or v < 0 or (positive and v == 0):
      raise ValueError(f'{name} must be finite and {"> 0" if positive else ">= 0"}, got {v}.')


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
  """``check_images(x)``, ``check_pixels(x)`` (in [0, 1]) then ``check_labels(...)``.

  Returns:
    The number of classes K.

  Raises:
    ValueError, TypeError: as ``check_images``, ``check_pixels`` and ``check_labels``.
  """
  check_images(x)
  check_pixels(x)
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
  check_pixels(x, bounds=(lo, hi))
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
