"""Graph-based visual saliency (GBVS): label-free saliency from Markov chains on feature maps.

The random walk on a graph of grid cells, weighted by feature dissimilarity and proximity,
settles where a cell differs from its surroundings ("activation"); a second walk weighted by
that activation concentrates the mass on a few peaks ("normalisation").
"""

import math
import numbers
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import _checks

DISSIMILARITIES = ('log_ratio', 'difference')
NORMALIZATIONS = ('graph', 'power')

# Feature maps are scaled to max 1 first, so this guard of |log(a / b)| is relative.
_LOG_EPS = 1e-4
# Added to every activation weight: no column is all zero and a flat map gets the uniform
# activation, as the reference package's fallback for that case; next to weights of order 1
# it changes nothing measurable.
_WEIGHT_FLOOR = 1e-6
# Colour opponency is undefined where the pixel is dark (Itti, Koch & Niebur 1998).
_DARK = 0.1
# The reference package's Gabor filters (makeGBVSParams.m, gaborParams), in grid cells.
_GABOR_STDDEV, _GABOR_ELONGATION, _GABOR_PERIOD = 2.0, 2.0, math.pi


def _grid_shape(height: int, width: int, grid_size: int) -> tuple[int, int]:
  """Grid with ``min(grid_size, long side)`` cells on the long side, aspect ratio kept."""
  long_side = max(height, width)
  cells = min(grid_size, long_side)
  return (max(1, round(height * cells / long_side)), max(1, round(width * cells / long_side)))


def _falloff(size: int, sigma: float) -> jax.Array:
  """exp(-(i - p)^2 / (2 sigma^2)) between the cells of one grid axis: f32[size,size]."""
  i = jnp.arange(size, dtype=jnp.float32)
  return jnp.exp(-jnp.square(i[:, None] - i[None, :]) / (2.0 * sigma**2))


def _stationary(apply_p: Callable[[jax.Array], jax.Array], init: jax.Array, tol: float,
                max_iter: int) -> jax.Array:
  """Equilibrium of a column-stochastic chain ``P`` (``apply_p: v -> P v``) by power iteration.

  Iterates the lazy chain ``(I + P) / 2`` from the distribution ``init`` (f32[...]): same
  equilibrium, but aperiodic, so it also converges on near-bipartite graphs (a uniform blob on
  a flat background, where the plain chain swings between the two). Stops once a step changes
  the distribution by less than ``tol`` (L2 norm, as the reference package) or after
  ``max_iter`` steps. Returns a distribution of ``init``'s shape.

  Under ``vmap`` the loop runs until every chain has stopped; a chain that has stopped stays
  frozen, so each result is the one it would have alone (batched == per-image).
  """
  def step(state):
    v, change, i = state
    stopped = change <= tol
    new = 0.5 * (v + apply_p(v))
    new = new / jnp.sum(new)
    new_change = jnp.sqrt(jnp.sum(jnp.square(new - v)))
    return (jnp.where(stopped, v, new), jnp.where(stopped, change, new_change), i + 1)

  def not_done(state):
    _, change, i = state
    return (change > tol) & (i < max_iter)

  state = (init, jnp.array(jnp.inf, init.dtype), jnp.array(0))
  return jax.lax.while_loop(not_done, step, state)[0]


def _activation(feature_map: jax.Array, sigma: float, dissimilarity: str, tol: float,
                max_iter: int) -> jax.Array:
  """Equilibrium f32[h,w] of the chain ``w1(a, b) = d(M_a, M_b) F(a - b)``.

  ``feature_map`` f32[h,w] is non-negative with max 1 (or all zero); ``sigma`` in grid cells.
  The weights are symmetric, so the column-normalised chain is reversible and its equilibrium
  is the normalised weighted degree (detailed balance): the power iteration starts there and
  stops once a step confirms it, instead of approaching it from uniform to within ``tol``.
  """
  h, w = feature_map.shape
  m = feature_map.ravel()
  if dissimilarity == 'log_ratio':
    m = jnp.log(m + _LOG_EPS)
  falloff = jnp.kron(_falloff(h, sigma), _falloff(w, sigma))  # Row-major cells.
  weights = jnp.abs(m[:, None] - m[None, :]) * falloff + _WEIGHT_FLOOR
  degree = jnp.sum(weights, axis=0)
  p = weights / degree[None, :]
  apply_p = lambda v: jnp.matmul(p, v, precision=jax.lax.Precision.HIGHEST)
  return _stationary(apply_p, degree / jnp.sum(degree), tol, max_iter).reshape(h, w)


