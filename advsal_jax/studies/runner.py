"""The resumable, data-parallel batch loop every study runs its stages with.

A study is a sequence of *stages*. A stage maps a work list (example ids, e.g. test-split
indices) to per-example results, batch by batch: for each batch the runner pads the ids to
a multiple of the device count by repeating the last one, gathers the examples' host arrays
(``Stage.inputs``), runs an optional host hook (``Stage.prepare``, e.g. segmentation),
splits the batch over the devices of a mesh, calls the compiled ``Stage.step``, drops the
padding and writes the batch's results atomically as one shard
(``store.shard_path(output_dir, stage.name, start)``), in work-list order. The host work
runs one batch ahead in a background thread, overlapped with the previous batch's step, so
a stage takes about max(host, device) time instead of their sum. A killed run, started
again with ``resume``, skips the shards already on disk; ``open_output_dir`` refuses to mix
results of different settings. In a multi-process run every process computes its devices'
share and only process 0 writes. Progress (done, rate, ETA) goes to the log or a terminal bar.

This is the loop of jaxline/flax-examples training scripts, specialised to evaluation over a
fixed work list.
"""

import concurrent.futures
import dataclasses
import json
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
import numpy as np

from advsal_jax import compilation
from advsal_jax import parallel
from advsal_jax.studies import progress
from advsal_jax.studies import store

HostBatch = dict[str, np.ndarray]
StepFn = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Stage:
  """One pass over a work list.

  Attributes:
    name: the stage's name (its shards go to ``shards/<name>/``).
    step: compiled ``step(replicated, batch) -> dict`` of arrays whose leading axis is the
      batch (see ``compile_step``); ``batch`` holds ``inputs``' and ``prepare``'s arrays and
      ``index`` (int32 work ids).
    inputs: ``inputs(ids) -> {name: array[len(ids), ...]}`` gathers the host arrays of the
      examples with work ids ``ids`` (int64[n]).
    batch_size: examples per batch (global, over all devices).
    prepare: optional host hook ``prepare(batch) -> {name: array[n, ...]}`` run on each
      padded batch before ``step`` (work that cannot be compiled, e.g. skimage); its
      arrays join the batch. ``inputs`` and ``prepare`` run in a background thread while
      the previous batch's ``step`` runs: they must not call multi-process collectives.
    record: names of host batch arrays (from ``inputs`` or ``prepare``) written to each
      shard beside the step's outputs, e.g. the labels.
    unit: what an example is called in progress lines.
  """
  name: str
  step: StepFn
  inputs: Callable[[np.ndarray], HostBatch]
  batch_size: int
  prepare: Callable[[HostBatch], HostBatch] | None = None
  record: tuple[str, ...] = ()
  unit: str = 'images'


def compile_step(fn: StepFn, mesh: jax.sharding.Mesh) -> StepFn:
  """A per-example ``fn(replicated, batch)`` jitted and split over the devices of ``mesh``.

  Every device runs ``fn`` on its own ``B / num_devices`` examples (``parallel.data_parallel``),
  so ``fn`` must treat examples independently (randomness keyed by ``batch['index']``);
  ``replicated`` (params, budgets) is the same on every device. Compiled with
  ``compilation.jit`` (this package's XLA options).

  Args:
    fn: ``fn(replicated, batch) -> {name: array[B, ...]}``.
    mesh: from ``parallel.data_mesh``.

  Returns:
    ``step(replicated, batch)`` with ``fn``'s outputs, batch-sharded.
  """
  return compilation.jit(parallel.data_parallel(fn, mesh, batched=(False, True)))


def config_from_json(cls: type, config: Mapping[str, Any]) -> Any:
  """A frozen config dataclass from a run's ``config.json`` (lists back to tuples).

  Keys that are not fields of ``cls`` (the run's facts: model, class names, ...) are skipped.
  """
  fields = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()
                if k in fields})


def example_keys(seed: int, index: jax.Array, stream: int | None = None) -> jax.Array:
  """One typed PRNG key per example: ``fold_in([fold_in(]key(seed)[, stream)], index[b])``.

  Keying randomness by the example's id makes results independent of batching, device count
  and resumption.

  Args:
    seed: the run's seed.
    index: i32[B] example ids (e.g. test-split indices).
    stream: optional id of an independent random stream (e.g. noise vs tie-breaking).

  Returns:
    key[B].
  """
  base = jax.random.key(seed)
  if stream is not None:
    base = jax.random.fold_in(base, stream)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(index)


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
  return json.loads(json.dumps(config))


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """The settings that differ between two configs, as ``'name (stored X, now Y)'``."""
  stored, current = _jsonable(stored), _jsonable(current)
  out = []
  for key in sorted(set(stored) | set(current)):
    if stored.get(key, '<absent>') != current.get(key, '<absent>'):
      out.append(f"{key} (stored {stored.get(key, '<absent>')!r}, "
                 f"now {current.get(key, '<absent>')!r})")
  return out


