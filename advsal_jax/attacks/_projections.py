"""Norm-ball geometry, box clipping, masks and input validation shared by the attacks.

Budgets (``eps``, step sizes, constants) may be Python floats, scalar arrays or per-example
vectors ``[B]``, concrete or traced; ``per_example`` turns each into a ``[B|1, 1, 1, 1]`` array
that broadcasts against an image batch without rank promotion.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax.types import ApplyFn, Params

NORMS = ('linf', 'l2')
_TINY = 1e-12


def per_example(value: jax.typing.ArrayLike, x: jax.Array) -> jax.Array:
  """Reshapes a scalar or per-example budget ``[B]`` to broadcast against ``x``.

  Args:
    value: scalar, [B], or an array of x's rank that broadcasts against it (e.g. a
      per-channel L-inf budget [1, 1, 1, C]).
    x: f32[B, ...].

  Returns:
    ``value`` in x's dtype with shape [1, 1, ...] or [B, 1, ...] (rank of x).
  """
  value = jnp.asarray(value, x.dtype)
  if value.ndim == x.ndim:  # Already broadcastable, e.g. a per-channel budget [1, 1, 1, C].
    return value
  return jnp.reshape(value, (-1,) + (1,) * (x.ndim - 1))


def l2_norm(v: jax.Array) -> jax.Array:
  """Per-example L2 norm of f32[B, ...], kept broadcastable: f32[B, 1, ...]."""
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)), keepdims=True))


def project_linf(delta: jax.Array, eps: jax.typing.ArrayLike) -> jax.Array:
  """Projects perturbations f32[B, ...] onto the L-inf ball of radius ``eps`` (scalar or [B])."""
  e = per_example(eps, delta)
  return jnp.clip(delta, -e, e)


def project_l2(delta: jax.Array, eps: jax.typing.ArrayLike) -> jax.Array:
  """Projects perturbations f32[B, ...] onto the L2 ball of radius ``eps`` (scalar or [B])."""
  norm = l2_norm(delta)
  scale = jnp.minimum(1.0, per_example(eps, delta) / jnp.maximum(norm, _TINY))
  return delta * scale


def project(x_adv: jax.Array, x: jax.Array, *, norm: str, eps: jax.typing.ArrayLike,
            bounds: tuple[float, float], mask: jax.Array) -> jax.Array:
  """Maps a candidate back into {x + delta : delta in mask, ||delta|| <= eps} within bounds.

  Masking, then the ball, then the box: the box clip only shrinks each coordinate of delta
  towards 0 (x itself is inside the box), so the result stays in the ball and in the mask.

  Args:
    x_adv: f32[B, H, W, C] candidate.
    x: f32[B, H, W, C] clean inputs within bounds.
    norm: 'linf' or 'l2'.
    eps: scalar or [B] radius >= 0.
    bounds: (low, high) box.
    mask: f32[B, H, W, C] of 0/1.

  Returns:
    f32[B, H, W, C].
  """
  delta = (x_adv - x) * mask
  delta = project_linf(delta, eps) if norm == 'linf' else project_l2(delta, eps)
  return clip_to_bounds(x + delta, bounds)


def clip_to_bounds(x: jax.Array, bounds: tuple[float, float]) -> jax.Array:
  """Clips ``x`` elementwise into ``[bounds[0], bounds[1]]``."""
  return jnp.clip(x, bounds[0], bounds[1])


def steepest_ascent(grad: jax.Array, norm: str) -> jax.Array:
  """Unit-norm steepest-ascent direction: ``sign(g)`` (L-inf) or ``g / ||g||_2`` (L2)."""
  if norm == 'linf':
    return jnp.sign(grad)
  return grad / jnp.maximum(l2_norm(grad), _TINY)


def sample_ball(key: jax.Array, x: jax.Array, *, norm: str, eps: jax.typing.ArrayLike,
                mask: jax.Array) -> jax.Array:
  """Uniform sample from the (masked) eps-ball around 0, one per example.

  L-inf: independent U(-eps, eps) coordinates. L2: a Gaussian direction scaled to radius
  ``eps * u**(1/d)`` with ``u ~ U(0, 1)`` and ``d`` the number of free (masked-in) coordinates,
  which is uniform in the ball of the masked subspace.

  Returns:
    f32[B, H, W, C], zero outside ``mask``.
  """
  e = per_example(eps, x)
  if norm == 'linf':
    return jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * e * mask
  k_dir, k_rad = jax.random.split(key)
  direction = jax.random.normal(k_dir, x.shape, x.dtype) * mask
  direction = direction / jnp.maximum(l2_norm(direction), _TINY)
  dims = jnp.maximum(jnp.sum(mask, axis=tuple(range(1, x.ndim)), keepdims=True), 1.0)
  u = jax.random.uniform(k_rad, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
  return direction * e * u ** (1.0 / dims)


def _is_concrete(*values) -> bool:
  return not any(isinstance(v, jax.core.Tracer) for v in values)


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
  """Checks a budget is a scalar, a vector [B] or a broadcastable [B|1,H|1,W|1,C|1] array of
  finite values >= 0 (or > 0).

  With ``signed`` the sign is free and the conditions apply to the magnitude.

  Value checks run only on concrete inputs (skipped while tracing).

  Raises:
    ValueError: on a wrong shape, NaN/inf or a negative (non-positive) value.
  """
  shape = np.shape(value)
  full_rank = len(shape) == 4 and shape[0] in (1, batch)  # e.g. per-channel [1, 1, 1, C]
  if shape not in ((), (batch,)) and not full_rank:
    raise ValueError(f'{name} must be a scalar, a per-example vector of shape ({batch},) or an '
                     f'array [B|1, H|1, W|1, C|1] broadcastable to x, got shape {shape}.')
  if _is_concrete(value):
    arr = np.asarray(value, dtype=np.float64)
    if signed:
      arr = np.abs(arr)
    if not np.isfinite(arr).all():
      raise ValueError(f'{name} must be finite, got {arr}.')
    if positive and (arr <= 0).any():
      raise ValueError(f'{name} must be {"nonzero" if signed else "> 0"}, got {value}.')
    if (arr < 0).any():
      raise ValueError(f'{name} must be >= 0, got min {arr.min()}.')


def check_count(value: int, name: str, *, minimum: int = 1):
  """Raises unless ``value`` is a static Python int >= ``minimum`` (loop counts are static)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f'{name} must be a static Python int (loop counts are compiled in), got '
                    f'{type(value).__name__}.')
  if value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value}.')


