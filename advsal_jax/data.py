"""Datasets: the official offline formats first, tensorflow-datasets otherwise.

``load(name, split)`` looks, in order, in the ``data_dir`` argument, then in
``$ADVSAL_DATA_DIR``, for the official files (CIFAR-10 "python version" pickles under
``cifar10/cifar-10-batches-py/``, MNIST IDX ``.gz`` files under ``mnist/``), and otherwise
reads the dataset through ``tfds.data_source`` (array_record, no TensorFlow needed), which
downloads it on first use. ``cifar10_catdog`` is CIFAR-10's cat and dog images only, read
from CIFAR-10's files (``SUBSETS``).
"""

import gzip
import hashlib
import os
import pathlib
import pickle
import zlib
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import _checks

DATA_DIR_ENV = 'ADVSAL_DATA_DIR'
DATASETS = ('cifar10', 'cifar10_catdog', 'mnist')
SPLITS = ('train', 'test')

_CIFAR_SUBDIR = 'cifar10/cifar-10-batches-py'
_CIFAR_FILES = {'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']}
_MNIST_SUBDIR = 'mnist'
_MNIST_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
                'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
MNIST_CLASSES = tuple(str(i) for i in range(10))
SUBSETS = {'cifar10_catdog': ('cifar10', (3, 5))}
"""Datasets made of some classes of another: name -> (that dataset, the labels kept). The
kept classes are relabelled 0, 1, ... in the order given: ``cifar10_catdog`` is CIFAR-10's
cat (3) and dog (5) images, 0 = cat and 1 = dog (10,000 train, 2,000 test images), the
stand-in for paper 003's ASSIRA cats-vs-dogs dataset."""


class Dataset(NamedTuple):
  """One split of a dataset held in memory.

  Attributes:
    images: uint8[N, H, W, C].
    labels: int32[N].
    class_names: the K class names, index = label.
    source: where it was read from (a directory or ``tfds:<name>``).
  """
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  source: str


def _check_name_split(name: str, split: str):
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; expected one of {DATASETS}.')
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; expected one of {SPLITS}.')


def offline_files(name: str, split: str, root: str | os.PathLike) -> list[pathlib.Path]:
  """The official-format files of ``name``/``split`` under ``root`` (they may not exist).

  Raises:
    ValueError: unknown ``name`` or ``split``.
    TypeError: ``root`` is not a path (str or os.PathLike).
  """
  _check_name_split(name, split)
  if not isinstance(root, (str, os.PathLike)):
    raise TypeError(f'root must be a directory path (str or os.PathLike), got {root!r}.')
  root = pathlib.Path(root)
  name = SUBSETS[name][0] if name in SUBSETS else name
  if name == 'cifar10':
    return [root / _CIFAR_SUBDIR / f for f in _CIFAR_FILES[split]]
  return [root / _MNIST_SUBDIR / f for f in _MNIST_FILES[split]]


def _latin1_bytes(text: str, encoding: str) -> bytes:
  """Stands in for ``_codecs.encode``, which Python 3 pickles bytes through at protocol 2.

  Only the 'latin1' encoding those pickles name is accepted, so no codec is looked up.
  """
  if encoding != 'latin1':
    raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}; only 'latin1' "
                                 'is accepted.')
  return text.encode('latin1')


_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array rebuilder, wherever numpy keeps it.
# The globals an official CIFAR-10 batch references (arrays are rebuilt through numpy's
# _reconstruct, under its numpy 1 name or its numpy 2 one), plus the latin1 encoder of bytes
# in a batch re-pickled by Python 3 at the official protocol 2. Nothing else is importable.
_CIFAR_GLOBALS = {
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('numpy.core.multiarray', '_reconstruct'): _RECONSTRUCT,
    ('numpy._core.multiarray', '_reconstruct'): _RECONSTRUCT,
    ('_codecs', 'encode'): _latin1_bytes,
}


class _CifarUnpickler(pickle.Unpickler):
  """Unpickles only dicts, lists, bytes, numbers and numpy arrays (``_CIFAR_GLOBALS``)."""

  def find_class(self, module: str, name: str):
    if (module, name) not in _CIFAR_GLOBALS:
      allowed = ', '.join(sorted(f'{m}.{n}' for m, n in _CIFAR_GLOBALS))
      raise pickle.UnpicklingError(
          f'refused to import {module}.{name}: an official CIFAR-10 batch references only '
          f'{allowed}. The file was not unpickled further; do not trust it')
    return _CIFAR_GLOBALS[(module, name)]


