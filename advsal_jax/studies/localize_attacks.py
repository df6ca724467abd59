"""Study 004: do saliency explainers find where a localized adversarial attack changed the image?

Two stages over the first ``num_examples`` test images (``runner``):

* ``attack``: each image is segmented with Felzenszwalb-Huttenlocher on the host (the stage's
  ``prepare`` hook, ``segment_batch``: images spread over a thread pool, one batch ahead of
  the compiled attacks, ``runner.run_stage``); its ``num_regions`` largest segments
  (labels 0..R-1, largest first) are each attacked by a targeted BIM towards
  ``target_class`` that may change only that segment. All segments of all images of a batch
  form one batch of a single compiled call; every attack stops at success, when its loss has
  not improved for ``patience`` steps (stalled, discarded) or after ``max_steps`` (discarded).
  Images already predicted as the target are skipped.
* ``explain``: every successful adversarial example is explained for the target class by
  each method; LIME's segmentation of the adversarial image (quickshift by default, not the
  attack's segmentation) again runs in ``prepare``. LIME's top ``top_n`` positive superpixels
  give the partial unions ``U_1 .. U_top_n``; every pixel map contributes its ``|U_n|`` most
  salient pixels, and a uniformly random pixel set of the same size is the baseline. Each
  pixel set is scored against the attacked segment with the Jaccard index and the Hamming
  likeness (paper eqs. 2 and 3).

Pixel maps are reduced the paper's way: negative input gradients are discarded before the
L1 norm over channels (``positive_l1``), so a pixel ranks by its evidence *for* the
prediction, as LIME's positive superpixels do.

Reference: Göpfert, Wersing & Hammer, "Recovering Localized Adversarial Attacks", 2019.
"""

import concurrent.futures
import dataclasses
import os
import pathlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import attacks
from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import metrics
from advsal_jax import models
from advsal_jax import parallel
from advsal_jax import saliency
from advsal_jax.studies import runner
from advsal_jax.studies import store
from advsal_jax.types import ApplyFn, Params

NAME = 'localize_attacks'
ATTACK_STAGE = 'attack'
EXPLAIN_STAGE = 'explain'

PAPER_METHODS = ('gradient', 'guided_backprop', 'lime')
"""The paper's explainers: classic saliency, Guided Backprop and LIME."""
EXTRA_METHODS = ('smoothgrad', 'integrated_gradients', 'grad_cam', 'enhanced_guided_backprop')
"""Methods beyond the paper run by default."""

# Attack outcome codes, stored per (image, region).
ABSENT, SUCCESS, STALLED, EXHAUSTED, SKIPPED = range(5)
STATUS_NAMES = ('absent', 'success', 'stalled', 'exhausted', 'skipped')
_RUNNING = -1

