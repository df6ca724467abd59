"""Histograms of oriented gradients (HOG) of maps, batched, matching scikit-image 0.26.

``hog`` reproduces ``skimage.feature.hog(image, orientations, pixels_per_cell,
cells_per_block, block_norm, transform_sqrt=False, feature_vector=True)`` (with
``channel_axis=-1`` for [B,H,W,C] inputs) to about 1e-5, including its particulars:

* gradients are central differences ``x[i+1] - x[i-1]``, zero on the first and last row/column;
* for multichannel input each pixel takes the gradient of the channel with the largest magnitude
  (the first such channel on ties);
* orientation = atan2(g_row, g_col) in degrees modulo 180; pixel p votes its magnitude into bin
  i iff ``180 / n * i <= orientation(p) < 180 / n * (i + 1)`` (bin edges rounded to f32 as in
  skimage's Cython code); no interpolation between bins or cells;
* a cell's histogram is the sum of its votes divided by the cell's pixel count (this sets the
  scale at which eps = 1e-5 matters in the block normalisation);
* cells tile the map from the top-left corner; pixels beyond the last whole cell are ignored
  (checked against the compiled 0.26 extension, whose odd-sized cells are whole, whatever older
  versions of ``_hoghistogram.pyx`` suggest);
* overlapping blocks of ``cells_per_block`` cells (stride one cell) are normalised with
  eps = 1e-5 and flattened in (block_row, block_col, cell_row, cell_col, orientation) order.

Bin membership is decided in f32 (see ``_orientation_bins``), so a pixel whose gradient
direction lies within ~1e-5 degrees of a bin edge (other than 0, 45, 90, 135 degrees, which are
exact) may vote into the neighbouring bin; this never happened on the random, integer-valued
and saliency maps of the tests.

Study 000 compares maps by the Pearson correlation of their HOGs (``hog_pearson``), after
Adebayo et al.; ``hog_spearman`` is the rank version.

References:
  Dalal & Triggs, Histograms of Oriented Gradients for Human Detection, CVPR 2005.
  Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018, arXiv:1810.03292.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from advsal_jax.metrics import _checks
from advsal_jax.metrics._correlation import pearson
from advsal_jax.metrics._correlation import spearman

BLOCK_NORMS = ('L1', 'L1-sqrt', 'L2', 'L2-Hys')
_EPS = 1e-5  # skimage's block-normalisation epsilon.


def _check_hog_args(shape: tuple[int, ...], *, name: str, orientations, pixels_per_cell,
                    cells_per_block, block_norm):
  if not isinstance(orientations, int) or orientations < 1:
    raise ValueError(f'orientations must be a positive int; got {orientations!r}.')
  for arg_name, pair in (('pixels_per_cell', pixels_per_cell),
                         ('cells_per_block', cells_per_block)):
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
        or not all(isinstance(v, int) and v >= 1 for v in pair)):
      raise ValueError(f'{arg_name} must be two positive ints; got {pair!r}.')
  if block_norm not in BLOCK_NORMS:
    raise ValueError(f'block_norm must be one of {BLOCK_NORMS}; got {block_norm!r}.')
  min_rows = pixels_per_cell[0] * cells_per_block[0]
  min_cols = pixels_per_cell[1] * cells_per_block[1]
  if shape[1] < min_rows or shape[2] < min_cols:
    raise ValueError(
        f'{name} is too small for pixels_per_cell={tuple(pixels_per_cell)} and '
        f'cells_per_block={tuple(cells_per_block)}: maps need at least {min_rows}x{min_cols} '
        f'pixels; got {shape[1]}x{shape[2]} from shape {shape}.')


def _gradients(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Central differences along rows and columns, zero on the border, of f32[B,H,W,...]."""
  g_row = jnp.zeros_like(x).at[:, 1:-1].set(x[:, 2:] - x[:, :-2])
  g_col = jnp.zeros_like(x).at[:, :, 1:-1].set(x[:, :, 2:] - x[:, :, :-2])
  return g_row, g_col


