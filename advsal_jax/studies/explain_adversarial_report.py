"""Study 001's report: ``finalize`` writes every output of a finished run.

Per-example CSVs and npz, ``summary.json`` (``explain_adversarial_summary``: aggregates with
bootstrap CIs and the claims of ``explain_adversarial_claims``), the figures
(``explain_adversarial_figures``) and ``report.md``; ``headline`` gives the results index its
rows.
"""

import pathlib
from typing import Any, Mapping

import numpy as np

from advsal_jax.studies import explain_adversarial as study
from advsal_jax.studies import explain_adversarial_claims as study_claims
from advsal_jax.studies import explain_adversarial_config as settings
from advsal_jax.studies import explain_adversarial_summary as study_summary
from advsal_jax.studies import report
from advsal_jax.studies import store

def _rows(table: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
  names = list(table)
  return [dict(zip(names, values)) for values in zip(*(table[c].tolist() for c in names))]


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
  if cva and settings.EGBP in config['methods']:
    st = cva['cw'][settings.EGBP]['spearman']['success']
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
    'blur': (f'a Gaussian blur (sigma {settings.BLUR_SIGMA} px) of the adversarial image: it keeps '
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


def _class_discriminative_section(doc: report.Markdown, cd: Mapping[str, Any],
                                  config: Mapping[str, Any]):
  """Fig. 1's statistics, and the margin test of EGBP's class separation with its evidence."""
  doc.heading('Class-discriminative information (Fig. 1)')
  doc.paragraph(
      f"The paper pairs the maps of the ground-truth classes of multi-label VOC images; "
      f"{config['dataset']} is single-label, so we pair the maps of the top "
      f"{config['pair_classes']} predicted classes of each image (all "
      f"{len(settings.class_pairs(config['pair_classes']))} pairs, {cd['num_pairs']} in all).")
  rows = [(name.upper(), stat, st['mean'], report.with_ci(st), st['min'], st['q05'],
           st['median'], st['q95'], st['max'])
          for name in ('gbp', 'egbp') for stat in study_summary.PAIR_STATS
          for st in [cd[name][stat]]]
  rows += [(f'{name} (control)', 'sim_ratio', st['mean'], report.with_ci(st), st['min'],
            st['q05'], st['median'], st['q95'], st['max'])
           for name, st in cd['controls'].items()]
  doc.lines(report.table(('map', 'statistic', 'mean', '95 % CI', 'min', '5 %', 'median',
                          '95 %', 'max'), rows))
  doc.paragraph(
      f"GBP's attributions are positive on {report.with_ci(cd['gbp_on_fraction'])} of "
      "(pixel, channel) entries; chance is the agreement of two independent masks with the two "
      f"maps' on-fractions. Margin test: the top {config['overlap_percent']:g} % pixels of "
      'EGBP(k vs m), of GBP(k), of a random ranking and of EGBP(m vs k) (equal values in random '
      "order) take the dataset's mean colour; the drop of logit_k - logit_m (k the "
      'higher-ranked class), and its first-order estimate, the sum over the deleted pixels of '
      '(x - fill) . grad(logit_k - logit_m) (plain gradient of the clean image):')
  doc.lines(report.table(
      ('ranking', 'margin drop [95 % CI]', 'first-order estimate [95 % CI]'),
      [(settings.SHORT[d], report.with_ci(cd['margin_drop'][d]),
        report.with_ci(cd['first_order_drop'][d])) for d in settings.DELETIONS]))
  ent = cd['egbp_entries']
  doc.paragraph(
      'EGBP is the map the paper defines (`saliency.enhanced_guided_backprop`: the Guided '
      'Backprop maps of k and m, each channel divided by its energy sum_{h,w} |s_c|, then '
      'max(0, s_k - s_m)), of the clean image. On its positive (pixel, channel) entries among '
      'its top pixels the margin gradient is positive in '
      f"{report.with_ci(ent['egbp_gradient_agreement'])} of cases (all entries of the image: "
      f"{report.with_ci(ent['gradient_positive_share'])}) and the pixel is darker than the "
      f"mean colour in {report.with_ci(ent['egbp_below_fill'])} (image: "
      f"{report.with_ci(ent['below_fill_share'])}). Deleting sets a pixel to the mean colour, "
      'which to first order changes the margin by (fill - x) . grad: an entry with a positive '
      'gradient on a pixel darker than the fill gains intensity, and the margin rises. A '
      'gradient-type map ranks by sensitivity and ignores on which side of the fill a pixel '
      'lies; the first-order column shows how much of each ranking\'s drop that accounts for.')


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
    _class_discriminative_section(doc, cd, config)
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
    for att in settings.ATTACKS:
      for m in config['methods']:
        cell = cva[att][m]
        rows.append((settings.ATTACK_LABELS[att], m, *[
            f"{report.with_ci(cell[k]['success'])} "
            f"({report.fmt((cell[k]['all'] or {}).get('mean'))})" for k in settings.MAP_METRICS]))
    doc.lines(report.table(('attack', 'method', *settings.MAP_METRICS), rows))
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
          [(settings.ATTACK_LABELS[att], *[report.with_ci(c[k]) for k in (
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
      rows = [(settings.SHORT.get(n, n), report.with_ci(rec['auc'][n]),
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
        f'{study_claims.MIN_GROUP} images.')
    rows = []
    for g, by_method in fvs.items():
      for m, stats in by_method.items():
        for stat, cell in stats.items():
          mw = cell['mann_whitney'] or {}
          rows.append((settings.ATTACK_LABELS.get(g, g), settings.SHORT[m], stat,
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
  for name, table in study_summary.tables(res, config).items():
    store.write_csv(out / f'per_example_{name}.csv', _rows(table))
  s = study_summary.summarize(res, config)
  store.write_json(out / 'summary.json', s)
  # pylint: disable-next=g-import-not-at-top (matplotlib, only when writing figures)
  from advsal_jax.studies import explain_adversarial_figures as study_figures
  shown = study_figures.write_figures(out, res, s, config, data_dir=data_dir,
                                     model_and_variables=model_and_variables)
  store.write_text(out / 'report.md', report_markdown(s, config, figures=shown))
  return out / 'report.md'
