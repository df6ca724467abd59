"""Study 001: Guided Backprop, its enhanced variant and other maps on adversarial images.

Four experiments over the first N test images (``EXPERIMENTS``), run as resumable stages of
``runner``, each one compiled call per batch:

* ``pairs`` (class_discriminative): Guided Backprop (GBP) and Enhanced GBP (EGBP) maps of the
  top ``pair_classes`` predicted classes; for every pair of them the Sim-Ratio of the binarised
  maps (with the plain gradient's and chance as controls), the Avg-Diff of the unnormalised
  ones, their Spearman correlation, and the margin drop when each map's top pixels go.
* ``attacks``: FGSM, BIM and C&W-L2 against the clean prediction; adversarial images,
  predictions, success and perturbation norms.
* ``maps`` (clean_vs_adversarial, failed_vs_successful): every method's map of the clean image
  for its prediction and of each adversarial image for its new prediction, and how much they
  differ; share of the perturbation ``|delta|`` on each map's top pixels.
* ``recovery``: on successful C&W images (clean prediction correct), the top p % pixels of
  each method's map (and of a random ranking) are replaced by a fill; accuracy vs p, every p
  and every method in one vmapped model evaluation.

Pixel maps are ``saliency.heatmap``'s: ``sum_c |a_c|``, unnormalised for Avg-Diff and the
rankings (Sim-Ratio binarises per channel), normalised by the method's family for the map
comparisons.

Reference: Gu & Tresp, Saliency Methods for Explaining Adversarial Attacks, arXiv:1908.08413.
"""

import dataclasses
import math
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

NAME = 'explain_adversarial'
EXPERIMENTS = ('class_discriminative', 'clean_vs_adversarial', 'recovery',
               'failed_vs_successful')
ATTACKS = ('fgsm', 'bim', 'cw')
"""The attacks, in the order of the attack axis of every per-attack array."""
ATTACK_LABELS = {'fgsm': 'FGSM', 'bim': 'BIM', 'cw': 'C&W-L2'}
GBP, EGBP = 'guided_backprop', 'enhanced_guided_backprop'
FILLS = ('mean', 'blur', 'noise')
BLUR_SIGMA = 2.0
"""Standard deviation (pixels) of the Gaussian blur of the ``blur`` fill."""
MAP_METRICS = ('spearman', 'mean_ssim', 'l2_distance')

METHODS = ('gradient', GBP, 'smoothgrad', 'grad_cam', 'integrated_gradients', EGBP)
"""The methods of clean_vs_adversarial and recovery (names of ``saliency.REGISTRY``)."""
DEFAULT_METHOD_KWARGS = {'smoothgrad': {'num_samples': 10, 'noise_level': 0.15},
                         'integrated_gradients': {'num_steps': 16}}

BUDGETS: dict[str, dict[str, float]] = {
    # Pixel units ([0, 1] images). Each attack succeeds on most images of its dataset's
    # committed checkpoint (FGSM leaves some failures, which failed_vs_successful needs).
    'cifar10': {'fgsm_eps': 8 / 255, 'bim_eps': 4 / 255, 'bim_step_size': 1 / 255,
                'cw_learning_rate': 0.05, 'cw_initial_const': 0.1},
    'mnist': {'fgsm_eps': 0.3, 'bim_eps': 0.3, 'bim_step_size': 0.05,
              'cw_learning_rate': 0.1, 'cw_initial_const': 1.0},
}
"""Per-dataset defaults of the budgets a ``Config`` leaves at None."""

