"""The benchmark's workloads: what each one compiles, on which arguments, with which settings.

One *workload* is one jitted call on a batch: ``forward``, each saliency method of
``saliency.REGISTRY`` (called through ``saliency.explain``), each attack of
``attacks.ATTACKS``, ``study000_metrics`` (the maps-similarity metrics of study 000 on
pairs of random maps, also timed against the per-pair scipy/skimage reference),
``study000_pipeline`` (study 000's whole per-batch pipeline, built by ``study_pipeline``),
``study002_sweep`` (study 002's whole per-batch pipeline on the one model: FGSM at its six
budgets, top-5 as is and cropped, Grad-CAM, GBVS, DeepFool and every measurement) and
``study004_localize`` (study 004's attack stage: Felzenszwalb segmentation on the host, the
region attacks compiled; its call is one batch, and the whole stage over a few batches is
also timed against its compiled and host work alone, ``overlap.time_stage``); the training
workloads' jobs are built by ``training_steps``.
"""

import dataclasses
import inspect
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import skimage.feature
import skimage.metrics

from advsal_jax import attacks
from advsal_jax import parallel
from advsal_jax import saliency
from advsal_jax.benchmarks import config
from advsal_jax.benchmarks import overlap
from advsal_jax.studies import advis_sweep
from advsal_jax.studies import compare_saliency
from advsal_jax.studies import localize_attacks
from advsal_jax.studies import runner
from advsal_jax.types import ApplyFn, Params

MAP_SHAPE = (32, 32)
# The parameters of the metrics parity tests (tests/metrics_ssim_test.py 'wang2004',
# tests/metrics_hog_test.py _STUDY), i.e. what compare_saliency.METRICS computes.
SSIM_KWARGS = dict(data_range=1.0, gaussian_weights=True, sigma=1.5,
                   use_sample_covariance=False)
HOG_KWARGS = dict(orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                  block_norm='L2-Hys')
_ITERATIVE = ('bim', 'pgd', 'mim')


@dataclasses.dataclass(frozen=True)
class Subject:
  """The model under test.

  Attributes:
    name: model name for reports.
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]`` (a flax ``model.apply`` for the
      CAM family).
    variables: its parameters.
    layer: the Grad-CAM/CAM layer.
    masker: ``(apply_fn, variables)`` of a masking model of this classifier
      (``saliency.load_masker``) for ``saliency.MASKER_METHODS``; None skips them.
  """
  name: str
  apply_fn: ApplyFn
  variables: Params
  layer: str
  masker: tuple[ApplyFn, Params] | None = None


@dataclasses.dataclass(frozen=True)
class Job:
  """What one workload compiles and times.

  Attributes:
    fn: the function to jit; ``fn(*args)``.
    args: its arguments (arrays, pytrees of arrays, typed keys).
    items: images (or map pairs) processed per call.
    settings: the hyper-parameters used, for the report.
    extra: workload-specific results merged into its record.
    check: optional ``check(output) -> dict`` on the last timed call's output, merged into
      the record too.
    per_example: the per-example arrays among ``args`` by name (LIME's ``segments``), for
      the peers.
    stage: optional ``stage(repeats, options) -> dict`` of further timings merged into the
      record: a whole study stage with its host work (``overlap.time_stage``), a pipeline's
      parts compiled apart, a training step without its gradient.
    peer_inputs: what the workload's PyTorch peer needs beyond ``settings`` (the study's
      settings, the initial training state), not recorded.
  """
  fn: Callable[..., Any]
  args: tuple[Any, ...]
  items: int
  settings: dict[str, Any]
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  check: Callable[[Any], dict[str, Any]] | None = None
  per_example: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
  stage: Callable[[int, dict[str, str] | None], dict[str, Any]] | None = None
  peer_inputs: dict[str, Any] = dataclasses.field(default_factory=dict)


class NotApplicable(Exception):
  """The workload does not apply to this model; the message says why."""


def _resolved(fn: Callable[..., Any], **overrides: Any) -> dict[str, Any]:
  """``overrides`` with each None replaced by ``fn``'s default for that keyword."""
  params = inspect.signature(fn).parameters
  return {k: params[k].default if v is None else v for k, v in overrides.items()}


