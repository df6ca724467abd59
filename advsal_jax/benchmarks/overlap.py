"""A study stage's wall time against its compiled work alone and its host work alone.

``studies.runner.run_stage`` computes each batch's host arrays (``Stage.inputs`` and
``Stage.prepare``, e.g. study 004's Felzenszwalb segmentation) in a background thread while
the previous batch's compiled step runs. ``time_stage`` measures what that buys: the stage's
wall time over its compiled work alone should approach 1 when the host work is hidden, and
(host + compiled) / compiled when it is not.
"""

import dataclasses
import statistics
import tempfile
import time
from typing import Any

import jax
import numpy as np

from advsal_jax import parallel
from advsal_jax.studies import runner


def time_stage(stage: runner.Stage, work: np.ndarray, replicated: Any, *, repeats: int,
               options: dict[str, str] | None, mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """Times ``stage`` over ``work`` three ways, ``repeats`` times each (medians reported).

  * host: ``runner.host_batch`` of every batch, one after another;
  * compiled: the step on those prepared batches, each placed on the mesh, run and fetched;
  * wall: ``runner.run_stage`` over ``work`` into a fresh directory (host work overlapped
    with the compiled work, shards written).

  The step is compiled once ahead of time with ``options``; the compiled and wall timings
  run that executable, so neither includes compilation.

  Args:
    stage: the stage, as a study builds it but with ``step`` not jitted (what
      ``runner.compile_step`` jits: ``parallel.data_parallel`` of the per-example step).
    work: int64[W] work ids.
    replicated: the step's unsplit argument (params).
    repeats: timed runs of each kind.
    options: XLA compiler options; None: XLA's defaults.
    mesh: from ``parallel.data_mesh``.

  Returns:
    ``stage_images`` (W), ``stage_batches``, ``stage_batch_size``; ``host_s``,
    ``compiled_s``, ``wall_s`` (medians) and their ``*_times_s``; ``serial_s`` (host_s +
    compiled_s: the stage without overlap), ``wall_over_compiled`` and
    ``stage_images_per_s`` (W / wall_s).
  """
  padded = parallel.padded_size(stage.batch_size, mesh)
  ids = [runner.batch_ids(work, s, stage.batch_size, padded)
         for s in runner.batch_starts(len(work), stage.batch_size)]
  placed = parallel.replicate(replicated, mesh)
  first = parallel.shard_batch(runner.host_batch(stage, ids[0]), mesh)
  step = jax.jit(stage.step).lower(placed, first).compile(compiler_options=options)
  times = {'host': [], 'compiled': [], 'wall': []}
  for _ in range(repeats):
    start = time.perf_counter()
    batches = [runner.host_batch(stage, i) for i in ids]
    times['host'].append(time.perf_counter() - start)
    start = time.perf_counter()
    for batch in batches:
      parallel.to_host(step(placed, parallel.shard_batch(batch, mesh)))
    times['compiled'].append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as out:
      start = time.perf_counter()
      runner.run_stage(dataclasses.replace(stage, step=step), output_dir=out, work=work,
                       replicated=replicated, mesh=mesh)
      times['wall'].append(time.perf_counter() - start)
  median = {k: statistics.median(v) for k, v in times.items()}
  return {'stage_images': len(work), 'stage_batches': len(ids),
          'stage_batch_size': stage.batch_size,
          **{f'{k}_s': v for k, v in median.items()},
          **{f'{k}_times_s': v for k, v in times.items()},
          'serial_s': median['host'] + median['compiled'],
          'wall_over_compiled': median['wall'] / median['compiled'],
          'stage_images_per_s': len(work) / median['wall']}
