"""Study 000's whole per-batch pipeline as the ``study000_pipeline`` workload.

The job is ``compare_saliency.compare_batch`` (the study's step on one device) with the
study's default settings (``compare_saliency.Config()``: untargeted FGSM at five budgets in
the model's normalised input space and targeted FGSM towards each of the K - 1 other classes;
SmoothGrad (N=10), Grad-CAM and Guided Backprop maps of the clean images and of every
variant; Spearman, SSIM, HOG-Pearson and the paper's SSIM per (clean, variant) pair) on the
first ``pipeline_batch_size`` images of the batch, as one compiled call. Its ``stage`` compiles
the pipeline's three stages apart (``compare_saliency.attack_variants``, ``variant_maps`` and
``pair_metrics``) and times each on the outputs of the one before, which shows where the time
goes and what compiling them into one program changes. The PyTorch stack's version is
``torch_pipeline``.
"""

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import models
from advsal_jax.benchmarks import config
from advsal_jax.benchmarks import workloads
from advsal_jax.studies import compare_saliency
from advsal_jax.studies import runner

STAGES = ('attack', 'maps', 'metrics')
"""The pipeline's stages, in order."""


def input_std(name: str, channels: int) -> tuple[float, ...] | None:
  """The normalisation std of registered model ``name``; None (unit) for another model."""
  if name not in models.MODELS:
    return None
  std = tuple(models.create(name).std)
  return std if len(std) == channels else None


def budgets(study_cfg: compare_saliency.Config, std: tuple[float, ...] | None,
            channels: int) -> tuple[np.ndarray, np.ndarray]:
  """The study's budgets in pixels per channel, as ``compare_saliency.run`` computes them.

  Returns:
    ``(eps_untargeted f32[E,C], eps_targeted f32[C])``.
  """
  std = std or (1.0,) * channels
  eps_u = np.stack([compare_saliency.eps_per_channel(e, study_cfg, std)
                    for e in study_cfg.untargeted_eps])
  return eps_u, compare_saliency.eps_per_channel(study_cfg.targeted_eps, study_cfg, std)


def stage_fns(apply_fn: Any, *, study_cfg: compare_saliency.Config, layer: str,
              num_classes: int, std: tuple[float, ...] | None) -> tuple[Any, Any, Any]:
  """The pipeline's three stages as functions of arrays, each taking the last one's output.

  Returns:
    ``attack(params, x, eps_untargeted, eps_targeted)`` (``attack_variants``),
    ``maps(params, x, index, attack_output)`` (``variant_maps``) and
    ``metrics(maps_output)`` (``pair_metrics``).
  """
  def attack(params, x, eps_u, eps_t):
    return compare_saliency.attack_variants(apply_fn, params, x, eps_u, eps_t,
                                            num_classes=num_classes)

  def maps(params, x, index, adv):
    return compare_saliency.variant_maps(
        apply_fn, params, x, adv['x_adv'], adv['real_pred'], adv['fake_pred'],
        runner.example_keys(study_cfg.seed, index), cfg=study_cfg, layer=layer, input_std=std)

  def metrics(m):
    return compare_saliency.pair_metrics(m, cfg=study_cfg)

  return attack, maps, metrics