def _method_kwargs(cfg: config.BenchmarkConfig) -> dict[str, dict[str, Any]]:
  """The flags that set saliency hyper-parameters, as each method's keyword arguments."""
  return {
      'smoothgrad': dict(num_samples=cfg.smoothgrad_samples, batch_size=cfg.smoothgrad_chunk),
      'integrated_gradients': dict(num_steps=cfg.ig_steps, batch_size=cfg.ig_chunk),
      'lime': dict(num_samples=cfg.lime_samples, batch_size=cfg.lime_chunk),
  }


def _saliency_job(name: str, subject: Subject, x: jax.Array, pred: jax.Array,
                  cfg: config.BenchmarkConfig, key: jax.Array) -> Job:
  """Explains ``pred`` with method ``name`` through ``saliency.explain``.

  The job's settings are the hyper-parameters the flags set (an unset one: the registry's
  default; a chunk of 0: no chunking), and the layer of a layer method.

  Raises:
    NotApplicable: a layer method whose layer checks reject this model; a masker method
      without a masking model.
  """
  spec = saliency.REGISTRY[name]
  apply_fn, variables = subject.apply_fn, subject.variables
  if spec.needs_masker:
    if subject.masker is None:
      raise NotApplicable(f'{name} needs a masking model of {subject.name} (train '
                          f'masker_{subject.name} with experiments/train_masker.py)')
    apply_fn, variables = subject.masker
  hp = {k: spec.defaults[k] if v is None else v
        for k, v in _method_kwargs(cfg).get(name, {}).items()}
  if 'batch_size' in hp:
    hp['batch_size'] = hp['batch_size'] or None  # A chunk of 0: no chunking.
  extra: dict[str, Any] = {}
  traced: dict[str, jax.Array] = {}  # Per-example array arguments.
  if 'segments' in spec.per_example:
    start = time.perf_counter()
    segments = saliency.segment_images(x)
    rate = x.shape[0] / (time.perf_counter() - start)
    hp['num_segments'] = int(segments.max()) + 1
    traced['segments'] = jnp.asarray(segments)
    extra['host_segmentation_images_per_s'] = rate
    extra['note'] = f'excludes quickshift segmentation on the host ({rate:.1f} images/s alone)'

  def fn(params, images, target, k, kwargs):
    return saliency.explain(name, apply_fn, params, images, target, key=k,
                            layer=subject.layer, **kwargs, **hp)

  args = (variables, x, pred, key, traced)
  if spec.needs_layer:
    try:
      jax.eval_shape(fn, *args)
    except ValueError as e:
      raise NotApplicable(str(e)) from e
  settings = {**hp, 'layer': subject.layer} if spec.needs_layer else hp
  return Job(fn, args, x.shape[0], settings, extra, per_example=traced)


def _attack_job(name: str, subject: Subject, x: jax.Array, pred: jax.Array, num_classes: int,
                cfg: config.BenchmarkConfig, key: jax.Array) -> Job:
  """Attacks the predicted classes (JSMA, targeted only, the next class ``(pred + 1) % K``)."""
  attack = attacks.ATTACKS[name]
  labels = pred
  if name in _ITERATIVE:
    hp = _resolved(attack, num_steps=cfg.attack_steps)
  elif name == 'carlini_wagner_l2':
    hp = _resolved(attack, binary_search_steps=cfg.cw_binary_search_steps,
                   max_iterations=cfg.cw_max_iterations)
  elif name == 'deepfool':
    hp = _resolved(attack, max_iter=cfg.deepfool_max_iter)
  elif name == 'jsma':
    hp = dict(targeted=True)
    labels = (pred + 1) % num_classes
  else:
    hp = {}

  def fn(params, images, lab, k):
    return attack(subject.apply_fn, params, images, lab, key=k, **hp)

  extra = {}
  if name in ('carlini_wagner_l2', 'deepfool', 'jsma'):
    extra['note'] = 'loop stops early (batch done or stalled): time depends on the inputs'
  return Job(fn, (subject.variables, x, labels, key), x.shape[0], hp, extra)


