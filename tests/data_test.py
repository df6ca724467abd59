"""Tests of advsal_jax.data: official-format round trips, tfds mock path, batching, augmentation."""

import gzip
import pathlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from advsal_jax import data
from testing_utils import write_official_cifar


def _write_idx(path: pathlib.Path, arr: np.ndarray, magic: int):
  header = magic.to_bytes(4, 'big') + b''.join(int(s).to_bytes(4, 'big') for s in arr.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + arr.astype(np.uint8).tobytes())


def _write_mnist(root: pathlib.Path, rng: np.random.Generator) -> dict:
  d = root / 'mnist'
  d.mkdir(parents=True)
  out = {}
  for split, (img_f, lab_f) in {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
                                'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}.items():
    imgs = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 4).astype(np.uint8)
    _write_idx(d / img_f, imgs, 2051)
    _write_idx(d / lab_f, labels, 2049)
    out[split] = (imgs, labels)
  return out


def test_cifar_official_format_round_trip(tmp_path, monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  arrays = write_official_cifar(tmp_path, np.random.default_rng(0))
  train = data.load('cifar10', 'train', data_dir=tmp_path)
  want = np.concatenate([arrays[f'data_batch_{i}'][0] for i in range(1, 6)])
  np.testing.assert_array_equal(train.images, want)
  np.testing.assert_array_equal(
      train.labels, np.concatenate([arrays[f'data_batch_{i}'][1] for i in range(1, 6)]))
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  test = data.load('cifar10', 'test', data_dir=tmp_path)
  np.testing.assert_array_equal(test.images, arrays['test_batch'][0])
  assert test.class_names[0] == 'airplane' and len(test.class_names) == 10


def test_cifar10_catdog_is_cifar10_cats_and_dogs_relabelled(tmp_path):
  arrays = write_official_cifar(tmp_path, np.random.default_rng(0), per_batch=40)
  for split, files in (('train', [f'data_batch_{i}' for i in range(1, 6)]),
                       ('test', ['test_batch'])):
    images = np.concatenate([arrays[f][0] for f in files])
    labels = np.concatenate([arrays[f][1] for f in files])
    ds = data.load('cifar10_catdog', split, data_dir=tmp_path)
    keep = [i for i, y in enumerate(labels) if y in (3, 5)]
    assert keep and ds.class_names == ('cat', 'dog') and ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.images, images[keep])
    np.testing.assert_array_equal(ds.labels, [0 if labels[i] == 3 else 1 for i in keep])
    assert data.checksums('cifar10_catdog', split, data_dir=tmp_path) == data.checksums(
        'cifar10', split, data_dir=tmp_path)


def test_mnist_idx_round_trip_and_env_var(tmp_path, monkeypatch):
  arrays = _write_mnist(tmp_path, np.random.default_rng(1))
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
  for split in ('train', 'test'):
    ds = data.load('mnist', split)
    np.testing.assert_array_equal(ds.images[..., 0], arrays[split][0])
    np.testing.assert_array_equal(ds.labels, arrays[split][1].astype(np.int32))
    assert ds.images.shape[1:] == (28, 28, 1)


def test_truncated_idx_raises(tmp_path):
  _write_mnist(tmp_path, np.random.default_rng(2))
  path = tmp_path / 'mnist' / 't10k-images-idx3-ubyte.gz'
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  with gzip.open(path, 'wb') as f:
    f.write(raw[:-10])
  with pytest.raises(ValueError, match='truncated'):
    data.load('mnist', 'test', data_dir=tmp_path)


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r'ADVSAL_DATA_DIR.*data_batch_1'):
    data.load('cifar10', 'train')


@pytest.mark.parametrize('name,split', [('imagenet', 'test'), ('mnist', 'validation')])
def test_unknown_name_or_split(name, split):
  with pytest.raises(ValueError, match='Unknown'):
    data.load(name, split, data_dir='.')


