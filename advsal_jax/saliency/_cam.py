"""Class activation maps on a named layer of any flax.linen model: Grad-CAM, Guided Grad-CAM, CAM.

The layer is reached without editing the model: ``flax.linen.intercept_methods`` adds a zero
perturbation ``delta`` to the named module's output and captures that output ``A``, so one
VJP of the target logit with respect to ``delta`` gives ``dS/dA`` at the same ``A``. These
methods therefore require ``apply_fn`` to run flax.linen modules (e.g. ``model.apply``), and
not to be wrapped in ``jax.jit`` itself (a cached compiled call runs no module to intercept);
jit the saliency call instead. The intercepted forward pass goes through
``rewrites.fast_gradients`` like the other gradient-based methods.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import _checks
from advsal_jax import rewrites
from advsal_jax.saliency import _gradients
from advsal_jax.saliency import _guided
from advsal_jax.types import ApplyFn, Params, PRNGKey


def _path(module: nn.Module) -> str:
  return '/'.join(module.path)


def _find_layer(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                layer: str) -> tuple[str, jax.ShapeDtypeStruct]:
  """Resolves ``layer`` (module path like 'ir3/dw', or a unique name) to (path, output aval).

  Raises:
    TypeError: ``layer`` is not a string.
    ValueError: no flax module runs in ``apply_fn``; unknown, ambiguous or reused layer;
      a layer output that is not an activation map [B,h,w,k].
  """
  if not isinstance(layer, str):
    raise TypeError(f'layer must be a module path or name (str), got {layer!r}.')
  calls: dict[str, list] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and context.module.path:
      aval = jax.ShapeDtypeStruct(out.shape, out.dtype) if hasattr(out, 'shape') else None
      calls.setdefault(_path(context.module), []).append(aval)
    return out

  with nn.intercept_methods(record):
    # A fresh closure: jax caches traces per function, and a cached trace of apply_fn
    # (e.g. from check_inputs) would run no module and so record nothing.
    jax.eval_shape(lambda p, xx: apply_fn(p, xx), params,
                   jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)))
  if not calls:
    raise ValueError('layer-based saliency methods need a flax.linen apply_fn (e.g. '
                     'model.apply); no flax submodule was called by apply_fn.')
  if layer in calls:
    path = layer
  else:
    matches = [p for p in calls if p.split('/')[-1] == layer]
    if len(matches) != 1:
      why = 'is ambiguous' if matches else 'is not a layer of this model'
      raise ValueError(f'layer {layer!r} {why}; valid layers (module paths): {sorted(calls)}.')
    path = matches[0]
  avals = calls[path]
  if len(avals) != 1:
    raise ValueError(f'layer {path!r} is called {len(avals)} times per forward pass; its '
                     'activation is ambiguous.')
  aval = avals[0]
  if aval is None or len(aval.shape) != 4 or aval.shape[0] != np.shape(x)[0]:
    raise ValueError(f'layer {path!r} must output an activation map [B,h,w,k], got '
                     f'{aval}.')
  return path, aval


def _activation_and_grad(apply_fn, params, x, target, path, aval, *, with_grad=True):
  """Activation ``A`` f32[B,h,w,k] of layer ``path`` and ``d logit_target / dA`` (one VJP)."""

  def forward(delta):
    captured = []

    def perturb(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == '__call__' and _path(context.module) == path:
        out = out + delta
        captured.append(out)
      return out

    with nn.intercept_methods(perturb):
      score = _gradients.target_logits(apply_fn, params, x, target).sum()
    return score, captured[0]

  delta = jnp.zeros(aval.shape, aval.dtype)
  forward = rewrites.fast_gradients(forward)
  if not with_grad:
    return forward(delta)[1], None
  grad, act = jax.grad(forward, has_aux=True)(delta)
  return act, grad


def _upsample(maps: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear resize f32[B,h,w] -> f32[B,H,W,1] (half-pixel centres, jax.image.resize)."""
  b = maps.shape[0]
  return jax.image.resize(maps[..., None], (b, height, width, 1), method='bilinear')


def grad_cam(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
             target: jax.typing.ArrayLike, *, key: PRNGKey | None = None,
             layer: str) -> jax.Array:
  """Grad-CAM: ``ReLU(sum_k alpha_k A^k)``, ``alpha_k = mean_ij dS/dA^k_ij``.

  Explains the pre-softmax logit ``S`` of ``target[b]``. ``A`` is the output of the flax
  module ``layer``; the map is computed at the layer's resolution, then upsampled
  bilinearly to the input size. Not normalised (see ``saliency.normalize``).

  Args:
    apply_fn: a flax.linen ``apply_fn(params, x) -> logits f32[B,K]`` (e.g. ``model.apply``),
      batch-independent (eval mode).
    params: the model variables passed to ``apply_fn``.
    x: f32[B,H,W,C] images in [0, 1].
    target: i32[B] class indices in [0, K).
    key: unused (deterministic method).
    layer: module path ('conv5', 'ir3/dw') or unique module name. Static under ``jax.jit``.

  Returns:
    f32[B,H,W,1] non-negative map; all zero when the target logit does not depend on the
    layer's activation (zero gradient) or the activation is zero.

  Raises:
    ValueError: unknown layer (the message lists valid ones), malformed ``x``/``target``.

  References:
    Selvaraju et al., Grad-CAM, arXiv:1610.02391 (v1 titled "Grad-CAM: Why did you say
    that?", arXiv:1611.07450).
  """
  del key
  _checks.check_classifier_inputs(apply_fn, params, x, target, name='target')
  path, aval = _find_layer(apply_fn, params, x, layer)
  x = jnp.asarray(x)
  act, grad = _activation_and_grad(apply_fn, params, x, jnp.asarray(target), path, aval)
  alpha = grad.mean(axis=(1, 2))
  maps = jax.nn.relu(jnp.einsum('bhwk,bk->bhw', act, alpha))
  return _upsample(maps, x.shape[1], x.shape[2])


