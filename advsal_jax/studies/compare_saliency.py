"""Study 000: saliency maps of clean vs FGSM-adversarial images.

For each image: the clean prediction ``real_pred``; untargeted FGSM at several budgets and
targeted FGSM towards every other class; the prediction ``fake_pred`` on each adversarial
image; saliency maps of the clean image w.r.t. ``real_pred`` and of each adversarial image
w.r.t. its ``fake_pred``; and the similarity of each (clean, adversarial) pair of maps.
One compiled call does all of that for a batch of images (attacks vmapped over budgets and
targets, maps for all variants batched, metrics batched); ``runner`` loops over batches.

Reference: Liu, Liu & Hosseini, "Analyzing the Effect of Adversarial Inputs on Saliency Maps".
"""

import dataclasses
import functools
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
from advsal_jax.studies import methods
from advsal_jax.studies import runner
from advsal_jax.studies import store
from advsal_jax.types import ApplyFn, Params

NAME = 'compare_saliency'
STAGE = 'compare'

METRICS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    'spearman': metrics.spearman,
    # Maps are normalised to [0, 1] before comparison, hence data_range=1; Gaussian 11x11
    # window with sigma 1.5 and population covariance, as in Wang et al. (2004).
    'mean_ssim': functools.partial(metrics.mean_ssim, data_range=1.0),
    'hog_pearson': metrics.hog_pearson,
}
"""Similarity of two batches of normalised maps f32[N,H,W] -> f32[N]."""

PAPER_METRICS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    # skimage's structural_similarity with its defaults as the paper's code called it
    # (uniform 7x7 window, sample covariance, the float dtype's data range [-1, 1], so 2)
    # on the maps that code compared: raw attributions in the model's standardised input
    # units with their channels, CAM maps min-max normalised. See ``paper_maps``.
    'mean_ssim_paper': functools.partial(metrics.mean_ssim, data_range=2.0, win_size=7,
                                         gaussian_weights=False, use_sample_covariance=True),
}
"""Similarity of two batches of ``paper_maps`` -> f32[N]: the paper's SSIM convention."""

