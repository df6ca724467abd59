"""The studies this package runs, by number, and the results index that lists their reports.

One name per study is used everywhere: the library modules ``studies/<name>.py`` and
``<name>_report.py``, the binary ``experiments/<name>.py`` and the results folder
``results/<name>/``.
"""

import dataclasses
import importlib
import math
import os
import pathlib
from typing import Any

from advsal_jax.studies import report
from advsal_jax.studies import store


@dataclasses.dataclass(frozen=True)
class Study:
  """One study.

  Attributes:
    number: the paper's number, e.g. '000'.
    name: the study's name (module, binary and results folder).
    paper: authors and title of the paper it reproduces.
    one_classifier: the binary studies one classifier, ``--checkpoint``; False for a study
      that compares several (``--models``).
  """
  number: str
  name: str
  paper: str
  one_classifier: bool = True

  @property
  def binary(self) -> str:
    return f'experiments/{self.name}.py'

  def headline(self, summary: dict, config: dict) -> list[tuple[str, Any, Any]]:
    """(quantity, paper's value, ours) rows from the study's report module."""
    module = importlib.import_module(f'advsal_jax.studies.{self.name}_report')
    return module.headline(summary, config)


STUDIES = {s.number: s for s in (
    Study('000', 'compare_saliency', 'Liu, Liu & Hosseini: Analyzing the Effect of '
          'Adversarial Inputs on Saliency Maps'),
    Study('001', 'explain_adversarial',
          'Gu & Tresp: Saliency Methods for Explaining Adversarial Attacks'),
    Study('002', 'advis_sweep',
          'AdVis.js: Exploring Fast Gradient Sign Method adversarial attacks with CAM and '
          'graph-based visual saliency', one_classifier=False),
    Study('003', 'detect_adversarial',
          'Model-based Saliency for the Detection of Adversarial Examples (ICLR 2020 submission)'),
    Study('004', 'localize_attacks',
          'Göpfert, Wersing & Hammer: Recovering Localized Adversarial Attacks'),
)}
"""Every study that has a binary, by number."""


def get(number: str) -> Study:
  """The study ``number`` ('000', or 0).

  Raises:
    ValueError: no such study.
  """
  key = f'{int(number):03d}' if str(number).isdigit() else str(number)
  if key not in STUDIES:
    raise ValueError(f'study: no study {number!r}; available: {sorted(STUDIES)}.')
  return STUDIES[key]


def index_markdown(rows: list[dict[str, Any]], *, results_dir: pathlib.Path) -> str:
  """The results index: one row per study with its report, headline numbers and run time.

  Args:
    rows: per study ``{'study': Study, 'output_dir': path, 'wall_seconds': float | None,
      'status': str}``; a finished run has ``summary.json``/``config.json`` in its dir.
    results_dir: where ``index.md`` goes (report links are relative to it).
  """
  doc = report.Markdown('Results index')
  table = []
  for row in rows:
    study, out = row['study'], pathlib.Path(row['output_dir'])
    headline = ''
    if (out / 'summary.json').exists():
      numbers = study.headline(store.read_json(out / 'summary.json'),
                               store.read_json(out / 'config.json'))
      headline = '; '.join(f'{q}: {report.fmt(ours)} (paper {report.fmt(paper)})'
                           for q, paper, ours in numbers)
    link = (f'[report]({os.path.relpath(out / "report.md", results_dir)})'
            if (out / 'report.md').exists() else 'no report')
    seconds = row.get('wall_seconds')
    table.append((study.number, study.name, link, headline, row['status'],
                  'n/a' if seconds is None or math.isnan(seconds) else f'{seconds:.0f} s'))
  doc.lines(report.table(('study', 'name', 'report', 'headline: ours (paper)', 'status',
                          'run time'), table))
  return doc.text()