# LIME's own segmenter, with quickshift's scales shrunk to 32x32 images: LIME's defaults
# (kernel_size 4, max_dist 200) give a handful of superpixels there; these give tens.
DEFAULT_METHOD_KWARGS = {
    'lime': {'num_samples': 1000, 'segmentation': 'quickshift',
             'segmentation_kwargs': {'kernel_size': 1, 'max_dist': 5, 'ratio': 0.5}},
    'smoothgrad': {'num_samples': 50, 'noise_level': 0.15},
    'integrated_gradients': {'num_steps': 32},
}
_HOST_LIME_KWARGS = ('segmentation', 'segmentation_kwargs')
LIME_SEGMENTATIONS = ('quickshift', 'felzenszwalb', 'slic')
"""What ``saliency.segment_images`` can run for LIME."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of one run (written to ``config.json``).

  Attributes:
    checkpoint: registered model name or checkpoint directory.
    num_examples: the first N images of the model's test split.
    batch_size: images per compiled attack batch (each holds ``num_regions`` attacks).
    explain_batch_size: adversarial examples per compiled explanation batch.
    num_regions: the R largest segments of each image are attacked, one at a time.
    felzenszwalb_scale, felzenszwalb_sigma, felzenszwalb_min_size: the attack
      segmentation's parameters (``skimage.segmentation.felzenszwalb``).
    target_class: the class every attack aims at.
    eps: L-inf budget of the attack in [0, 1] pixel units (1: only the segment and the
      [0, 1] box constrain it).
    step_size: BIM step in [0, 1] pixel units.
    max_steps: an attack not successful after this many steps is discarded.
    patience: an attack whose loss has not reached a new minimum for this many steps is
      stalled and discarded.
    top_n: LIME superpixels (and partial unions) per explanation.
    methods: ``saliency.REGISTRY`` names; must include 'lime' (its unions fix the sizes).
    method_kwargs: method name -> hyper-parameters (LIME's ``segmentation`` and
      ``segmentation_kwargs`` are used on the host).
    seed: seed of LIME, SmoothGrad and the random baseline (per adversarial example).
  """
  checkpoint: str = 'alexnet_cifar'
  num_examples: int = 48
  batch_size: int = 8
  explain_batch_size: int = 16
  num_regions: int = 10
  felzenszwalb_scale: float = 10.0
  felzenszwalb_sigma: float = 0.5
  felzenszwalb_min_size: int = 10
  target_class: int = 0
  eps: float = 1.0
  step_size: float = 2 / 255
  max_steps: int = 100
  patience: int = 10
  top_n: int = 20
  methods: tuple[str, ...] = PAPER_METHODS + EXTRA_METHODS
  method_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=lambda: {m: dict(kw) for m, kw in DEFAULT_METHOD_KWARGS.items()})
  seed: int = 0



def validate(cfg: Config, *, split_size: int | None = None, num_classes: int | None = None):
  """Raises ValueError naming the bad setting; the data-dependent checks when given."""
  unknown = [m for m in cfg.methods if m not in saliency.REGISTRY]
  if unknown or len(set(cfg.methods)) != len(cfg.methods):
    raise ValueError(f'methods: unknown or repeated {unknown or list(cfg.methods)}; choose '
                     f'from {sorted(saliency.REGISTRY)}.')
  if 'lime' not in cfg.methods:
    raise ValueError("methods must include 'lime': its partial unions fix how many pixels "
                     f'every map contributes; got {list(cfg.methods)}.')
  unknown = [m for m in cfg.method_kwargs if m not in saliency.REGISTRY]
  if unknown:
    raise ValueError(f'method_kwargs: unknown methods {unknown}.')
  for m, kw in cfg.method_kwargs.items():
    bad = sorted(set(kw) - set(saliency.REGISTRY[m].defaults))
    if bad:
      raise ValueError(f'method_kwargs: {m} takes no {bad}; it takes '
                       f'{sorted(saliency.REGISTRY[m].defaults)}.')
  lime_kw = cfg.method_kwargs.get('lime', {})
  if lime_kw.get('segmentation', 'quickshift') not in LIME_SEGMENTATIONS:
    raise ValueError(f'method_kwargs: lime.segmentation must be one of {LIME_SEGMENTATIONS}, '
                     f"got {lime_kw['segmentation']!r}.")
  for name in ('num_regions', 'top_n', 'max_steps', 'patience', 'batch_size',
               'explain_batch_size', 'felzenszwalb_min_size'):
    if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
      raise ValueError(f'{name} must be an integer >= 1, got {getattr(cfg, name)!r}.')
  for name in ('eps', 'step_size', 'felzenszwalb_scale'):
    if not getattr(cfg, name) > 0:
      raise ValueError(f'{name} must be > 0, got {getattr(cfg, name)!r}.')
  if cfg.felzenszwalb_sigma < 0:
    raise ValueError(f'felzenszwalb_sigma must be >= 0, got {cfg.felzenszwalb_sigma}.')
  if num_classes is not None and not 0 <= cfg.target_class < num_classes:
    raise ValueError(f'target_class must be in [0, {num_classes}), got {cfg.target_class}.')
  if split_size is not None and not 1 <= cfg.num_examples <= split_size:
    raise ValueError(f'num_examples must be in [1, {split_size}] (the test split), got '
                     f'{cfg.num_examples}.')
  if cfg.num_examples < 1:
    raise ValueError(f'num_examples must be >= 1, got {cfg.num_examples}.')


