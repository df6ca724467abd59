"""Throughput, compile time and memory of the model, every saliency method, attack and metric.

One *workload* is one jitted call on a batch: ``forward``, each name of ``saliency.METHODS``,
each name of ``attacks.ATTACKS``, and ``study000_metrics`` (the three maps-similarity metrics
of study 000 on pairs of random maps, also timed against the per-pair scipy/skimage
reference). For each workload ``benchmark`` records the items per second (median over timed
calls), the seconds to ``jax.jit(f).lower(...).compile()``, XLA's memory analysis of the
compiled executable and the process's peak resident set size. With ``compare_torch`` each
workload that has a PyTorch peer (Captum, torchattacks) is also timed on the same model,
images and targets (``benchmarking_torch``). ``experiments/benchmark.py`` is the binary.

Timing: each workload is compiled ahead of time, then its executable runs ``repeats`` times,
each call blocked until ready; there is no separate untimed call, so with ``repeats >= 3`` the
median discards a slow first call.
"""

import dataclasses
import inspect
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import skimage.feature
import skimage.metrics

from advsal_jax import attacks
from advsal_jax import benchmarking_report
from advsal_jax import benchmarking_torch
from advsal_jax import checkpoints
from advsal_jax import compilation
from advsal_jax import data
from advsal_jax import models
from advsal_jax import saliency
from advsal_jax.studies import comparison
from advsal_jax.types import ApplyFn, Params

METRICS_WORKLOAD = 'study000_metrics'
WORKLOADS = ('forward', *saliency.METHODS, *attacks.ATTACKS, METRICS_WORKLOAD)
"""Every workload name, in the order they run."""

METRICS_GOAL = 20.0
"""Target speed-up of the batched metrics over the per-pair scipy/skimage reference."""

MAP_SHAPE = (32, 32)
# The parameters of the metrics parity tests (tests/metrics_ssim_test.py 'wang2004',
# tests/metrics_hog_test.py _STUDY), i.e. what comparison.METRICS computes.
_SSIM_KWARGS = dict(data_range=1.0, gaussian_weights=True, sigma=1.5,
                    use_sample_covariance=False)
_HOG_KWARGS = dict(orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                   block_norm='L2-Hys')
_ITERATIVE = ('bim', 'pgd', 'mim')


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
    attack_steps: ``num_steps`` of BIM, PGD and MIM.
    cw_binary_search_steps: Carlini-Wagner's number of constants tried.
    cw_max_iterations: Carlini-Wagner's Adam steps per constant.
    deepfool_max_iter: DeepFool's maximum number of steps.
    metric_pairs: pairs of random maps for ``study000_metrics``.
    reference_pairs: how many of them the per-pair reference is timed on (then extrapolated).
    compare_torch: also time each workload's PyTorch peer (Captum, torchattacks) on the
      converted model (``benchmarking_torch``; alexnet_cifar only, needs torch installed).
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
  compare_torch: bool = False
  xla_defaults: bool = False


def validate(cfg: BenchmarkConfig) -> tuple[str, ...]:
  """Checks ``cfg`` before any compilation and returns the workloads to run, in run order.

  Raises:
    ValueError: an unknown workload (naming the flag and listing the valid names) or a
      non-positive count.
  """
  unknown = [w for w in cfg.workloads if w not in WORKLOADS]
  if unknown:
    raise ValueError(f'--workloads: unknown {unknown}; valid names: {", ".join(WORKLOADS)}.')
  for name in ('batch_size', 'repeats', 'smoothgrad_samples', 'ig_steps', 'lime_samples',
               'metric_pairs', 'reference_pairs'):
    if getattr(cfg, name) < 1:
      raise ValueError(f'--{name} must be >= 1, got {getattr(cfg, name)}.')
  for name in ('smoothgrad_chunk', 'ig_chunk', 'lime_chunk', 'attack_steps',
               'cw_binary_search_steps', 'cw_max_iterations', 'deepfool_max_iter'):
    value, low = getattr(cfg, name), 0 if name.endswith('_chunk') else 1
    if value is not None and value < low:
      raise ValueError(f'--{name} must be >= {low} or unset, got {value}.')
  return tuple(w for w in WORKLOADS if w in cfg.workloads) if cfg.workloads else WORKLOADS


