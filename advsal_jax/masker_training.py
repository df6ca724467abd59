"""Training the learnt-saliency masking model (used by ``experiments/train_masker.py``), and
the quality of its masks.

The masker of a committed classifier trains with Adam (cosine-decayed learning rate) on the
classifier's training split, with the true labels as the explained classes (as Dabkowski &
Gal). A run saves its state every ``checkpoint_every`` steps and resumes from the latest one:
batch order and alternative images are functions of the seed and the step, so a resumed run
follows the same path. ``train`` ends with ``evaluate_quality`` on held-out test images and
exports the decoder's parameters with ``checkpoints.save``.
"""

import dataclasses
import datetime
import functools
import importlib.metadata
import json
import pathlib
import sys
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from advsal_jax import _checks
from advsal_jax import checkpoints
from advsal_jax import compilation
from advsal_jax import data
from advsal_jax import models
from advsal_jax import saliency
from advsal_jax.types import ApplyFn, Params, PRNGKey

DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    'cnn_mnist': ('conv2', 'conv4'),
    'alexnet_cifar': ('conv1', 'conv2', 'conv5'),
    'alexnet_catdog': ('conv1', 'conv2', 'conv5'),
}
"""Classifier layers the masker reads, shallow to deep, per registered model."""

MIN_CROP_AREA = 0.05
"""Dabkowski & Gal's floor on the crop area in their saliency metric."""

QUALITY_CHECK_EXAMPLES = 64
"""The first test images whose quality figures the metadata also holds, for a quick re-check."""

BASELINES = ('gradient', 'guided_backprop')
"""Saliency methods whose maps, cut to the masks' area, the masks are compared with."""


@dataclasses.dataclass(frozen=True)
class MaskerConfig:
  """Settings of one masker training run (recorded in ``config.json`` and the metadata).

  Attributes:
    classifier: checkpoint name or directory of the classifier explained.
    layers: its layers read as features, shallow to deep; empty: ``DEFAULT_LAYERS``.
    width: channels of the decoder's convolutions.
    mask_downsample: the mask is predicted at 1/mask_downsample of the input resolution.
    steps: optimisation steps; 0: ``epochs`` epochs.
    epochs: epochs of the training split (used when ``steps`` is 0).
    batch_size: images per step.
    learning_rate: Adam's initial learning rate (cosine-decayed to 0).
    loss: the objective and its weights.
    seed: seed of initialisation, batch order and alternative images.
    checkpoint_every: steps between saved states.
    log_every: steps between progress lines.
    num_eval: held-out test images of the quality figures.
    eval_batch_size: images per compiled quality batch.
  """
  classifier: str
  layers: tuple[str, ...] = ()
  width: int = 32
  mask_downsample: int = 2
  steps: int = 0
  epochs: int = 0
  batch_size: int = 64
  learning_rate: float = 1e-3
  loss: saliency.MaskerLoss = saliency.MaskerLoss()
  seed: int = 0
  checkpoint_every: int = 200
  log_every: int = 50
  num_eval: int = 1000
  eval_batch_size: int = 100


def validate(cfg: MaskerConfig):
  """Raises ValueError naming the bad setting, before any data or checkpoint is read."""
  if (cfg.steps > 0) == (cfg.epochs > 0):
    raise ValueError(f'set exactly one of steps and epochs (> 0), got steps={cfg.steps}, '
                     f'epochs={cfg.epochs}.')
  for name in ('width', 'mask_downsample', 'batch_size', 'checkpoint_every', 'log_every',
               'num_eval', 'eval_batch_size'):
    _checks.check_count(getattr(cfg, name), name)
  if not cfg.learning_rate > 0:
    raise ValueError(f'learning_rate must be > 0, got {cfg.learning_rate}.')
  if not isinstance(cfg.loss, saliency.MaskerLoss):
    raise TypeError(f'loss must be a saliency.MaskerLoss, got {type(cfg.loss).__name__}.')


def make_optimizer(cfg: MaskerConfig, total_steps: int) -> optax.GradientTransformation:
  """Adam with the learning rate cosine-decayed from ``cfg.learning_rate`` to 0."""
  return optax.adam(optax.cosine_decay_schedule(cfg.learning_rate, total_steps))


