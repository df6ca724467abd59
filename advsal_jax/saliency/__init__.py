"""Saliency methods as pure functions over ``apply_fn(params, x) -> logits``.

Every method has the signature ``method(apply_fn, params, x, target, *, key=None, **hp)``,
explains the pre-softmax logit of ``target[b]`` and returns ``f32[B,H,W,C]`` (``[B,H,W,1]``
for ``ONE_CHANNEL_FAMILIES``). ``REGISTRY`` describes each method (family, key, layer,
defaults), ``explain`` calls one by name and ``heatmap`` turns its attribution into a map by
family. ``learnt_saliency`` is the exception to "``apply_fn`` is the classifier": it takes a
masking model (``Masker``, ``load_masker``), trained with ``advsal_jax.masker_training``;
registered ``'gbvs'`` wraps the label-free ``gbvs(x)``.

The implementation modules are private (``_gradients.py``, ``_lime.py``, ...): use the
names exported here. The diagnostics of Gu & Tresp that compare two maps (``sim_ratio``,
``avg_diff``) live in ``advsal_jax.metrics``.
"""

from advsal_jax.saliency._cam import cam
from advsal_jax.saliency._cam import grad_cam
from advsal_jax.saliency._cam import guided_grad_cam
from advsal_jax.saliency._gbvs import gbvs
from advsal_jax.saliency._gbvs import log_ratio_difference
from advsal_jax.saliency._gbvs import saliency_difference
from advsal_jax.saliency._gradients import gradient
from advsal_jax.saliency._gradients import gradient_x_input
from advsal_jax.saliency._guided import enhanced_guided_backprop
from advsal_jax.saliency._guided import guided_backprop
from advsal_jax.saliency._guided import guided_relu
from advsal_jax.saliency._guided import with_guided_relu
from advsal_jax.saliency._integrated_gradients import integrated_gradients
from advsal_jax.saliency._learnt import alternative_images
from advsal_jax.saliency._learnt import attach_classifier
from advsal_jax.saliency._learnt import classifier_variables
from advsal_jax.saliency._learnt import decoder_params
from advsal_jax.saliency._learnt import init_masker
from advsal_jax.saliency._learnt import learnt_saliency
from advsal_jax.saliency._learnt import load_masker
from advsal_jax.saliency._learnt import Masker
from advsal_jax.saliency._learnt import masker_from_metadata
from advsal_jax.saliency._learnt import masker_loss
from advsal_jax.saliency._learnt import MaskerLoss
from advsal_jax.saliency._learnt import phi
from advsal_jax.saliency._lime import lime
from advsal_jax.saliency._lime import lime_explain
from advsal_jax.saliency._lime import LimeResult
from advsal_jax.saliency._lime import segment_images
from advsal_jax.saliency._postprocess import normalize
from advsal_jax.saliency._postprocess import to_heatmap
from advsal_jax.saliency._smoothgrad import smoothgrad
from advsal_jax.saliency.registry import explain
from advsal_jax.saliency.registry import FAMILIES
from advsal_jax.saliency.registry import heatmap
from advsal_jax.saliency.registry import LAYER_METHODS
from advsal_jax.saliency.registry import MASKER_METHODS
from advsal_jax.saliency.registry import METHODS
from advsal_jax.saliency.registry import MethodSpec
from advsal_jax.saliency.registry import ONE_CHANNEL_FAMILIES
from advsal_jax.saliency.registry import REGISTRY
from advsal_jax.saliency.registry import STOCHASTIC_METHODS

__all__ = [
    'FAMILIES',
    'LAYER_METHODS',
    'MASKER_METHODS',
    'METHODS',
    'ONE_CHANNEL_FAMILIES',
    'REGISTRY',
    'STOCHASTIC_METHODS',
    'alternative_images',
    'attach_classifier',
    'cam',
    'classifier_variables',
    'decoder_params',
    'enhanced_guided_backprop',
    'explain',
    'gbvs',
    'grad_cam',
    'gradient',
    'gradient_x_input',
    'guided_backprop',
    'guided_grad_cam',
    'guided_relu',
    'heatmap',
    'init_masker',
    'integrated_gradients',
    'learnt_saliency',
    'lime',
    'lime_explain',
    'LimeResult',
    'load_masker',
    'log_ratio_difference',
    'Masker',
    'masker_from_metadata',
    'masker_loss',
    'MaskerLoss',
    'MethodSpec',
    'normalize',
    'phi',
    'saliency_difference',
    'segment_images',
    'smoothgrad',
    'to_heatmap',
    'with_guided_relu',
]
