"""Tests of advsal_jax.checkpoints and of the committed, trained checkpoints."""

import json
import shutil

import jax
import numpy as np
import pytest

from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import models
from advsal_jax import training

# Targets of the project on the full test splits.
TARGET_ACCURACY = {'alexnet_cifar': 0.85, 'mobilenet_v1_cifar': 0.80,
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


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
  _, _, path = _saved(tmp_path)
  shutil.rmtree(path / 'orbax' / '3' / 'default')
  with pytest.raises(checkpoints.CheckpointError, match='truncated or does not match'):
    checkpoints.load(path)


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
  _, _, path = _saved(tmp_path)
  meta = json.loads((path / 'metadata.json').read_text())
  meta['model'] = 'alexnet_cifar'
  (path / 'metadata.json').write_text(json.dumps(meta))
  with pytest.raises(checkpoints.CheckpointError, match="'alexnet_cifar'"):
    checkpoints.load(path)


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
