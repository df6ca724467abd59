"""Tests of advsal_jax.studies.cli that need no parsed command line."""

import types

import pytest

from advsal_jax.studies import cli
from advsal_jax.studies import store


def test_a_resumed_run_adds_its_time_to_run_json(tmp_path, monkeypatch):
  monkeypatch.setattr(cli, 'FLAGS', types.SimpleNamespace(preset='smoke'))
  cli.write_run_info(tmp_path, study='s', seconds=200.0)
  first = store.read_json(tmp_path / 'run.json')
  assert first['wall_seconds'] == 200.0 and first['processes'] == 1
  cli.write_run_info(tmp_path, study='s', seconds=5.0)  # e.g. --resume with nothing left
  second = store.read_json(tmp_path / 'run.json')
  assert second['wall_seconds'] == pytest.approx(205.0) and second['processes'] == 2
  assert second['peak_rss_mib'] >= first['peak_rss_mib'] > 0
  assert second['preset'] == 'smoke'
