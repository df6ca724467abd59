"""advsal_jax.studies.store: atomic writes and shard round trips."""

import csv
import json

import numpy as np
import pytest

from advsal_jax.studies import store


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / 'a' / 'result.json'
  store.write_json(path, {'v': 1})
  with pytest.raises(RuntimeError):
    with store.atomic(path, 'w') as fh:
      fh.write('{"v": 2, "half')
      raise RuntimeError('killed mid-write')
  assert json.loads(path.read_text()) == {'v': 1}
  assert sorted(p.name for p in path.parent.iterdir()) == ['result.json']


def test_writers_round_trip(tmp_path):
  store.write_text(tmp_path / 't.md', 'héllo\n')
  assert (tmp_path / 't.md').read_text(encoding='utf-8') == 'héllo\n'
  rows = [{'a': 1, 'b': 'x,y'}, {'a': 2, 'b': 'z'}]
  store.write_csv(tmp_path / 'r.csv', rows)
  with open(tmp_path / 'r.csv', newline='') as f:
    assert list(csv.DictReader(f)) == [{'a': '1', 'b': 'x,y'}, {'a': '2', 'b': 'z'}]
  arrays = {'x': np.arange(6.).reshape(2, 3), 'i': np.array([3, 4])}
  store.write_npz(tmp_path / 'a.npz', arrays)
  with np.load(tmp_path / 'a.npz') as z:
    for k, v in arrays.items():
      np.testing.assert_array_equal(z[k], v)
  store.write_json(tmp_path / 'j.json', {'nan': float('nan'), 'list': [1, 2]})
  back = store.read_json(tmp_path / 'j.json')
  assert np.isnan(back['nan']) and back['list'] == [1, 2]


def test_bad_arguments_are_named(tmp_path):
  with pytest.raises(ValueError, match='rows'):
    store.write_csv(tmp_path / 'r.csv', [])
  with pytest.raises(ValueError, match='mode'):
    with store.atomic(tmp_path / 'x', 'a'):
      pass


def test_shards_stream_in_work_list_order_and_concatenate(tmp_path):
  # Written out of order, with a start whose digits would sort wrongly as text.
  for start, n in ((1000, 2), (0, 3), (3, 1)):
    store.write_npz(store.shard_path(tmp_path, 'maps', start),
                    {'index': np.arange(start, start + n), 'm': np.full((n, 2, 2), start),
                     'seconds': np.float64(start)})
  streamed = [s['index'].tolist() for s in store.iter_shards(tmp_path, 'maps')]
  assert streamed == [[0, 1, 2], [3], [1000, 1001]]
  whole = store.load_shards(tmp_path, 'maps')
  np.testing.assert_array_equal(whole['index'], [0, 1, 2, 3, 1000, 1001])
  assert whole['m'].shape == (6, 2, 2) and whole['m'][4, 0, 0] == 1000
  np.testing.assert_array_equal(whole['seconds'], [0., 3., 1000.])
  with pytest.raises(FileNotFoundError, match='other'):
    store.load_shards(tmp_path, 'other')
