"""Runs the benchmark: throughput, compile time and memory of every workload, written as it goes.

For each workload (``workloads``) ``benchmark`` records the items per second (median over
timed calls), the seconds to ``jax.jit(f).lower(...).compile()``, XLA's memory analysis of
the compiled executable and the process's peak resident set size. With ``compare_torch`` each
workload that has a PyTorch peer (Captum, torchattacks) is also timed on the same model,
images and targets (``torch_peers``); with ``compare_lime`` the ``lime`` package on the
``lime`` workload (``lime_peer``). With ``plain_jit`` the ``config.SINGLE_PASS`` workloads are
also compiled and timed with plain ``jax.jit`` (XLA's default options). The ``lime`` record
gives its time per image over ``num_samples`` forward passes at the ``forward`` workload's
rate (``time_over_forward_floor``). ``study004_localize`` also times study 004's whole attack
stage against its compiled and host work alone (``overlap.time_stage``,
``wall_over_compiled``); ``study000_pipeline`` its stages compiled apart (``study_pipeline``),
its peer the PyTorch stack's pipeline (``torch_pipeline``); the training workloads
(``training_steps``) their step's forward pass alone, their peers PyTorch's steps
(``torch_training``). ``experiments/benchmark.py`` is the binary.

Timing: each workload is compiled ahead of time, then its executable runs ``repeats`` times,
each call blocked until ready; there is no separate untimed call, so with ``repeats >= 3`` the
median discards a slow first call.
"""

import dataclasses
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

from advsal_jax import checkpoints
from advsal_jax import compilation
from advsal_jax import data
from advsal_jax import models
from advsal_jax import saliency
from advsal_jax.benchmarks import config
from advsal_jax.benchmarks import lime_peer
from advsal_jax.benchmarks import report
from advsal_jax.benchmarks import study_pipeline
from advsal_jax.benchmarks import torch_peers
from advsal_jax.benchmarks import torch_pipeline
from advsal_jax.benchmarks import torch_training
from advsal_jax.benchmarks import training_steps
from advsal_jax.benchmarks import workloads
from advsal_jax.studies import store

METRICS_GOAL = 20.0
"""Target speed-up of the batched metrics over the per-pair scipy/skimage reference."""

FORWARD_FLOOR_GOAL = 1.15
"""Target bound on LIME's time per image over ``num_samples`` forward passes."""

OVERLAP_GOAL = 1.15
"""Target bound on a study stage's wall time over its compiled work alone (host work hidden)."""

TORCH_GOALS = {config.PIPELINE_WORKLOAD: 1.5, **{w: 1.0 for w in config.TRAIN_WORKLOADS}}
"""Target JAX/PyTorch ratio of the whole-pipeline and training workloads."""


def load_subject(cfg: config.BenchmarkConfig, *, data_dir: str | None = None
                 ) -> tuple[workloads.Subject, np.ndarray, dict[str, Any]]:
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
    return workloads.Subject(name, model.apply, variables, spec.last_conv), x, info
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
  masker = None
  masker_dir = checkpoints.resolve(f'masker_{checkpoints.resolve(cfg.model).name}')
  if (masker_dir / checkpoints.METADATA_FILE).exists():
    masker_model, masker_vars, _ = saliency.load_masker(str(masker_dir))
    masker = (masker_model.apply, masker_vars)
    info['masker'] = str(masker_dir)
  return (workloads.Subject(name, model.apply, variables, layer, masker),
          data.to_float(test.images[:cfg.batch_size]), info)


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


def write_trace(compiled: jax.stages.Compiled, args: tuple[Any, ...],
                trace_dir: str | os.PathLike):
  """Records one call of ``compiled`` with the JAX profiler, and its optimised HLO beside it.

  Writes ``plugins/profile/<run>/`` under ``trace_dir`` (``*.xplane.pb`` for TensorBoard's
  profile plugin or XProf, ``*.trace.json.gz`` and ``perfetto_trace.json.gz`` for Perfetto)
  and ``hlo.txt``, the executable's HLO, whose fusion names are the trace's op names.
  """
  with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
    jax.block_until_ready(compiled(*args))
  (pathlib.Path(trace_dir) / 'hlo.txt').write_text(compiled.as_text(), encoding='utf-8')


