"""Study 001's settings: the experiments, methods, attacks and budgets, validated at start.

Reference: Gu & Tresp, Saliency Methods for Explaining Adversarial Attacks, arXiv:1908.08413.
"""

import dataclasses
from typing import Any, Mapping

import numpy as np

from advsal_jax import perturbation
from advsal_jax import saliency

NAME = 'explain_adversarial'
EXPERIMENTS = ('class_discriminative', 'clean_vs_adversarial', 'recovery',
               'failed_vs_successful')
ATTACKS = ('fgsm', 'bim', 'cw')
"""The attacks, in the order of the attack axis of every per-attack array."""
ATTACK_LABELS = {'fgsm': 'FGSM', 'bim': 'BIM', 'cw': 'C&W-L2'}
GBP, EGBP = 'guided_backprop', 'enhanced_guided_backprop'
BLUR_SIGMA = 2.0
"""Standard deviation (pixels) of the Gaussian blur of the ``blur`` fill."""
MAP_METRICS = ('spearman', 'mean_ssim', 'l2_distance')

METHODS = ('gradient', GBP, 'smoothgrad', 'grad_cam', 'integrated_gradients', EGBP)
"""The methods of clean_vs_adversarial and recovery (names of ``saliency.REGISTRY``)."""
DEFAULT_METHOD_KWARGS = {'smoothgrad': {'num_samples': 10, 'noise_level': 0.15},
                         'integrated_gradients': {'num_steps': 16}}
DELETIONS = ('egbp', 'gbp', 'random', 'egbp_swapped')
"""Rankings whose top pixels are deleted in the pairs stage's margin test (k vs m: k the
higher-ranked class): EGBP(k vs m), GBP(k), random, and EGBP(m vs k), whose top pixels are
m's evidence (deleting them should raise the margin)."""
SHORT = {GBP: 'GBP', EGBP: 'EGBP', 'integrated_gradients': 'IG', 'grad_cam': 'Grad-CAM',
         'smoothgrad': 'SmoothGrad', 'gradient': 'Gradient', 'random': 'random', 'gbp': 'GBP',
         'egbp': 'EGBP', 'egbp_swapped': 'EGBP(m vs k)'}
"""Short labels of the methods and rankings in the report and figures."""

BUDGETS: dict[str, dict[str, float]] = {
    # Pixel units ([0, 1] images). Each attack succeeds on most images of its dataset's
    # committed checkpoint (FGSM leaves some failures, which failed_vs_successful needs).
    'cifar10': {'fgsm_eps': 8 / 255, 'bim_eps': 4 / 255, 'bim_step_size': 1 / 255,
                'cw_learning_rate': 0.05, 'cw_initial_const': 0.1},
    'mnist': {'fgsm_eps': 0.3, 'bim_eps': 0.3, 'bim_step_size': 0.05,
              'cw_learning_rate': 0.1, 'cw_initial_const': 1.0},
}
"""Per-dataset defaults of the budgets a ``Config`` leaves at None."""

# Independent random streams per example: fold_in(fold_in(key(seed), stream), index).
SMOOTHGRAD_STREAM, RANDOM_RANK_STREAM, TIEBREAK_STREAM, NOISE_STREAM = range(4)


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of one run (written to ``config.json``).

  Attributes:
    checkpoint: registered model name or checkpoint directory.
    num_examples: the first N images of the model's test split.
    batch_size: images per compiled batch.
    experiments: names from ``EXPERIMENTS``.
    methods: saliency methods of clean_vs_adversarial and recovery (``METHODS``).
    pair_classes: top predicted classes whose maps are paired (all pairs), >= 2.
    fgsm_eps: FGSM L-inf budget (pixels); None: the dataset's ``BUDGETS``.
    bim_eps: BIM L-inf budget (pixels); None: the dataset's.
    bim_step_size: BIM step (pixels); None: the dataset's.
    bim_steps: BIM iterations.
    cw_steps: C&W Adam iterations per value of the constant (no early abort, so every
      example is independent of the others in its batch).
    cw_search_steps: C&W binary-search steps over the constant.
    cw_learning_rate: C&W Adam step; None: the dataset's.
    cw_initial_const: C&W first constant; None: the dataset's.
    recovery_grid: percentages p of pixels perturbed, increasing, in [0, 100].
    recovery_fill: what perturbed pixels become: 'mean' (the dataset mean colour, the
      model's normalisation mean), 'blur' (Gaussian blur of the adversarial image,
      ``BLUR_SIGMA``) or 'noise' (uniform in [0, 1], one draw per image).
    overlap_percent: top pixels (% of the image) of a map: deleted in the pairs margin test,
      and whose share of ``|delta|`` counts in the maps stage.
    method_kwargs: method -> hyper-parameters over the functions' defaults.
    seed: seed of every random choice (image i uses streams folded with i).
  """
  checkpoint: str = 'alexnet_cifar'
  num_examples: int = 10_000
  batch_size: int = 32
  experiments: tuple[str, ...] = EXPERIMENTS
  methods: tuple[str, ...] = METHODS
  pair_classes: int = 3
  fgsm_eps: float | None = None
  bim_eps: float | None = None
  bim_step_size: float | None = None
  bim_steps: int = 10
  cw_steps: int = 30
  cw_search_steps: int = 3
  cw_learning_rate: float | None = None
  cw_initial_const: float | None = None
  recovery_grid: tuple[float, ...] = (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50)
  recovery_fill: str = 'mean'
  overlap_percent: float = 10.0
  method_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=lambda: {m: dict(kw) for m, kw in DEFAULT_METHOD_KWARGS.items()})
  seed: int = 0


def with_dataset_budgets(cfg: Config, dataset: str) -> Config:
  """``cfg`` with every budget left at None set to the dataset's ``BUDGETS``."""
  if dataset not in BUDGETS:
    raise ValueError(f'dataset: no default budgets for {dataset!r}; pass every budget flag.')
  return dataclasses.replace(cfg, **{k: v for k, v in BUDGETS[dataset].items()
                                     if getattr(cfg, k) is None})


