"""Study 004 (studies.localize_attacks): its parts against references, and tiny runs."""

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
import scipy.stats

from advsal_jax import metrics
from advsal_jax.studies import catalog
from advsal_jax.studies import localize_attacks as study
from advsal_jax.studies import localize_attacks_report as study_report
from advsal_jax.studies import store
from testing_utils import assert_killed_run_resumes_to_the_same_files
from testing_utils import linear_apply
from testing_utils import random_study_checkpoint

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TINY_KWARGS = {'lime': {'num_samples': 40, 'segmentation': 'quickshift',
                         'segmentation_kwargs': {'kernel_size': 1, 'max_dist': 5, 'ratio': 0.5}},
                'smoothgrad': {'num_samples': 2}, 'integrated_gradients': {'num_steps': 4}}


def _linear(h=8, w=8, c=3, k=3, seed=0):
  rng = np.random.default_rng(seed)
  return {'w': jnp.asarray(rng.normal(size=(h * w * c, k)), jnp.float32),
          'b': jnp.zeros((1, k), jnp.float32)}


def test_masked_bim_stays_in_its_segment_and_reaches_the_target():
  params = _linear()
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(0.3, 0.7, (4, 8, 8, 3)), jnp.float32)
  pred = np.asarray(linear_apply(params, x).argmax(-1))
  target = jnp.asarray((pred + 1) % 3, jnp.int32).at[3].set(int(pred[3]))
  mask = np.zeros((4, 8, 8, 1), np.float32)
  mask[:, 2:6, 1:5] = 1.0
  mask[1] = 0.0  # nothing to change: the loss cannot improve, so the attack stalls
  active = jnp.asarray([True, True, False, True])
  res = jax.jit(lambda *a: study.targeted_bim_until(
      linear_apply, params, *a, eps=1.0, step_size=0.02, max_steps=200, patience=5))(
          x, target, jnp.asarray(mask), active)
  x_adv = np.asarray(res['x_adv'])
  assert res['status'].tolist() == [study.SUCCESS, study.STALLED, study.ABSENT, study.SUCCESS]
  assert res['steps'].tolist()[1:] == [5, 0, 0] and 0 < int(res['steps'][0]) < 200
  assert int(res['pred'][0]) == int(target[0])
  np.testing.assert_array_equal(x_adv * (1 - mask), np.asarray(x) * (1 - mask))
  assert (x_adv[0] != np.asarray(x)[0]).any() and 0 <= x_adv.min() and x_adv.max() <= 1
  # A budget: the attack stays in the eps-ball; too few steps: it runs out of steps.
  res = study.targeted_bim_until(linear_apply, params, x[:1], target[:1], jnp.asarray(mask[:1]),
                                 active[:1], eps=0.0015, step_size=0.001, max_steps=3,
                                 patience=5)
  assert res['status'].tolist() == [study.EXHAUSTED] and res['steps'].tolist() == [3]
  assert np.abs(np.asarray(res['x_adv']) - np.asarray(x[:1])).max() <= 0.0015 + 1e-6


def test_top_n_pixels_equal_a_stable_sort_with_ties():
  rng = np.random.default_rng(0)
  heat = rng.integers(0, 4, (3, 6, 5)).astype(np.float32)  # many ties
  order = np.asarray(study.pixel_order(jnp.asarray(heat)))
  for k in (0, 1, 7, 12, 30):
    want = np.zeros((3, 30), bool)
    for b in range(3):
      want[b, np.argsort(-heat[b].ravel(), kind='stable')[:k]] = True
    np.testing.assert_array_equal(order.reshape(3, -1) < k, want)
    np.testing.assert_array_equal(order < k, metrics.top_k_mask(heat, k))


def test_jaccard_and_hamming_equal_set_arithmetic():
  rng = np.random.default_rng(0)
  selected = rng.random((2, 4, 5, 6)) < 0.3
  selected[1, 3] = False  # an empty selection
  region = rng.random((2, 5, 6)) < 0.4
  jac, ham = (np.asarray(v) for v in study.localization(jnp.asarray(selected),
                                                         jnp.asarray(region)))
  for b in range(2):
    c = set(np.flatnonzero(region[b]))
    for n in range(4):
      p = set(np.flatnonzero(selected[b, n]))
      np.testing.assert_allclose(jac[b, n], len(p & c) / len(p | c), rtol=1e-6)
      np.testing.assert_allclose(ham[b, n], 1 - len(p ^ c) / 30, rtol=1e-6)