def guided_grad_cam(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                    target: jax.typing.ArrayLike, *, key: PRNGKey | None = None,
                    layer: str) -> jax.Array:
  """Guided Grad-CAM: Guided Backprop times the upsampled Grad-CAM of ``layer``.

  Explains the pre-softmax logit of ``target[b]``.

  Args:
    apply_fn: a flax.linen ``apply_fn(params, x) -> logits f32[B,K]``.
    params: the model variables passed to ``apply_fn``.
    x: f32[B,H,W,C] images in [0, 1].
    target: i32[B] class indices in [0, K).
    key: unused (deterministic method).
    layer: module path or unique module name. Static under ``jax.jit``.

  Returns:
    f32[B,H,W,C] attribution.

  Raises:
    ValueError: unknown layer, malformed ``x``/``target``.

  References:
    Selvaraju et al., Grad-CAM, arXiv:1610.02391.
  """
  cam_map = grad_cam(apply_fn, params, x, target, key=key, layer=layer)
  return _guided.guided_backprop(apply_fn, params, x, target) * cam_map


def _dense_kernel(params: Params, dense: str) -> jax.Array:
  top = params.get('params') if isinstance(params, dict) else None
  node = top
  for part in dense.split('/'):
    if not isinstance(node, dict) or part not in node:
      known = sorted(top) if isinstance(top, dict) else type(params)
      raise ValueError(f'cam needs the kernel of dense layer {dense!r} in params["params"]; '
                       f'not found (top-level params: {known}).')
    node = node[part]
  if not isinstance(node, dict) or 'kernel' not in node or jnp.ndim(node['kernel']) != 2:
    raise ValueError(f'{dense!r} is not a dense layer with a 2-D kernel.')
  return node['kernel']


def cam(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
        target: jax.typing.ArrayLike, *, key: PRNGKey | None = None, layer: str,
        dense: str = 'logits') -> jax.Array:
  """CAM of Zhou et al.: ``ReLU(sum_k w_{k,target} A^k)`` from the final dense weights.

  Explains the pre-softmax logit of ``target[b]``. Exact only for models whose logits are
  ``dense(mean_ij A_ij)`` (global average pooling of ``layer`` followed by the one dense
  layer ``dense``); then ``cam == h * w * grad_cam`` for an ``h x w`` layer. The ReLU (as in
  Grad-CAM) keeps the family's maps comparable.

  Args:
    apply_fn: a flax.linen ``apply_fn(params, x) -> logits f32[B,K]``.
    params: flax variables dict; ``params['params'][dense]['kernel']`` is f32[k, K].
    x: f32[B,H,W,C] images in [0, 1].
    target: i32[B] class indices in [0, K).
    key: unused (deterministic method).
    layer: module path or unique module name of the pooled activation. Static under jit.
    dense: module path of the final dense layer. Static under ``jax.jit``.

  Returns:
    f32[B,H,W,1] non-negative map, bilinearly upsampled; all zero when the activation or the
    target's dense weights are zero.

  Raises:
    ValueError: unknown layer or dense layer, kernel shape not ``[k, K]``.

  References:
    Zhou et al., Learning Deep Features for Discriminative Localization, arXiv:1512.04150.
  """
  del key
  num_classes = _checks.check_classifier_inputs(apply_fn, params, x, target, name='target')
  path, aval = _find_layer(apply_fn, params, x, layer)
  kernel = _dense_kernel(params, dense)
  if kernel.shape != (aval.shape[-1], num_classes):
    raise ValueError(f'dense kernel {dense!r} must have shape (k, K)=({aval.shape[-1]}, '
                     f'{num_classes}) to pool layer {path!r}, got {kernel.shape}.')
  x = jnp.asarray(x)
  act, _ = _activation_and_grad(apply_fn, params, x, jnp.asarray(target), path, aval,
                                with_grad=False)
  weights = jnp.take(kernel.T, jnp.asarray(target), axis=0)
  maps = jax.nn.relu(jnp.einsum('bhwk,bk->bhw', act, weights))
  return _upsample(maps, x.shape[1], x.shape[2])