def _normalization(activation: jax.Array, sigma: float, tol: float,
                   max_iter: int) -> jax.Array:
  """Equilibrium f32[h,w] of the chain ``w2(b -> a) = A_a F(a - b)``, started at ``A``.

  ``activation`` ``A`` is a positive f32[h,w] distribution. ``F`` is separable on the grid, so
  ``P v = A * F(v / F A)`` (F symmetric) takes two small matrix products per step, not a
  dense f32[N,N] one.
  """
  fh, fw = _falloff(activation.shape[0], sigma), _falloff(activation.shape[1], sigma)
  hp = jax.lax.Precision.HIGHEST
  blur = lambda u: jnp.matmul(jnp.matmul(fh, u, precision=hp), fw, precision=hp)  # F u.
  column_sums = blur(activation)
  apply_p = lambda v: activation * blur(v / column_sums)
  return _stationary(apply_p, activation / jnp.sum(activation), tol, max_iter)


def _gabor_kernels(orientations: tuple[float, ...]) -> np.ndarray:
  """Zero-mean, unit-norm Gabor pairs (phases 0 and 90 deg) per angle: f32[k,k,1,2*O] (HWIO)."""
  minor = _GABOR_STDDEV * _GABOR_ELONGATION
  half = math.ceil(max(_GABOR_STDDEV, minor) * math.sqrt(10))
  y, x = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1), indexing='ij')
  kernels = []
  for angle in orientations:
    theta = np.deg2rad(angle)
    along = x * np.cos(theta) + y * np.sin(theta)
    across = -x * np.sin(theta) + y * np.cos(theta)
    envelope = np.exp(-along**2 / (2 * _GABOR_STDDEV**2) - across**2 / (2 * minor**2))
    for phase in (0.0, np.pi / 2):
      k = np.cos(2 * np.pi / _GABOR_PERIOD * along + phase) * envelope
      k = k - k.mean()
      kernels.append(k / np.linalg.norm(k))
  return np.stack(kernels, axis=-1)[:, :, None, :].astype(np.float32)


def _feature_maps(image: jax.Array, orientations: tuple[float, ...]) -> list[jax.Array]:
  """Feature maps of one grid-sized image f32[h,w,C]: one f32[K_t,h,w] per feature type."""
  intensity = jnp.mean(image, axis=-1)
  types = [intensity[None]]
  if image.shape[-1] == 3:
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    brightest = jnp.max(image, axis=-1)
    safe = jnp.where(brightest > _DARK, brightest, 1.0)
    rg = jnp.where(brightest > _DARK, jnp.abs(r - g) / safe, 0.0)
    by = jnp.where(brightest > _DARK, jnp.abs(b - jnp.minimum(r, g)) / safe, 0.0)
    types.append(jnp.stack([rg, by]))
  if orientations:
    kernels = _gabor_kernels(orientations)
    half = kernels.shape[0] // 2
    padded = jnp.pad(intensity, half, mode='edge')[None, :, :, None]
    out = jax.lax.conv_general_dilated(padded, jnp.asarray(kernels), (1, 1), 'VALID',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                       precision=jax.lax.Precision.HIGHEST)[0]
    energy = jnp.abs(out[..., 0::2]) + jnp.abs(out[..., 1::2])  # Both phases: no ripple.
    types.append(jnp.moveaxis(energy, -1, 0))
  return types