def segment_parallel(x: np.ndarray, *, segmentation: str, **kwargs: Any) -> np.ndarray:
  """``saliency.segment_images`` with the images spread over a thread pool (host).

  Args:
    x: f32[B,H,W,C] in [0, 1].
    segmentation: 'felzenszwalb', 'quickshift' or 'slic'.
    **kwargs: the segmentation's parameters.

  Returns:
    i32[B,H,W] labels, per image 0..S_b-1, equal to ``segment_images(x, ...)``.
  """
  chunks = np.array_split(np.asarray(x), min(len(x), os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(len(chunks)) as pool:
    parts = pool.map(lambda c: saliency.segment_images(c, segmentation=segmentation, **kwargs),
                     chunks)
    return np.concatenate(list(parts))


def by_size(labels: np.ndarray) -> np.ndarray:
  """Relabels each image's segments by decreasing size (ties: lower label first).

  Args:
    labels: i32[B,H,W], per image 0..S_b-1.

  Returns:
    i32[B,H,W]: 0 is each image's largest segment, 1 the next, ...
  """
  out = np.empty_like(labels)
  for b, lab in enumerate(labels):
    counts = np.bincount(lab.ravel())
    order = np.lexsort((np.arange(len(counts)), -counts))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    out[b] = rank[lab]
  return out


def targeted_bim_until(apply_fn: ApplyFn, params: Params, x: jax.Array, target: jax.Array,
                       mask: jax.Array, active: jax.Array, *, eps: float, step_size: float,
                       max_steps: int, patience: int) -> dict[str, jax.Array]:
  """Targeted L-inf BIM inside ``mask`` that stops each example at success or stall.

  Every step is ``attacks.bim`` (cross-entropy to the target, masked sign step, box clip)
  taken one step at a time from the current point and then projected onto the ``eps``-ball
  around ``x``, so the stopping rules can be applied between steps. An example stops at the
  first step that makes ``target`` its prediction (success), when its loss has not reached
  a new minimum for ``patience`` steps (stalled), or after ``max_steps`` (exhausted).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[N,K]``.
    params: model variables.
    x: f32[N,H,W,C] in [0, 1].
    target: i32[N] target classes.
    mask: f32[N,H,W,1] 0/1: the pixels each attack may change.
    active: bool[N]: examples to attack (the others are returned unchanged as ABSENT).
    eps: L-inf budget around ``x``.
    step_size: the step.
    max_steps: static step limit.
    patience: steps without a new loss minimum before an attack counts as stalled.

  Returns:
    ``x_adv`` f32[N,H,W,C], ``status`` i32[N] (SUCCESS, STALLED, EXHAUSTED; ABSENT where
    not ``active``; SUCCESS with 0 steps where ``x`` is already classified as the target),
    ``steps`` i32[N] and ``pred`` i32[N], the prediction on ``x_adv``.
  """
  def loss_and_pred(xa):
    logits = apply_fn(params, xa)
    loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), target[:, None], axis=1)[:, 0]
    return loss, logits.argmax(-1).astype(jnp.int32)

  loss, pred = loss_and_pred(x)
  status = jnp.where(active, jnp.where(pred == target, SUCCESS, _RUNNING), ABSENT)
  zeros = jnp.zeros(target.shape, jnp.int32)

  def cond(state):
    return (state['t'] < max_steps) & jnp.any(state['status'] == _RUNNING)

  def body(s):
    running = s['status'] == _RUNNING
    stepped = attacks.bim(apply_fn, params, s['x_adv'], target, targeted=True, mask=mask,
                          eps=step_size, step_size=step_size, num_steps=1)
    stepped = jnp.clip(stepped, x - eps, x + eps)
    x_adv = jnp.where(running[:, None, None, None], stepped, s['x_adv'])
    loss, pred = loss_and_pred(x_adv)
    better = loss < s['best']
    since = jnp.where(better, 0, s['since'] + 1)
    status = jnp.where(running & (pred == target), SUCCESS,
                       jnp.where(running & (since >= patience), STALLED, s['status']))
    return {'x_adv': x_adv, 'best': jnp.where(running & better, loss, s['best']),
            'since': since, 'steps': s['steps'] + running, 'status': status, 'pred': pred,
            't': s['t'] + 1}

  s = jax.lax.while_loop(cond, body, {'x_adv': x, 'best': loss, 'since': zeros,
                                      'steps': zeros, 'status': status, 'pred': pred,
                                      't': jnp.int32(0)})
  return {'x_adv': s['x_adv'], 'steps': s['steps'], 'pred': s['pred'],
          'status': jnp.where(s['status'] == _RUNNING, EXHAUSTED, s['status'])}


