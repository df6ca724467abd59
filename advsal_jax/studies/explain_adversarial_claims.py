"""Study 001's claims: each claim of the paper with our number and a verdict by a stated rule.

Verdicts are 'holds', 'partly holds', 'does not hold' or 'cannot be tested' (with why); each
claim's text states its rule. ``claims`` reads the summary ``explain_adversarial_summary``
builds.

Reference: Gu & Tresp, Saliency Methods for Explaining Adversarial Attacks, arXiv:1908.08413.
"""

from typing import Any, Mapping

from advsal_jax.studies import explain_adversarial_config as settings
from advsal_jax.studies import report

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
    out.append(_separation_claim(cd, config))
  else:
    out += [report.Claim(text, ref, 'n/a', 'cannot be tested', untested) for text, ref in (
        ('GBP Sim-Ratios are close to 1.', 'Fig. 1a'),
        ('GBP Avg-Diff spreads over 0-0.8.', 'Fig. 1b'),
        ('Enhanced GBP separates the classes.', 'Sec. 2.2'))]
  out.append(_reacts_claim(s, config))
  out.append(_recovery_claim(s, config))
  out += _failed_claims(s)
  return out


def _separation_claim(cd: Mapping[str, Any], config: Mapping[str, Any]) -> report.Claim:
  """EGBP separates the classes, tested by deleting its top pixels (the margin test).

  When EGBP loses to random, the why says whether the map still points the right way (its
  positive entries share the margin gradient's sign more often than the image's entries do)
  and how it can: to first order, deleting a pixel lowers the margin by
  ``(x - fill) . grad``, so entries darker than the fill raise the margin when deleted.
  """
  md, dd, fo = cd['margin_drop'], cd['egbp_minus_margin_drop'], cd['first_order_drop']
  ent, ent_d = cd['egbp_entries'], cd['egbp_entries_minus_image']
  beats = [bool(dd[d] and dd[d]['ci_low'] > 0) for d in ('gbp', 'random')]
  pct = f"{config['overlap_percent']:g} %"
  why = ('' if all(beats) else 'EGBP beats ' + (' but not '.join(
      ['GBP', 'random'] if beats[0] else ['random', 'GBP'])) if any(beats)
         else "deleting EGBP's pixels lowers the margin no more than GBP's or random ones")
  points_right = bool(ent_d['gradient_agreement'] and ent_d['gradient_agreement']['ci_low'] > 0)
  below_random = bool(fo['egbp'] and fo['random'] and
                      fo['egbp']['ci_high'] < fo['random']['ci_low'])
  if not beats[1] and points_right and below_random:
    why += (
        '. A property of the map on our model, not a sign or class error: its positive '
        "entries on its top pixels have a positive margin gradient in "
        f"{_ci(ent['egbp_gradient_agreement'])} of cases (all entries of the image "
        f"{_ci(ent['gradient_positive_share'])}), so it marks where more intensity raises "
        f"logit_k - logit_m; but {_ci(ent['egbp_below_fill'])} of them are darker than the "
        f"mean colour (image {_ci(ent['below_fill_share'])}), where deleting raises the pixel "
        f"and with it the margin: to first order its top pixels lower the margin by "
        f"{_ci(fo['egbp'])}, random ones by {_ci(fo['random'])}. A gradient-type map says "
        "where more of a pixel helps k, not whether the pixel's content does")
  return report.Claim(
      'Enhanced GBP separates the classes: EGBP(k vs m) marks the pixels behind '
      f'logit_k - logit_m (rule: deleting its top {pct} pixels lowers the margin more than '
      f"deleting GBP(k)'s or random top {pct}, paired CIs above 0). Its two maps' lower "
      'Sim-Ratio and Spearman hold by construction (max(0, n_k - n_m) and max(0, n_m - n_k) '
      'have disjoint supports per channel), so they are not the test.',
      'Sec. 2.2, Fig. 2 (qualitative)',
      f"margin drop EGBP {_ci(md['egbp'])}, GBP {_ci(md['gbp'])}, random "
      f"{_ci(md['random'])}, EGBP(m vs k) {_ci(md['egbp_swapped'])}; EGBP minus GBP "
      f"{_ci(dd['gbp'])}, minus random {_ci(dd['random'])} (by construction: Sim-Ratio EGBP "
      f"{_ci(cd['egbp']['sim_ratio'])} vs GBP {_ci(cd['gbp']['sim_ratio'])})",
      report.count_verdict(sum(beats), 2), why)