def _check(x, grid_size, sigma_frac_act, sigma_frac_norm, dissimilarity, normalization, tol,
           max_iter, orientations, batch_size) -> tuple[float, ...]:
  """Validates the arguments of ``gbvs`` and returns ``orientations`` as a tuple of floats."""
  shape = tuple(np.shape(x))
  if len(shape) != 4:
    raise ValueError(f'x must be a batch of images f32[B,H,W,C], got shape {shape}.')
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise TypeError(f'x must be floating point in [0, 1], got dtype {jnp.result_type(x)}.')
  if shape[-1] not in (1, 3):
    raise ValueError(f'x must have C=1 (grey) or C=3 (RGB) channels, got shape {shape}.')
  if min(shape[:3]) < 1:
    raise ValueError(f'x must hold at least one non-empty image, got shape {shape}.')
  if not isinstance(x, jax.core.Tracer):
    values = np.asarray(x)
    if np.isnan(values).any():
      raise ValueError(f'x must lie in [0, 1], got {np.isnan(values).sum()} NaN values.')
    if values.min() < 0 or values.max() > 1:
      raise ValueError(f'x must lie in [0, 1], got values in [{values.min()}, {values.max()}].')
  for name, value in (('grid_size', grid_size), ('max_iter', max_iter),
                      ('batch_size', 1 if batch_size is None else batch_size)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{name} must be a positive int (static under jax.jit), got {value!r}.')
  for name, value in (('sigma_frac_act', sigma_frac_act), ('sigma_frac_norm', sigma_frac_norm)):
    if not isinstance(value, numbers.Real) or not 0 < value <= 1:
      raise ValueError(f'{name} must be a fraction in (0, 1] of the mean grid side, got {value!r}.')
  if not isinstance(tol, numbers.Real) or not 0 < tol < math.inf:
    raise ValueError(f'tol must be a positive float, got {tol!r}.')
  if dissimilarity not in DISSIMILARITIES:
    raise ValueError(f'dissimilarity must be one of {DISSIMILARITIES}, got {dissimilarity!r}.')
  if normalization not in NORMALIZATIONS:
    raise ValueError(f'normalization must be one of {NORMALIZATIONS}, got {normalization!r}.')
  if isinstance(orientations, (str, bytes)) or not isinstance(orientations, Sequence) or not all(
      isinstance(a, numbers.Real) and math.isfinite(a) for a in orientations):
    raise TypeError(f'orientations must be a sequence of angles in degrees, got '
                    f'{orientations!r}.')
  return tuple(float(a) for a in orientations)


def gbvs(x: jax.typing.ArrayLike, *, grid_size: int = 32, sigma_frac_act: float = 0.15,
         sigma_frac_norm: float = 0.06, dissimilarity: str = 'log_ratio',
         normalization: str = 'graph', tol: float = 1e-4, max_iter: int = 1000,
         orientations: Sequence[float] = (0, 45, 90, 135),
         batch_size: int | None = 8) -> jax.Array:
  """Graph-based visual saliency of each image (Harel, Koch & Perona).

  1. Resize to a grid of ``min(grid_size, long side)`` cells on the long side (antialiased
     bilinear). CIFAR-10 (32x32) and MNIST (28x28) keep their own pixel grid; the reference
     package would reject them (it needs 128x128) and sample a pyramid, here one scale.
  2. Feature maps on the grid, each scaled to max 1: intensity (channel mean); colour
     opponency ``|R-G| / max(R,G,B)`` and ``|B - min(R,G)| / max(R,G,B)`` (0 where
     ``max(R,G,B) <= 0.1``; none for C=1); Gabor energy ``|even| + |odd|`` of the intensity at
     each angle (the reference's filters: std 2 cells, elongation 2, period pi).
  3. Activation ``A``: equilibrium of the chain ``w1(a, b) = d(M_a, M_b) F(a - b)``,
     ``F = exp(-D / (2 sigma^2))`` on the squared grid distance ``D``,
     ``sigma = sigma_frac_act * mean(h, w)``, columns normalised.
  4. Normalisation, ``'graph'``: equilibrium of ``w2(a, b) = A_a F(a - b)`` with
     ``sigma_frac_norm`` (each map then sums to 1); ``'power'``: ``A ** 1.5`` (maps with few
     peaks keep more mass).
  5. Each feature type (intensity, colour, orientation) averages its maps; types are summed,
     upsampled bilinearly to H x W (no final blur) and scaled to sum 1.

  Defaults follow the paper: ``dissimilarity='log_ratio'`` (``|log(M_a / M_b)|``, the form AdVis.js writes)
  and ``normalization='graph'``. The reference MATLAB package (makeGBVSParams.m) defaults to
  ``'difference'`` (``|M_a - M_b|``) with ``'graph'``, and offers ``'power'``.

  Args:
    x: f32[B,H,W,C] images in [0, 1], C in {1, 3}.
    grid_size: cells on the long side of the feature grid. Static.
    sigma_frac_act: activation falloff, fraction in (0, 1] of the mean grid side.
    sigma_frac_norm: normalisation falloff, fraction in (0, 1] of the mean grid side.
    dissimilarity: ``'log_ratio'`` or ``'difference'``. Static.
    normalization: ``'graph'`` or ``'power'``. Static.
    tol: power iteration stops when a step moves the distribution less (L2 norm), > 0.
    max_iter: cap on power-iteration steps per chain. Static.
    orientations: Gabor angles in degrees, a tuple (empty: no orientation maps). Static.
    batch_size: images per vmapped chunk (``None``: all); each image holds a few f32[N,N]
      arrays per feature map, N the grid cells. The result does not depend on it. Static.

  Returns:
    f32[B,H,W,1] non-negative saliency, each map summing to 1 (a density over pixels, so
    ``log_ratio_difference`` compares densities).

  Raises:
    ValueError: wrong rank, batch or channels; ``x`` outside [0, 1] or NaN (when concrete);
      a non-positive int option or ``tol``; sigma fractions outside (0, 1]; an unknown
      ``dissimilarity`` or ``normalization``.
    TypeError: non-float ``x``; ``orientations`` not a sequence of numbers.

  References:
    Harel, Koch & Perona, Graph-based visual saliency, NIPS 2006.
  """
  orientations = _check(x, grid_size, sigma_frac_act, sigma_frac_norm, dissimilarity,
                        normalization, tol, max_iter, orientations, batch_size)
  x = jnp.asarray(x, jnp.float32)
  _, height, width, channels = x.shape
  gh, gw = _grid_shape(height, width, grid_size)
  sigma_act = sigma_frac_act * (gh + gw) / 2
  sigma_norm = sigma_frac_norm * (gh + gw) / 2

  def one_map(feature_map):
    m = feature_map / jnp.maximum(jnp.max(feature_map), jnp.finfo(jnp.float32).tiny)
    act = _activation(m, sigma_act, dissimilarity, tol, max_iter)
    if normalization == 'power':
      return act**1.5
    return _normalization(act, sigma_norm, tol, max_iter)

  def one_image(image):
    if (gh, gw) != (height, width):
      image = jax.image.resize(image, (gh, gw, channels), 'linear', antialias=True)
    types = _feature_maps(image, orientations)
    # One vmap over all maps (one compiled chain); each type's maps weigh 1 / K_t in total.
    weights = np.concatenate([np.full(len(t), 1.0 / len(t), np.float32) for t in types])
    maps = jax.vmap(one_map)(jnp.concatenate(types))
    master = jnp.einsum('k,khw->hw', weights, maps, precision=jax.lax.Precision.HIGHEST)
    if (gh, gw) != (height, width):
      master = jax.image.resize(master, (height, width), 'linear')
    return (master / jnp.sum(master))[..., None]

  # Equal chunks (zero-padded): one scan, compiled whole even when called eagerly.
  batch = x.shape[0]
  chunks = -(-batch // (batch_size or batch))
  per_chunk = -(-batch // chunks)
  x = jnp.pad(x, ((0, chunks * per_chunk - batch), (0, 0), (0, 0), (0, 0)))
  out = jax.lax.map(jax.vmap(one_image), x.reshape(chunks, per_chunk, height, width, channels))
  return out.reshape(chunks * per_chunk, height, width, 1)[:batch]


def _check_pair(adv_map: jax.typing.ArrayLike, clean_map: jax.typing.ArrayLike, *,
                non_negative: bool = False):
  """Raises ``ValueError`` unless the maps have the same shape and, when concrete, are finite
  (and ``>= 0`` with ``non_negative``)."""
  if np.shape(adv_map) != np.shape(clean_map):
    raise ValueError(f'adv_map and clean_map must have the same shape, got '
                     f'{np.shape(adv_map)} and {np.shape(clean_map)}.')
  for name, value in (('adv_map', adv_map), ('clean_map', clean_map)):
    _checks.check_finite(value, name=name)
    if non_negative and _checks.is_concrete(value) and (np.asarray(value) < 0).any():
      raise ValueError(f'{name} must be non-negative (its log is taken), got min '
                       f'{np.asarray(value).min():.4g}.')


def saliency_difference(adv_map: jax.typing.ArrayLike,
                        clean_map: jax.typing.ArrayLike) -> jax.Array:
  """Saliency difference ``adv_map - clean_map``.

  Args:
    adv_map: saliency of the adversarial images, e.g. f32[B,H,W,1] from ``gbvs``.
    clean_map: saliency of the clean images, same shape.

  Returns:
    The difference, same shape.

  Raises:
    ValueError: the shapes differ; NaN or inf in a concrete map.
  """
  _check_pair(adv_map, clean_map)
  return jnp.asarray(adv_map) - jnp.asarray(clean_map)


def log_ratio_difference(adv_map: jax.typing.ArrayLike, clean_map: jax.typing.ArrayLike, *,
                         eps: float = 1e-6) -> jax.Array:
  """Log-ratio saliency difference ``log((adv_map + eps) / (clean_map + eps))``.

  Args:
    adv_map: non-negative saliency of the adversarial images, any shape.
    clean_map: non-negative saliency of the clean images, same shape.
    eps: guard added to both maps, > 0.

  Returns:
    The log ratio, same shape.

  Raises:
    ValueError: the shapes differ or ``eps`` is not positive; NaN, inf or negative values in
      a concrete map.
  """
  _check_pair(adv_map, clean_map, non_negative=True)
  if not isinstance(eps, numbers.Real) or not eps > 0:
    raise ValueError(f'eps must be a positive float, got {eps!r}.')
  return jnp.log((jnp.asarray(adv_map) + eps) / (jnp.asarray(clean_map) + eps))
