"""Study 001's per-example tables and summary: aggregates with 95 % bootstrap CIs, and claims.

``tables`` flattens the stages' shards into tidy tables (one row per image and class pair,
attack, method or grid point); ``summarize`` aggregates them and adds the paper's claims with
verdicts (``explain_adversarial_claims``).
"""

import dataclasses
from typing import Any, Mapping

import numpy as np

from advsal_jax import metrics
from advsal_jax.studies import explain_adversarial_claims as study_claims
from advsal_jax.studies import explain_adversarial_config as settings
from advsal_jax.studies import summary as summ

Results = Mapping[str, Mapping[str, np.ndarray]]
PAIR_STATS = ('sim_ratio', 'avg_diff', 'spearman')
EGBP_ENTRIES = ('egbp_gradient_agreement', 'gradient_positive_share', 'egbp_below_fill',
                'below_fill_share')
"""EGBP(k vs m)'s positive entries on its deleted pixels: share with a positive margin
gradient and share below the fill, each followed by its share over the whole image."""
PAIR_COLUMNS = (*(f'{m}_{s}' for m in ('gbp', 'egbp') for s in PAIR_STATS),
                'gradient_sim_ratio', 'chance_sim_ratio',
                *(f'{d}_{s}' for s in ('margin_drop', 'first_order_drop')
                  for d in settings.DELETIONS), *EGBP_ENTRIES)
SHIFT_STATS = ('spearman', 'adv_delta_share')
"""failed_vs_successful: map vs clean map, and map's top pixels vs the perturbation's."""
SWAPPED = ('swapped_spearman', 'swapped_delta_share')
"""EGBP's control map (clean image, adversarial class against the clean one) vs the
adversarial map, and its share of |delta|."""
QUANTILES = {'min': 0, 'q05': 5, 'median': 50, 'q95': 95, 'max': 100}


def _attack_table(res: Results) -> dict[str, np.ndarray]:
  a = res['attacks']
  n, k = a['adv_pred'].shape
  return {'index': np.repeat(a['index'], k), 'label': np.repeat(a['label'], k),
          'clean_pred': np.repeat(a['clean_pred'], k), 'attack': np.tile(settings.ATTACKS, n),
          **{c: a[c].reshape(-1) for c in ('adv_pred', 'success', 'l2', 'linf')}}