@dataclasses.dataclass(frozen=True)
class Subject:
  """The model under test.

  Attributes:
    name: model name for reports.
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]`` (a flax ``model.apply`` for the
      CAM family).
    variables: its parameters.
    layer: the Grad-CAM/CAM layer.
  """
  name: str
  apply_fn: ApplyFn
  variables: Params
  layer: str


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
  """
  fn: Callable[..., Any]
  args: tuple[Any, ...]
  items: int
  settings: dict[str, Any]
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  check: Callable[[Any], dict[str, Any]] | None = None


class NotApplicable(Exception):
  """The workload does not apply to this model; the message says why."""


def load_subject(cfg: BenchmarkConfig, *, data_dir: str | None = None
                 ) -> tuple[Subject, np.ndarray, dict[str, Any]]:
  """The model of ``cfg`` and a batch of its inputs.

  Returns:
    ``(subject, x, info)``: ``x`` f32[batch_size,H,W,C] in [0, 1] (the first test images,
    or uniform noise with ``random_init``); ``info`` describes both for ``config.json``.

  Raises:
    ValueError: unknown model name (``random_init``), batch larger than the test split.
    checkpoints.CheckpointError: missing or broken checkpoint.
  """
  key_model, key_x = jax.random.split(jax.random.key(cfg.seed))
  if cfg.random_init:
    name = cfg.model
    model, variables = models.init(name, key_model)
    model = model.clone(plain=cfg.plain_model)
    spec = models.get_spec(name)
    x = np.asarray(jax.random.uniform(key_x, (cfg.batch_size, *spec.input_shape)))
    info = {'weights': 'random init', 'inputs': 'uniform random'}
    return Subject(name, model.apply, variables, spec.last_conv), x, info
  model, variables, meta = checkpoints.load(cfg.model)
  model = model.clone(plain=cfg.plain_model)
  name = meta['model']
  test = data.load(meta['dataset'], 'test', data_dir=data_dir)
  if cfg.batch_size > len(test.labels):
    raise ValueError(f'--batch_size must be <= {len(test.labels)} (the test split), got '
                     f'{cfg.batch_size}.')
  layer = meta.get('last_conv') or models.get_spec(name).last_conv
  info = {'weights': str(checkpoints.resolve(cfg.model)),
          'inputs': f'first {cfg.batch_size} {meta["dataset"]} test images'}
  return (Subject(name, model.apply, variables, layer),
          data.to_float(test.images[:cfg.batch_size]), info)


def _resolved(fn: Callable[..., Any], **overrides: Any) -> dict[str, Any]:
  """``overrides`` with each None replaced by ``fn``'s default for that keyword."""
  params = inspect.signature(fn).parameters
  return {k: params[k].default if v is None else v for k, v in overrides.items()}


def _saliency_job(name: str, subject: Subject, x: jax.Array, pred: jax.Array,
                  cfg: BenchmarkConfig, key: jax.Array) -> Job:
  """Explains ``pred`` with method ``name``.

  Raises:
    NotApplicable: a CAM-family method whose layer checks reject this model.
  """
  method = saliency.METHODS[name]
  hp: dict[str, Any] = {}
  extra: dict[str, Any] = {}
  if name == 'smoothgrad':
    hp = dict(num_samples=cfg.smoothgrad_samples, batch_size=cfg.smoothgrad_chunk)
  elif name == 'integrated_gradients':
    hp = dict(num_steps=cfg.ig_steps, batch_size=cfg.ig_chunk)
  elif name == 'lime':
    hp = dict(num_samples=cfg.lime_samples, batch_size=cfg.lime_chunk)
  hp = _resolved(saliency.lime_explain if name == 'lime' else method, **hp)
  if 'batch_size' in hp:
    hp['batch_size'] = hp['batch_size'] or None  # A chunk of 0: no chunking.
  if name in saliency.LAYER_METHODS:
    hp['layer'] = subject.layer
  traced: dict[str, jax.Array] = {}  # Array-valued keyword arguments.
  if name == 'lime':
    start = time.perf_counter()
    segments = saliency.segment_images(x)
    rate = x.shape[0] / (time.perf_counter() - start)
    hp['num_segments'] = int(segments.max()) + 1
    traced['segments'] = jnp.asarray(segments)
    extra['host_segmentation_images_per_s'] = rate
    extra['note'] = f'excludes quickshift segmentation on the host ({rate:.1f} images/s alone)'

  def fn(params, images, target, k, kwargs):
    return method(subject.apply_fn, params, images, target, key=k, **kwargs, **hp)

  args = (subject.variables, x, pred, key, traced)
  if name in saliency.LAYER_METHODS:
    try:
      jax.eval_shape(fn, *args)
    except ValueError as e:
      raise NotApplicable(str(e)) from e
  return Job(fn, args, x.shape[0], hp, extra)


