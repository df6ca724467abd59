"""Study 002 (AdVis): an FGSM epsilon sweep seen through CAM and graph-based visual saliency.

One stage over the first ``num_examples`` test images. Each batch is one compiled call that,
for every source model ``s`` of ``cfg.models``:

* attacks with untargeted FGSM (true labels) at every eps of ``cfg.eps``, vmapped over eps:
  the gradient does not depend on eps, so it is computed once per image;
* classifies the clean and adversarial images with every model (top-5; white box where the
  model is ``s``, black box otherwise), as they are and after upscaling by ``crop_scale``
  and centre-cropping back to the input size (the paper's Sec. 4);
* explains the clean image for its prediction and each adversarial image for its new
  prediction with Grad-CAM on ``s`` (equal to CAM up to a constant factor on the MobileNets,
  which pool their CAM layer into one dense layer; its generalisation on AlexNet), and
  measures how far the map moves (centre-of-mass shift, Spearman) and grows (area);
* computes GBVS of the clean and adversarial images (label-free), the saliency difference
  (adv - clean, its L1 mass and area) and the Spearman correlation of the log-ratio
  difference with the adversarial CAM, and with the CAM of another image (a control);
* measures the share of the perturbation's and of the loss gradient's energy in a border
  band;
* attacks with DeepFool and compares its perturbation and its GBVS difference with FGSM's at
  ``compare_eps`` (Spearman, top-k Jaccard, cosine of the signed perturbations).

A second, small stage keeps the maps of the first ``num_figure_images`` images for figures.

Reference: Kim et al. (AdVis.js), "Exploring Adversarial Attacks and Defenses through
Visualization" (the paper's demo, CAM of Zhou et al. and GBVS of Harel, Koch & Perona).
"""

import dataclasses
import pathlib
from typing import Any, Mapping

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

NAME = 'advis_sweep'
SWEEP_STAGE = 'sweep'
MAPS_STAGE = 'maps'
TOP = 5
"""Predictions kept per image and model (the paper's top-5 tables)."""
MAP_OUTPUTS = ('x_adv', 'cam_clean', 'cam_adv', 'gbvs_clean', 'gbvs_adv', 'x_deepfool',
               'gbvs_deepfool')