def train_step(masker: saliency.Masker, tx: optax.GradientTransformation,
               loss: saliency.MaskerLoss, classifier_vars: Params, state: dict,
               x: jax.Array, y: jax.Array, key: PRNGKey) -> tuple[dict, dict]:
  """One optimisation step of the decoder on ``x f32[B,H,W,C] in [0,1]``, classes ``y i32[B]``.

  Args:
    masker: the masking model.
    tx: the optimizer.
    loss: the objective.
    classifier_vars: the frozen classifier's variables.
    state: ``{'params': decoder parameters, 'opt_state', 'step': i32[]}``.
    x: training images.
    y: their classes.
    key: the run's key; the step's alternative images use ``fold_in(key, step)``.

  Returns:
    ``(new_state, metrics)``: the loss and ``masker_loss``'s terms, f32[] each.
  """
  alt = saliency.alternative_images(jax.random.fold_in(key, state['step']), x)
  classify = lambda v, images: masker.apply(v, images, method='classify')

  def loss_fn(params):
    variables = saliency.attach_classifier(params, classifier_vars)
    mask = masker.apply(variables, x, y)
    return saliency.masker_loss(classify, variables, x, mask, y, alt, loss=loss)

  (value, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  new_state = {'params': optax.apply_updates(state['params'], updates),
               'opt_state': opt_state, 'step': state['step'] + 1}
  return new_state, {'loss': value, **terms}


def _top_pixels(maps: jax.Array, count: jax.Array) -> jax.Array:
  """f32[B,H,W] in {0, 1}: the ``count[b]`` largest pixels of each map (ties: row-major first)."""
  b = maps.shape[0]
  order = jnp.argsort(-maps.reshape(b, -1), axis=1, stable=True)
  ranks = jax.vmap(lambda o: jnp.zeros_like(o).at[o].set(jnp.arange(o.size)))(order)
  return (ranks < count[:, None]).astype(jnp.float32).reshape(maps.shape)


def _bounding_boxes(sets: jax.Array) -> jax.Array:
  """i32[B,4] ``(y0, y1, x0, x1)``, half-open, of the non-zero pixels of each f32[B,H,W] set."""
  rows, cols = sets.max(axis=2) > 0, sets.max(axis=1) > 0
  first = lambda a: jnp.argmax(a, axis=1)
  return jnp.stack([first(rows), rows.shape[1] - first(rows[:, ::-1]),
                    first(cols), cols.shape[1] - first(cols[:, ::-1])], axis=1)


def _resize_span(img: jax.Array, start: jax.Array, stop: jax.Array, size: int,
                 axis: int) -> jax.Array:
  """Bilinear resize of ``img``'s index span [start, stop) along ``axis`` to ``size`` samples.

  Half-pixel centres; samples past the span's ends take its edge values, so pixels outside
  the span never enter (the crop is resized, not a window of the whole image).
  """
  src = start + (jnp.arange(size) + 0.5) * (stop - start) / size - 0.5
  src = jnp.clip(src, start, stop - 1)
  lo = jnp.floor(src).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, stop - 1)
  shape = [1] * img.ndim
  shape[axis] = size
  weight = (src - lo).reshape(shape)
  return jnp.take(img, lo, axis=axis) * (1 - weight) + jnp.take(img, hi, axis=axis) * weight


def _crop_and_resize(x: jax.Array, boxes: jax.Array) -> jax.Array:
  """Each image's box ``(y0, y1, x0, x1)`` cropped and resized bilinearly to H x W (edge mode)."""
  _, h, w, _ = x.shape

  def one(img, box):
    return _resize_span(_resize_span(img, box[0], box[1], h, 0), box[2], box[3], w, 1)

  return jax.vmap(one)(x, boxes)


