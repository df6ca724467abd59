"""Vanilla gradient and gradient x input, plus the helpers the other saliency methods share.

Every method in ``advsal_jax.saliency`` explains the pre-softmax logit of ``target[b]`` for
each example ``b``; ``apply_fn(params, x)`` must be batch-independent (eval mode), so the
gradient of the summed target logits is the per-example gradient.

Every method checks its arguments before tracing (``advsal_jax._checks``): ``x`` must be a
non-empty floating-point batch [B,H,W,C] (integer images raise a TypeError; float64 images
are computed in float32), finite and in [0, 1]; ``target`` one integer class in [0, K) per
image. Under ``jax.jit`` only the shape and dtype checks run: traced values cannot be
inspected, so a NaN image then gives a NaN attribution.

A model whose logits do not depend on ``x`` (zero gradient) gets a finite, all-zero
attribution from every gradient-based method, CAM family and LIME (no division by a zero
norm: enhanced Guided Backprop leaves all-zero channels at zero); ``heatmap`` then returns
all-zero maps, on which the correlation metrics are NaN.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from advsal_jax import _checks
from advsal_jax import rewrites
from advsal_jax.types import ApplyFn, Params, PRNGKey


def check_key(key: PRNGKey | None, batch: int, method: str):
  """Checks ``key`` is a typed key of shape ``()`` or ``(B,)`` (shapes only: no computation).

  Raises:
    ValueError: ``key`` is missing or has a shape other than ``()`` or ``(B,)``.
    TypeError: ``key`` is not a typed key from ``jax.random.key``.
  """
  if key is None:
    raise ValueError(f'{method} is stochastic: pass key=jax.random.key(seed) (or a batch of '
                     f'B={batch} keys); there is no hidden default randomness.')
  if not (hasattr(key, 'dtype') and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
    raise TypeError(f'key must be a typed PRNG key from jax.random.key, got '
                    f'{getattr(key, "dtype", type(key))}; wrap legacy uint32 keys with '
                    'jax.random.wrap_key_data.')
  if key.shape not in ((), (batch,)):
    raise ValueError(f'key must be a single key (shape ()) or one key per example (shape '
                     f'({batch},)), got shape {key.shape}.')


def per_example_keys(key: PRNGKey | None, batch: int, method: str) -> jax.Array:
  """Returns one typed key per example: ``key[b]`` for a batch of keys, else ``split(key, B)[b]``.

  Example ``b`` of a batch explained with a single key ``k`` therefore gets exactly the same
  noise as the batch of one ``x[b:b+1]`` explained with the key batch
  ``jax.random.split(k, B)[b:b+1]``; noise never depends on the other examples.

  Raises:
    ValueError, TypeError: as ``check_key``.
  """
  check_key(key, batch, method)
  return jax.random.split(key, batch) if key.shape == () else key


def target_logits(apply_fn: ApplyFn, params: Params, x: jax.Array,
                  target: jax.Array) -> jax.Array:
  """Pre-softmax logit of ``target[b]`` for each example: f32[B]."""
  logits = apply_fn(params, x)
  return jnp.take_along_axis(logits, target[:, None].astype(jnp.int32), axis=1)[:, 0]


def chunked_sum(fn: Callable[[Any, jax.Array], jax.Array], items: Any, *, num_items: int,
                batch_size: int | None) -> jax.Array:
  """Sums ``fn(chunk, valid)`` over ``items`` split into chunks of ``batch_size`` along axis 0.

  Memory is bounded by one chunk: a ``lax.scan`` walks the chunks and accumulates. The
  last chunk is padded by repeating item 0; ``valid`` (f32[c], 1 for real items, 0 for
  padding) lets ``fn`` drop the padding from its sum.

  Args:
    fn: maps (pytree of arrays with leading axis ``c``, ``valid`` f32[c]) to the chunk's sum.
    items: pytree of arrays with leading axis ``num_items``.
    num_items: static number of items.
    batch_size: static chunk size; ``None`` evaluates all items in one chunk.

  Returns:
    The sum of ``fn`` over all chunks.
  """
  size = num_items if batch_size is None else min(batch_size, num_items)
  num_chunks = -(-num_items // size)
  pad = num_chunks * size - num_items

  def pad_and_split(a):
    a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]) if pad else a
    return a.reshape(num_chunks, size, *a.shape[1:])

  chunks = jax.tree.map(pad_and_split, items)
  valid = (jnp.arange(num_chunks * size) < num_items).astype(jnp.float32)
  valid = valid.reshape(num_chunks, size)
  # Always a scan (even for one chunk) so fn is traced: models that check the value range
  # of concrete inputs then accept perturbed copies that leave [0, 1].
  out = jax.eval_shape(fn, jax.tree.map(lambda a: a[0], chunks), valid[0])
  total, _ = jax.lax.scan(lambda acc, c: (acc + fn(*c), None),
                          jnp.zeros(out.shape, out.dtype), (chunks, valid))
  return total


def gradient(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
             target: jax.typing.ArrayLike, *, key: PRNGKey | None = None) -> jax.Array:
  """Vanilla gradient saliency: d logit_{target[b]}(x_b) / d x_b.

  Explains the pre-softmax logit of ``target[b]`` (not the softmax probability).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``, batch-independent (eval mode).
    params: the model variables passed to ``apply_fn``.
    x: f32[B,H,W,C] images in [0, 1].
    target: i32[B] class indices in [0, K).
    key: unused (deterministic method); accepted for a uniform signature.

  Returns:
    f32[B,H,W,C] gradient of each target logit with respect to its image.

  Raises:
    ValueError, TypeError: on malformed ``x`` or ``target``.

  References:
    Simonyan, Vedaldi, Zisserman, Deep Inside Convolutional Networks, arXiv:1312.6034.
  """
  del key
  _checks.check_classifier_inputs(apply_fn, params, x, target, name='target')
  x = jnp.asarray(x)
  target = jnp.asarray(target)
  apply_fn = rewrites.fast_gradients(apply_fn)
  return jax.grad(lambda xx: target_logits(apply_fn, params, xx, target).sum())(x)


def gradient_x_input(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                     target: jax.typing.ArrayLike, *,
                     key: PRNGKey | None = None) -> jax.Array:
  """Gradient times input: ``x * d logit_{target[b]} / d x`` elementwise.

  Explains the pre-softmax logit of ``target[b]``. For a linear model ``W x + c`` it is the
  exact per-feature contribution ``W[target, i] * x_i``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``, batch-independent (eval mode).
    params: the model variables passed to ``apply_fn``.
    x: f32[B,H,W,C] images in [0, 1].
    target: i32[B] class indices in [0, K).
    key: unused (deterministic method).

  Returns:
    f32[B,H,W,C] attribution.

  Raises:
    ValueError, TypeError: on malformed ``x`` or ``target``.

  References:
    Shrikumar et al., Not Just a Black Box, arXiv:1605.01713.
  """
  grad = gradient(apply_fn, params, x, target, key=key)  # Checks the arguments first.
  return jnp.asarray(x) * grad