EPS_SPACES = ('normalized', 'pixel')
PAPER_METHOD_KWARGS = {'smoothgrad': {'num_samples': 10, 'noise_level': 0.15}}


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of one run (written to ``config.json``).

  Attributes:
    checkpoint: registered model name or checkpoint directory.
    num_examples: the first N images of the model's test split.
    batch_size: images per compiled batch (each expands to 1 + E + K - 1 variants).
    untargeted_eps: FGSM budgets of the untargeted sweep.
    targeted_eps: FGSM budget of the targeted attacks (towards every class != real_pred).
    eps_space: 'normalized' (the paper's: budgets in the model's standardised input space,
      applied in pixel space as eps * std per channel) or 'pixel' (budgets in [0, 1] units).
    methods: names from ``saliency.REGISTRY``.
    metrics: names from ``METRICS`` or ``PAPER_METRICS``.
    method_kwargs: method name -> hyper-parameters (over the registry's defaults).
    seed: seed of the stochastic methods (image i uses ``fold_in(key(seed), i)``).
  """
  checkpoint: str = 'alexnet_cifar'
  num_examples: int = 10_000
  batch_size: int = 32
  untargeted_eps: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
  targeted_eps: float = 0.4
  eps_space: str = 'normalized'
  methods: tuple[str, ...] = ('smoothgrad', 'grad_cam', 'guided_backprop')
  metrics: tuple[str, ...] = ('spearman', 'mean_ssim', 'hog_pearson', 'mean_ssim_paper')
  method_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=lambda: dict(PAPER_METHOD_KWARGS))
  seed: int = 0



def validate(cfg: Config, *, split_size: int):
  """Raises ValueError naming the bad setting before any computation."""
  unknown = [m for m in cfg.methods if m not in saliency.REGISTRY]
  if unknown or not cfg.methods:
    raise ValueError(f'methods: unknown {unknown}; choose from {sorted(saliency.REGISTRY)}.')
  unknown = [m for m in cfg.metrics if m not in METRICS and m not in PAPER_METRICS]
  if unknown or not cfg.metrics:
    raise ValueError(f'metrics: unknown {unknown}; choose from '
                     f'{sorted({**METRICS, **PAPER_METRICS})}.')
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
  if cfg.batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {cfg.batch_size}.')


def eps_per_channel(eps: float, cfg: Config, std: tuple[float, ...]) -> np.ndarray:
  """The pixel-space L-inf budget per channel, f32[C], for a budget ``eps`` in cfg.eps_space."""
  scale = np.asarray(std, np.float32) if cfg.eps_space == 'normalized' else np.ones(len(std))
  return (np.float32(eps) * scale).astype(np.float32)


def paper_maps(attr: jax.Array, family: str, input_std: jax.typing.ArrayLike) -> jax.Array:
  """The maps the paper's code compared with SSIM.

  Args:
    attr: f32[N,H,W,C] attributions w.r.t. pixels in [0, 1].
    family: the method's family (``saliency.REGISTRY[name].family``).
    input_std: f32[C] the model's normalisation std: a gradient w.r.t. the standardised
      input ``(x - mean) / std`` is the pixel gradient times ``std``.

  Returns:
    Gradient family: f32[N,H,W,C] raw attributions in standardised-input units; others:
    f32[N,H,W] heatmaps min-max normalised to [0, 1].
  """
  if family == 'gradient':
    return attr * jnp.asarray(input_std, attr.dtype).reshape(1, 1, 1, -1)
  return saliency.normalize(saliency.to_heatmap(attr), mode='minmax')


def _maps(apply_fn, params, method, x, target, keys, cfg, layer, input_std):
  """Normalised heatmaps f32[N,H,W] of ``method`` for ``target``, and its ``paper_maps``."""
  attr = saliency.explain(method, apply_fn, params, x, target, key=keys, layer=layer,
                          **cfg.method_kwargs.get(method, {}))
  family = saliency.REGISTRY[method].family
  return saliency.heatmap(attr, family), paper_maps(attr, family, input_std)


def attack_variants(apply_fn: ApplyFn, params: Params, x: jax.Array, eps_untargeted: jax.Array,
                    eps_targeted: jax.Array, *, num_classes: int) -> dict[str, jax.Array]:
  """The pipeline's attack stage: every FGSM variant of a batch and the model's view of it.

  Variant ``v < E`` is untargeted FGSM at budget ``eps_untargeted[v]``; the other ``K - 1``
  are targeted FGSM at ``eps_targeted`` towards ``(real_pred + v - E + 1) % K``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B,H,W,C] in [0, 1].
    eps_untargeted: f32[E,C] pixel-space budgets per channel.
    eps_targeted: f32[C].
    num_classes: K.

  Returns:
    ``real_pred`` int32[B], ``x_adv`` f32[V,B,H,W,C] (V = E + K - 1), ``fake_pred``/``target``
    int32[V,B] (target -1 for the untargeted variants), ``success`` bool[V,B] and
    ``linf``/``l2`` f32[V,B].
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
  fake = apply_fn(params, x_adv.reshape(v * b, *x.shape[1:])).argmax(-1).reshape(v, b)
  target = jnp.concatenate([jnp.full((eps_untargeted.shape[0], b), -1, real.dtype), targets])
  success = jnp.where(target < 0, fake != real[None], fake == target)
  delta = (x_adv - x[None]).reshape(v * b, -1)
  return {'real_pred': real, 'x_adv': x_adv, 'fake_pred': fake, 'target': target,
          'success': success, 'linf': metrics.linf_norm(delta).reshape(v, b),
          'l2': metrics.l2_norm(delta).reshape(v, b)}


