"""Study 001's per-batch computations: one function per stage, each compiled once per run.

Every function takes the model as ``apply_fn(params, x) -> logits f32[B,K]`` with ``params``
traced, the batch, and the run's ``Config`` (static); random choices come from keys folded
with each example's test index (``runner.example_keys``), so results do not depend on the
batching.

Reference: Gu & Tresp, Saliency Methods for Explaining Adversarial Attacks, arXiv:1908.08413.
"""

from typing import Mapping

import jax
import jax.numpy as jnp

from advsal_jax import attacks
from advsal_jax import metrics
from advsal_jax import perturbation
from advsal_jax import saliency
from advsal_jax.studies import explain_adversarial_config as settings
from advsal_jax.studies import runner
from advsal_jax.types import ApplyFn, Params


def explain(method: str, apply_fn: ApplyFn, params: Params, x: jax.Array, target: jax.Array,
            *, keys: jax.Array, layer: str, cfg: settings.Config,
            normalize: bool = False) -> jax.Array:
  """Pixel map f32[B,H,W] of ``method`` (``saliency.explain``) for classes ``target`` (i32[B]).

  Args:
    method: a name of ``explain_adversarial_config.METHODS``.
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


def pairs_batch(apply_fn: ApplyFn, params: Params, x: jax.Array, index: jax.Array,
                fill_mean: jax.Array, *, cfg: settings.Config) -> dict[str, jax.Array]:
  """Class-discriminative statistics of GBP and EGBP maps for every pair of top classes.

  Sim-Ratio compares the binarised attributions as the paper defines the filtering effect,
  ``s * 1{g > 0}`` per channel: a (pixel, channel) is on where the map is positive. The
  plain gradient's Sim-Ratio of the same pair and the agreement two independent masks with
  GBP's on-fractions would reach by chance are the controls. Avg-Diff and Spearman compare
  the unnormalised pixel maps. EGBP's pair is the map of class k against m and of m
  against k (complementary supports by construction), so its separation is also tested
  directly: the top ``overlap_percent`` pixels of each ranking of ``settings.DELETIONS``
  (EGBP(k vs m), GBP(k), random, EGBP(m vs k)) are replaced by ``fill_mean`` and the drop of
  ``logit_k - logit_m`` is recorded, with its first-order estimate
  ``sum_{deleted p} (x_p - fill) . grad_p(logit_k - logit_m)`` (plain gradient). On EGBP(k vs
  m)'s positive (pixel, channel) entries among its top pixels: the share where the margin's
  gradient is positive (the map points the right way) and where ``x < fill`` (deleting the
  entry raises it), each beside its share over all entries of the image.

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
    ``chance_sim_ratio``, ``<d>_margin_drop`` and ``<d>_first_order_drop`` for ``d`` in
    ``settings.DELETIONS``, ``egbp_gradient_agreement``, ``gradient_positive_share``,
    ``egbp_below_fill`` and ``below_fill_share``.
  """
  b, hw = x.shape[0], x.shape[1:3]
  n_cls = cfg.pair_classes
  pairs = settings.class_pairs(n_cls)
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
  for name, (u, v), method in (('gbp', (gk, gm), settings.GBP),
                               ('egbp', (e1, e2), settings.EGBP)):
    values[f'{name}_sim_ratio'] = metrics.sim_ratio(jax.nn.relu(u), jax.nn.relu(v))
    hu = saliency.heatmap(u, method, normalize=False)
    hv = saliency.heatmap(v, method, normalize=False)
    values[f'{name}_avg_diff'] = metrics.avg_diff(hu, hv)
    values[f'{name}_spearman'] = metrics.spearman(hu, hv)
  # Deletion: does EGBP(k vs m) find the pixels behind logit_k - logit_m? Rows are
  # (ranking, pair, example), rankings in DELETIONS order; each row breaks map ties with its
  # own example's draw.
  n, r = len(pairs) * b, len(settings.DELETIONS)
  scores = jnp.concatenate([
      saliency.heatmap(e1, settings.EGBP, normalize=False),
      saliency.heatmap(gk, settings.GBP, normalize=False),
      jnp.tile(uniform_maps(cfg.seed, index, settings.RANDOM_RANK_STREAM, hw),
               (len(pairs), 1, 1)),
      saliency.heatmap(e2, settings.EGBP, normalize=False)])
  tiebreak = jnp.tile(uniform_maps(cfg.seed, index, settings.TIEBREAK_STREAM, hw),
                      (r * len(pairs), 1, 1))
  ranks = perturbation.pixel_ranks(scores, tiebreak)
  x_pairs = jnp.tile(x, (len(pairs), 1, 1, 1))
  fill = fill_mean.astype(x.dtype)
  deleted = perturbation.replace_top(jnp.tile(x_pairs, (r, 1, 1, 1)), ranks, fill,
                                     overlap_pixels(cfg, hw))
  ck, cm = jnp.tile(k_cls[:n], r), jnp.tile(m_cls[:n], r)
  after = apply_fn(params, deleted)
  rows = jnp.arange(r * n)
  clean = jnp.tile(logits, (r * len(pairs), 1))
  drop = (clean[rows, ck] - clean[rows, cm]) - (after[rows, ck] - after[rows, cm])
  # To first order, setting pixel p to the fill lowers the margin by (x_p - fill) . grad_p.
  grad_margin = dk - dm
  offset = x_pairs - fill[None, None, None]
  deleted_mask = (ranks < overlap_pixels(cfg, hw)).reshape(r, n, *hw)
  first_order = jnp.where(deleted_mask, (offset * grad_margin).sum(-1), 0).sum((2, 3))
  for i, name in enumerate(settings.DELETIONS):
    values[f'{name}_margin_drop'] = drop[i * n:(i + 1) * n]
    values[f'{name}_first_order_drop'] = first_order[i]
  on = (e1 > 0) & deleted_mask[0, ..., None]
  count = on.sum((1, 2, 3))
  for name, where in (('egbp_gradient_agreement', grad_margin > 0),
                      ('egbp_below_fill', offset < 0)):
    values[name] = jnp.where(count > 0, (on & where).sum((1, 2, 3)) / jnp.maximum(count, 1),
                             jnp.nan)
  values['gradient_positive_share'] = (grad_margin > 0).mean((1, 2, 3))
  values['below_fill_share'] = (offset < 0).mean((1, 2, 3))
  out.update({k: v.reshape(len(pairs), b).T for k, v in values.items()})
  return out


def attacks_batch(apply_fn: ApplyFn, params: Params, x: jax.Array,
                  budgets: Mapping[str, jax.Array], *,
                  cfg: settings.Config) -> dict[str, jax.Array]:
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
               clean_pred: jax.Array, adv_pred: jax.Array, index: jax.Array, *,
               cfg: settings.Config, layer: str) -> dict[str, jax.Array]:
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
  keys = jnp.tile(runner.example_keys(cfg.seed, index, settings.SMOOTHGRAD_STREAM), 1 + a)
  k = overlap_pixels(cfg, hw)
  delta = jnp.abs(jnp.moveaxis(x_adv, 1, 0) - x[None]).sum(-1).reshape(a * b, *hw)
  tiebreak = jnp.tile(uniform_maps(cfg.seed, index, settings.TIEBREAK_STREAM, hw), (a, 1, 1))
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
    if method == settings.EGBP:
      # Control: the clean image's EGBP map for the adversarial class against the clean one.
      # The adversarial map explains adv_pred against its runner-up, usually the clean class,
      # so much of its change from the clean map is this class swap, not the perturbation.
      swapped = saliency.heatmap(saliency.enhanced_guided_backprop(
          apply_fn, params, jnp.tile(x, (a, 1, 1, 1)), adv_pred.T.reshape(-1),
          contrast_class=jnp.tile(clean_pred, a)), settings.EGBP, normalize=True)
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
  top = perturbation.pixel_ranks(maps, tiebreak).reshape(n, -1) < k
  d = delta.reshape(n, -1)
  total = d.sum(-1)
  return jnp.where(total > 0, jnp.where(top, d, 0).sum(-1) / jnp.where(total > 0, total, 1),
                   jnp.nan)


def example_maps(apply_fn: ApplyFn, params: Params, x: jax.Array, x_adv: jax.Array,
                 clean_pred: jax.Array, adv_pred: jax.Array, index: jax.Array, *,
                 cfg: settings.Config, layer: str) -> dict[str, jax.Array]:
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
  keys = jnp.repeat(runner.example_keys(cfg.seed, index, settings.SMOOTHGRAD_STREAM), 1 + a)
  return {m: explain(m, apply_fn, params, images, targets, keys=keys, layer=layer, cfg=cfg,
                     normalize=True).reshape(b, 1 + a, *x.shape[1:3])
          for m in cfg.methods}


def overlap_pixels(cfg: settings.Config, hw: tuple[int, int]) -> int:
  """Top map pixels of ``delta_share``: ``overlap_percent`` of H*W, at least 1."""
  return max(1, int(round(cfg.overlap_percent / 100 * hw[0] * hw[1])))


def recovery_batch(apply_fn: ApplyFn, params: Params, x_adv: jax.Array, adv_pred: jax.Array,
                   index: jax.Array, fill_mean: jax.Array, num_pixels: jax.Array, *,
                   cfg: settings.Config, layer: str) -> dict[str, jax.Array]:
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
  keys = runner.example_keys(cfg.seed, index, settings.SMOOTHGRAD_STREAM)
  maps = [explain(m, apply_fn, params, x_adv, adv_pred, keys=keys, layer=layer, cfg=cfg)
          for m in cfg.methods]
  hw = x_adv.shape[1:3]

  def uniform(stream):
    return uniform_maps(cfg.seed, index, stream, hw)

  scores = jnp.stack([*maps, uniform(settings.RANDOM_RANK_STREAM)])
  fill = perturbation.fill_images(
      x_adv, cfg.recovery_fill, mean=fill_mean, sigma=settings.BLUR_SIGMA,
      keys=runner.example_keys(cfg.seed, index, settings.NOISE_STREAM))
  return {'recovery_pred': perturbation.perturbation_curves(
      apply_fn, params, x_adv, scores, uniform(settings.TIEBREAK_STREAM), fill, num_pixels)}

