"""End-to-end tests of study 000 (advsal_jax.studies.compare_saliency) on tiny settings."""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from advsal_jax import checkpoints
from advsal_jax import models
from advsal_jax.studies import compare_saliency as study
from advsal_jax.studies import compare_saliency_report as study_report
from advsal_jax.studies import store
from testing_utils import random_study_checkpoint

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_GOLDEN = pathlib.Path(__file__).parent / 'testdata' / 'study000_golden' / 'per_example.csv'
_METRICS = ('spearman', 'mean_ssim', 'hog_pearson', 'mean_ssim_paper')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """A random-weight alexnet_cifar checkpoint and a tiny official-format CIFAR-10 test split."""
  return random_study_checkpoint(tmp_path_factory.mktemp('study'))


def _cfg(ckpt, **kw):
  base = dict(checkpoint=ckpt, num_examples=3, batch_size=2, untargeted_eps=(0.2, 1.0),
              targeted_eps=0.4, metrics=_METRICS,
              method_kwargs={'smoothgrad': {'num_samples': 2, 'noise_level': 0.15}})
  return study.Config(**{**base, **kw})


@pytest.fixture(scope='module')
def full_run(setup):
  root, ckpt, data_dir = setup
  out = root / 'run'
  study.run(_cfg(ckpt), output_dir=out, data_dir=data_dir)
  study_report.finalize(out, data_dir=data_dir)
  return out


def test_every_output_is_written_with_values_in_range(full_run):
  for name in ('config.json', 'summary.json', 'per_example.csv', 'per_example.npz', 'report.md',
               'figure1_example.png', 'figure2_sweep.png', 'figure4_by_target.png'):
    assert (full_run / name).stat().st_size > 0, name
  res = dict(np.load(full_run / 'per_example.npz'))
  v = 2 + 9  # two untargeted budgets + every other class
  assert res['fake_pred'].shape == (v, 3)
  for method in ('smoothgrad', 'grad_cam', 'guided_backprop'):
    for metric in _METRICS:
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
  text = (full_run / 'report.md').read_text()
  assert '0.0804' in text and 'cifar10' in text and 'CIFAR-10' not in text
  assert text.count('**holds**') + text.count('**does not hold**') + text.count(
      '**partly holds**') >= 3  # every claim of the paper gets a verdict
  assert 'mean_ssim_paper' in text and 'Two SSIM conventions' in text


def test_report_numbers_recomputed_from_per_example_csv(full_run):
  summary = json.loads((full_run / 'summary.json').read_text())
  with open(full_run / 'per_example.csv') as f:
    rows = list(csv.DictReader(f))
  targeted = [r for r in rows if r['kind'] == 'targeted']
  for method in ('smoothgrad', 'grad_cam', 'guided_backprop'):
    for metric in _METRICS:
      vals = [float(r[metric]) for r in targeted if r['method'] == method]
      assert len(vals) == 27
      np.testing.assert_allclose(summary['table1'][method][metric]['mean'], np.nanmean(vals),
                                 rtol=1e-6)
      st = summary['table1'][method][metric]
      assert f"{st['mean']:.4f}" in (full_run / 'report.md').read_text()
      per_eps = [float(r[metric]) for r in rows if r['method'] == method
                 and r['kind'] == 'untargeted' and float(r['eps']) == 1.0
                 and r['success'] == 'True']
      got = summary['untargeted'][method]['1.0'][metric]['success']
      if per_eps:
        np.testing.assert_allclose(got['mean'], np.mean(per_eps), rtol=1e-6)
      else:
        assert got is None


def test_ported_study_gives_the_pre_toolkit_bytes(data_dir, tmp_path):
  """The committed golden table was written by the implementation before the toolkit."""
  out = tmp_path / 'golden'
  cfg = study.Config(checkpoint='alexnet_cifar', num_examples=4, batch_size=2,
                     metrics=('spearman', 'mean_ssim', 'hog_pearson'))
  study.run(cfg, output_dir=out, data_dir=data_dir)
  res = study.load_results(out)
  store.write_csv(out / 'per_example.csv',
                  study_report.per_example_rows(res, store.read_json(out / 'config.json')))
  assert (out / 'per_example.csv').read_bytes() == _GOLDEN.read_bytes()


