"""Datasets: the official offline formats first, tensorflow-datasets otherwise.

``load(name, split)`` looks, in order, in the ``data_dir`` argument, then in
``$ADVSAL_DATA_DIR``, for the official files (CIFAR-10 "python version" pickles under
``cifar10/cifar-10-batches-py/``, MNIST IDX ``.gz`` files under ``mnist/``), and otherwise
reads the dataset through ``tfds.data_source`` (array_record, no TensorFlow needed), which
downloads it on first use.
"""

import gzip
import hashlib
import os
import pathlib
import pickle
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DATA_DIR_ENV = 'ADVSAL_DATA_DIR'
DATASETS = ('cifar10', 'mnist')
SPLITS = ('train', 'test')

_CIFAR_SUBDIR = 'cifar10/cifar-10-batches-py'
_CIFAR_FILES = {'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']}
_MNIST_SUBDIR = 'mnist'
_MNIST_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
                'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
MNIST_CLASSES = tuple(str(i) for i in range(10))


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
  """The official-format files of ``name``/``split`` under ``root`` (they may not exist)."""
  _check_name_split(name, split)
  root = pathlib.Path(root)
  if name == 'cifar10':
    return [root / _CIFAR_SUBDIR / f for f in _CIFAR_FILES[split]]
  return [root / _MNIST_SUBDIR / f for f in _MNIST_FILES[split]]


def _read_cifar(files: list[pathlib.Path]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  images, labels = [], []
  for f in files:
    with open(f, 'rb') as fh:
      batch = pickle.load(fh, encoding='bytes')
    data = np.asarray(batch[b'data'], np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
      raise ValueError(f'{f}: expected data of shape [N, 3072], got {data.shape}.')
    images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels.append(np.asarray(batch[b'labels'], np.int32))
  meta_file = files[0].parent / 'batches.meta'
  with open(meta_file, 'rb') as fh:
    meta = pickle.load(fh, encoding='bytes')
  names = tuple(n.decode() for n in meta[b'label_names'])
  return np.concatenate(images), np.concatenate(labels), names


def _read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
  with gzip.open(path, 'rb') as fh:
    raw = fh.read()
  got = int.from_bytes(raw[:4], 'big')
  if got != magic:
    raise ValueError(f'{path}: IDX magic number {got}, expected {magic}.')
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != np.prod(dims):
    raise ValueError(f'{path}: header says {dims} but holds {data.size} values (truncated?).')
  return data.reshape(dims)


def _read_mnist(files: list[pathlib.Path]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  images = _read_idx(files[0], 2051)[..., None]
  labels = _read_idx(files[1], 2049).astype(np.int32)
  if len(images) != len(labels):
    raise ValueError(f'{files[0]} holds {len(images)} images but {files[1]} {len(labels)} labels.')
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


def load(name: str, split: str, *, data_dir: str | os.PathLike | None = None) -> Dataset:
  """Loads a dataset split into memory.

  Args:
    name: ``'cifar10'`` or ``'mnist'``.
    split: ``'train'`` or ``'test'``.
    data_dir: a directory holding the official offline files (see module docstring). If
      None, ``$ADVSAL_DATA_DIR`` is used when set; otherwise tensorflow-datasets.

  Returns:
    A ``Dataset`` with ``images uint8[N,H,W,C]`` (CIFAR-10 32x32x3, MNIST 28x28x1),
    ``labels int32[N]`` and the class names, in the official order.

  Raises:
    ValueError: unknown name/split, or a corrupt file.
    FileNotFoundError: ``data_dir`` (or ``$ADVSAL_DATA_DIR``) was given but lacks the files.
  """
  _check_name_split(name, split)
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
  """uint8[..., C] in [0, 255] -> float32 in [0, 1]."""
  return np.asarray(images, np.float32) / np.float32(255.)


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
  """
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
  """
  b, h, w, c = x.shape
  k_crop, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(k_flip, 0.5, (b,))
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(img, off, flip):
    crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(one)(padded, offsets, flips)
