"""Study 003's outputs: the shift experiment's tables, summary and figures, and the report.

Reads only the run's shards and ``config.json``: neither the models nor the data are loaded.

Table 1's samples: the natural-vs-adversarial L2 distances of the images the classifier got
right and the attack fooled (an adversarial example), against the different-images distances
of every image; the Mann-Whitney U test compares the two samples.
"""

import pathlib
from typing import Any

import numpy as np

from advsal_jax import metrics
from advsal_jax.studies import detect_adversarial as study
from advsal_jax.studies import detect_adversarial_claims
from advsal_jax.studies import detect_adversarial_detection_report as detection_report
from advsal_jax.studies import figures
from advsal_jax.studies import report
from advsal_jax.studies import store
from advsal_jax.studies import summary as summary_lib

SIZES = ('l0', 'l2', 'linf')
ATTACK_TITLES = {'fgsm': 'FGSM', 'bim': 'BIM', 'mim': 'MIM', 'carlini_wagner_l2': 'C&W L2',
                 'jsma': 'JSMA', 'deepfool': 'DeepFool'}


def outcomes(res: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """``clean_correct`` bool[B]; ``success`` bool[B,A]: right before the attack, wrong after."""
  label = res['label']
  clean_correct = res['clean_pred'] == label
  return {'clean_correct': clean_correct,
          'success': clean_correct[:, None] & (res['adv_pred'] != label[:, None])}


def per_example_rows(res: dict[str, np.ndarray], config: dict) -> list[dict[str, Any]]:
  """One row per (image, attack): predictions, outcome, map distances, perturbation sizes."""
  o = outcomes(res)
  rows = []
  for b, index in enumerate(res['index']):
    for a, name in enumerate(config['attacks']):
      rows.append({
          'index': int(index), 'label': int(res['label'][b]), 'attack': name,
          'target': int(res['jsma_target'][b]) if name == 'jsma' else '',
          'partner': int(res['partner'][b]), 'clean_pred': int(res['clean_pred'][b]),
          'adv_pred': int(res['adv_pred'][b, a]), 'success': bool(o['success'][b, a]),
          **{f'{k}_l2': float(res[f'{k}_l2'][b, a]) for k in study.MAP_KINDS},
          **{f'{k}_l2_different': float(res[f'{k}_l2_different'][b])
             for k in study.MAP_KINDS},
          **{s: float(res[s][b, a]) for s in SIZES}})
  return rows


def mann_whitney(x: np.ndarray, y: np.ndarray) -> dict[str, float] | None:
  """``metrics.mann_whitney_u`` of the finite values as a dict (None if a sample is empty)."""
  x, y = x[np.isfinite(x)], y[np.isfinite(y)]
  if not len(x) or not len(y):
    return None
  r = metrics.mann_whitney_u(x, y)
  return {'u': r.statistic, 'pvalue': r.pvalue, 'rank_biserial': r.rank_biserial,
          'n_x': int(len(x)), 'n_y': int(len(y))}


def summarize(res: dict[str, np.ndarray], config: dict) -> dict[str, Any]:
  """Every aggregate of the report, with bootstrap CIs (``summary.describe``)."""
  seed = config['seed']
  o = outcomes(res)
  out: dict[str, Any] = {
      'num_images': int(len(res['index'])),
      'clean_accuracy': summary_lib.describe(o['clean_correct'], seed=seed),
      'different': {k: summary_lib.describe(res[f'{k}_l2_different'], seed=seed)
                    for k in study.MAP_KINDS},
      'attacks': {}}
  for a, name in enumerate(config['attacks']):
    ok = o['success'][:, a]
    entry: dict[str, Any] = {
        'success': summary_lib.describe(ok[o['clean_correct']], seed=seed)}
    for k in study.MAP_KINDS:
      shift = res[f'{k}_l2'][:, a]
      entry[k] = {'adversarial': summary_lib.describe(shift[ok], seed=seed),
                  'all': summary_lib.describe(shift, seed=seed),
                  'mann_whitney': mann_whitney(shift[ok], res[f'{k}_l2_different'])}
    entry['sizes'] = {s: summary_lib.describe(res[s][:, a][ok], seed=seed) for s in SIZES}
    out['attacks'][name] = entry
  return out


def _minmax(maps: np.ndarray) -> np.ndarray:
  lo = maps.min(axis=(-2, -1), keepdims=True)
  hi = maps.max(axis=(-2, -1), keepdims=True)
  return (maps - lo) / np.where(hi > lo, hi - lo, 1)


def write_figures(out: pathlib.Path, maps: dict, summary: dict,
                  config: dict) -> list[tuple[str, str]]:
  """Writes the PNGs; returns (file name, caption) pairs for the report."""
  names = config['attacks']
  shown = []

  def mean(stats):
    return np.nan if not stats else stats['mean']

  figures.grouped_bars([ATTACK_TITLES[n] for n in names], {
      f'{kind} map L2': {
          'natural vs adversarial': np.array([mean(summary['attacks'][n][kind]['adversarial'])
                                              for n in names]),
          'different images': np.full(len(names), mean(summary['different'][kind]))}
      for kind in study.MAP_KINDS}, out / 'fig_l2.png', xlabel='attack')
  shown.append(('fig_l2.png', 'Table 1 as bars: mean L2 distance between the maps of a natural '
                'image and its adversarial version (successful attacks) vs between the maps '
                f"of two different natural images ({config['normalize']}-normalised maps)"))
  if maps:
    cls = config['class_names']
    for i, index in enumerate(maps['index']):
      images = np.concatenate([maps['x'][i:i + 1], maps['x_adv'][i]])
      preds = [int(maps['clean_pred'][i])] + [int(p) for p in maps['adv_pred'][i]]
      titles = [f'{t}: {cls[p]}' for t, p in zip(
          ['natural'] + [ATTACK_TITLES[n] for n in names], preds)]
      rows = {'learnt mask': np.concatenate([maps['learnt_clean'][i:i + 1],
                                             maps['learnt_adv'][i]]),
              '|gradient|': _minmax(np.concatenate([maps['gradient_clean'][i:i + 1],
                                                    maps['gradient_adv'][i]]))}
      name = 'fig_examples.png' if i == 0 else f'fig_examples_{int(index)}.png'
      figures.image_grid(images, titles, rows, out / name, cmap='gray')
      shown.append((name, f'Figure 1: test image {int(index)} and its adversarial versions '
                    '(titles: predicted class), with the learnt mask (as is, black = 0) and '
                    'the min-max-scaled gradient map of each prediction'))
  return shown


def table1(summary: dict, config: dict, kind: str) -> list[str]:
  """Table 1 for one map kind: per attack, the shift, the baseline and the test."""
  rows = [('Different images', report.with_ci(summary['different'][kind]), '', '',
           summary['different'][kind]['n'] if summary['different'][kind] else 0)]
  for name in config['attacks']:
    e = summary['attacks'][name][kind]
    mw = e['mann_whitney']
    rows.append((ATTACK_TITLES[name], report.with_ci(e['adversarial']),
                 report.fmt(None if not mw else mw['pvalue'], '.2e'),
                 report.fmt(None if not mw else mw['rank_biserial'], '.2f'),
                 e['adversarial']['n'] if e['adversarial'] else 0))
  return report.table(('maps of', 'L2 [95% CI]', 'Mann-Whitney p', 'rank-biserial r', 'n'),
                      rows)


def assira_paragraph(dataset: str) -> str:
  """What the report says of the paper's ASSIRA (cats vs dogs) for a run on ``dataset``."""
  missing = ("The paper's third dataset, ASSIRA (cats vs dogs), is not available here, so its "
             'column cannot be reproduced')
  if dataset == detect_adversarial_claims.STAND_IN:
    return (f'{missing}. This run stands in for it: a two-class (cat = 0, dog = 1) classifier '
            "trained from scratch on CIFAR-10's cat and dog training images (10,000), tested on "
            "CIFAR-10's cat and dog test images (2,000), with a masking model trained for it. "
            "These are 32x32 CIFAR-10 images, not ASSIRA's photographs, so the numbers are the "
            "stand-in's, not a reproduction of the paper's ASSIRA column.")
  return (f'{missing}; its stand-in, CIFAR-10 cats vs dogs, is a separate run of this study '
          f'(--checkpoint={detect_adversarial_claims.STAND_IN_CHECKPOINT}).')


def report_markdown(summary: dict, config: dict, *, figures_: list[tuple[str, str]],
                    detection_figures: list[tuple[str, str]] = ()) -> str:
  """The report: the shift experiment's sections and the detection experiments' that ran.

  Args:
    summary: ``summarize``'s dict (the shift experiment's; absent keys when it did not run),
      with ``'detection'`` holding the detection summary when those experiments ran.
    config: the run's ``config.json``.
    figures_: the shift experiment's (file, caption) pairs.
    detection_figures: the detection experiments' (file, caption) pairs.
  """
  doc = report.Markdown('Study 003: model-based saliency for the detection of adversarial '
                        'examples')
  doc.paragraph(assira_paragraph(config['dataset']))
  if 'attacks' in summary:
    shift_sections(doc, summary, config, figures_)
  if 'detection' in summary:
    detection_report.add_sections(doc, summary['detection'], config, detection_figures)
  return doc.text()


def shift_sections(doc: report.Markdown, summary: dict, config: dict,
                   figures_: list[tuple[str, str]]):
  """Appends the shift experiment's setup, claims, Tables 1-2, success rates and figures."""
  names = config['attacks']
  doc.heading('Saliency shift: do adversarial perturbations shift learnt saliency maps?')
  doc.paragraph(
      f"{summary['num_images']} {config['dataset']} test images; classifier "
      f"{config['checkpoint']} ({config['architecture']}, test accuracy "
      f"{report.fmt(config['checkpoint_test_accuracy'])}; clean accuracy here "
      f"{report.with_ci(summary['clean_accuracy'])}); learnt saliency from masker "
      f"{config['masker']}. Every attack is untargeted on the true label except JSMA, which "
      'is targeted only: its target is a random class other than the true label, fixed per '
      'image by the seed (cleverhans draws a random target when none is given). Maps explain '
      'the predicted class of each image (clean or adversarial), as the paper does to avoid '
      'a label leak. Gradient maps are |d logit / d x| summed over channels. Both map kinds '
      f"are {config['normalize']}-normalised per map before the L2 distance. The "
      '"different images" baseline pairs each image with a partner image fixed by the seed '
      '(a random cyclic order of the images, each paired with the next).')
  doc.paragraph(
      'Attack hyper-parameters: '
      f"FGSM/BIM/MIM eps {config['eps']:.4g}, BIM step {config['bim_step']:.4g}, MIM step "
      f"{config['mim_step']:.4g} and decay {config['mim_decay']:g}, {config['num_steps']} "
      f"steps; C&W L2 confidence {config['cw_confidence']:g}, learning rate "
      f"{config['cw_learning_rate']:g}, initial constant {config['cw_initial_const']:g}, "
      f"{config['cw_binary_search_steps']} binary-search steps of at most "
      f"{config['cw_max_iterations']} iterations; JSMA theta {config['jsma_theta']:g}, gamma "
      f"{config['jsma_gamma']:g}; DeepFool overshoot {config['deepfool_overshoot']:g}, at most "
      f"{config['deepfool_max_iter']} iterations. The text of paper 003 we have does not "
      'include its Appendix B (attack hyper-parameters) nor the numbers of its Tables 1-2; it '
      'names cleverhans as its implementation, so the defaults are cleverhans\' (MNIST '
      'L-inf budget 0.3, BIM step 0.05, MIM step 0.06; C&W 5 x 1000 iterations, learning rate '
      '5e-3, initial constant 1e-2; JSMA theta 1, gamma 0.1 as in its tutorial; DeepFool '
      'overshoot 0.02, 50 iterations) and, for CIFAR-10, the usual 8/255 with steps of 2/255. '
      'Presets and flags may change them (the default preset runs C&W for 100 iterations '
      'per binary-search step at learning rate 0.1, which costs a CPU minutes instead of '
      'hours); the values above are those of this run.')
  doc.heading('Shift claims', 3)
  doc.lines(report.claims(detect_adversarial_claims.claims(summary, config)))
  for kind, title in (('learnt', 'learnt saliency (masking model)'),
                      ('gradient', 'gradient maps')):
    doc.heading(f'Table 1: L2 distances between {title}', 3)
    doc.paragraph('Natural vs adversarial over the successful attacks (n), different images '
                  'over every image; p: two-sided Mann-Whitney U test of the two samples; '
                  'r > 0: the adversarial shift tends to be larger than the baseline.')
    doc.lines(table1(summary, config, kind))
  doc.heading('Table 2: perturbation sizes (successful attacks)', 3)
  doc.paragraph('m = number of pixels; L0 = share of pixels with a channel changed by more '
                f"than {config['l0_atol']:.3g}; L2 = ||r||_2 / sqrt(m); Linf = max |r| "
                '(pixels in [0, 1]). The paper\'s caption marks ||r||_2 >= 0.025 and '
                '||r||_inf >= 0.5; its exact normalisation is not in the text we have, this '
                'is our reading of it.')
  doc.lines(report.table(('attack', 'L0 / m', 'L2 / sqrt(m)', 'Linf'), [
      (ATTACK_TITLES[n], *(report.with_ci(summary['attacks'][n]['sizes'][s], '.4f')
                           for s in SIZES)) for n in names]))
  doc.heading('Attack success rates', 3)
  doc.paragraph('Share of the correctly classified images whose adversarial version is '
                'misclassified (JSMA: whether or not it reached its target).')
  doc.lines(report.table(('attack', 'success [95% CI]'), [
      (ATTACK_TITLES[n], report.with_ci(summary['attacks'][n]['success'])) for n in names]))
  doc.heading('Shift figures', 3)
  for name, caption in figures_:
    doc.figure(name, caption)


def headline(summary: dict, config: dict) -> list[tuple[str, Any, Any]]:
  """(quantity, paper, ours) rows for the results index."""
  rows = []
  if 'attacks' in summary:
    for kind, paper in (('learnt', 'comparable to or larger than the baseline (CIFAR-10)'),
                        ('gradient', 'imperceptible shift')):
      base = summary['different'][kind]
      ratios = [summary['attacks'][n][kind]['adversarial']['mean'] / base['mean']
                for n in config['attacks']
                if base and base['mean'] > 0 and summary['attacks'][n][kind]['adversarial']]
      rows.append((f'{kind} map shift / different-images L2, {config["dataset"]} (median '
                   'over attacks)', paper, float(np.median(ratios)) if ratios else None))
  detection = summary.get('detection', {})
  for kind in ('spd', 'smd'):
    cells = [c['accuracy']['mean'] for row in detection.get('matrix', {}).get(kind, {}).values()
             for c in row['test'].values() if c['accuracy']]
    if cells:
      rows.append((f'{kind.upper()} mean detection accuracy over the attack matrix, '
                   f'{config["dataset"]}', 'SPD above SMD', float(np.mean(cells))))
  return rows


def load(output_dir: store.PathLike) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(shift results, figure maps) of a finished run (the maps empty without that stage)."""
  out = pathlib.Path(output_dir)
  res = store.load_shards(out, study.SHIFT_STAGE)
  maps = (store.load_shards(out, study.MAPS_STAGE)
          if store.shard_files(out, study.MAPS_STAGE) else {})
  return res, maps


def finalize(output_dir: store.PathLike) -> pathlib.Path:
  """Writes the outputs of the experiments that ran, ``summary.json`` and ``report.md``.

  The shift experiment writes ``per_example.csv`` and its figures; the detection
  experiments ``detection_scores.csv`` and theirs (``detect_adversarial_detection_report``).

  Args:
    output_dir: a finished run's directory.

  Returns:
    The path of ``report.md``.
  """
  out = pathlib.Path(output_dir)
  config = store.read_json(out / 'config.json')
  summary: dict[str, Any] = {}
  shown: list[tuple[str, str]] = []
  if store.shard_files(out, study.SHIFT_STAGE):
    res, maps = load(out)
    store.write_csv(out / 'per_example.csv', per_example_rows(res, config))
    summary = summarize(res, config)
    shown = write_figures(out, maps, summary, config)
  detection_shown: list[tuple[str, str]] = []
  if detection_report.has_results(out):
    summary['detection'], detection_shown = detection_report.finalize(out, config)
  store.write_json(out / 'summary.json', summary)
  store.write_text(out / 'report.md', report_markdown(summary, config, figures_=shown,
                                                      detection_figures=detection_shown))
  return out / 'report.md'
