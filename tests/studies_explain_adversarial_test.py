"""Tests of study 001 (advsal_jax.studies.explain_adversarial, its batches, summary and report)."""

import csv
import functools
import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import metrics
from advsal_jax import models
from advsal_jax import perturbation
from advsal_jax import saliency
from advsal_jax.studies import catalog
from advsal_jax.studies import explain_adversarial as study
from advsal_jax.studies import explain_adversarial_batches as batches
from advsal_jax.studies import explain_adversarial_claims as study_claims
from advsal_jax.studies import explain_adversarial_config as settings
from advsal_jax.studies import explain_adversarial_report as study_report
from advsal_jax.studies import explain_adversarial_summary as study_summary
from advsal_jax.studies import runner
from advsal_jax.studies import store
from testing_utils import kill_when
from testing_utils import linear_apply
from testing_utils import write_official_cifar

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_NUM_IMAGES = 6
# The smoke preset of experiments/explain_adversarial.py on 6 images in batches of 4, with one
# method of each family and both GBPs (every method compiles its own maps three times).
_METHODS = ('gradient', 'grad_cam', 'guided_backprop', 'enhanced_guided_backprop')
_SMOKE = dict(num_examples=_NUM_IMAGES, batch_size=4, bim_steps=2, cw_steps=4, cw_search_steps=2,
              methods=_METHODS,
              recovery_grid=(0.0, 25.0, 50.0),
              method_kwargs={'smoothgrad': {'num_samples': 2, 'noise_level': 0.15},
                             'integrated_gradients': {'num_steps': 4}})
_SMOKE_FLAGS = ['--preset=smoke', f'--num_examples={_NUM_IMAGES}', '--batch_size=4',
                f'--methods={",".join(_METHODS)}']
GBP = settings.GBP


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """A random-weight alexnet_cifar checkpoint and tiny CIFAR-10 labelled by its predictions.

  With every clean prediction correct, the recovery experiment has images to work on.
  """
  root = tmp_path_factory.mktemp('study001')
  arrays = write_official_cifar(root / 'data', np.random.default_rng(0), per_batch=_NUM_IMAGES)
  model, variables = models.init('alexnet_cifar', jax.random.key(0))
  ckpt = checkpoints.save(root / 'ckpt', model_name='alexnet_cifar', variables=variables,
                          metadata={'test_accuracy': 0.1, 'dataset': 'cifar10'})
  images = arrays['test_batch'][0]
  labels = np.asarray(jax.jit(model.apply)(variables, data.to_float(images)).argmax(-1)).tolist()
  with open(root / 'data' / 'cifar10' / 'cifar-10-batches-py' / 'test_batch', 'wb') as f:
    pickle.dump({b'batch_label': b'x', b'labels': labels,
                 b'data': images.transpose(0, 3, 1, 2).reshape(len(images), -1),
                 b'filenames': [b'a.png'] * len(images)}, f, protocol=2)
  return root, str(ckpt), str(root / 'data')


def _cfg(ckpt, **kw):
  return settings.Config(**{'checkpoint': ckpt, **_SMOKE, **kw})


@pytest.fixture(scope='module')
def smoke_run(setup):
  root, ckpt, data_dir = setup
  out = root / 'run'
  study.run(_cfg(ckpt), output_dir=out, data_dir=data_dir)
  study_report.finalize(out, data_dir=data_dir)
  return out


def _summary_without_timings(path):
  s = json.loads((pathlib.Path(path) / 'summary.json').read_text())
  s.pop('compute_seconds')
  return s


# Statistics against independent computations.

def _linear_params(rng, h, w, c, k):
  weights = rng.normal(size=(h, w, c, k)).astype(np.float32)
  weights[rng.random((h, w)) < 0.3] = 0.0  # pixels no class looks at: the filtering effect
  return {'w': jnp.asarray(weights.reshape(-1, k)), 'b': jnp.zeros((1, k), jnp.float32)}


