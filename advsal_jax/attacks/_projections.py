"""Norm-ball geometry, box clipping and masks shared by the attacks.

Budgets (``eps``, step sizes, constants) may be Python floats, scalar arrays or per-example
vectors ``[B]``, concrete or traced; ``per_example`` turns each into a ``[B|1, 1, 1, 1]`` array
that broadcasts against an image batch without rank promotion.
"""

from typing import Optional

import jax
import jax.numpy as jnp

_TINY = 1e-12


def per_example(value: jax.typing.ArrayLike, x: jax.Array) -> jax.Array:
  """Reshapes a scalar or per-example budget ``[B]`` to broadcast against ``x``.

  Args:
    value: scalar, [B], or an array of x's rank that broadcasts against it (e.g. a
      per-channel L-inf budget [1, 1, 1, C]).
    x: f32[B, ...].

  Returns:
    ``value`` in x's dtype with shape [1, 1, ...] or [B, 1, ...] (rank of x).
  """
  value = jnp.asarray(value, x.dtype)
  if value.ndim == x.ndim:  # Already broadcastable, e.g. a per-channel budget [1, 1, 1, C].
    return value
  return jnp.reshape(value, (-1,) + (1,) * (x.ndim - 1))


def l2_norm(v: jax.Array) -> jax.Array:
  """Per-example L2 norm of f32[B, ...], kept broadcastable: f32[B, 1, ...]."""
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)), keepdims=True))


def project_linf(delta: jax.Array, eps: jax.typing.ArrayLike) -> jax.Array:
  """Projects perturbations f32[B, ...] onto the L-inf ball of radius ``eps`` (scalar or [B])."""
  e = per_example(eps, delta)
  return jnp.clip(delta, -e, e)


def project_l2(delta: jax.Array, eps: jax.typing.ArrayLike) -> jax.Array:
  """Projects perturbations f32[B, ...] onto the L2 ball of radius ``eps`` (scalar or [B])."""
  norm = l2_norm(delta)
  scale = jnp.minimum(1.0, per_example(eps, delta) / jnp.maximum(norm, _TINY))
  return delta * scale


def project(x_adv: jax.Array, x: jax.Array, *, norm: str, eps: jax.typing.ArrayLike,
            bounds: tuple[float, float], mask: jax.Array) -> jax.Array:
  """Maps a candidate back into {x + delta : delta in mask, ||delta|| <= eps} within bounds.

  Masking, then the ball, then the box: the box clip only shrinks each coordinate of delta
  towards 0 (x itself is inside the box), so the result stays in the ball and in the mask.

  Args:
    x_adv: f32[B, H, W, C] candidate.
    x: f32[B, H, W, C] clean inputs within bounds.
    norm: 'linf' or 'l2'.
    eps: scalar or [B] radius >= 0.
    bounds: (low, high) box.
    mask: f32[B, H, W, C] of 0/1.

  Returns:
    f32[B, H, W, C].
  """
  delta = (x_adv - x) * mask
  delta = project_linf(delta, eps) if norm == 'linf' else project_l2(delta, eps)
  return clip_to_bounds(x + delta, bounds)


def clip_to_bounds(x: jax.Array, bounds: tuple[float, float]) -> jax.Array:
  """Clips ``x`` elementwise into ``[bounds[0], bounds[1]]``."""
  return jnp.clip(x, bounds[0], bounds[1])


def steepest_ascent(grad: jax.Array, norm: str) -> jax.Array:
  """Unit-norm steepest-ascent direction: ``sign(g)`` (L-inf) or ``g / ||g||_2`` (L2)."""
  if norm == 'linf':
    return jnp.sign(grad)
  return grad / jnp.maximum(l2_norm(grad), _TINY)


def sample_ball(key: jax.Array, x: jax.Array, *, norm: str, eps: jax.typing.ArrayLike,
                mask: jax.Array) -> jax.Array:
  """Uniform sample from the (masked) eps-ball around 0, one per example.

  L-inf: independent U(-eps, eps) coordinates. L2: a Gaussian direction scaled to radius
  ``eps * u**(1/d)`` with ``u ~ U(0, 1)`` and ``d`` the number of free (masked-in) coordinates,
  which is uniform in the ball of the masked subspace.

  Returns:
    f32[B, H, W, C], zero outside ``mask``.
  """
  e = per_example(eps, x)
  if norm == 'linf':
    return jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * e * mask
  k_dir, k_rad = jax.random.split(key)
  direction = jax.random.normal(k_dir, x.shape, x.dtype) * mask
  direction = direction / jnp.maximum(l2_norm(direction), _TINY)
  dims = jnp.maximum(jnp.sum(mask, axis=tuple(range(1, x.ndim)), keepdims=True), 1.0)
  u = jax.random.uniform(k_rad, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
  return direction * e * u ** (1.0 / dims)


def prepare_mask(mask: Optional[jax.typing.ArrayLike], x: jax.Array) -> jax.Array:
  """The 0/1 mask broadcast to x's shape and dtype (all ones when ``mask`` is None)."""
  if mask is None:
    return jnp.ones_like(x)
  return jnp.broadcast_to(jnp.asarray(mask, x.dtype), x.shape)