def test_mean_ranks_equal_scipy_rankdata_with_ties():
  table = np.array([[0.2, 0.5, 0.5], [0.1, 0.1, 0.1], [0.9, 0.3, 0.4], [0.0, 0.7, 0.0]])
  want = np.stack([scipy.stats.rankdata(-row, method='average') for row in table])
  np.testing.assert_array_equal(study_report.ranks(table), want)
  # Per example: the mean over its n explanations; the three ranks always sum to 6.
  res = {'a/jaccard': table.reshape(2, 2, 3)[..., 0], 'b/jaccard': table.reshape(2, 2, 3)[..., 1],
         'c/jaccard': table.reshape(2, 2, 3)[..., 2]}
  got = study_report.rank_table(res, ['a', 'b', 'c'], 'jaccard')
  np.testing.assert_allclose(got, want.reshape(2, 2, 3).mean(axis=1))
  np.testing.assert_allclose(got.sum(axis=1), 6.0)


def test_random_baseline_matches_its_closed_form():
  h = w = 8
  region = np.zeros((1, h, w), bool)
  region[0, :2, :5] = True  # c = 10 of 64
  k = np.array([[1, 7, 20, 64]])
  keys = jax.random.split(jax.random.key(0), 4000)
  heat = jax.vmap(lambda kk: jax.random.uniform(kk, (h, w)))(keys)
  order = study.pixel_order(heat)
  jac, ham = study.localization(order[:, None] < jnp.asarray(k)[:, :, None, None],
                                jnp.asarray(np.repeat(region, 4000, 0)))
  want = study_report.expected_random(k[0], 10, h * w)
  np.testing.assert_allclose(np.asarray(jac).mean(0), want['jaccard'], atol=4e-3)
  np.testing.assert_allclose(np.asarray(ham).mean(0), want['hamming'], atol=2e-3)
  np.testing.assert_allclose(want['jaccard'][-1], 10 / 64)  # every pixel: J = c / N
  # Direct enumeration for k = 1: J = 1 / c with probability c / N, else 0.
  np.testing.assert_allclose(want['jaccard'][0], (10 / 64) * (1 / 10))


def test_lime_unions_grow_by_positive_coefficient():
  coef = jnp.asarray([[0.5, -1.0, 2.0, 0.0, 0.1]])  # label 3 is absent (coefficient 0)
  ranking = jnp.argsort(-jnp.where(jnp.arange(5) == 3, -jnp.inf, coef), axis=1)
  segments = jnp.asarray([[[0, 1, 2], [2, 4, 4]]])
  level = study.lime_levels(coef, ranking, segments, top_n=2)
  np.testing.assert_array_equal(level, [[[1, 2, 0], [0, 2, 2]]])  # label 2, then label 0
  level = study.lime_levels(coef, ranking, segments, top_n=5)
  np.testing.assert_array_equal(level, [[[1, 5, 0], [0, 2, 2]]])  # U_n stops at 3 labels


def test_an_image_with_one_segment_gives_a_defined_answer():
  x = np.full((1, 8, 8, 3), 0.5, np.float32)
  seg = study.by_size(study.segment_parallel(x, segmentation='felzenszwalb', scale=10.0,
                                             sigma=0.5, min_size=10))
  assert (seg == 0).all()
  params = _linear()
  target = (int(linear_apply(params, x).argmax()) + 1) % 3
  cfg = study.Config(num_regions=3, target_class=target, max_steps=100, step_size=0.05,
                     methods=study.PAPER_METHODS, top_n=4, method_kwargs=_TINY_KWARGS)
  att = study.attack_batch(linear_apply, params, jnp.asarray(x), jnp.asarray(seg), cfg=cfg)
  assert att['status'].tolist() == [[study.SUCCESS, study.ABSENT, study.ABSENT]]
  assert att['region_size'].tolist() == [[64, 0, 0]]
  x_adv = att['x_adv'][:, 0]
  lime_seg = study.segment_parallel(np.asarray(x_adv), segmentation='felzenszwalb',
                                    scale=1e6, min_size=64)  # one superpixel
  keys = study.example_keys(0, jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32))
  res = jax.jit(lambda *a: study.explain_batch(linear_apply, params, *a, cfg=cfg, layer='-'))(
      x_adv, jnp.ones((1, 8, 8), bool), jnp.asarray(lime_seg), keys)
  assert int(res['lime_superpixels'][0]) == 1
  k = np.asarray(res['k'])
  assert (k == 64 * int(res['lime_positive'][0])).all()  # U_n is everything or nothing
  for m in (*study.PAPER_METHODS, 'random'):
    for s in ('jaccard', 'hamming'):
      v = np.asarray(res[f'{m}/{s}'])
      assert np.isfinite(v).all() and v.shape == (1, 4)
      np.testing.assert_allclose(v, k / 64)  # the region is the whole image


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """A random-weight alexnet_cifar checkpoint and a tiny official-format CIFAR-10 test split."""
  return random_study_checkpoint(tmp_path_factory.mktemp('study004'))