@pytest.mark.parametrize('overlap_percent', [25.0, 75.0])  # 75 %: ties among EGBP's zeros
def test_pair_statistics_match_a_hand_computation_on_a_linear_model(overlap_percent):
  rng = np.random.default_rng(0)
  h, w, c, k = 4, 5, 3, 4
  params = _linear_params(rng, h, w, c, k)
  x = jnp.asarray(rng.random((2, h, w, c)), jnp.float32)
  cfg = settings.Config(pair_classes=3, overlap_percent=overlap_percent, seed=3)
  fill = jnp.asarray([0.1, 0.5, 0.9], jnp.float32)
  index = jnp.asarray([7, 2])
  pairs = jax.jit(functools.partial(batches.pairs_batch, linear_apply, cfg=cfg))
  got = jax.tree.map(np.asarray, pairs(params, x, index, fill))
  weights = np.asarray(params['w']).reshape(h, w, c, k)
  logits = np.asarray(x).reshape(2, -1) @ np.asarray(params['w'])
  np.testing.assert_array_equal(got['top_classes'], np.argsort(-logits, 1)[:, :3])
  tiebreak = np.asarray(batches.uniform_maps(3, index, settings.TIEBREAK_STREAM, (h, w)))
  random_rank = np.asarray(batches.uniform_maps(3, index, settings.RANDOM_RANK_STREAM, (h, w)))
  n_del = round(overlap_percent / 100 * h * w)
  for b in range(2):
    np.testing.assert_allclose(
        got['gbp_on_fraction'][b], [(weights[..., j] > 0).mean() for j in got['top_classes'][b]])
    for p, (i, j) in enumerate(settings.class_pairs(3)):
      ck, cm = got['top_classes'][b, i], got['top_classes'][b, j]
      # GBP of a model without ReLUs is the gradient: W[..., class]. Binarised per channel at
      # g > 0 (the paper's filtering effect s * 1{g > 0}).
      sk, sm = weights[..., ck], weights[..., cm]
      gk, gm = np.abs(sk).sum(-1), np.abs(sm).sum(-1)
      want_sr = np.mean((sk > 0) == (sm > 0))
      pk, pm = (sk > 0).mean(), (sm > 0).mean()
      want_ad = abs(gk.mean() - gm.mean()) / max(gk.mean(), gm.mean())
      np.testing.assert_allclose(got['gbp_sim_ratio'][b, p], want_sr, rtol=1e-6)
      np.testing.assert_allclose(got['gradient_sim_ratio'][b, p], want_sr, rtol=1e-6)
      np.testing.assert_allclose(got['chance_sim_ratio'][b, p], pk * pm + (1 - pk) * (1 - pm),
                                 rtol=1e-6)
      np.testing.assert_allclose(got['gbp_avg_diff'][b, p], want_ad, rtol=1e-5)
      np.testing.assert_allclose(got['gbp_spearman'][b, p],
                                 scipy.stats.spearmanr(gk.ravel(), gm.ravel()).statistic,
                                 atol=1e-5)
      # EGBP: channel-wise energy normalisation, then max(0, s_k - s_m) (and m against k).
      nk, nm = sk / np.abs(sk).sum((0, 1)), sm / np.abs(sm).sum((0, 1))
      ek_c, em_c = np.maximum(nk - nm, 0), np.maximum(nm - nk, 0)
      ek, em = ek_c.sum(-1), em_c.sum(-1)
      np.testing.assert_allclose(got['egbp_sim_ratio'][b, p], np.mean((ek_c > 0) == (em_c > 0)),
                                 rtol=1e-6)
      np.testing.assert_allclose(got['egbp_avg_diff'][b, p],
                                 abs(ek.mean() - em.mean()) / max(ek.mean(), em.mean()),
                                 rtol=1e-4, atol=1e-6)
      # Deleting pixels S of a linear model lowers logit_k - logit_m by
      # sum_{S} (x - fill) . (W_k - W_m), which is also its first-order estimate.
      offset = np.asarray(x[b]) - np.asarray(fill)
      per_pixel = (offset * (sk - sm)).sum(-1).ravel()
      for name, score in (('egbp', ek), ('gbp', gk), ('random', random_rank[b]),
                          ('egbp_swapped', em)):
        order = np.lexsort((tiebreak[b].ravel(), -score.ravel()))
        for stat in ('margin_drop', 'first_order_drop'):
          np.testing.assert_allclose(got[f'{name}_{stat}'][b, p],
                                     per_pixel[order[:n_del]].sum(), rtol=1e-4, atol=1e-5,
                                     err_msg=f'{name}_{stat}')
      # EGBP(k vs m)'s positive entries on its deleted pixels: margin gradient W_k - W_m > 0,
      # and x below the fill, each against its share over the whole image.
      deleted = np.zeros(h * w, bool)
      deleted[np.lexsort((tiebreak[b].ravel(), -ek.ravel()))[:n_del]] = True
      on = (ek_c > 0) & deleted.reshape(h, w, 1)
      np.testing.assert_allclose(got['egbp_gradient_agreement'][b, p],
                                 ((sk - sm) > 0)[on].mean(), rtol=1e-6)
      np.testing.assert_allclose(got['egbp_below_fill'][b, p], (offset < 0)[on].mean(),
                                 rtol=1e-6)
      np.testing.assert_allclose(got['gradient_positive_share'][b, p], ((sk - sm) > 0).mean(),
                                 rtol=1e-6)
      np.testing.assert_allclose(got['below_fill_share'][b, p], (offset < 0).mean(), rtol=1e-6)


