"""Tests of advsal_jax.checkpoints and of the committed, trained checkpoints."""

import hashlib
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import models
from advsal_jax import saliency
from advsal_jax import training

# Targets of the project on the full test splits.
TARGET_ACCURACY = {'alexnet_cifar': 0.85, 'alexnet_catdog': 0.86, 'mobilenet_v1_cifar': 0.80,
                   'mobilenet_v2_cifar': 0.80, 'cnn_mnist': 0.992}


def _saved(tmp_path, name='cnn_mnist'):
  model, variables = models.init(name, jax.random.key(7))
  path = checkpoints.save(tmp_path / name, model_name=name, variables=variables,
                          metadata={'test_accuracy': 0.1}, step=3)
  return model, variables, path


def test_save_load_round_trip_gives_identical_logits(tmp_path):
  model, variables, path = _saved(tmp_path, 'alexnet_cifar')
  model2, variables2, meta = checkpoints.load(path)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  np.testing.assert_array_equal(model.apply(variables, x), model2.apply(variables2, x))
  assert meta['model'] == 'alexnet_cifar' and meta['step'] == 3


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='metadata.json missing'):
    checkpoints.load(tmp_path / 'nothing_here')


def test_load_gives_a_masking_model_as_load_masker_does():
  masker, variables, meta = checkpoints.load('masker_cnn_mnist')
  _, want_vars, want_meta = saliency.load_masker('masker_cnn_mnist')
  assert meta == want_meta and meta['kind'] == 'masker'
  x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  target = np.array([3, 7])
  np.testing.assert_array_equal(masker.apply(variables, x, target),
                                masker.apply(want_vars, x, target))


def _independent_sha256(directory, step):
  """SHA-256 of every file under orbax/<step>/, walked with os.walk."""
  out = {}
  for root, _, files in os.walk(directory / 'orbax' / str(step)):
    for f in files:
      path = pathlib.Path(root) / f
      out[path.relative_to(directory).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


def test_save_records_the_sha256_of_every_weight_file(tmp_path):
  _, _, path = _saved(tmp_path)
  meta = json.loads((path / 'metadata.json').read_text())
  want = _independent_sha256(path, 3)
  assert meta['weights_sha256'] == want
  assert any('/d/' in f for f in want) and any(f.endswith('manifest.ocdbt') for f in want)


def test_record_weights_sha256_adds_what_save_would_have(tmp_path):
  _, _, path = _saved(tmp_path)
  meta = json.loads((path / 'metadata.json').read_text())
  saved_sums = meta.pop('weights_sha256')
  (path / 'metadata.json').write_text(json.dumps(meta))
  with pytest.raises(checkpoints.CheckpointError, match='records no weights_sha256'):
    checkpoints.load(path)
  assert checkpoints.record_weights_sha256(path) == saved_sums
  assert json.loads((path / 'metadata.json').read_text()) == {**meta, 'weights_sha256': saved_sums}
  checkpoints.load(path)


def test_save_writes_metadata_atomically(tmp_path, monkeypatch):
  _, variables, path = _saved(tmp_path)
  before = (path / 'metadata.json').read_text()

  def fail(fd):
    raise OSError('disk full')

  # A failure while the new metadata is made durable leaves the old file whole, and no
  # temporary file beside it.
  monkeypatch.setattr(os, 'fsync', fail)
  with pytest.raises(OSError, match='disk full'):
    checkpoints.save(path, model_name='cnn_mnist', variables=variables,
                     metadata={'test_accuracy': 0.2}, step=4)
  assert (path / 'orbax' / '4').is_dir()  # orbax finished: the metadata write failed.
  assert (path / 'metadata.json').read_text() == before
  assert sorted(p.name for p in path.iterdir()) == ['metadata.json', 'orbax']
  # The old metadata never vouches for the new weights (orbax kept only step 4).
  with pytest.raises(checkpoints.CheckpointError, match='orbax/3 missing'):
    checkpoints.load(path)


# Every committed checkpoint, classifiers and any other kind saved with checkpoints.save.
_COMMITTED = sorted(p.name for p in checkpoints.default_dir().iterdir()
                    if (p / 'metadata.json').exists())


def test_every_target_model_has_a_committed_checkpoint():
  assert set(TARGET_ACCURACY) <= set(_COMMITTED)


@pytest.mark.parametrize('name', _COMMITTED)
def test_committed_checkpoint_weights_match_their_sha256(name):
  path = checkpoints.default_dir() / name
  meta = json.loads((path / 'metadata.json').read_text())
  assert meta['weights_sha256'] == _independent_sha256(path, meta['step'])
  assert checkpoints.verify(path) == (path.resolve(), meta)


@pytest.mark.parametrize('name', sorted(TARGET_ACCURACY))
def test_committed_checkpoint_metadata(name):
  path = checkpoints.default_dir() / name
  if not path.exists():
    pytest.fail(f'no committed checkpoint for {name} at {path}')
  meta = json.loads((path / 'metadata.json').read_text())
  for field in ('model', 'dataset', 'test_accuracy', 'command', 'data_sha256', 'date', 'versions',
                'param_count', 'forward_flops_per_image'):
    assert field in meta, field
  assert meta['model'] == name and meta['command'].startswith('python experiments/train.py')


@pytest.mark.parametrize('name', sorted(TARGET_ACCURACY))
def test_committed_checkpoint_reaches_target_on_full_test_split(name, data_dir):
  model, variables, meta = checkpoints.load(name)
  ds = data.load(meta['dataset'], 'test', data_dir=data_dir)
  acc = training.evaluate(model.apply, variables, ds.images, ds.labels)
  assert acc >= TARGET_ACCURACY[name], (name, acc)
  # The metadata reports what the weights really do.
  assert abs(acc - meta['test_accuracy']) < 1e-3


def test_verify_returns_the_metadata_or_names_the_damaged_file(tmp_path):
  _, _, path = _saved(tmp_path)
  directory, meta = checkpoints.verify(path)
  assert directory == path and meta == json.loads((path / 'metadata.json').read_text())
  largest = max((path / 'orbax').rglob('*'), key=lambda f: f.stat().st_size)
  raw = bytearray(largest.read_bytes())
  raw[-1] ^= 1
  largest.write_bytes(bytes(raw))
  with pytest.raises(checkpoints.CheckpointError, match='SHA-256') as e:
    checkpoints.verify(path)
  assert str(largest) in str(e.value)
