"""The saliency methods by name: how to call each one, its family, and its heatmap.

``REGISTRY`` holds one ``MethodSpec`` per method: the function, whether it needs a PRNG key or
a layer name, its family (which decides how ``heatmap`` normalises its maps), its default
hyper-parameters and its per-example array arguments. ``explain`` calls any method by name
with the same arguments, so a study or a benchmark can loop over names; adding a method is
one ``MethodSpec`` entry in ``_SPECS``.

Two entries differ in what ``apply_fn``/``params`` are: 'learnt_saliency' takes a masking
model's (``MASKER_METHODS``, ``saliency.load_masker``), not the classifier's, so a caller that
loops over every name must load a masker for it or skip it; 'gbvs' is label-free and uses
neither the model nor the target (it checks them like every method, then explains ``x``).
"""

import dataclasses
import inspect
import types
from typing import Any, Callable, Mapping

import jax

from advsal_jax import _checks
from advsal_jax.saliency import _postprocess
from advsal_jax.saliency._cam import cam
from advsal_jax.saliency._cam import grad_cam
from advsal_jax.saliency._cam import guided_grad_cam
from advsal_jax.saliency._gbvs import gbvs
from advsal_jax.saliency._gradients import gradient
from advsal_jax.saliency._gradients import gradient_x_input
from advsal_jax.saliency._guided import enhanced_guided_backprop
from advsal_jax.saliency._guided import guided_backprop
from advsal_jax.saliency._integrated_gradients import integrated_gradients
from advsal_jax.saliency._learnt import learnt_saliency
from advsal_jax.saliency._lime import lime
from advsal_jax.saliency._lime import lime_explain
from advsal_jax.saliency._smoothgrad import smoothgrad
from advsal_jax.types import ApplyFn, Params, PRNGKey

FAMILIES: Mapping[str, str] = types.MappingProxyType({
    'gradient': 'percentile',
    'cam': 'minmax',
    'perturbation': 'minmax',
    'mask': 'minmax',
    'label_free': 'minmax',
})
"""Method family -> the ``normalize`` mode of its heatmaps.

'gradient': input-shaped, signed, multi-channel attributions, normalised by their 99th
percentile as PAIR's grayscale visualisation does (robust to a few extreme pixels).
'cam': one-channel non-negative class-activation maps, min-max normalised.
'perturbation': surrogate-model weights constant over superpixels (LIME), min-max normalised.
'mask': one-channel masks in [0, 1] predicted by a masking model (learnt saliency), min-max
normalised like the other one-channel maps; ``heatmap(..., normalize=False)`` is the mask
itself.
'label_free': one-channel non-negative maps of the image alone, no model or class (GBVS's
densities, which sum to 1), min-max normalised.
"""

ONE_CHANNEL_FAMILIES = frozenset({'cam', 'mask', 'label_free'})
"""Families whose methods return f32[B,H,W,1]; the others return input-shaped f32[B,H,W,C]."""


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """How to call one saliency method.

  Attributes:
    name: the method's name in ``REGISTRY``.
    fn: ``fn(apply_fn, params, x, target, *, key=None, [layer,] **hp) -> f32[B,H,W,C]``.
    family: a key of ``FAMILIES``.
    needs_key: ``fn`` requires ``key`` (a typed PRNG key, ``()`` or ``(B,)``).
    needs_layer: ``fn`` requires ``layer`` (a flax module path or name) and a flax.linen
      ``apply_fn``.
    defaults: read-only mapping of the hyper-parameters ``explain`` passes unless overridden;
      with ``per_example``, the keyword arguments ``fn`` accepts through ``explain``.
    per_example: keyword arguments that are arrays with a leading batch axis, sliced with
      ``x`` (e.g. LIME's ``segments``).
    needs_masker: ``fn``'s ``apply_fn``/``params`` are a masking model's
      (``saliency.load_masker``), not the classifier's.

  Raises:
    ValueError: (on construction) an unknown family, or a name both in ``defaults`` and
      ``per_example``.
  """
  name: str
  fn: Callable[..., jax.Array]
  family: str
  needs_key: bool = False
  needs_layer: bool = False
  defaults: Mapping[str, Any] = dataclasses.field(
      default_factory=lambda: types.MappingProxyType({}), hash=False)
  per_example: tuple[str, ...] = ()
  needs_masker: bool = False

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f'family of {self.name!r} must be one of {tuple(FAMILIES)}, got '
                       f'{self.family!r}.')
    both = sorted(set(self.defaults) & set(self.per_example))
    if both:
      raise ValueError(f'{self.name!r} lists {both} both in defaults and per_example.')
    object.__setattr__(self, 'defaults', types.MappingProxyType(dict(self.defaults)))
    object.__setattr__(self, 'per_example', tuple(self.per_example))