def variant_maps(apply_fn: ApplyFn, params: Params, x: jax.Array, x_adv: jax.Array,
                 real_pred: jax.Array, fake_pred: jax.Array, keys: jax.Array, *, cfg: Config,
                 layer: str, input_std: tuple[float, ...] | None = None
                 ) -> dict[str, dict[str, jax.Array]]:
  """The pipeline's maps stage: each method's maps of the clean images and of every variant.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B,H,W,C] in [0, 1].
    x_adv: f32[V,B,H,W,C] its variants (``attack_variants``).
    real_pred: int32[B] the classes explained on ``x``.
    fake_pred: int32[V,B] the classes explained on ``x_adv``.
    keys: typed PRNG keys [B] of the stochastic methods, one per image (its variants reuse it).
    cfg: the run's settings (``methods``, ``method_kwargs``).
    layer: the Grad-CAM/CAM layer.
    input_std: the model's normalisation std per channel, for ``paper_maps`` (default 1).

  Returns:
    ``maps[method]``: ``clean`` f32[B,H,W] and ``adv`` f32[V*B,H,W] normalised heatmaps
    (``saliency.heatmap``), ``clean_paper`` and ``adv_paper`` their ``paper_maps``.
  """
  v, b = x_adv.shape[:2]
  std = np.ones(x.shape[-1], np.float32) if input_std is None else np.asarray(input_std,
                                                                            np.float32)
  flat = x_adv.reshape(v * b, *x.shape[1:])
  maps = {}
  for method in cfg.methods:
    clean, clean_paper = _maps(apply_fn, params, method, x, real_pred, keys, cfg, layer, std)
    adv, adv_paper = _maps(apply_fn, params, method, flat, fake_pred.reshape(-1),
                           jnp.tile(keys, v), cfg, layer, std)
    maps[method] = {'clean': clean, 'clean_paper': clean_paper, 'adv': adv,
                    'adv_paper': adv_paper}
  return maps


def pair_metrics(maps: dict[str, dict[str, jax.Array]], *, cfg: Config) -> dict[str, jax.Array]:
  """The pipeline's metrics stage: the similarity of every (clean, variant) pair of maps.

  Args:
    maps: ``variant_maps``'s output: per method ``clean``/``clean_paper`` [B, ...] and
      ``adv``/``adv_paper`` [V*B, ...].
    cfg: the run's settings (``metrics``).

  Returns:
    ``<method>/<metric>`` f32[V,B] for every method of ``maps`` and metric of ``cfg``.
  """
  out = {}
  for method, m in maps.items():
    b = m['clean'].shape[0]
    v = m['adv'].shape[0] // b
    for name in cfg.metrics:
      a, c = ((m['adv_paper'], m['clean_paper']) if name in PAPER_METRICS
              else (m['adv'], m['clean']))
      fn = PAPER_METRICS.get(name) or METRICS[name]
      c = jnp.broadcast_to(c[None], (v, *c.shape)).reshape(a.shape)
      out[f'{method}/{name}'] = fn(c, a).reshape(v, b)
  return out


def compare_batch(apply_fn: ApplyFn, params: Params, x: jax.Array, index: jax.Array,
                  eps_untargeted: jax.Array, eps_targeted: jax.Array, *,
                  cfg: Config, layer: str, num_classes: int,
                  input_std: tuple[float, ...] | None = None) -> dict[str, jax.Array]:
  """The whole per-batch pipeline: ``attack_variants``, ``variant_maps``, ``pair_metrics``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B,H,W,C] in [0, 1].
    index: int32[B] test-split indices (seed the stochastic methods per image).
    eps_untargeted: f32[E,C] pixel-space budgets per channel.
    eps_targeted: f32[C].
    cfg: the run's settings.
    layer: the Grad-CAM/CAM layer.
    num_classes: K.
    input_std: the model's normalisation std per channel, for ``paper_maps`` (default 1).

  Returns:
    ``real_pred`` int32[B], ``fake_pred``/``target`` int32[V,B], ``success`` bool[V,B],
    ``linf``/``l2`` f32[V,B], and ``<method>/<metric>`` f32[V,B] for every pair.
  """
  out = attack_variants(apply_fn, params, x, eps_untargeted, eps_targeted,
                        num_classes=num_classes)
  x_adv = out.pop('x_adv')
  maps = variant_maps(apply_fn, params, x, x_adv, out['real_pred'], out['fake_pred'],
                      runner.example_keys(cfg.seed, index), cfg=cfg, layer=layer,
                      input_std=input_std)
  return {**out, **pair_metrics(maps, cfg=cfg)}


