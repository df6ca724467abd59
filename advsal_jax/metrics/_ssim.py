"""Structural similarity (SSIM) between pairs of maps, batched, matching scikit-image.

``mean_ssim`` equals ``skimage.metrics.structural_similarity(a[i], b[i], data_range=...,
gaussian_weights=..., sigma=..., win_size=..., use_sample_covariance=..., K1=..., K2=...,
channel_axis=-1 for [B,H,W,C] inputs)`` to about 1e-5; ``ssim`` returns the local SSIM map
(skimage's ``full=True`` output). The separable filters, reflect boundary mode included, are
folded into two small matrices so a batch costs a few matrix products.

Settings. The defaults are those of Wang et al. (2004), which skimage's documentation names as
the way to match the original SSIM: an 11-tap Gaussian window with sigma=1.5 (truncate 3.5),
population covariance (``use_sample_covariance=False``), K1=0.01, K2=0.03. Study 000 reports
"mSSIM" without stating its settings; advsal's studies should use these defaults with
``data_range=1.0`` on maps min-max normalised to [0, 1] (how saliency maps are displayed and
compared), so that C1 and C2 have the magnitudes they were designed for. skimage's own
defaults (a 7x7 uniform window, sample covariance) are available with
``gaussian_weights=False, win_size=7, use_sample_covariance=True`` and are tested too.

References:
  Wang, Bovik, Sheikh, Simoncelli, Image quality assessment: from error visibility to
    structural similarity, IEEE TIP 13(4), 2004 (doi:10.1109/TIP.2003.819861).
  Liu, Liu, Hosseini, Analyzing the Effect of Adversarial Inputs on Saliency Maps (study 000).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from advsal_jax.metrics import _checks


_TRUNCATE = 3.5  # skimage's choice: an 11-tap filter at sigma = 1.5, as in Wang et al.


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
  """scipy.ndimage 'reflect' boundary (d c b a | a b c d | d c b a) for any integer index."""
  j = np.mod(i, 2 * n)
  return np.where(j >= n, 2 * n - 1 - j, j)


def _filter_matrix(n: int, weights: np.ndarray) -> np.ndarray:
  """f64[n, n] F with ``F @ x`` = scipy.ndimage.correlate1d(x, weights, mode='reflect')."""
  r = len(weights) // 2
  f = np.zeros((n, n))
  rows = np.arange(n)
  for k, w in zip(range(-r, r + 1), weights):
    np.add.at(f, (rows, _reflect_index(rows + k, n)), w)
  return f


def _window_weights(gaussian_weights: bool, sigma: float, win_size: int) -> np.ndarray:
  if gaussian_weights:
    r = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 / (sigma * sigma) * x * x)
    return w / w.sum()
  return np.full(win_size, 1.0 / win_size)


def _resolve_win_size(gaussian_weights: bool, sigma: float, win_size: int | None) -> int:
  if win_size is None:
    return 2 * int(_TRUNCATE * sigma + 0.5) + 1 if gaussian_weights else 7
  return win_size


def _check_args(a, b, *, data_range, gaussian_weights, sigma, win_size, k1, k2):
  """Validates the arguments before tracing; returns (a, b, win_size) with a, b as f32."""
  a, b = _checks.check_pair(a, b, min_ndim=3, max_ndim=4)
  if not isinstance(sigma, (int, float)) or not 0 < sigma < float('inf'):
    raise ValueError(f'sigma must be a finite positive number; got {sigma!r}.')
  if win_size is not None and (not isinstance(win_size, int) or win_size < 1
                               or win_size % 2 == 0):
    raise ValueError(f'win_size must be an odd positive int or None; got {win_size!r}.')
  if not (0 <= k1 < float('inf') and 0 <= k2 < float('inf')):
    raise ValueError(f'k1 and k2 must be finite and >= 0; got k1={k1!r}, k2={k2!r}.')
  if not isinstance(data_range, jax.core.Tracer) and not np.all(
      (np.asarray(data_range) > 0) & np.isfinite(data_range)):
    raise ValueError(f'data_range must be finite and > 0; got {data_range!r}.')
  if np.ndim(data_range) != 0:
    raise ValueError(f'data_range must be a scalar; got shape {np.shape(data_range)}.')
  win = _resolve_win_size(gaussian_weights, sigma, win_size)
  height, width = a.shape[1], a.shape[2]
  if height < win or width < win:
    raise ValueError(f'a and b must be at least win_size x win_size = {win}x{win} pixels '
                     f'(gaussian_weights={gaussian_weights}, sigma={sigma}); got maps of '
                     f'{height}x{width} from shape {a.shape}.')
  return a, b, win


def _ssim_map(a: jax.Array, b: jax.Array, *, data_range, gaussian_weights, sigma, win_size,
              use_sample_covariance, k1, k2, crop: int = 0) -> jax.Array:
  """The local SSIM map, f32[B, H - 2 crop, W - 2 crop(, C)] ([B,H,W] or [B,H,W,C] input)."""
  weights = _window_weights(gaussian_weights, sigma, win_size)
  height, width = a.shape[1], a.shape[2]
  # Only the rows of the filter matrices for the pixels kept are needed.
  fh = jnp.asarray(_filter_matrix(height, weights)[crop:height - crop], jnp.float32)
  fw = jnp.asarray(_filter_matrix(width, weights)[crop:width - crop], jnp.float32)
  spec = 'ih,bhw...,jw->bij...'

  def filt(x):
    return jnp.einsum(spec, fh, x, fw, precision=jax.lax.Precision.HIGHEST)

  # Filters preserve constants, so (co)variances can be computed on maps centred per example
  # and channel: this avoids the f32 cancellation in E[x^2] - E[x]^2 for maps with a large mean.
  spatial = (1, 2)
  ac = a - jnp.mean(a, axis=spatial, keepdims=True)
  bc = b - jnp.mean(b, axis=spatial, keepdims=True)
  mac, mbc = filt(ac), filt(bc)
  ux = mac + jnp.mean(a, axis=spatial, keepdims=True)
  uy = mbc + jnp.mean(b, axis=spatial, keepdims=True)
  n_window = win_size ** 2
  cov_norm = n_window / (n_window - 1) if use_sample_covariance else 1.0
  vx = cov_norm * (filt(ac * ac) - mac * mac)
  vy = cov_norm * (filt(bc * bc) - mbc * mbc)
  vxy = cov_norm * (filt(ac * bc) - mac * mbc)
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  num = (2 * ux * uy + c1) * (2 * vxy + c2)
  den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
  return num / den


def ssim(a: ArrayLike, b: ArrayLike, *, data_range: float, gaussian_weights: bool = True,
         sigma: float = 1.5, win_size: int | None = None, use_sample_covariance: bool = False,
         k1: float = 0.01, k2: float = 0.03) -> jax.Array:
  """Local SSIM map of paired maps, as skimage's ``structural_similarity(..., full=True)``.

  Args:
    a: f32[B,H,W] grayscale maps or f32[B,H,W,C] multichannel maps (channels handled
      separately); finite.
    b: same shape as ``a``.
    data_range: the dynamic range of the maps (max possible - min possible), e.g. 1.0 for maps
      in [0, 1]; > 0. Sets C1 = (k1 * data_range)**2 and C2 = (k2 * data_range)**2.
    gaussian_weights: Gaussian window (sigma, truncated at 3.5 sigma) if True, else a uniform
      ``win_size`` x ``win_size`` window.
    sigma: the Gaussian's standard deviation in pixels; > 0.
    win_size: odd window side. None: 2 * int(3.5 * sigma + 0.5) + 1 (11 at sigma 1.5) for the
      Gaussian window, 7 for the uniform one. With ``gaussian_weights`` it only sets the
      border cropped by ``mean_ssim`` (as in skimage).
    use_sample_covariance: normalise (co)variances by N - 1 instead of N.
    k1: luminance stabiliser constant, >= 0.
    k2: contrast stabiliser constant, >= 0.

  Returns:
    f32 of ``a``'s shape: SSIM at each pixel, in [-1, 1]. Boundary pixels use scipy's
    'reflect' extension, as skimage does. Two constant maps ``u`` and ``v`` (all-zero ones
    included) get the luminance term ``(2 u v + C1) / (u**2 + v**2 + C1)`` everywhere: 1 when
    they are equal.

  Raises:
    ValueError: shapes differ, rank not 3 or 4, non-finite values, bad ``data_range``,
      ``sigma``, ``win_size``, ``k1``/``k2``, or maps smaller than the window.
    TypeError: a non-real dtype.
  """
  a, b, win = _check_args(a, b, data_range=data_range, gaussian_weights=gaussian_weights,
                          sigma=sigma, win_size=win_size, k1=k1, k2=k2)
  return _ssim_map(a, b, data_range=data_range, gaussian_weights=gaussian_weights,
                   sigma=sigma, win_size=win, use_sample_covariance=use_sample_covariance,
                   k1=k1, k2=k2)


def mean_ssim(a: ArrayLike, b: ArrayLike, *, data_range: float, gaussian_weights: bool = True,
              sigma: float = 1.5, win_size: int | None = None,
              use_sample_covariance: bool = False, k1: float = 0.01,
              k2: float = 0.03) -> jax.Array:
  """Mean SSIM (mSSIM) of paired maps, as ``skimage.metrics.structural_similarity``.

  The local SSIM map (see ``ssim``, same arguments) is averaged over the pixels at least
  ``(win_size - 1) // 2`` from the border (skimage's crop), then over channels.

  Returns:
    f32[B] in [-1, 1]; 1 for identical maps (constant maps included); for two constant maps
    the luminance term (see ``ssim``).

  Raises:
    ValueError, TypeError: as ``ssim``.
  """
  a, b, win = _check_args(a, b, data_range=data_range, gaussian_weights=gaussian_weights,
                          sigma=sigma, win_size=win_size, k1=k1, k2=k2)
  s = _ssim_map(a, b, data_range=data_range, gaussian_weights=gaussian_weights, sigma=sigma,
                win_size=win, use_sample_covariance=use_sample_covariance, k1=k1, k2=k2,
                crop=(win - 1) // 2)
  return jnp.mean(s.reshape(s.shape[0], -1), axis=1)
