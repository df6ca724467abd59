"""Study 000: saliency maps of clean vs FGSM-adversarial CIFAR-10 images.

For each image: the clean prediction ``real_pred``; untargeted FGSM at several budgets and
targeted FGSM towards every other class; the prediction ``fake_pred`` on each adversarial
image; saliency maps of the clean image w.r.t. ``real_pred`` and of each adversarial image
w.r.t. its ``fake_pred``; and the similarity of each (clean, adversarial) pair of maps.
One jitted call does all of that for a batch of images (attacks vmapped over budgets and
targets, maps for all variants batched, metrics batched).

Reference: Liu, Liu & Hosseini, "Analyzing the Effect of Adversarial Inputs on Saliency Maps".
"""

import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import attacks
from advsal_jax import checkpoints
from advsal_jax import compilation
from advsal_jax import data
from advsal_jax import metrics
from advsal_jax import models
from advsal_jax import parallel
from advsal_jax import saliency
from advsal_jax.types import ApplyFn, Params

METRICS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    'spearman': metrics.spearman,
    # Maps are normalised to [0, 1] before comparison, hence data_range=1; Gaussian 11x11
    # window with sigma 1.5 and population covariance, as in Wang et al. (2004).
    'mean_ssim': functools.partial(metrics.mean_ssim, data_range=1.0),
    'hog_pearson': metrics.hog_pearson,
}
EPS_SPACES = ('normalized', 'pixel')


@dataclasses.dataclass(frozen=True)
class ComparisonConfig:
  """Settings of one comparison run (written to ``config.json``).

  Attributes:
    checkpoint: registered model name or checkpoint directory.
    num_examples: the first N images of the CIFAR-10 test split.
    batch_size: images per compiled batch (each expands to 1 + E + K - 1 variants).
    untargeted_eps: FGSM budgets of the untargeted sweep.
    targeted_eps: FGSM budget of the targeted attacks (towards every class != real_pred).
    eps_space: 'normalized' (the paper's: budgets in the model's standardised input space,
      applied in pixel space as eps * std per channel) or 'pixel' (budgets in [0, 1] units).
    methods: names from ``saliency.METHODS``.
    metrics: names from ``METRICS``.
    smoothgrad_samples: SmoothGrad's N.
    smoothgrad_noise: SmoothGrad's noise level (fraction of the image's value range).
    seed: SmoothGrad noise seed (image i uses ``fold_in(key(seed), i)``).
  """
  checkpoint: str = 'alexnet_cifar'
  num_examples: int = 10_000
  batch_size: int = 32
  untargeted_eps: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
  targeted_eps: float = 0.4
  eps_space: str = 'normalized'
  methods: tuple[str, ...] = ('smoothgrad', 'grad_cam', 'guided_backprop')
  metrics: tuple[str, ...] = ('spearman', 'mean_ssim', 'hog_pearson')
  smoothgrad_samples: int = 10
  smoothgrad_noise: float = 0.15
  seed: int = 0


def validate(cfg: ComparisonConfig, *, split_size: int):
  """Raises ValueError naming the bad setting before any computation."""
  unknown = [m for m in cfg.methods if m not in saliency.METHODS]
  if unknown or not cfg.methods:
    raise ValueError(f'methods: unknown {unknown}; choose from {sorted(saliency.METHODS)}.')
  unknown = [m for m in cfg.metrics if m not in METRICS]
  if unknown or not cfg.metrics:
    raise ValueError(f'metrics: unknown {unknown}; choose from {sorted(METRICS)}.')
  if any(e < 0 for e in cfg.untargeted_eps) or cfg.targeted_eps < 0:
    raise ValueError(f'eps must be >= 0, got untargeted {cfg.untargeted_eps}, targeted '
                     f'{cfg.targeted_eps}.')
  if not cfg.untargeted_eps:
    raise ValueError('untargeted_eps must name at least one budget.')
  if cfg.eps_space not in EPS_SPACES:
    raise ValueError(f'eps_space must be one of {EPS_SPACES}, got {cfg.eps_space!r}.')
  if not 1 <= cfg.num_examples <= split_size:
    raise ValueError(f'num_examples must be in [1, {split_size}] (the test split), got '
                     f'{cfg.num_examples}.')
  if cfg.batch_size < 1 or cfg.smoothgrad_samples < 1:
    raise ValueError('batch_size and smoothgrad_samples must be positive.')