def attack_batch(apply_fn: ApplyFn, params: Params, x: jax.Array, segments: jax.Array, *,
                 cfg: Config) -> dict[str, jax.Array]:
  """Attacks the ``num_regions`` largest segments of every image, all in one batch.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B,H,W,C] in [0, 1].
    segments: i32[B,H,W] segment labels by decreasing size (``by_size``).
    cfg: the run's settings.

  Returns:
    ``clean_pred`` i32[B]; ``x_adv`` f32[B,R,H,W,C]; ``status``, ``steps``, ``adv_pred``,
    ``region_size`` i32[B,R]; ``linf`` f32[B,R].
  """
  b, h, w, c = x.shape
  r = cfg.num_regions
  clean_pred = apply_fn(params, x).argmax(-1).astype(jnp.int32)
  regions = segments[:, None] == jnp.arange(r, dtype=segments.dtype)[None, :, None, None]
  size = regions.sum(axis=(2, 3)).astype(jnp.int32)
  skipped = clean_pred == cfg.target_class
  active = (size > 0) & ~skipped[:, None]
  x_flat = jnp.repeat(x, r, axis=0)
  res = targeted_bim_until(
      apply_fn, params, x_flat, jnp.full((b * r,), cfg.target_class, jnp.int32),
      regions.reshape(b * r, h, w, 1).astype(x.dtype), active.reshape(-1), eps=cfg.eps,
      step_size=cfg.step_size, max_steps=cfg.max_steps, patience=cfg.patience)
  status = res['status'].reshape(b, r)
  status = jnp.where(size == 0, ABSENT, jnp.where(skipped[:, None], SKIPPED, status))
  return {'clean_pred': clean_pred, 'x_adv': res['x_adv'].reshape(b, r, h, w, c),
          'status': status, 'steps': res['steps'].reshape(b, r),
          'adv_pred': res['pred'].reshape(b, r), 'region_size': size,
          'linf': metrics.linf_norm(res['x_adv'] - x_flat).reshape(b, r)}


def positive_l1(attr: jax.Array) -> jax.Array:
  """The paper's pixel relevance: negative values discarded, then the L1 norm over channels.

  Args:
    attr: f32[B,H,W,C] attribution.

  Returns:
    f32[B,H,W] ``sum_c max(attr_c, 0)``.
  """
  return jax.nn.relu(attr).sum(axis=-1)


def pixel_order(heat: jax.Array) -> jax.Array:
  """Each pixel's place in its map's descending order; ties go to the lower flat index.

  ``pixel_order(heat) < k`` is ``metrics.top_k_mask(heat, k)`` for every k at once.

  Args:
    heat: f32[B,H,W] maps.

  Returns:
    i32[B,H,W] in [0, H*W): 0 for the most salient pixel.
  """
  b = heat.shape[0]
  flat = heat.reshape(b, -1)
  iota = jnp.broadcast_to(jnp.arange(flat.shape[1], dtype=jnp.int32), flat.shape)
  _, _, order = jax.lax.sort((-flat, iota, iota), dimension=1, num_keys=2)
  _, position = jax.lax.sort((order, iota), dimension=1, num_keys=1)
  return position.reshape(heat.shape)


