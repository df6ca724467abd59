"""Study 003, saliency-shift half: the per-batch step against direct numpy computations on a
tiny masker, batched == per-example, a run end to end on a random-weight checkpoint with a
random masker, resume, and the binary's flag checks."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks
from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import saliency
from advsal_jax.studies import catalog
from advsal_jax.studies import detect_adversarial as study
from advsal_jax.studies import detect_adversarial_claims
from advsal_jax.studies import detect_adversarial_report as study_report
from advsal_jax.studies import store

from testing_utils import random_study_checkpoint, random_study_masker, TinyNet
from testing_utils import assert_killed_run_resumes_to_the_same_files

_ROOT = pathlib.Path(__file__).resolve().parents[1]
B, H, W, C, K = 3, 8, 8, 3, 4
_STEP_ATTACKS = ('fgsm', 'jsma', 'deepfool')


@pytest.fixture(scope='module')
def tiny():
  """A random TinyNet, a random masker over it, images, labels and partner images."""
  net = TinyNet(num_classes=K)
  cvars = net.init(jax.random.key(0), jnp.zeros((1, H, W, C)))
  masker = saliency.Masker(net, ('stem', 'features'), width=8, mask_downsample=1)
  mvars = saliency.init_masker(masker, cvars, jnp.zeros((1, H, W, C)), key=jax.random.key(1))
  # A random decoder outputs masks near 0.5 everywhere; larger weights give maps that vary.
  mvars = jax.tree.map(lambda v: v * 3.0, mvars)
  x = jax.random.uniform(jax.random.key(2), (B, H, W, C))
  partner = jnp.roll(x, 1, axis=0)
  labels = jnp.array([0, 1, 3], jnp.int32)
  index = jnp.array([5, 9, 11], jnp.int32)
  return masker, mvars, x, labels, partner, index


def _cfg(**kw):
  base = dict(attacks=_STEP_ATTACKS, num_examples=4, batch_size=2, eps=0.1, bim_step=0.03,
              mim_step=0.03, num_steps=3, cw_binary_search_steps=2, cw_max_iterations=5,
              deepfool_max_iter=3, num_figure_images=1)
  return study.Config(**{**base, **kw})


@pytest.fixture(scope='module')
def stepped(tiny):
  masker, mvars, x, labels, partner, index = tiny
  fn = jax.jit(lambda p, xx, yy, pp, ii: study.shift_batch(
      masker.apply, p, xx, yy, pp, ii, cfg=_cfg(), num_classes=K, keep_maps=True))
  return fn, {k: np.asarray(v) for k, v in fn(mvars, x, labels, partner, index).items()}


def _minmax(m: np.ndarray) -> np.ndarray:
  m = m.reshape(m.shape[0], -1).astype(np.float64)
  lo, hi = m.min(1, keepdims=True), m.max(1, keepdims=True)
  return np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1), 0)


def test_step_distances_and_sizes_equal_a_direct_numpy_computation(tiny, stepped):
  masker, mvars, x, labels, partner, index = tiny
  _, res = stepped
  classify = lambda p, xx: masker.apply(p, xx, method='classify')
  xn = np.asarray(x, np.float64)

  def maps(images, target):
    learnt = np.asarray(masker.apply(mvars, images, target))[..., 0]
    grad = jax.vmap(jax.grad(lambda xi, t: classify(mvars, xi[None])[0, t]))(images, target)
    return {'learnt': learnt, 'gradient': np.abs(np.asarray(grad)).sum(-1)}

  pred = np.asarray(classify(mvars, x)).argmax(-1)
  np.testing.assert_array_equal(res['clean_pred'], pred)
  clean = maps(x, pred)
  other = maps(partner, np.asarray(classify(mvars, partner)).argmax(-1))
  target = res['jsma_target']
  assert (target != np.asarray(labels)).all() and ((0 <= target) & (target < K)).all()
  for kind in study.MAP_KINDS:
    np.testing.assert_allclose(
        res[f'{kind}_l2_different'],
        np.linalg.norm(_minmax(clean[kind]) - _minmax(other[kind]), axis=1), rtol=1e-4,
        atol=1e-5)
  for a, name in enumerate(_STEP_ATTACKS):
    x_adv = study.run_attack(name, classify, mvars, x, labels, jnp.asarray(target),
                             cfg=_cfg(), num_classes=K)
    np.testing.assert_allclose(res['x_adv'][:, a], x_adv, atol=1e-6, err_msg=name)
    adv_pred = np.asarray(classify(mvars, x_adv)).argmax(-1)
    np.testing.assert_array_equal(res['adv_pred'][:, a], adv_pred)
    adv = maps(x_adv, adv_pred)
    for kind in study.MAP_KINDS:
      np.testing.assert_allclose(
          res[f'{kind}_l2'][:, a],
          np.linalg.norm(_minmax(clean[kind]) - _minmax(adv[kind]), axis=1), rtol=1e-4,
          atol=1e-5, err_msg=f'{name} {kind}')
    r = np.asarray(x_adv, np.float64) - xn
    np.testing.assert_allclose(res['l0'][:, a],
                               (np.abs(r) > 0.5 / 255).any(-1).mean((1, 2)), atol=1e-7)
    np.testing.assert_allclose(res['l2'][:, a],
                               np.sqrt((r**2).sum((1, 2, 3)) / (H * W)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res['linf'][:, a], np.abs(r).max((1, 2, 3)), rtol=1e-6,
                               atol=1e-7)
  # FGSM moves every pixel whose channels are not all clipped by eps.
  assert res['linf'][:, 0].max() == pytest.approx(0.1, abs=1e-6)


def test_jsma_target_is_the_attack_goal_and_fixed_by_the_image_id(tiny, stepped):
  masker, mvars, x, labels, partner, index = tiny
  fn, res = stepped
  classify = lambda p, xx: masker.apply(p, xx, method='classify')
  again = study.jsma_targets(labels, index, seed=0, num_classes=K)
  np.testing.assert_array_equal(res['jsma_target'], again)
  other = study.jsma_targets(labels, index, seed=1, num_classes=K)
  many = study.jsma_targets(jnp.zeros(200, jnp.int32), jnp.arange(200), seed=0, num_classes=K)
  assert set(np.asarray(many).tolist()) == {1, 2, 3}
  assert other.shape == again.shape
  x_adv = attacks.jsma(classify, mvars, x, again, targeted=True, gamma=0.1)
  np.testing.assert_allclose(res['x_adv'][:, _STEP_ATTACKS.index('jsma')], x_adv, atol=1e-6)


def test_step_batched_equals_per_example(tiny, stepped):
  masker, mvars, x, labels, partner, index = tiny
  fn, res = stepped
  for b in range(B):
    one = fn(mvars, x[b:b + 1], labels[b:b + 1], partner[b:b + 1], index[b:b + 1])
    for k, v in one.items():
      np.testing.assert_allclose(np.asarray(v)[0], res[k][b], rtol=2e-4, atol=2e-5,
                                 err_msg=k)


def test_partners_are_a_fixed_derangement():
  p = study.partners(50, seed=3)
  assert sorted(p.tolist()) == list(range(50)) and (p != np.arange(50)).all()
  np.testing.assert_array_equal(p, study.partners(50, seed=3))
  assert not np.array_equal(p, study.partners(50, seed=4))
  # One cycle through every image: following partners visits all of them.
  seen, i = set(), 0
  for _ in range(50):
    seen.add(i)
    i = p[i]
  assert len(seen) == 50


@pytest.mark.parametrize('kw, match', [
    ({'attacks': ('fgsm', 'pgd')}, 'attacks'), ({'attacks': ()}, 'attacks'),
    ({'attacks': ('fgsm', 'fgsm')}, 'attacks'), ({'eps': 0.0}, 'eps'),
    ({'bim_step': 2.0}, 'bim_step'), ({'num_steps': 0}, 'num_steps'),
    ({'jsma_theta': 0.0}, 'jsma_theta'), ({'jsma_gamma': 1.5}, 'jsma_gamma'),
    ({'normalize': 'max'}, 'normalize'), ({'num_examples': 1, 'num_figure_images': 1},
                                          'num_examples'),
    ({'num_figure_images': 9}, 'num_figure_images'), ({'cw_learning_rate': 0.0},
                                                      'cw_learning_rate')])
def test_bad_settings_name_the_setting(kw, match):
  with pytest.raises(ValueError, match=match):
    study.validate(_cfg(**kw))
  with pytest.raises(ValueError, match='num_examples'):
    study.validate(_cfg(), split_size=3)


def test_dataset_budgets_fill_only_unset_values():
  cfg = study.with_dataset_budgets(study.Config(eps=0.2), 'mnist')
  assert (cfg.eps, cfg.bim_step, cfg.mim_step) == (0.2, 0.05, 0.06)
  cfg = study.with_dataset_budgets(study.Config(), 'cifar10')
  assert cfg.eps == pytest.approx(8 / 255)
  with pytest.raises(ValueError, match='eps'):
    study.with_dataset_budgets(study.Config(), 'imagenet')
  assert study.Config(checkpoint='/a/b/alexnet_cifar').masker_name == 'masker_alexnet_cifar'


@pytest.fixture(scope='module')
def checkpoint_and_data(tmp_path_factory):
  """A random-weight alexnet_cifar checkpoint, a random masker of it, tiny CIFAR-10."""
  root, ckpt, data_dir = random_study_checkpoint(tmp_path_factory.mktemp('study003'))
  return ckpt, random_study_masker(root, ckpt), data_dir


_RUN_ATTACKS = ('fgsm',)


def _run_cfg(ckpt, masker, **kw):
  base = dict(checkpoint=ckpt, masker=masker, attacks=_RUN_ATTACKS, num_examples=4,
              batch_size=2, deepfool_max_iter=3, num_figure_images=1)
  return study.Config(**{**base, **kw})


@pytest.fixture(scope='module')
def full_run(checkpoint_and_data, tmp_path_factory):
  ckpt, masker, data_dir = checkpoint_and_data
  out = tmp_path_factory.mktemp('run003') / 'run'
  study.run(_run_cfg(ckpt, masker), output_dir=out, data_dir=data_dir)
  study_report.finalize(out)
  return out


def test_run_writes_every_output_and_its_success_and_baseline_recompute(
    checkpoint_and_data, full_run):
  ckpt, masker, data_dir = checkpoint_and_data
  for name in ('config.json', 'summary.json', 'per_example.csv', 'report.md',
               'fig_examples.png', 'fig_l2.png'):
    assert (full_run / name).stat().st_size > 0, name
  config = json.loads((full_run / 'config.json').read_text())
  assert config['eps'] == pytest.approx(8 / 255) and config['dataset'] == 'cifar10'
  summary = json.loads((full_run / 'summary.json').read_text())
  res = store.load_shards(full_run, study.SHIFT_STAGE)
  np.testing.assert_array_equal(res['index'], np.arange(4))
  np.testing.assert_array_equal(res['partner'], study.partners(4, 0))
  # FGSM success recomputed from scratch on the loaded classifier.
  model, variables, _ = checkpoints.load(ckpt)
  test = data.load('cifar10', 'test', data_dir=data_dir)
  x, y = data.to_float(test.images[:4]), test.labels[:4]
  correct = np.asarray(model.apply(variables, x).argmax(-1)) == y
  x_adv = attacks.fgsm(model.apply, variables, x, y, eps=8 / 255)
  fooled = np.asarray(model.apply(variables, x_adv).argmax(-1)) != y
  stats = summary['attacks']['fgsm']['success']
  if correct.any():
    assert stats['mean'] == pytest.approx((fooled & correct).sum() / correct.sum())
  else:
    assert stats is None
  np.testing.assert_allclose(summary['different']['learnt']['mean'],
                             res['learnt_l2_different'].mean(), rtol=1e-6)
  text = (full_run / 'report.md').read_text()
  for needle in ('Table 1', 'Table 2', 'ASSIRA', 'gradient', 'Mann-Whitney'):
    assert needle in text, needle
  rows = catalog.get('003').headline(summary, config)
  assert rows and all(len(r) == 3 for r in rows)


def test_resume_after_a_lost_shard_gives_the_same_tables(checkpoint_and_data, full_run,
                                                         tmp_path):
  ckpt, masker, data_dir = checkpoint_and_data
  killed = tmp_path / 'killed'
  shutil.copytree(full_run, killed)
  store.shard_path(killed, study.SHIFT_STAGE, 2).unlink()
  for f in ('per_example.csv', 'summary.json'):
    (killed / f).unlink()
  with pytest.raises(ValueError, match='resume'):
    study.run(_run_cfg(ckpt, masker), output_dir=killed, data_dir=data_dir)
  study.run(_run_cfg(ckpt, masker), output_dir=killed, data_dir=data_dir, resume=True)
  study_report.finalize(killed)
  for f in ('per_example.csv', 'summary.json'):
    assert (killed / f).read_bytes() == (full_run / f).read_bytes(), f
  with pytest.raises(ValueError, match=r'differs.*jsma_gamma'):
    study.run(_run_cfg(ckpt, masker, jsma_gamma=0.2), output_dir=killed, data_dir=data_dir,
              resume=True)


def test_run_refuses_a_masker_of_another_classifier(checkpoint_and_data, tmp_path):
  ckpt, masker, data_dir = checkpoint_and_data
  other = shutil.copytree(ckpt, tmp_path / 'other_ckpt')
  with pytest.raises(ValueError, match='masker'):
    study.run(_run_cfg(str(other), masker), output_dir=tmp_path / 'x', data_dir=data_dir)
  assert not (tmp_path / 'x').exists()


def test_binary_rejects_bad_flags_before_loading(tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  for flag, match in (('--experiments=shift,nope', 'experiments'),
                      ('--attacks=fgsm,pgd', 'attacks'),
                      ('--masker=/nonexistent/masker', 'masker')):
    proc = subprocess.run([sys.executable, 'experiments/detect_adversarial.py', flag,
                           f'--output_dir={tmp_path / "x"}'], cwd=_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and match in proc.stderr, (flag, proc.stderr[-2000:])
  assert not (tmp_path / 'x').exists()


@pytest.mark.slow
def test_binary_killed_mid_run_resumes_to_the_same_tables(checkpoint_and_data, tmp_path):
  ckpt, masker, data_dir = checkpoint_and_data

  def cmd(out, *extra):
    return [sys.executable, 'experiments/detect_adversarial.py', '--preset=smoke',
            '--num_examples=4', '--batch_size=2', f'--checkpoint={ckpt}', f'--masker={masker}',
            f'--data_dir={data_dir}', f'--output_dir={out}', '--experiments=shift', *extra]

  assert_killed_run_resumes_to_the_same_files(
      cmd, lambda out: store.shard_path(out, study.SHIFT_STAGE, 0),
      ('per_example.csv', 'summary.json'), tmp_path=tmp_path, cwd=_ROOT)


def _stats(mean, half=0.1, n=50):
  return {'n': n, 'n_undefined': 0, 'mean': mean, 'std': half, 'ci_low': mean - half,
          'ci_high': mean + half}


def _summary(learnt_shift, gradient_shift, pvalue, r):
  entry = lambda shift: {'adversarial': _stats(shift), 'all': _stats(shift),
                         'mann_whitney': {'u': 1.0, 'pvalue': pvalue, 'rank_biserial': r,
                                          'n_x': 50, 'n_y': 50}}
  sizes = {'fgsm': (1.0, 0.2), 'jsma': (0.05, 0.3), 'deepfool': (0.5, 0.05)}
  return {'different': {'learnt': _stats(2.0), 'gradient': _stats(2.0)},
          'attacks': {n: {'success': _stats(0.9), 'learnt': entry(learnt_shift),
                          'gradient': entry(gradient_shift),
                          'sizes': {'l0': _stats(l0, 0.01), 'l2': _stats(l2, 0.01),
                                    'linf': _stats(0.3, 0.01)}}
                      for n, (l0, l2) in sizes.items()}}


@pytest.mark.parametrize('learnt, gradient, p, r, want', [
    (3.0, 1.0, 1e-6, 0.8, 'holds'),           # learnt shifts beyond the baseline, gradient not
    (0.5, 2.0, 1e-6, -0.8, 'does not hold'),  # the reverse
])
def test_claims_follow_the_numbers(learnt, gradient, p, r, want):
  config = {'attacks': ['fgsm', 'jsma', 'deepfool'], 'dataset': 'cifar10'}
  got = detect_adversarial_claims.claims(_summary(learnt, gradient, p, r), config)
  assert [c.verdict for c in got[:3]] == [want] * 3
  # Sizes do not change with the shift: DeepFool's L2 is below FGSM's and JSMA's, and JSMA
  # changes the fewest pixels.
  assert [c.verdict for c in got[3:5]] == ['holds', 'holds']
  assert got[-1].verdict == 'cannot be tested' and 'ASSIRA' in got[-1].text


@pytest.mark.parametrize('dataset', ['cifar10', 'mnist', 'cifar10_catdog'])
def test_claims_and_report_say_what_stands_in_for_assira(dataset):
  config = {'attacks': ['fgsm', 'jsma', 'deepfool'], 'dataset': dataset}
  got = detect_adversarial_claims.claims(_summary(3.0, 1.0, 1e-6, 0.8), config)
  paragraph = study_report.assira_paragraph(dataset)
  assert got[-1].verdict == 'cannot be tested' and 'ASSIRA is not available' in got[-1].why
  assert 'ASSIRA' in paragraph and 'not available' in paragraph
  if dataset == 'cifar10_catdog':
    assert 'stand-in for ASSIRA' in got[0].why and 'stand-in for ASSIRA' in got[1].why
    assert 'measured on its stand-in, CIFAR-10 cats vs dogs' in got[-1].why
    assert 'This run stands in for it' in paragraph and "not ASSIRA's photographs" in paragraph
  else:
    assert 'stand-in' not in got[0].why
    assert '--checkpoint=alexnet_catdog' in got[-1].why
    assert '--checkpoint=alexnet_catdog' in paragraph and 'This run' not in paragraph


def test_stand_in_dataset_has_cifar10_budgets():
  cifar = study.with_dataset_budgets(study.Config(), 'cifar10')
  assert study.with_dataset_budgets(study.Config(), 'cifar10_catdog') == cifar
