"""Study 001's outputs: per-example tables, summary, claims with verdicts, figures, report."""

import dataclasses
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import checkpoints
from advsal_jax import compilation
from advsal_jax import data
from advsal_jax import metrics
from advsal_jax.studies import explain_adversarial as study
from advsal_jax.studies import report
from advsal_jax.studies import runner
from advsal_jax.studies import store
from advsal_jax.studies import summary as summ

Results = Mapping[str, Mapping[str, np.ndarray]]
PAIR_STATS = ('sim_ratio', 'avg_diff', 'spearman')
DROPS = ('egbp', 'gbp', 'random')
"""Rankings whose top pixels are deleted in the pairs stage's margin test."""
PAIR_COLUMNS = (*(f'{m}_{s}' for m in ('gbp', 'egbp') for s in PAIR_STATS),
                'gradient_sim_ratio', 'chance_sim_ratio', *(f'{d}_margin_drop' for d in DROPS))
SHIFT_STATS = ('spearman', 'adv_delta_share')
"""failed_vs_successful: map vs clean map, and map's top pixels vs the perturbation's."""
SWAPPED = ('swapped_spearman', 'swapped_delta_share')
"""EGBP's control map (clean image, adversarial class against the clean one) vs the
adversarial map, and its share of |delta|."""
SIM_RATIO_CLOSE = 0.9
"""A Sim-Ratio at least this counts as 'close to 1'."""
MIN_GROUP = 3
"""Fewest Adv_f (and Adv_s) values for a Mann-Whitney U test."""
MIN_ALIKE_GROUP = 20
"""Fewest Adv_f (and Adv_s) values to show two groups alike (an effect-size bound)."""
ALIKE_R = 0.1
"""Groups are alike when |rank-biserial| < ALIKE_R and its 95 % CI lies in (-2 ALIKE_R,
2 ALIKE_R)."""
ALPHA = 0.05
QUANTILES = {'min': 0, 'q05': 5, 'median': 50, 'q95': 95, 'max': 100}
SHORT = {study.GBP: 'GBP', study.EGBP: 'EGBP', 'integrated_gradients': 'IG',
         'grad_cam': 'Grad-CAM', 'smoothgrad': 'SmoothGrad', 'gradient': 'Gradient',
         'random': 'random', 'gbp': 'GBP', 'egbp': 'EGBP'}