def lime_levels(coefficients: jax.Array, ranking: jax.Array, segments: jax.Array, *,
                top_n: int) -> jax.Array:
  """The first partial union of LIME's positive superpixels that holds each pixel.

  The union ``U_n`` holds the ``n`` superpixels with the largest positive coefficients (all
  positive ones when fewer than ``n``), so ``U_n = (level < n)``.

  Args:
    coefficients: f32[B,S] LIME's surrogate coefficients.
    ranking: i32[B,S] labels by decreasing coefficient (``LimeResult.ranking``).
    segments: i32[B,H,W] LIME's superpixels.
    top_n: the largest union considered.

  Returns:
    i32[B,H,W] in [0, top_n]: the superpixel's rank among the positive ones, ``top_n``
    for pixels outside ``U_top_n``.
  """
  rank = jnp.argsort(ranking, axis=1)
  positive = coefficients > 0
  level = jnp.where(positive, jnp.minimum(rank, top_n), top_n)
  return jax.vmap(lambda lv, g: lv[g])(level, segments).astype(jnp.int32)


def localization(selected: jax.Array, region: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Jaccard index and Hamming likeness of each selected pixel set against the region.

  Args:
    selected: bool[B,N,H,W]: N pixel sets per example.
    region: bool[B,H,W]: the attacked segment.

  Returns:
    (jaccard, hamming) f32[B,N].
  """
  b, n = selected.shape[:2]
  flat = selected.reshape(b * n, -1)
  truth = jnp.repeat(region.reshape(b, -1), n, axis=0)
  return (metrics.jaccard(flat, truth).reshape(b, n),
          metrics.hamming_likeness(flat, truth).reshape(b, n))


def explain_batch(apply_fn: ApplyFn, params: Params, x_adv: jax.Array, region: jax.Array,
                  lime_segments: jax.Array, keys: jax.Array, *, cfg: Config,
                  layer: str) -> dict[str, jax.Array]:
  """Every explanation of a batch of adversarial examples, scored against its region.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x_adv: f32[B,H,W,C] adversarial examples (predicted as ``cfg.target_class``).
    region: bool[B,H,W] the attacked segment.
    lime_segments: i32[B,H,W] LIME's superpixels of ``x_adv``, labels < H*W.
    keys: [B] typed keys, one per adversarial example.
    cfg: the run's settings.
    layer: the Grad-CAM layer.

  Returns:
    ``k`` i32[B,top_n] pixels in LIME's n-th union; ``lime_superpixels``,
    ``lime_positive`` i32[B]; ``lime_level`` i32[B,H,W] (``lime_levels``); per pixel
    method ``order/<m>`` i32[B,H,W] (``pixel_order``) and ``positive/<m>`` i32[B], its
    pixels with relevance > 0 (beyond them the selection is among ties); per method and
    ``random``
    ``<m>/jaccard`` and ``<m>/hamming`` f32[B,top_n].
  """
  b, h, w, _ = x_adv.shape
  target = jnp.full((b,), cfg.target_class, jnp.int32)
  kwargs = {m: dict(cfg.method_kwargs.get(m, {})) for m in cfg.methods}
  lime_kw = {k: v for k, v in kwargs.pop('lime').items() if k not in _HOST_LIME_KWARGS}
  # H*W labels bound any segmentation, so one compilation serves every batch; the ridge
  # solve over absent labels is cheap next to LIME's model calls.
  lime = saliency.lime_explain(apply_fn, params, x_adv, target, key=keys,
                               segments=lime_segments, num_segments=h * w, **lime_kw)
  present = jax.vmap(lambda g: jnp.zeros(h * w, bool).at[g.ravel()].set(True))(lime_segments)
  level = lime_levels(lime.coefficients, lime.ranking, lime_segments, top_n=cfg.top_n)
  n = jnp.arange(1, cfg.top_n + 1)
  unions = level[:, None] < n[None, :, None, None]  # [B,N,H,W]
  k = unions.sum(axis=(2, 3)).astype(jnp.int32)
  out = {'k': k, 'lime_level': level, 'lime_superpixels': present.sum(1).astype(jnp.int32),
         'lime_positive': ((lime.coefficients > 0) & present).sum(1).astype(jnp.int32)}
  out['lime/jaccard'], out['lime/hamming'] = localization(unions, region)
  rand_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(keys)
  heats = {'random': jax.vmap(lambda kk: jax.random.uniform(kk, (h, w)))(rand_keys)}
  for m, kw in kwargs.items():
    heats[m] = positive_l1(saliency.explain(m, apply_fn, params, x_adv, target, key=keys,
                                            layer=layer, **kw))
  for m, heat in heats.items():
    order = pixel_order(heat)
    if m != 'random':
      out[f'order/{m}'] = order
      out[f'positive/{m}'] = (heat > 0).sum(axis=(1, 2)).astype(jnp.int32)
    out[f'{m}/jaccard'], out[f'{m}/hamming'] = localization(
        order[:, None] < k[:, :, None, None], region)
  return out


def example_keys(seed: int, image_index: jax.Array, region: jax.Array) -> jax.Array:
  """One typed key per adversarial example: ``fold_in(fold_in(key(seed), image), region)``."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i, r: jax.random.fold_in(jax.random.fold_in(base, i), r))(
      image_index, region)