# Independent random streams per example: fold_in(fold_in(key(seed), stream), index).
_SMOOTHGRAD_STREAM, _RANDOM_RANK_STREAM, _TIEBREAK_STREAM, _NOISE_STREAM = range(4)


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of one run (written to ``config.json``).

  Attributes:
    checkpoint: registered model name or checkpoint directory.
    num_examples: the first N images of the model's test split.
    batch_size: images per compiled batch.
    experiments: names from ``EXPERIMENTS``.
    methods: saliency methods of clean_vs_adversarial and recovery (``METHODS``).
    pair_classes: top predicted classes whose maps are paired (all pairs), >= 2.
    fgsm_eps: FGSM L-inf budget (pixels); None: the dataset's ``BUDGETS``.
    bim_eps: BIM L-inf budget (pixels); None: the dataset's.
    bim_step_size: BIM step (pixels); None: the dataset's.
    bim_steps: BIM iterations.
    cw_steps: C&W Adam iterations per value of the constant (no early abort, so every
      example is independent of the others in its batch).
    cw_search_steps: C&W binary-search steps over the constant.
    cw_learning_rate: C&W Adam step; None: the dataset's.
    cw_initial_const: C&W first constant; None: the dataset's.
    recovery_grid: percentages p of pixels perturbed, increasing, in [0, 100].
    recovery_fill: what perturbed pixels become: 'mean' (the dataset mean colour, the
      model's normalisation mean), 'blur' (Gaussian blur of the adversarial image,
      ``BLUR_SIGMA``) or 'noise' (uniform in [0, 1], one draw per image).
    overlap_percent: top pixels (% of the image) of a map: deleted in the pairs margin test,
      and whose share of ``|delta|`` counts in the maps stage.
    method_kwargs: method -> hyper-parameters over the functions' defaults.
    seed: seed of every random choice (image i uses streams folded with i).
  """
  checkpoint: str = 'alexnet_cifar'
  num_examples: int = 10_000
  batch_size: int = 32
  experiments: tuple[str, ...] = EXPERIMENTS
  methods: tuple[str, ...] = METHODS
  pair_classes: int = 3
  fgsm_eps: float | None = None
  bim_eps: float | None = None
  bim_step_size: float | None = None
  bim_steps: int = 10
  cw_steps: int = 30
  cw_search_steps: int = 3
  cw_learning_rate: float | None = None
  cw_initial_const: float | None = None
  recovery_grid: tuple[float, ...] = (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50)
  recovery_fill: str = 'mean'
  overlap_percent: float = 10.0
  method_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=lambda: {m: dict(kw) for m, kw in DEFAULT_METHOD_KWARGS.items()})
  seed: int = 0



def with_dataset_budgets(cfg: Config, dataset: str) -> Config:
  """``cfg`` with every budget left at None set to the dataset's ``BUDGETS``."""
  if dataset not in BUDGETS:
    raise ValueError(f'dataset: no default budgets for {dataset!r}; pass every budget flag.')
  return dataclasses.replace(cfg, **{k: v for k, v in BUDGETS[dataset].items()
                                     if getattr(cfg, k) is None})


def validate(cfg: Config, *, split_size: int | None = None, num_classes: int | None = None):
  """Raises ValueError naming the bad setting; runs before anything is loaded or compiled.

  Args:
    cfg: the settings.
    split_size: test images available (checked when given).
    num_classes: the model's classes (checked when given).
  """
  bad = [e for e in cfg.experiments if e not in EXPERIMENTS]
  if bad or not cfg.experiments or len(set(cfg.experiments)) != len(cfg.experiments):
    raise ValueError(f'experiments: expected distinct names from {EXPERIMENTS}, got '
                     f'{cfg.experiments}.')
  bad = [m for m in cfg.methods if m not in METHODS]
  if bad or not cfg.methods or len(set(cfg.methods)) != len(cfg.methods):
    raise ValueError(f'methods: expected distinct names from {METHODS}, got {cfg.methods}.')
  if 'failed_vs_successful' in cfg.experiments and not {GBP, EGBP} <= set(cfg.methods):
    raise ValueError(f'methods: failed_vs_successful needs {GBP} and {EGBP}, got '
                     f'{cfg.methods}.')
  bad = [m for m in cfg.method_kwargs if m not in METHODS]
  if bad:
    raise ValueError(f'method_kwargs: unknown methods {bad}; choose from {METHODS}.')
  for m, kw in cfg.method_kwargs.items():
    bad = sorted(set(kw) - set(saliency.REGISTRY[m].defaults))
    if bad:
      raise ValueError(f'method_kwargs: {m} takes no {bad}; it takes '
                       f'{sorted(saliency.REGISTRY[m].defaults)}.')
  if cfg.pair_classes < 2 or (num_classes is not None and cfg.pair_classes > num_classes):
    raise ValueError(f'pair_classes must be in [2, {num_classes or "K"}], got '
                     f'{cfg.pair_classes}.')
  for name in ('fgsm_eps', 'bim_eps'):
    value = getattr(cfg, name)
    if value is not None and not 0 <= value <= 1:
      raise ValueError(f'{name} must be in [0, 1] (pixel units), got {value}.')
  for name in ('bim_step_size', 'cw_learning_rate', 'cw_initial_const'):
    value = getattr(cfg, name)
    if value is not None and not value > 0:
      raise ValueError(f'{name} must be > 0, got {value}.')
  for name in ('bim_steps', 'cw_steps', 'cw_search_steps', 'batch_size'):
    if getattr(cfg, name) < 1:
      raise ValueError(f'{name} must be >= 1, got {getattr(cfg, name)}.')
  grid = np.asarray(cfg.recovery_grid, float)
  if grid.ndim != 1 or not len(grid) or (grid < 0).any() or (grid > 100).any() or (
      np.diff(grid) <= 0).any():
    raise ValueError(f'recovery_grid must be increasing percentages in [0, 100], got '
                     f'{cfg.recovery_grid}.')
  if cfg.recovery_fill not in FILLS:
    raise ValueError(f'recovery_fill must be one of {FILLS}, got {cfg.recovery_fill!r}.')
  if not 0 < cfg.overlap_percent <= 100:
    raise ValueError(f'overlap_percent must be in (0, 100], got {cfg.overlap_percent}.')
  if cfg.num_examples < 1 or (split_size is not None and cfg.num_examples > split_size):
    raise ValueError(f'num_examples must be in [1, {split_size or "split size"}] (the test '
                     f'split), got {cfg.num_examples}.')


