"""advsal_jax.studies.runner: batching, padding, host hooks, resume and the config guard."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import parallel
from advsal_jax.studies import runner
from advsal_jax.studies import store

_DATA = np.arange(70, dtype=np.float32).reshape(7, 10) / 70


def _affine(replicated, batch):
  """A per-example step: y = w * x + index, plus the host hook's array."""
  return {'y': replicated['w'] * batch['x'] + batch['index'][:, None].astype(jnp.float32),
          'twice': 2 * batch['extra']}


def _stage(batch_size, calls=None, fail_after=None):
  seen = []

  def inputs(ids):
    if fail_after is not None and len(seen) >= fail_after:
      raise KeyboardInterrupt('killed')
    seen.append(ids.tolist())
    if calls is not None:
      calls.append(ids.tolist())
    return {'x': _DATA[ids], 'label': ids * 10}

  def prepare(batch):
    return {'extra': batch['x'][:, :2] + 1}

  step = runner.compile_step(_affine, parallel.data_mesh())
  return runner.Stage('affine', step, inputs, batch_size, prepare=prepare, record=('label',))


def _expected(work, w):
  x = _DATA[work]
  return {'y': w * x + np.asarray(work)[:, None], 'twice': 2 * (x[:, :2] + 1),
          'label': np.asarray(work) * 10, 'index': np.asarray(work)}


def test_every_example_once_padding_dropped_and_host_arrays_recorded(tmp_path):
  calls = []
  work = [6, 0, 3, 5, 1]  # any order of ids; 5 = 2 + 2 + 1 (the last batch is padded)
  runner.open_output_dir(tmp_path, {'a': 1}, resume=False)
  runner.run_stage(_stage(2, calls), output_dir=tmp_path, work=work,
                   replicated={'w': np.float32(3)})
  assert calls == [[6, 0], [3, 5], [1, 1]]  # padding repeats the batch's last example
  got = store.load_shards(tmp_path, 'affine')
  for k, v in _expected(work, 3.0).items():
    np.testing.assert_allclose(got[k], v, rtol=1e-6, err_msg=k)
  assert got['seconds'].shape == (3,)


def test_an_interrupted_stage_resumes_where_it_stopped(tmp_path):
  work = list(range(7))
  runner.open_output_dir(tmp_path, {'a': 1}, resume=False)
  with pytest.raises(KeyboardInterrupt):
    runner.run_stage(_stage(2, fail_after=2), output_dir=tmp_path, work=work,
                     replicated={'w': np.float32(2)})
  assert len(store.shard_files(tmp_path, 'affine')) == 2
  calls = []
  runner.open_output_dir(tmp_path, {'a': 1}, resume=True)
  runner.run_stage(_stage(2, calls), output_dir=tmp_path, work=work,
                   replicated={'w': np.float32(2)})
  assert calls == [[4, 5], [6, 6]]  # only the missing batches
  got = store.load_shards(tmp_path, 'affine')
  np.testing.assert_allclose(got['y'], _expected(work, 2.0)['y'], rtol=1e-6)


def test_the_config_guard_names_every_changed_setting(tmp_path):
  runner.open_output_dir(tmp_path, {'eps': [0.1, 0.2], 'n': 4, 'm': 'a'}, resume=False)
  with pytest.raises(ValueError, match='resume'):
    runner.open_output_dir(tmp_path, {'eps': [0.1, 0.2], 'n': 4, 'm': 'a'}, resume=False)
  runner.open_output_dir(tmp_path, {'eps': (0.1, 0.2), 'n': 4, 'm': 'a'}, resume=True)
  with pytest.raises(ValueError, match=r"differs.*eps \(stored \[0\.1, 0\.2\], now \[0\.3\]\)"
                     r".*n \(stored 4, now 5\)") as err:
    runner.open_output_dir(tmp_path, {'eps': [0.3], 'n': 5, 'm': 'a'}, resume=True)
  assert "'m'" not in str(err.value) and ' m (' not in str(err.value)
  assert store.read_json(tmp_path / 'config.json')['n'] == 4  # left as it was


def test_a_later_stage_reads_an_earlier_stage_as_its_dataset(tmp_path):
  runner.open_output_dir(tmp_path, {}, resume=False)
  work = np.arange(5)
  runner.run_stage(_stage(3), output_dir=tmp_path, work=work, replicated={'w': np.float32(1)})
  first = store.load_shards(tmp_path, 'affine')
  row = {int(i): r for r, i in enumerate(first['index'])}

  def inputs(ids):
    return {'y': first['y'][[row[int(i)] for i in ids]]}

  step = runner.compile_step(lambda rep, b: {'s': b['y'].sum(-1) * rep}, parallel.data_mesh())
  runner.run_stage(runner.Stage('sums', step, inputs, 2), output_dir=tmp_path, work=work,
                   replicated=np.float32(0.5))
  np.testing.assert_allclose(store.load_shards(tmp_path, 'sums')['s'],
                             0.5 * _expected(work, 1.0)['y'].sum(-1), rtol=1e-5)


def test_batch_starts_rejects_a_bad_batch_size():
  assert runner.batch_starts(5, 2) == [0, 2, 4]
  with pytest.raises(ValueError, match='batch_size'):
    runner.batch_starts(5, 0)


_SCRIPT = textwrap.dedent('''
    import sys, time
    import numpy as np
    from advsal_jax import parallel
    from advsal_jax.studies import runner

    out, resume = sys.argv[1], sys.argv[2] == 'resume'
    data = np.arange(60, dtype=np.float32).reshape(12, 5)
    runner.open_output_dir(out, {'toy': 1}, resume=resume)
    def slow(batch):
      time.sleep(0.4)
      return {}
    step = runner.compile_step(lambda w, b: {'y': b['x'] * w}, parallel.data_mesh())
    runner.run_stage(runner.Stage('first', step, lambda ids: {'x': data[ids]}, 2, prepare=slow),
                     output_dir=out, work=np.arange(12), replicated=np.float32(2))
    step2 = runner.compile_step(lambda w, b: {'z': b['x'].sum(-1) + w}, parallel.data_mesh())
    runner.run_stage(runner.Stage('second', step2, lambda ids: {'x': data[ids]}, 5,
                                  prepare=slow),
                     output_dir=out, work=np.arange(12), replicated=np.float32(1))
''')


@pytest.mark.slow
def test_a_killed_multi_stage_run_resumes_to_the_same_results(tmp_path):
  script = tmp_path / 'toy.py'
  script.write_text(_SCRIPT)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  subprocess.run([sys.executable, script, tmp_path / 'whole', 'new'], check=True, env=env,
                 timeout=300)
  killed = tmp_path / 'killed'
  proc = subprocess.Popen([sys.executable, script, killed, 'new'], env=env)
  deadline = time.time() + 240
  while len(store.shard_files(killed, 'first')) < 2 and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert 2 <= len(store.shard_files(killed, 'first')) < 6
  assert not store.shard_files(killed, 'second')
  subprocess.run([sys.executable, script, killed, 'resume'], check=True, env=env, timeout=300)
  for stage in ('first', 'second'):
    a, b = (store.load_shards(d, stage) for d in (tmp_path / 'whole', killed))
    assert a.keys() == b.keys()
    for k in a:
      if k != 'seconds':
        np.testing.assert_array_equal(a[k], b[k], err_msg=f'{stage}/{k}')
  assert not list(pathlib.Path(killed).rglob('*.tmp'))
