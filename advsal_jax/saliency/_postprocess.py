"""Turning attributions into one-channel heatmaps and normalising them per example."""

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import _checks

REDUCTIONS = ('abs_sum', 'abs_max', 'sum', 'max_abs_channel')
NORMALIZATIONS = ('minmax', 'maxabs', 'percentile', 'energy')


def _check_maps(maps: jax.typing.ArrayLike, name: str, *, min_ndim: int,
                max_ndim: int | None = None) -> jax.Array:
  """Validates batched maps (rank, non-empty, real dtype, finite when concrete); returns f32.

  Integer and bool maps are accepted and converted to float32, as the metrics do.
  """
  shape = np.shape(maps)
  if len(shape) < min_ndim or (max_ndim is not None and len(shape) > max_ndim):
    want = 'f32[B,H,W,C]' if max_ndim == min_ndim == 4 else '[B, ...] with a batch axis'
    raise ValueError(f'{name} must be {want}, got shape {shape}.')
  if 0 in shape:
    raise ValueError(f'{name} must not be empty, got shape {shape}.')
  dtype = jnp.result_type(maps)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
          or dtype == jnp.bool_):
    raise TypeError(f'{name} must have a real dtype, got {dtype}.')
  _checks.check_finite(maps, name=name)
  return jnp.asarray(maps, jnp.result_type(dtype, jnp.float32))


def to_heatmap(attr: jax.typing.ArrayLike, reduce: str = 'abs_sum') -> jax.Array:
  """Reduces the channel axis of an attribution to one heatmap per example.

  Args:
    attr: f32[B,H,W,C] attribution (any method of this package; C may be 1); finite (checked
      when concrete). Integer and bool attributions are converted to float32.
    reduce: 'abs_sum' (``sum_c |a_c|``), 'abs_max' (``max_c |a_c|``), 'sum' (``sum_c a_c``)
      or 'max_abs_channel' (the signed value of the channel with the largest ``|a_c|``).

  Returns:
    f32[B,H,W].

  Raises:
    ValueError: unknown ``reduce``; ``attr`` not of rank 4, empty, or with NaN/inf.
    TypeError: ``attr`` of a non-real dtype.
  """
  if reduce not in REDUCTIONS:
    raise ValueError(f'reduce must be one of {REDUCTIONS}, got {reduce!r}.')
  attr = _check_maps(attr, 'attr', min_ndim=4, max_ndim=4)
  if reduce == 'abs_sum':
    return jnp.abs(attr).sum(axis=-1)
  if reduce == 'abs_max':
    return jnp.abs(attr).max(axis=-1)
  if reduce == 'sum':
    return attr.sum(axis=-1)
  idx = jnp.argmax(jnp.abs(attr), axis=-1)
  return jnp.take_along_axis(attr, idx[..., None], axis=-1)[..., 0]


def normalize(maps: jax.typing.ArrayLike, mode: str = 'minmax', *,
              percentile: float = 99.0) -> jax.Array:
  """Normalises each example's map (all axes but the first) independently.

  Args:
    maps: f32[B, ...] maps, e.g. [B,H,W] heatmaps or [B,H,W,C] attributions; finite
      (checked when concrete). Integer and bool maps are converted to float32.
    mode: 'minmax' (``(m - min) / (max - min)``, in [0, 1]), 'maxabs' (``m / max|m|``, in
      [-1, 1]), 'percentile' (clip to the ``100 - percentile`` and ``percentile``
      percentiles, then min-max, in [0, 1]; robust to outliers) or 'energy'
      (``m / sum|m|``, as Gu & Tresp). A constant (or all-zero) map becomes all zeros.
    percentile: upper clipping percentile in (50, 100] for 'percentile'.

  Returns:
    f32 array of ``maps``'s shape.

  Raises:
    ValueError: unknown mode, a map without a batch axis, empty maps, NaN/inf, percentile
      out of range.
    TypeError: maps of a non-real dtype.
  """
  if mode not in NORMALIZATIONS:
    raise ValueError(f'mode must be one of {NORMALIZATIONS}, got {mode!r}.')
  if not 50.0 < percentile <= 100.0:
    raise ValueError(f'percentile must lie in (50, 100], got {percentile}.')
  maps = _check_maps(maps, 'maps', min_ndim=2)
  flat = maps.reshape(maps.shape[0], -1)

  def safe_div(num, den):
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)

  if mode == 'minmax':
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    out = safe_div(flat - lo, hi - lo)
  elif mode == 'maxabs':
    out = safe_div(flat, jnp.abs(flat).max(axis=1, keepdims=True))
  elif mode == 'percentile':
    hi = jnp.percentile(flat, percentile, axis=1, keepdims=True)
    lo = jnp.percentile(flat, 100.0 - percentile, axis=1, keepdims=True)
    out = safe_div(jnp.clip(flat, lo, hi) - lo, hi - lo)
  else:
    out = safe_div(flat, jnp.abs(flat).sum(axis=1, keepdims=True))
  return out.reshape(maps.shape)