def stages(cfg: Config) -> tuple[str, ...]:
  """The stages the selected experiments need, in run order."""
  need = set()
  if 'class_discriminative' in cfg.experiments:
    need.add('pairs')
  if {'clean_vs_adversarial', 'failed_vs_successful'} & set(cfg.experiments):
    need |= {'attacks', 'maps'}
  if 'recovery' in cfg.experiments:
    need |= {'attacks', 'recovery'}
  return tuple(s for s in ('pairs', 'attacks', 'maps', 'recovery') if s in need)


def explain(method: str, apply_fn: ApplyFn, params: Params, x: jax.Array, target: jax.Array,
            *, keys: jax.Array, layer: str, cfg: Config, normalize: bool = False) -> jax.Array:
  """Pixel map f32[B,H,W] of ``method`` (``saliency.explain``) for classes ``target`` (i32[B]).

  Args:
    method: a name of ``METHODS``.
    apply_fn, params: the model.
    x: f32[B,H,W,C] in [0, 1].
    target: i32[B] explained classes.
    keys: one key per example (stochastic methods).
    layer: the CAM family's layer.
    cfg: the run's settings (its ``method_kwargs``).
    normalize: normalise by the method's family (``saliency.heatmap``); else the raw
      non-negative map ``sum_c |a_c|``.

  Returns:
    f32[B,H,W], in [0, 1] with ``normalize``.
  """
  attr = saliency.explain(method, apply_fn, params, x, target, key=keys, layer=layer,
                          **cfg.method_kwargs.get(method, {}))
  return saliency.heatmap(attr, method, normalize=normalize)


def class_pairs(k: int) -> list[tuple[int, int]]:
  """All pairs (i, j), i < j, of the top-k ranks."""
  return [(i, j) for i in range(k) for j in range(i + 1, k)]