def _attack_job(name: str, subject: Subject, x: jax.Array, pred: jax.Array, num_classes: int,
                cfg: BenchmarkConfig, key: jax.Array) -> Job:
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
  return skimage.metrics.structural_similarity(a, b, **_SSIM_KWARGS)


def _hog_pearson(a: np.ndarray, b: np.ndarray) -> float:
  return np.corrcoef(skimage.feature.hog(a, **_HOG_KWARGS),
                     skimage.feature.hog(b, **_HOG_KWARGS))[0, 1]


REFERENCE_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    'spearman': _spearman,
    'mean_ssim': _ssim,
    'hog_pearson': _hog_pearson,
}
"""Per-pair scipy/skimage equivalents of ``comparison.METRICS`` on f64[H,W] maps."""


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


def _metrics_job(cfg: BenchmarkConfig, key: jax.Array) -> Job:
  """``comparison.METRICS`` on random map pairs, and the reference timed on a subset."""
  a, b = jax.random.uniform(key, (2, cfg.metric_pairs, *MAP_SHAPE))

  def fn(x, y):
    return {name: metric(x, y) for name, metric in comparison.METRICS.items()}

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
              'metrics': list(comparison.METRICS)}
  return Job(fn, (a, b), cfg.metric_pairs, settings, extra, check)


def _compiled_memory(compiled: jax.stages.Compiled) -> dict[str, int | None]:
  """XLA's static buffer sizes of an executable (None where the backend has no analysis)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {'xla_bytes': None, 'xla_temp_bytes': None}
  return {'xla_bytes': (stats.argument_size_in_bytes + stats.output_size_in_bytes
                        + stats.temp_size_in_bytes),
          'xla_temp_bytes': stats.temp_size_in_bytes}


def max_rss_bytes() -> int:
  """The process's peak resident set size so far (a high-water mark, it never decreases)."""
  scale = 1 if sys.platform == 'darwin' else 1024  # ru_maxrss is KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure(job: Job, repeats: int, *,
            options: dict[str, str] | None = None) -> dict[str, Any]:
  """Compiles ``job.fn`` ahead of time, then times ``repeats`` blocking calls.

  Args:
    job: the workload.
    repeats: timed calls.
    options: XLA compiler options (``compilation.compiler_options()``); None: XLA's defaults.

  Returns:
    ``items_per_s`` (at the median time), ``median_s``, ``times_s``, ``compile_s`` (lower +
    compile), ``xla_bytes`` (argument + output + temp), ``xla_temp_bytes`` and what
    ``job.check`` returns.
  """
  start = time.perf_counter()
  compiled = jax.jit(job.fn).lower(*job.args).compile(compiler_options=options)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    output = jax.block_until_ready(compiled(*job.args))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {'items_per_s': job.items / median, 'median_s': median, 'times_s': times,
          'compile_s': compile_s, **_compiled_memory(compiled),
          **(job.check(output) if job.check else {})}


def kind(name: str) -> str:
  """'forward', 'saliency', 'attack' or 'metrics'."""
  if name in saliency.METHODS:
    return 'saliency'
  if name in attacks.ATTACKS:
    return 'attack'
  return 'metrics' if name == METRICS_WORKLOAD else 'forward'


def _job(name: str, subject: Subject, x: jax.Array, pred: jax.Array, num_classes: int,
         cfg: BenchmarkConfig, key: jax.Array) -> Job:
  if name in saliency.METHODS:
    return _saliency_job(name, subject, x, pred, cfg, key)
  if name in attacks.ATTACKS:
    return _attack_job(name, subject, x, pred, num_classes, cfg, key)
  if name == METRICS_WORKLOAD:
    return _metrics_job(cfg, key)
  return _forward_job(subject, x)


