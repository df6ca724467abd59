"""LIME for images: superpixel on/off perturbations and a weighted ridge surrogate solved in JAX."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import skimage.segmentation

from advsal_jax import _checks
from advsal_jax.saliency import _gradients
from advsal_jax.types import ApplyFn, Params, PRNGKey

SEGMENTATIONS = ('quickshift', 'felzenszwalb', 'slic')
# LIME's image defaults for quickshift (its kernel_size is scaled to the image, see
# segment_images); scikit-image's defaults for the others.
_DEFAULT_KWARGS = {
    'quickshift': {'max_dist': 200, 'ratio': 0.2, 'rng': 42},
    'felzenszwalb': {'scale': 1.0, 'sigma': 0.8, 'min_size': 20},
    'slic': {'n_segments': 100, 'compactness': 10.0, 'start_label': 0},
}


class LimeResult(NamedTuple):
  """What ``lime_explain`` returns.

  Attributes:
    pixel_weights: f32[B,H,W,C] the coefficient of each pixel's superpixel (equal over C).
    coefficients: f32[B,S] surrogate coefficient of each segment (0 for labels absent from
      an image).
    intercept: f32[B] surrogate intercept.
    ranking: i32[B,S] segment labels sorted by decreasing coefficient (absent labels last).
    segments: i32[B,H,W] the superpixel labels used, in [0, S).
  """
  pixel_weights: jax.Array
  coefficients: jax.Array
  intercept: jax.Array
  ranking: jax.Array
  segments: jax.Array


def segment_images(x: jax.typing.ArrayLike, *, segmentation: str = 'quickshift',
                   **kwargs: Any) -> np.ndarray:
  """Superpixels of each image with scikit-image, on the host.

  Args:
    x: f32[B,H,W,C] concrete images in [0, 1] (C = 1 or 3), finite.
    segmentation: 'quickshift' (LIME's defaults max_dist=200, ratio=0.2, and LIME's
      kernel_size=4 scaled from its 224-pixel images to this size: ``max(1, round(4 *
      min(H, W) / 224))``, so 1 on 32x32 CIFAR-10, where kernel_size=4 merges most images
      into a single segment), 'felzenszwalb' or 'slic' (scikit-image's defaults).
    **kwargs: override the segmentation function's parameters.

  Returns:
    int32[B,H,W] labels, renumbered per image to 0..S_b-1.

  Raises:
    ValueError: unknown segmentation, wrong rank, an empty batch, NaN/inf or pixels
      outside [0, 1].
    TypeError: ``x`` is a tracer (segment outside ``jax.jit`` and pass ``segments``), or not
      floating point.
  """
  if segmentation not in SEGMENTATIONS:
    raise ValueError(f'segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}.')
  if isinstance(x, jax.core.Tracer):
    raise TypeError('segment_images runs scikit-image on the host and needs concrete x; '
                    'under jax.jit compute segments beforehand and pass segments=.')
  _checks.check_images(x)
  _checks.check_pixels(x)
  images = np.asarray(x, np.float64)
  params = {**_DEFAULT_KWARGS[segmentation], **kwargs}
  if segmentation == 'quickshift':
    params.setdefault('kernel_size', max(1, round(4 * min(images.shape[1:3]) / 224)))
  out = np.empty(images.shape[:3], np.int32)
  for b, image in enumerate(images):
    if segmentation == 'quickshift':
      rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
      labels = skimage.segmentation.quickshift(rgb, **params)
    else:
      fn = getattr(skimage.segmentation, segmentation)
      gray = image.shape[-1] == 1
      labels = fn(image[..., 0] if gray else image, channel_axis=None if gray else -1,
                  **params)
    out[b] = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
  return out


def weighted_ridge(z: jax.Array, y: jax.Array, w: jax.Array, *,
                   alpha: float) -> tuple[jax.Array, jax.Array]:
  """Ridge regression ``min sum_n w_n (y_n - c - z_n.beta)^2 + alpha |beta|^2`` (c unpenalised).

  Args:
    z: f32[N,S] features; y: f32[N] targets; w: f32[N] non-negative sample weights.
    alpha: ridge penalty (> 0 keeps the system well posed).

  Returns:
    (beta f32[S], c f32[]): the same solution as scikit-learn's ``Ridge(alpha)`` fitted with
    ``sample_weight=w``.
  """
  w_sum = w.sum()
  z_mean = (w[:, None] * z).sum(axis=0) / w_sum
  y_mean = (w * y).sum() / w_sum
  zc = z - z_mean[None, :]
  yc = y - y_mean
  gram = zc.T @ (w[:, None] * zc) + alpha * jnp.eye(z.shape[1], dtype=z.dtype)
  beta = jnp.linalg.solve(gram, zc.T @ (w * yc))
  return beta, y_mean - z_mean @ beta


def lime_explain(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                 target: jax.typing.ArrayLike, *, key: PRNGKey | None = None,
                 segments: jax.typing.ArrayLike | None = None, num_segments: int | None = None,
                 num_samples: int = 1000, segmentation: str = 'quickshift',
                 segmentation_kwargs: dict[str, Any] | None = None,
                 kernel_width: float = 0.25, ridge_alpha: float = 1.0,
                 fill: jax.typing.ArrayLike | None = None,
                 batch_size: int | None = 64) -> LimeResult:
  """LIME for images, returning the full explanation (see ``LimeResult``).

  Explains the pre-softmax logit of ``target[b]`` (LIME's reference code explains the
  probability; the logit keeps all methods of this package comparable). For each image:
  ``num_samples`` binary vectors ``z`` over its superpixels (sample 0 is all ones, the
  others uniform on/off), the model's logit on the image with "off" superpixels replaced
  by ``fill``, the kernel ``sqrt(exp(-d^2 / kernel_width^2))`` on the cosine distance ``d``
  between ``z`` and the all-ones vector, and a weighted ridge fit (``weighted_ridge``).

  When every perturbed copy gets the same logit (a model that ignores ``x``, or an image of
  one segment filled with its own mean colour) the coefficients are 0 and the intercept is
  that logit. An image of one segment has the single coefficient of the one-feature ridge.

  Randomness: example ``b`` uses ``split(key, B)[b]`` (or ``key[b]``), sample ``n`` the key
  ``fold_in(that_key, n)`` drawing ``num_segments`` bits; so results do not depend on
  ``batch_size`` or on the other examples, given the same ``num_segments``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``, batch-independent (eval mode).
    params: the model variables passed to ``apply_fn``.
    x: f32[B,H,W,C] images in [0, 1].
    target: i32[B] class indices in [0, K).
    key: required typed key, shape ``()`` or ``(B,)``.
    segments: i32[B,H,W] superpixel labels in [0, num_segments); default:
      ``segment_images(x, segmentation=..., **segmentation_kwargs)`` (host, not under jit).
    num_segments: static number of labels S; default ``max(segments) + 1`` (needs concrete
      segments). Required under ``jax.jit``.
    num_samples: perturbed copies per image. Static under ``jax.jit``.
    segmentation: 'quickshift', 'felzenszwalb' or 'slic' when ``segments`` is None.
    segmentation_kwargs: parameters of the segmentation function.
    kernel_width: width of the exponential kernel on cosine distance, > 0.
    ridge_alpha: ridge penalty of the surrogate, > 0.
    fill: value of "off" superpixels: None (each superpixel's mean colour), a scalar or
      f32[C] in [0, 1].
    batch_size: perturbed copies per image evaluated at once (``None``: all); memory holds
      ``batch_size * B`` images. Static under ``jax.jit``.

  Returns:
    ``LimeResult``.

  Raises:
    ValueError: missing key, bad segments/num_segments/num_samples/batch_size/fill/
      kernel_width/ridge_alpha, malformed ``x``/``target`` (wrong shape, an empty batch,
      NaN/inf or pixels outside [0, 1]).
    TypeError: legacy key, non-float ``x``, non-integer ``target`` or segments.

  References:
    Ribeiro, Singh, Guestrin, "Why Should I Trust You?", arXiv:1602.04938.
  """
  _checks.check_classifier_inputs(apply_fn, params, x, target, name='target')
  _checks.check_count(num_samples, 'num_samples')
  if batch_size is not None:
    _checks.check_count(batch_size, 'batch_size')
  x_shape = tuple(np.shape(x))
  batch, height, width, channels = x_shape
  if fill is not None:
    if np.shape(fill) not in ((), (channels,)):
      raise ValueError(f'fill must be a scalar or f32[C]=({channels},), got {np.shape(fill)}.')
    _checks.check_pixels(fill, name='fill')
  _checks.check_scalar(kernel_width, 'kernel_width', positive=True)
  _checks.check_scalar(ridge_alpha, 'ridge_alpha', positive=True)
  _gradients.check_key(key, batch, 'lime')
  if segments is None:
    if isinstance(x, jax.core.Tracer):
      raise ValueError('lime segments images on the host; under jax.jit pass segments= '
                       '(e.g. from segment_images) and num_segments=.')
    segments = segment_images(x, segmentation=segmentation, **(segmentation_kwargs or {}))
  if tuple(np.shape(segments)) != x_shape[:3]:
    raise ValueError(f'segments must be i32[B,H,W]={x_shape[:3]}, got {np.shape(segments)}.')
  if not jnp.issubdtype(jnp.result_type(segments), jnp.integer):
    raise TypeError(f'segments must be integer labels, got {jnp.result_type(segments)}.')
  concrete = not isinstance(segments, jax.core.Tracer)
  if num_segments is None:
    if not concrete:
      raise ValueError('num_segments (static) is required when segments is traced.')
    num_segments = int(np.max(segments)) + 1
  _checks.check_count(num_segments, 'num_segments')
  if concrete and (np.min(segments) < 0 or np.max(segments) >= num_segments):
    raise ValueError(f'segments must lie in [0, {num_segments}), got '
                     f'[{np.min(segments)}, {np.max(segments)}].')

  keys = _gradients.per_example_keys(key, batch, 'lime')
  x = jnp.asarray(x)
  target = jnp.asarray(target)
  segments = jnp.asarray(segments, jnp.int32)
  s = num_segments
  flat_seg = segments.reshape(batch, -1)
  counts = jax.vmap(lambda g: jnp.zeros(s, x.dtype).at[g].add(1.0))(flat_seg)  # [B,S]
  present = (counts > 0).astype(x.dtype)
  if fill is None:
    sums = jax.vmap(lambda g, v: jnp.zeros((s, channels), x.dtype).at[g].add(v))(
        flat_seg, x.reshape(batch, -1, channels))
    means = sums / jnp.maximum(counts, 1.0)[..., None]
    fill_image = jax.vmap(lambda m, g: m[g])(means, segments)  # [B,H,W,C]
  else:
    fill_image = jnp.broadcast_to(jnp.asarray(fill, x.dtype), x.shape)

  def draw(k):
    bits = jax.vmap(lambda n: jax.random.bernoulli(jax.random.fold_in(k, n), 0.5, (s,)))(
        jnp.arange(num_samples))
    return bits.at[0].set(True).astype(x.dtype)

  z = jax.vmap(draw)(keys) * present[:, None, :]  # [B,N,S]

  def query(z_chunk):  # [c,B,S] -> [c,B]
    c = z_chunk.shape[0]
    on = jax.vmap(lambda zs: jax.vmap(lambda zb, g: zb[g])(zs, segments))(z_chunk)[..., None]
    images = on * x[None] + (1.0 - on) * fill_image[None]
    t = jnp.tile(target, c)
    return _gradients.target_logits(apply_fn, params, images.reshape(c * batch, *x_shape[1:]),
                                   t).reshape(c, batch)

  size = num_samples if batch_size is None else min(batch_size, num_samples)
  num_chunks = -(-num_samples // size)
  z_t = jnp.moveaxis(z, 1, 0)
  z_t = jnp.concatenate([z_t, jnp.zeros((num_chunks * size - num_samples, *z_t.shape[1:]),
                                        z_t.dtype)])
  # lax.map over chunks is sequential and traces query, so perturbed copies (which leave
  # the model's concrete-input checks) never exist beyond one chunk.
  y = jax.lax.map(query, z_t.reshape(num_chunks, size, batch, s))
  y = jnp.moveaxis(y.reshape(num_chunks * size, batch)[:num_samples], 0, 1)  # [B,N]

  norms = jnp.sqrt(z.sum(axis=2)) * jnp.sqrt(present.sum(axis=1))[:, None]
  cosine = z.sum(axis=2) / jnp.maximum(norms, 1e-12)
  distance = 1.0 - cosine
  weights = jnp.sqrt(jnp.exp(-distance**2 / kernel_width**2))
  coef, intercept = jax.vmap(lambda zz, yy, ww: weighted_ridge(zz, yy, ww, alpha=ridge_alpha))(
      z, y, weights)
  ranking = jnp.argsort(jnp.where(present > 0, -coef, jnp.inf), axis=1).astype(jnp.int32)
  pixel = jax.vmap(lambda c, g: c[g])(coef, segments)[..., None]
  return LimeResult(jnp.broadcast_to(pixel, x.shape), coef, intercept, ranking, segments)


def lime(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
         target: jax.typing.ArrayLike, *, key: PRNGKey | None = None, **kwargs: Any) -> jax.Array:
  """LIME per-pixel weights: ``lime_explain(...).pixel_weights``, f32[B,H,W,C].

  Explains the pre-softmax logit of ``target[b]``; ``key`` is required. Keyword arguments
  and static ones are those of ``lime_explain``.

  References:
    Ribeiro, Singh, Guestrin, "Why Should I Trust You?", arXiv:1602.04938.
  """
  return lime_explain(apply_fn, params, x, target, key=key, **kwargs).pixel_weights