def pairs_batch(apply_fn: ApplyFn, params: Params, x: jax.Array, index: jax.Array,
                fill_mean: jax.Array, *, cfg: Config) -> dict[str, jax.Array]:
  """Class-discriminative statistics of GBP and EGBP maps for every pair of top classes.

  Sim-Ratio compares the binarised attributions as the paper defines the filtering effect,
  ``s * 1{g > 0}`` per channel: a (pixel, channel) is on where the map is positive. The
  plain gradient's Sim-Ratio of the same pair and the agreement two independent masks with
  GBP's on-fractions would reach by chance are the controls. Avg-Diff and Spearman compare
  the unnormalised pixel maps. EGBP's pair is the map of class k against m and of m
  against k (complementary supports by construction), so its separation is also tested
  directly: the top ``overlap_percent`` pixels of EGBP(k vs m), of GBP(k) and of a random
  ranking are replaced by ``fill_mean`` and the drop of ``logit_k - logit_m`` is recorded.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B,H,W,C] in [0, 1].
    index: i32[B] test indices (random ranking and tiebreak streams).
    fill_mean: f32[C] the deleted pixels' colour (the dataset mean).
    cfg: the run's settings.

  Returns:
    ``top_classes`` i32[B,pair_classes], ``gbp_on_fraction`` f32[B,pair_classes] and, with
    P the number of pairs (k the higher-ranked class), f32[B,P]:
    ``{gbp,egbp}_{sim_ratio,avg_diff,spearman}``, ``gradient_sim_ratio``,
    ``chance_sim_ratio`` and ``{egbp,gbp,random}_margin_drop``.
  """
  b, hw = x.shape[0], x.shape[1:3]
  n_cls = cfg.pair_classes
  pairs = class_pairs(n_cls)
  logits = apply_fn(params, x)
  top = jnp.argsort(-logits, axis=-1)[:, :n_cls]
  tiled = jnp.tile(x, (n_cls, 1, 1, 1))
  classes = top.T.reshape(-1)
  first = jnp.asarray([i for i, _ in pairs])
  second = jnp.asarray([j for _, j in pairs])

  def pair_up(attr):  # [n_cls*B, ...] -> the k and the m member of every pair, [P*B, ...]
    attr = attr.reshape(n_cls, b, *attr.shape[1:])
    return attr[first].reshape(-1, *attr.shape[2:]), attr[second].reshape(-1, *attr.shape[2:])

  g = saliency.guided_backprop(apply_fn, params, tiled, classes)
  grad = saliency.gradient(apply_fn, params, tiled, classes)
  on = (g > 0).mean(axis=(1, 2, 3)).reshape(n_cls, b)
  gk, gm = pair_up(g)
  dk, dm = pair_up(grad)
  pk, pm = on[first].reshape(-1), on[second].reshape(-1)
  # EGBP of k against m, then of m against k, every pair in one call.
  k_cls = jnp.concatenate([top[:, first].T, top[:, second].T]).reshape(-1)
  m_cls = jnp.concatenate([top[:, second].T, top[:, first].T]).reshape(-1)
  e1, e2 = jnp.split(saliency.enhanced_guided_backprop(
      apply_fn, params, jnp.tile(x, (2 * len(pairs), 1, 1, 1)), k_cls, contrast_class=m_cls),
                     2)
  out = {'top_classes': top, 'gbp_on_fraction': on.T}
  values = {'gradient_sim_ratio': metrics.sim_ratio(jax.nn.relu(dk), jax.nn.relu(dm)),
            'chance_sim_ratio': pk * pm + (1 - pk) * (1 - pm)}
  for name, (u, v), method in (('gbp', (gk, gm), GBP), ('egbp', (e1, e2), EGBP)):
    values[f'{name}_sim_ratio'] = metrics.sim_ratio(jax.nn.relu(u), jax.nn.relu(v))
    hu = saliency.heatmap(u, method, normalize=False)
    hv = saliency.heatmap(v, method, normalize=False)
    values[f'{name}_avg_diff'] = metrics.avg_diff(hu, hv)
    values[f'{name}_spearman'] = metrics.spearman(hu, hv)
  # Deletion: does EGBP(k vs m) find the pixels behind logit_k - logit_m?
  n = len(pairs) * b
  scores = jnp.concatenate([
      saliency.heatmap(e1, EGBP, normalize=False),
      saliency.heatmap(gk, GBP, normalize=False),
      jnp.tile(uniform_maps(cfg.seed, index, _RANDOM_RANK_STREAM, hw), (len(pairs), 1, 1))])
  tiebreak = jnp.tile(uniform_maps(cfg.seed, index, _TIEBREAK_STREAM, hw), (3 * len(pairs), 1))
  positions = pixel_positions(scores.reshape(3 * n, -1), tiebreak.reshape(3 * n, -1))
  deleted = jnp.where((positions < overlap_pixels(cfg, hw)).reshape(3 * n, *hw, 1),
                      fill_mean.astype(x.dtype), jnp.tile(x, (3 * len(pairs), 1, 1, 1)))
  ck, cm = jnp.tile(k_cls[:n], 3), jnp.tile(m_cls[:n], 3)
  after = apply_fn(params, deleted)
  rows = jnp.arange(3 * n)
  clean = jnp.tile(logits, (3 * len(pairs), 1))
  drop = (clean[rows, ck] - clean[rows, cm]) - (after[rows, ck] - after[rows, cm])
  for r, name in enumerate(('egbp', 'gbp', 'random')):
    values[f'{name}_margin_drop'] = drop[r * n:(r + 1) * n]
  out.update({k: v.reshape(len(pairs), b).T for k, v in values.items()})
  return out


def attacks_batch(apply_fn: ApplyFn, params: Params, x: jax.Array,
                  budgets: Mapping[str, jax.Array], *, cfg: Config) -> dict[str, jax.Array]:
  """FGSM, BIM and C&W-L2 against the clean prediction.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B,H,W,C] in [0, 1].
    budgets: f32 scalars ``fgsm_eps``, ``bim_eps``, ``bim_step_size``, ``cw_learning_rate``,
      ``cw_initial_const``.
    cfg: the run's settings (static step counts).

  Returns:
    ``clean_pred`` i32[B]; with A = len(ATTACKS): ``x_adv`` f32[B,A,H,W,C], ``adv_pred``
    i32[B,A], ``success`` bool[B,A] (prediction changed), ``l2``/``linf`` f32[B,A].
  """
  clean = apply_fn(params, x).argmax(-1)
  advs = [
      attacks.fgsm(apply_fn, params, x, clean, eps=budgets['fgsm_eps']),
      attacks.bim(apply_fn, params, x, clean, eps=budgets['bim_eps'],
                  step_size=budgets['bim_step_size'], num_steps=cfg.bim_steps),
      attacks.carlini_wagner_l2(apply_fn, params, x, clean,
                                learning_rate=budgets['cw_learning_rate'],
                                initial_const=budgets['cw_initial_const'],
                                binary_search_steps=cfg.cw_search_steps,
                                max_iterations=cfg.cw_steps, abort_early=False),
  ]
  x_adv = jnp.stack(advs, axis=1)
  b, a = x_adv.shape[:2]
  adv_pred = apply_fn(params, x_adv.reshape(b * a, *x.shape[1:])).argmax(-1).reshape(b, a)
  delta = (x_adv - x[:, None]).reshape(b * a, -1)
  return {'clean_pred': clean, 'x_adv': x_adv, 'adv_pred': adv_pred,
          'success': adv_pred != clean[:, None],
          'l2': metrics.l2_norm(delta).reshape(b, a),
          'linf': metrics.linf_norm(delta).reshape(b, a)}