def _keeping(check: Callable[[Any], dict[str, Any]] | None,
             keep: Callable[[Any], None]) -> Callable[[Any], dict[str, Any]]:
  """``check`` that first hands the output to ``keep``."""
  def wrapped(output):
    keep(output)
    return check(output) if check else {}
  return wrapped


def run_workload(name: str, subject: Subject, x: jax.Array, pred: jax.Array, num_classes: int,
                 cfg: BenchmarkConfig, key: jax.Array, *,
                 torch_peers: benchmarking_torch.TorchPeers | None = None,
                 options: dict[str, str] | None = None) -> dict[str, Any]:
  """Builds, compiles and times one workload.

  Args:
    name: from ``WORKLOADS``.
    subject: the model.
    x: f32[B,H,W,C] in [0, 1].
    pred: i32[B] the model's predictions on ``x`` (saliency targets, attack labels).
    num_classes: K.
    cfg: the settings.
    key: the workload's PRNG key.
    torch_peers: with ``cfg.compare_torch``, the PyTorch peers, bound to ``x`` and ``pred``.
    options: XLA compiler options for workloads that run the model (``study000_metrics``
      always compiles with XLA's defaults, which suit it; see ``compilation``); None: XLA's
      defaults.

  Returns:
    The workload's record: ``status`` 'ok' with the numbers of ``measure`` plus
    ``process_max_rss_bytes`` (the process high-water mark after it) and
    ``process_max_rss_growth_bytes`` (how much this workload raised it), or 'skipped' with
    ``reason``. With ``torch_peers`` also the ``torch_*`` entries of
    ``TorchPeers.prepare`` and ``speedup_vs_torch`` (JAX items/s over PyTorch items/s).
  """
  record: dict[str, Any] = {'workload': name, 'kind': kind(name)}
  rss_before = max_rss_bytes()
  try:
    job = _job(name, subject, x, pred, num_classes, cfg, key)
  except NotApplicable as e:
    return {**record, 'status': 'skipped', 'reason': str(e)}
  compare = None
  if torch_peers is not None:
    keep, compare = torch_peers.prepare(name, job.settings)
    job = dataclasses.replace(job, check=_keeping(job.check, keep))
  job_options = None if name == METRICS_WORKLOAD else options
  record.update(status='ok', items='pairs' if name == METRICS_WORKLOAD else 'images',
                items_per_call=job.items, settings=job.settings,
                compiler_options=job_options or {},
                **measure(job, cfg.repeats, options=job_options),
                **job.extra)
  record['process_max_rss_bytes'] = max_rss_bytes()
  record['process_max_rss_growth_bytes'] = record['process_max_rss_bytes'] - rss_before
  if 'reference_pairs_per_s' in record:
    record['speedup_vs_reference'] = record['items_per_s'] / record['reference_pairs_per_s']
    record['speedup_goal'] = METRICS_GOAL
  if compare is not None:
    record.update(compare(cfg.repeats))
    if record.get('torch_items_per_s'):
      record['speedup_vs_torch'] = record['items_per_s'] / record['torch_items_per_s']
  return record


def environment() -> dict[str, Any]:
  """Versions, devices and machine load, for reading the numbers later."""
  return {'jax': jax.__version__, 'backend': jax.default_backend(),
          'devices': [d.device_kind for d in jax.devices()], 'cpu_count': os.cpu_count(),
          'python': platform.python_version(), 'platform': platform.platform(),
          'loadavg_at_start': list(os.getloadavg())}


def write_atomic(path: pathlib.Path, text: str):
  """Writes ``text`` to a temporary file beside ``path``, then renames it over ``path``."""
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(text)
  os.replace(tmp, path)


def _write_results(out: pathlib.Path, config: dict[str, Any], env: dict[str, Any],
                   records: list[dict[str, Any]]):
  env = {**env, 'loadavg_at_end': list(os.getloadavg())}
  write_atomic(out / 'benchmark.json', json.dumps(
      {'config': config, 'environment': env, 'records': records}, indent=2) + '\n')
  write_atomic(out / 'benchmark.md', benchmarking_report.markdown(records, config, env) + '\n')