def test_pairs_batch_is_per_example_when_map_values_tie():
  # One channel and 75 % of the pixels deleted: the deletion reaches the zeros of EGBP(k vs m)
  # (pixels where n_k <= n_m), whose order is the example's own tiebreak, whatever else is in
  # the batch.
  rng = np.random.default_rng(8)
  h, w, c, k, b = 4, 5, 1, 4, 3
  params = _linear_params(rng, h, w, c, k)
  x = jnp.asarray(rng.random((b, h, w, c)), jnp.float32)
  cfg = settings.Config(pair_classes=3, overlap_percent=75.0, seed=2)
  fill = jnp.asarray([0.5], jnp.float32)
  index = jnp.asarray([4, 0, 9])
  pairs = jax.jit(functools.partial(batches.pairs_batch, linear_apply, cfg=cfg))
  batched = jax.tree.map(np.asarray, pairs(params, x, index, fill))
  assert (batched['egbp_margin_drop'] != 0).all()
  for i in range(b):
    alone = pairs(params, x[i:i + 1], index[i:i + 1], fill)
    for name, values in alone.items():
      np.testing.assert_allclose(batched[name][i], values[0], rtol=1e-5, atol=1e-6,
                                 err_msg=name)


def test_heatmap_and_avg_diff_on_small_fixed_maps():
  # Two 2x2 three-channel attributions; by hand: |.| summed over channels.
  a = np.array([[[1, -1, 0], [0, 0, 0]], [[2, 0, 0], [0, 0, -3]]], np.float32)[None]
  b = np.array([[[0, 0, 1], [0, 0, 0]], [[0, 0, 0], [1, 1, 1]]], np.float32)[None]
  ha = saliency.heatmap(jnp.asarray(a), 'gradient', normalize=False)
  hb = saliency.heatmap(jnp.asarray(b), GBP, normalize=False)
  np.testing.assert_array_equal(ha[0], [[2, 0], [2, 3]])
  np.testing.assert_array_equal(hb[0], [[1, 0], [0, 3]])
  # Binarised: on/off agree on pixels (0,0), (0,1), (1,1): 3 of 4. Means 7/4 and 4/4.
  np.testing.assert_allclose(metrics.sim_ratio(ha, hb), [0.75])
  np.testing.assert_allclose(metrics.avg_diff(ha, hb), [(7 / 4 - 1) / (7 / 4)], rtol=1e-6)
  cam = np.zeros((1, 2, 2, 1), np.float32) + 0.5
  np.testing.assert_array_equal(saliency.heatmap(jnp.asarray(cam), 'grad_cam', normalize=False),
                                cam[..., 0])


def test_explain_gives_closed_form_pixel_maps_on_a_linear_model():
  rng = np.random.default_rng(4)
  h, w, c, k = 3, 4, 2, 3
  params = _linear_params(rng, h, w, c, k)
  x = jnp.asarray(rng.random((2, h, w, c)), jnp.float32)
  target = jnp.asarray([2, 0])
  weights = np.asarray(params['w']).reshape(h, w, c, k)
  grad = np.stack([weights[..., 2], weights[..., 0]])  # [2, h, w, c]
  cfg = settings.Config(method_kwargs={'smoothgrad': {'num_samples': 3},
                                    'integrated_gradients': {'num_steps': 2}})
  keys = runner.example_keys(0, jnp.arange(2), 0)
  for method, want in (('gradient', grad), ('smoothgrad', grad), (GBP, grad),
                       ('integrated_gradients', np.asarray(x) * grad)):
    got = batches.explain(method, linear_apply, params, x, target, keys=keys, layer='', cfg=cfg)
    np.testing.assert_allclose(got, np.abs(want).sum(-1), rtol=1e-5, atol=1e-6,
                               err_msg=method)


