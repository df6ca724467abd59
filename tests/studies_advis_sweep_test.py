"""Study 002 (AdVis sweep and explorer): the library functions against direct computations,
a run end to end on random-weight checkpoints, resume, and the binaries' flag checks."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from advsal_jax import attacks
from advsal_jax import checkpoints
from advsal_jax import models
from advsal_jax import saliency
from advsal_jax.studies import advis_explorer
from advsal_jax.studies import advis_sweep as study
from advsal_jax.studies import advis_sweep_report as study_report
from advsal_jax.studies import catalog
from advsal_jax.studies import store

from testing_utils import random_study_checkpoint, TinyNet
from testing_utils import assert_killed_run_resumes_to_the_same_files

_ROOT = pathlib.Path(__file__).resolve().parents[1]
B, H, W, C, K = 3, 8, 8, 3, 4


@pytest.fixture(scope='module')
def tiny():
  """Two TinyNets with different weights as the sources and classifiers."""
  model = TinyNet(num_classes=K)
  params = {n: model.init(jax.random.key(i), jnp.zeros((1, H, W, C)))
            for i, n in enumerate(('a', 'b'))}
  classifiers = tuple(study.Classifier(n, model.apply, 'features') for n in params)
  x = jax.random.uniform(jax.random.key(7), (B, H, W, C))
  labels = jnp.array([0, 1, 3], jnp.int32)
  return classifiers, params, x, labels


def _cfg(**kw):
  base = dict(models=('a', 'b'), num_examples=B, batch_size=B, eps=(0, 4, 16), compare_eps=16,
              border=1, crop_scale=1.5, deepfool_max_iter=5, num_figure_images=1)
  return study.Config(**{**base, **kw})


def test_fgsm_sweep_is_fgsm_at_every_budget_and_the_clean_image_at_zero(tiny):
  classifiers, params, x, labels = tiny
  apply_fn, p = classifiers[0].apply_fn, params['a']
  eps = jnp.array([0, 2, 9], jnp.float32) / 255
  swept = study.fgsm_sweep(apply_fn, p, x, labels, eps)
  np.testing.assert_array_equal(swept[0], x)
  for i, e in enumerate(eps):
    np.testing.assert_allclose(swept[i], attacks.fgsm(apply_fn, p, x, labels, eps=e), atol=1e-7)


def test_center_of_mass_area_and_border_share_against_numpy():
  rng = np.random.default_rng(0)
  maps = rng.uniform(size=(3, 7, 5)).astype(np.float32)
  maps[1] = 0
  com = np.asarray(study.center_of_mass(jnp.asarray(maps)))
  for b in (0, 2):
    np.testing.assert_allclose(com[b], ndimage.center_of_mass(maps[b]), rtol=1e-5)
  assert np.isnan(com[1]).all()
  got = np.asarray(study.area(jnp.asarray(maps), 0.5))
  np.testing.assert_allclose(got[[0, 2]], [(m >= 0.5 * m.max()).mean() for m in maps[[0, 2]]])
  assert np.isnan(got[1])
  v = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  band = np.ones((6, 6), bool)
  band[2:4, 2:4] = False
  energy = (v**2).sum(-1)
  np.testing.assert_allclose(study.border_share(jnp.asarray(v), 2),
                             (energy * band).sum((1, 2)) / energy.sum((1, 2)), rtol=1e-5)
  assert study.border_mask(6, 6, 2).sum() == band.sum()


def test_upscale_center_crop_keeps_the_centre():
  x = jnp.zeros((1, 8, 8, 1)).at[:, 3:5, 3:5].set(1.0)
  y = study.upscale_center_crop(x, 2.0)
  assert y.shape == x.shape
  assert float(y[0, 3:5, 3:5].mean()) > float(x[0, 3:5, 3:5].mean()) - 1e-6  # centre kept
  assert float(y[0, 0].max()) == 0.0  # the border pixels are cropped away
  np.testing.assert_allclose(study.upscale_center_crop(jnp.full((2, 6, 6, 3), 0.3), 1.4), 0.3,
                             atol=1e-6)


@pytest.fixture(scope='module')
def swept(tiny):
  classifiers, params, x, labels = tiny
  fn = jax.jit(lambda p, xx, yy: study.sweep_batch(classifiers, p, xx, yy, cfg=_cfg(),
                                                   keep_maps=True))
  return fn, {k: np.asarray(v) for k, v in fn(params, x, labels).items()}


def test_sweep_at_eps_zero_returns_the_clean_predictions_and_unchanged_maps(tiny, swept):
  _, res = swept
  for s in range(2):
    np.testing.assert_array_equal(res['adv_top_class'][:, s, 0], res['clean_top_class'])
    np.testing.assert_allclose(res['adv_top_prob'][:, s, 0], res['clean_top_prob'], atol=1e-6)
    np.testing.assert_allclose(res['cam_shift'][:, s, 0], 0, atol=1e-4)
    np.testing.assert_allclose(res['diff_l1'][:, s, 0], 0, atol=1e-6)
    np.testing.assert_allclose(res['adv_crop_pred'][:, s, 0], res['clean_crop_pred'])


def test_sweep_predictions_maps_and_deepfool_equal_direct_calls(tiny, swept):
  classifiers, params, x, labels = tiny
  _, res = swept
  cfg = _cfg()
  for si, s in enumerate(classifiers):
    for ei, e in enumerate(cfg.eps):
      x_adv = attacks.fgsm(s.apply_fn, params[s.name], x, labels, eps=e / 255)
      np.testing.assert_allclose(res['x_adv'][:, si, ei], x_adv, atol=1e-6)
      for ti, t in enumerate(classifiers):
        prob = jax.nn.softmax(t.apply_fn(params[t.name], x_adv))
        np.testing.assert_array_equal(res['adv_top_class'][:, si, ei, ti],
                                      np.argsort(-np.asarray(prob), axis=1, kind='stable')[:, :4])
      pred = s.apply_fn(params[s.name], x_adv).argmax(-1)
      cam = saliency.grad_cam(s.apply_fn, params[s.name], x_adv, pred, layer='features')[..., 0]
      np.testing.assert_allclose(res['cam_adv'][:, si, ei], cam, rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(res['gbvs_adv'][:, si, ei], saliency.gbvs(x_adv)[..., 0],
                                 rtol=1e-4, atol=1e-7)
    x_df = attacks.deepfool(s.apply_fn, params[s.name], x, labels, num_classes=K, max_iter=5)
    np.testing.assert_allclose(res['x_deepfool'][:, si], x_df, atol=1e-6)


def test_sweep_batched_equals_per_example(tiny, swept):
  classifiers, params, x, labels = tiny
  fn, res = swept
  for b in range(B):
    one = fn(params, x[b:b + 1], labels[b:b + 1])
    for k, v in one.items():
      if k == 'logratio_control_spearman':  # pairs each image with its batch neighbour
        continue
      np.testing.assert_allclose(np.asarray(v)[0], res[k][b], rtol=2e-4, atol=2e-5, err_msg=k)


@pytest.mark.parametrize('kw, match', [
    ({'compare_eps': 5}, 'compare_eps'), ({'eps': (1, 1)}, 'eps'), ({'eps': (300,),
                                                                     'compare_eps': 300}, 'eps'),
    ({'models': ('a', 'a')}, 'models'), ({'crop_scale': 1.0}, 'crop_scale'),
    ({'top_fraction': 0.0}, 'top_fraction'), ({'num_figure_images': 9}, 'num_figure_images'),
    ({'batch_size': 0}, 'batch_size'), ({'deepfool_overshoot': -1.0}, 'deepfool_overshoot')])
def test_bad_settings_name_the_setting(kw, match):
  with pytest.raises(ValueError, match=match):
    study.validate(_cfg(**kw))
  with pytest.raises(ValueError, match='border'):
    study.validate(_cfg(border=4, num_figure_images=1), image_shape=(8, 8, 3))


def test_explorer_precompute_is_image_source_eps_major(tiny):
  classifiers, params, x, labels = tiny
  eps = jnp.array([0, 8], jnp.float32) / 255
  r = jax.jit(lambda p: advis_explorer.precompute(classifiers, p, x, labels, eps))(params)
  assert r['x_adv'].shape == (B, 2, 2, H, W, C) and r['cam'].shape == (B, 2, 2, K, H, W)
  for si, s in enumerate(classifiers):
    x_adv = attacks.fgsm(s.apply_fn, params[s.name], x, labels, eps=eps[1])
    np.testing.assert_allclose(r['x_adv'][:, si, 1], x_adv, atol=1e-6)
    for ti, t in enumerate(classifiers):
      logits = t.apply_fn(params[t.name], x_adv)
      np.testing.assert_array_equal(r['top_class'][:, si, 1, ti, 0], logits.argmax(-1))
    k = 2
    cam = saliency.grad_cam(s.apply_fn, params[s.name], x_adv, jnp.full((B,), k),
                            layer='features')[..., 0]
    np.testing.assert_allclose(r['cam'][:, si, 1, k], cam, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(r['x_adv'][:, :, 0], np.broadcast_to(x[:, None], (B, 2, H, W, C)))


@pytest.fixture(scope='module')
def checkpoints_and_data(tmp_path_factory):
  """Two random-weight alexnet_cifar checkpoints and a tiny official-format CIFAR-10."""
  root, ckpt_a, data_dir = random_study_checkpoint(tmp_path_factory.mktemp('study002'))
  _, variables = models.init('alexnet_cifar', jax.random.key(1))
  ckpt_b = checkpoints.save(root / 'ckpt_b', model_name='alexnet_cifar', variables=variables,
                            metadata={'test_accuracy': 0.1, 'dataset': 'cifar10'})
  return (ckpt_a, str(ckpt_b)), data_dir


def _run_cfg(names, **kw):
  base = dict(models=names, num_examples=4, batch_size=2, eps=(0, 8, 64), compare_eps=64,
              deepfool_max_iter=3, num_figure_images=1)
  return study.Config(**{**base, **kw})


@pytest.fixture(scope='module')
def full_run(checkpoints_and_data, tmp_path_factory):
  names, data_dir = checkpoints_and_data
  out = tmp_path_factory.mktemp('run002') / 'run'
  study.run(_run_cfg(names), output_dir=out, data_dir=data_dir)
  study_report.finalize(out)
  return out


def test_run_writes_every_output_and_the_transfer_diagonal_is_white_box_success(
    checkpoints_and_data, full_run):
  names, data_dir = checkpoints_and_data
  for name in ('config.json', 'summary.json', 'per_example.csv', 'transfer.csv',
               'deepfool.csv', 'report.md', 'fig_vs_eps.png', 'fig_transfer.png',
               'fig_transfer_matrix.png', 'fig_crop.png', 'fig_border.png',
               'fig_deepfool_delta.png', 'fig_deepfool_gbvs.png'):
    assert (full_run / name).stat().st_size > 0, name
  summary = json.loads((full_run / 'summary.json').read_text())
  res = store.load_shards(full_run, study.SWEEP_STAGE)
  assert len(res['index']) == 4
  # White-box success recomputed from scratch: model s on FGSM made on s.
  from advsal_jax import data  # pylint: disable=g-import-not-at-top
  test = data.load('cifar10', 'test', data_dir=data_dir)
  x, y = data.to_float(test.images[:4]), test.labels[:4]
  for s in names:
    model, variables, _ = checkpoints.load(s)
    correct = np.asarray(model.apply(variables, x).argmax(-1)) == y
    for e in (8, 64):
      x_adv = attacks.fgsm(model.apply, variables, x, y, eps=e / 255)
      fooled = np.asarray(model.apply(variables, x_adv).argmax(-1)) != y
      stats = summary['success'][s][f'{e:g}'][s]
      if correct.any():
        assert stats['mean'] == pytest.approx((fooled & correct).sum() / correct.sum())
      else:
        assert stats is None
  text = (full_run / 'report.md').read_text()
  for verdict_line in ('grows and shifts', 'inverted version', 'transfers poorly'):
    assert verdict_line in text
  rows = catalog.get('002').headline(summary, json.loads((full_run / 'config.json').read_text()))
  assert len(rows) == 2


def test_resume_after_a_lost_shard_gives_the_same_tables(checkpoints_and_data, full_run,
                                                         tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  names, data_dir = checkpoints_and_data
  killed = tmp_path / 'killed'
  shutil.copytree(full_run, killed)
  store.shard_path(killed, study.SWEEP_STAGE, 2).unlink()
  for f in ('per_example.csv', 'transfer.csv', 'summary.json'):
    (killed / f).unlink()
  with pytest.raises(ValueError, match='resume'):
    study.run(_run_cfg(names), output_dir=killed, data_dir=data_dir)
  study.run(_run_cfg(names), output_dir=killed, data_dir=data_dir, resume=True)
  study_report.finalize(killed)
  for f in ('per_example.csv', 'transfer.csv', 'deepfool.csv', 'summary.json'):
    assert (killed / f).read_bytes() == (full_run / f).read_bytes(), f
  with pytest.raises(ValueError, match=r'differs.*border'):
    study.run(_run_cfg(names, border=3), output_dir=killed, data_dir=data_dir, resume=True)


def test_binary_rejects_checkpoint_and_bad_eps_before_loading(tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  for flag, match in (('--checkpoint=alexnet_cifar', '--models'), ('--eps=1,x', 'eps'),
                      ('--compare_eps=3', 'compare_eps')):
    proc = subprocess.run([sys.executable, 'experiments/advis_sweep.py', flag,
                           f'--output_dir={tmp_path / "x"}'], cwd=_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and match in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / 'x').exists()


@pytest.mark.slow
def test_binary_killed_mid_run_resumes_to_the_same_tables(checkpoints_and_data, tmp_path):
  names, data_dir = checkpoints_and_data

  def cmd(out, *extra):
    return [sys.executable, 'experiments/advis_sweep.py', '--preset=smoke', '--num_examples=4',
            f'--models={",".join(names)}', f'--data_dir={data_dir}', f'--output_dir={out}',
            *extra]

  assert_killed_run_resumes_to_the_same_files(
      cmd, lambda out: store.shard_path(out, study.SWEEP_STAGE, 0),
      ('per_example.csv', 'transfer.csv', 'deepfool.csv'), tmp_path=tmp_path, cwd=_ROOT)