def _quality_batch(mask_fn: Callable[..., jax.Array], classify_fn: ApplyFn, params: Params,
                   x: jax.Array, y: jax.Array, keys: jax.Array) -> dict[str, jax.Array]:
  """Per-example quality figures of one batch (see ``evaluate_quality``)."""
  b, h, w, _ = x.shape
  k_alt, k_roll = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
  mask = mask_fn(params, x, y)
  alt = saliency.alternative_images(k_alt, x)

  def correct(*images):
    preds = classify_fn(params, jnp.concatenate(images)).argmax(-1)
    return list((preds == jnp.tile(y, len(images))).astype(jnp.float32).reshape(-1, b))

  def roll(a):  # Same shape and area, a random place (circular shift).
    shifts = jax.vmap(lambda k: jax.random.randint(k, (2,), 0, jnp.array([h, w])))(k_roll)
    return jax.vmap(lambda m, s: jnp.roll(m, s, axis=(0, 1)))(a, shifts)

  maps = {'learnt': mask[..., 0]}
  for name in BASELINES:
    maps[name] = saliency.to_heatmap(saliency.explain(name, classify_fn, params, x, y))
  count = jnp.maximum(1, jnp.sum(mask[..., 0] >= 0.5, axis=(1, 2)))
  sets = {name: _top_pixels(m, count) for name, m in maps.items()}
  boxes = {name: _bounding_boxes(s) for name, s in sets.items()}
  crops = jnp.concatenate([_crop_and_resize(x, boxes[n]) for n in maps])
  log_p = jax.nn.log_softmax(classify_fn(params, crops))
  log_p = jnp.take_along_axis(log_p, jnp.tile(y, len(maps))[:, None], 1)[:, 0].reshape(-1, b)
  out = {'area': mask.mean(axis=(1, 2, 3)), 'salient_area': count / (h * w)}
  for i, name in enumerate(maps):
    box = boxes[name]
    area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2]) / (h * w)
    out[f'saliency_metric/{name}'] = jnp.log(jnp.maximum(area, MIN_CROP_AREA)) - log_p[i]
  sets['random'] = roll(sets['learnt'])
  out['clean'], out['alternative'], out['preserved'], out['destroyed'], out['random'] = correct(
      x, alt, saliency.phi(x, mask, alt), saliency.phi(x, 1 - mask, alt),
      saliency.phi(x, roll(mask), alt))
  kept = correct(*[saliency.phi(x, s[..., None], alt) for s in sets.values()])
  removed = correct(*[saliency.phi(x, 1 - s[..., None], alt) for s in sets.values()])
  for i, name in enumerate(sets):
    out[f'top_preserved/{name}'], out[f'top_destroyed/{name}'] = kept[i], removed[i]
  return out


def evaluate_quality(mask_fn: Callable[..., jax.Array], classify_fn: ApplyFn, params: Params,
                     x: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *, key: PRNGKey,
                     batch_size: int = 100) -> dict[str, Any]:
  """How well masks keep and remove the evidence for the true class, against baselines.

  Soft masks ``m``: the classifier's accuracy on ``Phi(x, m)`` (preserved), ``Phi(x, 1 - m)``
  (destroyed) and ``Phi(x, m')`` with ``m'`` the mask circularly shifted by a random offset
  (the same shape and area in a random place); ``Phi`` uses ``saliency.alternative_images``.
  Same-area pixel sets: ``k = max(1, #{m >= 0.5})`` top pixels of the mask, of the gradient
  and of the Guided Backprop heatmap (abs-sum over channels) of the true class, and the
  mask's set shifted at random; for each, accuracy with only the set kept and with it removed
  (``Phi`` with the binary set), and (but for the shifted set) the saliency metric of
  Dabkowski & Gal, ``log(max(a, 0.05)) - log p_c(crop)``: the tightest box around the set,
  of area fraction ``a``, cropped and resized bilinearly (edge mode) to the image size (lower
  is better).
  Example ``i`` draws its alternative image and shift from ``fold_in(key, i)``, so figures on
  the first ``n`` images do not depend on ``batch_size`` or on later images.

  Args:
    mask_fn: ``mask_fn(params, x, target) -> f32[B,H,W,1]`` in [0, 1] (e.g. ``Masker.apply``).
    classify_fn: ``classify_fn(params, x) -> logits f32[B,K]``, the classifier explained.
    params: the variables both take.
    x: f32[N,H,W,C] held-out images in [0, 1].
    labels: i32[N] their true classes.
    key: PRNG key of the alternative images and random shifts.
    batch_size: images per compiled batch (the last batch is padded).

  Returns:
    Means over the N images: 'examples' (N), 'clean_accuracy', 'alternative_accuracy' (on
    the alternative images alone, ``Phi(x, 0)``: what no mask can destroy), 'mean_mask_area',
    'preserved_accuracy', 'destroyed_accuracy', 'random_mask_accuracy',
    'mean_salient_area' (``k / (H W)``), and per method name 'saliency_metric',
    'top_area_preserved_accuracy', 'top_area_destroyed_accuracy' ('learnt', 'gradient',
    'guided_backprop', and 'random' for the two accuracies).

  Raises:
    ValueError, TypeError: malformed ``x``/``labels`` or ``batch_size``.

  References:
    Dabkowski & Gal, Real Time Image Saliency for Black Box Classifiers, arXiv:1705.07857.
  """
  _checks.check_count(batch_size, 'batch_size')
  _checks.check_classifier_inputs(classify_fn, params, x, labels, name='labels')
  x, labels = np.asarray(x, np.float32), np.asarray(labels, np.int32)
  n = len(labels)
  run = compilation.jit(functools.partial(_quality_batch, mask_fn, classify_fn))
  size = min(batch_size, n)
  parts: dict[str, list[np.ndarray]] = {}
  for start in range(0, n, size):
    idx = np.minimum(np.arange(start, start + size), n - 1)  # Pads with the last image.
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(idx))
    res = run(params, x[idx], labels[idx], keys)
    for name, values in res.items():
      parts.setdefault(name, []).append(np.asarray(values)[:min(size, n - start)])
  mean = {k: float(np.concatenate(v).astype(np.float64).mean()) for k, v in parts.items()}
  group = lambda prefix: {k.split('/')[1]: v for k, v in mean.items() if k.startswith(prefix)}
  return {
      'examples': n, 'clean_accuracy': mean['clean'],
      'alternative_accuracy': mean['alternative'], 'mean_mask_area': mean['area'],
      'preserved_accuracy': mean['preserved'], 'destroyed_accuracy': mean['destroyed'],
      'random_mask_accuracy': mean['random'], 'mean_salient_area': mean['salient_area'],
      'saliency_metric': group('saliency_metric/'),
      'top_area_preserved_accuracy': group('top_preserved/'),
      'top_area_destroyed_accuracy': group('top_destroyed/'),
  }