def open_output_dir(output_dir: store.PathLike, config: Mapping[str, Any], *,
                    resume: bool) -> pathlib.Path:
  """Claims ``output_dir`` for a run with ``config`` and writes ``config.json``.

  Process 0 decides and writes; every process gets the same answer.

  Args:
    output_dir: the run's directory (created if missing).
    config: JSON-serialisable settings that determine the results.
    resume: continue a run already in ``output_dir``.

  Returns:
    ``output_dir`` as a path.

  Raises:
    ValueError: ``output_dir`` holds a run and ``resume`` is False, or it holds a run with
      other settings (the message names every differing setting).
  """
  out = pathlib.Path(output_dir)
  message = ''
  if jax.process_index() == 0 and (out / 'config.json').exists():
    if not resume:
      message = (f'{out} already holds a run; pass resume=True (--resume) to continue it or '
                 'choose another output directory.')
    else:
      diff = config_differences(store.read_json(out / 'config.json'), config)
      if diff:
        message = (f'Cannot resume {out}: its config.json differs from these settings in '
                   + '; '.join(diff) + '. Use the stored settings or another output directory.')
  code = np.frombuffer(message.encode()[:4096].ljust(4096, b'\0'), np.uint8)
  message = bytes(parallel.broadcast_from_process0(code)).rstrip(b'\0').decode(errors='replace')
  if message:
    raise ValueError(message)
  if jax.process_index() == 0:
    store.write_json(out / 'config.json', _jsonable(config))
  return out


def batch_starts(num_work: int, batch_size: int) -> list[int]:
  """Positions in the work list where each batch starts."""
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  return list(range(0, num_work, batch_size))


def batch_ids(work: np.ndarray, start: int, batch_size: int, padded: int) -> np.ndarray:
  """The work ids of the batch at ``start``, padded to ``padded`` by repeating its last id.

  Padding by repetition keeps one compilation, whole shards and valid inputs in the padded
  rows.

  Args:
    work: int64[W] work ids.
    start: the batch's position in ``work`` (from ``batch_starts``).
    batch_size: ids per batch before padding.
    padded: ids per batch after padding, >= ``batch_size``.

  Returns:
    int64[padded].
  """
  last = min(start + batch_size, len(work)) - 1
  return work[np.minimum(np.arange(start, start + padded), last)]


def host_batch(stage: Stage, ids: np.ndarray) -> HostBatch:
  """The host arrays of one batch: ``stage.inputs(ids)``, ``index`` and ``stage.prepare``'s.

  Args:
    stage: the stage.
    ids: int64[B] work ids (``batch_ids``).

  Returns:
    ``{name: array[B, ...]}`` with ``index`` i32[B], what ``stage.step`` receives.
  """
  batch = dict(stage.inputs(ids))
  batch['index'] = ids.astype(np.int32)
  if stage.prepare is not None:
    batch.update(stage.prepare(batch))
  return batch


def run_stage(stage: Stage, *, output_dir: store.PathLike, work: Sequence[int] | np.ndarray,
              replicated: Any, mesh: jax.sharding.Mesh | None = None) -> pathlib.Path:
  """Runs ``stage`` over every batch of ``work`` that has no shard yet.

  Each shard holds the step's outputs for the batch's real examples, the ``stage.record``
  host arrays, ``index`` (their work ids) and ``seconds`` (the wall time since the previous
  shard of this call, so a call's shards sum to its time). While a batch's step runs, the
  next batch's ``host_batch`` is computed in a background thread; an exception there is
  raised here, with its traceback, once the shards before that batch are written.

  Args:
    stage: the stage.
    output_dir: a directory claimed with ``open_output_dir``.
    work: int work ids, in order.
    replicated: pytree passed to every ``stage.step`` call unsplit (params, budgets); it is
      placed on every device of ``mesh`` here.
    mesh: default ``parallel.data_mesh()``.

  Returns:
    The stage's shard folder.
  """
  mesh = parallel.data_mesh() if mesh is None else mesh
  work = np.asarray(work, np.int64)
  writer = jax.process_index() == 0
  starts = batch_starts(len(work), stage.batch_size)
  finished = np.array([writer and store.shard_path(output_dir, stage.name, s).exists()
                       for s in starts], np.int32)
  finished = parallel.broadcast_from_process0(finished)
  todo = [s for s, f in zip(starts, finished) if not f]
  done_before = sum(min(s + stage.batch_size, len(work)) - s
                    for s, f in zip(starts, finished) if f)
  logging.info('stage %s: %d of %d batches to do (%d %s each, %d devices) in %s', stage.name,
               len(todo), len(starts), stage.batch_size, stage.unit, parallel.num_shards(mesh),
               output_dir)
  replicated = parallel.replicate(replicated, mesh)
  padded = parallel.padded_size(stage.batch_size, mesh)
  bar = progress.Progress(f'stage {stage.name}', len(work), unit=stage.unit,
                          already_done=done_before)
  # One batch ahead: batch i + 1's host work runs in the background while batch i's step
  # runs (to_host waits for it), so a stage takes about max(host, device), not their sum.
  with concurrent.futures.ThreadPoolExecutor(1, f'stage_{stage.name}_host') as host:

    def submit(i):
      return host.submit(host_batch, stage, batch_ids(work, todo[i], stage.batch_size, padded))

    ahead = submit(0) if todo else None
    t = time.time()
    for i, start in enumerate(todo):
      batch = ahead.result()  # Raises the host work's exception, traceback included.
      if i + 1 < len(todo):
        ahead = submit(i + 1)
      result = parallel.to_host(stage.step(replicated, parallel.shard_batch(batch, mesh)))
      n = min(start + stage.batch_size, len(work)) - start
      arrays = {k: np.asarray(v)[:n] for k, v in result.items()}
      arrays.update({k: np.asarray(batch[k])[:n] for k in stage.record})
      now = time.time()
      arrays.update(index=work[start:start + n], seconds=np.float64(now - t))
      t = now
      if writer:
        store.write_npz(store.shard_path(output_dir, stage.name, start), arrays)
      bar.update(n)
  # A later stage may read these shards: no process goes on before process 0 wrote them all.
  parallel.barrier(f'stage {stage.name} written')
  return store.shard_dir(output_dir, stage.name)
