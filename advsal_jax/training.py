"""Supervised training of the registered classifiers (used by ``experiments/train.py``)."""

import dataclasses
import datetime
import importlib.metadata
import pathlib
import sys
import time
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from advsal_jax import checkpoints
from advsal_jax import compilation
from advsal_jax import data
from advsal_jax import models
from advsal_jax.studies import store

AUGMENTED_DATASETS = ('cifar10', 'cifar10_catdog')
"""The datasets whose training images get ``data.augment_cifar`` when ``augment`` is set."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyper-parameters of one training run (all recorded in the checkpoint metadata)."""
  model: str
  dataset: str
  epochs: int = 15
  batch_size: int = 128
  optimizer: str = 'sgd'
  learning_rate: float = 0.1
  schedule: str = 'onecycle'
  weight_decay: float = 5e-4
  label_smoothing: float = 0.0
  augment: bool = True
  seed: int = 0
  log_every: int = 100


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (Nesterov momentum 0.9) or Adam with decoupled weight decay and an LR schedule."""
  total = cfg.epochs * steps_per_epoch
  if cfg.schedule == 'onecycle':
    lr = optax.cosine_onecycle_schedule(total, cfg.learning_rate, pct_start=0.25)
  elif cfg.schedule == 'cosine':
    lr = optax.cosine_decay_schedule(cfg.learning_rate, total)
  elif cfg.schedule == 'constant':
    lr = optax.constant_schedule(cfg.learning_rate)
  else:
    raise ValueError(f'schedule must be onecycle, cosine or constant, got {cfg.schedule!r}.')
  if cfg.optimizer == 'sgd':
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.sgd(lr, momentum=0.9, nesterov=True))
  if cfg.optimizer == 'adam':
    return optax.adamw(lr, weight_decay=cfg.weight_decay)
  raise ValueError(f'optimizer must be sgd or adam, got {cfg.optimizer!r}.')


def init_state(cfg: TrainConfig, tx: optax.GradientTransformation) -> dict:
  """The training state pytree: variables, optimizer state and the step counter."""
  _, variables = models.init(cfg.model, jax.random.key(cfg.seed))
  return {'variables': variables, 'opt_state': tx.init(variables['params']),
          'step': jnp.zeros((), jnp.int32)}


def train_step(model: nn.Module, tx: optax.GradientTransformation, cfg: TrainConfig,
               state: dict, x: jax.Array, y: jax.Array) -> tuple[dict, dict]:
  """One optimisation step on ``x f32[B,H,W,C] in [0,1]``, ``y int32[B]``.

  Returns:
    ``(new_state, {'loss': f32[], 'accuracy': f32[]})``.
  """
  variables = state['variables']
  if cfg.augment and cfg.dataset in AUGMENTED_DATASETS:
    key = jax.random.fold_in(jax.random.key(cfg.seed), state['step'])
    x = data.augment_cifar(key, x)
  mutable = [k for k in variables if k != 'params']

  def loss_fn(params):
    logits, updates = model.apply({**variables, 'params': params}, x, train=True,
                                  mutable=mutable)
    targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), cfg.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      variables['params'])
  upd, opt_state = tx.update(grads, state['opt_state'], variables['params'])
  params = optax.apply_updates(variables['params'], upd)
  new_state = {'variables': {**variables, **updates, 'params': params},
               'opt_state': opt_state, 'step': state['step'] + 1}
  acc = (logits.argmax(-1) == y).mean()
  return new_state, {'loss': loss, 'accuracy': acc}


def evaluate(apply_fn, variables: Any, images: np.ndarray, labels: np.ndarray,
             *, batch_size: int = 1000) -> float:
  """Top-1 accuracy of ``apply_fn(variables, x)`` on uint8 ``images`` [N,H,W,C]."""
  predict = compilation.jit(lambda v, x: apply_fn(v, x).argmax(-1))
  correct = 0
  for x, y in data.batches(images, labels, batch_size):
    correct += int((np.asarray(predict(variables, x)) == y).sum())
  return correct / len(labels)


def _versions() -> dict:
  return {p: importlib.metadata.version(p)
          for p in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy')}


def train(cfg: TrainConfig, *, workdir: str, export_dir: str | None = None,
          data_dir: str | None = None, resume: bool = True) -> dict:
  """Trains ``cfg.model`` on ``cfg.dataset``; saves every epoch to ``workdir`` and resumes.

  Args:
    cfg: the run's hyper-parameters.
    workdir: where the per-epoch orbax checkpoints and ``config.json`` go.
    export_dir: if given, the final variables and ``metadata.json`` are written there
      (``checkpoints.save``).
    data_dir: offline data directory (see ``data.load``).
    resume: continue from the latest checkpoint in ``workdir`` if there is one.

  Returns:
    The metadata dict (test accuracy, timings, ...).
  """
  spec = models.get_spec(cfg.model)
  if spec.dataset != cfg.dataset:
    raise ValueError(f'model {cfg.model!r} is built for {spec.dataset!r}, not {cfg.dataset!r}.')
  train_ds = data.load(cfg.dataset, 'train', data_dir=data_dir)
  test_ds = data.load(cfg.dataset, 'test', data_dir=data_dir)
  steps_per_epoch = len(train_ds.labels) // cfg.batch_size
  tx = make_optimizer(cfg, steps_per_epoch)
  model = models.create(cfg.model)
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  store.write_json(workdir / 'config.json', dataclasses.asdict(cfg))
  mngr = checkpoints.manager(workdir / 'state', max_to_keep=2)
  state = init_state(cfg, tx)
  start_epoch = 0
  if resume and mngr.latest_step() is not None:
    start_epoch = mngr.latest_step()
    state = checkpoints.restore_state(mngr, jax.eval_shape(lambda: state))
    logging.info('Resumed from epoch %d in %s', start_epoch, workdir)
  step_fn = compilation.jit(lambda s, x, y: train_step(model, tx, cfg, s, x, y),
                            donate_argnums=0)
  total_steps = cfg.epochs * steps_per_epoch
  t_start, done_at_start = time.time(), start_epoch * steps_per_epoch
  test_acc = None
  for epoch in range(start_epoch, cfg.epochs):
    for i, (x, y) in enumerate(data.batches(train_ds.images, train_ds.labels, cfg.batch_size,
                                            seed=cfg.seed * 1000 + epoch, drop_remainder=True)):
      state, m = step_fn(state, x, y)
      if (i + 1) % cfg.log_every == 0 or i + 1 == steps_per_epoch:
        done = epoch * steps_per_epoch + i + 1
        rate = (done - done_at_start) * cfg.batch_size / (time.time() - t_start)
        eta = (total_steps - done) * cfg.batch_size / rate
        logging.info('epoch %d/%d step %d/%d loss %.4f acc %.3f %.0f img/s ETA %.1f min',
                     epoch + 1, cfg.epochs, i + 1, steps_per_epoch, float(m['loss']), float(m['accuracy']), rate,
                     eta / 60)
    test_acc = evaluate(model.apply, state['variables'], test_ds.images, test_ds.labels)
    logging.info('epoch %d/%d test accuracy %.4f', epoch + 1, cfg.epochs, test_acc)
    checkpoints.save_state(mngr, epoch + 1, state)
  if test_acc is None:
    test_acc = evaluate(model.apply, state['variables'], test_ds.images, test_ds.labels)
  variables = state['variables']
  metadata = {
      'model': cfg.model,
      'description': spec.description,
      'dataset': cfg.dataset,
      'test_accuracy': test_acc,
      'test_examples': int(len(test_ds.labels)),
      'param_count': models.param_count(variables),
      'forward_flops_per_image': models.forward_flops(cfg.model),
      'last_conv': spec.last_conv,
      'config': dataclasses.asdict(cfg),
      'command': ' '.join(['python'] + sys.argv),
      'data_source': 'tfds' if train_ds.source.startswith('tfds:') else 'official offline files',
      'data_sha256': {**data.checksums(cfg.dataset, 'train', data_dir=data_dir),
                      **data.checksums(cfg.dataset, 'test', data_dir=data_dir)},
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'versions': _versions(),
      'train_seconds_this_run': round(time.time() - t_start, 1),
  }
  if export_dir:
    checkpoints.save(export_dir, model_name=cfg.model, variables=variables, metadata=metadata,
                     step=cfg.epochs)
    logging.info('Exported %s (test accuracy %.4f) to %s', cfg.model, test_acc, export_dir)
  return metadata
