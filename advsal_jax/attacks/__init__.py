"""Adversarial attacks as batched pure functions of ``apply_fn(params, x)``.

Every attack has the signature ``attack(apply_fn, params, x, labels, *, targeted=False,
bounds=(0., 1.), mask=None, key=None, ...) -> x_adv`` and compiles under ``jax.jit`` (with its
static options bound by ``functools.partial``). ``ATTACKS`` maps names to the attacks for
binaries. ``whitebox_detector`` attacks a classifier together with an adversarial-example
detector (``advsal_jax.detection``); its extra detector arguments keep it out of ``ATTACKS``.
"""

from typing import Callable

from advsal_jax.attacks._carlini_wagner import carlini_wagner_l2
from advsal_jax.attacks._deepfool import deepfool
from advsal_jax.attacks._detector_whitebox import whitebox_detector
from advsal_jax.attacks._evaluate import AttackEvaluation
from advsal_jax.attacks._evaluate import evaluate_attack
from advsal_jax.attacks._fgsm import fgsm
from advsal_jax.attacks._iterative import bim
from advsal_jax.attacks._iterative import mim
from advsal_jax.attacks._iterative import pgd
from advsal_jax.attacks._jsma import jsma
from advsal_jax.attacks._loops import shrinking_while_loop
from advsal_jax.attacks._objectives import cross_entropy
from advsal_jax.attacks._objectives import cw_margin
from advsal_jax.attacks._objectives import Objective

ATTACKS: dict[str, Callable[..., object]] = {
    'fgsm': fgsm,
    'bim': bim,
    'pgd': pgd,
    'mim': mim,
    'carlini_wagner_l2': carlini_wagner_l2,
    'deepfool': deepfool,
    'jsma': jsma,
}

__all__ = [
    'ATTACKS',
    'AttackEvaluation',
    'Objective',
    'bim',
    'carlini_wagner_l2',
    'cross_entropy',
    'cw_margin',
    'deepfool',
    'evaluate_attack',
    'fgsm',
    'jsma',
    'mim',
    'pgd',
    'shrinking_while_loop',
    'whitebox_detector',
]