def tables(res: Results, config: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
  """Tidy per-example tables (column -> 1-D array), one per finished stage.

  ``pairs``: image x class pair; ``attacks``: image x attack; ``maps``: image x attack x
  method; ``recovery``: image x ranking (methods, then ``random``) x grid point.
  """
  out = {}
  if 'pairs' in res:
    r = res['pairs']
    n, p = r['gbp_sim_ratio'].shape
    pairs = settings.class_pairs(config['pair_classes'])
    top = r['top_classes']
    out['pairs'] = {'index': np.repeat(r['index'], p), 'label': np.repeat(r['label'], p),
                    'rank_k': np.tile([i for i, _ in pairs], n),
                    'rank_m': np.tile([j for _, j in pairs], n),
                    'class_k': top[:, [i for i, _ in pairs]].reshape(-1),
                    'class_m': top[:, [j for _, j in pairs]].reshape(-1),
                    'gbp_on_fraction_k': r['gbp_on_fraction'][:, [i for i, _ in pairs]].reshape(-1),
                    'gbp_on_fraction_m': r['gbp_on_fraction'][:, [j for _, j in pairs]].reshape(-1),
                    **{c: r[c].reshape(-1) for c in PAIR_COLUMNS}}
  if 'attacks' in res:
    out['attacks'] = _attack_table(res)
  if 'maps' in res:
    base, methods = _attack_table(res), config['methods']
    cols = {k: np.repeat(v, len(methods)) for k, v in base.items()}
    cols['method'] = np.tile(methods, len(base['index']))
    for name in (*settings.MAP_METRICS, 'adv_delta_share', 'clean_delta_share'):
      cols[name] = np.stack([res['maps'][f'{m}/{name}'] for m in methods], -1).reshape(-1)
    nan = np.full_like(res['maps'][f'{methods[0]}/spearman'], np.nan)
    for name in SWAPPED:  # the EGBP rows only
      cols[name] = np.stack([res['maps'].get(f'{m}/{name}', nan) if m == settings.EGBP else nan
                             for m in methods], -1).reshape(-1)
    out['maps'] = cols
  if 'recovery' in res:
    r = res['recovery']
    n, k, p = r['recovery_pred'].shape
    rankings = [*config['methods'], 'random']
    out['recovery'] = {
        'index': np.repeat(r['index'], k * p), 'label': np.repeat(r['label'], k * p),
        'ranking': np.tile(np.repeat(rankings, p), n),
        'percent': np.tile(np.asarray(config['recovery_grid'], float), n * k),
        'pred': r['recovery_pred'].reshape(-1),
        'correct': (r['recovery_pred'] == r['label'][:, None, None]).reshape(-1)}
  return out


def _describe(values: Any, seed: int, *, quantiles: bool = False) -> dict[str, float] | None:
  stats = summ.describe(values, seed=seed)
  values = np.asarray(values, float)
  values = values[np.isfinite(values)]
  if stats and quantiles:
    stats.update({k: float(np.percentile(values, q)) for k, q in QUANTILES.items()})
  return stats


def _mann_whitney(failed: np.ndarray, success: np.ndarray) -> dict[str, float] | None:
  failed, success = failed[np.isfinite(failed)], success[np.isfinite(success)]
  if min(len(failed), len(success)) < study_claims.MIN_GROUP:
    return None
  out = metrics.mann_whitney_u(success, failed)._asdict()
  out['rank_biserial_ci'] = list(_rank_biserial_ci(success, failed))
  return out


def rank_biserial(success: np.ndarray, failed: np.ndarray) -> float:
  """P(s > f) - P(s < f) over all pairs of f[n_s] ``success`` and f[n_f] ``failed``.

  Counted by binary search in the sorted ``failed`` values: O((n_s + n_f) log n_f) time and
  O(n_s + n_f) memory, where the pairwise sign matrix would need n_s x n_f (a full-preset
  group has tens of thousands of values on each side).
  """
  f = np.sort(failed)
  below = np.searchsorted(f, success, side='left').sum()
  above = (len(f) - np.searchsorted(f, success, side='right')).sum()
  return float((below - above) / (len(success) * len(f)))


def _rank_biserial_ci(success: np.ndarray, failed: np.ndarray, *, seed: int = 0,
                      n_resamples: int = 1000) -> tuple[float, float]:
  """95 % percentile-bootstrap CI (both groups resampled) of P(s > f) - P(s < f)."""
  rng = np.random.default_rng(seed)
  r = [rank_biserial(success[rng.integers(0, len(success), len(success))],
                     failed[rng.integers(0, len(failed), len(failed))])
       for _ in range(n_resamples)]
  low, high = np.percentile(r, [2.5, 97.5])
  return float(low), float(high)


def summarize(res: Results, config: Mapping[str, Any]) -> dict[str, Any]:
  """Every experiment's aggregates with 95 % percentile-bootstrap CIs, and the claims.

  ``failed_vs_successful`` Mann-Whitney tests put Adv_s first: a negative rank-biserial
  means successful attacks give lower values than failed ones.
  """
  seed = int(config['seed'])
  t = tables(res, config)
  first = next(iter(res.values()))
  out: dict[str, Any] = {'num_examples': int(len(first['index'])),
                         'compute_seconds': {s: float(np.sum(r['seconds']))
                                             for s, r in res.items()}}
  if 'pairs' in t:
    out['class_discriminative'] = {
        'num_pairs': int(len(t['pairs']['index'])),
        **{m: {s: _describe(t['pairs'][f'{m}_{s}'], seed, quantiles=True) for s in PAIR_STATS}
           for m in ('gbp', 'egbp')},
        'gbp_fraction_sim_ratio_close': float(np.mean(t['pairs']['gbp_sim_ratio']
                                                      >= study_claims.SIM_RATIO_CLOSE)),
        'gbp_on_fraction': _describe(res['pairs']['gbp_on_fraction'].reshape(-1), seed),
        'controls': {c: _describe(t['pairs'][f'{c}_sim_ratio'], seed, quantiles=True)
                     for c in ('gradient', 'chance')},
        'gbp_minus_control_sim_ratio': {
            c: _describe(t['pairs']['gbp_sim_ratio'] - t['pairs'][f'{c}_sim_ratio'], seed)
            for c in ('gradient', 'chance')},
        **{s: {d: _describe(t['pairs'][f'{d}_{s}'], seed) for d in settings.DELETIONS}
           for s in ('margin_drop', 'first_order_drop')},
        'egbp_minus_margin_drop': {
            d: _describe(t['pairs']['egbp_margin_drop'] - t['pairs'][f'{d}_margin_drop'], seed)
            for d in ('gbp', 'random')},
        'egbp_entries': {c: _describe(t['pairs'][c], seed) for c in EGBP_ENTRIES},
        'egbp_entries_minus_image': {
            'gradient_agreement': _describe(t['pairs']['egbp_gradient_agreement']
                                            - t['pairs']['gradient_positive_share'], seed),
            'below_fill': _describe(t['pairs']['egbp_below_fill']
                                    - t['pairs']['below_fill_share'], seed)}}
  if 'attacks' in t:
    a = res['attacks']
    out['clean_accuracy'] = float(np.mean(a['clean_pred'] == a['label']))
    out['attacks'] = {name: {'success_rate': float(a['success'][:, i].mean()),
                             'mean_l2': float(a['l2'][:, i].mean()),
                             'mean_linf': float(a['linf'][:, i].mean())}
                      for i, name in enumerate(settings.ATTACKS)}
  if 'maps' in t:
    m, ok = t['maps'], t['maps']['success']
    out['clean_vs_adversarial'] = {
        att: {meth: {metric: summ.by_success(m[metric][sel], ok[sel], seed=seed)
                     for metric in settings.MAP_METRICS}
              for meth in config['methods']
              for sel in [(m['attack'] == att) & (m['method'] == meth)]}
        for att in settings.ATTACKS}
    groups = {**{att: m['attack'] == att for att in settings.ATTACKS},
              'all': np.ones(len(ok), bool)}
    out['failed_vs_successful'] = {
        g: {meth: {s: {'failed': _describe(m[s][sel & ~ok], seed),
                       'success': _describe(m[s][sel & ok], seed),
                       'mann_whitney': _mann_whitney(m[s][sel & ~ok], m[s][sel & ok])}
                   for s in SHIFT_STATS}
            for meth in (settings.GBP, settings.EGBP)
            for sel in [where & (m['method'] == meth)]}
        for g, where in groups.items()}
    if settings.EGBP in config['methods']:
      out['egbp_swapped_control'] = {
          att: {'adv_vs_clean_spearman': _describe(m['spearman'][sel], seed),
                'adv_vs_swapped_spearman': _describe(m['swapped_spearman'][sel], seed),
                'swapped_minus_clean_spearman': _describe(
                    m['swapped_spearman'][sel] - m['spearman'][sel], seed),
                'adv_delta_share': _describe(m['adv_delta_share'][sel], seed),
                'swapped_delta_share': _describe(m['swapped_delta_share'][sel], seed),
                'adv_minus_swapped_delta_share': _describe(
                    m['adv_delta_share'][sel] - m['swapped_delta_share'][sel], seed)}
          for att in settings.ATTACKS
          for sel in [(m['attack'] == att) & (m['method'] == settings.EGBP) & ok]}
  if 'recovery' in t:
    out['recovery'] = _summarize_recovery(res['recovery'], config, seed)
  out['claims'] = [dataclasses.asdict(c) for c in study_claims.claims(out, config)]
  return out


def _summarize_recovery(r: Mapping[str, np.ndarray], config: Mapping[str, Any],
                        seed: int) -> dict[str, Any]:
  correct = (r['recovery_pred'] == r['label'][:, None, None]).astype(float)
  rankings = [*config['methods'], 'random']
  auc = correct.mean(-1)  # [n, R]: mean accuracy over the grid
  out = {'num_images': int(correct.shape[0]), 'grid': list(config['recovery_grid']),
         'curves': {}, 'auc': {}}
  for i, name in enumerate(rankings):
    stats = [summ.describe(correct[:, i, j], seed=seed) for j in range(correct.shape[2])]
    out['curves'][name] = {k: [s[k] for s in stats] for k in ('mean', 'ci_low', 'ci_high')}
    out['auc'][name] = summ.describe(auc[:, i], seed=seed)
  if settings.EGBP in config['methods'] and len(config['methods']) > 1:
    e = rankings.index(settings.EGBP)
    others = {n: s['mean'] for n, s in out['auc'].items() if n not in (settings.EGBP, 'random')}
    best = max(others, key=others.get)
    out['egbp_minus_best_other'] = {
        'other': best, **summ.describe(auc[:, e] - auc[:, rankings.index(best)], seed=seed)}
    out['egbp_minus_random'] = summ.describe(auc[:, e] - auc[:, -1], seed=seed)
  return out