def masker_quality(masker: saliency.Masker, variables: Params, x: jax.typing.ArrayLike,
                   labels: jax.typing.ArrayLike, *, key: PRNGKey,
                   batch_size: int = 100) -> dict[str, Any]:
  """``evaluate_quality`` of a ``Masker`` and its variables (mask_fn ``masker.apply``)."""
  classify = lambda v, images: masker.apply(v, images, method='classify')
  return evaluate_quality(masker.apply, classify, variables, x, labels, key=key,
                          batch_size=batch_size)


def quality_key(metadata: dict) -> PRNGKey:
  """The PRNG key of a masker checkpoint's quality figures."""
  return jax.random.key(metadata['quality_seed'])


def _images_per_second(masker: saliency.Masker, variables: Params, x: np.ndarray) -> float:
  """Masks per second of one compiled ``learnt_saliency`` call on the batch ``x`` (median of 3)."""
  fn = compilation.jit(functools.partial(saliency.learnt_saliency, masker.apply))
  target = np.zeros(len(x), np.int32)
  fn(variables, x, target).block_until_ready()
  times = []
  for _ in range(3):
    start = time.perf_counter()
    fn(variables, x, target).block_until_ready()
    times.append(time.perf_counter() - start)
  return len(x) / float(np.median(times))


