"""End-to-end tests of study 000 (advsal_jax.studies.comparison) on tiny settings."""

import csv
import json
import shutil

import jax
import numpy as np
import pytest

from advsal_jax import checkpoints
from advsal_jax import models
from advsal_jax.studies import comparison
from advsal_jax.studies import comparison_report
from conftest import random_study_checkpoint


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """A random-weight alexnet_cifar checkpoint and a tiny official-format CIFAR-10 test split."""
  return random_study_checkpoint(tmp_path_factory.mktemp('study'))


def _cfg(ckpt, **kw):
  base = dict(checkpoint=ckpt, num_examples=3, batch_size=2, untargeted_eps=(0.2, 1.0),
              targeted_eps=0.4, smoothgrad_samples=2)
  return comparison.ComparisonConfig(**{**base, **kw})


@pytest.fixture(scope='module')
def full_run(setup):
  root, ckpt, data_dir = setup
  out = root / 'run'
  comparison.run(_cfg(ckpt), output_dir=out, data_dir=data_dir)
  comparison.finalize(out, data_dir=data_dir)
  return out


def test_every_output_is_written_with_values_in_range(full_run):
  for name in ('config.json', 'summary.json', 'per_example.csv', 'per_example.npz', 'report.md',
               'figure1_example.png', 'figure2_sweep.png', 'figure4_by_target.png'):
    assert (full_run / name).stat().st_size > 0, name
  res = dict(np.load(full_run / 'per_example.npz'))
  v = 2 + 9  # two untargeted budgets + every other class
  assert res['fake_pred'].shape == (v, 3)
  for method in ('smoothgrad', 'grad_cam', 'guided_backprop'):
    for metric in ('spearman', 'mean_ssim', 'hog_pearson'):
      vals = res[f'{method}/{metric}']
      assert vals.shape == (v, 3) and np.isfinite(vals).all(), (method, metric)
      assert (vals >= -1 - 1e-5).all() and (vals <= 1 + 1e-5).all()
  # Targeted variants attack every class but the clean prediction, once each.
  tgt = res['target'][2:]
  for j in range(3):
    assert sorted(tgt[:, j].tolist() + [res['real_pred'][j]]) == list(range(10))
  # Budgets in normalised space: L-inf of the perturbation <= eps * max(std).
  assert (res['linf'][1] <= 1.0 * max(models.CIFAR10_STD) + 1e-6).all()
  summary = json.loads((full_run / 'summary.json').read_text())
  assert summary['num_examples'] == 3
  report = (full_run / 'report.md').read_text()
  assert '0.0804' in report and 'Grad-CAM' in report


def test_table1_recomputed_from_per_example_csv(full_run):
  summary = json.loads((full_run / 'summary.json').read_text())
  with open(full_run / 'per_example.csv') as f:
    rows = [r for r in csv.DictReader(f) if r['kind'] == 'targeted']
  for method in ('smoothgrad', 'grad_cam', 'guided_backprop'):
    for metric in ('spearman', 'mean_ssim', 'hog_pearson'):
      vals = [float(r[metric]) for r in rows if r['method'] == method]
      assert len(vals) == 27
      np.testing.assert_allclose(summary['table1'][method][metric]['mean'], np.nanmean(vals),
                                 rtol=1e-6)


def test_resume_after_interruption_gives_the_same_summary(setup, tmp_path):
  _, ckpt, data_dir = setup
  cfg = _cfg(ckpt, methods=('grad_cam',), metrics=('spearman', 'mean_ssim'), num_examples=4)
  whole = tmp_path / 'whole'
  comparison.run(cfg, output_dir=whole, data_dir=data_dir)
  # A run killed after its first batch: the second batch's shard never landed.
  killed = tmp_path / 'killed'
  shutil.copytree(whole, killed)
  comparison.shard_path(killed, 2).unlink()
  with pytest.raises(ValueError, match='resume'):
    comparison.run(cfg, output_dir=killed, data_dir=data_dir)
  comparison.run(cfg, output_dir=killed, data_dir=data_dir, resume=True)
  a, b = (comparison_report.load_shards(d) for d in (whole, killed))
  config = json.loads((whole / 'config.json').read_text())
  sa, sb = (comparison_report.summarize(r, config) for r in (a, b))
  for s in (sa, sb):
    s.pop('compute_seconds'), s.pop('images_per_second')
  assert sa == sb
  with pytest.raises(ValueError, match='differs'):
    comparison.run(_cfg(ckpt, methods=('grad_cam',), metrics=('spearman',), num_examples=4),
                   output_dir=killed, data_dir=data_dir, resume=True)


@pytest.mark.parametrize('kw,match', [
    ({'methods': ('smoothgrad', 'nonsense')}, 'methods'),
    ({'metrics': ('kendall',)}, 'metrics'),
    ({'untargeted_eps': (-0.1,)}, 'eps'),
    ({'num_examples': 13}, 'num_examples'),
    ({'eps_space': 'logit'}, 'eps_space'),
])
def test_bad_settings_fail_before_any_work(setup, tmp_path, kw, match):
  _, ckpt, data_dir = setup
  with pytest.raises(ValueError, match=match):
    comparison.run(_cfg(ckpt, **kw), output_dir=tmp_path / 'x', data_dir=data_dir)
  assert not (tmp_path / 'x').exists()


def test_missing_checkpoint_fails_clearly(tmp_path):
  with pytest.raises(checkpoints.CheckpointError):
    comparison.run(_cfg(str(tmp_path / 'none')), output_dir=tmp_path / 'x')
