"""The PyTorch peers of the training workloads: the same architecture, optimizer and batch.

* ``train_classifier``: ``torch_peers.convert`` of the model in training mode,
  ``torch.optim.SGD`` (momentum 0.9, Nesterov, the same weight decay on every parameter, as
  optax's ``add_decayed_weights``) with ``OneCycleLR`` (``pct_start=0.25``, cosine, no
  momentum cycling: optax's ``cosine_onecycle_schedule``), a batched random crop (zero
  padding 4) and flip in torch, and ``CrossEntropyLoss``;
* ``train_masker``: ``masker_module``, ``saliency.Masker``'s decoder in torch over the frozen
  converted classifier (forward hooks read its layers, under ``no_grad`` as they need no
  gradient), ``torch.optim.Adam`` with ``CosineAnnealingLR``, alternative images (a separable
  Gaussian blur with reflect padding, or noise on a random colour) and the paper's loss;
* ``train_detector``: ``torch_peers.convert`` of the detector in training mode,
  ``torch.optim.Adam``.

Each step is timed by part: ``inputs`` (augmentation, alternative images), ``forward``,
``backward`` and ``update`` (``optimizer.step()`` and the scheduler's). ``agreement`` runs one
step of both frameworks from the same weights on the same batch (the classifier without
augmentation, the masker on JAX's alternative images) and compares the losses and the updated
parameters. BatchNorm's running variance is not compared: torch averages the unbiased batch
variance, flax the biased one.
"""

import dataclasses
import os
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advsal_jax import detection
from advsal_jax import masker_training
from advsal_jax import saliency
from advsal_jax import training
from advsal_jax.benchmarks import torch_peers
from advsal_jax.benchmarks import workloads

PARTS = ('inputs', 'forward', 'backward', 'update')
"""The parts of a PyTorch step, in order."""

_TOOLS = {
    'train_classifier': ('torch.optim.SGD(nesterov) + OneCycleLR, batched crop and flip, '
                         'BatchNorm in training mode'),
    'train_masker': ('torch.optim.Adam + CosineAnnealingLR, the decoder over the frozen '
                     'classifier, alternative images and the paper loss'),
    'train_detector': 'torch.optim.Adam, BatchNorm in training mode',
}

# saliency.alternative_images' defaults: the reference's blur (sigma 11, radius 27 at 224 px)
# scaled to the image, noise std and colour range.
_BLUR_SIGMA_AT_224, _RADIUS_IN_SIGMAS = 11.0, 27 / 11
_NOISE_STD, _COLOUR_RANGE, _BLUR_PROB = 0.055, 0.33, 0.5


class TorchStep:
  """One PyTorch training step, ``step(x, y) -> (loss, seconds per part)``.

  Attributes:
    module: the trained module (the network, or the masker with its frozen classifier).
    counted: the network whose forward calls ``prepare`` counts (the masker's classifier).
  """

  def __init__(self, module: Any, optimizer: Any, scheduler: Any | None,
               loss_fn: Callable[..., Any], inputs: Callable[[Any], tuple[Any, ...]], *,
               counted: Any | None = None):
    self.module, self._optimizer, self._scheduler = module, optimizer, scheduler
    self._loss_fn, self._inputs = loss_fn, inputs
    self.counted = module if counted is None else counted

  def __call__(self, x: Any, y: Any) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    args = self._inputs(x)
    t1 = time.perf_counter()
    loss = self._loss_fn(*args, y)
    t2 = time.perf_counter()
    self._optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t3 = time.perf_counter()
    self._optimizer.step()
    if self._scheduler is not None:
      self._scheduler.step()
    t4 = time.perf_counter()
    return float(loss.detach()), dict(zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)))


def _augment(torch: Any, x: Any, pad: int = 4) -> Any:
  """``data.augment_cifar`` batched in torch: random crop after zero padding, random flip."""
  b, c, h, w = x.shape
  padded = torch.nn.functional.pad(x, (pad,) * 4)
  offsets = torch.randint(0, 2 * pad + 1, (b, 2))
  rows = (offsets[:, :1] + torch.arange(h)).reshape(b, 1, h, 1)
  cols = (offsets[:, 1:] + torch.arange(w)).reshape(b, 1, 1, w)
  crop = padded[torch.arange(b).reshape(b, 1, 1, 1), torch.arange(c).reshape(1, c, 1, 1),
                rows, cols]
  return torch.where((torch.rand(b) < 0.5).reshape(b, 1, 1, 1), crop.flip(3), crop)


