"""SmoothGrad: average a gradient method over Gaussian-noised copies of the input."""

from typing import Callable

import jax
import jax.numpy as jnp

from advsal_jax import _checks
from advsal_jax.saliency import _gradients
from advsal_jax.types import ApplyFn, Params, PRNGKey


def smoothgrad(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
               target: jax.typing.ArrayLike, *, key: PRNGKey | None = None,
               num_samples: int = 50, noise_level: float = 0.15,
               base: Callable[..., jax.Array] = _gradients.gradient, squared: bool = False,
               batch_size: int | None = 16) -> jax.Array:
  """SmoothGrad: ``mean_i base(x + g_i)`` with ``g_i ~ N(0, sigma^2)``.

  Explains the pre-softmax logit of ``target[b]`` (through ``base``). The noise std of each
  image is ``sigma_b = noise_level * (max(x_b) - min(x_b))``. Noisy copies are not clipped
  to [0, 1] (as in the reference implementation).

  Randomness: example ``b`` uses the key ``jax.random.split(key, B)[b]`` (or ``key[b]`` when
  a batch of ``B`` keys is passed) and sample ``i`` the key ``fold_in(that_key, i)``. So
  the result for ``x[b]`` does not depend on the other examples (pass the matching key
  batch ``split(key, B)[b:b+1]`` to reproduce it alone), nor on ``batch_size``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``, batch-independent (eval mode).
    params: the model variables passed to ``apply_fn``.
    x: f32[B,H,W,C] images in [0, 1] (finite and in range checked when concrete).
    target: i32[B] class indices in [0, K).
    key: required typed key (``jax.random.key``), shape ``()`` or ``(B,)``.
    num_samples: number of noisy copies per image. Static under ``jax.jit``.
    noise_level: noise std as a fraction of each image's value range, a finite scalar >= 0.
    base: any deterministic method of this package with the saliency signature, e.g.
      ``gradient``, ``gradient_x_input`` or ``guided_backprop``. Static under ``jax.jit``.
    squared: average the squared maps (SmoothGrad-Squared) instead of the maps.
    batch_size: noisy copies per image evaluated at once (``None``: all). Memory holds
      ``batch_size * B`` copies; the result does not depend on it. Static under ``jax.jit``.

  Returns:
    f32[B,H,W,C] averaged attribution.

  Raises:
    ValueError: missing key, bad ``num_samples``/``batch_size``/``noise_level``, malformed
      inputs (wrong shape, an empty batch, NaN/inf or pixels outside [0, 1]).
    TypeError: a legacy (untyped) key, non-float ``x``, non-integer ``target``, a ``base``
      that is not callable.

  References:
    Smilkov et al., SmoothGrad: removing noise by adding noise, arXiv:1706.03825.
  """
  _checks.check_classifier_inputs(apply_fn, params, x, target, name='target')
  _checks.check_count(num_samples, 'num_samples')
  if batch_size is not None:
    _checks.check_count(batch_size, 'batch_size')
  _checks.check_scalar(noise_level, 'noise_level')
  if not callable(base):
    raise TypeError(f'base must be a saliency method (callable), got {base!r}.')
  x = jnp.asarray(x)
  target = jnp.asarray(target)
  batch = x.shape[0]
  keys = _gradients.per_example_keys(key, batch, 'smoothgrad')
  sigma = noise_level * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
  sigma = sigma.reshape(batch, 1, 1, 1)

  def chunk_sum(sample_ids, valid):
    def noise(i):
      return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:],
                                                  x.dtype))(keys)
    eps = jax.vmap(noise)(sample_ids)  # [c,B,H,W,C]
    c = sample_ids.shape[0]
    noisy = (x[None] + sigma[None] * eps).reshape(c * batch, *x.shape[1:])
    maps = base(apply_fn, params, noisy, jnp.tile(target, c)).reshape(c, *x.shape)
    if squared:
      maps = maps * maps
    return jnp.einsum('c,cbhwk->bhwk', valid, maps)

  total = _gradients.chunked_sum(chunk_sum, jnp.arange(num_samples), num_items=num_samples,
                                batch_size=batch_size)
  return total / num_samples