def test_resume_after_interruption_gives_the_same_summary(setup, tmp_path):
  _, ckpt, data_dir = setup
  cfg = _cfg(ckpt, methods=('grad_cam',), metrics=('spearman', 'mean_ssim'), num_examples=4)
  whole = tmp_path / 'whole'
  study.run(cfg, output_dir=whole, data_dir=data_dir)
  # A run killed after its first batch: the second batch's shard never landed.
  killed = tmp_path / 'killed'
  shutil.copytree(whole, killed)
  store.shard_path(killed, study.STAGE, 2).unlink()
  with pytest.raises(ValueError, match='resume'):
    study.run(cfg, output_dir=killed, data_dir=data_dir)
  study.run(cfg, output_dir=killed, data_dir=data_dir, resume=True)
  a, b = (study.load_results(d) for d in (whole, killed))
  config = json.loads((whole / 'config.json').read_text())
  sa, sb = (study_report.summarize(r, config) for r in (a, b))
  for s in (sa, sb):
    s.pop('compute_seconds'), s.pop('images_per_second')
  assert sa == sb
  with pytest.raises(ValueError, match=r'differs.*metrics'):
    study.run(_cfg(ckpt, methods=('grad_cam',), metrics=('spearman',), num_examples=4),
              output_dir=killed, data_dir=data_dir, resume=True)


@pytest.mark.parametrize('kw,match', [
    ({'methods': ('smoothgrad', 'nonsense')}, 'methods'),
    ({'metrics': ('kendall',)}, 'metrics'),
    ({'untargeted_eps': (-0.1,)}, 'eps'),
    ({'num_examples': 13}, 'num_examples'),
    ({'eps_space': 'logit'}, 'eps_space'),
    ({'method_kwargs': {'smoothgradd': {}}}, 'method_kwargs'),
    ({'method_kwargs': {'smoothgrad': {'samples': 3}}}, 'method_kwargs: smoothgrad takes'),
    ({'method_kwargs': {'smoothgrad': {'num_samples': 0}}}, 'method_kwargs: smoothgrad'),
])
def test_bad_settings_fail_before_any_work(setup, tmp_path, kw, match):
  _, ckpt, data_dir = setup
  with pytest.raises(ValueError, match=match):
    study.run(_cfg(ckpt, **kw), output_dir=tmp_path / 'x', data_dir=data_dir)
  assert not (tmp_path / 'x').exists()


def test_missing_checkpoint_fails_clearly(tmp_path):
  with pytest.raises(checkpoints.CheckpointError):
    study.run(_cfg(str(tmp_path / 'none')), output_dir=tmp_path / 'x')


@pytest.mark.slow
def test_run_studies_rejects_one_checkpoint_for_the_multi_model_study(tmp_path):
  proc = subprocess.run(
      [sys.executable, 'experiments/run_studies.py', '--studies=all', '--preset=smoke',
       f'--results_dir={tmp_path}', '--', '--checkpoint=cnn_mnist'],
      cwd=_ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode != 0
  assert '--checkpoint: study 002 (advis_sweep) compares several classifiers' in proc.stderr
  assert not list(tmp_path.iterdir())  # Nothing ran.


@pytest.mark.slow
def test_run_sh_smoke_writes_the_index(setup, tmp_path):
  """``run_studies.py --preset=smoke`` (what ``bash run.sh all`` calls) on the toy classifier.

  Studies 002 (several classifiers) and 003 (needs a masking model of the classifier) run
  on the committed checkpoints in their own binary tests.
  """
  _, ckpt, data_dir = setup
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run(
      [sys.executable, 'experiments/run_studies.py', '--studies=000,001,004', '--preset=smoke',
       f'--results_dir={tmp_path}', '--', f'--checkpoint={ckpt}', f'--data_dir={data_dir}'],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  index = (tmp_path / 'index.md').read_text()
  assert '| 000 | compare_saliency | [report](compare_saliency/smoke/report.md) |' in index
  assert 'smoothgrad Spearman (targeted)' in index and '(paper 0.288)' in index
  # The first screen is quiet: no orbax internals, no libtpu notice.
  assert 'checkpoint_manager' not in proc.stderr and 'libtpu' not in proc.stderr
  assert 'Study 000 (compare_saliency)' in proc.stderr
  assert (tmp_path / 'compare_saliency' / 'smoke' / 'run.json').exists()


def test_the_paper_ssim_is_skimage_defaults_with_the_float_data_range():
  """``mean_ssim_paper`` = skimage's structural_similarity(a, b, data_range=2, channel_axis=-1)."""
  import skimage.metrics  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a = rng.normal(0, 0.02, (3, 16, 16, 3)).astype(np.float32)
  b = (a + rng.normal(0, 0.01, a.shape)).astype(np.float32)
  got = np.asarray(study.PAPER_METRICS['mean_ssim_paper'](a, b))
  want = [skimage.metrics.structural_similarity(a[i], b[i], data_range=2.0, channel_axis=-1)
          for i in range(3)]
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Raw attributions become standardised-input units; CAM maps are min-max normalised.
  std = np.array([0.2, 0.3, 0.4], np.float32)
  np.testing.assert_allclose(study.paper_maps(a, 'gradient', std), a * std, rtol=1e-6)
  cam = np.abs(a[..., :1])
  got = np.asarray(study.paper_maps(cam, 'cam', std))
  flat = cam[..., 0].reshape(3, -1)
  want = ((flat - flat.min(1, keepdims=True)) / np.ptp(flat, 1, keepdims=True)).reshape(3, 16, 16)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
