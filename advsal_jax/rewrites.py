"""Rewrite chosen primitives of any JAX function in its traced graph, without editing it.

``rewrite(fn, rule)`` traces ``fn`` to a jaxpr on each call and evaluates it with every
equation the rule matches replaced by the rule's own computation. Matches nested in
``jit``, ``custom_jvp``, ``custom_vjp`` and ``checkpoint`` sub-jaxprs are found by inlining
those calls (their custom derivative rules are dropped, which is the point when the
rewrite changes a derivative); matches inside control flow (``scan``, ``while``, ``cond``)
raise ``NotImplementedError`` rather than being silently missed. A rule that must keep
every derivative (``Rule.skip_unreachable``) instead leaves matches inside control flow and
custom-derivative calls alone.

Rules using it: Guided Backprop's ReLU (``saliency.with_guided_relu``), which changes the
backward pass on purpose, and ``fast_gradients`` (``FAST_CONV`` + ``FAST_MAX_POOL``), which
computes the same values and gradients but in forms XLA:CPU runs fast: a convolution's
input gradient inside loops, convolutions over 3, 5 or 7 input features, and the
``select_and_scatter`` gradient of ``nn.max_pool``. The attacks and gradient-based
saliency methods apply ``fast_gradients`` to the user's ``apply_fn`` themselves.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.extend.core as jex
from jax import lax
import jax.numpy as jnp
import numpy as np

# Call-like primitives whose sub-jaxpr is evaluated inline when it contains a match.
_INLINE = frozenset({'jit', 'pjit', 'closed_call', 'core_call', 'custom_jvp_call',
                     'custom_vjp_call', 'custom_vjp_call_jaxpr', 'remat', 'remat2',
                     'checkpoint'})
# Those whose inlining keeps every derivative (no custom rule to drop).
_INLINE_EXACT = frozenset({'jit', 'pjit', 'closed_call', 'core_call', 'remat', 'remat2',
                           'checkpoint'})
_SUBJAXPR_PARAMS = ('jaxpr', 'call_jaxpr', 'fun_jaxpr')


@dataclasses.dataclass(frozen=True)
class Rule:
  """What to rewrite.

  Attributes:
    name: used in error messages (e.g. ``'guided_backprop'``).
    replace: ``replace(eqn, invals) -> list of outputs or None``; None leaves ``eqn`` as it
      is. Called only on equations outside nested jaxprs (those are inlined first).
    matches: ``matches(eqn) -> bool``, whether ``replace`` would act on ``eqn`` (used to
      decide which sub-jaxprs to inline).
    skip_unreachable: for rules that must not change any derivative. When True, matches
      inside control flow or inside ``custom_jvp``/``custom_vjp`` calls (whose rules
      inlining would drop) are left as they are instead of raising.
  """
  name: str
  replace: Callable[[Any, Sequence[jax.Array]], Optional[list[jax.Array]]]
  matches: Callable[[Any], bool]
  skip_unreachable: bool = False


def combine(name: str, *rules: Rule) -> Rule:
  """One rule applying the first of ``rules`` that matches each equation.

  It skips unreachable matches only if every rule does.
  """

  def replace(eqn, invals):
    for rule in rules:
      if rule.matches(eqn):
        return rule.replace(eqn, invals)
    return None

  return Rule(name=name, replace=replace, matches=lambda eqn: any(r.matches(eqn) for r in rules),
              skip_unreachable=all(r.skip_unreachable for r in rules))


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, jex.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jex.Jaxpr):
        yield v


def _contains(jaxpr, rule: Rule) -> bool:
  return any(rule.matches(e) or any(_contains(j, rule) for j in _sub_jaxprs(e))
             for e in jaxpr.eqns)


def _inline_jaxpr(eqn, rule: Rule):
  """(jaxpr, consts) of a call-like eqn whose sub-jaxpr takes exactly the eqn's inputs."""
  for name in _SUBJAXPR_PARAMS:
    sub = eqn.params.get(name)
    if isinstance(sub, jex.ClosedJaxpr):
      return sub.jaxpr, sub.consts
    if isinstance(sub, jex.Jaxpr):
      return sub, ()
  raise NotImplementedError(f'{rule.name}: no sub-jaxpr found in {eqn.primitive.name}.')


def eval_rewritten(jaxpr, consts, args, rule: Rule) -> list[jax.Array]:
  """Evaluates ``jaxpr`` like ``jax.core.eval_jaxpr`` with ``rule`` applied.

  Raises:
    NotImplementedError: if a match sits inside control flow (or, for a rule that does not
      ``skip_unreachable``, inside any call that is not inlined).
  """
  env = {}

  def read(v):
    return v.val if isinstance(v, jex.Literal) else env[v]

  for v, val in zip(jaxpr.constvars, consts):
    env[v] = val
  for v, val in zip(jaxpr.invars, args):
    env[v] = val
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    outvals = rule.replace(eqn, invals) if rule.matches(eqn) else None
    if outvals is None and any(_contains(j, rule) for j in _sub_jaxprs(eqn)):
      if eqn.primitive.name in (_INLINE_EXACT if rule.skip_unreachable else _INLINE):
        sub, sub_consts = _inline_jaxpr(eqn, rule)
        outvals = eval_rewritten(sub, sub_consts, invals, rule)
      elif not rule.skip_unreachable:
        raise NotImplementedError(
            f'{rule.name}: an operation to rewrite sits inside {eqn.primitive.name!r} '
            f'(control flow), which is not supported; only those inside {sorted(_INLINE)} '
            'are rewritten.')
    if outvals is None:
      with eqn.ctx.manager:
        outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
      if not eqn.primitive.multiple_results:
        outvals = [outvals]
    for v, val in zip(eqn.outvars, outvals):
      env[v] = val
  return [read(v) for v in jaxpr.outvars]