def _attack_table(res: Results) -> dict[str, np.ndarray]:
  a = res['attacks']
  n, k = a['adv_pred'].shape
  return {'index': np.repeat(a['index'], k), 'label': np.repeat(a['label'], k),
          'clean_pred': np.repeat(a['clean_pred'], k), 'attack': np.tile(study.ATTACKS, n),
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
    pairs = study.class_pairs(config['pair_classes'])
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
    for name in (*study.MAP_METRICS, 'adv_delta_share', 'clean_delta_share'):
      cols[name] = np.stack([res['maps'][f'{m}/{name}'] for m in methods], -1).reshape(-1)
    nan = np.full_like(res['maps'][f'{methods[0]}/spearman'], np.nan)
    for name in SWAPPED:  # the EGBP rows only
      cols[name] = np.stack([res['maps'].get(f'{m}/{name}', nan) if m == study.EGBP else nan
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


def _rows(table: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
  names = list(table)
  return [dict(zip(names, values)) for values in zip(*(table[c].tolist() for c in names))]


def _describe(values: Any, seed: int, *, quantiles: bool = False) -> dict[str, float] | None:
  stats = summ.describe(values, seed=seed)
  values = np.asarray(values, float)
  values = values[np.isfinite(values)]
  if stats and quantiles:
    stats.update({k: float(np.percentile(values, q)) for k, q in QUANTILES.items()})
  return stats


def _mann_whitney(failed: np.ndarray, success: np.ndarray) -> dict[str, float] | None:
  failed, success = failed[np.isfinite(failed)], success[np.isfinite(success)]
  if min(len(failed), len(success)) < MIN_GROUP:
    return None
  out = metrics.mann_whitney_u(success, failed)._asdict()
  out['rank_biserial_ci'] = list(_rank_biserial_ci(success, failed))
  return out


def _rank_biserial_ci(success: np.ndarray, failed: np.ndarray, *, seed: int = 0,
                      n_resamples: int = 1000) -> tuple[float, float]:
  """95 % percentile-bootstrap CI (both groups resampled) of P(s > f) - P(s < f)."""
  signs = np.sign(success[:, None] - failed[None, :])
  rng = np.random.default_rng(seed)
  r = [signs[rng.integers(0, len(success), len(success))][
      :, rng.integers(0, len(failed), len(failed))].mean() for _ in range(n_resamples)]
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
                                                      >= SIM_RATIO_CLOSE)),
        'gbp_on_fraction': _describe(res['pairs']['gbp_on_fraction'].reshape(-1), seed),
        'controls': {c: _describe(t['pairs'][f'{c}_sim_ratio'], seed, quantiles=True)
                     for c in ('gradient', 'chance')},
        'gbp_minus_control_sim_ratio': {
            c: _describe(t['pairs']['gbp_sim_ratio'] - t['pairs'][f'{c}_sim_ratio'], seed)
            for c in ('gradient', 'chance')},
        'margin_drop': {d: _describe(t['pairs'][f'{d}_margin_drop'], seed) for d in DROPS},
        'egbp_minus_margin_drop': {
            d: _describe(t['pairs']['egbp_margin_drop'] - t['pairs'][f'{d}_margin_drop'], seed)
            for d in ('gbp', 'random')}}
  if 'attacks' in t:
    a = res['attacks']
    out['clean_accuracy'] = float(np.mean(a['clean_pred'] == a['label']))
    out['attacks'] = {name: {'success_rate': float(a['success'][:, i].mean()),
                             'mean_l2': float(a['l2'][:, i].mean()),
                             'mean_linf': float(a['linf'][:, i].mean())}
                      for i, name in enumerate(study.ATTACKS)}
  if 'maps' in t:
    m, ok = t['maps'], t['maps']['success']
    out['clean_vs_adversarial'] = {
        att: {meth: {metric: summ.by_success(m[metric][sel], ok[sel], seed=seed)
                     for metric in study.MAP_METRICS}
              for meth in config['methods']
              for sel in [(m['attack'] == att) & (m['method'] == meth)]}
        for att in study.ATTACKS}
    groups = {**{att: m['attack'] == att for att in study.ATTACKS},
              'all': np.ones(len(ok), bool)}
    out['failed_vs_successful'] = {
        g: {meth: {s: {'failed': _describe(m[s][sel & ~ok], seed),
                       'success': _describe(m[s][sel & ok], seed),
                       'mann_whitney': _mann_whitney(m[s][sel & ~ok], m[s][sel & ok])}
                   for s in SHIFT_STATS}
            for meth in (study.GBP, study.EGBP)
            for sel in [where & (m['method'] == meth)]}
        for g, where in groups.items()}
    if study.EGBP in config['methods']:
      out['egbp_swapped_control'] = {
          att: {'adv_vs_clean_spearman': _describe(m['spearman'][sel], seed),
                'adv_vs_swapped_spearman': _describe(m['swapped_spearman'][sel], seed),
                'swapped_minus_clean_spearman': _describe(
                    m['swapped_spearman'][sel] - m['spearman'][sel], seed),
                'adv_delta_share': _describe(m['adv_delta_share'][sel], seed),
                'swapped_delta_share': _describe(m['swapped_delta_share'][sel], seed),
                'adv_minus_swapped_delta_share': _describe(
                    m['adv_delta_share'][sel] - m['swapped_delta_share'][sel], seed)}
          for att in study.ATTACKS
          for sel in [(m['attack'] == att) & (m['method'] == study.EGBP) & ok]}
  if 'recovery' in t:
    out['recovery'] = _summarize_recovery(res['recovery'], config, seed)
  out['claims'] = [dataclasses.asdict(c) for c in claims(out, config)]
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
  if study.EGBP in config['methods'] and len(config['methods']) > 1:
    e = rankings.index(study.EGBP)
    others = {n: s['mean'] for n, s in out['auc'].items() if n not in (study.EGBP, 'random')}
    best = max(others, key=others.get)
    out['egbp_minus_best_other'] = {
        'other': best, **summ.describe(auc[:, e] - auc[:, rankings.index(best)], seed=seed)}
    out['egbp_minus_random'] = summ.describe(auc[:, e] - auc[:, -1], seed=seed)
  return out


def _verdict(hits: int, total: int) -> str:
  return 'holds' if hits == total else ('partly holds' if hits else 'does not hold')


def _ci(stats: Mapping[str, float] | None) -> str:
  return report.with_ci(stats)


def claims(s: Mapping[str, Any], config: Mapping[str, Any]) -> list[report.Claim]:
  """The paper's claims with our numbers and verdicts (rules in each claim's text or why)."""
  out = []
  cd = s.get('class_discriminative')
  untested = 'class_discriminative was not run'
  if cd:
    sr, ad = cd['gbp']['sim_ratio'], cd['gbp']['avg_diff']
    frac = cd['gbp_fraction_sim_ratio_close']
    ctl, diff = cd['controls'], cd['gbp_minus_control_sim_ratio']
    near = frac >= 0.95
    above = all(diff[c] and diff[c]['ci_low'] > 0 for c in ('gradient', 'chance'))
    verdict = ('holds' if near and above else 'partly holds' if near or (
        above and sr['mean'] >= SIM_RATIO_CLOSE) else 'does not hold')
    why = ('' if near and above else
           'GBP pairs are close to 1, but not above the controls: agreement that high is not '
           'specific to GBP' if near else
           'GBP agrees more than the controls, but not every pair is close to 1' if above
           else 'neither close to 1 nor above the controls')
    out.append(report.Claim(
        'GBP maps of different classes have almost the same filtering effect: Sim-Ratios '
        f'close to 1 (binarised per channel at g > 0, as the paper defines it; rule: >= 95 % '
        f'of pairs >= {SIM_RATIO_CLOSE} and the paired CI of GBP minus each control above 0; '
        "controls: the plain gradient's Sim-Ratio of the same pair, and chance agreement of "
        "masks with GBP's on-fractions).",
        'Fig. 1a: all close to 1',
        f"GBP mean {_ci(sr)}, min {sr['min']:.3f}; {100 * frac:.1f} % of {cd['num_pairs']} "
        f"pairs >= {SIM_RATIO_CLOSE}; on-fraction {_ci(cd['gbp_on_fraction'])}; gradient "
        f"control {_ci(ctl['gradient'])}, chance {_ci(ctl['chance'])}; GBP minus gradient "
        f"{_ci(diff['gradient'])}, minus chance {_ci(diff['chance'])}", verdict, why))
    spread = ad['q05'] <= 0.1 and 0.6 <= ad['q95'] <= 0.9
    out.append(report.Claim(
        'GBP maps of different classes differ in their (unnormalised) values: Avg-Diff spreads '
        'over 0-0.8 (rule: 5th percentile <= 0.1, 95th in [0.6, 0.9]).',
        'Fig. 1b: 0 to 0.8',
        f"5-95 % range {ad['q05']:.3f}-{ad['q95']:.3f} (min {ad['min']:.3f}, max "
        f"{ad['max']:.3f}, median {ad['median']:.3f})",
        'holds' if spread else ('partly holds' if ad['q95'] - ad['q05'] >= 0.3
                                else 'does not hold'),
        '' if spread else 'the values differ but over another range' if
        ad['q95'] - ad['q05'] >= 0.3 else ''))
    md, dd = cd['margin_drop'], cd['egbp_minus_margin_drop']
    beats = [bool(dd[d] and dd[d]['ci_low'] > 0) for d in ('gbp', 'random')]
    pct = f"{config['overlap_percent']:g} %"
    out.append(report.Claim(
        'Enhanced GBP separates the classes: EGBP(k vs m) marks the pixels behind '
        f'logit_k - logit_m (rule: deleting its top {pct} pixels lowers the margin more than '
        f"deleting GBP(k)'s or random top {pct}, paired CIs above 0). Its two maps' lower "
        'Sim-Ratio and Spearman hold by construction (max(0, n_k - n_m) and max(0, n_m - n_k) '
        'have disjoint supports per channel), so they are not the test.',
        'Sec. 2.2, Fig. 2 (qualitative)',
        f"margin drop EGBP {_ci(md['egbp'])}, GBP {_ci(md['gbp'])}, random "
        f"{_ci(md['random'])}; EGBP minus GBP {_ci(dd['gbp'])}, minus random "
        f"{_ci(dd['random'])} (by construction: Sim-Ratio EGBP {_ci(cd['egbp']['sim_ratio'])} "
        f"vs GBP {_ci(sr)})", _verdict(sum(beats), 2),
        '' if all(beats) else 'EGBP beats ' + (' but not '.join(
            ['GBP', 'random'] if beats[0] else ['random', 'GBP'])) if any(beats)
        else 'deleting EGBP\'s pixels lowers the margin no more than GBP\'s or random ones'))
  else:
    out += [report.Claim(text, ref, 'n/a', 'cannot be tested', untested) for text, ref in (
        ('GBP Sim-Ratios are close to 1.', 'Fig. 1a'),
        ('GBP Avg-Diff spreads over 0-0.8.', 'Fig. 1b'),
        ('Enhanced GBP separates the classes.', 'Sec. 2.2'))]
  out.append(_reacts_claim(s, config))
  out.append(_recovery_claim(s, config))
  out += _failed_claims(s)
  return out


def _reacts_claim(s: Mapping[str, Any], config: Mapping[str, Any]) -> report.Claim:
  text = ('Only Enhanced GBP reacts strongly to adversarial changes; other maps stay similar '
          '(rule: on successful attacks, EGBP has the lowest Spearman and mean SSIM, CI '
          'below every other method\'s, per attack; only partly if, on some attack, the '
          "adversarial EGBP map is closer to the control, the clean image's EGBP map for the "
          'adversarial against the clean class, than to the clean map: paired CI above 0).')
  cva = s.get('clean_vs_adversarial')
  if not cva or study.EGBP not in config['methods'] or len(config['methods']) < 2:
    return report.Claim(text, 'Fig. 3 (qualitative)', 'n/a', 'cannot be tested',
                        'needs clean_vs_adversarial with EGBP and another method')
  hits, cells, parts = 0, 0, []
  for att in study.ATTACKS:
    for metric in ('spearman', 'mean_ssim'):
      e = cva[att][study.EGBP][metric]['success']
      others = [cva[att][m][metric]['success'] for m in config['methods'] if m != study.EGBP]
      if not e or not all(others):
        continue
      cells += 1
      hits += e['ci_high'] < min(o['ci_low'] for o in others)
    sp = {m: (cva[att][m]['spearman']['success'] or {}).get('mean') for m in config['methods']}
    parts.append(f"{study.ATTACK_LABELS[att]}: EGBP {report.fmt(sp[study.EGBP], '.2f')}, "
                 'others ' + ', '.join(f"{SHORT[m]} {report.fmt(v, '.2f')}"
                                        for m, v in sp.items() if m != study.EGBP))
  if not cells:
    return report.Claim(text, 'Fig. 3 (qualitative)', 'n/a', 'cannot be tested',
                        'no attack succeeded on two or more images')
  verdict, why = _verdict(hits, cells), ''
  ctl = s.get('egbp_swapped_control') or {}
  swap = [att for att in study.ATTACKS
          if (ctl.get(att, {}).get('swapped_minus_clean_spearman') or {}).get('ci_low', -1) > 0]
  ctl_text = '; '.join(
      f"{study.ATTACK_LABELS[att]} {report.fmt(c['adv_vs_swapped_spearman']['mean'], '.2f')}"
      for att, c in ctl.items() if c['adv_vs_swapped_spearman'])
  if swap and hits:
    verdict = 'partly holds'
    why = ('much of the reaction is the class swap: on ' + ', '.join(
        study.ATTACK_LABELS[a] for a in swap) + " the adversarial EGBP map is closer to the "
           "clean image's EGBP map for (adversarial vs clean class) than to the clean map")
  return report.Claim(text, 'Fig. 3 (qualitative)',
                      'mean Spearman (clean vs adversarial map, successful attacks): '
                      + '; '.join(parts) + f'. EGBP clearly lowest in {hits} of {cells} '
                      '(attack, metric) cells. Control, Spearman of the adversarial EGBP map '
                      "with the clean image's EGBP(adversarial vs clean class): "
                      + (ctl_text or 'n/a'), verdict, why)


def _recovery_claim(s: Mapping[str, Any], config: Mapping[str, Any]) -> report.Claim:
  text = ('Perturbing the pixels Enhanced GBP marks recovers the accuracy on C&W images best '
          '(rule: EGBP has the highest mean accuracy over the grid, paired CI of the '
          'difference to the next method above 0).')
  rec = s.get('recovery')
  if not rec or 'egbp_minus_best_other' not in rec or rec['num_images'] < 2:
    return report.Claim(text, 'Fig. 4', 'n/a', 'cannot be tested',
                        'needs recovery with EGBP, another method and >= 2 successful C&W '
                        'images whose clean prediction is correct')
  diff = rec['egbp_minus_best_other']
  auc = ', '.join(f"{SHORT[n]} {st['mean']:.3f}" for n, st in rec['auc'].items())
  verdict = ('holds' if diff['ci_low'] > 0 else 'partly holds' if diff['mean'] > 0
             else 'does not hold')
  return report.Claim(
      text, 'Fig. 4: EGBP curve highest',
      f"mean accuracy over p ({rec['num_images']} images, fill {config['recovery_fill']}): "
      f"{auc}; EGBP - {SHORT[diff['other']]} {_ci(diff)}", verdict,
      'EGBP is ahead but the CI of the difference includes 0' if verdict == 'partly holds'
      else '')


def _failed_claims(s: Mapping[str, Any]) -> list[report.Claim]:
  fvs = s.get('failed_vs_successful')
  texts = {
      study.EGBP: ('Enhanced GBP maps of successful attacks (Adv_s) depart from the clean map '
                   'towards the perturbation, those of failed ones (Adv_f) do not (rule, per '
                   f'attack with >= {MIN_GROUP} of each: Spearman to the clean map lower for '
                   'Adv_s and, except on FGSM, whose |delta| is the budget almost everywhere, '
                   'a higher share of |delta| on the top pixels, each Mann-Whitney p < '
                   f'{ALPHA}).'),
      study.GBP: ('GBP maps look alike for Adv_f and Adv_s (rule, per attack with >= '
                  f'{MIN_ALIKE_GROUP} of each: Spearman to the clean map with rank-biserial '
                  f'|r| < {ALIKE_R} and its 95 % CI inside (-{2 * ALIKE_R:g}, '
                  f'{2 * ALIKE_R:g})).')}
  out = []
  for method, text in texts.items():
    if not fvs:
      out.append(report.Claim(text, 'Fig. 5 (qualitative)', 'n/a', 'cannot be tested',
                              'failed_vs_successful was not run'))
      continue
    need = MIN_GROUP if method == study.EGBP else MIN_ALIKE_GROUP
    tested, hits, parts = 0, 0, []
    for att in study.ATTACKS:
      cell = fvs[att][method]
      mw = cell['spearman']['mann_whitney']
      f, ok = cell['spearman']['failed'], cell['spearman']['success']
      if mw is None or min(f['n'], ok['n']) < need:
        continue
      tested += 1
      if method == study.EGBP:
        sh = cell['adv_delta_share']['mann_whitney']
        lower = mw['pvalue'] < ALPHA and mw['rank_biserial'] < 0
        toward = att == 'fgsm' or bool(sh and sh['pvalue'] < ALPHA and sh['rank_biserial'] > 0)
        hits += lower and toward
        share = cell['adv_delta_share']
        parts.append(
            f"{study.ATTACK_LABELS[att]}: Spearman Adv_f {f['mean']:.3f} (n {f['n']}) vs Adv_s "
            f"{ok['mean']:.3f} (n {ok['n']}), p {mw['pvalue']:.2g}; |delta| share Adv_f "
            f"{report.fmt((share['failed'] or {}).get('mean'))} vs Adv_s "
            f"{report.fmt((share['success'] or {}).get('mean'))}"
            + (f", p {sh['pvalue']:.2g}" if sh else ''))
      else:
        r, (low, high) = mw['rank_biserial'], mw['rank_biserial_ci']
        hits += abs(r) < ALIKE_R and -2 * ALIKE_R < low and high < 2 * ALIKE_R
        parts.append(f"{study.ATTACK_LABELS[att]}: Adv_f {f['mean']:.3f} (n {f['n']}) vs "
                     f"Adv_s {ok['mean']:.3f} (n {ok['n']}), r {r:.2f} [{low:.2f}, {high:.2f}]")
    if not tested:
      out.append(report.Claim(text, 'Fig. 5 (qualitative)', 'n/a', 'cannot be tested',
                              f'no attack had >= {need} failed and successful images'))
    else:
      out.append(report.Claim(text, 'Fig. 5 (qualitative)', '; '.join(parts),
                              _verdict(hits, tested)))
  return out


def headline(summary: Mapping[str, Any], config: Mapping[str, Any]) -> list[tuple[str, Any,
                                                                                    Any]]:
  """(quantity, paper's value or None, ours) rows for the results index."""
  rows = []
  cd = summary.get('class_discriminative')
  if cd:
    rows.append(('GBP Sim-Ratio (mean)', None, cd['gbp']['sim_ratio']['mean']))
    rows.append(('GBP Avg-Diff 5-95 %', '0-0.8',
                 f"{cd['gbp']['avg_diff']['q05']:.2f}-{cd['gbp']['avg_diff']['q95']:.2f}"))
  cva = summary.get('clean_vs_adversarial')
  if cva and study.EGBP in config['methods']:
    st = cva['cw'][study.EGBP]['spearman']['success']
    rows.append(('EGBP Spearman clean vs C&W map', None, st and st['mean']))
  rec = summary.get('recovery')
  if rec and 'egbp_minus_best_other' in rec:
    rows.append(('EGBP recovery minus next best', None, rec['egbp_minus_best_other']['mean']))
  return rows


FILL_NOTES = {
    'mean': ("the dataset's mean colour (the model's normalisation mean, zero after "
             'normalisation): it removes what a pixel shows without adding structure and uses '
             "nothing from the clean image. 'blur' would also wash out the high-frequency "
             'perturbation wherever it is applied, a denoiser that recovers accuracy whatever '
             "the ranking; 'noise' adds structure of its own the network may respond to"),
    'blur': (f'a Gaussian blur (sigma {study.BLUR_SIGMA} px) of the adversarial image: it keeps '
             'the coarse content and removes the high-frequency perturbation, so it also '
             'denoises, and the random baseline recovers accuracy too'),
    'noise': ('uniform noise in [0, 1], one draw per image shared by every ranking: it destroys '
              'the pixel and adds structure of its own'),
}


def _budget_text(config: Mapping[str, Any], s: Mapping[str, Any]) -> list[str]:
  rate = {k: v['success_rate'] for k, v in s['attacks'].items()}
  rows = [('FGSM', f"L-inf eps {config['fgsm_eps']:.4f}", rate['fgsm'],
           s['attacks']['fgsm']['mean_l2'], s['attacks']['fgsm']['mean_linf']),
          ('BIM', f"L-inf eps {config['bim_eps']:.4f}, step {config['bim_step_size']:.4f}, "
                  f"{config['bim_steps']} steps", rate['bim'], s['attacks']['bim']['mean_l2'],
           s['attacks']['bim']['mean_linf']),
          ('C&W-L2', f"{config['cw_search_steps']} x {config['cw_steps']} Adam steps, lr "
                     f"{config['cw_learning_rate']}, c0 {config['cw_initial_const']}, kappa 0",
           rate['cw'], s['attacks']['cw']['mean_l2'], s['attacks']['cw']['mean_linf'])]
  return report.table(('attack', 'budget (pixel units)', 'success rate', 'mean L2',
                       'mean L-inf'), rows)


def report_markdown(s: Mapping[str, Any], config: Mapping[str, Any], *,
                    figures: list[str]) -> str:
  """The report: setup and deviations, the claims with verdicts, one section per experiment."""
  doc = report.Markdown('Study 001: saliency methods for explaining adversarial attacks')
  doc.paragraph(
      "Gu & Tresp (arXiv:1908.08413) on our model: `" + config['model'] + "` (checkpoint test "
      f"accuracy {config['checkpoint_test_accuracy']:.4f}; the paper used VGG16 on PASCAL VOC "
      f"and ImageNet), first {s['num_examples']} {config['dataset']} test images"
      + (f", clean accuracy on them {s['clean_accuracy']:.4f}" if 'clean_accuracy' in s
         else '') + f"; experiments {', '.join(config['experiments'])}; seed {config['seed']}.")
  doc.paragraph(
      'Maps are pixel maps: sum over channels of |attribution| (Grad-CAM: its one channel). '
      'Sim-Ratio compares binarised maps, a pixel being on where the map is non-zero (the '
      "paper's filtering effect; it does not state its threshold); Avg-Diff compares the "
      'unnormalised maps; Spearman, mean SSIM (data range 1) and L2 distance compare maps '
      'normalised by family (gradient family: clipped to their 1st-99th percentiles, then '
      'min-max; Grad-CAM: min-max). Enhanced GBP (EGBP) explains class k against the '
      'runner-up class unless a pair names both.')
  doc.heading("The paper's claims on our model")
  doc.lines(report.claims([report.Claim(**c) for c in s['claims']]))
  cd = s.get('class_discriminative')
  if cd:
    doc.heading('Class-discriminative information (Fig. 1)')
    doc.paragraph(
        f"The paper pairs the maps of the ground-truth classes of multi-label VOC images; "
        f"{config['dataset']} is single-label, so we pair the maps of the top "
        f"{config['pair_classes']} predicted classes of each image (all "
        f"{len(study.class_pairs(config['pair_classes']))} pairs, {cd['num_pairs']} in all).")
    rows = [(name.upper(), stat, st['mean'], report.with_ci(st), st['min'], st['q05'],
             st['median'], st['q95'], st['max'])
            for name in ('gbp', 'egbp') for stat in PAIR_STATS for st in [cd[name][stat]]]
    rows += [(f'{name} (control)', 'sim_ratio', st['mean'], report.with_ci(st), st['min'],
              st['q05'], st['median'], st['q95'], st['max'])
             for name, st in cd['controls'].items()]
    doc.lines(report.table(('map', 'statistic', 'mean', '95 % CI', 'min', '5 %', 'median',
                            '95 %', 'max'), rows))
    doc.paragraph(
        f"GBP's attributions are positive on {_ci(cd['gbp_on_fraction'])} of (pixel, channel) "
        'entries; chance is the agreement of two independent masks with the two maps\' '
        f"on-fractions. Margin test: the top {config['overlap_percent']:g} % pixels of "
        "EGBP(k vs m), of GBP(k) and of a random ranking (equal values in random order) take the "
        "dataset's mean colour; the drop of logit_k - logit_m (k the higher-ranked class):")
    doc.lines(report.table(('ranking', 'mean margin drop [95 % CI]'),
                           [(SHORT.get(d, d.upper()), report.with_ci(cd['margin_drop'][d]))
                            for d in DROPS]))
  if 'attacks' in s:
    doc.heading('Attacks')
    doc.paragraph('Untargeted, against the clean prediction; success = the prediction changed. '
                  'Budgets are chosen so each attack succeeds on most images (FGSM leaves some '
                  'failures for the Adv_f / Adv_s comparison).')
    doc.lines(_budget_text(config, s))
  cva = s.get('clean_vs_adversarial')
  if cva:
    doc.heading('Clean vs adversarial maps (Fig. 3)')
    doc.paragraph('Each cell: mean over successful attacks [95 % CI]; in brackets after it the '
                  'mean over all attacks.')
    rows = []
    for att in study.ATTACKS:
      for m in config['methods']:
        cell = cva[att][m]
        rows.append((study.ATTACK_LABELS[att], m, *[
            f"{report.with_ci(cell[k]['success'])} "
            f"({report.fmt((cell[k]['all'] or {}).get('mean'))})" for k in study.MAP_METRICS]))
    doc.lines(report.table(('attack', 'method', *study.MAP_METRICS), rows))
    ctl = s.get('egbp_swapped_control')
    if ctl:
      doc.paragraph(
          'Control for EGBP: the adversarial map explains the adversarial class against its '
          'runner-up, usually the clean class, so it is close to the swapped complement of the '
          "clean map by construction. The control map is the clean image's EGBP for the "
          'adversarial class against the clean class; successful attacks, mean [95 % CI]. '
          "`share`: the share of |delta| on a map's top pixels (chance "
          f"{config['overlap_percent'] / 100:.2f}).")
      doc.lines(report.table(
          ('attack', 'Spearman adv vs clean map', 'adv vs control map', 'share adv map',
           'share control map', 'adv minus control share'),
          [(study.ATTACK_LABELS[att], *[report.with_ci(c[k]) for k in (
              'adv_vs_clean_spearman', 'adv_vs_swapped_spearman', 'adv_delta_share',
              'swapped_delta_share', 'adv_minus_swapped_delta_share')])
           for att, c in ctl.items()]))
  rec = s.get('recovery')
  if 'recovery' in config['experiments']:
    doc.heading('Perturbation recovery (Fig. 4)')
    doc.paragraph(
        f"Successful C&W images whose clean prediction was correct "
        f"({rec['num_images'] if rec else 0}); the top p % pixels of each method's map for the "
        f"adversarial prediction (equal values in random order) or of a random ranking become "
        f"the fill `{config['recovery_fill']}`: {FILL_NOTES[config['recovery_fill']]}. "
        'Accuracy is with respect to the true label.')
    if rec:
      grid = rec['grid']
      if len(grid) > 1:
        doc.paragraph(
            f"At p = {grid[1]:g} % the random ranking already restores "
            f"{rec['curves']['random']['mean'][1]:.3f} of the true labels: C&W's minimal "
            'perturbations (kappa 0) sit just across the decision boundary, so any change can '
            'undo them; a method helps only by beating the random curve.')
      rows = [(SHORT.get(n, n), report.with_ci(rec['auc'][n]),
               *[c['mean'][j] for j in range(len(grid))]) for n, c in rec['curves'].items()]
      doc.lines(report.table(('ranking', 'mean over p [95 % CI]',
                              *[f'p={p:g} %' for p in grid]), rows))
  fvs = s.get('failed_vs_successful')
  if fvs:
    doc.heading('Failed vs successful attacks (Fig. 5)')
    doc.paragraph(
        f"Adv_f: the prediction did not change; Adv_s: it did. `spearman`: adversarial map vs "
        f"clean map; `adv_delta_share`: share of sum_c |x_adv - x| on the map's top "
        f"{config['overlap_percent']:g} % pixels (equal map values in random order), chance "
        f"level {config['overlap_percent'] / 100:.2f} for a map unrelated to the perturbation. "
        'A share of |delta| rather than an overlap with its top pixels: FGSM\'s and BIM\'s '
        '|delta| equal the budget on most pixels, so their top pixels would be an arbitrary '
        'pick; FGSM\'s share is therefore close to chance for any map. Two-sided '
        f"Mann-Whitney U (r: rank-biserial, negative = Adv_s lower), when each group has >= "
        f'{MIN_GROUP} images.')
    rows = []
    for g, by_method in fvs.items():
      for m, stats in by_method.items():
        for stat, cell in stats.items():
          mw = cell['mann_whitney'] or {}
          rows.append((study.ATTACK_LABELS.get(g, g), SHORT[m], stat,
                       report.with_ci(cell['failed']), (cell['failed'] or {}).get('n', 0),
                       report.with_ci(cell['success']), (cell['success'] or {}).get('n', 0),
                       f"{mw['pvalue']:.2g}" if mw else None, mw.get('rank_biserial')))
    doc.lines(report.table(('attack', 'map', 'statistic', 'Adv_f', 'n_f', 'Adv_s', 'n_s', 'p',
                            'r'), rows))
  doc.heading('Run')
  doc.paragraph('Compute time per stage (compilation included): ' + ', '.join(
      f'{k} {v:.1f} s' for k, v in s['compute_seconds'].items()) + '. Method settings: ' +
      '; '.join(f'{m}: {kw}' for m, kw in config['method_kwargs'].items()) + '.')
  for f in figures:
    doc.figure(f)
  return doc.text()


def _histograms(panels: Mapping[str, Mapping[str, np.ndarray]], path: pathlib.Path, *,
                xlabel: str, bins: np.ndarray):
  """One panel per entry, one step histogram per series (finite values, shared ``bins``)."""
  from advsal_jax.studies import figures  # pylint: disable=g-import-not-at-top (matplotlib)
  plt = figures.plt
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
  for ax, (title, series) in zip(axes[0], panels.items()):
    for name, values in series.items():
      values = np.asarray(values, float)
      ax.hist(values[np.isfinite(values)], bins=bins, histtype='step', linewidth=1.5, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel('pairs')
  axes[0, -1].legend(fontsize=8)
  store.write_png(path, fig)
  plt.close(fig)


def _pick(success: np.ndarray, count: int) -> np.ndarray:
  """Rows with a failed and a successful attack first, then the others (Fig. 5)."""
  mixed = success.any(1) & ~success.all(1)
  return np.concatenate([np.flatnonzero(mixed), np.flatnonzero(~mixed)])[:count]


def _figures(out: pathlib.Path, res: Results, s: Mapping[str, Any], config: Mapping[str, Any],
             *, data_dir: str | None, model_and_variables) -> list[str]:
  from advsal_jax.studies import figures  # pylint: disable=g-import-not-at-top (matplotlib)
  written = []
  if 'pairs' in res:
    for name, stat, label in (('figure1a_sim_ratio.png', 'sim_ratio', 'Sim-Ratio'),
                              ('figure1b_avg_diff.png', 'avg_diff', 'Avg-Diff')):
      controls = {} if stat != 'sim_ratio' else {
          'Gradient (control)': res['pairs']['gradient_sim_ratio'],
          'chance (control)': res['pairs']['chance_sim_ratio']}
      _histograms({f'{label} of map pairs': {'GBP': res['pairs'][f'gbp_{stat}'],
                                             'Enhanced GBP': res['pairs'][f'egbp_{stat}'],
                                             **controls}},
                  out / name, xlabel=label, bins=np.linspace(0, 1, 41))
      written.append(name)
  rec = s.get('recovery')
  if rec:
    curves = {n: np.array([c['mean'], c['ci_low'], c['ci_high']])
              for n, c in rec['curves'].items() if n != 'random'}
    title = f"C&W, fill {config['recovery_fill']} (n={rec['num_images']})"
    figures.curves(rec['grid'], {title: {SHORT[n]: v for n, v in curves.items()}},
                   out / 'figure4_recovery.png', xlabel='pixels perturbed (%)',
                   ylabel='accuracy (true label)',
                   baseline={title: np.array([rec['curves']['random'][k] for k in
                                              ('mean', 'ci_low', 'ci_high')])})
    written.append('figure4_recovery.png')
  fvs = s.get('failed_vs_successful')
  if fvs:
    groups = [*study.ATTACKS, 'all']
    panels = {f'{SHORT[m]} {stat}': {
        split_label: np.array([(fvs[g][m][stat][split] or {'mean': np.nan})['mean']
                               for g in groups])
        for split, split_label in (('failed', 'Adv_f'), ('success', 'Adv_s'))}
              for m in (study.GBP, study.EGBP) for stat in SHIFT_STATS}
    figures.grouped_bars([study.ATTACK_LABELS.get(g, g) for g in groups], panels,
                         out / 'figure5_statistics.png', xlabel='attack')
    written.append('figure5_statistics.png')
  if 'maps' not in res:
    return sorted(written)
  cfg = runner.config_from_json(study.Config, config)
  model, variables = model_and_variables or checkpoints.load(cfg.checkpoint)[:2]
  test = data.load(config['dataset'], 'test', data_dir=data_dir)
  a = res['attacks']
  rows = _pick(a['success'], 2)
  idx = a['index'][rows]
  maps_fn = compilation.jit(lambda p, x, xa, cp, ap, i: study.example_maps(
      model.apply, p, x, xa, cp, ap, i, cfg=cfg, layer=config['cam_layer']))
  ex = jax.device_get(maps_fn(variables, jnp.asarray(data.to_float(test.images[idx])),
                              jnp.asarray(a['x_adv'][rows]), jnp.asarray(a['clean_pred'][rows]),
                              jnp.asarray(a['adv_pred'][rows]), jnp.asarray(idx, jnp.int32)))
  names = config['class_names']
  images = np.concatenate([data.to_float(test.images[idx])[:, None], a['x_adv'][rows]], 1)
  images = images.reshape(-1, *images.shape[2:])
  preds = np.concatenate([a['clean_pred'][rows][:, None], a['adv_pred'][rows]], 1)
  titles = []
  for j, i in enumerate(idx):
    titles.append(f'#{i} clean\npred {names[preds[j, 0]]}')
    for k, att in enumerate(study.ATTACKS):
      outcome = 'success' if a['success'][rows[j], k] else 'failed'
      titles.append(f'{study.ATTACK_LABELS[att]} {outcome}\npred {names[preds[j, k + 1]]}')
  flat = {SHORT[m]: ex[m].reshape(-1, *ex[m].shape[2:]) for m in cfg.methods}
  figures.image_grid(images, titles, flat, out / 'figure3_maps.png')
  figures.image_grid(images, titles, {k: flat[k] for k in ('GBP', 'EGBP') if k in flat},
                     out / 'figure5_maps.png')
  return sorted(written + ['figure3_maps.png', 'figure5_maps.png'])


def finalize(output_dir: store.PathLike, *, data_dir: str | None = None,
             model_and_variables: tuple[Any, Any] | None = None) -> pathlib.Path:
  """Writes per-example CSVs and npz, ``summary.json``, the figures and ``report.md``.

  Args:
    output_dir: a finished ``explain_adversarial.run``'s directory.
    data_dir: as in ``run``.
    model_and_variables: the run's checkpoint, already loaded; default loads it (a
      multi-process run must pass it: orbax loads collectively and only process 0 finalizes).

  Returns:
    The path of ``report.md``.
  """
  out = pathlib.Path(output_dir)
  config = store.read_json(out / 'config.json')
  res = study.load_results(out)
  store.write_npz(out / 'per_example.npz', {
      f'{stage}/{k}': v for stage, r in res.items() for k, v in r.items()
      if k not in ('x_adv', 'seconds')})
  for name, table in tables(res, config).items():
    store.write_csv(out / f'per_example_{name}.csv', _rows(table))
  s = summarize(res, config)
  store.write_json(out / 'summary.json', s)
  shown = _figures(out, res, s, config, data_dir=data_dir,
                   model_and_variables=model_and_variables)
  store.write_text(out / 'report.md', report_markdown(s, config, figures=shown))
  return out / 'report.md'