def maps_batch(apply_fn: ApplyFn, params: Params, x: jax.Array, x_adv: jax.Array,
               clean_pred: jax.Array, adv_pred: jax.Array, index: jax.Array, *, cfg: Config,
               layer: str) -> dict[str, jax.Array]:
  """Maps of clean and adversarial images and how much they differ, per method and attack.

  Each method explains the clean image for ``clean_pred`` and each adversarial image for its
  ``adv_pred`` (EGBP against the runner-up class) in one call over all 1 + A images. Maps
  are normalised by family (``saliency.heatmap``, in [0, 1]) before Spearman, mean SSIM (data
  range 1) and L2 distance.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B,H,W,C] clean images.
    x_adv: f32[B,A,H,W,C] adversarial images.
    clean_pred: i32[B].
    adv_pred: i32[B,A].
    index: i32[B] test indices (SmoothGrad's noise).
    cfg: the run's settings.
    layer: the Grad-CAM layer.

  Returns:
    ``<method>/<metric>`` f32[B,A] for ``MAP_METRICS``, and ``<method>/adv_delta_share``,
    ``<method>/clean_delta_share`` f32[B,A]: the share of ``sum |delta|`` (``delta_share``)
    on the top ``overlap_percent`` pixels of the adversarial (clean) map. With EGBP, also
    ``enhanced_guided_backprop/swapped_{spearman,delta_share}`` f32[B,A] (NaN where the
    attack failed): the control map, EGBP of the clean image for ``adv_pred`` against
    ``clean_pred``, vs the adversarial map, and its share of ``|delta|``.
  """
  b, a = adv_pred.shape
  hw = x.shape[1:3]
  images = jnp.concatenate([x[None], jnp.moveaxis(x_adv, 1, 0)]).reshape(-1, *x.shape[1:])
  targets = jnp.concatenate([clean_pred[None], adv_pred.T]).reshape(-1)
  keys = jnp.tile(runner.example_keys(cfg.seed, index, _SMOOTHGRAD_STREAM), 1 + a)
  k = overlap_pixels(cfg, hw)
  delta = jnp.abs(jnp.moveaxis(x_adv, 1, 0) - x[None]).sum(-1).reshape(a * b, *hw)
  tiebreak = jnp.tile(uniform_maps(cfg.seed, index, _TIEBREAK_STREAM, hw), (a, 1, 1))
  out = {}
  for method in cfg.methods:
    maps = explain(method, apply_fn, params, images, targets, keys=keys, layer=layer, cfg=cfg,
                   normalize=True)
    clean = jnp.tile(maps[:b], (a, 1, 1))
    adv = maps[b:]
    values = {'spearman': metrics.spearman(clean, adv),
              'mean_ssim': metrics.mean_ssim(clean, adv, data_range=1.0),
              'l2_distance': metrics.l2_distance(clean, adv),
              'adv_delta_share': delta_share(adv, delta, tiebreak, k),
              'clean_delta_share': delta_share(clean, delta, tiebreak, k)}
    if method == EGBP:
      # Control: the clean image's EGBP map for the adversarial class against the clean one.
      # The adversarial map explains adv_pred against its runner-up, usually the clean class,
      # so much of its change from the clean map is this class swap, not the perturbation.
      swapped = saliency.heatmap(saliency.enhanced_guided_backprop(
          apply_fn, params, jnp.tile(x, (a, 1, 1, 1)), adv_pred.T.reshape(-1),
          contrast_class=jnp.tile(clean_pred, a)), EGBP, normalize=True)
      changed = adv_pred.T.reshape(-1) != jnp.tile(clean_pred, a)
      values['swapped_spearman'] = jnp.where(changed, metrics.spearman(swapped, adv), jnp.nan)
      values['swapped_delta_share'] = jnp.where(changed, delta_share(swapped, delta, tiebreak,
                                                                     k), jnp.nan)
    out.update({f'{method}/{n}': v.reshape(a, b).T for n, v in values.items()})
  return out


def uniform_maps(seed: int, index: jax.Array, stream: int, hw: tuple[int, int]) -> jax.Array:
  """f32[B,H,W] uniform in [0, 1), one draw per example of ``index`` from ``stream``."""
  return jax.vmap(lambda k: jax.random.uniform(k, hw))(runner.example_keys(seed, index, stream))