def _reacts_claim(s: Mapping[str, Any], config: Mapping[str, Any]) -> report.Claim:
  text = ('Only Enhanced GBP reacts strongly to adversarial changes; other maps stay similar '
          '(rule: on successful attacks, EGBP has the lowest Spearman and mean SSIM, CI '
          'below every other method\'s, per attack; only partly if, on some attack, the '
          "adversarial EGBP map is closer to the control, the clean image's EGBP map for the "
          'adversarial against the clean class, than to the clean map: paired CI above 0).')
  cva = s.get('clean_vs_adversarial')
  if not cva or settings.EGBP not in config['methods'] or len(config['methods']) < 2:
    return report.Claim(text, 'Fig. 3 (qualitative)', 'n/a', 'cannot be tested',
                        'needs clean_vs_adversarial with EGBP and another method')
  hits, cells, parts = 0, 0, []
  for att in settings.ATTACKS:
    for metric in ('spearman', 'mean_ssim'):
      e = cva[att][settings.EGBP][metric]['success']
      others = [cva[att][m][metric]['success'] for m in config['methods'] if m != settings.EGBP]
      if not e or not all(others):
        continue
      cells += 1
      hits += e['ci_high'] < min(o['ci_low'] for o in others)
    sp = {m: (cva[att][m]['spearman']['success'] or {}).get('mean') for m in config['methods']}
    parts.append(f"{settings.ATTACK_LABELS[att]}: EGBP {report.fmt(sp[settings.EGBP], '.2f')}, "
                 'others ' + ', '.join(f"{settings.SHORT[m]} {report.fmt(v, '.2f')}"
                                        for m, v in sp.items() if m != settings.EGBP))
  if not cells:
    return report.Claim(text, 'Fig. 3 (qualitative)', 'n/a', 'cannot be tested',
                        'no attack succeeded on two or more images')
  verdict, why = report.count_verdict(hits, cells), ''
  ctl = s.get('egbp_swapped_control') or {}
  swap = [att for att in settings.ATTACKS
          if (ctl.get(att, {}).get('swapped_minus_clean_spearman') or {}).get('ci_low', -1) > 0]
  ctl_text = '; '.join(
      f"{settings.ATTACK_LABELS[att]} {report.fmt(c['adv_vs_swapped_spearman']['mean'], '.2f')}"
      for att, c in ctl.items() if c['adv_vs_swapped_spearman'])
  if swap and hits:
    verdict = 'partly holds'
    why = ('much of the reaction is the class swap: on ' + ', '.join(
        settings.ATTACK_LABELS[a] for a in swap) + " the adversarial EGBP map is closer to the "
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
  auc = ', '.join(f"{settings.SHORT[n]} {st['mean']:.3f}" for n, st in rec['auc'].items())
  verdict = ('holds' if diff['ci_low'] > 0 else 'partly holds' if diff['mean'] > 0
             else 'does not hold')
  return report.Claim(
      text, 'Fig. 4: EGBP curve highest',
      f"mean accuracy over p ({rec['num_images']} images, fill {config['recovery_fill']}): "
      f"{auc}; EGBP - {settings.SHORT[diff['other']]} {_ci(diff)}", verdict,
      'EGBP is ahead but the CI of the difference includes 0' if verdict == 'partly holds'
      else '')


def _failed_claims(s: Mapping[str, Any]) -> list[report.Claim]:
  fvs = s.get('failed_vs_successful')
  texts = {
      settings.EGBP: ('Enhanced GBP maps of successful attacks (Adv_s) depart from the clean map '
                   'towards the perturbation, those of failed ones (Adv_f) do not (rule, per '
                   f'attack with >= {MIN_GROUP} of each: Spearman to the clean map lower for '
                   'Adv_s and, except on FGSM, whose |delta| is the budget almost everywhere, '
                   'a higher share of |delta| on the top pixels, each Mann-Whitney p < '
                   f'{ALPHA}).'),
      settings.GBP: ('GBP maps look alike for Adv_f and Adv_s (rule, per attack with >= '
                  f'{MIN_ALIKE_GROUP} of each: Spearman to the clean map with rank-biserial '
                  f'|r| < {ALIKE_R} and its 95 % CI inside (-{2 * ALIKE_R:g}, '
                  f'{2 * ALIKE_R:g})).')}
  out = []
  for method, text in texts.items():
    if not fvs:
      out.append(report.Claim(text, 'Fig. 5 (qualitative)', 'n/a', 'cannot be tested',
                              'failed_vs_successful was not run'))
      continue
    need = MIN_GROUP if method == settings.EGBP else MIN_ALIKE_GROUP
    tested, hits, parts = 0, 0, []
    for att in settings.ATTACKS:
      cell = fvs[att][method]
      mw = cell['spearman']['mann_whitney']
      f, ok = cell['spearman']['failed'], cell['spearman']['success']
      if mw is None or min(f['n'], ok['n']) < need:
        continue
      tested += 1
      if method == settings.EGBP:
        sh = cell['adv_delta_share']['mann_whitney']
        lower = mw['pvalue'] < ALPHA and mw['rank_biserial'] < 0
        toward = att == 'fgsm' or bool(sh and sh['pvalue'] < ALPHA and sh['rank_biserial'] > 0)
        hits += lower and toward
        share = cell['adv_delta_share']
        parts.append(
            f"{settings.ATTACK_LABELS[att]}: Spearman Adv_f {f['mean']:.3f} (n {f['n']}) vs Adv_s "
            f"{ok['mean']:.3f} (n {ok['n']}), p {mw['pvalue']:.2g}; |delta| share Adv_f "
            f"{report.fmt((share['failed'] or {}).get('mean'))} vs Adv_s "
            f"{report.fmt((share['success'] or {}).get('mean'))}"
            + (f", p {sh['pvalue']:.2g}" if sh else ''))
      else:
        r, (low, high) = mw['rank_biserial'], mw['rank_biserial_ci']
        hits += abs(r) < ALIKE_R and -2 * ALIKE_R < low and high < 2 * ALIKE_R
        parts.append(f"{settings.ATTACK_LABELS[att]}: Adv_f {f['mean']:.3f} (n {f['n']}) vs "
                     f"Adv_s {ok['mean']:.3f} (n {ok['n']}), r {r:.2f} [{low:.2f}, {high:.2f}]")
    if not tested:
      out.append(report.Claim(text, 'Fig. 5 (qualitative)', 'n/a', 'cannot be tested',
                              f'no attack had >= {need} failed and successful images'))
    else:
      out.append(report.Claim(text, 'Fig. 5 (qualitative)', '; '.join(parts),
                              report.count_verdict(hits, tested)))
  return out
