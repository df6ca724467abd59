"""Settings of a benchmark run: the workload names, ``BenchmarkConfig`` and its validation."""

import dataclasses
import pathlib

from advsal_jax import attacks
from advsal_jax import saliency

METRICS_WORKLOAD = 'study000_metrics'
PIPELINE_WORKLOAD = 'study000_pipeline'
SWEEP_WORKLOAD = 'study002_sweep'
LOCALIZE_WORKLOAD = 'study004_localize'
TRAIN_WORKLOADS = ('train_classifier', 'train_masker', 'train_detector')
"""One optimizer step of the classifier, the masking model and a detector."""
WORKLOADS = ('forward', *saliency.REGISTRY, *attacks.ATTACKS, METRICS_WORKLOAD,
             PIPELINE_WORKLOAD, SWEEP_WORKLOAD, LOCALIZE_WORKLOAD, *TRAIN_WORKLOADS)
"""Every workload name, in the order they run."""

SINGLE_PASS = ('forward', 'gradient', 'gradient_x_input', 'guided_backprop', 'grad_cam', 'cam',
               'fgsm')
"""Workloads that run the model once forward and at most once backward: also timed with plain
``jax.jit`` (XLA's default options) beside ``compilation.jit`` when ``plain_jit`` is set."""


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  """Settings of one benchmark run (written to ``config.json``).

  ``None`` for an attack or chunk setting means the library function's default; the value
  used is recorded in each workload's ``settings``. A chunk of 0 means no chunking.

  Attributes:
    model: registered model name or checkpoint directory.
    random_init: use freshly initialised weights of the registered ``model`` and uniform
      random images instead of a checkpoint and test images.
    plain_model: run the model built from flax's stock layers (``models``' ``plain=True``:
      ``nn.Conv`` as is, ``nn.max_pool``) with the same weights, i.e. a user's unmodified
      model; the library's own rewrites still apply.
    batch_size: images per call.
    workloads: names from ``WORKLOADS``; empty: all.
    repeats: timed calls per workload (the median is reported).
    seed: PRNG seed (random images, SmoothGrad/LIME/PGD keys, random metric maps).
    smoothgrad_samples: SmoothGrad's N.
    smoothgrad_chunk: noisy copies per image evaluated at once (``batch_size`` argument).
    ig_steps: Integrated Gradients' number of steps.
    ig_chunk: path points per image evaluated at once.
    lime_samples: LIME's perturbed copies per image.
    lime_chunk: perturbed copies per image evaluated at once.
    attack_steps: ``num_steps`` of BIM, PGD and MIM, and study 004's ``max_steps``.
    cw_binary_search_steps: Carlini-Wagner's number of constants tried.
    cw_max_iterations: Carlini-Wagner's Adam steps per constant.
    deepfool_max_iter: DeepFool's maximum number of steps.
    metric_pairs: pairs of random maps for ``study000_metrics``.
    reference_pairs: how many of them the per-pair reference is timed on (then extrapolated).
    localize_batch_size: images per batch of study 004's attack stage in
      ``study004_localize``.
    localize_batches: batches of that stage ``study004_localize`` runs, over the first
      ``localize_batches * localize_batch_size`` images (fewer when ``batch_size`` is smaller).
    pipeline_batch_size: images per call of ``study000_pipeline`` (study 000's batch), the
      first of the batch (fewer when ``batch_size`` is smaller).
    train_batch_size: images per step of the training workloads; None: each loop's own
      default (``training.TrainConfig``, ``masker_training.MaskerConfig`` and study 003's
      ``detector_batch_size``). The batch's images are repeated to fill a larger step.
    compare_torch: also time each workload's PyTorch peer (Captum, torchattacks) on the
      converted model (``torch_peers``; alexnet_cifar only, needs torch installed).
    compare_lime: also time the ``lime`` package on the ``lime`` workload's images, segments
      and settings (``lime_peer``; needs lime installed).
    lime_peer_images: how many of the batch's images the ``lime`` package explains per timed
      call (it explains one image at a time, so its images/s does not depend on this).
    plain_jit: also time the ``SINGLE_PASS`` workloads compiled with plain ``jax.jit`` (XLA's
      default options), when the run's options are not XLA's defaults already.
    profile: a workload whose one extra call, after its timed calls, is recorded with the JAX
      profiler into ``<output_dir>/profile``; None: no trace.
    xla_defaults: compile with XLA's default options instead of
      ``compilation.compiler_options()`` (to measure what those options change).
  """
  model: str = 'alexnet_cifar'
  random_init: bool = False
  plain_model: bool = False
  batch_size: int = 64
  workloads: tuple[str, ...] = ()
  repeats: int = 3
  seed: int = 0
  smoothgrad_samples: int = 50
  smoothgrad_chunk: int | None = None
  ig_steps: int = 64
  ig_chunk: int | None = None
  lime_samples: int = 1000
  lime_chunk: int | None = None
  attack_steps: int | None = None
  cw_binary_search_steps: int | None = None
  cw_max_iterations: int | None = None
  deepfool_max_iter: int | None = None
  metric_pairs: int = 10_000
  reference_pairs: int = 500
  localize_batch_size: int = 8
  localize_batches: int = 4
  pipeline_batch_size: int = 32
  train_batch_size: int | None = None
  compare_torch: bool = False
  compare_lime: bool = False
  lime_peer_images: int = 8
  plain_jit: bool = True
  profile: str | None = None
  xla_defaults: bool = False


def validate(cfg: BenchmarkConfig) -> tuple[str, ...]:
  """Checks ``cfg`` before any compilation and returns the workloads to run, in run order.

  Raises:
    ValueError: an unknown workload (naming the flag and listing the valid names), a
      ``profile`` workload that is not run, or a non-positive count.
  """
  unknown = [w for w in cfg.workloads if w not in WORKLOADS]
  if unknown:
    raise ValueError(f'--workloads: unknown {unknown}; valid names: {", ".join(WORKLOADS)}.')
  names = tuple(w for w in WORKLOADS if w in cfg.workloads) if cfg.workloads else WORKLOADS
  if cfg.profile is not None and cfg.profile not in names:
    raise ValueError(f'--profile must name one of the workloads that run ({", ".join(names)}), '
                     f'got {cfg.profile!r}.')
  for name in ('batch_size', 'repeats', 'smoothgrad_samples', 'ig_steps', 'lime_samples',
               'lime_peer_images', 'metric_pairs', 'reference_pairs', 'localize_batch_size',
               'localize_batches', 'pipeline_batch_size'):
    if getattr(cfg, name) < 1:
      raise ValueError(f'--{name} must be >= 1, got {getattr(cfg, name)}.')
  for name in ('smoothgrad_chunk', 'ig_chunk', 'lime_chunk', 'attack_steps',
               'cw_binary_search_steps', 'cw_max_iterations', 'deepfool_max_iter',
               'train_batch_size'):
    value, low = getattr(cfg, name), 0 if name.endswith('_chunk') else 1
    if value is not None and value < low:
      raise ValueError(f'--{name} must be >= {low} or unset, got {value}.')
  return names


def default_output_dir(cfg: BenchmarkConfig) -> str:
  """``results/benchmark/<model>[_plain]_b<batch_size>`` (a checkpoint dir's last part)."""
  plain = '_plain' if cfg.plain_model else ''
  return f'results/benchmark/{pathlib.Path(cfg.model).name}{plain}_b{cfg.batch_size}'