def _orientation_bins(g_row: jax.Array, g_col: jax.Array, orientations: int) -> jax.Array:
  """i32 bin of each pixel's gradient orientation, as skimage assigns it.

  skimage bins theta = atan2(g_row, g_col) in degrees modulo 180 into [e_i, e_{i+1}) with
  e_i = f32(180 / orientations * i). Instead of an atan2 per pixel (the costliest step), the
  direction is folded into the upper half plane (theta in [0, 180), a left-pointing horizontal
  gradient gives 0 like skimage's modulo) and theta >= e_i is decided by the sign of the cross
  product with the edge direction; an edge at exactly 90 degrees uses the sign of g_col, so
  axis-aligned gradients are binned exactly.
  """
  flip = (g_row < 0) | ((g_row == 0) & (g_col < 0))
  y = jnp.where(flip, -g_row, g_row)
  x = jnp.where(flip, -g_col, g_col)
  bins = jnp.zeros(g_row.shape, jnp.int32)
  edges = (180.0 / orientations * np.arange(1, orientations)).astype(np.float32)
  for edge in edges.astype(np.float64):
    if edge == 90.0:
      at_or_above = (x < 0) | ((x == 0) & (y > 0))
    else:
      cos, sin = np.float32(np.cos(np.radians(edge))), np.float32(np.sin(np.radians(edge)))
      at_or_above = cos * y - sin * x >= 0
    bins = bins + at_or_above.astype(jnp.int32)
  return bins


def _normalize_blocks(blocks: jax.Array, block_norm: str) -> jax.Array:
  """Normalises f32[B, nbr, nbc, k] blocks along the last axis as skimage does."""
  if block_norm in ('L1', 'L1-sqrt'):
    out = blocks / (jnp.sum(jnp.abs(blocks), axis=-1, keepdims=True) + _EPS)
    return jnp.sqrt(out) if block_norm == 'L1-sqrt' else out
  out = blocks / jnp.sqrt(jnp.sum(blocks * blocks, axis=-1, keepdims=True) + _EPS ** 2)
  if block_norm == 'L2':
    return out
  out = jnp.minimum(out, 0.2)
  return out / jnp.sqrt(jnp.sum(out * out, axis=-1, keepdims=True) + _EPS ** 2)


