"""Runs studies by number at a preset and writes results/index.md.

Examples:
  python experiments/run_studies.py --studies=000                 # study 000, default preset
  python experiments/run_studies.py --studies=all --preset=smoke  # every study in seconds
  python experiments/run_studies.py --studies=000 -- --num_examples=64

Each study runs as its own process (``experiments/<name>.py --preset=P --resume
--output_dir=results/<name>/<preset>`` plus the flags after ``--``), so a killed sweep
continues where it stopped when started again. The index has one row per study run at this preset
(now or earlier): its report, its headline numbers beside the paper's and its run time.
"""

import os
import pathlib
import subprocess
import sys

from absl import app
from absl import flags
from absl import logging

from advsal_jax.studies import catalog
from advsal_jax.studies import cli
from advsal_jax.studies import store

_STUDIES = flags.DEFINE_list('studies', ['all'], "Study numbers (e.g. 000,004) or 'all'.")
_PRESET = flags.DEFINE_enum('preset', 'default', cli.PRESETS, 'Preset of every study run.')
_RESULTS = flags.DEFINE_string('results_dir', 'results', 'Where results and index.md go.')


def main(argv):
  extra = argv[1:]
  cli.quiet_other_libraries()
  try:
    studies = (list(catalog.STUDIES.values()) if _STUDIES.value == ['all']
               else [catalog.get(n) for n in _STUDIES.value])
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if any(a.startswith('--checkpoint') for a in extra):
    several = [f'{s.number} ({s.name})' for s in studies if not s.one_classifier]
    if several:
      raise app.UsageError(f'--checkpoint: study {", ".join(several)} compares several '
                           'classifiers and takes --models instead; leave it out of --studies '
                           'or run it on its own.')
  status, outputs = {}, {}
  given = [a.split('=', 1)[1] for a in extra if a.startswith('--output_dir=')]
  for study in studies:
    out = given[-1] if given else os.path.join(_RESULTS.value, study.name, _PRESET.value)
    outputs[study.number] = out
    cmd = [sys.executable, study.binary, f'--preset={_PRESET.value}', '--resume',
           f'--output_dir={out}', *extra]
    logging.info('Study %s (%s), preset %s: %s', study.number, study.name, _PRESET.value,
                 ' '.join(cmd[1:]))
    code = subprocess.call(cmd)
    status[study.number] = 'ok' if code == 0 else f'failed (exit {code})'
  rows = []
  for study in catalog.STUDIES.values():  # this run's studies and earlier runs at this preset
    out = pathlib.Path(outputs.get(study.number) or
                       pathlib.Path(_RESULTS.value, study.name, _PRESET.value))
    info = out / 'run.json'
    if study.number in status or info.exists():
      rows.append({'study': study, 'output_dir': out, 'status': status.get(study.number, 'ok'),
                   'wall_seconds': store.read_json(info)['wall_seconds'] if info.exists()
                                   else None})
  path = pathlib.Path(_RESULTS.value, 'index.md')
  store.write_text(path, catalog.index_markdown(rows, results_dir=path.parent))
  print(f'Index written to {path}')
  if any(s != 'ok' for s in status.values()):
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