def make_step(apply_fn: ApplyFn, mesh: jax.sharding.Mesh, *, cfg: Config, layer: str,
              num_classes: int, input_std: tuple[float, ...] | None = None) -> runner.StepFn:
  """``compare_batch`` compiled and data-parallel over ``mesh`` (``runner.compile_step``).

  Every device runs ``compare_batch`` on its own ``B / num_devices`` images: the pipeline is
  per-image (the stochastic methods' noise is keyed by test index), so the results are those
  of one device, without the all-gathers XLA inserts when it partitions the
  ``[V, B] -> [V * B]`` reshapes itself.

  Returns:
    ``step((params, eps_untargeted, eps_targeted), {'x': x, 'index': index})`` with
    ``compare_batch``'s outputs, batch axis first (``[B]`` and ``[B, V]``).
  """
  def per_device(replicated, batch):
    params, eps_u, eps_t = replicated
    out = compare_batch(apply_fn, params, batch['x'], batch['index'], eps_u, eps_t, cfg=cfg,
                        layer=layer, num_classes=num_classes, input_std=input_std)
    return {k: jnp.moveaxis(v, -1, 0) for k, v in out.items()}

  return runner.compile_step(per_device, mesh)


def example_maps(apply_fn: ApplyFn, params: Params, x: jax.Array, eps: jax.Array, *,
                 cfg: Config, layer: str, index: int) -> dict[str, Any]:
  """Maps of one image and its untargeted adversarials (the paper's Figures 1 and 3).

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
  maps = {m: _maps(apply_fn, params, m, images, preds, keys, cfg, layer,
                   np.ones(x.shape[-1], np.float32))[0]
          for m in cfg.methods}
  return {'images': images, 'preds': preds, 'maps': maps}


def run(cfg: Config, *, output_dir: store.PathLike, data_dir: str | None = None,
        resume: bool = False, mesh: jax.sharding.Mesh | None = None) -> pathlib.Path:
  """Runs the comparison over the first ``cfg.num_examples`` test images (``runner``).

  Each finished batch is written atomically as a shard; with ``resume`` a killed run skips
  the batches already on disk (the settings must be the same). Every batch is split over
  the devices of ``mesh``; a batch that is not a multiple of the device count is padded by
  repetition and the padding dropped, so a run may be resumed on another device count.

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
  methods.check_methods(cfg.methods, cfg.method_kwargs, model.apply, variables,
                        test.images.shape[1:], layer=models.cam_layer(meta))
  config = {**dataclasses.asdict(cfg), 'model': meta['model'], 'dataset': meta['dataset'],
            'checkpoint_test_accuracy': meta['test_accuracy'], 'class_names': test.class_names,
            'cam_layer': models.cam_layer(meta)}
  out = runner.open_output_dir(output_dir, config, resume=resume)
  mesh = parallel.data_mesh() if mesh is None else mesh
  k = int(jax.eval_shape(model.apply, variables, jnp.zeros((1, *test.images.shape[1:]))).shape[-1])
  eps_u = np.stack([eps_per_channel(e, cfg, model.std) for e in cfg.untargeted_eps])
  eps_t = eps_per_channel(cfg.targeted_eps, cfg, model.std)
  step = make_step(model.apply, mesh, cfg=cfg, layer=config['cam_layer'], num_classes=k,
                   input_std=tuple(model.std))
  stage = runner.Stage(
      STAGE, step, lambda ids: {'x': data.to_float(test.images[ids]), 'label': test.labels[ids]},
      cfg.batch_size, record=('label',))
  runner.run_stage(stage, output_dir=out, work=np.arange(cfg.num_examples),
                   replicated=(variables, eps_u, eps_t), mesh=mesh)
  return out


def load_results(output_dir: store.PathLike) -> dict[str, np.ndarray]:
  """Every finished batch: ``index``/``label``/``real_pred`` [N] and per-variant [V, N]."""
  res = store.load_shards(output_dir, STAGE)
  return {k: (v if k == 'seconds' or v.ndim == 1 else np.moveaxis(v, 0, -1))
          for k, v in res.items()}
