"""Correlation and distance between pairs of saliency maps, batched over a leading axis.

Every function takes two maps of the same shape ``[B, ...]`` (``[B,H,W]`` heatmaps or
``[B,H,W,C]`` attributions), flattens everything after the batch axis and returns ``f32[B]``.

Undefined values are NaN, as in scipy: a correlation with a constant map (including an all-zero
map, e.g. a Grad-CAM map that the ReLU zeroed out) has zero variance and is NaN, like
``scipy.stats.spearmanr`` / ``pearsonr``; the cosine with an all-zero map is NaN. Average
undefined pairs out with ``np.nanmean`` and report how many there were. Concrete inputs are
checked for NaN/inf before compilation; under ``jax.jit`` a NaN input gives a NaN result.

References:
  Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018, arXiv:1810.03292 (Spearman rank
    correlation with and without absolute values).
  Model-based Saliency for the Detection of Adversarial Examples, ICLR 2020 submission (study
    003): L2 distance between the saliency maps of natural and adversarial images.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import buffer_callback
from jax.typing import ArrayLike

from advsal_jax.metrics import _checks

L2_NORMALIZATIONS = (None, 'minmax', 'l2')


def _flatten(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


def _pearson_rows(x: jax.Array, y: jax.Array) -> jax.Array:
  """Pearson correlation of the rows of two f32[B,N] arrays; NaN where a row is constant."""
  xc = x - jnp.mean(x, axis=1, keepdims=True)
  yc = y - jnp.mean(y, axis=1, keepdims=True)
  # Rescale before the products so the f32 sums stay O(N) whatever the scale of the maps.
  xc = xc / jnp.maximum(jnp.max(jnp.abs(xc), axis=1, keepdims=True), jnp.finfo(jnp.float32).tiny)
  yc = yc / jnp.maximum(jnp.max(jnp.abs(yc), axis=1, keepdims=True), jnp.finfo(jnp.float32).tiny)
  sxy = jnp.sum(xc * yc, axis=1)
  sxx = jnp.sum(xc * xc, axis=1)
  syy = jnp.sum(yc * yc, axis=1)
  # A constant row is detected exactly (max == min): its centred values may be rounding noise.
  constant = (jnp.max(x, axis=1) == jnp.min(x, axis=1)) | (jnp.max(y, axis=1) == jnp.min(y, axis=1))
  r = sxy / jnp.sqrt(jnp.where(constant, 1.0, sxx * syy))
  return jnp.where(constant, jnp.nan, jnp.clip(r, -1.0, 1.0))


def _sort_keys(x: jax.Array) -> jax.Array:
  """u32 keys with the order of the f32 values (-0.0 and 0.0 tie, like in scipy)."""
  bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x), jnp.uint32)
  return jnp.where((bits >> 31) == 1, ~bits, bits | jnp.uint32(0x80000000))


def _sort_rows_in_place(ctx, out, x):
  """``buffer_callback`` body: sorts the rows of the (aliased) output buffer with NumPy."""
  del ctx, x  # ``out`` aliases ``x``.
  np.asarray(out).sort(axis=-1)


def _host_sort_rows(x: jax.Array) -> jax.Array:
  """``np.sort(x, axis=-1)`` run by the host on XLA's own buffer (no copies in or out)."""
  sort = buffer_callback.buffer_callback(
      _sort_rows_in_place, jax.ShapeDtypeStruct(x.shape, x.dtype),
      input_output_aliases={0: 0}, vmap_method='expand_dims')
  return sort(x)


def _sort_rows(x: jax.Array) -> jax.Array:
  """Sorts each row of u32[B, N], ascending.

  On CPU NumPy sorts the rows in place in XLA's buffer: XLA:CPU sorts through a generic
  comparator, far slower than NumPy's vectorised sort of u32, and a ``pure_callback`` would
  copy the rows in and out. Other backends use XLA's own sort. The result is the same.
  """
  return jax.lax.platform_dependent(x, cpu=_host_sort_rows,
                                    default=lambda x: jnp.sort(x, axis=-1))