def _keyword_defaults(fn: Callable[..., Any], *, exclude: tuple[str, ...] = ()
                      ) -> dict[str, Any]:
  """The keyword-only parameters of ``fn`` that have defaults, but key, layer and ``exclude``."""
  return {k: p.default for k, p in inspect.signature(fn).parameters.items()
          if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty
          and k not in ('key', 'layer', *exclude)}


def _spec(name: str, fn: Callable[..., jax.Array], family: str, *, needs_key: bool = False,
          needs_layer: bool = False, needs_masker: bool = False,
          per_example: tuple[str, ...] = (),
          signature: Callable[..., Any] | None = None) -> MethodSpec:
  """A ``MethodSpec`` whose defaults are those of ``signature`` (default ``fn``)."""
  defaults = _keyword_defaults(signature or fn, exclude=per_example)
  return MethodSpec(name, fn, family, needs_key=needs_key, needs_layer=needs_layer,
                    defaults=defaults, per_example=per_example, needs_masker=needs_masker)


def _gbvs_method(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                 target: jax.typing.ArrayLike, *, key: PRNGKey | None = None,
                 **kwargs: Any) -> jax.Array:
  """``gbvs(x, **kwargs)`` behind the saliency signature: f32[B,H,W,1].

  GBVS uses neither the model nor ``target``; they are checked as every method checks them,
  so a wrong target fails alike whichever method a study runs.
  """
  del key
  _checks.check_classifier_inputs(apply_fn, params, x, target, name='target')
  return gbvs(x, **kwargs)


_SPECS = (
    _spec('gradient', gradient, 'gradient'),
    _spec('gradient_x_input', gradient_x_input, 'gradient'),
    _spec('smoothgrad', smoothgrad, 'gradient', needs_key=True),
    _spec('guided_backprop', guided_backprop, 'gradient'),
    _spec('enhanced_guided_backprop', enhanced_guided_backprop, 'gradient',
          per_example=('contrast_class',)),
    _spec('grad_cam', grad_cam, 'cam', needs_layer=True),
    _spec('guided_grad_cam', guided_grad_cam, 'gradient', needs_layer=True),
    _spec('cam', cam, 'cam', needs_layer=True),
    _spec('integrated_gradients', integrated_gradients, 'gradient', per_example=('baseline',)),
    # lime forwards its keyword arguments to lime_explain.
    _spec('lime', lime, 'perturbation', needs_key=True, per_example=('segments',),
          signature=lime_explain),
    _spec('learnt_saliency', learnt_saliency, 'mask', needs_masker=True),
    # The label-free GBVS, wrapped to the common signature; its keywords are gbvs's.
    _spec('gbvs', _gbvs_method, 'label_free', signature=gbvs),
)

REGISTRY: dict[str, MethodSpec] = {s.name: s for s in _SPECS}
"""Every saliency method by name."""

METHODS: dict[str, Callable[..., jax.Array]] = {n: s.fn for n, s in REGISTRY.items()}
"""Every attribution method by name; all share the saliency signature."""

STOCHASTIC_METHODS = frozenset(n for n, s in REGISTRY.items() if s.needs_key)
"""Names in ``REGISTRY`` that require ``key``."""

LAYER_METHODS = frozenset(n for n, s in REGISTRY.items() if s.needs_layer)
"""Names in ``REGISTRY`` that require ``layer=`` and a flax.linen ``apply_fn``."""

