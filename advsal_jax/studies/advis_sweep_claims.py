"""Study 002's verdicts: each statement of the AdVis paper against our numbers.

A difference counts only when the 95 % bootstrap CIs of the two means do not overlap; a
correlation counts only when its CI excludes 0.
"""

from typing import Callable

from advsal_jax.studies import report


# Perturbation energy in the border band must exceed the band's share of pixels by this
# factor to count as gravitating there (a uniform perturbation has exactly that share).
_GRAVITATE = 1.1


def _key(e: float) -> str:
  return f'{e:g}'


def _above(a: dict | None, b: dict | None) -> bool:
  """``a``'s CI lies entirely above ``b``'s."""
  return bool(a and b and a['ci_low'] > b['ci_high'])


def _m(stats: dict | None, spec: str = '.2f') -> str:
  return report.fmt(None if not stats else stats['mean'], spec)


def _eps_list(keys: list[str]) -> str:
  return f'eps {", ".join(keys)} /255' if keys else 'no eps'


def _per_model(models, check: Callable[[str], bool]) -> tuple[int, list[str]]:
  ok = [s for s in models if check(s)]
  return len(ok), ok


def claims(summary: dict, config: dict) -> list[report.Claim]:
  """The paper's statements with our numbers and verdicts."""
  models, eps = config['models'], config['eps']
  first, last = _key(eps[0]), _key(eps[-1])
  sweep = summary['sweep']
  succ = summary['success']
  out = []

  def grows(metric: str) -> Callable[[str], bool]:
    return lambda s: _above(sweep[s][last][metric]['all'], sweep[s][first][metric]['all'])

  n, ok = _per_model(models, lambda s: grows('cam_shift')(s) and _above(
      sweep[s][last]['cam_area']['all'], summary['cam_area_clean'][s]))
  out.append(report.Claim(
      'As eps grows, the CAM region of the predicted class grows and shifts (Sec. 1).',
      'qualitative (figure)',
      '; '.join(f"{s}: area {_m(summary['cam_area_clean'][s])} clean -> "
                f"{_m(sweep[s][last]['cam_area']['all'])} at eps {last}, shift "
                f"{_m(sweep[s][first]['cam_shift']['all'], '.1f')} -> "
                f"{_m(sweep[s][last]['cam_shift']['all'], '.1f')} px" for s in models),
      report.count_verdict(n, len(models)),
      f'area and shift both grow (CIs apart) on {ok or "no model"}'))

  n, ok = _per_model(models, grows('diff_l1'))
  out.append(report.Claim(
      'The GBVS saliency difference (adv - clean) grows with eps (Sec. 2).',
      'qualitative (figure)',
      '; '.join(f"{s}: L1 {_m(sweep[s][first]['diff_l1']['all'], '.3f')} at eps {first} -> "
                f"{_m(sweep[s][last]['diff_l1']['all'], '.3f')} at eps {last}"
                for s in models),
      report.count_verdict(n, len(models)), f'CIs apart on {ok or "no model"}'))

  cells = [(s, _key(e)) for s in models for e in eps if e > 0]
  good = [(s, k) for s, k in cells
          if sweep[s][k]['logratio_cam_spearman']['all']
          and sweep[s][k]['logratio_cam_spearman']['all']['ci_low'] > 0
          and _above(sweep[s][k]['logratio_cam_spearman']['all'],
                     sweep[s][k]['logratio_control_spearman']['all'])]
  out.append(report.Claim(
      'The log-ratio saliency difference correlates with CAM (Sec. 2, "a novel correlation").',
      'stated, no number',
      '; '.join(f"{s}: rho {_m(sweep[s][last]['logratio_cam_spearman']['all'])} at eps "
                f"{last} (control with another image's CAM "
                f"{_m(sweep[s][last]['logratio_control_spearman']['all'])})" for s in models),
      report.count_verdict(len(good), len(cells)),
      f'{len(good)} of {len(cells)} (model, eps) cells have a CI above 0 and above the '
      'control'))

  if len(models) >= 2:
    v1, v2 = models[:2]
    larger = [_key(e) for e in eps if _above(sweep[v2][_key(e)]['diff_l1']['all'],
                                              sweep[v1][_key(e)]['diff_l1']['all'])]
    weaker = [_key(e) for e in eps if _above(succ[v1][_key(e)][v1], succ[v2][_key(e)][v2])]
    passed = (len(larger) > len(eps) / 2) + (len(weaker) > len(eps) / 2)
    out.append(report.Claim(
        f'Attacks on V2 ({v2}) give a larger saliency difference than on V1 ({v1}) despite '
        'lower success (Sec. 3).', 'qualitative (figure)',
        f'V2 GBVS difference larger (CIs apart) at {_eps_list(larger)}; V2 success lower at '
        f'{_eps_list(weaker)} (of {len(eps)} eps)',
        report.count_verdict(passed, 2), 'each half must hold at most eps'))

  pairs = [(s, t) for s in models for t in models if s != t]
  if pairs:
    def black(k):
      vals = [succ[s][k][t]['mean'] for s, t in pairs if succ[s][k][t]]
      return sum(vals) / len(vals) if vals else float('nan')

    def white(k):
      vals = [succ[s][k][s]['mean'] for s in models if succ[s][k][s]]
      return sum(vals) / len(vals) if vals else float('nan')

    poor = black(first) < 0.5 * white(first)
    rises = black(last) >= 2 * black(first)
    out.append(report.Claim(
        'FGSM transfers poorly to another architecture until eps is large (transferability '
        'table).', 'V2 keeps "giant panda" on top up to eps 10 for V1-made images',
        f'black-box success {black(first):.2f} vs white-box {white(first):.2f} at eps '
        f'{first}; black-box {black(last):.2f} (white-box {white(last):.2f}) at eps {last}',
        report.count_verdict(poor + rises, 2),
        'poor: black-box < half the white-box at the smallest eps; until large: black-box '
        'at least doubles by the largest eps'))

  band = summary['band_share']
  n, ok = _per_model(models, lambda s: all(
      sweep[s][_key(e)]['border_delta_share']['all']
      and sweep[s][_key(e)]['border_delta_share']['all']['ci_low'] > _GRAVITATE * band
      for e in eps if e > 0))
  out.append(report.Claim(
      'FGSM perturbations gravitate towards the image borders (Sec. 4).', 'speculated',
      f"border band holds {band:.3f} of the pixels; it holds "
      + '; '.join(f"{s}: {_m(sweep[s][last]['border_delta_share']['all'], '.3f')} of the "
                  f"perturbation's energy at eps {last} and "
                  f"{_m(summary['border_grad_share'][s], '.3f')} of the loss gradient's"
                  for s in models),
      report.count_verdict(n, len(models)),
      f'towards the borders: at least {_GRAVITATE:g} times the band\'s pixel share (CI); '
      "an L-inf sign step moves every pixel by eps (bar clipping at 0 and 1), so its energy "
      'is spread evenly by construction; the loss gradient shows where the model looks'))

  k = _key(config['compare_eps'])
  crop = summary['success_crop']
  changed = [(s, t) for s in models for t in models
             if _above(crop[s][k][t], succ[s][k][t]) or _above(succ[s][k][t], crop[s][k][t])]
  total = len(models) ** 2
  out.append(report.Claim(
      'Upscaling and centre-cropping changes the attack\'s outcome (Sec. 4).',
      'MobileNet results after the crop "highly sensitive"',
      f'at eps {k}: success changes (CIs apart) for {len(changed)} of {total} (attack, '
      'classifier) pairs; clean accuracy ' + '; '.join(
          f"{t} {_m(summary['clean_accuracy'][t])} -> "
          f"{_m(summary['clean_crop_accuracy'][t])} after the crop" for t in models),
      report.count_verdict(len(changed), total),
      'the crop also changes clean accuracy, which the success rate conditions on'))

  df = summary['deepfool']
  inverted = [s for s in models if df[s]['overlap_diff_spearman']['all']
              and df[s]['overlap_diff_spearman']['all']['ci_high'] < 0]
  out.append(report.Claim(
      "DeepFool's salient region is an inverted version of FGSM's (Sec. 5).",
      'qualitative (figs. 3 vs 4)',
      '; '.join(f"{s}: Spearman of the GBVS differences "
                f"{report.with_ci(df[s]['overlap_diff_spearman']['all'], '.2f')}, of |delta| "
                f"{report.with_ci(df[s]['overlap_delta_spearman']['all'], '.2f')}"
                for s in models),
      report.count_verdict(len(inverted), len(models)),
      'inverted: a negative correlation of the two GBVS differences (CI below 0)'))
  as_good = [s for s in models if df[s]['success'] and df[s]['fgsm_success']
             and df[s]['success']['ci_high'] >= df[s]['fgsm_success']['ci_low']]
  out.append(report.Claim(
      'DeepFool is just as effective as FGSM (Sec. 5).', 'stated',
      '; '.join(f"{s}: {_m(df[s]['success'])} vs FGSM {_m(df[s]['fgsm_success'])} at eps {k}"
                for s in models),
      report.count_verdict(len(as_good), len(models)),
      'as effective: DeepFool success not below FGSM\'s (CIs)'))
  return out