def validate(cfg: Config, *, split_size: int | None = None, num_classes: int | None = None):
  """Raises ValueError naming the bad setting; runs before anything is loaded or compiled.

  Args:
    cfg: the settings.
    split_size: test images available (checked when given).
    num_classes: the model's classes (checked when given).
  """
  bad = [e for e in cfg.experiments if e not in EXPERIMENTS]
  if bad or not cfg.experiments or len(set(cfg.experiments)) != len(cfg.experiments):
    raise ValueError(f'experiments: expected distinct names from {EXPERIMENTS}, got '
                     f'{cfg.experiments}.')
  bad = [m for m in cfg.methods if m not in METHODS]
  if bad or not cfg.methods or len(set(cfg.methods)) != len(cfg.methods):
    raise ValueError(f'methods: expected distinct names from {METHODS}, got {cfg.methods}.')
  if 'failed_vs_successful' in cfg.experiments and not {GBP, EGBP} <= set(cfg.methods):
    raise ValueError(f'methods: failed_vs_successful needs {GBP} and {EGBP}, got '
                     f'{cfg.methods}.')
  bad = [m for m in cfg.method_kwargs if m not in METHODS]
  if bad:
    raise ValueError(f'method_kwargs: unknown methods {bad}; choose from {METHODS}.')
  for m, kw in cfg.method_kwargs.items():
    bad = sorted(set(kw) - set(saliency.REGISTRY[m].defaults))
    if bad:
      raise ValueError(f'method_kwargs: {m} takes no {bad}; it takes '
                       f'{sorted(saliency.REGISTRY[m].defaults)}.')
  if cfg.pair_classes < 2 or (num_classes is not None and cfg.pair_classes > num_classes):
    raise ValueError(f'pair_classes must be in [2, {num_classes or "K"}], got '
                     f'{cfg.pair_classes}.')
  for name in ('fgsm_eps', 'bim_eps'):
    value = getattr(cfg, name)
    if value is not None and not 0 <= value <= 1:
      raise ValueError(f'{name} must be in [0, 1] (pixel units), got {value}.')
  for name in ('bim_step_size', 'cw_learning_rate', 'cw_initial_const'):
    value = getattr(cfg, name)
    if value is not None and not value > 0:
      raise ValueError(f'{name} must be > 0, got {value}.')
  for name in ('bim_steps', 'cw_steps', 'cw_search_steps', 'batch_size'):
    if getattr(cfg, name) < 1:
      raise ValueError(f'{name} must be >= 1, got {getattr(cfg, name)}.')
  grid = np.asarray(cfg.recovery_grid, float)
  if grid.ndim != 1 or not len(grid) or (grid < 0).any() or (grid > 100).any() or (
      np.diff(grid) <= 0).any():
    raise ValueError(f'recovery_grid must be increasing percentages in [0, 100], got '
                     f'{cfg.recovery_grid}.')
  if cfg.recovery_fill not in perturbation.FILLS:
    raise ValueError(f'recovery_fill must be one of {perturbation.FILLS}, got '
                     f'{cfg.recovery_fill!r}.')
  if not 0 < cfg.overlap_percent <= 100:
    raise ValueError(f'overlap_percent must be in (0, 100], got {cfg.overlap_percent}.')
  if cfg.num_examples < 1 or (split_size is not None and cfg.num_examples > split_size):
    raise ValueError(f'num_examples must be in [1, {split_size or "split size"}] (the test '
                     f'split), got {cfg.num_examples}.')


def stages(cfg: Config) -> tuple[str, ...]:
  """The stages the selected experiments need, in run order."""
  need = set()
  if 'class_discriminative' in cfg.experiments:
    need.add('pairs')
  if {'clean_vs_adversarial', 'failed_vs_successful'} & set(cfg.experiments):
    need |= {'attacks', 'maps'}
  if 'recovery' in cfg.experiments:
    need |= {'attacks', 'recovery'}
  return tuple(s for s in ('pairs', 'attacks', 'maps', 'recovery') if s in need)


def class_pairs(k: int) -> list[tuple[int, int]]:
  """All pairs (i, j), i < j, of the top-k ranks."""
  return [(i, j) for i in range(k) for j in range(i + 1, k)]
