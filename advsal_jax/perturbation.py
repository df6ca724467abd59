"""Pixel-perturbation curves: predictions as the top-ranked pixels of a map are replaced.

Rank the pixels of each image by a map (higher first, equal values in the order of a
tie-break array: ``pixel_ranks``), replace the top k by a fill (``fill_images``: the
dataset's mean colour, a Gaussian blur of the image or uniform noise; ``replace_top``) and
classify again, for every k of a grid (``pixel_counts``). ``perturbation_curves`` does every
ranking and every k in one vmapped model evaluation; comparing its predictions with the true
labels gives accuracy-vs-k curves, with the original predicted classes a deletion curve.

References:
  Samek et al., Evaluating the Visualization of What a Deep Neural Network Has Learned,
    arXiv:1509.06321 (pixel perturbation by a ranking).
  Gu & Tresp, Saliency Methods for Explaining Adversarial Attacks, arXiv:1908.08413 (Fig. 4:
    accuracy on adversarial images as a map's top pixels are perturbed).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import _checks
from advsal_jax.types import ApplyFn, Params

FILLS = ('mean', 'blur', 'noise')
"""What replaced pixels become (``fill_images``)."""


def pixel_counts(percentages, num_pixels: int) -> np.ndarray:
  """Pixels replaced at each percentage: ``round(p / 100 * num_pixels)`` (half to even).

  Args:
    percentages: f[P] in [0, 100].
    num_pixels: pixels per image, >= 1.

  Returns:
    i32[P] in [0, num_pixels].

  Raises:
    ValueError: ``percentages`` not 1-D or outside [0, 100]; ``num_pixels < 1``.
    TypeError: ``num_pixels`` not an int.
  """
  _checks.check_count(num_pixels, 'num_pixels')
  p = np.asarray(percentages, np.float64)
  if p.ndim != 1 or not np.all((p >= 0) & (p <= 100)):
    raise ValueError(f'percentages must be a 1-D sequence in [0, 100], got {percentages!r}.')
  return np.rint(p / 100 * num_pixels).astype(np.int32)


def _check_images(x, name: str):
  shape = tuple(np.shape(x))
  if len(shape) != 4 or 0 in shape:
    raise ValueError(f'{name} must be a non-empty batch of images f32[B,H,W,C], got shape '
                     f'{shape}.')
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise TypeError(f'{name} must be floating point, got dtype {jnp.result_type(x)}.')


def _check_maps(maps, name: str, shape: tuple[int, ...] | None = None):
  got = tuple(np.shape(maps))
  if shape is not None and got != shape:
    raise ValueError(f'{name} must have shape {shape}, got {got}.')
  if len(got) < 2 or 0 in got:
    raise ValueError(f'{name} must be a non-empty batch of maps [B, ...], got shape {got}.')
  if not jnp.issubdtype(jnp.result_type(maps), jnp.floating):
    raise TypeError(f'{name} must be floating point, got dtype {jnp.result_type(maps)}.')


def pixel_ranks(scores: jax.typing.ArrayLike, tiebreak: jax.typing.ArrayLike) -> jax.Array:
  """Rank of every pixel by decreasing score, equal scores in increasing ``tiebreak`` order.

  Args:
    scores: f32[B, ...] one map per example, e.g. f32[B,H,W].
    tiebreak: f32 of ``scores``'s shape, distinct values per map (e.g. uniform random): it
      orders equal scores, so an all-zero region is taken in random rather than row-major
      order.

  Returns:
    i32 of ``scores``'s shape: 0 for the top pixel of its map; ``ranks < k`` marks the top k.

  Raises:
    ValueError, TypeError: malformed ``scores`` or ``tiebreak``; NaN or inf in either (when
      concrete).
  """
  _check_maps(scores, 'scores')
  _check_maps(tiebreak, 'tiebreak', tuple(np.shape(scores)))
  _checks.check_finite(scores, name='scores')
  _checks.check_finite(tiebreak, name='tiebreak')
  shape = np.shape(scores)
  scores = jnp.asarray(scores).reshape(shape[0], -1)
  tiebreak = jnp.asarray(tiebreak).reshape(shape[0], -1)
  iota = jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1)
  _, _, order = jax.lax.sort((-scores, tiebreak, iota), dimension=1, num_keys=2)
  _, ranks = jax.lax.sort((order, iota), dimension=1, num_keys=1)
  return ranks.reshape(shape)


def replace_top(x: jax.typing.ArrayLike, ranks: jax.typing.ArrayLike,
                fill: jax.typing.ArrayLike, k: int | jax.typing.ArrayLike) -> jax.Array:
  """``x`` with every pixel of rank < k (all its channels) replaced by ``fill``.

  Args:
    x: f32[B,H,W,C] images.
    ranks: i32[B,H,W] pixel ranks (``pixel_ranks``).
    fill: the replacement, broadcastable to [B,H,W,C] (f32[C] a colour, f32[B,H,W,C] images).
    k: pixels replaced per image (an int, or a traced i32 scalar).

  Returns:
    f32[B,H,W,C].

  Raises:
    ValueError, TypeError: malformed ``x``, ``ranks`` or ``fill``.
  """
  _check_images(x, 'x')
  shape = tuple(np.shape(x))
  if tuple(np.shape(ranks)) != shape[:3]:
    raise ValueError(f'ranks must have shape {shape[:3]} (one rank per pixel of x), got '
                     f'{tuple(np.shape(ranks))}.')
  try:
    fits = np.broadcast_shapes(np.shape(fill), shape) == shape
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(f'fill must broadcast to x\'s shape {shape}, got {np.shape(fill)}.')
  return jnp.where((jnp.asarray(ranks) < k)[..., None], fill, x)


def gaussian_blur(x: jax.typing.ArrayLike, sigma: float) -> jax.Array:
  """Per-channel Gaussian blur, edges repeated, kernel radius ``ceil(3 sigma)``.

  Matches ``scipy.ndimage.gaussian_filter(x, (0, sigma, sigma, 0), mode='nearest',
  radius=(0, r, r, 0))`` with ``r = ceil(3 sigma)``.

  Args:
    x: f32[B,H,W,C].
    sigma: standard deviation in pixels, > 0 (static).

  Returns:
    f32[B,H,W,C].

  Raises:
    ValueError, TypeError: malformed ``x`` or ``sigma``.
  """
  _check_images(x, 'x')
  if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.number)) or not (
      np.isfinite(sigma) and sigma > 0):
    raise ValueError(f'sigma must be a finite number > 0 (pixels, static), got {sigma!r}.')
  x = jnp.asarray(x)
  radius = int(math.ceil(3 * sigma))
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-t ** 2 / (2 * sigma ** 2))
  kernel = jnp.asarray(kernel / kernel.sum(), x.dtype)
  c = x.shape[-1]
  x = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode='edge')
  for shape in ((-1, 1, 1, 1), (1, -1, 1, 1)):
    x = jax.lax.conv_general_dilated(
        x, jnp.tile(kernel.reshape(shape), (1, 1, 1, c)), (1, 1), 'VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)
  return x


def fill_images(x: jax.typing.ArrayLike, fill: str, *, mean: jax.typing.ArrayLike | None = None,
                keys: jax.Array | None = None, sigma: float = 2.0) -> jax.Array:
  """What replaced pixels become, one image per image of ``x``.

  Args:
    x: f32[B,H,W,C] images.
    fill: one of ``FILLS``: 'mean' (the colour ``mean`` everywhere), 'blur'
      (``gaussian_blur(x, sigma)``) or 'noise' (uniform in [0, 1), one draw per image).
    mean: f32[C], needed by 'mean' (e.g. the dataset's mean colour).
    keys: key[B], one per image, needed by 'noise'.
    sigma: the blur's standard deviation in pixels ('blur').

  Returns:
    f32[B,H,W,C].

  Raises:
    ValueError: an unknown ``fill``, or its argument missing or of the wrong shape (checked
      before ``x`` is converted to a device array).
    TypeError: non-float ``x``.
  """
  _check_images(x, 'x')
  shape = tuple(np.shape(x))
  if fill not in FILLS:
    raise ValueError(f'fill must be one of {FILLS}, got {fill!r}.')
  if fill == 'mean' and (mean is None or np.shape(mean) != shape[-1:]):
    raise ValueError(f"mean must be a colour f32[{shape[-1]}] for fill='mean', got "
                     f'{None if mean is None else np.shape(mean)}.')
  if fill == 'noise' and (keys is None or np.shape(keys) != shape[:1]):
    raise ValueError(f"keys must be key[{shape[0]}] (one per image) for fill='noise', got "
                     f'{None if keys is None else np.shape(keys)}.')
  if fill == 'blur':
    return gaussian_blur(x, sigma)
  x = jnp.asarray(x)
  if fill == 'mean':
    return jnp.broadcast_to(jnp.asarray(mean).astype(x.dtype), x.shape)
  return jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], x.dtype))(keys)


def perturbation_curves(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                        scores: jax.typing.ArrayLike, tiebreak: jax.typing.ArrayLike,
                        fill: jax.typing.ArrayLike,
                        num_pixels: jax.typing.ArrayLike) -> jax.Array:
  """Predictions after replacing each ranking's top pixels by ``fill``, for every count.

  One vmapped model evaluation over rankings x counts x images (no loop over the counts).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B,H,W,C] images in [0, 1].
    scores: f32[R,B,H,W] pixel rankings (higher first), e.g. one map per method.
    tiebreak: f32[B,H,W] order of equal scores (shared by the rankings).
    fill: f32[B,H,W,C] values in [0, 1] of replaced pixels (``fill_images``).
    num_pixels: i32[P] pixels replaced (``pixel_counts``).

  Returns:
    i32[B,R,P] predicted classes.

  Raises:
    ValueError, TypeError: malformed arguments (shapes checked against ``x``); when
      concrete, ``x`` or ``fill`` with NaN/inf or outside [0, 1], ``scores`` or ``tiebreak``
      with NaN/inf.
  """
  _check_images(x, 'x')
  b, h, w, _ = np.shape(x)
  _check_maps(tiebreak, 'tiebreak', (b, h, w))
  if len(np.shape(scores)) != 4 or tuple(np.shape(scores)[1:]) != (b, h, w):
    raise ValueError(f'scores must be f32[R,{b},{h},{w}] (rankings of x\'s pixels), got shape '
                     f'{tuple(np.shape(scores))}.')
  _check_maps(scores, 'scores')
  if tuple(np.shape(fill)) != tuple(np.shape(x)):
    raise ValueError(f'fill must have x\'s shape {tuple(np.shape(x))}, got '
                     f'{tuple(np.shape(fill))}.')
  _checks.check_pixels(x)
  _checks.check_pixels(fill, name='fill')
  _checks.check_finite(scores, name='scores')
  _checks.check_finite(tiebreak, name='tiebreak')
  if np.ndim(num_pixels) != 1 or not jnp.issubdtype(jnp.result_type(num_pixels), jnp.integer):
    raise ValueError(f'num_pixels must be a 1-D integer array, got {num_pixels!r}.')
  if _checks.is_concrete(num_pixels) and not np.all(
      (np.asarray(num_pixels) >= 0) & (np.asarray(num_pixels) <= h * w)):
    raise ValueError(f'num_pixels must lie in [0, {h * w}] (pixels per image), got '
                     f'{num_pixels!r}.')
  r = np.shape(scores)[0]
  x, scores = jnp.asarray(x), jnp.asarray(scores)
  ranks = pixel_ranks(scores.reshape(r * b, h, w),
                      jnp.tile(jnp.asarray(tiebreak), (r, 1, 1))).reshape(r, b, h, w)

  def predict(rank, k):
    return apply_fn(params, replace_top(x, rank, fill, k)).argmax(-1)

  preds = jax.vmap(lambda rank: jax.vmap(lambda k: predict(rank, k))(num_pixels))(ranks)
  return jnp.transpose(preds, (2, 0, 1))