def successes(attack: Mapping[str, np.ndarray]) -> np.ndarray:
  """(image position, region) of every successful attack, image-major: i64[M,2]."""
  return np.argwhere(attack['status'] == SUCCESS)


def segment_batch(x: np.ndarray, *, cfg: Config) -> dict[str, np.ndarray]:
  """The attack stage's host work on one batch: Felzenszwalb segments, largest first.

  Args:
    x: f32[B,H,W,C] in [0, 1].
    cfg: the run's settings (``felzenszwalb_*``).

  Returns:
    ``segments`` i32[B,H,W] (``by_size``) and ``num_segments`` i32[B].
  """
  seg = by_size(segment_parallel(x, segmentation='felzenszwalb', scale=cfg.felzenszwalb_scale,
                                 sigma=cfg.felzenszwalb_sigma,
                                 min_size=cfg.felzenszwalb_min_size))
  return {'segments': seg, 'num_segments': seg.max(axis=(1, 2)) + 1}


def attack_step(apply_fn: ApplyFn, *, cfg: Config) -> runner.StepFn:
  """The attack stage's per-example step, ``step(params, batch) -> attack_batch(...)``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    cfg: the run's settings.

  Returns:
    ``step(params, batch)`` on ``batch['x']`` f32[B,H,W,C] and ``batch['segments']``
    i32[B,H,W] (``segment_batch``), for ``runner.compile_step``.
  """
  def step(params, batch):
    return attack_batch(apply_fn, params, batch['x'], batch['segments'], cfg=cfg)

  return step


def attack_stage(apply_fn: ApplyFn, inputs: Callable[[np.ndarray], runner.HostBatch], *,
                 cfg: Config, mesh: jax.sharding.Mesh) -> runner.Stage:
  """The ``attack`` stage: ``segment_batch`` on the host, then ``attack_step`` compiled.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``; the stage's ``replicated`` is its
      params.
    inputs: ``inputs(ids) -> {'x': f32[n,H,W,C] in [0, 1], 'label': int[n]}``.
    cfg: the run's settings.
    mesh: from ``parallel.data_mesh``.

  Returns:
    The stage; its shards hold ``attack_batch``'s outputs, ``x``, ``label``, ``segments``
    and ``num_segments``.
  """
  return runner.Stage(ATTACK_STAGE, runner.compile_step(attack_step(apply_fn, cfg=cfg), mesh),
                      inputs, cfg.batch_size,
                      prepare=lambda batch: segment_batch(batch['x'], cfg=cfg),
                      record=('x', 'label', 'segments', 'num_segments'))


