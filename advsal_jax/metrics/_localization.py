"""Localisation of saliency against a region, and binarised-map agreement, batched.

Study 004 takes the k most salient pixels of a map (``top_k_mask``) and scores them against
the attacked region C with the Jaccard index and the Hamming likeness
``1 - Hamming(P, C) / N``. Study 001 compares two saliency maps by the fraction of pixels on
which their binarised versions agree (``sim_ratio``, its "Sim-Ratio") and by the relative
difference of their unnormalised means (``avg_diff``, its "Avg-Diff").

References:
  Göpfert, Wersing, Hammer, Recovering Localized Adversarial Attacks, preprint 2019 (study
    004).
  Gu & Tresp, Saliency Methods for Explaining Adversarial Attacks, arXiv:1908.08413 (study
    001).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from advsal_jax.metrics import _checks


def _check_masks(mask_a: ArrayLike, mask_b: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """Validates two batched boolean masks of the same shape; returns them as bool[B, N]."""
  masks = []
  for name, m in (('mask_a', mask_a), ('mask_b', mask_b)):
    if not hasattr(m, 'dtype'):
      m = np.asarray(m)
    if m.dtype != jnp.bool_:
      raise TypeError(f'{name} must be a bool mask (e.g. from top_k_mask or map > t); got dtype '
                      f'{m.dtype}.')
    if m.ndim < 2 or any(d == 0 for d in m.shape):
      raise ValueError(f'{name} must be a non-empty [B, ...] mask with a leading batch axis; '
                       f'got shape {m.shape}.')
    masks.append(m)
  if masks[0].shape != masks[1].shape:
    raise ValueError(f'mask_a and mask_b must have the same shape; got {masks[0].shape} and '
                     f'{masks[1].shape}.')
  return tuple(jnp.asarray(m).reshape(m.shape[0], -1) for m in masks)


def top_k_mask(maps: ArrayLike, k: int | ArrayLike) -> jax.Array:
  """Marks the k largest pixels of each map; ties go to the lower row-major index.

  Args:
    maps: f32[B, ...] saliency maps, e.g. [B,H,W] heatmaps (study 004 ranks pixels by the L1
      norm of the gradient over channels); finite.
    k: how many pixels to mark, in [0, N] with N the pixels per map: an int, or i32[B] for a
      per-example k (study 004 matches k to the size of LIME's union of superpixels).

  Returns:
    bool of ``maps``'s shape with exactly ``k`` (or ``k[i]``) True entries per map: those with
    the largest values, equal values taken in increasing flat index order.

  Raises:
    ValueError: ``maps`` has fewer than 2 dims, is empty or non-finite; ``k`` out of range or
      of the wrong shape.
    TypeError: ``maps`` has a non-real dtype or ``k`` is not an integer.
  """
  x = _checks.check_array(maps, name='maps')
  n = int(np.prod(x.shape[1:]))
  if isinstance(k, bool) or not (isinstance(k, int) or jnp.issubdtype(jnp.result_type(k),
                                                                     jnp.integer)):
    raise TypeError(f'k must be an int or an integer array; got {k!r}.')
  if np.ndim(k) not in (0, 1) or (np.ndim(k) == 1 and np.shape(k)[0] != x.shape[0]):
    raise ValueError(f'k must be a scalar or have shape [{x.shape[0]}]; got shape {np.shape(k)}.')
  if not isinstance(k, jax.core.Tracer) and not np.all((np.asarray(k) >= 0)
                                                        & (np.asarray(k) <= n)):
    raise ValueError(f'k must be in [0, {n}] (pixels per map); got {k!r}.')
  flat = x.reshape(x.shape[0], -1)
  iota = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), flat.shape)
  # Sorting on (-value, index) makes the order total, hence the tie-break explicit.
  _, _, order = jax.lax.sort((-flat, iota, iota), dimension=1, num_keys=2)
  _, position = jax.lax.sort((order, iota), dimension=1, num_keys=1)
  kk = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (x.shape[0],))[:, None]
  return (position < kk).reshape(x.shape)


def jaccard(mask_a: ArrayLike, mask_b: ArrayLike) -> jax.Array:
  """Jaccard index ``|A & B| / |A | B|`` of paired boolean masks.

  Args:
    mask_a: bool[B, ...], e.g. ``top_k_mask(saliency, k)``.
    mask_b: bool[B, ...], same shape, e.g. the attacked region.

  Returns:
    f32[B] in [0, 1]; 1 when both masks are empty (identical sets).

  Raises:
    TypeError: a mask is not bool.
    ValueError: shapes differ, or a mask has fewer than 2 dims or is empty.
  """
  a, b = _check_masks(mask_a, mask_b)
  inter = jnp.sum(a & b, axis=1).astype(jnp.float32)
  union = jnp.sum(a | b, axis=1).astype(jnp.float32)
  return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)


def hamming_likeness(mask_a: ArrayLike, mask_b: ArrayLike) -> jax.Array:
  """Hamming likeness ``1 - Hamming(A, B) / N`` of paired boolean masks (Göpfert et al.).

  Args:
    mask_a: bool[B, ...].
    mask_b: bool[B, ...], same shape.

  Returns:
    f32[B] in [0, 1]: the fraction of the N pixels on which the masks agree.

  Raises:
    TypeError: a mask is not bool.
    ValueError: shapes differ, or a mask has fewer than 2 dims or is empty.
  """
  a, b = _check_masks(mask_a, mask_b)
  return jnp.sum(a == b, axis=1).astype(jnp.float32) / a.shape[1]


def sim_ratio(a: ArrayLike, b: ArrayLike, *, threshold: float = 0.0) -> jax.Array:
  """Sim-Ratio of study 001: agreement of two binarised saliency maps.

  A pixel is "on" when its saliency magnitude exceeds ``threshold``; the result is the number
  of pixels on which the two binarised maps agree over all pixels. Study 001 does not state its
  binarisation; with the default threshold 0 it compares which pixels a method lets through
  at all (Guided Backprop's "filtering effect", zero elsewhere).

  Args:
    a: f32[B, ...] saliency maps; finite.
    b: f32[B, ...], same shape.
    threshold: binarisation threshold on ``|map|``, >= 0.

  Returns:
    f32[B] in [0, 1]; 1 for identical maps.

  Raises:
    ValueError: shapes differ, fewer than 2 dims, empty, non-finite, or a negative or
      non-finite threshold.
    TypeError: a non-real dtype.
  """
  if not isinstance(threshold, (int, float)) or not 0 <= threshold < float('inf'):
    raise ValueError(f'threshold must be a finite number >= 0; got {threshold!r}.')
  a, b = _checks.check_pair(a, b)
  return hamming_likeness(jnp.abs(a) > threshold, jnp.abs(b) > threshold)


def avg_diff(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """Avg-Diff of study 001: ``|mean(a) - mean(b)| / max(mean(a), mean(b))`` of unnormalised maps.

  Args:
    a: f32[B, ...] non-negative saliency maps (e.g. Guided Backprop magnitudes), not
      normalised; finite.
    b: f32[B, ...], same shape.

  Returns:
    f32[B]; in [0, 1] for non-negative maps. 0 when both means are 0; NaN when the larger mean
    is negative or when one mean is 0 and the other negative (the ratio is meaningless there).

  Raises:
    ValueError: shapes differ, fewer than 2 dims, empty or non-finite values.
    TypeError: a non-real dtype.
  """
  a, b = _checks.check_pair(a, b)
  ma = jnp.mean(a.reshape(a.shape[0], -1), axis=1)
  mb = jnp.mean(b.reshape(b.shape[0], -1), axis=1)
  top = jnp.maximum(ma, mb)
  ratio = jnp.abs(ma - mb) / jnp.where(top > 0, top, 1.0)
  return jnp.where(top > 0, ratio, jnp.where((ma == 0) & (mb == 0), 0.0, jnp.nan))