def _forward_job(subject: Subject, x: jax.Array) -> Job:
  # A fresh function: jax would reuse the executable of the jitted prediction call.
  return Job(lambda params, images: subject.apply_fn(params, images), (subject.variables, x),
             x.shape[0], {})


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
  return scipy.stats.spearmanr(a.ravel(), b.ravel()).statistic


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
  return skimage.metrics.structural_similarity(a, b, **SSIM_KWARGS)


def _hog_pearson(a: np.ndarray, b: np.ndarray) -> float:
  return np.corrcoef(skimage.feature.hog(a, **HOG_KWARGS),
                     skimage.feature.hog(b, **HOG_KWARGS))[0, 1]


REFERENCE_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    'spearman': _spearman,
    'mean_ssim': _ssim,
    'hog_pearson': _hog_pearson,
}
"""Per-pair scipy/skimage equivalents of ``compare_saliency.METRICS`` on f64[H,W] maps."""


def reference_metrics(a: np.ndarray, b: np.ndarray, *, repeats: int = 1
                      ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Runs ``REFERENCE_METRICS`` pair by pair, as a scipy/skimage user would.

  Args:
    a: f64[P,H,W] maps; b: f64[P,H,W].
    repeats: loops over the pairs per metric; the median time is reported.

  Returns:
    ``(values, seconds)``: f64[P] per metric and the median wall time of its loop.
  """
  values, seconds = {}, {}
  for name, fn in REFERENCE_METRICS.items():
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      values[name] = np.array([fn(x, y) for x, y in zip(a, b)])
      times.append(time.perf_counter() - start)
    seconds[name] = statistics.median(times)
  return values, seconds


def _metrics_job(cfg: config.BenchmarkConfig, key: jax.Array) -> Job:
  """``compare_saliency.METRICS`` on random map pairs, and the reference timed on a subset."""
  a, b = jax.random.uniform(key, (2, cfg.metric_pairs, *MAP_SHAPE))

  def fn(x, y):
    return {name: metric(x, y) for name, metric in compare_saliency.METRICS.items()}

  n = min(cfg.reference_pairs, cfg.metric_pairs)
  ref, seconds = reference_metrics(np.asarray(a[:n], np.float64), np.asarray(b[:n], np.float64),
                                   repeats=cfg.repeats)
  extra = {
      'reference_pairs_timed': n,
      'reference_repeats': cfg.repeats,
      'reference_pairs_per_s': n / sum(seconds.values()),
      'reference_pairs_per_s_by_metric': {k: n / s for k, s in seconds.items()},
      'note': (f'reference: scipy/skimage per pair, median of {cfg.repeats} loops over {n} '
               f'pairs, extrapolated to {cfg.metric_pairs}'),
  }

  def check(ours):
    return {'max_abs_diff_vs_reference': {
        k: float(np.max(np.abs(np.asarray(ours[k][:n]) - ref[k]))) for k in ref}}

  settings = {'pairs': cfg.metric_pairs, 'map_shape': list(MAP_SHAPE),
              'metrics': list(compare_saliency.METRICS)}
  return Job(fn, (a, b), cfg.metric_pairs, settings, extra, check)


def _sweep_job(subject: Subject, x: jax.Array, pred: jax.Array,
               cfg: config.BenchmarkConfig) -> Job:
  """Study 002's ``sweep_batch`` with the subject as its only model (labels: predictions)."""
  study_cfg = advis_sweep.Config(
      models=(subject.name,), num_figure_images=0,
      **({} if cfg.deepfool_max_iter is None else {'deepfool_max_iter': cfg.deepfool_max_iter}))
  classifier = advis_sweep.Classifier(subject.name, subject.apply_fn, subject.layer)

  def fn(variables, images, labels):
    return advis_sweep.sweep_batch((classifier,), {subject.name: variables}, images, labels,
                                   cfg=study_cfg)

  settings = {'eps': list(study_cfg.eps), 'deepfool_max_iter': study_cfg.deepfool_max_iter}
  return Job(fn, (subject.variables, x, pred), x.shape[0], settings)


def _localize_job(subject: Subject, x: jax.Array, pred: jax.Array,
                  cfg: config.BenchmarkConfig) -> Job:
  """Study 004's attack stage over ``cfg.localize_batches`` batches of the images.

  The job is the stage's step on its first prepared batch; ``Job.stage`` times the whole
  stage (labels: the predictions, which the stage only records).
  """
  study_cfg = localize_attacks.Config(
      batch_size=cfg.localize_batch_size,
      **({} if cfg.attack_steps is None else {'max_steps': cfg.attack_steps}))
  images, labels = np.asarray(x), np.asarray(pred)
  mesh = parallel.data_mesh()
  # The study's stage with its step left un-jitted (what runner.compile_step jits), so the
  # benchmark compiles it with the run's options.
  stage = dataclasses.replace(
      localize_attacks.attack_stage(subject.apply_fn,
                                    lambda ids: {'x': images[ids], 'label': labels[ids]},
                                    cfg=study_cfg, mesh=mesh),
      step=parallel.data_parallel(localize_attacks.attack_step(subject.apply_fn, cfg=study_cfg),
                                  mesh, batched=(False, True)))
  work = np.arange(min(len(images), cfg.localize_batches * cfg.localize_batch_size))
  first = runner.host_batch(stage, runner.batch_ids(
      work, 0, stage.batch_size, parallel.padded_size(stage.batch_size, mesh)))
  args = (parallel.replicate(subject.variables, mesh), parallel.shard_batch(first, mesh))
  settings = {k: getattr(study_cfg, k) for k in (
      'batch_size', 'num_regions', 'max_steps', 'patience', 'target_class', 'eps', 'step_size',
      'felzenszwalb_scale', 'felzenszwalb_sigma', 'felzenszwalb_min_size')}

  def time_whole_stage(repeats, options):
    return overlap.time_stage(stage, work, subject.variables, repeats=repeats, options=options,
                              mesh=mesh)

  return Job(stage.step, args, stage.batch_size, settings,
             {'note': 'throughput: the step on the first batch (attacks stop at success or '
                      'stall: time depends on the inputs); the whole stage: below the table'},
             stage=time_whole_stage)


def kind(name: str) -> str:
  """'forward', 'saliency', 'attack', 'metrics', 'pipeline' or 'training'."""
  if name in saliency.REGISTRY:
    return 'saliency'
  if name in attacks.ATTACKS:
    return 'attack'
  if name in (config.PIPELINE_WORKLOAD, config.SWEEP_WORKLOAD, config.LOCALIZE_WORKLOAD):
    return 'pipeline'
  if name in config.TRAIN_WORKLOADS:
    return 'training'
  return 'metrics' if name == config.METRICS_WORKLOAD else 'forward'


def build_job(name: str, subject: Subject, x: jax.Array, pred: jax.Array, num_classes: int,
              cfg: config.BenchmarkConfig, key: jax.Array) -> Job:
  """The job of workload ``name`` on ``subject``'s batch ``x`` and predictions ``pred``.

  ``study000_pipeline`` and the training workloads are built by ``study_pipeline`` and
  ``training_steps`` (``runner.build_job`` builds any workload).

  Raises:
    NotApplicable: the workload does not apply to this model.
    KeyError: a workload built elsewhere.
  """
  if name in saliency.REGISTRY:
    return _saliency_job(name, subject, x, pred, cfg, key)
  if name in attacks.ATTACKS:
    return _attack_job(name, subject, x, pred, num_classes, cfg, key)
  if name == config.METRICS_WORKLOAD:
    return _metrics_job(cfg, key)
  if name == config.SWEEP_WORKLOAD:
    return _sweep_job(subject, x, pred, cfg)
  if name == config.LOCALIZE_WORKLOAD:
    return _localize_job(subject, x, pred, cfg)
  if name == 'forward':
    return _forward_job(subject, x)
  raise KeyError(f'workload {name!r} is not built here; see runner.build_job.')