def eps_per_channel(eps: float, cfg: ComparisonConfig, std: tuple[float, ...]) -> np.ndarray:
  """The pixel-space L-inf budget per channel, f32[C], for a budget ``eps`` in cfg.eps_space."""
  scale = np.asarray(std, np.float32) if cfg.eps_space == 'normalized' else np.ones(len(std))
  return (np.float32(eps) * scale).astype(np.float32)


def variant_table(cfg: ComparisonConfig, num_classes: int) -> dict[str, np.ndarray]:
  """Describes the V adversarial variants of each image.

  Returns:
    ``kind`` (0 untargeted, 1 targeted) int32[V], ``eps`` f32[V] (in cfg.eps_space units)
    and ``target_offset`` int32[V]: a targeted variant j attacks class
    ``(real_pred + target_offset) % K``; -1 for untargeted ones.
  """
  e, t = len(cfg.untargeted_eps), num_classes - 1
  return {
      'kind': np.array([0] * e + [1] * t, np.int32),
      'eps': np.array(list(cfg.untargeted_eps) + [cfg.targeted_eps] * t, np.float32),
      'target_offset': np.array([-1] * e + list(range(1, num_classes)), np.int32),
  }


def heatmap(attr: jax.Array) -> jax.Array:
  """One-channel map in [0, 1] for comparison.

  Gradient-family maps (multi-channel) are reduced with the sum of absolute values over
  channels and normalised by their 99th percentile, as PAIR's grayscale visualisation
  does; class-activation maps (one channel, non-negative) are min-max normalised.

  Args:
    attr: f32[N,H,W,C].

  Returns:
    f32[N,H,W] in [0, 1].
  """
  maps = saliency.to_heatmap(attr, reduce='abs_sum')
  mode = 'minmax' if attr.shape[-1] == 1 else 'percentile'
  return saliency.normalize(maps, mode=mode)


def _explain(apply_fn, params, method, x, target, keys, cfg, layer):
  fn = saliency.METHODS[method]
  if method in ('smoothgrad',):
    return fn(apply_fn, params, x, target, key=keys, num_samples=cfg.smoothgrad_samples,
              noise_level=cfg.smoothgrad_noise)
  if method in saliency.LAYER_METHODS:
    return fn(apply_fn, params, x, target, layer=layer)
  if method in saliency.STOCHASTIC_METHODS:
    return fn(apply_fn, params, x, target, key=keys)
  return fn(apply_fn, params, x, target)


def compare_batch(apply_fn: ApplyFn, params: Params, x: jax.Array, index: jax.Array,
                  eps_untargeted: jax.Array, eps_targeted: jax.Array, *,
                  cfg: ComparisonConfig, layer: str, num_classes: int) -> dict[str, jax.Array]:
  """The whole per-batch pipeline (jit it with cfg, layer and num_classes static).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B,32,32,3] in [0, 1].
    index: int32[B] test-split indices (seed SmoothGrad's noise per image).
    eps_untargeted: f32[E,C] pixel-space budgets per channel.
    eps_targeted: f32[C].
    cfg: the run's settings.
    layer: the Grad-CAM/CAM layer.
    num_classes: K.

  Returns:
    ``real_pred`` int32[B], ``fake_pred``/``target`` int32[V,B], ``success`` bool[V,B],
    ``linf``/``l2`` f32[V,B], and ``<method>/<metric>`` f32[V,B] for every pair.
  """
  b = x.shape[0]
  real = apply_fn(params, x).argmax(-1)

  def untargeted(eps):
    return attacks.fgsm(apply_fn, params, x, real, eps=eps.reshape(1, 1, 1, -1))

  offsets = jnp.arange(1, num_classes)
  targets = (real[None, :] + offsets[:, None]) % num_classes  # [K-1, B]

  def targeted(tgt):
    return attacks.fgsm(apply_fn, params, x, tgt, targeted=True,
                        eps=eps_targeted.reshape(1, 1, 1, -1))

  x_adv = jnp.concatenate([jax.vmap(untargeted)(eps_untargeted), jax.vmap(targeted)(targets)])
  v = x_adv.shape[0]
  flat = x_adv.reshape(v * b, *x.shape[1:])
  fake = apply_fn(params, flat).argmax(-1).reshape(v, b)
  target = jnp.concatenate([jnp.full((len(cfg.untargeted_eps), b), -1, real.dtype), targets])
  success = jnp.where(target < 0, fake != real[None], fake == target)
  delta = (x_adv - x[None]).reshape(v * b, -1)
  out = {'real_pred': real, 'fake_pred': fake, 'target': target, 'success': success,
         'linf': metrics.linf_norm(delta).reshape(v, b),
         'l2': metrics.l2_norm(delta).reshape(v, b)}
  base_key = jax.random.key(cfg.seed)
  keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(index)
  for method in cfg.methods:
    clean = heatmap(_explain(apply_fn, params, method, x, real, keys, cfg, layer))
    adv = heatmap(_explain(apply_fn, params, method, flat, fake.reshape(-1),
                                   jnp.tile(keys, v), cfg, layer))
    clean_rep = jnp.broadcast_to(clean[None], (v, *clean.shape)).reshape(adv.shape)
    for name in cfg.metrics:
      out[f'{method}/{name}'] = METRICS[name](clean_rep, adv).reshape(v, b)
  return out