def run(cfg: Config, *, output_dir: store.PathLike, data_dir: str | None = None,
        resume: bool = False, mesh: jax.sharding.Mesh | None = None) -> pathlib.Path:
  """Runs both stages over the first ``cfg.num_examples`` test images (``runner``).

  Each finished batch is written atomically as a shard; with ``resume`` a killed run skips
  the batches on disk (the settings must be the same). The explanation stage's work list,
  the successful attacks in image-major order, is fixed once the attack stage is complete.

  Args:
    cfg: the settings.
    output_dir: where ``config.json`` and ``shards/`` go.
    data_dir: the offline data directory (default ``$ADVSAL_DATA_DIR``, then tfds).
    resume: continue a run already in ``output_dir``.
    mesh: default ``parallel.data_mesh()``.

  Returns:
    ``output_dir``.

  Raises:
    ValueError: bad settings, or an existing run with other settings / without ``resume``.
    checkpoints.CheckpointError, FileNotFoundError: missing checkpoint or data.
  """
  validate(cfg)
  model, variables, meta = checkpoints.load(cfg.checkpoint)
  test = data.load(meta['dataset'], 'test', data_dir=data_dir)
  shape = test.images.shape[1:]
  k = int(jax.eval_shape(model.apply, variables, jnp.zeros((1, *shape))).shape[-1])
  validate(cfg, split_size=len(test.labels), num_classes=k)
  config = {**dataclasses.asdict(cfg), 'model': meta['model'], 'dataset': meta['dataset'],
            'checkpoint_test_accuracy': meta['test_accuracy'], 'class_names': test.class_names,
            'cam_layer': models.cam_layer(meta)}
  out = runner.open_output_dir(output_dir, config, resume=resume)
  mesh = parallel.data_mesh() if mesh is None else mesh
  stage = attack_stage(
      model.apply, lambda ids: {'x': data.to_float(test.images[ids]), 'label': test.labels[ids]},
      cfg=cfg, mesh=mesh)
  runner.run_stage(stage, output_dir=out, work=np.arange(cfg.num_examples),
                   replicated=variables, mesh=mesh)

  attack = store.load_shards(out, ATTACK_STAGE)
  pairs = successes(attack)
  if not len(pairs):
    return out
  lime_kw = cfg.method_kwargs.get('lime', {})

  def gather(ids):
    j, r = pairs[ids, 0], pairs[ids, 1]
    return {'x_adv': attack['x_adv'][j, r], 'region': attack['segments'][j] == r[:, None, None],
            'image_index': attack['index'][j].astype(np.int32), 'region_id': r.astype(np.int32)}

  def lime_segment(batch):
    return {'lime_segments': segment_parallel(
        batch['x_adv'], segmentation=lime_kw.get('segmentation', 'quickshift'),
        **lime_kw.get('segmentation_kwargs', {}))}

  def explain_fn(params, batch):
    keys = example_keys(cfg.seed, batch['image_index'], batch['region_id'])
    return explain_batch(model.apply, params, batch['x_adv'], batch['region'],
                         batch['lime_segments'], keys, cfg=cfg, layer=config['cam_layer'])

  stage = runner.Stage(EXPLAIN_STAGE, runner.compile_step(explain_fn, mesh), gather,
                       cfg.explain_batch_size, prepare=lime_segment,
                       record=('image_index', 'region_id'), unit='adversarial examples')
  runner.run_stage(stage, output_dir=out, work=np.arange(len(pairs)), replicated=variables,
                   mesh=mesh)
  return out
