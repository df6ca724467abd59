"""Rewrite chosen primitives of any JAX function in its traced graph, without editing it.

``rewrite(fn, rule)`` traces ``fn`` to a jaxpr on each call and evaluates it with every
equation the rule matches replaced by the rule's own computation. Matches nested in
``jit``, ``custom_jvp``, ``custom_vjp`` and ``checkpoint`` sub-jaxprs are found by inlining
those calls (their custom derivative rules are dropped, which is the point when the
rewrite changes a derivative); matches inside control flow (``scan``, ``while``, ``cond``)
raise ``NotImplementedError`` rather than being silently missed.

Two rules use it: Guided Backprop's ReLU (``saliency.with_guided_relu``) and
``fast_max_pool``, which gives a user's unmodified ``nn.max_pool`` model the cheap
reshape-and-max gradient that this package's own models are built with.
"""

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.extend.core as jex

# Call-like primitives whose sub-jaxpr is evaluated inline when it contains a match.
_INLINE = frozenset({'jit', 'pjit', 'closed_call', 'core_call', 'custom_jvp_call',
                     'custom_vjp_call', 'custom_vjp_call_jaxpr', 'remat', 'remat2',
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
  """
  name: str
  replace: Callable[[Any, Sequence[jax.Array]], Optional[list[jax.Array]]]
  matches: Callable[[Any], bool]


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
    NotImplementedError: if a match sits inside control flow.
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
      if eqn.primitive.name not in _INLINE:
        raise NotImplementedError(
            f'{rule.name}: an operation to rewrite sits inside {eqn.primitive.name!r} '
            f'(control flow), which is not supported; only those inside {sorted(_INLINE)} '
            'are rewritten.')
      sub, sub_consts = _inline_jaxpr(eqn, rule)
      outvals = eval_rewritten(sub, sub_consts, invals, rule)
    elif outvals is None:
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


def tiled_max(x: jax.Array, window: Sequence[int]) -> jax.Array:
  """Max over non-overlapping windows that tile ``x`` exactly, as reshape + max.

  Args:
    x: an array whose every dimension is divisible by the matching ``window`` entry.
    window: window size per dimension (1 = no pooling).

  Returns:
    ``x`` pooled: dimension i has size ``x.shape[i] // window[i]``.
  """
  split = [s for n, w in zip(x.shape, window) for s in (n // w, w)]
  return x.reshape(split).max(axis=tuple(range(1, 2 * x.ndim, 2)))


def _replace_pool(eqn, invals):
  window = _pool_window(eqn)
  return None if window is None else [tiled_max(invals[0], window)]


FAST_MAX_POOL = Rule(name='fast_max_pool', replace=_replace_pool,
                     matches=lambda eqn: _pool_window(eqn) is not None)


def fast_max_pool(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` with every tiling max pool (window == stride, no padding) as reshape + max.

  ``flax.linen.max_pool(x, (2, 2), strides=(2, 2))`` lowers to XLA's ``reduce_window``,
  whose gradient (``select_and_scatter``) is several times slower on CPU than the gradient
  of a reshape followed by ``max``. The outputs are identical; gradients are identical
  except at ties inside a window, where ``max``'s gradient is shared equally among the
  tied entries instead of going to the first. Overlapping or padded pools are left alone.
  Wrap an ``apply_fn`` once and use it with any saliency method or attack::

    apply_fn = rewrites.fast_max_pool(model.apply)

  Args:
    fn: any JAX-traceable function, e.g. ``model.apply``.

  Returns:
    A function with ``fn``'s signature and outputs.
  """
  return rewrite(fn, FAST_MAX_POOL)


def has_slow_max_pool(fn: Callable[..., Any], *args) -> bool:
  """Whether ``fn(*args)`` contains a tiling max pool that ``fast_max_pool`` would replace."""
  return _contains(jax.make_jaxpr(fn)(*args).jaxpr, FAST_MAX_POOL)

