"""Where a study's files go and how they are written: atomically, and read back as a stream.

Every file a study writes (config, shards, per-example tables, summaries, figures, reports)
goes through ``atomic`` or one of the writers built on it: the bytes land in a temporary file
beside the target and are renamed over it, so a killed run leaves either the old file or the
new one, never half of one. Finished batches are *shards*, one ``.npz`` per batch under
``<output_dir>/shards/<stage>/``, named by the position of the batch's first example in the
stage's work list; ``iter_shards`` streams them back (stored maps can be a dataset) and
``load_shards`` concatenates them.
"""

import contextlib
import csv
import io
import json
import os
import pathlib
import tempfile
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic(path: PathLike, mode: str = 'wb') -> Iterator[Any]:
  """Opens a temporary file beside ``path`` and renames it over ``path`` on success.

  Args:
    path: the file to (re)write; its directory is created if missing.
    mode: 'wb' or 'w' (text, UTF-8, newline translation off).

  Yields:
    The open temporary file. If the block raises, the temporary file is removed and
    ``path`` is left as it was.
  """
  if mode not in ('wb', 'w'):
    raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}.")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
  umask = os.umask(0)
  os.umask(umask)
  os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide results from the group.
  try:
    with open(fd, mode, **({'encoding': 'utf-8', 'newline': ''} if mode == 'w' else {})) as fh:
      yield fh
      fh.flush()
      os.fsync(fh.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def write_text(path: PathLike, text: str):
  """Writes ``text`` (UTF-8) atomically."""
  with atomic(path, 'w') as fh:
    fh.write(text)


def write_json(path: PathLike, obj: Any):
  """Writes ``obj`` as indented JSON (non-finite floats as NaN/Infinity, as json does)."""
  write_text(path, json.dumps(obj, indent=2) + '\n')


def read_json(path: PathLike) -> Any:
  """Reads a JSON file written by ``write_json``."""
  return json.loads(pathlib.Path(path).read_text(encoding='utf-8'))


def write_csv(path: PathLike, rows: Sequence[Mapping[str, Any]]):
  """Writes dict rows as CSV with the first row's keys as the header (atomically).

  Raises:
    ValueError: no rows (a CSV without a header cannot be read back).
  """
  if not rows:
    raise ValueError(f'rows: nothing to write to {path}.')
  with atomic(path, 'w') as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def write_npz(path: PathLike, arrays: Mapping[str, Any]):
  """Writes ``arrays`` as an uncompressed ``.npz`` (atomically)."""
  with atomic(path, 'wb') as fh:
    np.savez(fh, **arrays)


def write_png(path: PathLike, figure: Any, *, dpi: int = 120):
  """Saves a matplotlib figure as PNG (atomically)."""
  buf = io.BytesIO()
  figure.savefig(buf, format='png', dpi=dpi, bbox_inches='tight')
  with atomic(path, 'wb') as fh:
    fh.write(buf.getvalue())


def shard_dir(output_dir: PathLike, stage: str) -> pathlib.Path:
  """The folder of a stage's shards."""
  return pathlib.Path(output_dir) / 'shards' / stage


def shard_path(output_dir: PathLike, stage: str, start: int) -> pathlib.Path:
  """The shard of the batch whose first example is at position ``start`` of the work list."""
  return shard_dir(output_dir, stage) / f'batch_{start:07d}.npz'


def shard_files(output_dir: PathLike, stage: str) -> list[pathlib.Path]:
  """A stage's finished shards, in work-list order."""
  return sorted(shard_dir(output_dir, stage).glob('batch_*.npz'))


def iter_shards(output_dir: PathLike, stage: str) -> Iterator[dict[str, np.ndarray]]:
  """Streams a stage's shards one at a time (only one is in memory), in work-list order."""
  for f in shard_files(output_dir, stage):
    with np.load(f) as z:
      yield {k: z[k] for k in z.files}


def load_shards(output_dir: PathLike, stage: str) -> dict[str, np.ndarray]:
  """Concatenates a stage's shards along the leading (example) axis.

  Scalars stored per shard (e.g. ``seconds``) become one value per shard.

  Returns:
    Arrays with one row per finished example, in work-list order.

  Raises:
    FileNotFoundError: the stage has no finished shard.
  """
  parts = list(iter_shards(output_dir, stage))
  if not parts:
    raise FileNotFoundError(f'No finished batches in {shard_dir(output_dir, stage)}.')
  out = {}
  for key in parts[0]:
    values = [p[key] for p in parts]
    out[key] = (np.array(values) if values[0].ndim == 0 else np.concatenate(values))
  return out