def measure(job: workloads.Job, repeats: int, *, options: dict[str, str] | None = None,
            trace_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Compiles ``job.fn`` ahead of time, then times ``repeats`` blocking calls.

  Args:
    job: the workload.
    repeats: timed calls.
    options: XLA compiler options (``compilation.compiler_options()``, i.e. what
      ``compilation.jit`` compiles with); None: XLA's defaults (plain ``jax.jit``).
    trace_dir: if given, one more call after the timed ones is recorded there
      (``write_trace``); the timings do not include it.

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
  if trace_dir is not None:
    write_trace(compiled, job.args, trace_dir)
  median = statistics.median(times)
  return {'items_per_s': job.items / median, 'median_s': median, 'times_s': times,
          'compile_s': compile_s, **_compiled_memory(compiled),
          **(job.check(output) if job.check else {})}


def _keeping(check: Callable[[Any], dict[str, Any]] | None,
             keep: Callable[[Any], None]) -> Callable[[Any], dict[str, Any]]:
  """``check`` that first hands the output to ``keep``."""
  def wrapped(output):
    keep(output)
    return check(output) if check else {}
  return wrapped


def _max_abs_diff(ours: Any, reference: Any) -> float:
  """max |ours - reference| over every array of two outputs of the same structure."""
  return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
             for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)))


def plain_jit(job: workloads.Job, repeats: int, reference: Any) -> dict[str, Any]:
  """Times ``job`` compiled with plain ``jax.jit`` (XLA's default options).

  Args:
    job: the workload (its ``check`` is not run).
    repeats: timed calls.
    reference: the output of the same job compiled with the run's options.

  Returns:
    ``items_per_s``, ``median_s``, ``times_s``, ``compile_s``, ``max_abs_diff`` (the largest
    |difference| from ``reference`` over all output arrays) and ``max_abs_reference``.
  """
  def check(output):
    return {'max_abs_diff': _max_abs_diff(output, reference),
            'max_abs_reference': max(float(np.max(np.abs(np.asarray(a))))
                                     for a in jax.tree.leaves(reference))}

  result = measure(dataclasses.replace(job, check=check), repeats, options=None)
  return {k: result[k] for k in ('items_per_s', 'median_s', 'times_s', 'compile_s',
                                 'max_abs_diff', 'max_abs_reference')}


def forward_floor(lime_record: dict[str, Any],
                  forward_record: dict[str, Any] | None) -> dict[str, Any]:
  """LIME's time per image against ``num_samples`` forward passes at the forward rate.

  Args:
    lime_record: the ``lime`` workload's record (status 'ok').
    forward_record: the ``forward`` workload's record of the same run, or None.

  Returns:
    ``forward_floor_s_per_image`` (``num_samples`` / forward images/s),
    ``time_over_forward_floor`` (LIME's seconds per image over that floor) and
    ``forward_floor_goal``; ``{}`` without an 'ok' forward record.
  """
  if not forward_record or forward_record['status'] != 'ok':
    return {}
  floor = lime_record['settings']['num_samples'] / forward_record['items_per_s']
  return {'forward_floor_s_per_image': floor,
          'time_over_forward_floor': 1.0 / lime_record['items_per_s'] / floor,
          'forward_floor_goal': FORWARD_FLOOR_GOAL}


def _lime_package(job: workloads.Job, subject: workloads.Subject, x: jax.Array,
                  pred: jax.Array, ours: jax.Array, cfg: config.BenchmarkConfig,
                  options: dict[str, str] | None) -> dict[str, Any]:
  """The ``lime_peer.compare`` entries of the ``lime`` workload."""
  settings = {**saliency.REGISTRY['lime'].defaults, **job.settings}
  return lime_peer.compare(subject.apply_fn, subject.variables, np.asarray(x), np.asarray(pred),
                           np.asarray(job.per_example['segments']), np.asarray(ours), settings,
                           images=cfg.lime_peer_images, repeats=cfg.repeats, seed=cfg.seed,
                           options=options)


def build_job(name: str, subject: workloads.Subject, x: jax.Array, pred: jax.Array,
              num_classes: int, cfg: config.BenchmarkConfig, key: jax.Array) -> workloads.Job:
  """The job of any workload of ``config.WORKLOADS`` (``workloads``, ``study_pipeline``,
  ``training_steps``).

  Raises:
    workloads.NotApplicable: the workload does not apply to this model.
  """
  if name == config.PIPELINE_WORKLOAD:
    return study_pipeline.build_job(subject, x, num_classes, cfg)
  if name in config.TRAIN_WORKLOADS:
    return training_steps.build_job(name, subject, x, pred, cfg, key)
  return workloads.build_job(name, subject, x, pred, num_classes, cfg, key)


def _torch_peer(peers: torch_peers.TorchPeers, name: str, job: workloads.Job
                ) -> tuple[Callable[[Any], None], Callable[[int], dict[str, Any]]]:
  """``(keep, compare)`` of workload ``name``'s PyTorch peer."""
  if name == config.PIPELINE_WORKLOAD:
    return torch_pipeline.prepare(peers, job)
  if name in config.TRAIN_WORKLOADS:
    return torch_training.prepare(name, peers, job)
  return peers.prepare(name, job.settings)


