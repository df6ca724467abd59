"""advsal_jax.studies.runner: batching, padding, host hooks, resume and the config guard."""

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback

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


def test_overlapped_shards_equal_a_synchronous_loop_written_in_order(tmp_path, monkeypatch):
  work = np.array([6, 0, 3, 5, 1, 2, 4])
  stage = _stage(2)
  replicated = {'w': np.float32(3)}
  written = []
  write_npz = store.write_npz
  monkeypatch.setattr(store, 'write_npz', lambda path, arrays: written.append(path.name)
                      or write_npz(path, arrays))
  runner.run_stage(stage, output_dir=tmp_path, work=work, replicated=replicated)
  assert written == [store.shard_path(tmp_path, 'affine', s).name for s in (0, 2, 4, 6)]
  mesh = parallel.data_mesh()
  for start in (0, 2, 4, 6):  # One batch at a time, nothing in the background.
    n = min(2, len(work) - start)
    ids = work[np.minimum(np.arange(start, start + parallel.padded_size(2, mesh)),
                          start + n - 1)]
    batch = {**stage.inputs(ids), 'index': ids.astype(np.int32)}
    batch.update(stage.prepare(batch))
    want = {k: np.asarray(v)[:n] for k, v in parallel.to_host(stage.step(
        parallel.replicate(replicated, mesh), parallel.shard_batch(batch, mesh))).items()}
    want.update(label=batch['label'][:n], index=work[start:start + n])
    with np.load(store.shard_path(tmp_path, 'affine', start)) as got:
      assert set(got.files) == {*want, 'seconds'}
      for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].tobytes() == v.tobytes(), (start, k)


def test_a_failing_prepare_raises_in_the_caller_after_the_earlier_shards(tmp_path):
  def inputs(ids):
    return {'x': _DATA[ids]}

  def prepare(batch):
    if batch['index'][0] == 4:
      raise ValueError('no segments for image 4')
    return {'extra': batch['x'][:, :2]}

  step = runner.compile_step(_affine, parallel.data_mesh())
  stage = runner.Stage('affine', step, inputs, 2, prepare=prepare)
  with pytest.raises(ValueError, match='no segments for image 4') as err:
    runner.run_stage(stage, output_dir=tmp_path, work=range(7), replicated={'w': np.float32(1)})
  assert 'prepare' in [frame.name for frame in traceback.extract_tb(err.value.__traceback__)]
  assert [p.name for p in store.shard_files(tmp_path, 'affine')] == [
      store.shard_path(tmp_path, 'affine', s).name for s in (0, 2)]


def test_a_lost_shard_is_recomputed_on_resume(tmp_path):
  work = list(range(7))
  runner.run_stage(_stage(2), output_dir=tmp_path, work=work, replicated={'w': np.float32(2)})
  whole = store.load_shards(tmp_path, 'affine')
  store.shard_path(tmp_path, 'affine', 2).unlink()
  calls = []
  runner.run_stage(_stage(2, calls), output_dir=tmp_path, work=work,
                   replicated={'w': np.float32(2)})
  assert calls == [[2, 3]]
  again = store.load_shards(tmp_path, 'affine')
  for k in whole:
    if k != 'seconds':
      np.testing.assert_array_equal(again[k], whole[k], err_msg=k)


def test_the_next_batch_is_prepared_while_the_step_runs(tmp_path, monkeypatch):
  """Batch i + 1's prepare starts before batch i is fetched and ends after it is fetched.

  Each side waits for the other's event, so a loop that prepares and steps in turn would
  see none of them (the waits only bound how long such a loop would hang).
  """
  starts = (0, 2, 4, 6)
  started = [threading.Event() for _ in starts]
  fetched = [threading.Event() for _ in starts]
  prepared_before_fetch, fetched_while_preparing = [], []

  def prepare(batch):
    i = int(batch['index'][0]) // 2
    started[i].set()
    if i:
      fetched_while_preparing.append(fetched[i - 1].wait(timeout=60))
    return {'extra': batch['x'][:, :2] + 1}

  to_host = parallel.to_host

  def fetch(tree):
    i = sum(e.is_set() for e in fetched)
    if i + 1 < len(starts):
      prepared_before_fetch.append(started[i + 1].wait(timeout=60))
    out = to_host(tree)
    fetched[i].set()
    return out

  monkeypatch.setattr(parallel, 'to_host', fetch)
  stage = dataclasses.replace(_stage(2), prepare=prepare)
  runner.run_stage(stage, output_dir=tmp_path, work=range(7), replicated={'w': np.float32(3)})
  assert prepared_before_fetch == [True] * 3
  assert fetched_while_preparing == [True] * 3
  got = store.load_shards(tmp_path, 'affine')
  np.testing.assert_allclose(got['y'], _expected(range(7), 3.0)['y'], rtol=1e-6)


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