def _unpickle_cifar(path: pathlib.Path) -> Any:
  """Unpickles an official CIFAR-10 python-version file with ``_CifarUnpickler``.

  Raises:
    ValueError: naming ``path``, for a file that is not such a pickle (truncated, corrupt,
      or referencing anything but numpy arrays).
  """
  try:
    with open(path, 'rb') as fh:
      return _CifarUnpickler(fh, encoding='bytes').load()
  except OSError:  # A missing or unreadable file is reported as such.
    raise
  except Exception as e:  # Whatever a broken or hostile pickle raises, name the file.
    raise ValueError(f'{path}: not a readable CIFAR-10 python-version pickle '
                     f'({type(e).__name__}: {e}).') from e


def _cifar_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8[N,32,32,3] and labels int32[N] of one official CIFAR-10 batch file."""
  batch = _unpickle_cifar(path)
  if not isinstance(batch, dict) or not {b'data', b'labels'} <= batch.keys():
    keys = f' with keys {list(batch)[:8]}' if isinstance(batch, dict) else ''
    raise ValueError(f"{path}: expected a dict with keys b'data' and b'labels', got "
                     f'{type(batch).__name__}{keys}.')
  data, labels = batch[b'data'], batch[b'labels']
  if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
      or data.shape[1] != 3072):
    raise ValueError(f"{path}: expected b'data' to be uint8[N, 3072], got "
                     f'{getattr(data, "dtype", type(data).__name__)} of shape '
                     f'{getattr(data, "shape", None)}.')
  if (not isinstance(labels, list) or len(labels) != len(data)
      or not all(type(v) is int and 0 <= v < 10 for v in labels)):
    raise ValueError(f"{path}: expected b'labels' to be a list of {len(data)} ints in [0, 10), "
                     f"one per row of b'data', got {type(labels).__name__} of length "
                     f'{len(labels) if isinstance(labels, list) else None}.')
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, np.int32)


def _read_cifar(files: list[pathlib.Path]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  images, labels = zip(*(_cifar_batch(f) for f in files))
  meta_file = files[0].parent / 'batches.meta'
  meta = _unpickle_cifar(meta_file)
  names = meta.get(b'label_names') if isinstance(meta, dict) else None
  if (not isinstance(names, list) or len(names) != 10
      or not all(isinstance(n, bytes) for n in names)):
    raise ValueError(f"{meta_file}: expected a dict whose b'label_names' lists 10 class names "
                     'as bytes.')
  return np.concatenate(images), np.concatenate(labels), tuple(n.decode('latin1') for n in names)


def _read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
  try:
    with gzip.open(path, 'rb') as fh:
      raw = fh.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise ValueError(f'{path}: not a readable gzip file, truncated or corrupt '
                     f'({type(e).__name__}: {e}).') from e
  got = int.from_bytes(raw[:4], 'big')
  if len(raw) < 4 or got != magic:
    raise ValueError(f'{path}: IDX magic number {got}, expected {magic}.')
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f'{path}: {len(raw)} bytes, shorter than its {header}-byte IDX header '
                     '(truncated?).')
  dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
  data = np.frombuffer(raw, np.uint8, offset=header)
  if data.size != np.prod(dims):
    raise ValueError(f'{path}: header says {dims} but holds {data.size} values (truncated?).')
  return data.reshape(dims)


def _read_mnist(files: list[pathlib.Path]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  images = _read_idx(files[0], 2051)[..., None]
  if images.shape[1:] != (28, 28, 1):
    raise ValueError(f'{files[0]}: expected 28x28 images, got {images.shape[1:3]}.')
  labels = _read_idx(files[1], 2049).astype(np.int32)
  if len(images) != len(labels):
    raise ValueError(f'{files[0]} holds {len(images)} images but {files[1]} {len(labels)} labels.')
  if labels.size and labels.max() > 9:
    raise ValueError(f'{files[1]}: labels must be digits 0-9, got {labels.max()}.')
  return images, labels, MNIST_CLASSES


def _load_tfds(name: str, split: str) -> Dataset:
  import tensorflow_datasets as tfds  # Imported lazily: slow, and only the fallback needs it.
  source = tfds.data_source(name, split=split)
  n = len(source)
  examples = [source[i] for i in range(n)]
  images = np.stack([np.asarray(e['image'], np.uint8) for e in examples])
  labels = np.asarray([int(e['label']) for e in examples], np.int32)
  names = tuple(source.dataset_info.features['label'].names)
  return Dataset(images, labels, names, f'tfds:{name}')


def _select_classes(dataset: Dataset, classes: tuple[int, ...]) -> Dataset:
  """The examples of ``dataset`` labelled one of ``classes``, relabelled by their position there.

  Args:
    dataset: a split with labels in [0, K).
    classes: distinct labels of ``dataset``; ``classes[i]`` becomes label ``i``.

  Returns:
    A ``Dataset`` with the kept images in their original order, ``labels int32[n]`` in
    [0, len(classes)) and the kept classes' names.
  """
  relabel = np.full(len(dataset.class_names), -1, np.int32)
  relabel[list(classes)] = np.arange(len(classes))
  keep = np.isin(dataset.labels, classes)
  return Dataset(dataset.images[keep], relabel[dataset.labels[keep]],
                 tuple(dataset.class_names[c] for c in classes), dataset.source)


def load(name: str, split: str, *, data_dir: str | os.PathLike | None = None) -> Dataset:
  """Loads a dataset split into memory.

  Args:
    name: one of ``DATASETS`` (``'cifar10'``, ``'cifar10_catdog'``, ``'mnist'``).
    split: ``'train'`` or ``'test'``.
    data_dir: a directory holding the official offline files (see module docstring). If
      None, ``$ADVSAL_DATA_DIR`` is used when set; otherwise tensorflow-datasets.

  Returns:
    A ``Dataset`` with ``images uint8[N,H,W,C]`` (CIFAR-10 32x32x3, MNIST 28x28x1),
    ``labels int32[N]`` and the class names, in the official order (a ``SUBSETS`` dataset:
    its classes' images in the official order, relabelled).

  Raises:
    ValueError: unknown name/split, or a truncated, corrupt or hostile file (the message
      names it). CIFAR-10 pickles are read by an unpickler that imports nothing but numpy's
      array rebuilders, so a crafted pickle is refused before it can run anything.
    FileNotFoundError: ``data_dir`` (or ``$ADVSAL_DATA_DIR``) was given but lacks the files.
  """
  _check_name_split(name, split)
  if name in SUBSETS:
    parent, classes = SUBSETS[name]
    return _select_classes(load(parent, split, data_dir=data_dir), classes)
  root, origin = data_dir, 'the data_dir argument'
  if root is None and os.environ.get(DATA_DIR_ENV):
    root, origin = os.environ[DATA_DIR_ENV], f'${DATA_DIR_ENV}'
  if root is None:
    return _load_tfds(name, split)
  files = offline_files(name, split, root)
  missing = [str(f) for f in files if not f.exists()]
  if missing:
    raise FileNotFoundError(
        f'{name}/{split}: {origin} is {str(root)!r} but these official-format files are '
        f'missing: {missing}. Put the official files there (CIFAR-10 python pickles under '
        f'{_CIFAR_SUBDIR}/, MNIST IDX .gz under {_MNIST_SUBDIR}/), point {origin} elsewhere, '
        f'or unset it to download through tensorflow-datasets.')
  reader = _read_cifar if name == 'cifar10' else _read_mnist
  images, labels, names = reader(files)
  return Dataset(images, labels, names, str(pathlib.Path(root).resolve()))


def checksums(name: str, split: str, *, data_dir: str | os.PathLike | None = None) -> dict:
  """SHA-256 of the offline files that ``load`` would read (empty for the tfds path)."""
  root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
  if not root:
    return {}
  out = {}
  for f in offline_files(name, split, root):
    out[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
  return out


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8[..., C] in [0, 255] -> float32 in [0, 1].

  Raises:
    TypeError: ``images`` are not uint8 (float images need no conversion).
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise TypeError(f'images must be uint8 in [0, 255], got dtype {images.dtype}; float '
                    'images in [0, 1] need no conversion.')
  return images.astype(np.float32) / np.float32(255.)


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *,
            seed: int | None = None, drop_remainder: bool = False,
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Iterates over ``(x f32[b,H,W,C] in [0,1], y int32[b])`` batches.

  Args:
    images: uint8[N, H, W, C].
    labels: int32[N].
    batch_size: examples per batch.
    seed: shuffles with ``np.random.default_rng(seed)`` when given; in order when None.
    drop_remainder: drop the last, smaller batch.

  Raises:
    TypeError: ``batch_size`` is not an int.
    ValueError: ``batch_size < 1``; ``images`` and ``labels`` differ in length.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
    raise TypeError(f'batch_size must be an int, got {type(batch_size).__name__} '
                    f'{batch_size!r}.')
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  if len(images) != len(labels):
    raise ValueError(f'images ({len(images)}) and labels ({len(labels)}) differ in length.')
  n = len(images)
  order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    idx = order[start:start + batch_size]
    yield to_float(images[idx]), np.asarray(labels[idx], np.int32)


def augment_cifar(key: jax.Array, x: jax.Array, *, pad: int = 4) -> jax.Array:
  """Random crop after zero padding and random horizontal flip, per image.

  Args:
    key: a PRNG key.
    x: f32[B, H, W, C].
    pad: padding on each side before the random HxW crop.

  Returns:
    f32[B, H, W, C].

  Raises:
    ValueError: ``x`` is not a non-empty batch of images [B,H,W,C]; ``pad < 0``.
    TypeError: non-float ``x``; ``pad`` is not an int.
  """
  _checks.check_images(x)
  _checks.check_count(pad, 'pad', minimum=0)
  b, h, w, c = x.shape
  k_crop, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(k_flip, 0.5, (b,))
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(img, off, flip):
    crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(one)(padded, offsets, flips)