def _cfg(ckpt, **kw):
  # Large segments and steps: the random-weight model is attacked within a few steps.
  base = dict(checkpoint=ckpt, num_examples=4, batch_size=2, explain_batch_size=4,
              num_regions=3, felzenszwalb_min_size=100, max_steps=20, step_size=0.1, top_n=5,
              method_kwargs=_TINY_KWARGS)
  return study.Config(**{**base, **kw})


@pytest.fixture(scope='module')
def full_run(setup, tmp_path_factory):
  root, ckpt, data_dir = setup
  out = tmp_path_factory.mktemp('run004') / 'run'
  study.run(_cfg(ckpt), output_dir=out, data_dir=data_dir)
  study_report.finalize(out)
  return out


def test_smoke_run_writes_every_output_with_finite_values(full_run):
  for name in ('config.json', 'summary.json', 'attacks.csv', 'per_example.csv',
               'per_example.npz', 'report.md', 'figure1_attack.png', 'figure2_regions.png',
               'figure3_explanations.png', 'figure4_curves.png', 'figure4_all_methods.png',
               'figure4_example.png'):
    assert (full_run / name).stat().st_size > 0, name
  res = dict(np.load(full_run / 'per_example.npz'))
  e = len(res['index'])
  assert e >= 4
  for m in (*study.PAPER_METHODS, *study.EXTRA_METHODS, 'random'):
    for s in ('jaccard', 'hamming'):
      v = res[f'{m}/{s}']
      assert v.shape == (e, 5) and np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()
  assert (np.diff(res['k'], axis=1) >= 0).all()  # unions grow with n
  attack = store.load_shards(full_run, study.ATTACK_STAGE)
  assert (attack['status'] == study.SUCCESS).sum() == e
  ok = attack['status'] == study.SUCCESS
  assert (attack['adv_pred'][ok] == 0).all()
  outside = (attack['segments'][:, None] != np.arange(3)[None, :, None, None])[..., None]
  np.testing.assert_array_equal(np.where(outside, attack['x_adv'], 0),
                                np.where(outside, attack['x'][:, None], 0))
  summary = json.loads((full_run / 'summary.json').read_text())
  ranks = summary['mean_rank']['paper']
  for s in ('jaccard', 'hamming'):
    np.testing.assert_allclose(sum(ranks[s][m]['mean'] for m in study.PAPER_METHODS), 6.0)
  for m in study.PAPER_METHODS:  # equal-size pixel sets: both scores rank alike
    assert ranks['jaccard'][m]['mean'] == ranks['hamming'][m]['mean']
  text = (full_run / 'report.md').read_text()
  assert '2.58' in text and '1.38' in text and 'Inception v3' in text
  assert text.count('**holds**') + text.count('**does not hold**') + text.count(
      '**partly holds**') >= 3
  rows = catalog.get('004').headline(summary, json.loads((full_run / 'config.json').read_text()))
  assert [r[1] for r in rows] == [2.58, 2.06, 1.36, 608]


def test_resume_after_a_lost_batch_gives_the_same_summary(setup, full_run, tmp_path):
  _, ckpt, data_dir = setup
  killed = tmp_path / 'killed'
  shutil.copytree(full_run, killed)
  store.shard_path(killed, study.ATTACK_STAGE, 2).unlink()
  store.shard_files(killed, study.EXPLAIN_STAGE)[-1].unlink()
  with pytest.raises(ValueError, match='resume'):
    study.run(_cfg(ckpt), output_dir=killed, data_dir=data_dir)
  study.run(_cfg(ckpt), output_dir=killed, data_dir=data_dir, resume=True)
  config = json.loads((full_run / 'config.json').read_text())
  sa, sb = (study_report.summarize(*study_report.load(d), config) for d in (full_run, killed))
  for s in (sa, sb):
    s.pop('compute_seconds'), s.pop('explain_seconds')
  assert sa == sb
  with pytest.raises(ValueError, match=r'differs.*top_n'):
    study.run(_cfg(ckpt, top_n=4), output_dir=killed, data_dir=data_dir, resume=True)


