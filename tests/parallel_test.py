"""Data parallelism (advsal_jax.parallel): sharded runs equal single-device runs.

XLA fixes the number of CPU devices when JAX starts, so the 4-device side of every comparison
runs in a subprocess (this file run as a script, with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``) that saves its results to an npz; the
test computes the single-device reference in-process and compares. The multi-host path
(``jax.distributed``, per-process shards, gathering, only process 0 writing) runs as two
processes of two CPU devices each talking through a local coordinator.
"""

import functools
import json
import os
import pathlib
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks
from advsal_jax import checkpoints
from advsal_jax import models
from advsal_jax import parallel
from advsal_jax import saliency
from advsal_jax.studies import compare_saliency as study
from advsal_jax.studies import store
from testing_utils import random_study_checkpoint

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_B, _K = 8, 3


class _Tiny(nn.Module):
  """Conv, ReLU, dense: a few hundred parameters."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(_K)(h.reshape(h.shape[0], -1))


_MODEL = _Tiny()


def _tiny_inputs(batch=_B):
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(batch, 6, 6, 3)).astype(np.float32)
  labels = rng.integers(0, _K, batch).astype(np.int32)
  params = _MODEL.init(jax.random.key(0), jnp.asarray(x[:1]))
  return params, x, labels


# name -> fn(params, x, labels) -> f32[B,...]; randomness from fixed (unbatched) keys, which
# XLA's partitioner must split exactly as on one device.
_GSPMD_CASES = {
    'gradient': jax.jit(functools.partial(saliency.gradient, _MODEL.apply)),
    'smoothgrad': jax.jit(lambda p, x, y: saliency.smoothgrad(
        _MODEL.apply, p, x, y, key=jax.random.key(1), num_samples=4, batch_size=2)),
    'integrated_gradients': jax.jit(functools.partial(
        saliency.integrated_gradients, _MODEL.apply, num_steps=8)),
    'pgd': jax.jit(lambda p, x, y: attacks.pgd(
        _MODEL.apply, p, x, y, key=jax.random.key(2), eps=0.1, step_size=0.03, num_steps=3)),
    'bim': jax.jit(functools.partial(attacks.bim, _MODEL.apply, eps=0.1, step_size=0.03,
                                     num_steps=3)),
}


def _per_example_smoothgrad(p, x, y, keys):
  return saliency.smoothgrad(_MODEL.apply, p, x, y, key=keys, num_samples=4)


def _sg_keys(batch):
  return jax.random.split(jax.random.key(3), batch)


def _methods_worker(out_path):
  """4 devices: every case sharded; results and their shardings to ``out_path``."""
  mesh = parallel.data_mesh()
  params, x, labels = _tiny_inputs()
  p = parallel.replicate(params, mesh)
  xs, ys = parallel.shard_batch((x, labels), mesh)
  res, devices, sharded = {}, {}, {}
  for name, fn in _GSPMD_CASES.items():
    res[name] = fn(p, xs, ys)
  dp = jax.jit(parallel.data_parallel(_per_example_smoothgrad, mesh,
                                      batched=(False, True, True, True)))
  res['data_parallel_smoothgrad'] = dp(p, xs, ys, parallel.shard_batch(_sg_keys(_B), mesh))
  # 6 examples on 4 devices: padded to 8 by repetition, then stripped.
  size = parallel.padded_size(6, mesh)
  x6, y6 = parallel.shard_batch(parallel.pad_batch((x[:6], labels[:6]), size), mesh)
  res['padded_gradient'] = _GSPMD_CASES['gradient'](p, x6, y6)
  for name, val in res.items():
    devices[name] = len(val.sharding.device_set)
    sharded[name] = not val.sharding.is_fully_replicated
  arrays = parallel.to_host(res)
  arrays['padded_gradient'] = arrays['padded_gradient'][:6]
  np.savez(out_path, **arrays, padded_size=size,
           meta=json.dumps({'devices': devices, 'sharded': sharded,
                            'device_count': jax.device_count()}))


def _study_worker(out_path, ckpt, data_dir, run_dir):
  """4 devices: study 000's run, plus the sharding and collectives of its step."""
  cfg = study.Config(**json.loads(os.environ['PARALLEL_TEST_CFG']))
  study.run(cfg, output_dir=run_dir, data_dir=data_dir)
  # The compiled step on a cheaper configuration: outputs split, no cross-device traffic.
  small = study.Config(checkpoint=ckpt, num_examples=4, batch_size=4, untargeted_eps=(0.2,),
                       methods=('smoothgrad',), metrics=('spearman',),
                       method_kwargs={'smoothgrad': {'num_samples': 2}})
  model, variables, _ = checkpoints.load(ckpt)
  mesh = parallel.data_mesh()
  step = study.make_step(model.apply, mesh, cfg=small, num_classes=10,
                         layer=models.get_spec('alexnet_cifar').last_conv)
  eps = np.full((1, 3), 0.01, np.float32)
  args = (parallel.replicate((variables, eps, eps[0]), mesh),
          parallel.shard_batch({'x': np.full((4, 32, 32, 3), 0.5, np.float32),
                                'index': np.arange(4, dtype=np.int32)}, mesh))
  hlo = step.lower(*args).compile().as_text()
  out = step(*args)
  collectives = [op for op in ('all-gather', 'all-reduce', 'all-to-all', 'collective-permute')
                 if op in hlo]
  meta = {'device_count': jax.device_count(), 'collectives': collectives,
          'specs': {k: list(v.sharding.spec) for k, v in out.items()},
          'devices': {k: len(v.sharding.device_set) for k, v in out.items()}}
  np.savez(out_path, meta=json.dumps(meta))


