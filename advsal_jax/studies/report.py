"""Markdown reports: tables, the paper's numbers beside ours, and claim-by-claim verdicts."""

import dataclasses
import math
from typing import Any, Mapping, Sequence

VERDICTS = ('holds', 'does not hold', 'partly holds', 'cannot be tested')
"""What a report may say of a claim of the paper on our models."""


def fmt(value: Any, spec: str = '.3f') -> str:
  """A number formatted with ``spec``; ``n/a`` for None and NaN; other values as ``str``."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return 'n/a'
  if isinstance(value, bool):
    return 'yes' if value else 'no'
  if isinstance(value, (int, float)):
    return format(value, spec if isinstance(value, float) else 'd')
  return str(value)


def with_ci(stats: Mapping[str, float] | None, spec: str = '.3f') -> str:
  """``'mean [ci_low, ci_high]'`` of a ``summary.describe`` result (``n/a`` for None)."""
  if not stats:
    return 'n/a'
  return (f"{fmt(stats['mean'], spec)} [{fmt(stats['ci_low'], spec)}, "
          f"{fmt(stats['ci_high'], spec)}]")


def _cell(value: Any, spec: str) -> str:
  return fmt(value, spec).replace('|', '\\|').replace('\n', ' ')


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
          spec: str = '.3f') -> list[str]:
  """A markdown table; numbers formatted with ``spec``, ``|`` in text escaped.

  Raises:
    ValueError: a row whose length differs from the headers'.
  """
  for row in rows:
    if len(row) != len(headers):
      raise ValueError(f'rows: every row needs {len(headers)} cells, got {len(row)}: {row}.')
  lines = ['| ' + ' | '.join(_cell(h, spec) for h in headers) + ' |',
           '|' + ' --- |' * len(headers)]
  lines += ['| ' + ' | '.join(_cell(c, spec) for c in row) + ' |' for row in rows]
  return lines


@dataclasses.dataclass(frozen=True)
class Claim:
  """A claim of the paper, what the paper measured, what we measured, and the verdict.

  Attributes:
    text: the claim in one sentence.
    paper: the paper's evidence (a number or a quote), '' if it gives none.
    ours: our measurement, with its uncertainty where there is one.
    verdict: one of ``VERDICTS``.
    why: the reason for the verdict (always for 'cannot be tested' and 'partly holds').
  """
  text: str
  paper: str
  ours: str
  verdict: str
  why: str = ''

  def __post_init__(self):
    if self.verdict not in VERDICTS:
      raise ValueError(f'verdict must be one of {VERDICTS}, got {self.verdict!r}.')


def count_verdict(passed: int, total: int) -> str:
  """The verdict of a claim checked ``total`` times: all passed, some, none, or never checked."""
  if total == 0:
    return 'cannot be tested'
  return 'holds' if passed == total else ('partly holds' if passed else 'does not hold')


def claims(items: Sequence[Claim]) -> list[str]:
  """The claims as a table: claim, paper, ours, verdict (with its reason)."""
  rows = [(c.text, c.paper, c.ours, f'**{c.verdict}**' + (f': {c.why}' if c.why else ''))
          for c in items]
  return table(('claim', 'paper', 'ours', 'verdict'), rows)


def paper_vs_ours(rows: Sequence[tuple[str, Any, Any, str]], *, what: str = 'quantity',
                  spec: str = '.3f') -> list[str]:
  """A table of (quantity, paper's value, our value, our CI or note) rows."""
  return table((what, 'paper', 'ours', '95 % CI / note'), rows, spec=spec)


class Markdown:
  """Accumulates a markdown document, one block at a time."""

  def __init__(self, title: str):
    self._lines = [f'# {title}', '']

  def heading(self, text: str, level: int = 2) -> 'Markdown':
    self._lines += ['#' * level + ' ' + text, '']
    return self

  def paragraph(self, text: str) -> 'Markdown':
    self._lines += [text, '']
    return self

  def lines(self, lines: Sequence[str]) -> 'Markdown':
    self._lines += [*lines, '']
    return self

  def figure(self, path: str, caption: str = '') -> 'Markdown':
    self._lines += [f'![{caption or path}]({path})', '']
    return self

  def text(self) -> str:
    return '\n'.join(self._lines).rstrip('\n') + '\n'
