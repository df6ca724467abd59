"""Saliency methods as pure functions over ``apply_fn(params, x) -> logits``.

Every method has the signature ``method(apply_fn, params, x, target, *, key=None, **hp)``,
explains the pre-softmax logit of ``target[b]`` and returns ``f32[B,H,W,C]`` (``[B,H,W,1]``
for the CAM family). ``METHODS`` maps names to methods for experiment binaries.

The implementation modules are private (``_gradients.py``, ``_lime.py``, ...): use the
names exported here. The diagnostics of Gu & Tresp that compare two maps (``sim_ratio``,
``avg_diff``) live in ``advsal_jax.metrics``.
"""

from typing import Callable

import jax

from advsal_jax.saliency._cam import cam
from advsal_jax.saliency._cam import grad_cam
from advsal_jax.saliency._cam import guided_grad_cam
from advsal_jax.saliency._gradients import gradient
from advsal_jax.saliency._gradients import gradient_x_input
from advsal_jax.saliency._guided import enhanced_guided_backprop
from advsal_jax.saliency._guided import guided_backprop
from advsal_jax.saliency._guided import guided_relu
from advsal_jax.saliency._guided import with_guided_relu
from advsal_jax.saliency._integrated_gradients import integrated_gradients
from advsal_jax.saliency._lime import lime
from advsal_jax.saliency._lime import lime_explain
from advsal_jax.saliency._lime import LimeResult
from advsal_jax.saliency._lime import segment_images
from advsal_jax.saliency._postprocess import normalize
from advsal_jax.saliency._postprocess import to_heatmap
from advsal_jax.saliency._smoothgrad import smoothgrad

METHODS: dict[str, Callable[..., jax.Array]] = {
    'gradient': gradient,
    'gradient_x_input': gradient_x_input,
    'smoothgrad': smoothgrad,
    'guided_backprop': guided_backprop,
    'enhanced_guided_backprop': enhanced_guided_backprop,
    'grad_cam': grad_cam,
    'guided_grad_cam': guided_grad_cam,
    'cam': cam,
    'integrated_gradients': integrated_gradients,
    'lime': lime,
}
"""Every attribution method by name; all share the saliency signature."""

STOCHASTIC_METHODS = frozenset({'smoothgrad', 'lime'})
"""Names in ``METHODS`` that require ``key``."""

LAYER_METHODS = frozenset({'grad_cam', 'guided_grad_cam', 'cam'})
"""Names in ``METHODS`` that require ``layer=`` and a flax.linen ``apply_fn``."""

__all__ = [
    'LAYER_METHODS',
    'METHODS',
    'STOCHASTIC_METHODS',
    'LimeResult',
    'cam',
    'enhanced_guided_backprop',
    'grad_cam',
    'gradient',
    'gradient_x_input',
    'guided_backprop',
    'guided_grad_cam',
    'guided_relu',
    'integrated_gradients',
    'lime',
    'lime_explain',
    'normalize',
    'segment_images',
    'smoothgrad',
    'to_heatmap',
    'with_guided_relu',
]