def _run_subprocess(args, *, devices=4, env=None, timeout=900):
  env = {**os.environ, **(env or {}),
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
         'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, __file__, *map(str, args)], env=env, cwd=_ROOT,
                        capture_output=True, text=True, timeout=timeout, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def test_data_mesh_spans_every_device():
  mesh = parallel.data_mesh()
  assert mesh.axis_names == (parallel.DATA_AXIS,)
  assert parallel.num_shards(mesh) == jax.device_count()
  assert parallel.num_shards(parallel.data_mesh(jax.devices()[:1])) == 1
  with pytest.raises(ValueError, match='devices'):
    parallel.data_mesh([])


def test_padding_rounds_up_to_the_device_count_by_repeating_the_last_row():
  four = jax.sharding.AbstractMesh((4,), (parallel.DATA_AXIS,))
  assert [parallel.padded_size(b, four) for b in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 12]
  x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
  px, py = parallel.pad_batch((x, y), 8)
  np.testing.assert_array_equal(px, np.concatenate([x, x[[4, 4, 4]]]))
  np.testing.assert_array_equal(py, [0, 1, 2, 3, 4, 4, 4, 4])
  with pytest.raises(ValueError, match='leading batch axis'):
    parallel.pad_batch((x, y[:4]), 8)
  with pytest.raises(ValueError, match='size'):
    parallel.pad_batch(x, 4)
  with pytest.raises(ValueError, match='batch'):
    parallel.padded_size(0, four)


def test_shard_batch_and_replicate_on_one_device_keep_values():
  mesh = parallel.data_mesh(jax.devices()[:1])
  params, x, labels = _tiny_inputs()
  xs, ys = parallel.shard_batch((x, labels), mesh)
  assert xs.sharding == parallel.batch_sharding(mesh)
  np.testing.assert_array_equal(parallel.to_host(xs), x)
  p = parallel.replicate(params, mesh)
  jax.tree.map(np.testing.assert_array_equal, parallel.to_host(p), jax.device_get(params))
  with pytest.raises(ValueError, match='scalar'):
    parallel.shard_batch({'x': x, 'eps': np.float32(0.1)}, mesh)


def test_distributed_settings_are_checked_before_initialising():
  assert parallel.maybe_initialize_distributed(False) is False
  with pytest.raises(ValueError, match='coordinator_address.*--distributed'):
    parallel.maybe_initialize_distributed(False, coordinator_address='localhost:1234')
  with pytest.raises(ValueError, match='process_id'):
    parallel.maybe_initialize_distributed(True, num_processes=2, process_id=2)
  with pytest.raises(ValueError, match='num_processes'):
    parallel.maybe_initialize_distributed(True, num_processes=0)
  assert not jax.distributed.is_initialized()


@pytest.mark.slow
def test_saliency_and_attacks_on_4_devices_equal_one_device(tmp_path):
  _run_subprocess(['methods', tmp_path / 'four.npz'])
  four = dict(np.load(tmp_path / 'four.npz'))
  meta = json.loads(str(four.pop('meta')))
  assert meta['device_count'] == 4 and int(four.pop('padded_size')) == 8
  assert all(n == 4 for n in meta['devices'].values()), meta
  # SmoothGrad's [samples, B] -> [samples * B] reshape makes XLA's partitioner gather the batch
  # (correct, but replicated work); data_parallel keeps it split.
  assert all(v for k, v in meta['sharded'].items() if k != 'smoothgrad'), meta
  params, x, labels = _tiny_inputs()
  ref = {name: fn(params, x, labels) for name, fn in _GSPMD_CASES.items()}
  ref['data_parallel_smoothgrad'] = jax.jit(_per_example_smoothgrad)(params, x, labels,
                                                                     _sg_keys(_B))
  ref['padded_gradient'] = _GSPMD_CASES['gradient'](params, x[:6], labels[:6])
  assert set(four) == set(ref)
  for name, val in ref.items():
    assert np.abs(np.asarray(val)).max() > 0, name
    np.testing.assert_allclose(four[name], val, rtol=0, atol=1e-6, err_msg=name)


@pytest.fixture(scope='module')
def study_setup(tmp_path_factory):
  """A random-weight alexnet_cifar checkpoint and a tiny official-format CIFAR-10 test split."""
  return random_study_checkpoint(tmp_path_factory.mktemp('parallel_study'))


def _assert_same_results(a_dir, b_dir):
  """Same predictions, attacks and targets; metrics equal up to float rounding.

  XLA's CPU kernels may round differently for another per-device batch size (1 image per
  device here against 2 on one device): up to 4e-6 on a Spearman correlation.
  """
  a, b = (study.load_results(d) for d in (a_dir, b_dir))
  a.pop('seconds'), b.pop('seconds')
  assert set(a) == set(b)
  for key in a:
    assert a[key].shape == b[key].shape, key
    if a[key].dtype.kind == 'f':
      np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-5, err_msg=key)
    else:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert (json.loads((a_dir / 'config.json').read_text()) ==
          json.loads((b_dir / 'config.json').read_text()))