MASKER_METHODS = frozenset(n for n, s in REGISTRY.items() if s.needs_masker)
"""Names in ``REGISTRY`` whose ``apply_fn``/``params`` are a masking model's, not a classifier's."""


def explain(name: str, apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
            target: jax.typing.ArrayLike, *, key: PRNGKey | None = None,
            layer: str | None = None, **kwargs: Any) -> jax.Array:
  """Runs the saliency method ``name`` with its defaults, overridden by ``kwargs``.

  ``key`` reaches only methods that need one and ``layer`` only layer methods, so a caller
  may pass both to every method. All checks here are on static arguments: ``explain`` traces
  under ``jax.jit`` with ``name``, ``layer`` and the hyper-parameters static.

  Args:
    name: a key of ``REGISTRY``.
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``, batch-independent (eval mode); a
      flax.linen ``model.apply`` for layer methods; a masking model's ``apply`` for
      ``MASKER_METHODS``.
    params: the model variables passed to ``apply_fn``.
    x: f32[B,H,W,C] images in [0, 1].
    target: i32[B] explained classes in [0, K).
    key: typed PRNG key, shape ``()`` or ``(B,)``; required by stochastic methods.
    layer: module path or unique module name; required by layer methods.
    **kwargs: hyper-parameters (keys of the method's ``defaults``) and per-example arrays
      (its ``per_example`` names, with leading axis B).

  Returns:
    f32[B,H,W,C] attribution (``[B,H,W,1]`` for ``ONE_CHANNEL_FAMILIES``).

  Raises:
    ValueError: unknown ``name`` (the message lists the methods); a missing ``key`` or
      ``layer`` the method needs; whatever the method raises on its arguments.
    TypeError: a keyword argument the method does not take.
  """
  if name not in REGISTRY:
    raise ValueError(f'unknown saliency method {name!r}; choose from {sorted(REGISTRY)}.')
  spec = REGISTRY[name]
  unknown = sorted(set(kwargs) - set(spec.defaults) - set(spec.per_example))
  if unknown:
    accepted = sorted({*spec.defaults, *spec.per_example})
    raise TypeError(f'saliency method {name!r} got unexpected keyword argument(s) {unknown}; '
                    f'it takes {accepted}.')
  call = {**spec.defaults, **kwargs}
  if spec.needs_key:
    if key is None:
      raise ValueError(f'saliency method {name!r} is stochastic: pass key=jax.random.key(seed) '
                       '(or one key per example).')
    call['key'] = key
  if spec.needs_layer:
    if layer is None:
      raise ValueError(f'saliency method {name!r} needs layer= (a module path or name of the '
                       "model, e.g. its spec's last_conv).")
    call['layer'] = layer
  return spec.fn(apply_fn, params, x, target, **call)


def heatmap(attr: jax.typing.ArrayLike, family: str, *, normalize: bool = True) -> jax.Array:
  """One map per example from an attribution, post-processed by the method's family.

  Channels are reduced with ``to_heatmap(attr, 'abs_sum')``; with ``normalize`` each map is
  then normalised with its family's mode (``FAMILIES``): 'percentile' for the 'gradient'
  family, 'minmax' for the others. The choice follows the family, not the
  channel count, so a one-channel (MNIST) gradient map is treated as a gradient map.

  Args:
    attr: f32[B,H,W,C] attribution of a method of ``family``.
    family: a key of ``FAMILIES``, or a method name of ``REGISTRY`` (its family). Static
      under ``jax.jit``.
    normalize: normalise each map to [0, 1]; False returns the reduced raw map, e.g. for
      metrics that need unnormalised maps.

  Returns:
    f32[B,H,W]: in [0, 1] with ``normalize``, else non-negative.

  Raises:
    ValueError: an unknown family or method name, ``attr`` not of rank 4.
  """
  if family not in FAMILIES:
    if family not in REGISTRY:
      raise ValueError(f'family must be one of {tuple(FAMILIES)} or a method name of '
                       f'REGISTRY, got {family!r}.')
    family = REGISTRY[family].family
  maps = _postprocess.to_heatmap(attr, reduce='abs_sum')
  if not normalize:
    return maps
  return _postprocess.normalize(maps, mode=FAMILIES[family])
