"""Detecting adversarial examples with saliency (paper 003: SMD, SPD and the ID/JSD baselines).

A detector is a binary classifier of a *detector input* computed from the image:
``detector_input(kind, ...)`` with ``kind`` 'smd' (saliency map), 'spd' (salient pixels
``m * x``), 'id' (the image) or 'jsd' (image + gradient of the predicted logit); SMD and SPD
take any saliency method by name (the learnt mask of ``saliency.load_masker`` by default).
The network has the architecture of the guarded classifier (``create_detector``,
``init_detector``), is trained on ``make_detection_set``'s ``[X, X_adv]`` with labels
``[CLEAN=1, ADVERSARIAL=0]`` as in the paper (``train_detector``), and scores images by
``z_ADVERSARIAL - z_CLEAN`` (``detector_scores``; ``evaluate_detector`` gives accuracy, AUROC
and TPR at 5 % FPR). ``Detector`` joins transform and network into one ``(params, x) ->
logits`` function, which ``attacks.whitebox_detector`` attacks and ``adversarial_training``
hardens round after round.

Every function is pure over arrays with explicit PRNG keys; loops are compiled
(``lax.map`` over batches; training is a loop of compiled steps).
"""

from advsal_jax.detection._adversarial import adversarial_training
from advsal_jax.detection._detector import ADVERSARIAL
from advsal_jax.detection._detector import CLEAN
from advsal_jax.detection._detector import create_detector
from advsal_jax.detection._detector import DetectionMetrics
from advsal_jax.detection._detector import Detector
from advsal_jax.detection._detector import detector_scores
from advsal_jax.detection._detector import evaluate_detector
from advsal_jax.detection._detector import init_detector
from advsal_jax.detection._detector import make_detection_set
from advsal_jax.detection._detector import train_detector
from advsal_jax.detection._inputs import detector_input
from advsal_jax.detection._inputs import image_input
from advsal_jax.detection._inputs import INPUT_KINDS
from advsal_jax.detection._inputs import jacobian_input
from advsal_jax.detection._inputs import predicted_class
from advsal_jax.detection._inputs import saliency_map_input
from advsal_jax.detection._inputs import salient_pixels_input

__all__ = [
    'ADVERSARIAL',
    'CLEAN',
    'DetectionMetrics',
    'Detector',
    'INPUT_KINDS',
    'adversarial_training',
    'create_detector',
    'detector_input',
    'detector_scores',
    'evaluate_detector',
    'image_input',
    'init_detector',
    'jacobian_input',
    'make_detection_set',
    'predicted_class',
    'saliency_map_input',
    'salient_pixels_input',
    'train_detector',
]
