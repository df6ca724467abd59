"""Per-example norms of adversarial perturbations ``delta = x_adv - x``.

The attacks of the studies are budgeted or reported in one of three norms: L-inf (FGSM, BIM,
PGD, MIM), L2 (Carlini-Wagner, DeepFool) and L0 (JSMA, which counts modified features).

References:
  Carlini & Wagner, Towards Evaluating the Robustness of Neural Networks, arXiv:1608.04644
    (the three distance metrics).
  Papernot et al., The Limitations of Deep Learning in Adversarial Settings, arXiv:1511.07528
    (JSMA; L0 as the fraction of modified features).
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from advsal_jax.metrics import _checks


def l0_norm(delta: ArrayLike, *, atol: float = 0.0, per_pixel: bool = False) -> jax.Array:
  """Number of entries of each perturbation whose magnitude exceeds ``atol``.

  Args:
    delta: f32[B, ...] perturbations, e.g. [B,H,W,C]; finite.
    atol: entries with ``|delta| <= atol`` count as unchanged, >= 0 (e.g. half a quantisation
      step, 0.5 / 255, for perturbations of images stored as uint8).
    per_pixel: count pixels with any changed channel instead of entries; ``delta`` must then
      be [B,H,W,C].

  Returns:
    f32[B] counts in [0, H*W*C] (or [0, H*W] with ``per_pixel``); exact below 2**24.

  Raises:
    ValueError: ``delta`` has fewer than 2 dims (4 with ``per_pixel``), is empty or
      non-finite, or ``atol`` is negative or not finite.
    TypeError: a non-real dtype.
  """
  if not isinstance(atol, (int, float)) or not 0 <= atol < float('inf'):
    raise ValueError(f'atol must be a finite number >= 0; got {atol!r}.')
  d = _checks.check_array(delta, name='delta', min_ndim=4 if per_pixel else 2,
                   max_ndim=4 if per_pixel else None)
  changed = jnp.abs(d) > atol
  if per_pixel:
    changed = jnp.any(changed, axis=-1)
  return jnp.sum(changed.reshape(d.shape[0], -1), axis=1).astype(jnp.float32)


def l2_norm(delta: ArrayLike) -> jax.Array:
  """Euclidean norm of each perturbation over all its entries.

  Args:
    delta: f32[B, ...] perturbations; finite.

  Returns:
    f32[B], >= 0.

  Raises:
    ValueError: ``delta`` has fewer than 2 dims, is empty or non-finite.
    TypeError: a non-real dtype.
  """
  d = _checks.check_array(delta, name='delta')
  d = d.reshape(d.shape[0], -1)
  # Scale by the largest entry first so tiny perturbations do not underflow in f32 squares.
  scale = jnp.max(jnp.abs(d), axis=1)
  safe = jnp.where(scale > 0, scale, 1.0)
  return scale * jnp.sqrt(jnp.sum(jnp.square(d / safe[:, None]), axis=1))


def linf_norm(delta: ArrayLike) -> jax.Array:
  """Largest absolute entry of each perturbation.

  Args:
    delta: f32[B, ...] perturbations; finite.

  Returns:
    f32[B], >= 0.

  Raises:
    ValueError: ``delta`` has fewer than 2 dims, is empty or non-finite.
    TypeError: a non-real dtype.
  """
  d = _checks.check_array(delta, name='delta')
  return jnp.max(jnp.abs(d).reshape(d.shape[0], -1), axis=1)
