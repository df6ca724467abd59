"""Integrated Gradients with a selectable quadrature rule, evaluated in memory-bounded chunks."""

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import _checks
from advsal_jax import rewrites
from advsal_jax.saliency import _gradients
from advsal_jax.types import ApplyFn, Params, PRNGKey

RULES = ('riemann_left', 'riemann_right', 'riemann_midpoint', 'trapezoid')


def quadrature(rule: str, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Nodes ``alpha`` in [0, 1] and weights (summing to 1) of a rule on ``num_steps`` intervals.

  ``riemann_left``: ``k/m, k=0..m-1``; ``riemann_right``: ``k/m, k=1..m``;
  ``riemann_midpoint``: ``(k+1/2)/m, k=0..m-1``; all with weight ``1/m``. ``trapezoid``:
  ``k/m, k=0..m`` with weights ``1/m`` and ``1/(2m)`` at both ends (``m+1`` gradients).

  Raises:
    ValueError: unknown rule or non-positive ``num_steps``.
  """
  _checks.check_count(num_steps, 'num_steps')
  m = num_steps
  k = np.arange(m, dtype=np.float64)
  if rule == 'riemann_left':
    alphas, weights = k / m, np.full(m, 1 / m)
  elif rule == 'riemann_right':
    alphas, weights = (k + 1) / m, np.full(m, 1 / m)
  elif rule == 'riemann_midpoint':
    alphas, weights = (k + 0.5) / m, np.full(m, 1 / m)
  elif rule == 'trapezoid':
    alphas = np.arange(m + 1, dtype=np.float64) / m
    weights = np.full(m + 1, 1 / m)
    weights[[0, -1]] = 1 / (2 * m)
  else:
    raise ValueError(f'rule must be one of {RULES}, got {rule!r}.')
  return alphas.astype(np.float32), weights.astype(np.float32)


def integrated_gradients(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                         target: jax.typing.ArrayLike, *, key: PRNGKey | None = None,
                         baseline: jax.typing.ArrayLike | None = None, num_steps: int = 32,
                         rule: str = 'riemann_midpoint',
                         batch_size: int | None = 16) -> jax.Array:
  """Integrated Gradients: ``(x - x') * int_0^1 dS(x' + a (x - x')) / dx da``.

  Explains the pre-softmax logit ``S`` of ``target[b]``. Completeness:
  ``sum(attribution_b) ~= S(x_b) - S(x'_b)``, with the quadrature error of ``rule``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``, batch-independent (eval mode).
    params: the model variables passed to ``apply_fn``.
    x: f32[B,H,W,C] images in [0, 1].
    target: i32[B] class indices in [0, K).
    key: unused (deterministic method).
    baseline: x' broadcastable to x's shape (e.g. f32[B,H,W,C], f32[H,W,C] or a scalar),
      in [0, 1] (finite and in range checked when concrete); default all zeros (black
      image).
    num_steps: number of intervals m. Static under ``jax.jit``.
    rule: 'riemann_left', 'riemann_right', 'riemann_midpoint' (default) or 'trapezoid'
      (see ``quadrature``). Static under ``jax.jit``.
    batch_size: path points per image evaluated at once (``None``: all); memory holds
      ``batch_size * B`` images. Static under ``jax.jit``.

  Returns:
    f32[B,H,W,C] attribution.

  Raises:
    ValueError: unknown rule, bad ``num_steps``/``batch_size``, a ``baseline`` of the wrong
      shape, NaN/inf or outside [0, 1], malformed ``x``/``target`` (wrong shape, an empty
      batch, NaN/inf or pixels outside [0, 1]).
    TypeError: non-float ``x``, non-integer ``target``.

  References:
    Sundararajan, Taly, Yan, Axiomatic Attribution for Deep Networks, arXiv:1703.01365.
  """
  del key
  _checks.check_classifier_inputs(apply_fn, params, x, target, name='target')
  alphas, weights = quadrature(rule, num_steps)
  if batch_size is not None:
    _checks.check_count(batch_size, 'batch_size')
  if baseline is not None:
    x_shape, b_shape = tuple(np.shape(x)), np.shape(baseline)
    try:
      np.broadcast_shapes(b_shape, x_shape)
    except ValueError:
      raise ValueError(f'baseline must broadcast to x.shape {x_shape}, got {b_shape}.') from None
    if len(b_shape) > 4 or np.broadcast_shapes(b_shape, x_shape) != x_shape:
      raise ValueError(f'baseline must broadcast to x.shape {x_shape}, got {b_shape}.')
    _checks.check_pixels(baseline, name='baseline')
  x = jnp.asarray(x)
  target = jnp.asarray(target)
  if baseline is None:
    baseline = jnp.zeros_like(x)
  else:
    baseline = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
  delta = x - baseline
  batch = x.shape[0]
  fast_apply = rewrites.fast_gradients(apply_fn)

  def chunk_sum(items, valid):
    a, w = items
    c = a.shape[0]
    a5 = a.reshape(c, 1, 1, 1, 1)
    points = (baseline[None] + a5 * delta[None]).reshape(c * batch, *x.shape[1:])
    t = jnp.tile(target, c)
    grads = jax.grad(lambda p: _gradients.target_logits(fast_apply, params, p, t).sum())(points)
    return jnp.einsum('c,cbhwk->bhwk', w * valid, grads.reshape(c, *x.shape))

  path_integral = _gradients.chunked_sum(
      chunk_sum, (jnp.asarray(alphas), jnp.asarray(weights)), num_items=len(alphas),
      batch_size=batch_size)
  return delta * path_integral