def test_attacks_batch_keeps_the_attack_axis_in_attacks_order_on_a_linear_model():
  rng = np.random.default_rng(6)
  h, w, c, k, b = 3, 4, 2, 4, 5
  params = _linear_params(rng, h, w, c, k)
  x = jnp.asarray(rng.random((b, h, w, c)), jnp.float32)
  cfg = settings.Config(bim_steps=3, cw_steps=3, cw_search_steps=1)
  budgets = {'fgsm_eps': 0.2, 'bim_eps': 0.05, 'bim_step_size': 0.02,
             'cw_learning_rate': 0.05, 'cw_initial_const': 1.0}
  got = jax.tree.map(np.asarray, jax.jit(functools.partial(
      batches.attacks_batch, linear_apply, cfg=cfg))(params, x, budgets))
  wm, xs = np.asarray(params['w']), np.asarray(x).reshape(b, -1)
  clean = (xs @ wm).argmax(1)
  np.testing.assert_array_equal(got['clean_pred'], clean)
  # FGSM on cross-entropy: the gradient is W (softmax - onehot), in closed form.
  logits = xs @ wm
  prob = np.exp(logits - logits.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  grad = (prob - np.eye(k)[clean]) @ wm.T
  fgsm = np.clip(xs + 0.2 * np.sign(grad), 0, 1)
  np.testing.assert_allclose(got['x_adv'][:, 0].reshape(b, -1), fgsm, atol=1e-6)
  # Only BIM's budget is 0.05: its column is the one within it.
  assert np.abs(got['x_adv'][:, 1] - np.asarray(x)).max() <= 0.05 + 1e-6
  for i in range(b):
    for a in range(len(settings.ATTACKS)):
      delta = (got['x_adv'][i, a] - np.asarray(x[i])).ravel()
      pred = (got['x_adv'][i, a].reshape(-1) @ wm).argmax()
      assert got['adv_pred'][i, a] == pred and got['success'][i, a] == (pred != clean[i])
      np.testing.assert_allclose(got['l2'][i, a], np.linalg.norm(delta), rtol=1e-5, atol=1e-7)
      np.testing.assert_allclose(got['linf'][i, a], np.abs(delta).max(), rtol=1e-6)


def test_maps_batch_puts_each_map_at_its_example_and_attack_on_a_linear_model():
  # logits = x.flatten() @ W: the gradient map of class t is |W[:, t]| summed over channels,
  # EGBP's is max(0, n_t - n_m) per channel (n: W's columns energy-normalised per channel).
  rng = np.random.default_rng(7)
  h, w, c, k, b = 11, 12, 2, 5, 3  # SSIM needs 11x11
  a = len(settings.ATTACKS)
  params = _linear_params(rng, h, w, c, k)
  x = jnp.asarray(rng.random((b, h, w, c)), jnp.float32)
  x_adv = jnp.asarray(np.clip(np.asarray(x)[:, None] + rng.normal(0, 0.1, (b, a, h, w, c)),
                              0, 1), jnp.float32)
  clean_pred = jnp.asarray([0, 1, 2])
  adv_pred = jnp.asarray([[0, 3, 4], [2, 1, 0], [4, 3, 1]])  # distinct per (i, a)
  index = jnp.asarray([11, 4, 8])
  cfg = settings.Config(methods=('gradient', settings.EGBP), overlap_percent=20.0, seed=5)
  got = jax.tree.map(np.asarray, jax.jit(functools.partial(
      batches.maps_batch, linear_apply, cfg=cfg, layer=''))(
          params, x, x_adv, clean_pred, adv_pred, index))
  wts = np.asarray(params['w']).reshape(h, w, c, k)
  norm = wts / np.abs(wts).sum((0, 1), keepdims=True)

  def heat(attr, method):
    return np.asarray(saliency.heatmap(jnp.asarray(attr[None]), method, normalize=True))[0]

  def egbp(t, m):
    return heat(np.maximum(norm[..., t] - norm[..., m], 0), settings.EGBP)

  tiebreak = np.asarray(batches.uniform_maps(5, index, settings.TIEBREAK_STREAM, (h, w)))
  n_top = round(0.2 * h * w)
  xa, xc = np.asarray(x_adv), np.asarray(x)
  for i in range(b):
    cp = int(clean_pred[i])
    for j in range(a):
      ap = int(adv_pred[i, j])
      delta = np.abs(xa[i, j] - xc[i]).sum(-1).ravel()

      def share(m):
        order = np.lexsort((tiebreak[i].ravel(), -m.ravel()))
        return delta[order[:n_top]].sum() / delta.sum()

      g_clean, g_adv = heat(wts[..., cp], 'gradient'), heat(wts[..., ap], 'gradient')
      np.testing.assert_allclose(
          got['gradient/spearman'][i, j],
          scipy.stats.spearmanr(g_clean.ravel(), g_adv.ravel()).statistic, atol=1e-5)
      np.testing.assert_allclose(got['gradient/adv_delta_share'][i, j], share(g_adv),
                                 rtol=1e-5)
      np.testing.assert_allclose(got['gradient/clean_delta_share'][i, j], share(g_clean),
                                 rtol=1e-5)
      # EGBP explains against the runner-up of the image it explains.
      def runner_up(z, t):
        order = np.argsort(-(z.reshape(-1) @ np.asarray(params['w'])))
        return order[1] if order[0] == t else order[0]

      e_adv = egbp(ap, runner_up(xa[i, j], ap))
      e_clean = egbp(cp, runner_up(xc[i], cp))
      np.testing.assert_allclose(
          got[f'{settings.EGBP}/spearman'][i, j],
          scipy.stats.spearmanr(e_clean.ravel(), e_adv.ravel()).statistic, atol=1e-5)
      if ap == cp:
        assert np.isnan(got[f'{settings.EGBP}/swapped_spearman'][i, j])
      else:
        swapped = egbp(ap, cp)
        np.testing.assert_allclose(
            got[f'{settings.EGBP}/swapped_spearman'][i, j],
            scipy.stats.spearmanr(swapped.ravel(), e_adv.ravel()).statistic, atol=1e-5)
        np.testing.assert_allclose(got[f'{settings.EGBP}/swapped_delta_share'][i, j],
                                   share(swapped), rtol=1e-5)


def test_delta_share_is_chance_for_a_constant_perturbation_not_a_row_band():
  # FGSM-like |delta|: the budget on every pixel. Any map then holds exactly k / N of it; a
  # top-k of |delta| with row-major ties would instead be the top rows and reward maps there.
  rng = np.random.default_rng(5)
  n, h, w, k = 4, 6, 5, 6
  delta = jnp.full((n, h, w), 0.03)
  tiebreak = jnp.asarray(rng.random((n, h, w)), jnp.float32)
  top_rows = jnp.zeros((n, h, w)).at[:, 0].set(1.0)  # salient exactly where the band was
  for maps in (top_rows, jnp.asarray(rng.random((n, h, w)), jnp.float32), jnp.zeros((n, h, w))):
    np.testing.assert_allclose(batches.delta_share(maps, delta, tiebreak, k), k / (h * w),
                               rtol=1e-5)
  # Graded |delta|: the share is what the map's top k pixels hold, ties in tiebreak order.
  d = np.asarray(rng.random((n, h, w)), np.float32)
  maps = np.asarray(rng.random((n, h, w)), np.float32)
  maps[:, :2] = 0.0  # ties among the least salient pixels
  got = batches.delta_share(jnp.asarray(maps), jnp.asarray(d), tiebreak, k + 20)
  for i in range(n):
    order = np.lexsort((np.asarray(tiebreak[i]).ravel(), -maps[i].ravel()))
    want = d[i].ravel()[order[:k + 20]].sum() / d[i].sum()
    np.testing.assert_allclose(got[i], want, rtol=1e-5)
  assert np.isnan(batches.delta_share(top_rows, jnp.zeros((n, h, w)), tiebreak, k)).all()


def _brightness_model(params, x):
  """Class 1 iff the image's mean exceeds 0.5 (params unused but traced)."""
  score = x.mean(axis=(1, 2, 3)) - 0.5 + 0 * params['b'][0, 0]
  return jnp.stack([jnp.zeros_like(score), score], -1)


def _slope_ci(correct, grid, seed=0):
  """95 % bootstrap CI (over images) of the least-squares slope of accuracy vs p."""
  rng = np.random.default_rng(seed)
  slopes = [np.polyfit(grid, correct[rng.integers(0, len(correct), len(correct))].mean(0), 1)[0]
            for _ in range(500)]
  return np.percentile(slopes, [2.5, 97.5])


@pytest.mark.parametrize('n_success,n_failed', [(1, 1), (7, 3), (40, 65)])
def test_rank_biserial_matches_the_pairwise_signs_and_scipy(n_success, n_failed):
  rng = np.random.default_rng(n_success)
  # Small integers: many ties within and across the groups.
  s = rng.integers(0, 5, n_success).astype(float)
  f = rng.integers(0, 5, n_failed).astype(float)
  brute = np.sign(s[:, None] - f[None, :]).mean()
  assert study_summary.rank_biserial(s, f) == pytest.approx(brute, abs=1e-12)
  if min(n_success, n_failed) > 1:
    assert study_summary.rank_biserial(s, f) == pytest.approx(
        metrics.mann_whitney_u(s, f).rank_biserial, abs=1e-12)


def test_random_baseline_is_statistically_flat():
  # Images i.i.d. uniform and a noise fill: replacing random pixels by fresh uniform noise
  # leaves the image distribution unchanged, so a flat random curve is the right answer.
  n, side = 400, 8
  x_adv = jax.random.uniform(jax.random.key(3), (n, side, side, 1))
  params = {'b': jnp.zeros((1, 2))}
  cfg = settings.Config(methods=('gradient',), recovery_fill='noise', seed=7)
  grid = np.arange(0, 55, 5.0)
  counts = jnp.asarray(perturbation.pixel_counts(tuple(grid), side * side))
  recovery = jax.jit(functools.partial(batches.recovery_batch, _brightness_model, cfg=cfg,
                                       layer=''))
  got = recovery(params, x_adv, jnp.ones(n, jnp.int32), jnp.arange(n, dtype=jnp.int32),
                 jnp.zeros(1), counts)
  correct = np.asarray(got['recovery_pred']) == 1  # [n, 2 rankings, P]
  base = correct[:, :, 0].mean()
  # The gradient of this model is constant: its ranking falls back to the random tiebreak.
  for r in range(2):
    low, high = _slope_ci(correct[:, r].astype(float), grid)
    assert low <= 0 <= high, (r, low, high)
    np.testing.assert_allclose(correct[:, r].mean(0), base, atol=4 * 0.5 / np.sqrt(n))
  # The test has power: ranking the brightest pixels first darkens the images.
  fill = perturbation.fill_images(x_adv, 'noise',
                                 keys=runner.example_keys(7, jnp.arange(n), settings.NOISE_STREAM))
  curves = jax.jit(functools.partial(perturbation.perturbation_curves, _brightness_model))
  bright = np.asarray(curves(params, x_adv, x_adv[None, ..., 0], jnp.zeros((n, side, side)),
                             fill, counts))[:, 0] == 1
  assert _slope_ci(bright.astype(float), grid)[1] < 0


# End to end.

def test_smoke_run_writes_every_output_with_finite_values(smoke_run):
  for name in ('config.json', 'summary.json', 'per_example.npz', 'report.md',
               'per_example_pairs.csv', 'per_example_attacks.csv', 'per_example_maps.csv',
               'per_example_recovery.csv', 'figure1a_sim_ratio.png', 'figure1b_avg_diff.png',
               'figure3_maps.png', 'figure4_recovery.png', 'figure5_maps.png',
               'figure5_statistics.png'):
    assert (smoke_run / name).stat().st_size > 0, name
  res = dict(np.load(smoke_run / 'per_example.npz'))
  assert res['attacks/adv_pred'].shape == (_NUM_IMAGES, 3)
  assert res['pairs/gbp_sim_ratio'].shape == (_NUM_IMAGES, 3)
  n_rec = len(res['recovery/index'])
  assert n_rec >= 1 and res['recovery/recovery_pred'].shape == (n_rec, len(_METHODS) + 1, 3)
  for key, values in res.items():
    if values.dtype.kind == 'f':
      # A constant map (e.g. an all-zero Grad-CAM of a random net) has no rank correlation.
      ok = np.isfinite(values) | (key.endswith('spearman') & np.isnan(values))
      if '/swapped_' in key:  # the control is undefined where the attack failed
        ok |= ~res['attacks/success'] & np.isnan(values)
      assert ok.all(), key
  assert np.isfinite(res['pairs/gbp_spearman']).all()
  summary = json.loads((smoke_run / 'summary.json').read_text())
  assert summary['num_examples'] == _NUM_IMAGES and summary['clean_accuracy'] == 1.0
  assert len(summary['claims']) == 7
  config = json.loads((smoke_run / 'config.json').read_text())
  assert config['fgsm_eps'] == pytest.approx(8 / 255) and config['cw_initial_const'] == 0.1
  text = (smoke_run / 'report.md').read_text()
  for verdict in ('holds', 'does not hold', 'partly holds', 'cannot be tested'):
    text = text.replace(f'**{verdict}**', '<verdict>')
  assert text.count('<verdict>') == 7  # every claim of the paper gets a verdict
  assert 'fill `mean`' in text and 'top 3 predicted classes' in text
  rows = catalog.get('001').headline(summary, config)
  assert [q for q, _, _ in rows] == ['GBP Sim-Ratio (mean)', 'GBP Avg-Diff 5-95 %',
                                     'EGBP Spearman clean vs C&W map',
                                     'EGBP recovery minus next best']
  assert rows[0][2] == summary['class_discriminative']['gbp']['sim_ratio']['mean']


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_report_numbers_are_recomputed_from_the_per_example_files(smoke_run):
  summary = json.loads((smoke_run / 'summary.json').read_text())
  text = (smoke_run / 'report.md').read_text()
  pairs = _csv(smoke_run / 'per_example_pairs.csv')
  assert len(pairs) == 3 * _NUM_IMAGES
  for name in ('gbp', 'egbp'):
    for stat in ('sim_ratio', 'avg_diff', 'spearman'):
      values = np.array([float(r[f'{name}_{stat}']) for r in pairs])
      st = summary['class_discriminative'][name][stat]
      np.testing.assert_allclose(st['mean'], values.mean(), rtol=1e-6)
      np.testing.assert_allclose(st['q95'], np.percentile(values, 95), rtol=1e-6)
      assert f"| {name.upper()} | {stat} | {st['mean']:.3f} |" in text
  maps = _csv(smoke_run / 'per_example_maps.csv')
  for attack in settings.ATTACKS:
    for method in _METHODS:
      rows = [r for r in maps if r['attack'] == attack and r['method'] == method]
      assert len(rows) == _NUM_IMAGES
      ok = [float(r['spearman']) for r in rows if r['success'] == 'True']
      got = summary['clean_vs_adversarial'][attack][method]['spearman']['success']
      if np.isfinite(ok).sum():
        np.testing.assert_allclose(got['mean'], np.nanmean(ok), rtol=1e-6)
        assert f"{got['mean']:.3f} [{got['ci_low']:.3f}, {got['ci_high']:.3f}]" in text
  recovery = _csv(smoke_run / 'per_example_recovery.csv')
  for ranking, curve in summary['recovery']['curves'].items():
    for p, mean in zip(summary['recovery']['grid'], curve['mean']):
      values = [r['correct'] == 'True' for r in recovery
                if r['ranking'] == ranking and float(r['percent']) == p]
      assert len(values) == summary['recovery']['num_images']
      np.testing.assert_allclose(mean, np.mean(values), rtol=1e-9)
  attacks = _csv(smoke_run / 'per_example_attacks.csv')
  for attack in settings.ATTACKS:
    rate = np.mean([r['success'] == 'True' for r in attacks if r['attack'] == attack])
    assert summary['attacks'][attack]['success_rate'] == pytest.approx(rate)


def test_report_tables_and_a_verdict_are_recomputed_from_the_npz(smoke_run):
  # From per_example.npz, not from tables(): a column-order slip in tables() fails here.
  npz = dict(np.load(smoke_run / 'per_example.npz'))
  summary = json.loads((smoke_run / 'summary.json').read_text())
  maps = _csv(smoke_run / 'per_example_maps.csv')
  assert len(maps) == _NUM_IMAGES * len(settings.ATTACKS) * len(_METHODS)
  row_of = {int(i): r for r, i in enumerate(npz['maps/index'])}
  for row in maps:
    i, a = row_of[int(row['index'])], settings.ATTACKS.index(row['attack'])
    for stat in ('spearman', 'adv_delta_share', 'l2_distance'):
      want = npz[f"maps/{row['method']}/{stat}"][i, a]
      np.testing.assert_allclose(float(row[stat]), want, rtol=1e-6, equal_nan=True)
    assert int(row['adv_pred']) == npz['attacks/adv_pred'][i, a]
  pairs = _csv(smoke_run / 'per_example_pairs.csv')
  for r, row in enumerate(pairs):
    i, p = divmod(r, 3)
    assert int(row['index']) == npz['pairs/index'][i]
    for col in ('gbp_sim_ratio', 'gradient_sim_ratio', 'egbp_margin_drop',
                'egbp_swapped_margin_drop', 'random_first_order_drop', 'egbp_below_fill'):
      np.testing.assert_allclose(float(row[col]), npz[f'pairs/{col}'][i, p], rtol=1e-6)
  # Mann-Whitney p-values and the Fig. 5 EGBP verdict, by scipy, from the npz.
  success = npz['attacks/success']
  sp = npz[f'maps/{GBP}/spearman']
  fin = np.isfinite(sp)
  assert min((fin & ~success).sum(), (fin & success).sum()) >= study_claims.MIN_GROUP
  mw = scipy.stats.mannwhitneyu(sp[fin & success], sp[fin & ~success], alternative='two-sided')
  cell = summary['failed_vs_successful']['all'][GBP]['spearman']['mann_whitney']
  np.testing.assert_allclose(cell['pvalue'], mw.pvalue, rtol=1e-6)
  np.testing.assert_allclose(cell['rank_biserial'],
                             2 * mw.statistic / (fin & success).sum() / (fin & ~success).sum()
                             - 1, rtol=1e-6)
  tested, hits = 0, 0
  for a, att in enumerate(settings.ATTACKS):
    sp = npz[f'maps/{settings.EGBP}/spearman'][:, a]
    share = npz[f'maps/{settings.EGBP}/adv_delta_share'][:, a]
    fin = np.isfinite(sp)
    f, ok = sp[fin & ~success[:, a]], sp[fin & success[:, a]]
    if min(len(f), len(ok)) < study_claims.MIN_GROUP:
      continue
    tested += 1
    mw = scipy.stats.mannwhitneyu(ok, f, alternative='two-sided')
    cell = summary['failed_vs_successful'][att][settings.EGBP]['spearman']['mann_whitney']
    np.testing.assert_allclose(cell['pvalue'], mw.pvalue, rtol=1e-6)
    lower = mw.pvalue < 0.05 and mw.statistic < len(f) * len(ok) / 2
    sf = share[np.isfinite(share) & ~success[:, a]]
    so = share[np.isfinite(share) & success[:, a]]
    toward = att == 'fgsm'
    if not toward and min(len(sf), len(so)) >= study_claims.MIN_GROUP:
      sh = scipy.stats.mannwhitneyu(so, sf, alternative='two-sided')
      toward = sh.pvalue < 0.05 and sh.statistic > len(sf) * len(so) / 2
    hits += lower and toward
  want = ('cannot be tested' if not tested else 'holds' if hits == tested else
          'partly holds' if hits else 'does not hold')
  claim = [c for c in summary['claims'] if c['text'].startswith('Enhanced GBP maps of succ')]
  assert claim[0]['verdict'] == want


@pytest.mark.parametrize('experiments,stages,untested', [
    (('class_discriminative',), ('pairs',), 4),
    (('recovery',), ('attacks', 'recovery'), 6),
    (('failed_vs_successful',), ('attacks', 'maps'), 4),
])
def test_a_subset_of_experiments_reports_the_rest_as_untested(smoke_run, experiments, stages,
                                                              untested):
  config = {**json.loads((smoke_run / 'config.json').read_text()),
            'experiments': list(experiments)}
  assert settings.stages(runner.config_from_json(settings.Config, config)) == stages
  res = {k: v for k, v in study.load_results(smoke_run).items() if k in stages}
  summary = study_summary.summarize(res, config)
  text = study_report.report_markdown(summary, config, figures=[])
  # The failed-vs-successful claims need >= 3 Adv_f images, which 6 images rarely give.
  assert text.count('**cannot be tested**') >= untested
  assert len(summary['claims']) == 7


def test_resume_after_interruption_gives_the_same_summary(setup, smoke_run, tmp_path):
  _, ckpt, data_dir = setup
  killed = tmp_path / 'killed'
  shutil.copytree(smoke_run, killed)
  # Killed in the middle: the second batch of two stages never landed, nor did the report.
  for stage in ('pairs', 'attacks'):
    store.shard_path(killed, stage, 4).unlink()
  (killed / 'summary.json').unlink()
  with pytest.raises(ValueError, match='resume'):
    study.run(_cfg(ckpt), output_dir=killed, data_dir=data_dir)
  with pytest.raises(ValueError, match=r'differs.*recovery_fill'):
    study.run(_cfg(ckpt, recovery_fill='blur'), output_dir=killed, data_dir=data_dir,
              resume=True)
  study.run(_cfg(ckpt), output_dir=killed, data_dir=data_dir, resume=True)
  config = json.loads((killed / 'config.json').read_text())
  resumed = study_summary.summarize(study.load_results(killed), config)
  resumed.pop('compute_seconds')
  assert json.loads(json.dumps(resumed)) == _summary_without_timings(smoke_run)


@pytest.mark.parametrize('kw,match', [
    ({'experiments': ('recovery', 'nonsense')}, 'experiments'),
    ({'methods': ('gradient', 'lime')}, 'methods'),
    ({'methods': ('gradient',)}, 'failed_vs_successful needs'),
    ({'pair_classes': 1}, 'pair_classes'),
    ({'pair_classes': 11}, 'pair_classes'),
    ({'fgsm_eps': -0.1}, 'fgsm_eps'),
    ({'cw_learning_rate': 0.0}, 'cw_learning_rate'),
    ({'recovery_grid': (0.0, 50.0, 25.0)}, 'recovery_grid'),
    ({'recovery_fill': 'clean'}, 'recovery_fill'),
    ({'num_examples': _NUM_IMAGES + 1}, 'num_examples'),
    ({'method_kwargs': {'smoothgradd': {}}}, 'method_kwargs'),
    ({'method_kwargs': {'smoothgrad': {'samples': 3}}}, 'method_kwargs'),
])
def test_bad_settings_fail_before_any_work(setup, tmp_path, kw, match):
  _, ckpt, data_dir = setup
  with pytest.raises(ValueError, match=match):
    study.run(_cfg(ckpt, **kw), output_dir=tmp_path / 'x', data_dir=data_dir)
  assert not (tmp_path / 'x').exists()


@pytest.mark.slow
def test_the_binary_rejects_a_bad_flag_at_start(tmp_path):
  proc = subprocess.run(
      [sys.executable, 'experiments/explain_adversarial.py', '--experiments=recovery,bogus',
       f'--output_dir={tmp_path / "x"}', '--checkpoint=/nonexistent'],
      cwd=_ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True, text=True,
      timeout=120)
  assert proc.returncode != 0
  assert 'experiments' in proc.stderr and 'bogus' in proc.stderr
  assert not (tmp_path / 'x').exists()


def test_budgets_default_per_dataset():
  cfg = settings.with_dataset_budgets(settings.Config(fgsm_eps=0.05), 'mnist')
  assert cfg.fgsm_eps == 0.05 and cfg.bim_eps == settings.BUDGETS['mnist']['bim_eps']
  cifar = settings.with_dataset_budgets(settings.Config(), 'cifar10')
  assert cifar.fgsm_eps == pytest.approx(8 / 255)
  with pytest.raises(ValueError, match='dataset'):
    settings.with_dataset_budgets(settings.Config(), 'svhn')


@pytest.mark.slow
def test_a_killed_binary_resumes_to_the_same_summary(setup, smoke_run, tmp_path):
  _, ckpt, data_dir = setup
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  cmd = [sys.executable, 'experiments/explain_adversarial.py', *_SMOKE_FLAGS,
         f'--checkpoint={ckpt}', f'--data_dir={data_dir}', f'--output_dir={tmp_path}']
  kill_when(cmd, lambda: bool(store.shard_files(tmp_path, 'maps')), cwd=_ROOT, env=env)
  assert store.shard_files(tmp_path, 'attacks') and not (tmp_path / 'report.md').exists()
  subprocess.run([*cmd, '--resume'], cwd=_ROOT, env=env, check=True, timeout=600)
  assert (json.loads((tmp_path / 'config.json').read_text())
          == json.loads((smoke_run / 'config.json').read_text()))
  assert _summary_without_timings(tmp_path) == _summary_without_timings(smoke_run)
  assert not list(tmp_path.rglob('*.tmp'))


@pytest.mark.slow
def test_cnn_mnist_smoke_run_on_real_data(data_dir, tmp_path):
  out = tmp_path / 'mnist'
  cfg = settings.Config(**{**_SMOKE, 'checkpoint': 'cnn_mnist', 'num_examples': 4})
  study.run(cfg, output_dir=out, data_dir=data_dir)
  study_report.finalize(out, data_dir=data_dir)
  config = json.loads((out / 'config.json').read_text())
  assert config['dataset'] == 'mnist'
  assert config['fgsm_eps'] == settings.BUDGETS['mnist']['fgsm_eps']
  res = dict(np.load(out / 'per_example.npz'))
  assert res['pairs/gbp_avg_diff'].shape == (4, 3)
  assert (out / 'figure3_maps.png').exists() and (out / 'report.md').exists()