def _versions() -> dict:
  return {p: importlib.metadata.version(p)
          for p in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy')}


def _config_json(cfg: MaskerConfig, layers: tuple[str, ...]) -> dict:
  return {**dataclasses.asdict(cfg), 'layers': list(layers)}


def train(cfg: MaskerConfig, *, workdir: str, export_dir: str | None = None,
          data_dir: str | None = None) -> dict:
  """Trains a masker for ``cfg.classifier``; saves to ``workdir`` and resumes from it.

  Args:
    cfg: the run's settings.
    workdir: where ``config.json`` and the orbax states go. A workdir holding a run with
      other settings is refused.
    export_dir: if given, the decoder's parameters and ``metadata.json`` are written there
      (``checkpoints.save``; load with ``saliency.load_masker``).
    data_dir: offline data directory (see ``data.load``).

  Returns:
    The metadata dict (quality figures, timings, ...).

  Raises:
    ValueError: bad settings, a classifier without default layers and no ``cfg.layers``, a
      workdir of another run.
  """
  validate(cfg)
  classifier, classifier_vars, classifier_meta = checkpoints.load(cfg.classifier)
  model_name, dataset = classifier_meta['model'], models.get_spec(classifier_meta['model']).dataset
  layers = tuple(cfg.layers) or DEFAULT_LAYERS.get(model_name, ())
  if not layers:
    raise ValueError(f'layers: no default layers for model {model_name!r} (defaults exist for '
                     f'{sorted(DEFAULT_LAYERS)}); name its layers, shallow to deep.')
  masker = saliency.Masker(classifier, layers, width=cfg.width,
                           mask_downsample=cfg.mask_downsample)
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  config_file = workdir / 'config.json'
  config = _config_json(cfg, layers)
  if config_file.exists() and json.loads(config_file.read_text()) != config:
    raise ValueError(f'workdir {workdir} holds a run with other settings ({config_file}); '
                     'use another workdir or the same settings.')
  config_file.write_text(json.dumps(config, indent=2) + '\n')

  train_ds = data.load(dataset, 'train', data_dir=data_dir)
  test_ds = data.load(dataset, 'test', data_dir=data_dir)
  n = len(train_ds.labels)
  steps_per_epoch = n // cfg.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size must be <= the training split ({n}), got {cfg.batch_size}.')
  total = cfg.steps or cfg.epochs * steps_per_epoch
  tx = make_optimizer(cfg, total)
  init_key, train_key = jax.random.split(jax.random.key(cfg.seed))
  example = data.to_float(train_ds.images[:1])
  variables = saliency.init_masker(masker, classifier_vars, example, key=init_key)
  params = saliency.decoder_params(variables)
  state = {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
  mngr = checkpoints.manager(workdir / 'state', max_to_keep=2)
  if mngr.latest_step() is not None:
    state = checkpoints.restore_state(mngr, jax.eval_shape(lambda: state))
    logging.info('Resumed from step %d in %s', int(state['step']), workdir)
  step_fn = compilation.jit(functools.partial(train_step, masker, tx, cfg.loss),
                            donate_argnums=1)
  step, start_step, t_start, order = int(state['step']), int(state['step']), time.time(), None
  while step < total:
    epoch, i = divmod(step, steps_per_epoch)
    if i == 0 or order is None:
      order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
    idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
    state, m = step_fn(classifier_vars, state, data.to_float(train_ds.images[idx]),
                       train_ds.labels[idx].astype(np.int32), train_key)
    step += 1
    if step % cfg.log_every == 0 or step == total:
      rate = (step - start_step) * cfg.batch_size / (time.time() - t_start)
      logging.info('step %d/%d loss %.4f area %.3f p(preserved) %.3f p(destroyed) %.3f '
                   '%.0f img/s ETA %.1f min', step, total, float(m['loss']), float(m['area']),
                   float(m['preserved_prob']), float(m['destroyed_prob']), rate,
                   (total - step) * cfg.batch_size / rate / 60)
    if step % cfg.checkpoint_every == 0 or step == total:
      checkpoints.save_state(mngr, step, state)
  train_seconds = time.time() - t_start

  variables = saliency.attach_classifier(state['params'], classifier_vars)
  quality_seed = cfg.seed
  x_test = data.to_float(test_ds.images[:cfg.num_eval])
  y_test = test_ds.labels[:cfg.num_eval].astype(np.int32)
  t_eval = time.time()
  quality = masker_quality(masker, variables, x_test, y_test,
                           key=jax.random.key(quality_seed), batch_size=cfg.eval_batch_size)
  check_n = min(QUALITY_CHECK_EXAMPLES, cfg.num_eval)
  quality_check = masker_quality(masker, variables, x_test[:check_n], y_test[:check_n],
                                 key=jax.random.key(quality_seed),
                                 batch_size=cfg.eval_batch_size)
  logging.info('Quality on %d test images (%.0f s): %s', quality['examples'],
               time.time() - t_eval, json.dumps(quality))
  decoder = state['params']
  metadata = {
      'kind': 'masker',
      'description': (f'learnt saliency masking model (Dabkowski & Gal, {cfg.loss.form} loss) '
                      f'of classifier {cfg.classifier!r}'),
      'classifier': cfg.classifier,
      'classifier_checkpoint': {k: classifier_meta.get(k)
                                for k in ('model', 'date', 'step', 'test_accuracy')},
      'dataset': dataset,
      'masker': {'layers': list(layers), 'width': cfg.width,
                 'mask_downsample': cfg.mask_downsample},
      'decoder_param_count': sum(int(np.prod(p.shape)) for p in jax.tree.leaves(decoder)),
      'config': config,
      'command': ' '.join(['python'] + sys.argv),
      'data_source': 'tfds' if train_ds.source.startswith('tfds:') else 'official offline files',
      'data_sha256': {**data.checksums(dataset, 'train', data_dir=data_dir),
                      **data.checksums(dataset, 'test', data_dir=data_dir)},
      'quality_seed': quality_seed,
      'quality': quality,
      'quality_check': quality_check,
      'masks_per_second': {
          'backend': jax.default_backend(), 'batch': min(500, len(x_test)),
          'value': _images_per_second(masker, variables, x_test[:500])},
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'versions': _versions(),
      'train_steps': total,
      'train_seconds_this_run': round(train_seconds, 1),
  }
  if export_dir:
    checkpoints.save(export_dir, model_name=model_name, variables=decoder, metadata=metadata,
                     step=total)
    logging.info('Exported the masker of %s to %s', cfg.classifier, export_dir)
  return metadata
