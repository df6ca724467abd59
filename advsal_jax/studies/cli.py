"""What every study binary shares: its common flags, presets, quiet logs and start-up.

A binary calls ``define_common_flags`` at import (next to its own flags), then in ``main``
``start(...)`` and ``settings(...)``:

  --checkpoint, --num_examples, --batch_size, --output_dir, --seed, --resume, --data_dir,
  --method_kwargs, --preset=smoke|default|full, and --distributed (+ --coordinator_address, --num_processes,
  --process_id) for multi-host runs.

A *preset* gives values to any flag, common or the study's own: ``smoke`` shrinks every
budget to seconds (tests and CI), ``default`` is the run of a few minutes that
``bash run.sh study NNN`` starts, ``full`` is the paper's scale. A flag given on the command
line always wins over the preset.
"""

import json
import logging as std_logging
import os
import pathlib
import resource
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import jax

from advsal_jax import checkpoints
from advsal_jax import parallel
from advsal_jax.studies import store

PRESETS = ('smoke', 'default', 'full')
COMMON = ('checkpoint', 'num_examples', 'batch_size', 'seed')
"""Common flags whose defaults may come from a preset."""

FLAGS = flags.FLAGS
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1]


def define_common_flags(*, checkpoint: str, batch_size: int = 32):
  """Defines the common flags (call once, at a binary's import).

  ``num_examples`` defaults to the preset's (every preset must name it).

  Args:
    checkpoint: the study's default model (a registered name or a checkpoint dir).
    batch_size: the default examples per compiled batch.
  """
  flags.DEFINE_string('checkpoint', checkpoint, 'Registered model name or checkpoint directory.')
  flags.DEFINE_enum('preset', 'default', PRESETS,
                    'smoke: seconds (tests, CI); default: a few minutes; full: the paper scale. '
                    'Flags given explicitly override the preset.')
  flags.DEFINE_integer('num_examples', None, 'First N examples of the split (default: preset).',
                       lower_bound=1)
  flags.DEFINE_integer('batch_size', batch_size, 'Examples per compiled batch (global).',
                       lower_bound=1)
  flags.DEFINE_string('output_dir', None, 'Where results go; default '
                      'results/<study>/<checkpoint>_n<num_examples>.')
  flags.DEFINE_integer('seed', 0, 'Seed of every random choice of the run.')
  flags.DEFINE_list('method_kwargs', [],
                    'Saliency hyper-parameters over the study defaults, as method.name=value '
                    '(value JSON, else a string), e.g. smoothgrad.num_samples=50.')
  flags.DEFINE_bool('resume', False, 'Continue a killed run in --output_dir (same settings).')
  flags.DEFINE_string('data_dir', None,
                      'Offline data directory; default $ADVSAL_DATA_DIR, then tfds.')
  flags.DEFINE_bool('distributed', False,
                    'Multi-host run: call jax.distributed.initialize (cluster settings '
                    'auto-detected on Cloud TPU / SLURM unless the three flags below are given).')
  flags.DEFINE_string('coordinator_address', None, 'With --distributed: host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'With --distributed: number of processes.')
  flags.DEFINE_integer('process_id', None, "With --distributed: this process's rank.")


def settings(presets: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
  """The values of flags ``names``: given on the command line > the preset's > the default.

  Args:
    presets: preset name -> {flag name: value}; every name of ``PRESETS``.
    names: the flags to resolve.

  Returns:
    flag name -> value.

  Raises:
    ValueError: a preset missing from ``presets`` or naming an undefined flag.
  """
  missing = [p for p in PRESETS if p not in presets]
  if missing:
    raise ValueError(f'presets: no values for {missing}.')
  chosen = presets[FLAGS.preset]
  unknown = [n for n in chosen if n not in FLAGS]
  if unknown:
    raise ValueError(f'presets: preset {FLAGS.preset!r} names undefined flags {unknown}.')
  return {n: FLAGS[n].value if FLAGS[n].present or n not in chosen else chosen[n]
          for n in names}


def parse_method_kwargs(items: Sequence[str],
                        base: Mapping[str, Mapping[str, Any]] | None = None
                        ) -> dict[str, dict[str, Any]]:
  """``['smoothgrad.num_samples=50', ...]`` -> ``{'smoothgrad': {'num_samples': 50}}`` over ``base``.

  Raises:
    ValueError: an item not of the form ``method.name=value``.
  """
  out = {m: dict(kw) for m, kw in (base or {}).items()}
  for item in items:
    key, sep, value = item.partition('=')
    method, dot, name = key.partition('.')
    if not (sep and dot and method and name):
      raise ValueError(f'method_kwargs: expected method.name=value, got {item!r}.')
    try:
      parsed = json.loads(value)
    except json.JSONDecodeError:
      parsed = value
    out.setdefault(method, {})[name] = parsed
  return out


def write_run_info(output_dir: store.PathLike, *, study: str, seconds: float):
  """Writes ``run.json``: the command line, preset, wall time and peak memory of the run.

  A resumed run adds to what is there: ``wall_seconds`` sums the time of every process that
  worked on the directory (``processes`` counts them), ``peak_rss_mib`` is the largest.
  """
  path = pathlib.Path(output_dir) / 'run.json'
  before = store.read_json(path) if path.exists() else {}
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  store.write_json(path, {
      'study': study, 'argv': sys.argv, 'preset': FLAGS.preset,
      'wall_seconds': before.get('wall_seconds', 0.0) + seconds,
      'processes': before.get('processes', 0) + 1,
      'peak_rss_mib': max(peak, before.get('peak_rss_mib', 0.0)),
      'devices': [str(d) for d in jax.devices()]})


def run_and_finish(study: str, output_dir: store.PathLike, *, checkpoint: str,
                   run: Callable[[], Any], finalize: Callable[[Any], pathlib.Path],
                   start_time: float):
  """Runs the study, then process 0 writes the report and ``run.json``; all wait for it.

  Args:
    study: the study's name.
    output_dir: the run's directory.
    run: runs the study's stages; a ValueError it raises (settings checked against the
      model and data, the output directory's guard) ends the binary as a usage error.
    checkpoint: the run's checkpoint. A multi-process run loads it on every process (orbax
      loads collectively) and hands ``(model, variables)`` to ``finalize``; one process
      hands None and ``finalize`` loads what it needs.
    finalize: ``finalize(model_and_variables) -> report path``, run by process 0 only.
    start_time: ``time.time()`` when the binary started (for ``run.json``).
  """
  try:
    run()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  loaded = checkpoints.load(checkpoint)[:2] if jax.process_count() > 1 else None
  if jax.process_index() == 0:
    path = finalize(loaded)
    write_run_info(output_dir, study=study, seconds=time.time() - start_time)
    print(f'Report written to {path}')
  parallel.barrier(f'{study} finished')


class _OwnRecords(std_logging.Filter):
  """Passes this project's records and every warning; other libraries' INFO is dropped."""

  def __init__(self):
    super().__init__()
    self.script_dir = pathlib.Path(sys.argv[0]).resolve().parent

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    path = pathlib.Path(record.pathname).resolve()
    return path.is_relative_to(_PACKAGE_DIR) or path.parent == self.script_dir


def quiet_other_libraries():
  """Keeps other libraries' absl/Python log records at WARNING unless ``-v 1`` or more.

  orbax, jax and tensorflow-datasets log their internals at INFO through the same absl
  logger as this project; this filter on absl's handler passes only the records of this
  project's files (and every warning) unless ``--verbosity`` asks for more.
  """
  if logging.get_verbosity() >= 1:
    return
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OwnRecords) for f in handler.filters):
    handler.addFilter(_OwnRecords())
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def start() -> None:
  """Quiets other libraries' logs and joins a multi-host run if ``--distributed``.

  Raises:
    absl.app.UsageError: inconsistent distributed flags.
  """
  quiet_other_libraries()
  try:
    parallel.maybe_initialize_distributed(
        FLAGS.distributed, coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if jax.process_count() > 1:
    logging.info('process %d of %d; %d devices (%d local)', jax.process_index(),
                 jax.process_count(), jax.device_count(), jax.local_device_count())


def default_output_dir(study: str, checkpoint: str, num_examples: int) -> str:
  """``results/<study>/<checkpoint name>_n<num_examples>`` unless --output_dir is given."""
  if FLAGS.output_dir:
    return FLAGS.output_dir
  return f'results/{study}/{pathlib.Path(checkpoint).name}_n{num_examples}'
