"""One optimizer step of the library's three training loops, as the training workloads.

* ``train_classifier``: ``training.train_step`` of the benchmark's model from its weights:
  SGD with Nesterov momentum and weight decay under the one-cycle schedule
  (``training.make_optimizer``), CIFAR augmentation (random crop and flip) inside the step,
  BatchNorm in training mode, at ``TrainConfig``'s batch; the labels are the model's
  predictions.
* ``train_masker``: ``masker_training.train_step`` of a fresh masking model
  (``masker_training.DEFAULT_LAYERS``) over the benchmark's classifier: Adam under the cosine
  schedule, the paper's loss, alternative images drawn inside the step, at ``MaskerConfig``'s
  batch.
* ``train_detector``: one step of ``detection.train_detector`` (one epoch of one batch,
  traced into one program; the library's loop runs the same ``_train_step`` compiled once
  per step) of a fresh two-class detector with the classifier's architecture, Adam at study
  003's ``detector_lr`` and ``detector_batch_size``, on the batch's images as detector inputs
  (the 'id' kind; SPD's have the same shape) with random clean/adversarial labels.

A step's work does not depend on the values of the weights or inputs, and the learning-rate
schedules run over ``SCHEDULE_STEPS`` steps (they set the rate only). The batch's images are
repeated to fill a larger step. Each job's ``stage`` also times its step with
``optax.set_to_zero()`` as the optimizer: XLA then drops the gradient, so that step is the
forward pass with the step's input work (augmentation, alternative images); the rest of the
full step is the backward pass and the update. The PyTorch steps are ``torch_training``.
"""

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advsal_jax import detection
from advsal_jax import masker_training
from advsal_jax import models
from advsal_jax import saliency
from advsal_jax import training
from advsal_jax.benchmarks import config
from advsal_jax.benchmarks import workloads
from advsal_jax.studies import detect_adversarial

SCHEDULE_STEPS = 10_000
"""Length of the learning-rate schedules of the timed steps (both frameworks)."""

StepFactory = Callable[[optax.GradientTransformation], tuple[Callable[..., Any], tuple[Any, ...]]]
"""``optimizer -> (step fn, its arguments)``."""