@pytest.mark.slow
def test_study_000_on_4_devices_equals_one_device(study_setup, tmp_path):
  root, ckpt, data_dir = study_setup
  # The tiny settings of studies_compare_saliency_test; batch 2 pads to 4 on 4 devices.
  cfg = dict(checkpoint=ckpt, num_examples=3, batch_size=2, untargeted_eps=(0.2, 1.0),
             targeted_eps=0.4, method_kwargs={'smoothgrad': {'num_samples': 2}})
  _run_subprocess(['study', tmp_path / 'four.npz', ckpt, data_dir, tmp_path / 'four'],
                  env={'PARALLEL_TEST_CFG': json.dumps(cfg)})
  meta = json.loads(str(np.load(tmp_path / 'four.npz')['meta']))
  assert meta['device_count'] == 4
  assert meta['collectives'] == [], meta  # each device works on its own images only
  assert all(n == 4 for n in meta['devices'].values()), meta
  assert meta['specs']['real_pred'] == ['data'], meta
  assert meta['specs']['smoothgrad/spearman'] == ['data'], meta  # [B, V], batch first
  study.run(study.Config(**cfg), output_dir=tmp_path / 'one',
                 data_dir=data_dir)
  _assert_same_results(tmp_path / 'one', tmp_path / 'four')
  assert len(store.shard_files(tmp_path / 'four', study.STAGE)) == 2


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_study_000_on_two_processes_equals_one_device(study_setup, tmp_path):
  """Two processes of two CPU devices (jax.distributed over a local coordinator)."""
  _, ckpt, data_dir = study_setup
  cfg = dict(checkpoint=ckpt, num_examples=3, batch_size=3, untargeted_eps=(0.2, 1.0),
             methods=('grad_cam',), metrics=('spearman',))
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'JAX_PLATFORMS': 'cpu', 'PARALLEL_TEST_CFG': json.dumps(cfg),
         'PARALLEL_TEST_DATA_DIR': data_dir}
  address = f'localhost:{_free_port()}'
  procs = [subprocess.Popen([sys.executable, __file__, 'multihost', address, str(i),
                             str(tmp_path)], env=env, cwd=_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [p.communicate(timeout=900)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  for i in range(2):
    meta = json.loads((tmp_path / f'meta{i}.json').read_text())
    assert meta == {'process_count': 2, 'device_count': 4, 'local_device_count': 2,
                    'process_local_rows': [[0, 1, 2, 3], [4, 5, 6, 7]][i]}, meta
  # Each process had its own output directory: only process 0 wrote.
  assert not (tmp_path / 'run1').exists()
  study.run(study.Config(**cfg), output_dir=tmp_path / 'one',
                 data_dir=data_dir)
  _assert_same_results(tmp_path / 'one', tmp_path / 'run0')


@pytest.mark.slow
def test_the_binary_on_two_processes_writes_once_and_equals_one_device(study_setup, tmp_path):
  """experiments/compare_saliency.py --distributed: flags, checkpoint loading, one report."""
  _, ckpt, data_dir = study_setup
  address = f'localhost:{_free_port()}'
  flags = [f'--checkpoint={ckpt}', '--num_examples=3', '--batch_size=3',
           '--untargeted_eps=0.2,1.0', '--methods=grad_cam', '--metrics=spearman',
           f'--output_dir={tmp_path / "run"}', f'--data_dir={data_dir}', '--distributed',
           f'--coordinator_address={address}', '--num_processes=2']
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'JAX_PLATFORMS': 'cpu'}
  procs = [subprocess.Popen([sys.executable, 'experiments/compare_saliency.py', *flags,
                             f'--process_id={i}'], env=env, cwd=_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [p.communicate(timeout=900)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  assert 'process 1 of 2; 4 devices (2 local)' in logs[1], logs[1][-4000:]
  assert 'Report written to' in logs[0] and 'Report written to' not in logs[1]
  assert (tmp_path / 'run' / 'report.md').is_file()
  cfg = dict(checkpoint=ckpt, num_examples=3, batch_size=3, untargeted_eps=(0.2, 1.0),
             methods=('grad_cam',), metrics=('spearman',))
  study.run(study.Config(**cfg), output_dir=tmp_path / 'one',
                 data_dir=data_dir)
  _assert_same_results(tmp_path / 'one', tmp_path / 'run')


def _multihost_worker(address, process_id, out_dir):
  """Process ``process_id`` of 2: process-local batches, then study 000 into its own dir."""
  process_id, out_dir = int(process_id), pathlib.Path(out_dir)
  parallel.maybe_initialize_distributed(True, coordinator_address=address, num_processes=2,
                                        process_id=process_id)
  mesh = parallel.data_mesh()
  rows = np.arange(4) + 4 * process_id  # this process's half of a global batch of 8
  gathered = parallel.to_host(parallel.shard_batch(rows, mesh, process_local=True))
  np.testing.assert_array_equal(gathered, np.arange(8))
  cfg = study.Config(**json.loads(os.environ['PARALLEL_TEST_CFG']))
  study.run(cfg, output_dir=out_dir / f'run{process_id}',
                 data_dir=os.environ['PARALLEL_TEST_DATA_DIR'])
  (out_dir / f'meta{process_id}.json').write_text(json.dumps({
      'process_count': jax.process_count(), 'device_count': jax.device_count(),
      'local_device_count': jax.local_device_count(),
      'process_local_rows': rows.tolist()}))


if __name__ == '__main__':
  mode, *rest = sys.argv[1:]
  {'methods': _methods_worker, 'study': _study_worker,
   'multihost': _multihost_worker}[mode](*rest)
