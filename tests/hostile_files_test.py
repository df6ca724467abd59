"""Hostile and broken files: crafted pickles, truncated data files, corrupted checkpoints.

Every case must end in an error that names the file, before anything in it runs and before
any model is returned.
"""

import _codecs
import builtins
import gzip
import json
import os
import pathlib
import pickle
import pickletools
import shlex
import shutil

import jax
import numpy as np
import pytest

from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import models
from testing_utils import write_official_cifar


class _Call:
  """Pickles as a call of ``fn(*args)``: what a trojan pickle runs when it is loaded."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


def _cifar_dir(root: pathlib.Path) -> pathlib.Path:
  return root / 'cifar10' / 'cifar-10-batches-py'


def _trojans(marker: pathlib.Path) -> dict[str, _Call]:
  """Payloads that would each create ``marker`` if the loader ran them."""
  return {
      'os.system': _Call(os.system, f'touch {shlex.quote(str(marker))}'),
      'builtins.exec': _Call(builtins.exec, f'open({str(marker)!r}, "w").close()'),
      # Same module as the arrays' own globals: the allow-list is by exact name.
      'numpy.save': _Call(np.save, str(marker), np.zeros(1)),
  }


@pytest.mark.parametrize('protocol', [0, 2, 5])
@pytest.mark.parametrize('payload', ['os.system', 'builtins.exec', 'numpy.save'])
@pytest.mark.parametrize('where', ['top level', "inside b'data'"])
def test_crafted_cifar_batch_is_refused_and_runs_nothing(tmp_path, protocol, payload, where):
  write_official_cifar(tmp_path, np.random.default_rng(0), per_batch=2)
  marker = tmp_path / 'pwned.npy'  # np.save keeps a .npy name as it is.
  trojan = _trojans(marker)[payload]
  batch = trojan if where == 'top level' else {b'data': trojan, b'labels': [0, 1]}
  path = _cifar_dir(tmp_path) / 'test_batch'
  path.write_bytes(pickle.dumps(batch, protocol=protocol))
  with pytest.raises(ValueError, match='refused to import') as e:
    data.load('cifar10', 'test', data_dir=tmp_path)
  assert str(path) in str(e.value)
  assert not marker.exists()


@pytest.mark.parametrize('split,name', [('test', 'test_batch'), ('train', 'data_batch_4')])
def test_crafted_cifar_batch_is_refused_for_the_catdog_subset_too(tmp_path, split, name):
  # cifar10_catdog reads CIFAR-10's files, through the same unpickler.
  write_official_cifar(tmp_path, np.random.default_rng(0), per_batch=2)
  marker = tmp_path / 'pwned.npy'  # np.save keeps a .npy name as it is.
  path = _cifar_dir(tmp_path) / name
  path.write_bytes(pickle.dumps(_trojans(marker)['os.system'], protocol=2))
  with pytest.raises(ValueError, match='refused to import') as e:
    data.load('cifar10_catdog', split, data_dir=tmp_path)
  assert str(path) in str(e.value)
  assert not marker.exists()


def test_crafted_batches_meta_is_refused_and_runs_nothing(tmp_path):
  write_official_cifar(tmp_path, np.random.default_rng(0), per_batch=2)
  marker = tmp_path / 'pwned.npy'  # np.save keeps a .npy name as it is.
  path = _cifar_dir(tmp_path) / 'batches.meta'
  path.write_bytes(pickle.dumps({b'label_names': _trojans(marker)['os.system']}, protocol=2))
  with pytest.raises(ValueError, match='refused to import') as e:
    data.load('cifar10', 'test', data_dir=tmp_path)
  assert str(path) in str(e.value)
  assert not marker.exists()


def test_codecs_encode_is_only_the_latin1_encoder(tmp_path):
  # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, 'latin1'); any other codec
  # (here one that would run a codec lookup) is refused.
  write_official_cifar(tmp_path, np.random.default_rng(0), per_batch=2)
  path = _cifar_dir(tmp_path) / 'test_batch'
  batch = pickle.loads(path.read_bytes())
  batch[b'batch_label'] = _Call(_codecs.encode, 'payload', 'rot13')
  path.write_bytes(pickle.dumps(batch, protocol=2))
  with pytest.raises(ValueError, match=r"only 'latin1'") as e:
    data.load('cifar10', 'test', data_dir=tmp_path)
  assert str(path) in str(e.value)


def test_real_cifar_files_reference_only_numpy_array_rebuilders(data_dir):
  # What the official files import, read with pickletools (nothing is unpickled).
  found = set()
  for name in ('test_batch', 'data_batch_1', 'batches.meta'):
    raw = (_cifar_dir(pathlib.Path(data_dir)) / name).read_bytes()
    found |= {tuple(arg.split(' ')) for op, arg, _ in pickletools.genops(raw)
              if op.name == 'GLOBAL'}
    assert not any(op.name in ('STACK_GLOBAL', 'INST', 'OBJ', 'EXT1', 'EXT2', 'EXT4')
                   for op, _, _ in pickletools.genops(raw))
  assert found == {('numpy', 'ndarray'), ('numpy', 'dtype'),
                   ('numpy.core.multiarray', '_reconstruct')}
  assert data.load('cifar10', 'test', data_dir=data_dir).images.shape == (10_000, 32, 32, 3)


@pytest.mark.parametrize('keep', [0, 2, 0.5, -1])
def test_truncated_cifar_batch_names_the_file(tmp_path, keep):
  write_official_cifar(tmp_path, np.random.default_rng(0), per_batch=3)
  path = _cifar_dir(tmp_path) / 'data_batch_3'
  raw = path.read_bytes()
  path.write_bytes(raw[:int(len(raw) * keep) if isinstance(keep, float) else keep])
  with pytest.raises(ValueError) as e:
    data.load('cifar10', 'train', data_dir=tmp_path)
  assert str(path) in str(e.value)


@pytest.mark.parametrize('batch,match', [
    ({b'data': np.zeros((2, 3072)), b'labels': [0, 1]}, 'uint8'),
    ({b'data': np.zeros((2, 3000), np.uint8), b'labels': [0, 1]}, r'3072'),
    ({b'data': np.zeros((2, 3072), np.uint8), b'labels': [0]}, 'list of 2 ints'),
    ({b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, 10]}, r'\[0, 10\)'),
    ({b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, '1']}, 'list of 2 ints'),
    ({b'labels': [0, 1]}, "b'data'"),
    ([1, 2, 3], 'dict'),
])
def test_cifar_batch_of_the_wrong_structure_names_the_file(tmp_path, batch, match):
  write_official_cifar(tmp_path, np.random.default_rng(0), per_batch=2)
  path = _cifar_dir(tmp_path) / 'test_batch'
  path.write_bytes(pickle.dumps(batch, protocol=2))
  with pytest.raises(ValueError, match=match) as e:
    data.load('cifar10', 'test', data_dir=tmp_path)
  assert str(path) in str(e.value)


def _write_mnist_test(root: pathlib.Path, images: np.ndarray, labels: np.ndarray
                      ) -> tuple[pathlib.Path, pathlib.Path]:
  d = root / 'mnist'
  d.mkdir(parents=True, exist_ok=True)
  paths = d / 't10k-images-idx3-ubyte.gz', d / 't10k-labels-idx1-ubyte.gz'
  for path, arr, magic in zip(paths, (images, labels), (2051, 2049)):
    header = magic.to_bytes(4, 'big') + b''.join(int(s).to_bytes(4, 'big') for s in arr.shape)
    with gzip.open(path, 'wb') as f:
      f.write(header + arr.astype(np.uint8).tobytes())
  return paths


@pytest.mark.parametrize('which', [0, 1])
@pytest.mark.parametrize('damage', ['gzip cut', 'not gzip', 'header cut', 'payload cut'])
def test_broken_mnist_file_names_the_file(tmp_path, which, damage):
  rng = np.random.default_rng(0)
  paths = _write_mnist_test(tmp_path, rng.integers(0, 256, (3, 28, 28)), np.array([1, 2, 3]))
  path = paths[which]
  raw = path.read_bytes()
  if damage == 'gzip cut':
    path.write_bytes(raw[:len(raw) // 2])
  elif damage == 'not gzip':
    path.write_bytes(b'this is not gzip data' * 3)
  else:
    with gzip.open(path, 'rb') as f:
      content = f.read()
    with gzip.open(path, 'wb') as f:
      f.write(content[:6] if damage == 'header cut' else content[:-5])
  with pytest.raises(ValueError) as e:
    data.load('mnist', 'test', data_dir=tmp_path)
  assert str(path) in str(e.value)


@pytest.mark.parametrize('images,labels,which,match', [
    (np.zeros((2, 28, 29)), np.array([1, 2]), 0, '28x28'),
    (np.zeros((2, 28, 28)), np.array([1, 12]), 1, '0-9'),
])
def test_mnist_file_of_the_wrong_content_names_the_file(tmp_path, images, labels, which, match):
  paths = _write_mnist_test(tmp_path, images, labels)
  with pytest.raises(ValueError, match=match) as e:
    data.load('mnist', 'test', data_dir=tmp_path)
  assert str(paths[which]) in str(e.value)


@pytest.fixture(scope='module')
def saved_checkpoint(tmp_path_factory) -> pathlib.Path:
  """A random-weight cnn_mnist checkpoint (step 3), saved once; tests corrupt copies."""
  _, variables = models.init('cnn_mnist', jax.random.key(0))
  return checkpoints.save(tmp_path_factory.mktemp('saved') / 'ckpt', model_name='cnn_mnist',
                          variables=variables, metadata={'dataset': 'mnist'}, step=3)


@pytest.fixture
def ckpt(saved_checkpoint, tmp_path) -> pathlib.Path:
  """A fresh copy of ``saved_checkpoint`` this test may damage."""
  return pathlib.Path(shutil.copytree(saved_checkpoint, tmp_path / 'ckpt'))


def _weight_files(path: pathlib.Path) -> list[pathlib.Path]:
  return sorted(f for f in (path / 'orbax').rglob('*') if f.is_file())


def test_intact_copy_loads_the_saved_weights(saved_checkpoint, ckpt):
  _, want, _ = checkpoints.load(saved_checkpoint)
  _, got, _ = checkpoints.load(ckpt)
  jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize('damage', ['truncate', 'flip a byte', 'delete'])
def test_every_damaged_weight_file_is_named(saved_checkpoint, tmp_path, damage):
  # Every file of the orbax step, each in a fresh copy: none may give a model.
  files = [f.relative_to(saved_checkpoint) for f in _weight_files(saved_checkpoint)]
  assert len(files) >= 10
  for i, rel in enumerate(files):
    copy = pathlib.Path(shutil.copytree(saved_checkpoint, tmp_path / str(i)))
    target = copy / rel
    raw = target.read_bytes()
    if damage == 'truncate':
      target.write_bytes(raw[:len(raw) // 2])
    elif damage == 'flip a byte':
      target.write_bytes(raw[:len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 0xFF])
                         + raw[len(raw) // 2 + 1:])
    else:
      target.unlink()
    with pytest.raises(checkpoints.CheckpointError,
                       match='missing' if damage == 'delete' else 'SHA-256') as e:
      checkpoints.load(copy)
    assert str(target) in str(e.value), rel


def test_deleted_orbax_directory_is_named(ckpt):
  shutil.rmtree(ckpt / 'orbax')
  with pytest.raises(checkpoints.CheckpointError, match='orbax/3 missing') as e:
    checkpoints.load(ckpt)
  assert str(ckpt) in str(e.value)


@pytest.mark.parametrize('other', sorted(set(models.MODELS) - {'cnn_mnist'}))
def test_metadata_naming_another_architecture_is_refused(ckpt, other):
  meta_file = ckpt / 'metadata.json'
  meta = json.loads(meta_file.read_text())
  meta_file.write_text(json.dumps({**meta, 'model': other}))
  with pytest.raises(checkpoints.CheckpointError, match='another architecture') as e:
    checkpoints.load(ckpt)
  assert str(meta_file) in str(e.value) and repr(other) in str(e.value)


@pytest.mark.parametrize('content,match', [
    (b'{"model": "cnn_mnist", "step": 3', 'not valid JSON'),
    (b'\xff\xfe\x00garbage', 'not valid JSON'),
    (b'', 'not valid JSON'),
    (b'[1, 2]', 'JSON object'),
    (b'{"model": "resnet_imagenet", "step": 3}', "'resnet_imagenet'"),
])
def test_broken_metadata_is_named(ckpt, content, match):
  meta_file = ckpt / 'metadata.json'
  meta_file.write_bytes(content)
  with pytest.raises(checkpoints.CheckpointError, match=match) as e:
    checkpoints.load(ckpt)
  assert str(meta_file) in str(e.value)


@pytest.mark.parametrize('change,match', [
    ({'step': 'three'}, 'step must be an int'),
    ({'step': 2}, 'orbax/2 missing'),
    ({'weights_sha256': {}}, 'records no weights_sha256'),
    ({'weights_sha256': {'../../metadata.json': '0' * 64}}, 'outside'),
])
def test_inconsistent_metadata_is_named(ckpt, change, match):
  meta_file = ckpt / 'metadata.json'
  meta = json.loads(meta_file.read_text())
  meta_file.write_text(json.dumps({**meta, **change}))
  with pytest.raises(checkpoints.CheckpointError, match=match) as e:
    checkpoints.load(ckpt)
  assert str(ckpt) in str(e.value)


def test_checksums_of_another_checkpoint_are_a_mismatch(saved_checkpoint, ckpt, tmp_path):
  # Weights swapped for another checkpoint's (same architecture, other values).
  _, variables = models.init('cnn_mnist', jax.random.key(1))
  other = checkpoints.save(tmp_path / 'other', model_name='cnn_mnist', variables=variables,
                           metadata={}, step=3)
  shutil.rmtree(ckpt / 'orbax')
  shutil.copytree(other / 'orbax', ckpt / 'orbax')
  with pytest.raises(checkpoints.CheckpointError, match='SHA-256|missing'):
    checkpoints.load(ckpt)