def _argsort_keys(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Stable argsort of u32[B, N] keys; returns (sorted keys, permutation i32[B, N]).

  One u32 operand sorts several times faster than (f32 value, index) pairs, so this is an LSD
  radix sort whose passes are single-operand sorts of packed words: (next digit of the key,
  position after the previous pass). With N = 1024, 10 bits hold the position, and a 22-bit
  pass (the low digits) then a 10-bit pass (the high ones) cover the key.
  """
  n = keys.shape[1]
  idx_bits = max(1, (n - 1).bit_length())
  digit_bits = 32 - idx_bits
  iota = jax.lax.broadcasted_iota(jnp.uint32, keys.shape, 1)
  perm = None
  for shift in range(0, 32, digit_bits):
    digit = (keys >> shift) & jnp.uint32((1 << min(digit_bits, 32 - shift)) - 1)
    packed = _sort_rows((digit << idx_bits) | iota)
    pos = (packed & jnp.uint32((1 << idx_bits) - 1)).astype(jnp.int32)
    # The first pass's permutation is ``pos`` itself (no gather of the identity).
    perm = pos if perm is None else jnp.take_along_axis(perm, pos, axis=1)
    keys = jnp.take_along_axis(keys, pos, axis=1)
  return keys, perm


def _ranks_in_sorted_order(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Average ranks of the rows of f32[B, N], in sorted order, and the sorting permutation.

  Row ``i`` of ``scipy.stats.rankdata(x, method='average', axis=1)`` is ``r[i]`` put back in
  input order, ``rankdata[i, perm[i, j]] = r[i, j]``; ties share their mean rank.

  Args:
    x: f32[B, N], finite, N < 2**23.

  Returns:
    ``(r, perm)``: f32[B, N] ranks in [1, N] (half-integers for ties, exact in f32) of the
    sorted values, and the i32[B, N] stable argsort of each row.
  """
  keys, perm = _argsort_keys(_sort_keys(x))
  return _tie_ranks(keys), perm


def _tie_ranks_xla(keys: jax.Array) -> jax.Array:
  """Average ranks of sorted u32[B, N] rows: run starts by ``cummax``, run ends by ``cummin``."""
  n = keys.shape[-1]
  iota = jax.lax.broadcasted_iota(jnp.int32, keys.shape, keys.ndim - 1)
  change = keys[..., 1:] != keys[..., :-1]
  edge = jnp.ones((*keys.shape[:-1], 1), bool)
  first = jax.lax.cummax(jnp.where(jnp.concatenate([edge, change], axis=-1), iota, 0),
                         axis=keys.ndim - 1)
  last = jax.lax.cummin(jnp.where(jnp.concatenate([change, edge], axis=-1), iota, n - 1),
                        axis=keys.ndim - 1, reverse=True)
  return (first + last).astype(jnp.float32) * 0.5 + 1.0


def _tie_ranks_in_place(ctx, out, keys):
  """``buffer_callback`` body: ``_tie_ranks_xla`` in NumPy, scanning only rows with ties."""
  del ctx
  keys = np.asarray(keys)
  n = keys.shape[-1]
  keys = keys.reshape(-1, n)
  ranks = np.asarray(out).reshape(-1, n)
  ranks[...] = np.arange(1, n + 1, dtype=np.float32)
  tied = keys[:, 1:] == keys[:, :-1]
  rows = np.flatnonzero(tied.any(axis=1))
  if rows.size:
    change = ~tied[rows]
    edge = np.ones((rows.size, 1), bool)
    iota = np.arange(n)
    first = np.maximum.accumulate(np.where(np.concatenate([edge, change], 1), iota, 0), axis=1)
    last = np.minimum.accumulate(
        np.where(np.concatenate([change, edge], 1), iota, n - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks[rows] = (first + last).astype(np.float32) * 0.5 + 1.0


def _tie_ranks(keys: jax.Array) -> jax.Array:
  """Average ranks in [1, N] of the sorted rows of u32[B, N] (ties share their mean rank).

  On CPU the host computes them (``_tie_ranks_in_place``), running the scans only on the
  rows that have ties, where XLA:CPU would run ``cummax``/``cummin`` over every row. Other
  backends use ``_tie_ranks_xla``. The result is the same.
  """
  host = buffer_callback.buffer_callback(
      _tie_ranks_in_place, jax.ShapeDtypeStruct(keys.shape, jnp.float32),
      vmap_method='expand_dims')
  return jax.lax.platform_dependent(keys, cpu=host, default=_tie_ranks_xla)


def _row_offsets(perm: jax.Array) -> jax.Array:
  """``perm`` i32[B, N] of per-row positions -> positions in the flattened array, i32[B*N]."""
  b, n = perm.shape
  return (perm + jnp.arange(b, dtype=jnp.int32)[:, None] * n).reshape(-1)


def _rankdata(x: jax.Array) -> jax.Array:
  """Average ranks along the last axis of f32[B, N], as ``scipy.stats.rankdata(x, axis=1)``.

  O(N log N): a sort finds the tie runs, one flat scatter puts the ranks back in input order
  (on XLA:CPU a flat scatter is faster than a per-row one).

  Args:
    x: f32[B, N], finite, N < 2**23 and B * N < 2**31.

  Returns:
    f32[B, N] ranks in [1, N]; half-integers for ties (exact in f32).
  """
  r, perm = _ranks_in_sorted_order(x)
  flat = jnp.zeros(r.size, r.dtype).at[_row_offsets(perm)].set(r.reshape(-1),
                                                                unique_indices=True)
  return flat.reshape(r.shape)


def spearman(a: ArrayLike, b: ArrayLike, *, absolute: bool = False) -> jax.Array:
  """Spearman rank correlation between paired maps, over all their pixels.

  Same value as ``scipy.stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic`` (average ranks
  for ties), to about 1e-6.

  Args:
    a: f32[B, ...] maps, e.g. [B,H,W] heatmaps; finite.
    b: f32[B, ...], same shape as ``a``.
    absolute: rank ``|a|`` and ``|b|`` instead of the signed values (Adebayo et al. report
      both: the sign of a gradient map carries little visual meaning).

  Returns:
    f32[B] in [-1, 1]; NaN where a map (after ``abs`` if ``absolute``) is constant. -0.0 and
    0.0 tie, as in scipy; so do subnormal values and 0 (XLA on CPU flushes subnormals).

  Raises:
    ValueError: shapes differ, fewer than 2 dims, empty, non-finite values, 2**23 or more
      values per map, or 2**31 or more in all.
    TypeError: a non-real dtype.
  """
  a, b = _checks.check_pair(a, b)
  if a.size >= 2**31 or math.prod(a.shape[1:]) >= 2**23:
    raise ValueError(f'spearman ranks at most 2**23 - 1 values per map and 2**31 - 1 values per '
                     f'call; got shape {a.shape}: split the batch.')
  if absolute:
    a, b = jnp.abs(a), jnp.abs(b)
  # Pair a's ranks in its sorted order with b's ranks gathered in the same order: one scatter
  # (b's ranks back to input order) instead of two.
  ra, perm_a = _ranks_in_sorted_order(_flatten(a))
  rb = _rankdata(_flatten(b)).reshape(-1)[_row_offsets(perm_a)].reshape(ra.shape)
  return _pearson_rows(ra, rb)


def pearson(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """Pearson correlation between paired maps, over all their pixels.

  Same value as ``scipy.stats.pearsonr(a[i].ravel(), b[i].ravel()).statistic`` (to ~1e-6).

  Args:
    a: f32[B, ...] maps; finite.
    b: f32[B, ...], same shape as ``a``.

  Returns:
    f32[B] in [-1, 1]; NaN where a map is constant.

  Raises:
    ValueError: shapes differ, fewer than 2 dims, empty, or non-finite values.
    TypeError: a non-real dtype.
  """
  a, b = _checks.check_pair(a, b)
  return _pearson_rows(_flatten(a), _flatten(b))


def cosine(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """Cosine similarity ``<a, b> / (|a| |b|)`` between paired maps (uncentred).

  Equals ``1 - scipy.spatial.distance.cosine(a[i].ravel(), b[i].ravel())``.

  Args:
    a: f32[B, ...] maps; finite.
    b: f32[B, ...], same shape as ``a``.

  Returns:
    f32[B] in [-1, 1]; NaN where a map is all zero.

  Raises:
    ValueError: shapes differ, fewer than 2 dims, empty, or non-finite values.
    TypeError: a non-real dtype.
  """
  a, b = _checks.check_pair(a, b)
  x, y = _flatten(a), _flatten(b)
  # Scale each row by its max magnitude so f32 sums of squares cannot overflow or underflow.
  sx = jnp.max(jnp.abs(x), axis=1, keepdims=True)
  sy = jnp.max(jnp.abs(y), axis=1, keepdims=True)
  zero = (sx[:, 0] == 0) | (sy[:, 0] == 0)
  x = x / jnp.where(sx == 0, 1.0, sx)
  y = y / jnp.where(sy == 0, 1.0, sy)
  num = jnp.sum(x * y, axis=1)
  den = jnp.sqrt(jnp.sum(x * x, axis=1) * jnp.sum(y * y, axis=1))
  return jnp.where(zero, jnp.nan, jnp.clip(num / jnp.where(zero, 1.0, den), -1.0, 1.0))


def _normalize_rows(x: jax.Array, method: str | None) -> jax.Array:
  if method is None:
    return x
  if method == 'minmax':
    lo = jnp.min(x, axis=1, keepdims=True)
    span = jnp.max(x, axis=1, keepdims=True) - lo
    return jnp.where(span > 0, (x - lo) / jnp.where(span > 0, span, 1.0), 0.0)
  scale = jnp.max(jnp.abs(x), axis=1, keepdims=True)
  x = x / jnp.where(scale > 0, scale, 1.0)
  norm = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
  return x / jnp.where(norm > 0, norm, 1.0)


def l2_distance(a: ArrayLike, b: ArrayLike, *, normalize: str | None = None) -> jax.Array:
  """Euclidean distance ``||a - b||_2`` between paired maps, over all their pixels.

  Study 003 compares L2 distances between the saliency maps of natural and adversarial images
  (with a Mann-Whitney U test, see ``metrics.mann_whitney_u``).

  Args:
    a: f32[B, ...] maps; finite.
    b: f32[B, ...], same shape as ``a``.
    normalize: None (raw maps); ``'minmax'``: each map rescaled to [0, 1] first (a constant
      map becomes all zeros), the normalisation used to display saliency maps, so the distance
      is in [0, sqrt(N)]; ``'l2'``: each map divided by its L2 norm first (an all-zero map
      stays zero), so the distance is in [0, 2].

  Returns:
    f32[B], >= 0.

  Raises:
    ValueError: shapes differ, fewer than 2 dims, empty, non-finite values, or an unknown
      ``normalize``.
    TypeError: a non-real dtype.
  """
  if normalize not in L2_NORMALIZATIONS:
    raise ValueError(f'normalize must be one of {L2_NORMALIZATIONS}; got {normalize!r}.')
  a, b = _checks.check_pair(a, b)
  x, y = _normalize_rows(_flatten(a), normalize), _normalize_rows(_flatten(b), normalize)
  d = x - y
  scale = jnp.max(jnp.abs(d), axis=1)
  safe = jnp.where(scale > 0, scale, 1.0)
  return scale * jnp.sqrt(jnp.sum(jnp.square(d / safe[:, None]), axis=1))