def fill(x: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  """The first ``n`` of ``x`` and ``labels`` repeated cyclically: f32[n,H,W,C], i32[n]."""
  return (np.resize(np.asarray(x, np.float32), (n, *np.shape(x)[1:])),
          np.resize(np.asarray(labels, np.int32), (n,)))


def time_forward(make_step: StepFactory, repeats: int,
                 options: dict[str, str] | None) -> dict[str, Any]:
  """Times the step with ``optax.set_to_zero()``: its forward pass and input work.

  Returns:
    ``forward_s`` (median) and ``forward_times_s``.
  """
  fn, args = make_step(optax.set_to_zero())
  compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return {'forward_s': statistics.median(times), 'forward_times_s': times}


def _job(make_step: StepFactory, optimizer: optax.GradientTransformation, items: int,
         settings: dict[str, Any], peer_inputs: dict[str, Any]) -> workloads.Job:
  fn, args = make_step(optimizer)
  return workloads.Job(fn, args, items, settings,
                       stage=lambda repeats, options: time_forward(make_step, repeats, options),
                       peer_inputs=peer_inputs)


def _classifier_job(subject: workloads.Subject, x: np.ndarray, pred: np.ndarray,
                    cfg: config.BenchmarkConfig) -> workloads.Job:
  model = models.create(subject.name).clone(plain=cfg.plain_model)
  tcfg = training.TrainConfig(model=subject.name, dataset=models.get_spec(subject.name).dataset)
  tcfg = dataclasses.replace(tcfg, batch_size=cfg.train_batch_size or tcfg.batch_size)
  xb, yb = fill(x, pred, tcfg.batch_size)
  steps_per_epoch = SCHEDULE_STEPS // tcfg.epochs
  variables = subject.variables

  def make_step(tx):
    def fn(state, images, labels):
      return training.train_step(model, tx, tcfg, state, images, labels)
    state = {'variables': variables, 'opt_state': tx.init(variables['params']),
             'step': jnp.zeros((), jnp.int32)}
    return fn, (state, xb, yb)

  augment = tcfg.augment and tcfg.dataset in training.AUGMENTED_DATASETS
  settings = {'batch_size': tcfg.batch_size, 'optimizer': tcfg.optimizer,
              'learning_rate': tcfg.learning_rate, 'schedule': tcfg.schedule,
              'weight_decay': tcfg.weight_decay, 'augment': augment}
  return _job(make_step, training.make_optimizer(tcfg, steps_per_epoch), tcfg.batch_size,
              settings, {'model': model, 'train_config': tcfg, 'variables': variables,
                         'x': xb, 'y': yb, 'total_steps': steps_per_epoch * tcfg.epochs})


def _masker_job(subject: workloads.Subject, x: np.ndarray, pred: np.ndarray,
                cfg: config.BenchmarkConfig, key: jax.Array) -> workloads.Job:
  layers = masker_training.DEFAULT_LAYERS.get(subject.name)
  if not layers:
    raise workloads.NotApplicable(f'no default masker layers for {subject.name!r} '
                                  f'(masker_training.DEFAULT_LAYERS)')
  mcfg = masker_training.MaskerConfig(classifier=subject.name, steps=SCHEDULE_STEPS)
  mcfg = dataclasses.replace(mcfg, batch_size=cfg.train_batch_size or mcfg.batch_size)
  xb, yb = fill(x, pred, mcfg.batch_size)
  classifier = models.create(subject.name).clone(plain=cfg.plain_model)
  masker = saliency.Masker(classifier, layers, width=mcfg.width,
                           mask_downsample=mcfg.mask_downsample)
  init_key, step_key = jax.random.split(key)
  decoder = saliency.decoder_params(
      saliency.init_masker(masker, subject.variables, xb[:1], key=init_key))

  def make_step(tx):
    def fn(classifier_vars, state, images, labels, k):
      return masker_training.train_step(masker, tx, mcfg.loss, classifier_vars, state, images,
                                        labels, k)
    state = {'params': decoder, 'opt_state': tx.init(decoder),
             'step': jnp.zeros((), jnp.int32)}
    return fn, (subject.variables, state, xb, yb, step_key)

  settings = {'batch_size': mcfg.batch_size, 'layers': list(layers), 'width': mcfg.width,
              'optimizer': 'adam', 'learning_rate': mcfg.learning_rate,
              'schedule': 'cosine', 'loss': mcfg.loss.form}
  return _job(make_step, masker_training.make_optimizer(mcfg, SCHEDULE_STEPS),
              mcfg.batch_size, settings,
              {'masker': masker, 'masker_config': mcfg, 'classifier_vars': subject.variables,
               'decoder': decoder, 'x': xb, 'y': yb, 'key': step_key,
               'total_steps': SCHEDULE_STEPS})


def _detector_job(subject: workloads.Subject, x: np.ndarray, pred: np.ndarray,
                  cfg: config.BenchmarkConfig, key: jax.Array) -> workloads.Job:
  study = detect_adversarial.Config()
  batch = cfg.train_batch_size or study.detector_batch_size
  init_key, label_key, order_key = jax.random.split(key, 3)
  model, variables = detection.init_detector(subject.name, x.shape[-1], key=init_key)
  inputs = np.asarray(detection.image_input(fill(x, pred, batch)[0]))
  labels = np.asarray(jax.random.bernoulli(label_key, 0.5, (batch,)), np.int32)

  def make_step(optimizer):
    def fn(v, det_inputs, det_labels, k):
      return detection.train_detector(model.apply, v, det_inputs, det_labels, key=k,
                                      num_epochs=1, batch_size=batch, optimizer=optimizer)
    return fn, (variables, inputs, labels, order_key)

  settings = {'batch_size': batch, 'optimizer': 'adam', 'learning_rate': study.detector_lr,
              'inputs': "the batch's images ('id')"}
  return _job(make_step, optax.adam(study.detector_lr), batch, settings,
              {'model': model, 'variables': variables, 'x': inputs, 'y': labels,
               'learning_rate': study.detector_lr})


def build_job(name: str, subject: workloads.Subject, x: jax.typing.ArrayLike,
              pred: jax.typing.ArrayLike, cfg: config.BenchmarkConfig,
              key: jax.Array) -> workloads.Job:
  """The job of training workload ``name`` (``config.TRAIN_WORKLOADS``).

  Args:
    name: the workload.
    subject: the model; its name must be registered (``models.MODELS``).
    x: f32[B,H,W,C] in [0, 1], the benchmark batch.
    pred: i32[B] the model's predictions (the training labels).
    cfg: the settings.
    key: the workload's PRNG key (fresh weights, alternative images, detector labels).

  Raises:
    workloads.NotApplicable: an unregistered model; ``train_masker`` for a model without
      default masker layers.
  """
  if subject.name not in models.MODELS:
    raise workloads.NotApplicable(f'the training workloads build registered models; '
                                  f'{subject.name!r} is not one')
  x, pred = np.asarray(x), np.asarray(pred)
  if name == 'train_classifier':
    return _classifier_job(subject, x, pred, cfg)
  if name == 'train_masker':
    return _masker_job(subject, x, pred, cfg, key)
  return _detector_job(subject, x, pred, cfg, key)