"""What ``sweep_batch`` adds with ``keep_maps`` (kept for the figure images only)."""
# GBVS maps of equal images computed in different batches differ by float noise (relative
# to the uniform density 1/(H*W), about 1e-5); differences below these levels count as none,
# so that ranking them does not correlate noise.
_DIFF_NOISE = 1e-4
_LOG_RATIO_NOISE = 1e-4


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of one run (written to ``config.json``).

  Attributes:
    models: checkpoint names or directories; the first two play the paper's MobileNet V1
      and V2. All must share the dataset (transfer needs one label space).
    num_examples: the first N test images.
    batch_size: images per compiled batch.
    eps: FGSM L-inf budgets in units of 1/255.
    compare_eps: the FGSM budget (one of ``eps``) DeepFool is compared with.
    crop_scale: upscaling factor before the centre crop (the paper's 299/224).
    border: width in pixels of the border band.
    diff_threshold: a pixel belongs to the saliency difference's area where
      ``|adv - clean|`` exceeds this many times the uniform density ``1/(H*W)``.
    top_fraction: share of pixels in the top-k masks compared by Jaccard.
    deepfool_overshoot: DeepFool's overshoot.
    deepfool_max_iter: DeepFool's iteration limit.
    num_figure_images: images whose maps are kept for the figures.
    seed: unused by the computation (every step is deterministic); kept for the common
      flags and the bootstrap CIs of the report.
  """
  models: tuple[str, ...] = ('mobilenet_v1_cifar', 'mobilenet_v2_cifar', 'alexnet_cifar')
  num_examples: int = 256
  batch_size: int = 32
  eps: tuple[float, ...] = (1, 4, 7, 10, 13, 16)
  compare_eps: float = 7
  crop_scale: float = 299 / 224
  border: int = 4
  diff_threshold: float = 0.5
  top_fraction: float = 0.1
  deepfool_overshoot: float = 0.02
  deepfool_max_iter: int = 50
  num_figure_images: int = 4
  seed: int = 0


def validate(cfg: Config, *, split_size: int | None = None,
             image_shape: tuple[int, ...] | None = None):
  """Raises ValueError naming the bad setting; runs before anything is loaded or compiled.

  Args:
    cfg: the settings.
    split_size: test images available (checked when given).
    image_shape: (H, W, C) of the data (checked when given).
  """
  if not cfg.models or len(set(cfg.models)) != len(cfg.models):
    raise ValueError(f'models: expected distinct checkpoint names, got {list(cfg.models)}.')
  if not cfg.eps or any(not 0 <= e <= 255 for e in cfg.eps) or len(set(cfg.eps)) != len(
      cfg.eps):
    raise ValueError(f'eps: expected distinct budgets in [0, 255] (units of 1/255), got '
                     f'{list(cfg.eps)}.')
  if cfg.compare_eps not in cfg.eps:
    raise ValueError(f'compare_eps must be one of eps {list(cfg.eps)}, got {cfg.compare_eps}.')
  for name in ('num_examples', 'batch_size', 'border', 'deepfool_max_iter'):
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'{name} must be an integer >= 1, got {value!r}.')
  if not cfg.crop_scale > 1:
    raise ValueError(f'crop_scale must be > 1 (an upscaling), got {cfg.crop_scale}.')
  if not cfg.diff_threshold > 0:
    raise ValueError(f'diff_threshold must be > 0, got {cfg.diff_threshold}.')
  if not 0 < cfg.top_fraction <= 1:
    raise ValueError(f'top_fraction must be in (0, 1], got {cfg.top_fraction}.')
  if cfg.deepfool_overshoot < 0:
    raise ValueError(f'deepfool_overshoot must be >= 0, got {cfg.deepfool_overshoot}.')
  if not 0 <= cfg.num_figure_images <= cfg.num_examples:
    raise ValueError(f'num_figure_images must be in [0, num_examples={cfg.num_examples}], '
                     f'got {cfg.num_figure_images}.')
  if split_size is not None and cfg.num_examples > split_size:
    raise ValueError(f'num_examples must be <= {split_size} (the test split), got '
                     f'{cfg.num_examples}.')
  if image_shape is not None and 2 * cfg.border >= min(image_shape[:2]):
    raise ValueError(f'border must be < half the image side {min(image_shape[:2])}, got '
                     f'{cfg.border}.')


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A loaded model: its ``apply_fn`` (flax ``model.apply``) and its Grad-CAM layer."""
  name: str
  apply_fn: ApplyFn
  cam_layer: str


def fgsm_sweep(apply_fn: ApplyFn, params: Params, x: jax.Array, labels: jax.Array,
               eps: jax.Array) -> jax.Array:
  """Untargeted FGSM at every budget, all in one call.

  ``attacks.fgsm`` vmapped over ``eps``: its gradient does not depend on eps, so it is not
  batched and runs once.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B,H,W,C] in [0, 1].
    labels: i32[B] true classes.
    eps: f32[E] budgets in [0, 1] pixel units.

  Returns:
    f32[E,B,H,W,C] adversarial images (eps = 0 gives ``x``).
  """
  return jax.vmap(lambda e: attacks.fgsm(apply_fn, params, x, labels, eps=e))(eps)


def top_predictions(logits: jax.Array, k: int = TOP) -> tuple[jax.Array, jax.Array]:
  """The ``k`` most probable classes and their softmax probabilities.

  Args:
    logits: f32[..., K].
    k: how many (at most K).

  Returns:
    (classes i32[..., k], probabilities f32[..., k]), most probable first.
  """
  prob, cls = jax.lax.top_k(jax.nn.softmax(logits), min(k, logits.shape[-1]))
  return cls.astype(jnp.int32), prob


def upscale_center_crop(x: jax.Array, scale: float) -> jax.Array:
  """Bilinear upscaling by ``scale``, then the centre crop of the original size.

  Args:
    x: f32[B,H,W,C].
    scale: > 1.

  Returns:
    f32[B,H,W,C].
  """
  b, h, w, c = x.shape
  nh, nw = round(h * scale), round(w * scale)
  big = jax.image.resize(x, (b, nh, nw, c), 'bilinear')
  top, left = (nh - h) // 2, (nw - w) // 2
  return big[:, top:top + h, left:left + w]


def center_of_mass(maps: jax.Array) -> jax.Array:
  """(row, column) centre of mass of non-negative maps.

  Args:
    maps: f32[B,H,W] >= 0.

  Returns:
    f32[B,2]; NaN for an all-zero map.
  """
  h, w = maps.shape[1:]
  total = maps.sum(axis=(1, 2))
  rows = jnp.einsum('bhw,h->b', maps, jnp.arange(h, dtype=maps.dtype))
  cols = jnp.einsum('bhw,w->b', maps, jnp.arange(w, dtype=maps.dtype))
  com = jnp.stack([rows, cols], axis=1) / total[:, None]
  return jnp.where(total[:, None] > 0, com, jnp.nan)


def area(maps: jax.Array, level: float = 0.5) -> jax.Array:
  """Share of pixels at or above ``level`` times the map's maximum.

  Args:
    maps: f32[B,H,W] >= 0.
    level: in (0, 1].

  Returns:
    f32[B] in (0, 1]; NaN for an all-zero map.
  """
  peak = maps.max(axis=(1, 2), keepdims=True)
  share = jnp.mean(maps >= level * peak, axis=(1, 2))
  return jnp.where(peak[:, 0, 0] > 0, share, jnp.nan)


def border_mask(height: int, width: int, border: int) -> np.ndarray:
  """bool[H,W]: True on the ``border``-pixel band along the image's edges."""
  inside = np.zeros((height, width), bool)
  inside[border:height - border, border:width - border] = True
  return ~inside


def border_share(values: jax.Array, border: int) -> jax.Array:
  """Share of the energy ``sum v^2`` of each example that lies in the border band.

  Args:
    values: f32[B,H,W,C] (a perturbation or a gradient).
    border: band width in pixels.

  Returns:
    f32[B] in [0, 1]; NaN where ``values`` is all zero.
  """
  energy = jnp.square(values).sum(axis=-1)
  band = jnp.asarray(border_mask(*values.shape[1:3], border))[None]
  total = energy.sum(axis=(1, 2))
  return jnp.where(total > 0, (energy * band).sum(axis=(1, 2)) / total, jnp.nan)


def _cam(classifier: Classifier, params: Params, x: jax.Array, target: jax.Array) -> jax.Array:
  """Grad-CAM of ``target`` on ``classifier``: f32[B,H,W]."""
  return saliency.grad_cam(classifier.apply_fn, params, x, target,
                           layer=classifier.cam_layer)[..., 0]


def _top_k_jaccard(a: jax.Array, b: jax.Array, k: int) -> jax.Array:
  return metrics.jaccard(metrics.top_k_mask(a, k), metrics.top_k_mask(b, k))


def _gbvs_difference(adv: jax.Array, clean: jax.Array) -> jax.Array:
  """``saliency_difference`` of GBVS maps f32[B,H,W], float noise set to 0."""
  diff = saliency.saliency_difference(adv, clean)
  h, w = diff.shape[1:]
  return jnp.where(jnp.abs(diff) * (h * w) < _DIFF_NOISE, 0.0, diff)


def _abs_map(delta: jax.Array) -> jax.Array:
  """|delta| summed over channels: f32[B,H,W]."""
  return jnp.abs(delta).sum(axis=-1)


def _by_image(v: jax.Array, e: int, b: int) -> jax.Array:
  """[E*B, ...] (eps-major) -> [B, E, ...]."""
  return jnp.swapaxes(v.reshape(e, b, *v.shape[1:]), 0, 1)


def sweep_batch(classifiers: tuple[Classifier, ...], params: Mapping[str, Params],
                x: jax.Array, labels: jax.Array, *, cfg: Config,
                keep_maps: bool = False) -> dict[str, jax.Array]:
  """Everything the study measures on one batch of clean images (see the module docstring).

  Axes: B images, S source models (``classifiers``), E budgets, T target models (the same
  models, as classifiers of the adversarial images).

  Args:
    classifiers: the S models.
    params: model name -> variables.
    x: f32[B,H,W,C] in [0, 1].
    labels: i32[B] true classes.
    cfg: the settings.
    keep_maps: also return the images and maps (for figures).

  Returns:
    ``clean_top_class``/``clean_top_prob`` [B,T,5], ``clean_crop_pred`` i32[B,T];
    ``adv_top_class``/``adv_top_prob`` [B,S,E,T,5], ``adv_crop_pred`` i32[B,S,E,T];
    f32[B,S,E]: ``cam_shift`` (pixels), ``cam_spearman``, ``cam_area``, ``diff_l1``,
    ``diff_area``, ``logratio_cam_spearman``, ``logratio_control_spearman``,
    ``border_delta_share``; f32[B,S]: ``cam_area_clean``, ``border_grad_share``,
    ``deepfool_*`` (``pred`` i32, ``l2``, ``linf``) and the DeepFool-vs-FGSM overlaps
    ``overlap_delta_spearman``, ``overlap_delta_jaccard``, ``overlap_diff_spearman``,
    ``overlap_diff_jaccard``, ``overlap_delta_cosine``. With ``keep_maps``: ``x_adv``
    [B,S,E,H,W,C], ``cam_clean`` [B,S,H,W], ``cam_adv`` [B,S,E,H,W], ``gbvs_clean``
    [B,H,W], ``gbvs_adv`` [B,S,E,H,W], ``x_deepfool`` [B,S,H,W,C], ``gbvs_deepfool``
    [B,S,H,W].
  """
  b, h, w, _ = x.shape
  eps = jnp.asarray(cfg.eps, jnp.float32) / 255
  e = len(cfg.eps)
  e_cmp = list(cfg.eps).index(cfg.compare_eps)
  k = max(1, round(cfg.top_fraction * h * w))
  crop = upscale_center_crop(x, cfg.crop_scale)
  gbvs_clean = saliency.gbvs(x)[..., 0]
  out: dict[str, list] = {}

  def add(name, value):
    out.setdefault(name, []).append(value)

  for t in classifiers:
    logits = t.apply_fn(params[t.name], x)
    num_classes = logits.shape[-1]
    cls, prob = top_predictions(logits)
    add('clean_top_class', cls)
    add('clean_top_prob', prob)
    add('clean_crop_pred', t.apply_fn(params[t.name], crop).argmax(-1).astype(jnp.int32))

  for s in classifiers:
    p = params[s.name]
    x_adv = fgsm_sweep(s.apply_fn, p, x, labels, eps)  # [E,B,H,W,C]
    flat = x_adv.reshape(e * b, *x.shape[1:])
    flat_crop = upscale_center_crop(flat, cfg.crop_scale)
    top_c, top_p, crop_pred = [], [], []
    for t in classifiers:
      cls, prob = top_predictions(t.apply_fn(params[t.name], flat))
      top_c.append(_by_image(cls, e, b))
      top_p.append(_by_image(prob, e, b))
      crop_pred.append(_by_image(
          t.apply_fn(params[t.name], flat_crop).argmax(-1).astype(jnp.int32), e, b))
    add('adv_top_class', jnp.stack(top_c, axis=2))
    add('adv_top_prob', jnp.stack(top_p, axis=2))
    add('adv_crop_pred', jnp.stack(crop_pred, axis=2))

    clean_pred = s.apply_fn(p, x).argmax(-1).astype(jnp.int32)
    adv_pred = top_c[classifiers.index(s)][..., 0]  # [B,E]
    cam_clean = _cam(s, p, x, clean_pred)
    cam_adv = _cam(s, p, flat, jnp.swapaxes(adv_pred, 0, 1).reshape(-1))  # eps-major
    cam_clean_rep = jnp.tile(cam_clean, (e, 1, 1))
    shift = jnp.linalg.norm(center_of_mass(cam_adv) - center_of_mass(cam_clean_rep), axis=1)
    add('cam_shift', _by_image(shift, e, b))
    add('cam_spearman', _by_image(metrics.spearman(cam_clean_rep, cam_adv), e, b))
    add('cam_area', _by_image(area(cam_adv), e, b))
    add('cam_area_clean', area(cam_clean))

    gbvs_adv = saliency.gbvs(flat)[..., 0]
    gbvs_clean_rep = jnp.tile(gbvs_clean, (e, 1, 1))
    diff = _gbvs_difference(gbvs_adv, gbvs_clean_rep)
    add('diff_l1', _by_image(jnp.abs(diff).sum(axis=(1, 2)), e, b))
    add('diff_area', _by_image(
        jnp.mean(jnp.abs(diff) * (h * w) > cfg.diff_threshold, axis=(1, 2)), e, b))
    log_ratio = saliency.log_ratio_difference(gbvs_adv, gbvs_clean_rep)
    # Below this, a log ratio is float noise of two equal maps (eps = 0): ranking it would
    # correlate noise with the CAM, so it counts as no change (a constant map, NaN rho).
    log_ratio = jnp.where(jnp.abs(log_ratio) < _LOG_RATIO_NOISE, 0.0, log_ratio)
    add('logratio_cam_spearman', _by_image(metrics.spearman(log_ratio, cam_adv), e, b))
    # Control: the CAM of the next image of the batch (the last image's of the first).
    cam_other = jnp.roll(cam_adv.reshape(e, b, h, w), -1, axis=1).reshape(e * b, h, w)
    add('logratio_control_spearman', _by_image(metrics.spearman(log_ratio, cam_other), e, b))

    delta = flat - jnp.tile(x, (e, 1, 1, 1))
    add('border_delta_share', _by_image(border_share(delta, cfg.border), e, b))
    grad = jax.grad(lambda xx: attacks.cross_entropy(s.apply_fn(p, xx), labels).sum())(x)
    add('border_grad_share', border_share(grad, cfg.border))

    x_df = attacks.deepfool(s.apply_fn, p, x, labels, num_classes=num_classes,
                            overshoot=cfg.deepfool_overshoot, max_iter=cfg.deepfool_max_iter)
    d_df = x_df - x
    d_fgsm = x_adv[e_cmp] - x
    add('deepfool_pred', s.apply_fn(p, x_df).argmax(-1).astype(jnp.int32))
    add('deepfool_l2', metrics.l2_norm(d_df))
    add('deepfool_linf', metrics.linf_norm(d_df))
    abs_df, abs_fgsm = _abs_map(d_df), _abs_map(d_fgsm)
    add('overlap_delta_spearman', metrics.spearman(abs_df, abs_fgsm))
    add('overlap_delta_jaccard', _top_k_jaccard(abs_df, abs_fgsm, k))
    gbvs_df = saliency.gbvs(x_df)[..., 0]
    diff_df = _gbvs_difference(gbvs_df, gbvs_clean)
    diff_fgsm = diff.reshape(e, b, h, w)[e_cmp]
    add('overlap_diff_spearman', metrics.spearman(diff_df, diff_fgsm))
    add('overlap_diff_jaccard', _top_k_jaccard(diff_df, diff_fgsm, k))
    add('overlap_delta_cosine', metrics.cosine(d_df, d_fgsm))

    if keep_maps:
      add('x_adv', jnp.swapaxes(x_adv, 0, 1))
      add('cam_clean', cam_clean)
      add('cam_adv', _by_image(cam_adv, e, b))
      add('gbvs_adv', _by_image(gbvs_adv, e, b))
      add('x_deepfool', x_df)
      add('gbvs_deepfool', gbvs_df)

  # Every entry was collected per model (T for the clean ones, S for the others).
  result = {name: jnp.stack(v, axis=1) for name, v in out.items()}
  if keep_maps:
    result['gbvs_clean'] = gbvs_clean
  return result


def load_classifiers(names: tuple[str, ...]) -> tuple[tuple[Classifier, ...], dict[str, Params],
                                                      list[dict[str, Any]]]:
  """Loads every checkpoint: (classifiers, name -> variables, metadata list).

  Raises:
    ValueError: the checkpoints were trained on different datasets.
    checkpoints.CheckpointError: a missing or broken checkpoint.
  """
  classifiers, params, metas = [], {}, []
  for name in names:
    model, variables, meta = checkpoints.load(name)
    classifiers.append(Classifier(name, model.apply, models.cam_layer(meta)))
    params[name] = variables
    metas.append(meta)
  datasets = {m['dataset'] for m in metas}
  if len(datasets) != 1:
    raise ValueError(f'models must share one dataset (transfer needs one label space), got '
                     f'{dict(zip(names, (m["dataset"] for m in metas)))}.')
  return tuple(classifiers), params, metas


def run(cfg: Config, *, output_dir: store.PathLike, data_dir: str | None = None,
        resume: bool = False, mesh: jax.sharding.Mesh | None = None) -> pathlib.Path:
  """Runs the sweep stage over the first ``cfg.num_examples`` test images, then the maps stage.

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
  classifiers, params, metas = load_classifiers(cfg.models)
  test = data.load(metas[0]['dataset'], 'test', data_dir=data_dir)
  validate(cfg, split_size=len(test.labels), image_shape=test.images.shape[1:])
  config = {**dataclasses.asdict(cfg), 'dataset': metas[0]['dataset'],
            'architectures': [m['model'] for m in metas],
            'checkpoint_test_accuracy': [m['test_accuracy'] for m in metas],
            'cam_layers': [c.cam_layer for c in classifiers], 'class_names': test.class_names,
            'image_shape': list(test.images.shape[1:])}
  out = runner.open_output_dir(output_dir, config, resume=resume)
  mesh = parallel.data_mesh() if mesh is None else mesh

  def inputs(ids):
    return {'x': data.to_float(test.images[ids]), 'label': test.labels[ids].astype(np.int32)}

  # One compilation serves both stages: the step always computes the maps (they are
  # intermediates anyway) and the sweep stage drops them on the device.
  full = runner.compile_step(
      lambda replicated, batch: sweep_batch(classifiers, replicated, batch['x'],
                                            batch['label'], cfg=cfg, keep_maps=True), mesh)

  def scalars(replicated, batch):
    return {k: v for k, v in full(replicated, batch).items() if k not in MAP_OUTPUTS}

  runner.run_stage(runner.Stage(SWEEP_STAGE, scalars, inputs, cfg.batch_size,
                                record=('label',)),
                   output_dir=out, work=np.arange(cfg.num_examples), replicated=params,
                   mesh=mesh)
  if cfg.num_figure_images:
    runner.run_stage(runner.Stage(MAPS_STAGE, full, inputs, cfg.batch_size,
                                  record=('x', 'label')),
                     output_dir=out, work=np.arange(cfg.num_figure_images),
                     replicated=params, mesh=mesh)
  return out