def delta_share(maps: jax.Array, delta: jax.Array, tiebreak: jax.Array, k: int) -> jax.Array:
  """Share of the perturbation's magnitude on each map's top ``k`` pixels.

  ``sum(delta on top k) / sum(delta)``: tie-free on the perturbation's side (FGSM's and
  BIM's ``|delta|`` equal the budget on most pixels, so the top pixels of ``|delta|`` would be
  an arbitrary pick), equal map values taken in ``tiebreak`` order. A map unrelated to the
  perturbation scores ``k / (H*W)`` on average, and exactly that when ``delta`` is constant.

  Args:
    maps: f32[N,H,W] saliency maps.
    delta: f32[N,H,W] non-negative perturbation magnitudes (``sum_c |x_adv - x|``).
    tiebreak: f32[N,H,W] distinct values ordering equal map values.
    k: pixels taken from each map, in [1, H*W].

  Returns:
    f32[N] in [0, 1]; NaN where ``delta`` is all zero.
  """
  n = maps.shape[0]
  top = pixel_positions(maps.reshape(n, -1), tiebreak.reshape(n, -1)) < k
  d = delta.reshape(n, -1)
  total = d.sum(-1)
  return jnp.where(total > 0, jnp.where(top, d, 0).sum(-1) / jnp.where(total > 0, total, 1),
                   jnp.nan)


def example_maps(apply_fn: ApplyFn, params: Params, x: jax.Array, x_adv: jax.Array,
                 clean_pred: jax.Array, adv_pred: jax.Array, index: jax.Array, *, cfg: Config,
                 layer: str) -> dict[str, jax.Array]:
  """Normalised maps of clean and adversarial images, as ``maps_batch`` computes them.

  Args:
    x: f32[B,H,W,C]; x_adv: f32[B,A,H,W,C]; clean_pred: i32[B]; adv_pred: i32[B,A];
    index: i32[B] test indices.

  Returns:
    method -> f32[B,1+A,H,W] (column 0 the clean image's map).
  """
  b, a = adv_pred.shape
  images = jnp.concatenate([x[:, None], x_adv], axis=1).reshape(-1, *x.shape[1:])
  targets = jnp.concatenate([clean_pred[:, None], adv_pred], axis=1).reshape(-1)
  keys = jnp.repeat(runner.example_keys(cfg.seed, index, _SMOOTHGRAD_STREAM), 1 + a)
  return {m: explain(m, apply_fn, params, images, targets, keys=keys, layer=layer, cfg=cfg,
                     normalize=True).reshape(b, 1 + a, *x.shape[1:3])
          for m in cfg.methods}


def overlap_pixels(cfg: Config, hw: tuple[int, int]) -> int:
  """Top map pixels of ``delta_share``: ``overlap_percent`` of H*W, at least 1."""
  return max(1, int(round(cfg.overlap_percent / 100 * hw[0] * hw[1])))


def grid_pixels(grid: tuple[float, ...], num_pixels: int) -> np.ndarray:
  """Pixels perturbed at each percentage of ``grid``: i32[P], ``round(p / 100 * N)``."""
  return np.rint(np.asarray(grid, np.float64) / 100 * num_pixels).astype(np.int32)


def pixel_positions(scores: jax.Array, tiebreak: jax.Array) -> jax.Array:
  """Rank of every pixel by decreasing score, equal scores in the order of ``tiebreak``.

  Args:
    scores: f32[N,HW].
    tiebreak: f32[N,HW], distinct values (e.g. uniform random): orders equal scores, so an
      all-zero map region is perturbed in random rather than row-major order.

  Returns:
    i32[N,HW]: 0 for the most salient pixel; ``positions < k`` marks the top k.
  """
  iota = jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1)
  _, _, order = jax.lax.sort((-scores, tiebreak, iota), dimension=1, num_keys=2)
  _, positions = jax.lax.sort((order, iota), dimension=1, num_keys=1)
  return positions


