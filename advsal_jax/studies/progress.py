"""Progress of a long loop: done/total, rate and ETA, as a live bar on a terminal or log lines."""

import sys
import time
from typing import TextIO

from absl import logging


def _minutes(seconds: float) -> str:
  if seconds < 60:
    return f'{seconds:.0f} s'
  if seconds < 3600:
    return f'{seconds / 60:.1f} min'
  return f'{seconds / 3600:.1f} h'


class Progress:
  """Reports ``done`` of ``total`` items with their rate and the time left.

  On a terminal (``stream.isatty()``) one line is redrawn in place; elsewhere (files, CI)
  each update is an absl INFO line. The rate counts only items done by this process since
  it started, so a resumed run's ETA is not flattered by the work it skipped.

  Args:
    name: what is counted, e.g. ``'stage attack'``.
    total: items to do in all (including ``already_done``).
    unit: the items' name, e.g. ``'images'``.
    already_done: items finished by an earlier run.
    stream: where a terminal bar goes (default ``sys.stderr``).
    clock: seconds, monotonic (for tests).
  """

  def __init__(self, name: str, total: int, *, unit: str = 'examples', already_done: int = 0,
               stream: TextIO | None = None, clock=time.monotonic):
    self.name, self.total, self.unit = name, total, unit
    self.done = already_done
    self._start_done = already_done
    self._stream = sys.stderr if stream is None else stream
    self._clock = clock
    self._t0 = clock()
    self._tty = bool(getattr(self._stream, 'isatty', lambda: False)())

  @property
  def rate(self) -> float:
    """Items per second since this process started counting (0 before the first update)."""
    elapsed = self._clock() - self._t0
    return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

  @property
  def eta_seconds(self) -> float:
    """Seconds left at the current rate (inf before the first update)."""
    rate = self.rate
    return (self.total - self.done) / rate if rate > 0 else float('inf')

  def line(self) -> str:
    """The status text, e.g. ``'stage maps: 64/448 images (14%), 3.21 images/s, ETA 2.0 min'``."""
    pct = 100 * self.done / self.total if self.total else 100.0
    eta = self.eta_seconds
    return (f'{self.name}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), '
            f'{self.rate:.2f} {self.unit}/s, ETA {_minutes(eta) if eta != float("inf") else "?"}')

  def update(self, n: int):
    """Records ``n`` more finished items and reports."""
    self.done += n
    if self._tty:
      width = 24
      filled = int(width * self.done / self.total) if self.total else width
      self._stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.line()}\033[K")
      if self.done >= self.total:
        self._stream.write('\n')
      self._stream.flush()
    else:
      logging.info('%s', self.line())
