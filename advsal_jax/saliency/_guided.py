"""Guided Backpropagation by rewriting every ReLU of any JAX function, and its enhanced variant.

``guided_backprop`` needs no change to the model: ``with_guided_relu`` traces ``apply_fn`` to a
jaxpr and re-evaluates it with every ReLU (``max(x, 0)`` with a literal zero, which is what
``jax.nn.relu``/``flax.linen.relu``/``jnp.maximum(x, 0.)`` lower to) replaced by
``guided_relu`` (``advsal_jax.rewrites``). ReLUs nested in ``jit``, ``custom_jvp``,
``custom_vjp`` and ``checkpoint`` sub-jaxprs are found by inlining those calls (their custom
derivative rules are dropped, which is the point: a custom ReLU gradient must become the
guided one). ReLUs inside control flow (``scan``, ``while``, ``cond``) raise
``NotImplementedError`` rather than being silently missed. Any float ``max(x, 0)`` counts as a
ReLU, including the lower bound of ``jnp.clip(x, 0, ...)``; ``relu6``-style or leaky
activations are left alone.
"""

from typing import Any, Callable

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from advsal_jax import _checks
from advsal_jax import rewrites
from advsal_jax.saliency import _gradients
from advsal_jax.types import ApplyFn, Params, PRNGKey


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
  """ReLU whose backward pass is the guided rule ``R^l = 1[R^{l+1} > 0 and x > 0] R^{l+1}``.

  Forward: ``max(x, 0)``. Backward: only positive gradients through positive
  activations pass.

  Args:
    x: any float array.

  Returns:
    ``max(x, 0)`` with the same shape and dtype.

  References:
    Springenberg et al., Striving for Simplicity: The All Convolutional Net, arXiv:1412.6806.
  """
  return jnp.maximum(x, jnp.zeros_like(x))


def _guided_relu_fwd(x):
  return guided_relu(x), x


def _guided_relu_bwd(x, g):
  return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


def _is_zero_literal(v) -> bool:
  return isinstance(v, jex.Literal) and np.ndim(v.val) == 0 and float(v.val) == 0.0


def _relu_operand(eqn) -> int | None:
  """Index of the non-zero operand if ``eqn`` is a float ``max(x, 0)``, else None."""
  if eqn.primitive.name != 'max' or len(eqn.invars) != 2:
    return None
  if not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):
    return None
  for i in (0, 1):
    if _is_zero_literal(eqn.invars[1 - i]) and not isinstance(eqn.invars[i], jex.Literal):
      return i
  return None


def _replace_relu(eqn, invals):
  operand = _relu_operand(eqn)
  return None if operand is None else [guided_relu(invals[operand])]


GUIDED_RELU = rewrites.Rule(name='guided_backprop', replace=_replace_relu,
                            matches=lambda eqn: _relu_operand(eqn) is not None)


def with_guided_relu(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Returns ``fn`` with every ReLU replaced by ``guided_relu``, without editing ``fn``.

  The returned function traces ``fn`` to a jaxpr on each call (cheap, and exact for the
  given argument shapes) and evaluates it with the rewrite; its forward values equal
  ``fn``'s, only the backward pass through ReLUs changes.

  Args:
    fn: any JAX-traceable function of arrays/pytrees, e.g. ``model.apply``.

  Returns:
    A function with ``fn``'s signature and outputs.

  Raises:
    TypeError: ``fn`` is not callable.
    NotImplementedError: (when called) if a ReLU sits inside scan/while/cond.
  """
  if not callable(fn):
    raise TypeError(f'fn must be a JAX-traceable function (callable), got {fn!r}.')
  return rewrites.rewrite(fn, GUIDED_RELU)


def _guided_map(apply_fn, params, x, target):
  guided_apply = with_guided_relu(rewrites.fast_gradients(apply_fn))
  return jax.grad(lambda xx: _gradients.target_logits(guided_apply, params, xx, target).sum())(x)


def guided_backprop(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                    target: jax.typing.ArrayLike, *,
                    key: PRNGKey | None = None) -> jax.Array:
  """Guided Backpropagation: the gradient with every ReLU backward made guided (``guided_relu``).

  Explains the pre-softmax logit of ``target[b]``. Works on any ``apply_fn`` whose ReLUs
  are ``jax.nn.relu``/``flax.linen.relu``/``jnp.maximum(x, 0.)``, also inside ``jax.jit``,
  ``custom_jvp`` or ``custom_vjp`` functions (see ``with_guided_relu``); the model is not edited.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``, batch-independent (eval mode).
    params: the model variables passed to ``apply_fn``.
    x: f32[B,H,W,C] images in [0, 1].
    target: i32[B] class indices in [0, K).
    key: unused (deterministic method).

  Returns:
    f32[B,H,W,C] guided gradient.

  Raises:
    ValueError, TypeError: on malformed ``x`` or ``target``.
    NotImplementedError: a ReLU inside control flow (scan/while/cond).

  References:
    Springenberg et al., Striving for Simplicity: The All Convolutional Net, arXiv:1412.6806.
  """
  del key
  _checks.check_classifier_inputs(apply_fn, params, x, target, name='target')
  return _guided_map(apply_fn, params, jnp.asarray(x), jnp.asarray(target))


def enhanced_guided_backprop(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                             target: jax.typing.ArrayLike, *, key: PRNGKey | None = None,
                             contrast_class: jax.typing.ArrayLike | None = None) -> jax.Array:
  """Enhanced (contrastive) Guided Backprop of Gu & Tresp.

  Explains the pre-softmax logit of ``target[b]`` (class k) against a contrast class m:
  ``max(0, s_k / |s_k|_c - s_m / |s_m|_c)`` where ``s`` are Guided Backprop maps and
  ``|s|_c = sum_{h,w} |s[..., c]|`` is the energy of channel c (channel-wise energy
  normalisation; an all-zero channel is left at zero).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``, batch-independent (eval mode).
    params: the model variables passed to ``apply_fn``.
    x: f32[B,H,W,C] images in [0, 1].
    target: i32[B] explained classes k in [0, K).
    key: unused (deterministic method).
    contrast_class: i32[B] contrast classes m; default: the highest-logit class other than
      ``target[b]``.

  Returns:
    f32[B,H,W,C] non-negative discriminative map.

  Raises:
    ValueError, TypeError: on malformed ``x``, ``target`` or ``contrast_class``.

  References:
    Gu, Tresp, Saliency Methods for Explaining Adversarial Attacks, arXiv:1908.08413.
  """
  del key
  num_classes = _checks.check_classifier_inputs(apply_fn, params, x, target, name='target')
  if contrast_class is not None:
    _checks.check_labels(apply_fn, params, x, contrast_class, name='contrast_class')
  elif num_classes < 2:
    raise ValueError('enhanced_guided_backprop needs at least 2 classes for a contrast.')
  x = jnp.asarray(x)
  target = jnp.asarray(target)
  if contrast_class is None:
    logits = apply_fn(params, x)
    is_target = jnp.arange(num_classes)[None, :] == target[:, None]
    contrast_class = jnp.argmax(jnp.where(is_target, -jnp.inf, logits), axis=1)
  else:
    contrast_class = jnp.asarray(contrast_class)

  def energy_normalised(s):
    energy = jnp.abs(s).sum(axis=(1, 2), keepdims=True)
    return s / jnp.where(energy > 0, energy, 1.0)

  s_k = energy_normalised(_guided_map(apply_fn, params, x, target))
  s_m = energy_normalised(_guided_map(apply_fn, params, x, contrast_class))
  return jax.nn.relu(s_k - s_m)
