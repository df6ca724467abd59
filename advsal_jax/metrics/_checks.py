"""Argument checks shared by the metrics: batched real arrays and pairs of maps.

Run before any compilation; values (NaN/inf) are checked only on concrete inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def check_pair(a: ArrayLike, b: ArrayLike, *, min_ndim: int = 2,
               max_ndim: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Validates two batched maps ``a`` and ``b`` and returns them as f32 arrays.

  Same shape, a leading batch axis, real dtype and, for concrete (non-traced) inputs,
  finite values.
  """
  a = check_array(a, name='a', min_ndim=min_ndim, max_ndim=max_ndim)
  b = check_array(b, name='b', min_ndim=min_ndim, max_ndim=max_ndim)
  if a.shape != b.shape:
    raise ValueError(f'a and b must have the same shape; got a.shape={a.shape} and '
                     f'b.shape={b.shape}.')
  return a, b


def check_array(x: ArrayLike, *, name: str, min_ndim: int = 2,
                max_ndim: int | None = None) -> jax.Array:
  """Validates one batched real array (rank, dtype, finiteness) and casts it to f32."""
  if not hasattr(x, 'shape') or not hasattr(x, 'dtype'):
    x = np.asarray(x)
  if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
          or x.dtype == jnp.bool_):
    raise TypeError(f'{name} must have a real dtype; got {x.dtype}.')
  if x.ndim < min_ndim or (max_ndim is not None and x.ndim > max_ndim):
    expected = f'{min_ndim}' if max_ndim == min_ndim else (
        f'at least {min_ndim}' if max_ndim is None else f'{min_ndim} to {max_ndim}')
    raise ValueError(f'{name} must have {expected} dimensions with a leading batch axis; '
                     f'got shape {x.shape}.')
  if any(d == 0 for d in x.shape):
    raise ValueError(f'{name} must not be empty; got shape {x.shape}.')
  if not isinstance(x, jax.core.Tracer) and jnp.issubdtype(x.dtype, jnp.floating):
    # Reduce on the array's own device: only one bool crosses to the host.
    finite = jnp.all(jnp.isfinite(x)) if isinstance(x, jax.Array) else np.all(np.isfinite(x))
    if not finite:
      raise ValueError(f'{name} contains NaN or infinite values.')
  return jnp.asarray(x, jnp.float32)
