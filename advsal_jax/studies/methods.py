"""Checks a study's saliency settings before it claims an output directory."""

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from advsal_jax import saliency
from advsal_jax.types import ApplyFn, Params


def check_methods(methods: Sequence[str], method_kwargs: Mapping[str, Mapping[str, Any]],
                  apply_fn: ApplyFn, params: Params, image_shape: Sequence[int], *,
                  layer: str | None):
  """Traces every method with its settings on one abstract image (``jax.eval_shape``).

  Nothing is computed; a bad name, an unknown hyper-parameter or a value the method rejects
  raises here, before a run writes ``config.json`` (a resume would then refuse the corrected
  settings). Methods whose defaults need concrete images on the host (LIME's segmentation)
  are checked by name and keyword only.

  Args:
    methods: names from ``saliency.REGISTRY``.
    method_kwargs: method -> hyper-parameters over the registry's defaults.
    apply_fn, params: the model.
    image_shape: (H, W, C) of one image.
    layer: the Grad-CAM/CAM layer (for layer methods).

  Raises:
    ValueError: naming ``method_kwargs`` (or ``methods``), the method and the problem.
  """
  unknown = sorted(set(method_kwargs) - set(saliency.REGISTRY))
  if unknown:
    raise ValueError(f'method_kwargs: unknown methods {unknown}; choose from '
                     f'{sorted(saliency.REGISTRY)}.')
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  target = jax.ShapeDtypeStruct((1,), jnp.int32)
  for name in methods:
    if name not in saliency.REGISTRY:
      raise ValueError(f'methods: unknown {name!r}; choose from {sorted(saliency.REGISTRY)}.')
    spec, kwargs = saliency.REGISTRY[name], dict(method_kwargs.get(name, {}))
    unexpected = sorted(set(kwargs) - set(spec.defaults))
    if unexpected:
      raise ValueError(f'method_kwargs: {name} takes {sorted(spec.defaults)}, not '
                       f'{unexpected}.')
    if 'segments' in spec.per_example:
      continue

    def call(p, images, t, name=name, kwargs=kwargs):
      return saliency.explain(name, apply_fn, p, images, t, key=jax.random.key(0),
                              layer=layer, **kwargs)

    try:
      jax.eval_shape(call, params, x, target)
    except (TypeError, ValueError) as e:
      raise ValueError(f'method_kwargs: {name} with {kwargs}: {e}') from e