def time_stages(apply_fn: Any, params: Any, x: jax.Array, index: jax.Array,
                eps_untargeted: np.ndarray, eps_targeted: np.ndarray, *,
                study_cfg: compare_saliency.Config, layer: str, num_classes: int,
                std: tuple[float, ...] | None, repeats: int,
                options: dict[str, str] | None) -> dict[str, Any]:
  """Compiles the pipeline's three stages apart and times each ``repeats`` times.

  Each stage runs on the previous stage's output (computed once, untimed); all compile with
  ``options``.

  Args:
    apply_fn: the model, ``apply_fn(params, x) -> logits f32[B,K]``.
    params: its variables.
    x: f32[B,H,W,C] in [0, 1].
    index: int32[B] the images' indices (seed SmoothGrad per image).
    eps_untargeted: f32[E,C]; eps_targeted: f32[C] (``budgets``).
    study_cfg: the study's settings.
    layer: the Grad-CAM layer.
    num_classes: K.
    std: the model's normalisation std (``input_std``).
    repeats: timed calls per stage.
    options: XLA compiler options; None: XLA's defaults.

  Returns:
    ``stage_s`` (median seconds per stage of ``STAGES``), ``stage_times_s`` and
    ``stages_sum_s`` (their sum: the pipeline run as three compiled calls).
  """
  attack, maps, metrics = stage_fns(apply_fn, study_cfg=study_cfg, layer=layer,
                                    num_classes=num_classes, std=std)
  calls = {}

  def compile_and_run(name, fn, *args):
    calls[name] = (jax.jit(fn).lower(*args).compile(compiler_options=options), args)
    return jax.block_until_ready(calls[name][0](*args))

  adv = compile_and_run('attack', attack, params, x, eps_untargeted, eps_targeted)
  compile_and_run('metrics', metrics, compile_and_run('maps', maps, params, x, index, adv))
  times = {name: [] for name in STAGES}
  for _ in range(repeats):
    for name in STAGES:
      compiled, args = calls[name]
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times[name].append(time.perf_counter() - start)
  median = {k: statistics.median(v) for k, v in times.items()}
  return {'stage_s': median, 'stage_times_s': times, 'stages_sum_s': sum(median.values())}


def build_job(subject: workloads.Subject, x: jax.Array, num_classes: int,
              cfg: config.BenchmarkConfig) -> workloads.Job:
  """``compare_saliency.compare_batch`` on the first ``cfg.pipeline_batch_size`` images.

  Raises:
    workloads.NotApplicable: the study's methods or metrics reject the model or its images
      (e.g. HOG needs maps of at least 16 x 16 pixels).
  """
  study_cfg = compare_saliency.Config()
  x = jnp.asarray(x[:cfg.pipeline_batch_size])
  index = jnp.arange(x.shape[0], dtype=jnp.int32)
  std = input_std(subject.name, x.shape[-1])
  eps_u, eps_t = budgets(study_cfg, std, x.shape[-1])

  def fn(params, images, idx, eps_untargeted, eps_targeted):
    return compare_saliency.compare_batch(
        subject.apply_fn, params, images, idx, eps_untargeted, eps_targeted, cfg=study_cfg,
        layer=subject.layer, num_classes=num_classes, input_std=std)

  args = (subject.variables, x, index, eps_u, eps_t)
  try:
    jax.eval_shape(fn, *args)
  except ValueError as e:
    raise workloads.NotApplicable(str(e)) from e
  settings = {'untargeted_eps': list(study_cfg.untargeted_eps),
              'targeted_eps': study_cfg.targeted_eps, 'eps_space': study_cfg.eps_space,
              'targets': num_classes - 1, 'methods': list(study_cfg.methods),
              'method_kwargs': {k: dict(v) for k, v in study_cfg.method_kwargs.items()},
              'metrics': list(study_cfg.metrics), 'layer': subject.layer}

  def stages(repeats, options):
    return time_stages(subject.apply_fn, subject.variables, x, index, eps_u, eps_t,
                       study_cfg=study_cfg, layer=subject.layer, num_classes=num_classes,
                       std=std, repeats=repeats, options=options)

  peer_inputs = {'study_cfg': study_cfg, 'eps_untargeted': eps_u, 'eps_targeted': eps_t,
                 'input_std': std, 'num_classes': num_classes, 'layer': subject.layer,
                 'apply_fn': subject.apply_fn,
                 'variables': subject.variables, 'x': np.asarray(x)}
  variants = len(study_cfg.untargeted_eps) + num_classes - 1
  return workloads.Job(fn, args, x.shape[0], settings,
                       {'note': f'{variants} FGSM variants per image; {1 + variants} images '
                                'explained per image by each method'},
                       stage=stages, peer_inputs=peer_inputs)