def test_a_run_without_adversarial_examples_reports_untestable_claims(setup, tmp_path):
  _, ckpt, data_dir = setup
  out = study.run(_cfg(ckpt, num_examples=2, step_size=1e-4, max_steps=1),
                  output_dir=tmp_path / 'none', data_dir=data_dir)
  study_report.finalize(out)
  assert not (out / 'shards' / study.EXPLAIN_STAGE).exists()
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['num_adversarial'] == 0 and summary['attacks']['exhausted'] > 0
  text = (out / 'report.md').read_text()
  assert text.count('**cannot be tested**') == 2 and 'No attack succeeded' in text


@pytest.mark.parametrize('kw,match', [
    ({'methods': ('gradient', 'nonsense', 'lime')}, 'methods'),
    ({'methods': ('gradient', 'guided_backprop')}, "include 'lime'"),
    ({'num_regions': 0}, 'num_regions'),
    ({'step_size': -0.1}, 'step_size'),
    ({'felzenszwalb_sigma': -1.0}, 'felzenszwalb_sigma'),
    ({'method_kwargs': {'lime': {'segmentation': 'watershed'}}}, 'lime.segmentation'),
    ({'method_kwargs': {'smoothgrad': {'samples': 3}}}, 'smoothgrad takes no'),
    ({'target_class': 10}, 'target_class'),
    ({'num_examples': 5}, 'num_examples'),
])
def test_bad_settings_fail_before_any_work(setup, tmp_path, kw, match):
  _, ckpt, data_dir = setup
  with pytest.raises(ValueError, match=match):
    study.run(_cfg(ckpt, **kw), output_dir=tmp_path / 'x', data_dir=data_dir)
  assert not (tmp_path / 'x').exists()


def test_the_binary_rejects_bad_flags_before_loading_anything(tmp_path):
  proc = subprocess.run(
      [sys.executable, 'experiments/localize_attacks.py', '--methods=gradient,guided_backprop',
       f'--output_dir={tmp_path / "x"}', '--checkpoint=/nonexistent'],
      cwd=_ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True, text=True,
      timeout=120)
  assert proc.returncode != 0 and "include 'lime'" in proc.stderr
  assert 'Checkpoint' not in proc.stderr and not (tmp_path / 'x').exists()


def _binary(ckpt, data_dir, out, *extra):
  return [sys.executable, 'experiments/localize_attacks.py', '--preset=smoke',
          '--num_examples=4', '--felzenszwalb_min_size=100', '--step_size=0.1', '--max_steps=20',
          f'--checkpoint={ckpt}', f'--data_dir={data_dir}',
          f'--output_dir={out}', *extra]


@pytest.mark.slow
def test_binary_killed_mid_run_resumes_to_the_same_tables(setup, tmp_path):
  _, ckpt, data_dir = setup
  assert_killed_run_resumes_to_the_same_files(
      lambda out, *extra: _binary(ckpt, data_dir, out, *extra),
      lambda out: store.shard_path(out, study.ATTACK_STAGE, 0),
      ('attacks.csv', 'per_example.csv'), tmp_path=tmp_path, cwd=_ROOT, timeout=600)


def test_rank_verdicts_follow_the_confidence_intervals():
  from advsal_jax.studies import localize_attacks_report as rep  # pylint: disable=g-import-not-at-top

  def st(mean, half):
    return {'mean': mean, 'ci_low': mean - half, 'ci_high': mean + half}

  apart = {'lime': st(1.2, 0.1), 'guided_backprop': st(2.0, 0.1), 'gradient': st(2.8, 0.1)}
  assert rep._rank_verdict(apart, 'lime', best=True)[0] == 'holds'
  assert rep._rank_verdict(apart, 'gradient', best=False)[0] == 'holds'
  beaten = {'lime': st(2.3, 0.1), 'guided_backprop': st(1.2, 0.1), 'gradient': st(2.5, 0.1)}
  verdict, why = rep._rank_verdict(beaten, 'lime', best=True)
  assert verdict == 'does not hold' and 'Guided Backprop' in why
  assert rep._rank_verdict(beaten, 'gradient', best=False) == (
      'partly holds', 'the CIs overlap; the means agree')