def make_step(apply_fn: ApplyFn, mesh: jax.sharding.Mesh, *, cfg: ComparisonConfig, layer: str,
              num_classes: int) -> Callable[..., dict[str, jax.Array]]:
  """``compare_batch`` jitted and data-parallel over ``mesh``.

  Every device runs ``compare_batch`` on its own ``B / num_devices`` images (``shard_map``):
  the pipeline is per-image (SmoothGrad's noise is keyed by test index), so the results are
  those of one device, without the all-gathers XLA inserts when it partitions the
  ``[V, B] -> [V * B]`` reshapes itself. With one device it is ``compare_batch`` under
  ``compilation.jit`` (``jax.jit`` with ``compilation.compiler_options()``).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    mesh: from ``parallel.data_mesh``.
    cfg, layer, num_classes: as in ``compare_batch``.

  Returns:
    ``step(params, x, index, eps_untargeted, eps_targeted)`` with ``compare_batch``'s
    arguments and outputs; x and index hold B images, B a multiple of the device count, and
    are best placed with ``parallel.shard_batch``, params and budgets with
    ``parallel.replicate``.
  """
  def batch_major(params, x, index, eps_untargeted, eps_targeted):
    out = compare_batch(apply_fn, params, x, index, eps_untargeted, eps_targeted, cfg=cfg,
                        layer=layer, num_classes=num_classes)
    return {k: jnp.moveaxis(v, -1, 0) for k, v in out.items()}

  sharded = parallel.data_parallel(batch_major, mesh, batched=(False, True, True, False, False))

  def step(params, x, index, eps_untargeted, eps_targeted):
    out = sharded(params, x, index, eps_untargeted, eps_targeted)
    return {k: jnp.moveaxis(v, 0, -1) for k, v in out.items()}

  return compilation.jit(step)


def example_maps(apply_fn: ApplyFn, params: Params, x: jax.Array, eps: jax.Array, *,
                 cfg: ComparisonConfig, layer: str, index: int) -> dict[str, Any]:
  """Maps of one image and its untargeted adversarials (Figure 1/3).

  Args:
    x: f32[1,H,W,C].
    eps: f32[E,C] pixel budgets per channel.

  Returns:
    ``images`` f32[1+E,H,W,C], ``preds`` int32[1+E] and ``maps[method]`` f32[1+E,H,W].
  """
  real = apply_fn(params, x).argmax(-1)
  advs = [attacks.fgsm(apply_fn, params, x, real, eps=e.reshape(1, 1, 1, -1)) for e in eps]
  images = jnp.concatenate([x] + advs)
  preds = apply_fn(params, images).argmax(-1)
  keys = jnp.tile(jax.random.fold_in(jax.random.key(cfg.seed), index)[None], len(images))
  maps = {m: heatmap(_explain(apply_fn, params, m, images, preds, keys, cfg, layer))
          for m in cfg.methods}
  return {'images': images, 'preds': preds, 'maps': maps}


def _write_atomic(path: pathlib.Path, writer: Callable[[Any], None], mode: str = 'wb'):
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, mode) as fh:
    writer(fh)
  os.replace(tmp, path)


def shard_path(output_dir: pathlib.Path, start: int) -> pathlib.Path:
  """Where the results of the batch starting at test index ``start`` are stored."""
  return output_dir / 'shards' / f'batch_{start:06d}.npz'