def _alternative_images(torch: Any, x: Any) -> Any:
  """``saliency.alternative_images`` in torch (reflect padding for the blur)."""
  b, c, h, w = x.shape
  sigma = _BLUR_SIGMA_AT_224 * max(h, w) / 224
  radius = max(1, round(_RADIUS_IN_SIGMAS * sigma))
  taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0) / sigma) ** 2)
  taps = taps / taps.sum()
  f = torch.nn.functional
  blurred = f.conv2d(f.pad(x, (radius, radius, 0, 0), mode='reflect'),
                     taps.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
  blurred = f.conv2d(f.pad(blurred, (0, 0, radius, radius), mode='reflect'),
                     taps.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
  colour = 0.5 + _COLOUR_RANGE * (torch.rand(b, c, 1, 1) - 0.5)
  noisy = (colour + _NOISE_STD * torch.randn(b, c, h, w)).clamp(0.0, 1.0)
  return torch.where((torch.rand(b) < _BLUR_PROB).reshape(b, 1, 1, 1), blurred, noisy)


def masker_module(masker: saliency.Masker, classifier: Any, decoder: Any) -> Any:
  """``saliency.Masker``'s decoder in torch over a converted classifier.

  Args:
    masker: the flax masking model (its layers, width and mask resolution).
    classifier: ``torch_peers.convert`` of ``masker.classifier`` (frozen here: eval mode, no
      gradients).
    decoder: the decoder's flax parameters (``saliency.decoder_params``).

  Returns:
    A ``torch.nn.Module``: ``module(x f32[B,C,H,W], target i64[B]) -> mask f32[B,1,H,W]``,
    with the classifier as ``module.classifier``.
  """
  torch = torch_peers.import_torch()
  tnn, f = torch.nn, torch.nn.functional
  params = decoder['params']

  def conv(name):
    kernel = np.asarray(params[name]['kernel'])  # HWIO, 'SAME' for odd kernels.
    layer = tnn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2],
                       padding=kernel.shape[0] // 2)
    layer.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    layer.bias.data = torch.from_numpy(np.array(params[name]['bias']))
    return layer

  def resize(t, size):
    if tuple(t.shape[2:]) == tuple(size):
      return t
    shrink = size[0] < t.shape[2] or size[1] < t.shape[3]
    return f.interpolate(t, size, mode='bilinear', align_corners=False, antialias=shrink)

  class Masker(tnn.Module):
    """The decoder; features read by hooks on the classifier's layers."""

    def __init__(self):
      super().__init__()
      self.classifier = classifier.eval().requires_grad_(False)
      self.bottleneck, self.bottleneck_conv = conv('bottleneck'), conv('bottleneck_conv')
      embedding = np.array(params['class_embedding']['embedding'])
      self.class_embedding = tnn.Embedding(*embedding.shape)
      self.class_embedding.weight.data = torch.from_numpy(embedding)
      skips = len(masker.layers) - 1
      self.skip = tnn.ModuleList([conv(f'skip{i}') for i in range(skips)])
      self.up = tnn.ModuleList([conv(f'up{i}') for i in range(skips)])
      self.mask_logit = conv('mask_logit')
      self._features = {}
      for name in masker.layers:
        getattr(classifier, name).register_forward_hook(
            lambda module, args, out, name=name: self._features.__setitem__(name, out))

    def forward(self, x, target):
      with torch.no_grad():
        self.classifier(x)
      feats = [self._features[name] for name in masker.layers]
      height, width = x.shape[2:]
      mh, mw = -(-height // masker.mask_downsample), -(-width // masker.mask_downsample)
      h = f.relu(self.bottleneck(feats[-1]))
      scale, shift = self.class_embedding(target)[:, :, None, None].chunk(2, dim=1)
      h = f.relu(self.bottleneck_conv(h * (1 + scale) + shift))
      for skip, skip_conv, up in zip(reversed(feats[:-1]), self.skip, self.up):
        size = (min(skip.shape[2], mh), min(skip.shape[3], mw))
        h = resize(h, size)
        h = f.relu(up(torch.cat([h, f.relu(skip_conv(resize(skip, size)))], 1)))
      logit = self.mask_logit(resize(h, (mh, mw)))
      return resize(torch.sigmoid(logit), (height, width)).clamp(0.0, 1.0)

  return Masker()


def _masker_loss(torch: Any, module: Any, loss: saliency.MaskerLoss) -> Callable[..., Any]:
  """``saliency.masker_loss`` ('paper' form) of ``module``: ``fn(x, alt, y) -> f32[]``."""
  if loss.form != 'paper':
    raise ValueError(f"the PyTorch masker step has the 'paper' loss only, got {loss.form!r}.")

  def fn(x, alt, y):
    mask = module(x, y)
    both = torch.cat([mask * x + (1 - mask) * alt, (1 - mask) * x + mask * alt])
    log_p = torch.log_softmax(module.classifier(both), 1).gather(1, torch.cat([y, y])[:, None])
    keep, removed = log_p[:x.shape[0], 0], log_p[x.shape[0]:, 0]
    area = mask.mean((1, 2, 3))
    return (loss.lambda1 * area - keep
            + loss.lambda2 * torch.exp(loss.lambda3 * removed)).mean()

  return fn


def build_step(name: str, p: dict[str, Any], *, augment: bool = True,
               alt: Any | None = None) -> TorchStep:
  """The PyTorch step of training workload ``name`` from its job's ``peer_inputs`` ``p``.

  Args:
    name: one of ``config.TRAIN_WORKLOADS``.
    p: the ``training_steps`` job's ``peer_inputs`` (the initial weights and settings).
    augment: the classifier's augmentation (when its config augments).
    alt: the masker's alternative images f32[B,C,H,W] instead of drawing them.

  Raises:
    ValueError: a setting the PyTorch step does not have (another optimizer, schedule or
      masker loss form).
  """
  torch = torch_peers.import_torch()
  cross_entropy = torch.nn.functional.cross_entropy
  if name == 'train_classifier':
    cfg = p['train_config']
    if (cfg.optimizer, cfg.schedule) != ('sgd', 'onecycle'):
      raise ValueError(f'the PyTorch classifier step has SGD with the one-cycle schedule only, '
                       f'got optimizer {cfg.optimizer!r}, schedule {cfg.schedule!r}.')
    module = torch_peers.convert(p['model'], p['variables']).train()
    optimizer = torch.optim.SGD(module.parameters(), lr=cfg.learning_rate, momentum=0.9,
                                nesterov=True, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, cfg.learning_rate, total_steps=p['total_steps'], pct_start=0.25,
        anneal_strategy='cos', cycle_momentum=False, div_factor=25.0, final_div_factor=1e4)
    augmented = augment and cfg.augment and cfg.dataset in training.AUGMENTED_DATASETS
    return TorchStep(
        module, optimizer, scheduler,
        lambda x, y: cross_entropy(module(x), y, label_smoothing=cfg.label_smoothing),
        lambda x: (_augment(torch, x),) if augmented else (x,))
  if name == 'train_masker':
    cfg = p['masker_config']
    classifier = torch_peers.convert(p['masker'].classifier, p['classifier_vars'])
    module = masker_module(p['masker'], classifier, p['decoder'])
    decoder = [q for n, q in module.named_parameters() if not n.startswith('classifier.')]
    optimizer = torch.optim.Adam(decoder, lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, p['total_steps'])
    return TorchStep(module, optimizer, scheduler, _masker_loss(torch, module, cfg.loss),
                     lambda x: (x, _alternative_images(torch, x) if alt is None else alt),
                     counted=classifier)
  module = torch_peers.convert(p['model'], p['variables']).train()
  optimizer = torch.optim.Adam(module.parameters(), lr=p['learning_rate'])
  return TorchStep(module, optimizer, None, lambda x, y: cross_entropy(module(x), y),
                   lambda x: (x,))


def _tensors(torch: Any, p: dict[str, Any]) -> tuple[Any, Any]:
  x = torch.from_numpy(np.ascontiguousarray(np.asarray(p['x']).transpose(0, 3, 1, 2)))
  return x, torch.from_numpy(np.asarray(p['y'], np.int64))


def _jax_step(name: str, p: dict[str, Any]) -> tuple[Any, float, Any]:
  """One JAX step as the workload runs it (the classifier without augmentation).

  Returns:
    ``(updated flax variables or decoder, loss, the masker's alternative images or None)``.
  """
  x, y = jnp.asarray(p['x']), jnp.asarray(p['y'])
  if name == 'train_classifier':
    cfg = dataclasses.replace(p['train_config'], augment=False)
    tx = training.make_optimizer(cfg, p['total_steps'] // cfg.epochs)
    state = {'variables': p['variables'], 'opt_state': tx.init(p['variables']['params']),
             'step': jnp.zeros((), jnp.int32)}
    new, m = jax.jit(lambda s: training.train_step(p['model'], tx, cfg, s, x, y))(state)
    return new['variables'], float(m['loss']), None
  if name == 'train_masker':
    cfg = p['masker_config']
    tx = masker_training.make_optimizer(cfg, p['total_steps'])
    state = {'params': p['decoder'], 'opt_state': tx.init(p['decoder']),
             'step': jnp.zeros((), jnp.int32)}
    new, m = jax.jit(lambda s: masker_training.train_step(
        p['masker'], tx, cfg.loss, p['classifier_vars'], s, x, y, p['key']))(state)
    alt = saliency.alternative_images(jax.random.fold_in(p['key'], 0), x)
    return new['params'], float(m['loss']), np.asarray(alt)
  variables, losses = jax.jit(lambda v: detection.train_detector(
      p['model'].apply, v, x, y, key=jax.random.key(0), num_epochs=1, batch_size=x.shape[0],
      optimizer=optax.adam(p['learning_rate'])))(p['variables'])
  return variables, float(losses[0, 0]), None


def _trainable(module: Any) -> dict[str, np.ndarray]:
  """The trainable parameters of a torch module, by name."""
  return {n: q.detach().numpy() for n, q in module.named_parameters() if q.requires_grad}


def agreement(name: str, p: dict[str, Any]) -> dict[str, float]:
  """One step of each framework from the same weights on the same batch.

  Args:
    name: the training workload.
    p: its job's ``peer_inputs``.

  Returns:
    ``loss_abs_diff``; ``update_rel_l2_diff``, ||PyTorch's update - JAX's|| / ||JAX's||
    over every trained parameter (Adam's first step is about ``lr * sign(gradient)``, so a
    gradient within rounding of zero moves a weight by up to ``lr`` in one framework only:
    elementwise differences can be as large as the update itself); ``param_max_abs_diff``
    and ``param_max_abs_update`` (the largest change JAX's step made, for scale).
  """
  torch = torch_peers.import_torch()
  new, jax_loss, alt = _jax_step(name, p)
  x, y = _tensors(torch, p)
  if alt is not None:
    alt = torch.from_numpy(np.ascontiguousarray(alt.transpose(0, 3, 1, 2)))
  step = build_step(name, p, augment=False, alt=alt)
  loss, _ = step(x, y)
  if name == 'train_masker':
    def convert(decoder):
      classifier = torch_peers.convert(p['masker'].classifier, p['classifier_vars'])
      return masker_module(p['masker'], classifier, decoder)
    start = p['decoder']
  else:
    def convert(variables):
      return torch_peers.convert(p['model'], variables)
    start = p['variables']
  theirs, ours, before = (_trainable(m) for m in (step.module, convert(new), convert(start)))
  names = sorted(ours)
  diff = np.concatenate([(theirs[k] - ours[k]).ravel() for k in names])
  update = np.concatenate([(ours[k] - before[k]).ravel() for k in names])
  return {'loss_abs_diff': abs(loss - jax_loss),
          'update_rel_l2_diff': float(np.linalg.norm(diff) / max(np.linalg.norm(update), 1e-30)),
          'param_max_abs_diff': float(np.max(np.abs(diff))),
          'param_max_abs_update': float(np.max(np.abs(update)))}


def prepare(name: str, peers: torch_peers.TorchPeers, job: workloads.Job
            ) -> tuple[Callable[[Any], None], Callable[[int], dict[str, Any]]]:
  """The PyTorch step of training workload ``name`` on the job's batch.

  Args:
    name: one of ``config.TRAIN_WORKLOADS``.
    peers: the benchmark's peers (versions).
    job: the ``training_steps`` job (its ``peer_inputs``).

  Returns:
    ``(keep, compare)`` as ``TorchPeers.prepare``: ``compare(repeats)`` runs one untimed
    warm-up step, then ``repeats`` timed steps (each from the state the last one left), and
    gives the ``torch_*`` entries with ``torch_part_s`` (median seconds per part of
    ``PARTS``) and ``torch_agreement`` (``agreement``).
  """
  torch = torch_peers.import_torch()
  p = job.peer_inputs
  step = build_step(name, p)
  x, y = _tensors(torch, p)

  def compare(repeats: int) -> dict[str, Any]:
    calls, warmup = torch_peers.warm_up(step.counted, lambda: step(x, y))
    times, parts = [], {k: [] for k in PARTS}
    for _ in range(repeats):
      _, seconds = step(x, y)
      times.append(sum(seconds.values()))
      for k, v in seconds.items():
        parts[k].append(v)
    median = statistics.median(times)
    return {'torch_tool': f'{_TOOLS[name]} (torch {peers.versions["torch"]})',
            'torch_settings': {}, 'torch_model_calls_per_call': calls,
            'torch_median_s': median, 'torch_times_s': times, 'torch_warmup_s': warmup,
            'torch_items_per_s': x.shape[0] / median,
            'torch_part_s': {k: statistics.median(v) for k, v in parts.items()},
            'torch_agreement': agreement(name, p), 'loadavg_1min': os.getloadavg()[0]}

  return lambda output: None, compare