def num_classes(apply_fn: ApplyFn, params: Params, x: jax.Array) -> int:
  """Number of logits K of ``apply_fn`` on ``x``, from an abstract evaluation (no compilation).

  Raises:
    ValueError: if the logits are not [B, K].
  """
  as_struct = lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a))
  out = jax.eval_shape(apply_fn, jax.tree.map(as_struct, params), as_struct(x))
  if len(out.shape) != 2 or out.shape[0] != np.shape(x)[0]:
    raise ValueError(f'apply_fn(params, x) must return logits [B, K] with B={np.shape(x)[0]}, '
                     f'got shape {out.shape}.')
  return int(out.shape[1])


def check_labels(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                 labels: jax.typing.ArrayLike):
  """Checks labels are integer classes [B] in [0, K) (K from ``num_classes``; concrete only).

  Raises:
    TypeError: for non-integer labels.
    ValueError: on a wrong shape or out-of-range classes.
  """
  shape = np.shape(x)
  if np.shape(labels) != shape[:1]:
    raise ValueError(f'labels must have shape ({shape[0]},) (one class per image), got '
                     f'{np.shape(labels)}.')
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise TypeError(f'labels must be integer class indices, got dtype {jnp.result_type(labels)}.')
  if _is_concrete(labels):
    k = num_classes(apply_fn, params, x)
    arr = np.asarray(labels)
    if arr.size and (arr.min() < 0 or arr.max() >= k):
      raise ValueError(f'labels must lie in [0, {k}) (the model has {k} classes), got values in '
                       f'[{arr.min()}, {arr.max()}].')


def check_inputs(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                 labels: jax.typing.ArrayLike, *, bounds, mask=None) -> tuple[float, float]:
  """Validates the arguments shared by every attack, before anything is compiled.

  Shapes and dtypes are always checked; values (NaN, range, labels < K, 0/1 mask) only for
  concrete inputs, so the checks are free while an attack is being traced under ``jax.jit``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B, H, W, C] within bounds.
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
  shape = np.shape(x)
  if len(shape) != 4:
    raise ValueError(f'x must be a batch of images [B, H, W, C], got shape {shape}.')
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise TypeError(f'x must be floating point, got dtype {jnp.result_type(x)}.')
  if _is_concrete(x):
    arr = np.asarray(x)
    if not np.isfinite(arr).all():
      raise ValueError('x contains NaN or inf.')
    if arr.size and (arr.min() < lo - 1e-6 or arr.max() > hi + 1e-6):
      raise ValueError(f'x must lie within bounds [{lo}, {hi}], got values in '
                       f'[{arr.min():.4g}, {arr.max():.4g}].')
  check_labels(apply_fn, params, x, labels)
  if mask is not None:
    try:
      ok = np.broadcast_shapes(np.shape(mask), shape) == shape
    except ValueError:
      ok = False
    if not ok:
      raise ValueError(f'mask must broadcast to x.shape {shape}, got shape {np.shape(mask)}.')
    if _is_concrete(mask) and not np.isin(np.asarray(mask), (0, 1)).all():
      raise ValueError('mask must contain only 0 and 1.')
  return lo, hi


def prepare_mask(mask: Optional[jax.typing.ArrayLike], x: jax.Array) -> jax.Array:
  """The 0/1 mask broadcast to x's shape and dtype (all ones when ``mask`` is None)."""
  if mask is None:
    return jnp.ones_like(x)
  return jnp.broadcast_to(jnp.asarray(mask, x.dtype), x.shape)