def _existing_run_problem(out: pathlib.Path, config: dict, resume: bool) -> int:
  """0 if ``out`` may hold this run, 1 if it holds a run and not ``resume``, 2 if another one."""
  if not (out / 'config.json').exists():
    return 0
  if not resume:
    return 1
  old = json.loads((out / 'config.json').read_text())
  return 0 if old == json.loads(json.dumps(config)) else 2


def run(cfg: ComparisonConfig, *, output_dir: str | os.PathLike, data_dir: str | None = None,
        resume: bool = False, mesh: jax.sharding.Mesh | None = None) -> pathlib.Path:
  """Runs the comparison over the first ``cfg.num_examples`` test images.

  Each finished batch is written atomically to ``output_dir/shards/``; with ``resume`` a
  killed run skips the batches already on disk (the settings must be the same).

  Every batch is split over the devices of ``mesh`` (data parallel, params replicated). When
  ``cfg.batch_size`` is not a multiple of the device count the batch is padded up to the next
  multiple by repeating its last image (as the last batch of the split always is) and the
  padded rows are dropped: the results do not depend on the device count, so a run may be
  resumed on another machine. In a multi-process run (``jax.distributed``) every process
  loads the checkpoint and the data and computes its devices' share; only process 0 checks
  and writes ``output_dir`` and the others follow its view of it.

  Args:
    cfg: the settings.
    output_dir: where ``config.json`` and ``shards/`` go.
    data_dir: the offline data directory (default ``$ADVSAL_DATA_DIR``, then tfds).
    resume: continue a run already in ``output_dir``.
    mesh: default ``parallel.data_mesh()``, every device of every process.

  Returns:
    ``output_dir``.

  Raises:
    ValueError: bad settings, or an existing run with other settings / without ``resume``.
    checkpoints.CheckpointError, FileNotFoundError: missing checkpoint or data.
  """
  model, variables, meta = checkpoints.load(cfg.checkpoint)
  test = data.load(meta['dataset'], 'test', data_dir=data_dir)
  validate(cfg, split_size=len(test.labels))
  mesh = parallel.data_mesh() if mesh is None else mesh
  writer = jax.process_index() == 0
  out = pathlib.Path(output_dir)
  config = {**dataclasses.asdict(cfg), 'model': meta['model'],
            'checkpoint_test_accuracy': meta['test_accuracy'], 'class_names': test.class_names}
  problem = _existing_run_problem(out, config, resume) if writer else 0
  problem = int(parallel.broadcast_from_process0(np.int32(problem)))
  if problem == 1:
    raise ValueError(f'{out} already holds a run; pass resume=True (--resume) to continue it '
                     'or choose another output directory.')
  if problem == 2:
    raise ValueError(f'Cannot resume {out}: its config.json differs from these settings.')
  if writer:
    (out / 'shards').mkdir(parents=True, exist_ok=True)
    _write_atomic(out / 'config.json', lambda f: f.write(json.dumps(config, indent=2)), 'w')

  layer = meta.get('last_conv') or models.get_spec(meta['model']).last_conv
  k = int(jax.eval_shape(model.apply, variables, jnp.zeros((1, *test.images.shape[1:]))).shape[-1])
  eps_u = np.stack([eps_per_channel(e, cfg, model.std) for e in cfg.untargeted_eps])
  eps_t = eps_per_channel(cfg.targeted_eps, cfg, model.std)
  params, eps_u, eps_t = parallel.replicate((variables, eps_u, eps_t), mesh)
  step = make_step(model.apply, mesh, cfg=cfg, layer=layer, num_classes=k)
  padded = parallel.padded_size(cfg.batch_size, mesh)
  starts = list(range(0, cfg.num_examples, cfg.batch_size))
  finished = np.array([writer and shard_path(out, s).exists() for s in starts], np.int32)
  finished = parallel.broadcast_from_process0(finished)
  todo = [s for s, f in zip(starts, finished) if not f]
  logging.info('%d of %d batches to do (%d images each, %d devices) in %s', len(todo),
               len(starts), cfg.batch_size, parallel.num_shards(mesh), out)
  t0, done_images = time.time(), 0
  for i, start in enumerate(todo):
    stop = min(start + cfg.batch_size, cfg.num_examples)
    idx = np.arange(start, start + padded)
    idx = np.minimum(idx, stop - 1)  # Pad by repetition: one compilation, whole shards.
    t = time.time()
    x, index = parallel.shard_batch((data.to_float(test.images[idx]), idx.astype(np.int32)),
                                    mesh)
    res = parallel.to_host(step(params, x, index, eps_u, eps_t))
    n = stop - start
    arrays = {key: np.asarray(val)[..., :n] for key, val in res.items()}
    arrays.update(index=idx[:n], label=test.labels[idx[:n]], seconds=np.float64(time.time() - t))
    if writer:
      _write_atomic(shard_path(out, start), lambda f: np.savez(f, **arrays))
    done_images += n
    rate = done_images / (time.time() - t0)
    remaining = sum(min(s + cfg.batch_size, cfg.num_examples) - s for s in todo[i + 1:])
    logging.info('batch %d/%d (%d images) done: %.2f images/s, ETA %.1f min',
                 len(starts) - len(todo) + i + 1, len(starts), n, rate, remaining / rate / 60)
  return out


