"""Tests of advsal_jax.masker_training: the quality figures in closed form on a toy, their
helpers against numpy/skimage, a short training that puts the mask on the one informative
square, settings checks, the binary killed and resumed, and the committed maskers."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.transform

from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import masker_training
from advsal_jax import models
from advsal_jax import saliency

from testing_utils import random_study_checkpoint, write_official_cifar

_ROOT = pathlib.Path(__file__).resolve().parent.parent
SIZE, SIDE, SCALE = 16, 4, 8.0


class _Centred(nn.Module):
  """The image minus 0.5 (a layer for the masker's skip connection)."""

  def __call__(self, x):
    return x - 0.5


class _Box(nn.Module):
  """Means of (x - 0.5) over every SIDE x SIDE window (VALID) and their negatives: [B,h,w,2]."""

  def __call__(self, centred):
    f = jax.lax.reduce_window(centred, 0.0, jax.lax.add, (1, SIDE, SIDE, 1), (1, 1, 1, 1),
                              'VALID') / SIDE**2
    return jnp.concatenate([-f, f], axis=-1)


class SquareNet(nn.Module):
  """Class 1 if the image has a bright SIDE x SIDE square, class 0 if a dark one.

  ``logits[k] = SCALE * max over windows of feature k`` (0: darkest window, 1: brightest), so
  the target logit's gradient is SCALE / SIDE**2 on the square's pixels and 0 elsewhere.
  """

  @nn.compact
  def __call__(self, x):
    return SCALE * _Box(name='features')(_Centred(name='pixels')(x)).max(axis=(1, 2))


def _toy(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Images f32[n,16,16,1] (background uniform in [0.3, 0.7], one square of 1 or 0 at a random
  place), labels (1: bright square) and the squares as masks f32[n,16,16,1]."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.3, 0.7, (n, SIZE, SIZE, 1)).astype(np.float32)
  labels = rng.integers(0, 2, n).astype(np.int32)
  squares = np.zeros_like(x)
  for i, (r, c) in enumerate(rng.integers(0, SIZE - SIDE + 1, (n, 2))):
    x[i, r:r + SIDE, c:c + SIDE] = labels[i]
    squares[i, r:r + SIDE, c:c + SIDE] = 1.0
  return x, labels, squares


def _oracle(params, x, target):
  """The square itself as the mask (its pixels are exactly 0 or 1, the background is not)."""
  del params, target
  return ((x == 0.0) | (x == 1.0)).astype(jnp.float32)


def test_quality_of_the_square_mask_in_closed_form():
  x, labels, squares = _toy(0, 10)
  net = SquareNet()
  params = net.init(jax.random.key(0), x[:1])
  q = masker_training.evaluate_quality(_oracle, net.apply, params, x, labels,
                                       key=jax.random.key(1), batch_size=4)
  area = SIDE**2 / SIZE**2
  assert q['examples'] == 10 and q['clean_accuracy'] == 1.0
  np.testing.assert_allclose([q['mean_mask_area'], q['mean_salient_area']], [area, area],
                             rtol=1e-6)
  # Kept alone, the square decides the class; alternatives replace a background whose windows
  # never reach the square's |mean - 0.5| = 0.5.
  assert q['preserved_accuracy'] == 1.0
  assert q['top_area_preserved_accuracy']['learnt'] == 1.0
  # Each map's top 16 pixels are the square (the gradient's only non-zero pixels); the crop
  # is the square resized: a constant image whose windows all give +-0.5, so p_c =
  # sigmoid(SCALE) and the metric is log(1/16) + log(1 + exp(-SCALE)).
  want = np.log(area) + np.log1p(np.exp(-SCALE))
  for name in ('learnt', 'gradient', 'guided_backprop'):
    np.testing.assert_allclose(q['saliency_metric'][name], want, rtol=1e-5)
  assert set(q['top_area_destroyed_accuracy']) == {'learnt', 'gradient', 'guided_backprop',
                                                   'random'}
  for value in (q['destroyed_accuracy'], q['random_mask_accuracy'],
                q['alternative_accuracy'], *q['top_area_destroyed_accuracy'].values()):
    assert 0.0 <= value <= 1.0
  # Example i draws from fold_in(key, i): the figures do not depend on the batch size.
  again = masker_training.evaluate_quality(_oracle, net.apply, params, x, labels,
                                           key=jax.random.key(1), batch_size=10)
  assert again == q


def test_top_pixels_and_boxes_against_numpy():
  rng = np.random.default_rng(0)
  maps = rng.integers(0, 4, (5, 6, 7)).astype(np.float32)  # many ties
  count = np.array([1, 3, 10, 42, 0])
  got = np.asarray(masker_training._top_pixels(jnp.asarray(maps), jnp.asarray(count)))
  for b in range(5):
    order = np.argsort(-maps[b].ravel(), kind='stable')
    want = np.zeros(maps[b].size)
    want[order[:count[b]]] = 1
    np.testing.assert_array_equal(got[b].ravel(), want)
  boxes = np.asarray(masker_training._bounding_boxes(jnp.asarray(got[:4])))
  for b in range(4):
    rows, cols = np.nonzero(got[b])
    np.testing.assert_array_equal(boxes[b], [rows.min(), rows.max() + 1, cols.min(),
                                             cols.max() + 1])


def test_crops_equal_skimage_bilinear_resize():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(3, 12, 10, 3)).astype(np.float32)
  boxes = np.array([[0, 12, 0, 10], [2, 5, 3, 9], [7, 8, 4, 5]], np.int32)
  got = np.asarray(masker_training._crop_and_resize(jnp.asarray(x), jnp.asarray(boxes)))
  for b, (y0, y1, x0, x1) in enumerate(boxes):
    want = skimage.transform.resize(np.float64(x[b, y0:y1, x0:x1]), (12, 10, 3), order=1,
                                    mode='edge', anti_aliasing=False)
    np.testing.assert_allclose(got[b], want, atol=1e-5)


@pytest.mark.parametrize('loss', [saliency.MaskerLoss(), saliency.MaskerLoss(form='margin')],
                         ids=['paper', 'margin'])
def test_short_training_puts_the_mask_on_the_informative_square(loss):
  net = SquareNet()
  masker = saliency.Masker(net, ('pixels', 'features'), width=16, mask_downsample=1)
  x, labels, _ = _toy(1, 512)
  variables = saliency.init_masker(masker, {}, x[:1], key=jax.random.key(0))
  cfg = masker_training.MaskerConfig(classifier='toy', steps=300, learning_rate=3e-3,
                                     loss=loss)
  tx = masker_training.make_optimizer(cfg, cfg.steps)
  params = saliency.decoder_params(variables)
  state = {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
  step = jax.jit(lambda s, xb, yb: masker_training.train_step(
      masker, tx, loss, {}, s, xb, yb, jax.random.key(1)))
  losses = []
  for i in range(cfg.steps):
    idx = np.arange(i * 32, (i + 1) * 32) % len(labels)
    state, metrics = step(state, x[idx], labels[idx])
    losses.append(float(metrics['loss']))
  assert np.mean(losses[-20:]) < np.mean(losses[:20])
  test_x, test_labels, squares = _toy(2, 64)  # unseen images
  mask = np.asarray(saliency.learnt_saliency(
      masker.apply, saliency.attach_classifier(state['params'], {}), test_x, test_labels))
  inside = (mask * squares).sum() / squares.sum()
  outside = (mask * (1 - squares)).sum() / (1 - squares).sum()
  assert inside > 0.8 and outside < 0.05, (inside, outside)
  # The mask's 16 top pixels find the square (intersection over union).
  top = np.asarray(masker_training._top_pixels(jnp.asarray(mask[..., 0]),
                                               jnp.full((64,), SIDE**2)))
  iou = (top * squares[..., 0]).sum((1, 2)) / np.maximum(top, squares[..., 0]).sum((1, 2))
  assert np.median(iou) > 0.7, iou


@pytest.mark.parametrize('changes,match', [
    ({}, 'exactly one of steps and epochs'),
    ({'steps': 3, 'epochs': 1}, 'exactly one of steps and epochs'),
    ({'steps': 3, 'batch_size': 0}, 'batch_size must be >= 1'),
    ({'steps': 3, 'learning_rate': 0.0}, 'learning_rate must be > 0'),
    ({'steps': 3, 'mask_downsample': 1.5}, 'mask_downsample must be a Python int'),
])
def test_bad_settings(changes, match):
  cfg = masker_training.MaskerConfig(classifier='cnn_mnist', **changes)
  with pytest.raises((ValueError, TypeError), match=match):
    masker_training.validate(cfg)


def test_default_layers_exist_in_their_models():
  for name, layers in masker_training.DEFAULT_LAYERS.items():
    shape = models.get_spec(name).input_shape
    model = models.create(name)
    masker = saliency.Masker(model, layers)
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    target = jax.ShapeDtypeStruct((1,), jnp.int32)
    mask = jax.eval_shape(lambda xx, t: masker.apply(masker.init(jax.random.key(0), xx, t),
                                                     xx, t), x, target)
    assert mask.shape == (1, *shape[:2], 1)


def _binary(ckpt, data_dir, workdir, export, *extra):
  return [sys.executable, 'experiments/train_masker.py', f'--classifier={ckpt}',
          f'--data_dir={data_dir}', f'--workdir={workdir}', f'--export_dir={export}',
          '--steps=40', '--batch_size=4', '--checkpoint_every=5', '--log_every=5',
          '--num_eval=6', '--width=8', *extra]


@pytest.mark.slow
def test_binary_killed_mid_run_resumes_to_the_same_masker(tmp_path):
  root = tmp_path
  root, ckpt, data_dir = random_study_checkpoint(root)
  # More training images than the study helper writes: 5 x 8 (10 steps per epoch).
  (pathlib.Path(data_dir) / 'cifar10').rename(root / 'small_cifar')
  write_official_cifar(pathlib.Path(data_dir), np.random.default_rng(1), per_batch=8)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  whole = subprocess.run(_binary(ckpt, data_dir, root / 'w1', root / 'e1'), cwd=_ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
  assert whole.returncode == 0, whole.stderr[-4000:]
  child = subprocess.Popen(_binary(ckpt, data_dir, root / 'w2', root / 'e2'), cwd=_ROOT,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = root / 'w2' / 'state' / '5'
  deadline = time.time() + 600
  while not first.exists() and child.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert child.poll() is None, 'the run ended before it could be killed'
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert not (root / 'e2').exists()
  resumed = subprocess.run(_binary(ckpt, data_dir, root / 'w2', root / 'e2'), cwd=_ROOT,
                           env=env, capture_output=True, text=True, timeout=900)
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  assert 'Resumed from step' in resumed.stderr
  m1, v1, meta1 = saliency.load_masker(str(root / 'e1'))
  _, v2, meta2 = saliency.load_masker(str(root / 'e2'))
  jax.tree.map(np.testing.assert_array_equal, v1, v2)
  assert meta1['quality'] == meta2['quality'] and meta1['kind'] == 'masker'
  # The exported figures are what evaluate_quality gives on the same test images.
  test = data.load('cifar10', 'test', data_dir=data_dir)
  q = masker_training.masker_quality(m1, v1, data.to_float(test.images[:6]), test.labels[:6],
                                     key=masker_training.quality_key(meta1))
  assert q == meta1['quality']
  # Other settings in the same workdir are refused; both of --steps and --epochs too.
  other = subprocess.run(_binary(ckpt, data_dir, root / 'w2', root / 'e3', '--lr=0.01'),
                         cwd=_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert other.returncode != 0 and 'other settings' in other.stderr
  both = subprocess.run(_binary(ckpt, data_dir, root / 'w4', root / 'e4', '--epochs=1'),
                        cwd=_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert both.returncode != 0 and 'exactly one of steps and epochs' in both.stderr
  assert not (root / 'w4').exists()


@pytest.mark.parametrize('name', ['masker_cnn_mnist', 'masker_alexnet_cifar',
                                  'masker_alexnet_catdog'])
def test_committed_masker_reproduces_its_quality_check(name, data_dir):
  masker, variables, meta = saliency.load_masker(name)
  assert meta['kind'] == 'masker' and meta['classifier'] == meta['model']
  test = data.load(meta['dataset'], 'test', data_dir=data_dir)
  want = meta['quality_check']
  n = want['examples']
  got = masker_training.masker_quality(masker, variables, data.to_float(test.images[:n]),
                                       test.labels[:n], key=masker_training.quality_key(meta))
  flat = lambda q: {f'{k}/{j}': w for k, v in q.items()
                    for j, w in (v.items() if isinstance(v, dict) else [('', v)])}
  got, want = flat(got), flat(want)
  assert got.keys() == want.keys()
  for k in got:  # One image's decision may flip with float rounding on another machine.
    np.testing.assert_allclose(got[k], want[k], atol=1.01 / n, err_msg=k)
  assert checkpoints.resolve(name).is_dir()