def default_output_dir(cfg: BenchmarkConfig) -> str:
  """``results/benchmark/<model>[_plain]_b<batch_size>`` (a checkpoint dir's last part)."""
  plain = '_plain' if cfg.plain_model else ''
  return f'results/benchmark/{pathlib.Path(cfg.model).name}{plain}_b{cfg.batch_size}'


def benchmark(subject: Subject, x: jax.typing.ArrayLike, cfg: BenchmarkConfig, *,
              output_dir: str | os.PathLike,
              info: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """Runs the workloads of ``cfg`` on ``subject`` and writes the results.

  Writes ``config.json`` first, then rewrites ``benchmark.json`` (config, environment,
  records) and ``benchmark.md`` atomically after every workload, so a killed run leaves the
  finished ones.

  Args:
    subject: the model.
    x: f32[B,H,W,C] in [0, 1], B = ``cfg.batch_size``.
    cfg: the settings.
    output_dir: created if missing.
    info: extra entries for ``config.json`` (where weights and inputs come from).

  Returns:
    One record per workload (see ``run_workload``).

  Raises:
    ValueError: bad settings (before any compilation), ``x`` not of batch ``batch_size``;
      with ``compare_torch``, a model other than alexnet_cifar (before any compilation) or a
      converted model whose logits disagree.
    ImportError: ``compare_torch`` without torch, captum or (for attacks) torchattacks.
  """
  names = validate(cfg)
  if np.shape(x)[0] != cfg.batch_size:
    raise ValueError(f'x must hold batch_size={cfg.batch_size} images, got {np.shape(x)}.')
  peers = (benchmarking_torch.TorchPeers(subject.name, subject.variables, names, seed=cfg.seed)
           if cfg.compare_torch else None)
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  config = {**dataclasses.asdict(cfg), 'model_name': subject.name, 'layer': subject.layer,
            'weights': 'given', 'inputs': 'given', **(info or {})}
  write_atomic(out / 'config.json', json.dumps(config, indent=2) + '\n')
  env = environment()
  options = None if cfg.xla_defaults else compilation.compiler_options()
  env['compiler_options'] = options or {}
  x = jnp.asarray(x)
  logits = jax.jit(subject.apply_fn)(subject.variables, x)
  pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if peers is not None:
    env['torch'] = peers.bind(np.asarray(x), np.asarray(pred), logits)
  base_key = jax.random.key(cfg.seed)
  records, start = [], time.perf_counter()
  for i, name in enumerate(names):
    logging.info('workload %d/%d %s: building and compiling', i + 1, len(names), name)
    key = jax.random.fold_in(base_key, WORKLOADS.index(name))
    record = run_workload(name, subject, x, pred, logits.shape[-1], cfg, key, torch_peers=peers,
                          options=options)
    records.append(record)
    _write_results(out, config, env, records)
    if record['status'] == 'ok':
      logging.info('workload %d/%d %s: %.4g %s/s (median %.3g s), compile %.3g s, XLA %.1f MiB; '
                   '%.0f s elapsed', i + 1, len(names), name, record['items_per_s'],
                   record['items'], record['median_s'], record['compile_s'],
                   (record['xla_bytes'] or 0) / 2**20, time.perf_counter() - start)
      if record.get('speedup_vs_torch'):
        logging.info('workload %d/%d %s: PyTorch %.4g %s/s (%s): JAX/PyTorch %.3g', i + 1,
                     len(names), name, record['torch_items_per_s'], record['items'],
                     record['torch_tool'], record['speedup_vs_torch'])
    else:
      logging.info('workload %d/%d %s: skipped (%s)', i + 1, len(names), name, record['reason'])
  return records


def run(cfg: BenchmarkConfig, *, output_dir: str | os.PathLike | None = None,
        data_dir: str | None = None) -> pathlib.Path:
  """Validates ``cfg``, loads the model and inputs, benchmarks them; returns the output dir."""
  validate(cfg)
  out = pathlib.Path(output_dir or default_output_dir(cfg))
  subject, x, info = load_subject(cfg, data_dir=data_dir)
  benchmark(subject, x, cfg, output_dir=out, info=info)
  return out