@pytest.mark.parametrize('name,shape', [('cifar10', (32, 32, 3)), ('mnist', (28, 28, 1))])
def test_tfds_path_under_mock_data(name, shape, monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  with tfds.testing.mock_data(num_examples=5):
    ds = data.load(name, 'test')
  assert ds.images.shape == (5, *shape) and ds.images.dtype == np.uint8
  assert ds.labels.shape == (5,) and ds.labels.dtype == np.int32
  assert ds.source == f'tfds:{name}' and len(ds.class_names) == 10


def test_cifar10_catdog_through_tfds_under_mock_data(monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  with tfds.testing.mock_data(num_examples=60):
    cifar = data.load('cifar10', 'test')
    catdog = data.load('cifar10_catdog', 'test')
  keep = np.isin(cifar.labels, [3, 5])
  np.testing.assert_array_equal(catdog.images, cifar.images[keep])
  np.testing.assert_array_equal(catdog.labels, cifar.labels[keep] == 5)
  assert catdog.class_names == tuple(cifar.class_names[c] for c in (3, 5))  # mock names
  assert catdog.source == 'tfds:cifar10'


def test_real_files_match_published_facts(data_dir):
  sums = dict(line.split()[::-1] for line in
              (pathlib.Path(data_dir) / 'SHA256SUMS').read_text().splitlines() if line.strip())
  cifar = data.load('cifar10', 'test', data_dir=data_dir)
  assert cifar.images.shape == (10_000, 32, 32, 3)
  np.testing.assert_array_equal(cifar.labels[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])
  # Official test row 0 starts 158, 159, 165 (red plane) and ends 124, 129, 110 (blue plane).
  np.testing.assert_array_equal(cifar.images[0, 0, :3, 0], [158, 159, 165])
  np.testing.assert_array_equal(cifar.images[0, 31, -3:, 2], [124, 129, 110])
  mnist = data.load('mnist', 'test', data_dir=data_dir)
  assert mnist.images.shape == (10_000, 28, 28, 1)
  np.testing.assert_array_equal(mnist.labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
  np.testing.assert_array_equal(np.bincount(mnist.labels), [980, 1135, 1032, 1010, 982, 892,
                                                            958, 1028, 974, 1009])
  for name, digest in data.checksums('mnist', 'test', data_dir=data_dir).items():
    assert sums[f'mnist/{name}'] == digest


def test_real_cifar10_catdog_split_sizes_and_images(data_dir):
  for split, n in (('train', 10_000), ('test', 2_000)):
    cifar = data.load('cifar10', split, data_dir=data_dir)
    catdog = data.load('cifar10_catdog', split, data_dir=data_dir)
    cats, dogs = cifar.images[cifar.labels == 3], cifar.images[cifar.labels == 5]
    assert len(catdog.labels) == n and np.bincount(catdog.labels).tolist() == [n // 2] * 2
    assert cifar.class_names[3] == 'cat' and cifar.class_names[5] == 'dog'
    np.testing.assert_array_equal(catdog.images[catdog.labels == 0], cats)
    np.testing.assert_array_equal(catdog.images[catdog.labels == 1], dogs)
  # The first test images labelled cat or dog: CIFAR-10 test rows 0 (cat), 8 (cat), 12 (dog).
  np.testing.assert_array_equal(catdog.labels[:3], [0, 0, 1])
  np.testing.assert_array_equal(catdog.images[:3], cifar.images[[0, 8, 12]])


def test_batches_shuffle_drop_remainder_and_range():
  images = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
  labels = np.arange(10, dtype=np.int32)
  ordered = list(data.batches(images, labels, 4))
  assert [len(y) for _, y in ordered] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate([y for _, y in ordered]), labels)
  x0 = ordered[0][0]
  assert x0.dtype == np.float32 and x0.min() >= 0 and x0.max() <= 1
  np.testing.assert_allclose(x0, images[:4] / 255., rtol=1e-6)
  a = [y for _, y in data.batches(images, labels, 4, seed=3, drop_remainder=True)]
  b = [y for _, y in data.batches(images, labels, 4, seed=3, drop_remainder=True)]
  assert [len(y) for y in a] == [4, 4]
  np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
  assert not np.array_equal(np.concatenate([y for _, y in data.batches(images, labels, 10, seed=3)]),
                            labels)
  with pytest.raises(ValueError, match='batch_size'):
    next(data.batches(images, labels, 0))


def test_augment_cifar_is_crop_of_padded_and_maybe_flipped():
  x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 3))
  out = np.asarray(data.augment_cifar(jax.random.key(1), x, pad=2))
  padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
  flipped_any = False
  for img, src in zip(out, padded):
    windows = [src[i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
    direct = any(np.array_equal(img, w) for w in windows)
    flipped = any(np.array_equal(img[:, ::-1], w) for w in windows)
    assert direct or flipped
    flipped_any |= flipped and not direct
  assert flipped_any