def rewrite(fn: Callable[..., Any], rule: Rule) -> Callable[..., Any]:
  """Returns ``fn`` evaluated with ``rule`` applied to its traced graph.

  The returned function traces ``fn`` on each call (cheap, and exact for the given argument
  shapes); it composes with ``jax.jit``, ``grad`` and ``vmap`` like ``fn``.

  Args:
    fn: any JAX-traceable function of arrays/pytrees, e.g. ``model.apply``.
    rule: what to replace.

  Returns:
    A function with ``fn``'s signature and output structure.
  """

  def rewritten(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    outs = eval_rewritten(closed.jaxpr, closed.consts, jax.tree.leaves(args), rule)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

  return rewritten


def _pool_window(eqn) -> Optional[tuple[int, ...]]:
  """The window of a non-overlapping, unpadded ``reduce_window_max`` that tiles its input."""
  if eqn.primitive.name != 'reduce_window_max':
    return None
  p = eqn.params
  window, strides = tuple(p['window_dimensions']), tuple(p['window_strides'])
  shape = eqn.invars[0].aval.shape
  if (window != strides or any(lo or hi for lo, hi in p['padding'])
      or any(d != 1 for d in (*p['base_dilation'], *p['window_dilation']))
      or any(n % w for n, w in zip(shape, window))):
    return None
  return window


def _window_split(shape: Sequence[int], window: Sequence[int]) -> list[int]:
  """``shape`` with each dimension split into (outer, window): window dims are the odd axes."""
  return [s for n, w in zip(shape, window) for s in (n // w, w)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def tiled_max(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """Max over non-overlapping windows that tile ``x`` exactly, as reshape + max.

  Its gradient goes to the first maximum of each window in row-major order, exactly as
  XLA's ``select_and_scatter`` gradient of ``reduce_window`` max pooling does (ties
  included), but as elementwise masks and reductions, which XLA:CPU runs several times
  faster than ``nn.max_pool``'s gradient.

  Args:
    x: an array whose every dimension is divisible by the matching ``window`` entry.
    window: window size per dimension (1 = no pooling), a tuple of ints.

  Returns:
    ``x`` pooled: dimension i has size ``x.shape[i] // window[i]``.
  """
  return x.reshape(_window_split(x.shape, window)).max(axis=tuple(range(1, 2 * x.ndim, 2)))


def _tiled_max_fwd(x, window):
  return tiled_max(x, window), x


def _tiled_max_bwd(window, x, g):
  split = _window_split(x.shape, window)
  axes = tuple(range(1, 2 * x.ndim, 2))
  windows = x.reshape(split)
  # Row-major position inside the window, broadcast over the window axes only.
  position = jnp.zeros([1] * len(split), jnp.int32)
  for axis in axes:
    position = position * split[axis] + jax.lax.broadcasted_iota(
        jnp.int32, [split[a] if a == axis else 1 for a in range(len(split))], axis)
  is_max = windows == windows.max(axis=axes, keepdims=True)
  first = jnp.min(jnp.where(is_max, position, np.iinfo(np.int32).max), axis=axes,
                  keepdims=True)
  g = jnp.expand_dims(g, axes)
  return (jnp.where(position == first, g, jnp.zeros_like(g)).reshape(x.shape),)


tiled_max.defvjp(_tiled_max_fwd, _tiled_max_bwd)


def _replace_pool(eqn, invals):
  window = _pool_window(eqn)
  return None if window is None else [tiled_max(invals[0], window)]


FAST_MAX_POOL = Rule(name='fast_max_pool', replace=_replace_pool,
                     matches=lambda eqn: _pool_window(eqn) is not None, skip_unreachable=True)


def fast_max_pool(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` with every tiling max pool (window == stride, no padding) as reshape + max.

  ``flax.linen.max_pool(x, (2, 2), strides=(2, 2))`` lowers to XLA's ``reduce_window``,
  whose gradient (``select_and_scatter``) is several times slower on CPU than the masked
  gradient of ``tiled_max``. Outputs and gradients are identical, ties included.
  Overlapping or padded pools, and pools inside control flow or custom-derivative
  functions, are left alone. ``fast_gradients`` includes this rule.

  Args:
    fn: any JAX-traceable function, e.g. ``model.apply``.

  Returns:
    A function with ``fn``'s signature and outputs.
  """
  return rewrite(fn, FAST_MAX_POOL)


def _conv_rewritable(eqn) -> bool:
  return (eqn.primitive.name == 'conv_general_dilated'
          and eqn.params['feature_group_count'] == 1 and eqn.params['batch_group_count'] == 1)


def conv_with_materialized_transpose(lhs: jax.Array, rhs: jax.Array,
                                     params: dict[str, Any]) -> jax.Array:
  """``conv_general_dilated(lhs, rhs, **params)`` whose input gradient reads a transposed copy.

  JAX differentiates a convolution w.r.t. its input as a convolution with the kernel's
  in/out feature dimensions swapped *in the dimension numbers*. XLA:CPU materialises that
  transpose only outside loops; inside a ``while``/``scan`` body it runs the swapped
  convolution on a slow generic path, several times slower per step. Here the
  backward pass transposes the kernel explicitly (a copy the size of the kernel), so the
  input-gradient convolution has the kernel layout of the forward one everywhere. Values
  and gradients are the same operations in the same order, hence identical.

  Args:
    lhs: the input, laid out as ``params['dimension_numbers'].lhs_spec`` says.
    rhs: the kernel.
    params: the ``conv_general_dilated`` primitive's parameters, with
      ``feature_group_count == batch_group_count == 1``.

  Returns:
    The convolution's output.
  """
  dn = params['dimension_numbers']
  out_dim, in_dim = dn.rhs_spec[0], dn.rhs_spec[1]
  perm = list(range(rhs.ndim))
  perm[out_dim], perm[in_dim] = in_dim, out_dim
  swapped = dict(params, dimension_numbers=lax.ConvDimensionNumbers(
      dn.lhs_spec, (in_dim, out_dim, *dn.rhs_spec[2:]), dn.out_spec))

  def conv(l, r, p):
    return lax.conv_general_dilated_p.bind(l, r, **p)

  @jax.custom_vjp
  def f(l, r):
    return conv(l, r, params)

  def fwd(l, r):
    return f(l, r), (l, r)

  def bwd(res, g):
    l, r = res
    _, vjp = jax.vjp(lambda a, b: conv(a, b, swapped), l, jnp.transpose(r, perm))
    dl, dr = vjp(g)
    return dl, jnp.transpose(dr, perm)

  f.defvjp(fwd, bwd)
  return f(lhs, rhs)


def pad_odd_input_features(lhs: jax.Array, rhs: jax.Array,
                           params: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
  """Zero-pads an odd input-feature count >= 3 (e.g. RGB) up to a multiple of 4.

  XLA:CPU runs convolutions with 3, 5 or 7 input features several times slower than with 4
  or 8 (1, 2 and 6 features are fast as they are). The padded channels hold zeros in both the
  input and the kernel, so the result is the same sum; only the order in which XLA adds
  the terms may change (float rounding).

  Args:
    lhs: the input, laid out as ``params['dimension_numbers'].lhs_spec`` says.
    rhs: the kernel.
    params: the ``conv_general_dilated`` primitive's parameters.

  Returns:
    ``(lhs, rhs)``, padded along their input-feature dimensions where that count is odd
    and >= 3.
  """
  dn = params['dimension_numbers']
  features = lhs.shape[dn.lhs_spec[1]]
  if features < 3 or features % 2 == 0:
    return lhs, rhs
  extra = -features % 4

  def pad(a, dim):
    widths = [(0, 0)] * a.ndim
    widths[dim] = (0, extra)
    return jnp.pad(a, widths)

  return pad(lhs, dn.lhs_spec[1]), pad(rhs, dn.rhs_spec[1])


def _replace_conv(eqn, invals):
  lhs, rhs = pad_odd_input_features(*invals, eqn.params)
  return [conv_with_materialized_transpose(lhs, rhs, eqn.params)]


FAST_CONV = Rule(name='fast_conv', replace=_replace_conv, matches=_conv_rewritable,
                 skip_unreachable=True)

FAST_GRADIENTS = combine('fast_gradients', FAST_CONV, FAST_MAX_POOL)
"""The gradient rewrites every attack and gradient-based saliency method applies on CPU."""


def fast_gradients(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` with convolutions and tiling max pools re-expressed for XLA:CPU.

  Applies ``FAST_CONV`` (``pad_odd_input_features`` and
  ``conv_with_materialized_transpose``) and ``FAST_MAX_POOL`` (``tiled_max``). They
  compute the same values and gradients by the same formulas; a convolution with an odd
  input-feature count (e.g. RGB) may round differently (float summation order). The
  attacks and gradient-based saliency methods of this package wrap the user's
  ``apply_fn`` with it themselves; it is public for users' own loops. On other backends
  (GPU, TPU), whose compilers have none of these slow paths, ``fn`` is returned as it is.
  Grouped convolutions, and matches inside control flow or custom-derivative functions,
  are left alone. Reverse mode only: the rewritten operations have custom VJPs, so
  ``jax.jvp`` through them raises.

  Args:
    fn: any JAX-traceable function, e.g. ``model.apply``.

  Returns:
    A function with ``fn``'s signature and outputs.
  """
  if jax.default_backend() != 'cpu':
    return fn
  return rewrite(fn, FAST_GRADIENTS)