def run_workload(name: str, subject: workloads.Subject, x: jax.Array, pred: jax.Array,
                 num_classes: int, cfg: config.BenchmarkConfig, key: jax.Array, *,
                 peers: torch_peers.TorchPeers | None = None,
                 options: dict[str, str] | None = None,
                 trace_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Builds, compiles and times one workload.

  Args:
    name: from ``config.WORKLOADS``.
    subject: the model.
    x: f32[B,H,W,C] in [0, 1].
    pred: i32[B] the model's predictions on ``x`` (saliency targets, attack labels).
    num_classes: K.
    cfg: the settings.
    key: the workload's PRNG key.
    peers: with ``cfg.compare_torch``, the PyTorch peers, bound to ``x`` and ``pred``.
    options: XLA compiler options for workloads that run the model (``study000_metrics``
      always compiles with XLA's defaults, which suit it; see ``compilation``); None: XLA's
      defaults.
    trace_dir: if given, a profiler trace of one call is written there (``write_trace``).

  Returns:
    The workload's record: ``status`` 'ok' with the numbers of ``measure`` plus
    ``process_max_rss_bytes`` (the process high-water mark after it) and
    ``process_max_rss_growth_bytes`` (how much this workload raised it), or 'skipped' with
    ``reason``. With ``peers`` also the ``torch_*`` entries of the peer's ``compare``
    (``TorchPeers.prepare``, ``torch_pipeline.prepare``, ``torch_training.prepare``) and
    ``speedup_vs_torch`` (JAX items/s over PyTorch items/s), with ``torch_speedup_goal``
    for the workloads of ``TORCH_GOALS``.
    With ``cfg.plain_jit``, for ``config.SINGLE_PASS`` workloads compiled with options,
    ``plain_jit`` (``plain_jit``'s entries) and ``speedup_vs_plain_jit``. With
    ``cfg.compare_lime``, for ``lime``, the ``lime_package_*`` entries of
    ``lime_peer.compare`` and ``speedup_vs_lime_package``. For a job with a ``stage``, its
    entries (``overlap.time_stage``'s and ``overlap_goal``, ``study_pipeline.time_stages``'s,
    ``training_steps.time_forward``'s). With ``trace_dir``,
    ``profile_dir``.
  """
  record: dict[str, Any] = {'workload': name, 'kind': workloads.kind(name)}
  rss_before = max_rss_bytes()
  try:
    job = build_job(name, subject, x, pred, num_classes, cfg, key)
  except workloads.NotApplicable as e:
    return {**record, 'status': 'skipped', 'reason': str(e)}
  compare = None
  if peers is not None:
    keep, compare = _torch_peer(peers, name, job)
    job = dataclasses.replace(job, check=_keeping(job.check, keep))
  kept: dict[str, Any] = {}
  job = dataclasses.replace(job, check=_keeping(job.check, lambda out: kept.update(output=out)))
  job_options = None if name == config.METRICS_WORKLOAD else options
  record.update(status='ok', items='pairs' if name == config.METRICS_WORKLOAD else 'images',
                items_per_call=job.items, settings=job.settings,
                compiler_options=job_options or {},
                **measure(job, cfg.repeats, options=job_options, trace_dir=trace_dir),
                **job.extra)
  if trace_dir is not None:
    record['profile_dir'] = str(trace_dir)
  if job.stage is not None:
    record.update(job.stage(cfg.repeats, job_options))
    if 'wall_over_compiled' in record:
      record['overlap_goal'] = OVERLAP_GOAL
  if cfg.plain_jit and job_options and name in config.SINGLE_PASS:
    record['plain_jit'] = plain_jit(job, cfg.repeats, kept['output'])
    record['speedup_vs_plain_jit'] = record['items_per_s'] / record['plain_jit']['items_per_s']
  record['process_max_rss_bytes'] = max_rss_bytes()
  record['process_max_rss_growth_bytes'] = record['process_max_rss_bytes'] - rss_before
  if 'reference_pairs_per_s' in record:
    record['speedup_vs_reference'] = record['items_per_s'] / record['reference_pairs_per_s']
    record['speedup_goal'] = METRICS_GOAL
  if compare is not None:
    record.update(compare(cfg.repeats))
    if record.get('torch_items_per_s'):
      record['speedup_vs_torch'] = record['items_per_s'] / record['torch_items_per_s']
      if name in TORCH_GOALS:
        record['torch_speedup_goal'] = TORCH_GOALS[name]
      if 'plain_jit' in record:
        record['plain_jit']['speedup_vs_torch'] = (record['plain_jit']['items_per_s']
                                                   / record['torch_items_per_s'])
  if cfg.compare_lime and name == 'lime':
    record.update(_lime_package(job, subject, x, pred, kept['output'], cfg, job_options))
    record['speedup_vs_lime_package'] = (record['items_per_s']
                                         / record['lime_package_items_per_s'])
  return record


def environment() -> dict[str, Any]:
  """Versions, devices and machine load, for reading the numbers later."""
  return {'jax': jax.__version__, 'backend': jax.default_backend(),
          'devices': [d.device_kind for d in jax.devices()], 'cpu_count': os.cpu_count(),
          'python': platform.python_version(), 'platform': platform.platform(),
          'loadavg_at_start': list(os.getloadavg())}


def _write_results(out: pathlib.Path, run_config: dict[str, Any], env: dict[str, Any],
                   records: list[dict[str, Any]]):
  env = {**env, 'loadavg_at_end': list(os.getloadavg())}
  store.write_json(out / 'benchmark.json',
                   {'config': run_config, 'environment': env, 'records': records})
  store.write_text(out / 'benchmark.md', report.markdown(records, run_config, env) + '\n')


def benchmark(subject: workloads.Subject, x: jax.typing.ArrayLike,
              cfg: config.BenchmarkConfig, *, output_dir: str | os.PathLike,
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
    ImportError: ``compare_torch`` without torch, captum or (for attacks) torchattacks;
      ``compare_lime`` without lime (before any compilation).
  """
  names = config.validate(cfg)
  if np.shape(x)[0] != cfg.batch_size:
    raise ValueError(f'x must hold batch_size={cfg.batch_size} images, got {np.shape(x)}.')
  if cfg.compare_lime:
    lime_peer.import_lime_image()
  peers = (torch_peers.TorchPeers(subject.name, subject.variables, names, seed=cfg.seed)
           if cfg.compare_torch else None)
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  run_config = {**dataclasses.asdict(cfg), 'model_name': subject.name, 'layer': subject.layer,
                'weights': 'given', 'inputs': 'given', **(info or {})}
  store.write_json(out / 'config.json', run_config)
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
    key = jax.random.fold_in(base_key, config.WORKLOADS.index(name))
    trace_dir = out / 'profile' if name == cfg.profile else None
    record = run_workload(name, subject, x, pred, logits.shape[-1], cfg, key, peers=peers,
                          options=options, trace_dir=trace_dir)
    if name == 'lime' and record['status'] == 'ok':
      record.update(forward_floor(record, next(
          (r for r in records if r['workload'] == 'forward'), None)))
    records.append(record)
    _write_results(out, run_config, env, records)
    if record['status'] == 'ok':
      logging.info('workload %d/%d %s: %.4g %s/s (median %.3g s), compile %.3g s, XLA %.1f MiB; '
                   '%.0f s elapsed', i + 1, len(names), name, record['items_per_s'],
                   record['items'], record['median_s'], record['compile_s'],
                   (record['xla_bytes'] or 0) / 2**20, time.perf_counter() - start)
      if 'plain_jit' in record:
        logging.info('workload %d/%d %s: plain jax.jit %.4g %s/s: compilation.jit/plain %.3g',
                     i + 1, len(names), name, record['plain_jit']['items_per_s'],
                     record['items'], record['speedup_vs_plain_jit'])
      if 'wall_over_compiled' in record:
        logging.info('workload %d/%d %s: stage wall %.3g s = %.3g x its compiled work alone '
                     '(%.3g s; host work alone %.3g s)', i + 1, len(names), name,
                     record['wall_s'], record['wall_over_compiled'], record['compiled_s'],
                     record['host_s'])
      if 'time_over_forward_floor' in record:
        logging.info('workload %d/%d %s: %.3g x num_samples forward passes', i + 1,
                     len(names), name, record['time_over_forward_floor'])
      if 'speedup_vs_lime_package' in record:
        logging.info('workload %d/%d %s: lime package %.4g images/s: ours/package %.3g',
                     i + 1, len(names), name, record['lime_package_items_per_s'],
                     record['speedup_vs_lime_package'])
      if record.get('speedup_vs_torch'):
        logging.info('workload %d/%d %s: PyTorch %.4g %s/s (%s): JAX/PyTorch %.3g', i + 1,
                     len(names), name, record['torch_items_per_s'], record['items'],
                     record['torch_tool'], record['speedup_vs_torch'])
    else:
      logging.info('workload %d/%d %s: skipped (%s)', i + 1, len(names), name, record['reason'])
  return records


def run(cfg: config.BenchmarkConfig, *, output_dir: str | os.PathLike | None = None,
        data_dir: str | None = None) -> pathlib.Path:
  """Validates ``cfg``, loads the model and inputs, benchmarks them; returns the output dir."""
  config.validate(cfg)
  out = pathlib.Path(output_dir or config.default_output_dir(cfg))
  subject, x, info = load_subject(cfg, data_dir=data_dir)
  benchmark(subject, x, cfg, output_dir=out, info=info)
  return out