def finalize(output_dir: str | os.PathLike, *, data_dir: str | None = None,
             model_and_variables: tuple[Any, Params] | None = None) -> pathlib.Path:
  """Writes the per-example CSV/npz, ``summary.json``, the figures and ``report.md``.

  Args:
    output_dir: a finished ``run``'s directory.
    data_dir: as in ``run``.
    model_and_variables: the run's checkpoint, already loaded; default loads it. A
      multi-process run must pass it: orbax loads collectively, and only process 0 finalizes.

  Returns:
    The path of ``report.md``.
  """
  from advsal_jax import viz  # pylint: disable=g-import-not-at-top (matplotlib only here)
  from advsal_jax.studies import comparison_report as report  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(output_dir)
  config = json.loads((out / 'config.json').read_text())
  cfg = ComparisonConfig(**{f.name: (tuple(config[f.name]) if isinstance(config[f.name], list)
                                     else config[f.name])
                            for f in dataclasses.fields(ComparisonConfig)})
  res = report.load_shards(out)
  _write_atomic(out / 'per_example.npz', lambda f: np.savez(f, **res))
  report.write_csv(report.per_example_rows(res, config), out / 'per_example.csv')
  summary = report.summarize(res, config)
  report.write_json(summary, out / 'summary.json')

  # Figure 2: untargeted sweep.
  eps = list(cfg.untargeted_eps)
  curves = {m: {meth: np.array([[summary['untargeted'][meth][str(e)][m]['all'][k]
                                 for e in eps] for k in ('mean', 'ci_low', 'ci_high')])
                for meth in cfg.methods} for m in cfg.metrics}
  viz.metric_vs_eps(eps, curves, out / 'figure2_sweep.png',
                    xlabel=f'FGSM eps ({cfg.eps_space} space)')
  # Figure 4: targeted, per target class.
  names = config['class_names']
  bars = {m: {meth: np.array([(summary['targeted_by_class'][meth][c][m]['all'] or
                               {'mean': np.nan})['mean'] for c in names])
              for meth in cfg.methods} for m in cfg.metrics}
  viz.bars_by_class(names, bars, out / 'figure4_by_target.png')
  # Figure 1/3: the first image, clean and at three budgets of the sweep.
  model, variables = model_and_variables or checkpoints.load(cfg.checkpoint)[:2]
  test = data.load(config_dataset(config), 'test', data_dir=data_dir)
  picks = sorted({0, len(eps) // 2, len(eps) - 1})
  e_pix = jnp.asarray(np.stack([eps_per_channel(eps[i], cfg, model.std) for i in picks]))
  layer = models.get_spec(config['model']).last_conv
  ex = jax.device_get(example_maps(model.apply, variables, data.to_float(test.images[:1]),
                                   e_pix, cfg=cfg, layer=layer, index=0))
  viz.example_grid(ex['images'], ex['preds'].tolist(), ex['maps'], names,
                   ['clean'] + [f'eps {eps[i]}' for i in picks], out / 'figure1_example.png')
  figures = ['figure1_example.png', 'figure2_sweep.png', 'figure4_by_target.png']
  text = report.report_markdown(summary, config, figures=figures)
  _write_atomic(out / 'report.md', lambda f: f.write(text), 'w')
  return out / 'report.md'


def config_dataset(config: dict) -> str:
  """The dataset of the run's model."""
  return models.get_spec(config['model']).dataset