def gaussian_blur(x: jax.Array, sigma: float) -> jax.Array:
  """Per-channel Gaussian blur of f32[B,H,W,C] (edges repeated), radius ``ceil(3 sigma)``."""
  radius = int(math.ceil(3 * sigma))
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-t ** 2 / (2 * sigma ** 2))
  kernel = jnp.asarray(kernel / kernel.sum(), x.dtype)
  c = x.shape[-1]
  x = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode='edge')
  for shape in ((-1, 1, 1, 1), (1, -1, 1, 1)):
    x = jax.lax.conv_general_dilated(
        x, jnp.tile(kernel.reshape(shape), (1, 1, 1, c)), (1, 1), 'VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)
  return x


def fill_images(x_adv: jax.Array, fill: str, *, mean: jax.Array, keys: jax.Array) -> jax.Array:
  """What perturbed pixels become (``Config.recovery_fill``): f32[B,H,W,C].

  Args:
    x_adv: f32[B,H,W,C] adversarial images.
    fill: one of ``FILLS``.
    mean: f32[C] the dataset mean colour (the ``mean`` fill).
    keys: one key per image (the ``noise`` fill).
  """
  if fill == 'mean':
    return jnp.broadcast_to(mean.astype(x_adv.dtype), x_adv.shape)
  if fill == 'blur':
    return gaussian_blur(x_adv, BLUR_SIGMA)
  return jax.vmap(lambda k: jax.random.uniform(k, x_adv.shape[1:], x_adv.dtype))(keys)


def recovery_curves(apply_fn: ApplyFn, params: Params, x_adv: jax.Array,
                    scores: jax.Array, tiebreak: jax.Array, fill: jax.Array,
                    num_pixels: jax.Array) -> jax.Array:
  """Predictions after replacing each ranking's top pixels by ``fill``, for every count.

  One vmapped model evaluation over rankings x counts x images (no loop over p).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x_adv: f32[B,H,W,C] images.
    scores: f32[R,B,H,W] pixel rankings (higher first), e.g. one per method.
    tiebreak: f32[B,H,W] order of equal scores.
    fill: f32[B,H,W,C] values of perturbed pixels.
    num_pixels: i32[P] pixels perturbed.

  Returns:
    i32[B,R,P] predicted classes.
  """
  r, b, h, w = scores.shape
  positions = pixel_positions(scores.reshape(r * b, h * w),
                              jnp.tile(tiebreak.reshape(b, h * w), (r, 1))).reshape(r, b, h, w)

  def predict(pos, k):
    perturbed = jnp.where((pos < k)[..., None], fill, x_adv)
    return apply_fn(params, perturbed).argmax(-1)

  preds = jax.vmap(lambda pos: jax.vmap(lambda k: predict(pos, k))(num_pixels))(positions)
  return jnp.transpose(preds, (2, 0, 1))


def recovery_batch(apply_fn: ApplyFn, params: Params, x_adv: jax.Array, adv_pred: jax.Array,
                   index: jax.Array, fill_mean: jax.Array, num_pixels: jax.Array, *,
                   cfg: Config, layer: str) -> dict[str, jax.Array]:
  """Fig. 4 for one batch: predictions as the top p % pixels of each ranking are filled.

  The rankings are ``cfg.methods``' maps of the adversarial image for its prediction, then a
  uniformly random one (``random``, last).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x_adv: f32[B,H,W,C] C&W adversarial images.
    adv_pred: i32[B] their predictions.
    index: i32[B] test indices (random streams).
    fill_mean: f32[C] the dataset mean colour.
    num_pixels: i32[P] pixels perturbed at each grid point.
    cfg: the run's settings.
    layer: the Grad-CAM layer.

  Returns:
    ``recovery_pred`` i32[B,M+1,P].
  """
  keys = runner.example_keys(cfg.seed, index, _SMOOTHGRAD_STREAM)
  maps = [explain(m, apply_fn, params, x_adv, adv_pred, keys=keys, layer=layer, cfg=cfg)
          for m in cfg.methods]
  hw = x_adv.shape[1:3]

  def uniform(stream):
    return uniform_maps(cfg.seed, index, stream, hw)

  scores = jnp.stack([*maps, uniform(_RANDOM_RANK_STREAM)])
  fill = fill_images(x_adv, cfg.recovery_fill, mean=fill_mean,
                     keys=runner.example_keys(cfg.seed, index, _NOISE_STREAM))
  return {'recovery_pred': recovery_curves(apply_fn, params, x_adv, scores,
                                           uniform(_TIEBREAK_STREAM), fill, num_pixels)}


def load_results(output_dir: store.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """Every finished stage's shards concatenated: stage -> name -> array (example axis first)."""
  cfg = runner.config_from_json(Config, store.read_json(pathlib.Path(output_dir) / 'config.json'))
  return {s: store.load_shards(output_dir, s) for s in stages(cfg)
          if store.shard_files(output_dir, s)}


def recovery_work(attack_results: Mapping[str, np.ndarray], labels: np.ndarray) -> np.ndarray:
  """Test indices of the recovery stage: clean prediction correct and C&W successful."""
  cw = ATTACKS.index('cw')
  keep = (attack_results['clean_pred'] == labels[attack_results['index']]) & (
      attack_results['success'][:, cw])
  return attack_results['index'][keep]


def run(cfg: Config, *, output_dir: store.PathLike, data_dir: str | None = None,
        resume: bool = False, mesh: jax.sharding.Mesh | None = None) -> pathlib.Path:
  """Runs the selected experiments' stages over the first ``cfg.num_examples`` test images.

  Each finished batch of each stage is written atomically as a shard; with ``resume`` a
  killed run skips what is on disk (same settings required). The maps and recovery stages
  read the adversarial images from the attacks stage's shards (so a multi-host run needs a
  shared output directory).

  Args:
    cfg: the settings (budgets left at None take the dataset's ``BUDGETS``).
    output_dir: where ``config.json`` and ``shards/`` go.
    data_dir: the offline data directory (default ``$ADVSAL_DATA_DIR``, then tfds).
    resume: continue a run already in ``output_dir``.
    mesh: default ``parallel.data_mesh()``.

  Returns:
    ``output_dir``.

  Raises:
    ValueError: bad settings (before anything is loaded), or an existing run with other
      settings / without ``resume``.
    checkpoints.CheckpointError, FileNotFoundError: missing checkpoint or data.
  """
  validate(cfg)
  model, variables, meta = checkpoints.load(cfg.checkpoint)
  test = data.load(meta['dataset'], 'test', data_dir=data_dir)
  cfg = with_dataset_budgets(cfg, meta['dataset'])
  num_classes = int(jax.eval_shape(model.apply, variables,
                                   jnp.zeros((1, *test.images.shape[1:]))).shape[-1])
  validate(cfg, split_size=len(test.labels), num_classes=num_classes)
  config = {**dataclasses.asdict(cfg), 'model': meta['model'], 'dataset': meta['dataset'],
            'checkpoint_test_accuracy': meta['test_accuracy'], 'class_names': test.class_names,
            'cam_layer': models.cam_layer(meta), 'stages': stages(cfg)}
  out = runner.open_output_dir(output_dir, config, resume=resume)
  mesh = parallel.data_mesh() if mesh is None else mesh
  layer = config['cam_layer']
  work = np.arange(cfg.num_examples)
  apply_fn = model.apply

  def clean_inputs(ids):
    return {'x': data.to_float(test.images[ids]), 'label': test.labels[ids]}

  todo = stages(cfg)
  if 'pairs' in todo:
    step = runner.compile_step(lambda rep, batch: pairs_batch(
        apply_fn, rep[0], batch['x'], batch['index'], rep[1], cfg=cfg), mesh)
    runner.run_stage(runner.Stage('pairs', step, clean_inputs, cfg.batch_size,
                                  record=('label',)),
                     output_dir=out, work=work,
                     replicated=(variables, np.asarray(model.mean, np.float32)), mesh=mesh)
  if 'attacks' not in todo:
    return out
  budgets = {k: np.float32(getattr(cfg, k)) for k in BUDGETS[meta['dataset']]}
  step = runner.compile_step(
      lambda rep, batch: attacks_batch(apply_fn, rep[0], batch['x'], rep[1], cfg=cfg), mesh)
  runner.run_stage(runner.Stage('attacks', step, clean_inputs, cfg.batch_size,
                                record=('label',)),
                   output_dir=out, work=work, replicated=(variables, budgets), mesh=mesh)
  adv = store.load_shards(out, 'attacks')
  row = np.full(len(test.labels), -1, np.int64)
  row[adv['index']] = np.arange(len(adv['index']))
  missing = np.flatnonzero(row[work] < 0)
  if len(missing):
    raise RuntimeError(
        f'attacks: {len(missing)} of {len(work)} images have no shard in {out} (first: test '
        f'index {int(work[missing[0]])}); a multi-process run needs a shared output directory '
        'and every process past the attacks stage before the maps stage reads it.')

  def adversarial_inputs(ids):
    r = row[ids]
    return {**clean_inputs(ids), 'x_adv': adv['x_adv'][r], 'clean_pred': adv['clean_pred'][r],
            'adv_pred': adv['adv_pred'][r]}

  if 'maps' in todo:
    step = runner.compile_step(lambda params, batch: maps_batch(
        apply_fn, params, batch['x'], batch['x_adv'], batch['clean_pred'], batch['adv_pred'],
        batch['index'], cfg=cfg, layer=layer), mesh)
    runner.run_stage(runner.Stage('maps', step, adversarial_inputs, cfg.batch_size),
                     output_dir=out, work=work, replicated=variables, mesh=mesh)
  if 'recovery' in todo:
    cw = ATTACKS.index('cw')
    rec_work = recovery_work(adv, test.labels)
    if not len(rec_work):
      return out
    step = runner.compile_step(lambda rep, batch: recovery_batch(
        apply_fn, rep[0], batch['x_adv'][:, cw], batch['adv_pred'][:, cw], batch['index'],
        rep[1], rep[2], cfg=cfg, layer=layer), mesh)
    num_pixels = grid_pixels(cfg.recovery_grid, int(np.prod(test.images.shape[1:3])))
    runner.run_stage(runner.Stage('recovery', step, adversarial_inputs, cfg.batch_size,
                                  record=('label',)),
                     output_dir=out, work=rec_work,
                     replicated=(variables, np.asarray(model.mean, np.float32), num_pixels),
                     mesh=mesh)
  return out