def _hog(x: jax.Array, *, orientations, pixels_per_cell, cells_per_block,
         block_norm) -> jax.Array:
  g_row, g_col = _gradients(x)
  if x.ndim == 4:
    magnitude = jnp.hypot(g_row, g_col)
    best = jnp.argmax(magnitude, axis=-1)[..., None]
    g_row = jnp.take_along_axis(g_row, best, axis=-1)[..., 0]
    g_col = jnp.take_along_axis(g_col, best, axis=-1)[..., 0]
  magnitude = jnp.hypot(g_row, g_col)
  bins = _orientation_bins(g_row, g_col, orientations)

  (c_row, c_col), (b_row, b_col) = pixels_per_cell, cells_per_block
  n_cells_row, n_cells_col = x.shape[1] // c_row, x.shape[2] // c_col
  batch = x.shape[0]
  magnitude = magnitude[:, :n_cells_row * c_row, :n_cells_col * c_col]
  bins = bins[:, :n_cells_row * c_row, :n_cells_col * c_col]
  # One scatter-add of every pixel into its (cell, orientation) bin: on XLA:CPU faster than a
  # masked sum over the cell axes per orientation. Per-image bins keep the indices small.
  cell = ((np.arange(n_cells_row * c_row) // c_row)[:, None] * n_cells_col
          + (np.arange(n_cells_col * c_col) // c_col)[None, :])
  num_bins = n_cells_row * n_cells_col * orientations
  hist = jax.vmap(lambda m, b: jax.ops.segment_sum(
      m.reshape(-1), (cell * orientations + b).reshape(-1), num_segments=num_bins))(
          magnitude, bins)
  hist = hist.reshape(batch, n_cells_row, n_cells_col, orientations) / (c_row * c_col)

  n_blocks_row, n_blocks_col = n_cells_row - b_row + 1, n_cells_col - b_col + 1
  blocks = jnp.stack([
      jnp.stack([hist[:, i:i + n_blocks_row, j:j + n_blocks_col] for j in range(b_col)],
                axis=3)
      for i in range(b_row)], axis=3)  # [B, nbr, nbc, b_row, b_col, O]
  blocks = blocks.reshape(batch, n_blocks_row, n_blocks_col, -1)
  return _normalize_blocks(blocks, block_norm).reshape(batch, -1)


def hog(images: ArrayLike, *, orientations: int = 9, pixels_per_cell: tuple[int, int] = (8, 8),
        cells_per_block: tuple[int, int] = (2, 2), block_norm: str = 'L2-Hys') -> jax.Array:
  """HOG feature vectors of a batch of maps, as ``skimage.feature.hog`` computes them.

  Args:
    images: f32[B,H,W] grayscale maps or f32[B,H,W,C] multichannel maps; finite; H, W at least
      ``pixels_per_cell * cells_per_block``.
    orientations: number of orientation bins over [0, 180) degrees.
    pixels_per_cell: (rows, cols) of a cell.
    cells_per_block: (rows, cols) of cells in a normalisation block.
    block_norm: 'L1', 'L1-sqrt', 'L2' or 'L2-Hys' (L2, clip at 0.2, L2 again).

  Returns:
    f32[B, D] with D = n_blocks_row * n_blocks_col * cells_per_block[0] * cells_per_block[1] *
    orientations (324 for 32x32 maps with the defaults); values in [0, 1]; all zero for a
    constant map (no gradient anywhere).

  Raises:
    ValueError: rank not 3 or 4, non-finite values, bad hyper-parameters, or maps smaller than
      one block.
    TypeError: a non-real dtype.
  """
  x = _checks.check_array(images, name='images', min_ndim=3, max_ndim=4)
  _check_hog_args(x.shape, name='images', orientations=orientations,
                  pixels_per_cell=pixels_per_cell, cells_per_block=cells_per_block,
                  block_norm=block_norm)
  return _hog(x, orientations=orientations, pixels_per_cell=tuple(pixels_per_cell),
              cells_per_block=tuple(cells_per_block), block_norm=block_norm)


def _paired_hogs(a, b, **hog_kwargs) -> tuple[jax.Array, jax.Array]:
  a, b = _checks.check_pair(a, b, min_ndim=3, max_ndim=4)
  _check_hog_args(a.shape, name='a and b', **hog_kwargs)
  both = _hog(jnp.concatenate([a, b]), **hog_kwargs)
  return both[:a.shape[0]], both[a.shape[0]:]


def hog_pearson(a: ArrayLike, b: ArrayLike, *, orientations: int = 9,
                pixels_per_cell: tuple[int, int] = (8, 8),
                cells_per_block: tuple[int, int] = (2, 2),
                block_norm: str = 'L2-Hys') -> jax.Array:
  """Pearson correlation of the HOG vectors of paired maps (study 000's third metric).

  Args:
    a: f32[B,H,W] or f32[B,H,W,C] maps; finite.
    b: same shape as ``a``.
    orientations, pixels_per_cell, cells_per_block, block_norm: as ``hog``.

  Returns:
    f32[B] in [-1, 1]; NaN where a HOG vector is constant (e.g. a constant map, whose HOG is
    all zero), as ``scipy.stats.pearsonr`` would give.

  Raises:
    ValueError, TypeError: as ``hog``, or when shapes differ.
  """
  kwargs = dict(orientations=orientations, pixels_per_cell=tuple(pixels_per_cell),
                cells_per_block=tuple(cells_per_block), block_norm=block_norm)
  return pearson(*_paired_hogs(a, b, **kwargs))


def hog_spearman(a: ArrayLike, b: ArrayLike, *, orientations: int = 9,
                 pixels_per_cell: tuple[int, int] = (8, 8),
                 cells_per_block: tuple[int, int] = (2, 2),
                 block_norm: str = 'L2-Hys') -> jax.Array:
  """Spearman rank correlation of the HOG vectors of paired maps.

  Args:
    a: f32[B,H,W] or f32[B,H,W,C] maps; finite.
    b: same shape as ``a``.
    orientations, pixels_per_cell, cells_per_block, block_norm: as ``hog``.

  Returns:
    f32[B] in [-1, 1]; NaN where a HOG vector is constant.

  Raises:
    ValueError, TypeError: as ``hog``, or when shapes differ.
  """
  kwargs = dict(orientations=orientations, pixels_per_cell=tuple(pixels_per_cell),
                cells_per_block=tuple(cells_per_block), block_norm=block_norm)
  return spearman(*_paired_hogs(a, b, **kwargs))
