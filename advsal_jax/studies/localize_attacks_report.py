"""Study 004's outputs: per-example tables, summary, mean ranks, claims, figures and report."""

import functools
import pathlib
from typing import Any

import numpy as np
import scipy.stats

from advsal_jax.studies import localize_attacks as study
from advsal_jax.studies import report
from advsal_jax.studies import store
from advsal_jax.studies import summary as summ

SCORES = {'jaccard': 'Jaccard index', 'hamming': 'Hamming likeness'}
# Table 1 of the paper: mean rank (1 best, 3 worst) over 12,160 explanations per explainer.
PAPER_TABLE1 = {'gradient': {'jaccard': 2.58, 'hamming': 2.59},
                'guided_backprop': {'jaccard': 2.06, 'hamming': 2.03},
                'lime': {'jaccard': 1.36, 'hamming': 1.38}}
PAPER_IMAGES, PAPER_EXAMPLES = 112, 608
LABELS = {'gradient': 'classic saliency', 'guided_backprop': 'Guided Backprop', 'lime': 'LIME',
          'smoothgrad': 'SmoothGrad', 'integrated_gradients': 'Integrated Gradients',
          'grad_cam': 'Grad-CAM', 'enhanced_guided_backprop': 'Enhanced GBP',
          'random': 'random pixels'}
FAR_BETTER = 2.0
"""How many times random's mean Jaccard an explainer needs for 'far better than random'."""
FIGURE_N = 3
"""The partial union shown in the Fig. 3 panels."""
_MAX_FIGURE_EXAMPLES = 6


def label(method: str) -> str:
  """The explainer's name in tables and figures."""
  return LABELS.get(method, method)


def ranks(scores: np.ndarray) -> np.ndarray:
  """Rank of each column within its row, 1 for the highest score; ties share their mean rank.

  Args:
    scores: f[..., M] scores of M explainers (higher is better).

  Returns:
    f64[..., M] in [1, M]: ``1 + #better + #tied_others / 2`` (scipy's 'average' ranks of
    the negated scores).
  """
  s = np.asarray(scores, np.float64)
  better = (s[..., None, :] > s[..., :, None]).sum(-1)
  tied = (s[..., None, :] == s[..., :, None]).sum(-1) - 1
  return 1.0 + better + tied / 2.0


@functools.lru_cache(maxsize=None)
def _expected_jaccard(k: int, c: int, total: int) -> float:
  x = np.arange(max(0, k + c - total), min(k, c) + 1)
  union = k + c - x
  j = np.divide(x, union, out=np.ones(len(x)), where=union > 0)
  return float((scipy.stats.hypergeom.pmf(x, total, c, k) * j).sum())


def expected_random(k: np.ndarray, c: np.ndarray, total: int) -> dict[str, np.ndarray]:
  """Expected Jaccard and Hamming likeness of k uniformly random pixels against a region.

  The overlap X of k random pixels with a region of c of ``total`` pixels is
  hypergeometric, so ``E[J] = sum_x P(X = x) x / (k + c - x)`` and
  ``E[H] = 1 - (k + c - 2 k c / total) / total``.

  Args:
    k: int[...] pixels selected.
    c: int[...] region sizes (broadcast against ``k``).
    total: pixels per image.

  Returns:
    ``{'jaccard': f64[...], 'hamming': f64[...]}``.
  """
  k, c = np.broadcast_arrays(np.asarray(k, np.int64), np.asarray(c, np.int64))
  jac = np.array([_expected_jaccard(int(a), int(b), total) for a, b in zip(k.ravel(), c.ravel())])
  return {'jaccard': jac.reshape(k.shape),
          'hamming': 1.0 - (k + c - 2.0 * k * c / total) / total}


def load(output_dir: store.PathLike) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """The attack stage's arrays and the explanation stage's (empty dict before any success)."""
  attack = store.load_shards(output_dir, study.ATTACK_STAGE)
  try:
    explain = store.load_shards(output_dir, study.EXPLAIN_STAGE)
  except FileNotFoundError:
    explain = {}
  return attack, explain


def rank_table(res: dict[str, np.ndarray], methods: list[str], score: str) -> np.ndarray:
  """Each example's mean rank over its ``top_n`` explanations: f64[E, M]."""
  return ranks(np.stack([res[f'{m}/{score}'] for m in methods], axis=-1)).mean(axis=1)


def _region_sizes(attack: dict[str, np.ndarray], res: dict[str, np.ndarray]) -> np.ndarray:
  j = np.searchsorted(attack['index'], res['image_index'])
  return attack['region_size'][j, res['region_id']]


def attack_rows(attack: dict[str, np.ndarray], config: dict) -> list[dict[str, Any]]:
  """One row per (image, region) attack with its outcome."""
  names = config['class_names']
  rows = []
  for j, index in enumerate(attack['index']):
    for r in range(attack['status'].shape[1]):
      rows.append({'index': int(index), 'label': names[int(attack['label'][j])],
                   'clean_pred': names[int(attack['clean_pred'][j])],
                   'num_segments': int(attack['num_segments'][j]), 'region': r,
                   'region_size': int(attack['region_size'][j, r]),
                   'status': study.STATUS_NAMES[int(attack['status'][j, r])],
                   'steps': int(attack['steps'][j, r]),
                   'adv_pred': names[int(attack['adv_pred'][j, r])],
                   'linf': float(attack['linf'][j, r])})
  return rows


def per_example_rows(attack: dict[str, np.ndarray], res: dict[str, np.ndarray],
                     config: dict) -> list[dict[str, Any]]:
  """One row per (adversarial example, explainer): its scores for n = 1..top_n and ranks."""
  methods = list(config['methods'])
  paper = [m for m in study.PAPER_METHODS if m in methods]
  sizes = _region_sizes(attack, res)
  rank = {(group, s): rank_table(res, ms, s) for group, ms in (('paper', paper), ('all', methods))
          for s in SCORES}
  rows = []
  for e in range(len(res['index'])):
    base = {'image_index': int(res['image_index'][e]), 'region': int(res['region_id'][e]),
            'region_size': int(sizes[e]), 'lime_superpixels': int(res['lime_superpixels'][e]),
            'lime_positive': int(res['lime_positive'][e])}
    for m in methods + ['random']:
      row = {**base, 'method': m}
      for s in SCORES:
        row[f'mean_{s}'] = float(res[f'{m}/{s}'][e].mean())
        row[f'rank_paper_{s}'] = (float(rank['paper', s][e, paper.index(m)]) if m in paper
                                  else None)
        row[f'rank_all_{s}'] = (float(rank['all', s][e, methods.index(m)]) if m != 'random'
                                else None)
      row.update({f'k_{n + 1}': int(v) for n, v in enumerate(res['k'][e])})
      for s in SCORES:
        row.update({f'{s}_{n + 1}': float(v) for n, v in enumerate(res[f'{m}/{s}'][e])})
      rows.append(row)
  return rows


def summarize(attack: dict[str, np.ndarray], res: dict[str, np.ndarray],
              config: dict) -> dict[str, Any]:
  """Attack counts, segment statistics, curves over n, mean scores and mean ranks.

  Every mean comes with a 95 % percentile-bootstrap CI over adversarial examples (1,000
  resamples, seed = the run's seed); an example's rank is its mean over its ``top_n``
  explanations, so the mean over examples is the mean over all explanations.
  """
  stats = functools.partial(summ.describe, seed=int(config['seed']))
  status = attack['status']
  counts = {name: int((status == i).sum()) for i, name in enumerate(study.STATUS_NAMES)}
  attempted = status[(status != study.ABSENT) & (status != study.SKIPPED)]
  ok = status == study.SUCCESS
  h, w = attack['segments'].shape[1:]
  out: dict[str, Any] = {
      'num_images': int(len(attack['index'])),
      'clean_accuracy': float((attack['clean_pred'] == attack['label']).mean()),
      'skipped_images': int((attack['clean_pred'] == config['target_class']).sum()),
      'attacks': {**counts, 'attempted': int(len(attempted)),
                  'success_rate': float((attempted == study.SUCCESS).mean())
                                  if len(attempted) else None,
                  'steps': stats(attack['steps'][ok]),
                  'linf': stats(attack['linf'][ok])},
      'segments': {'per_image': stats(attack['num_segments']),
                   'min': int(attack['num_segments'].min()),
                   'max': int(attack['num_segments'].max()),
                   'images_with_fewer_than_regions': int(
                       (attack['num_segments'] < config['num_regions']).sum()),
                   'region_pixels': stats(attack['region_size'][status != study.ABSENT]),
                   'attacked_region_pixels': stats(attack['region_size'][ok]),
                   'pixels_per_image': int(h * w)},
      'num_adversarial': int(ok.sum()),
      'compute_seconds': float(np.sum(attack['seconds']) + np.sum(res.get('seconds', 0.0)))}
  if not res:
    return out
  methods = list(config['methods'])
  paper = [m for m in study.PAPER_METHODS if m in methods]
  c = _region_sizes(attack, res)[:, None]
  expected = expected_random(res['k'], c, h * w)
  out['lime'] = {'superpixels': stats(res['lime_superpixels']),
                 'positive': stats(res['lime_positive']),
                 'no_positive': int((res['lime_positive'] == 0).sum()),
                 'saturated_unions': float(
                     (np.arange(1, config['top_n'] + 1)[None] > res['lime_positive'][:, None])
                     .mean())}
  out['ties'] = {m: float((res['k'] > res[f'positive/{m}'][:, None]).mean())
                 for m in methods if m != 'lime'}
  out['curves'], out['overall'] = {}, {}
  for m in methods + ['random']:
    out['curves'][m], out['overall'][m] = {}, {}
    for s in SCORES:
      v = res[f'{m}/{s}']
      cols = [stats(v[:, n]) for n in range(v.shape[1])]
      out['curves'][m][s] = {q: [col[q] for col in cols] for q in ('mean', 'ci_low', 'ci_high')}
      out['overall'][m][s] = stats(v.mean(axis=1))
  out['random_expected'] = {s: {'curve': expected[s].mean(axis=0).tolist(),
                                'overall': float(expected[s].mean())} for s in SCORES}
  out['mean_rank'] = {}
  for group, ms in (('paper', paper), ('all', methods)):
    if len(ms) > 1:
      out['mean_rank'][group] = {s: {m: stats(col) for m, col in zip(ms, rank_table(res, ms, s).T)}
                                 for s in SCORES}
  out['explain_seconds'] = float(np.sum(res['seconds']))
  return out


def _mean(stats: dict | None) -> float | None:
  return None if not stats else stats['mean']


def _rank_verdict(ranks_: dict, method: str, *, best: bool) -> tuple[str, str]:
  """Whether ``method``'s mean rank is clearly the best (or worst), judged on the 95 % CIs.

  Holds when its CI lies beyond every other explainer's, does not hold when some other
  explainer's CI lies beyond its own on the claimed side, partly holds when they overlap.
  """
  others = [m for m in ranks_ if m != method]
  own = ranks_[method]
  if best:
    clear = all(own['ci_high'] < ranks_[m]['ci_low'] for m in others)
    beaten = [m for m in others if ranks_[m]['ci_high'] < own['ci_low']]
  else:
    clear = all(own['ci_low'] > ranks_[m]['ci_high'] for m in others)
    beaten = [m for m in others if ranks_[m]['ci_low'] > own['ci_high']]
  if clear:
    return 'holds', 'its CI lies beyond every other explainer\'s'
  if beaten:
    return 'does not hold', (f"{', '.join(label(m) for m in beaten)} ranks clearly "
                             f"{'better' if best else 'worse'} (CIs apart)")
  means = {m: st['mean'] for m, st in ranks_.items()}
  agrees = (min if best else max)(means, key=means.get) == method
  return 'partly holds', f"the CIs overlap; the means {'agree' if agrees else 'disagree'}"


def claims(summary: dict, config: dict) -> list[report.Claim]:
  """The paper's research questions R1 and R2 and its Fig. 4 remark, with verdicts."""
  if 'overall' not in summary:
    why = 'no attack succeeded, so there is nothing to explain'
    return [report.Claim('R1: explanations locate the attack far better than random.',
                         'Sec. 5', 'n/a', 'cannot be tested', why),
            report.Claim('R2: LIME ranks best, classic saliency worst.', 'Table 1', 'n/a',
                         'cannot be tested', why)]
  overall, rnd = summary['overall'], summary['overall']['random']['jaccard']
  paper = [m for m in study.PAPER_METHODS if m in config['methods']]
  better = {m: overall[m]['jaccard']['ci_low'] > rnd['ci_high'] and
            overall[m]['jaccard']['mean'] >= FAR_BETTER * rnd['mean'] for m in paper}
  out = [report.Claim(
      'R1: every explainer locates the attacked region far better than random pixels.',
      'Sec. 5: "clearly better than random"; Fig. 4',
      f"mean Jaccard: random {rnd['mean']:.3f}; " + ', '.join(
          f"{label(m)} {overall[m]['jaccard']['mean']:.3f} "
          f"({overall[m]['jaccard']['mean'] / max(rnd['mean'], 1e-12):.1f}x)" for m in paper),
      'holds' if all(better.values()) else
      ('partly holds' if any(better.values()) else 'does not hold'),
      f'"far better" = CI above random\'s and >= {FAR_BETTER:g}x its mean; '
      f'{sum(better.values())} of {len(better)} explainers qualify'
      + (''.join(f'; {label(m)} is significantly worse than random (CI below random\'s)'
                 for m in paper if overall[m]['jaccard']['ci_high'] < rnd['ci_low'])))]
  ranks_ = summary.get('mean_rank', {}).get('paper', {}).get('jaccard')
  if ranks_ and {'lime', 'gradient'} <= set(ranks_):
    table = 'Table 1 (Jaccard): ' + ', '.join(f"{label(m)} {PAPER_TABLE1[m]['jaccard']}"
                                               for m in paper)
    ours = ', '.join(f'{label(m)} {report.with_ci(ranks_[m], ".2f")}' for m in paper)
    for method, best, text in (('lime', True, 'R2: LIME ranks best (lowest mean rank).'),
                               ('gradient', False, 'R2: classic saliency ranks worst.')):
      verdict, why = _rank_verdict(ranks_, method, best=best)
      out.append(report.Claim(text, table, ours, verdict, why))
  else:
    out.append(report.Claim('R2: LIME ranks best and classic saliency worst.', 'Table 1',
                            'n/a', 'cannot be tested', 'the run lacks LIME or the gradient'))
  lime = summary['curves']['lime']['jaccard']['mean']
  peak = int(np.nanargmax(lime)) + 1
  early = peak <= max(1, config['top_n'] // 4)
  out.append(report.Claim(
      "LIME's Jaccard index peaks early, at a small partial union.",
      'Sec. 4 and Fig. 4 (one example)',
      f"mean Jaccard peaks at n = {peak} of {config['top_n']} ({max(lime):.3f})",
      'holds' if early else 'does not hold',
      f"early = n <= {max(1, config['top_n'] // 4)}"))
  return out


def report_markdown(summary: dict, config: dict, *, figures: list[str]) -> str:
  """The report: Table 1 beside the paper's, the claims, curves, attacks and segments."""
  doc = report.Markdown('Study 004: recovering localized adversarial attacks')
  target = config['class_names'][config['target_class']]
  att, seg = summary['attacks'], summary['segments']
  doc.paragraph(
      f"Model `{config['model']}` (checkpoint test accuracy "
      f"{config['checkpoint_test_accuracy']:.4f}) on the first {summary['num_images']} "
      f"{config['dataset']} test images (clean accuracy {summary['clean_accuracy']:.3f}). "
      f"The paper attacked Inception v3 (torchvision) on crops of {PAPER_IMAGES} photographs "
      f'of its own and kept {PAPER_EXAMPLES} adversarial examples; we run its protocol on '
      f"{seg['pixels_per_image']}-pixel images, so superpixels and regions are far smaller.")
  doc.paragraph(
      f"Each image is cut into Felzenszwalb segments (scale {config['felzenszwalb_scale']}, "
      f"sigma {config['felzenszwalb_sigma']}, min_size {config['felzenszwalb_min_size']}); "
      f"its {config['num_regions']} largest are attacked one at a time by targeted BIM "
      f"towards *{target}* (L-inf step {config['step_size']:.4f}, budget {config['eps']}, at "
      f"most {config['max_steps']} steps; stalled after {config['patience']} steps without a "
      'new loss minimum). Each adversarial example is explained for its adversarial '
      "prediction; LIME's superpixels come from its own segmenter "
      f"({config['method_kwargs'].get('lime', {}).get('segmentation', 'quickshift')}), not "
      f"the attack's. Pixel maps keep their |U_n| most relevant pixels, U_n being the union "
      f"of LIME's n best positive superpixels (n = 1..{config['top_n']}); relevance is the L1 "
      'norm over channels after negative values are discarded, as in the paper.')
  doc.heading('Attacks')
  doc.lines(report.table(
      ('images', 'skipped (already the target)', 'attacks tried', 'succeeded', 'stalled',
       'out of steps', 'success rate', 'steps to success', 'L-inf of success'),
      [(summary['num_images'], summary['skipped_images'], att['attempted'], att['success'],
        att['stalled'], att['exhausted'], att['success_rate'], report.with_ci(att['steps'], '.1f'),
        report.with_ci(att['linf']))]))
  doc.heading('Segments')
  rows = [('Felzenszwalb segments per image', report.with_ci(seg['per_image'], '.1f'),
           f"{seg['min']} to {seg['max']}; {seg['images_with_fewer_than_regions']} images "
           f"have fewer than {config['num_regions']}"),
          ('pixels of a candidate region', report.with_ci(seg['region_pixels'], '.1f'),
           f"of {seg['pixels_per_image']}"),
          ('pixels of a successfully attacked region',
           report.with_ci(seg['attacked_region_pixels'], '.1f'), '')]
  if 'lime' in summary:
    lime = summary['lime']
    rows += [('LIME superpixels per adversarial example',
              report.with_ci(lime['superpixels'], '.1f'), ''),
             ('of them with a positive coefficient', report.with_ci(lime['positive'], '.1f'),
              f"{lime['no_positive']} examples have none; {lime['saturated_unions']:.1%} of "
              f"unions U_n have n above the positive count (U_n stops growing)")]
  doc.lines(report.table(('quantity', 'mean [95 % CI]', 'note'), rows))
  if 'overall' not in summary:
    doc.paragraph('No attack succeeded: there are no adversarial examples to explain.')
  else:
    _explanations(doc, summary, config)
  doc.heading("The paper's claims on our model")
  doc.lines(report.claims(claims(summary, config)))
  doc.heading('Run')
  doc.paragraph(
      f"Compute time {summary['compute_seconds']:.1f} s (compilation included); "
      f"{summary['num_adversarial']} adversarial examples; seed {config['seed']}; methods "
      f"{', '.join(config['methods'])}; hyper-parameters "
      + '; '.join(f'{m}: {kw}' for m, kw in config['method_kwargs'].items()
                  if m in config['methods']) + '.')
  for f in figures:
    doc.figure(f)
  return doc.text()


def _explanations(doc: report.Markdown, summary: dict, config: dict):
  methods = list(config['methods'])
  mr = summary['mean_rank']
  doc.heading('Table 1: mean rank of the paper\'s three explainers (1 best, 3 worst)')
  rows = []
  for m, st in mr.get('paper', {}).get('jaccard', {}).items():
    sh = mr['paper']['hamming'][m]
    rows.append((label(m), PAPER_TABLE1[m]['jaccard'], report.with_ci(st, '.2f'),
                 PAPER_TABLE1[m]['hamming'], report.with_ci(sh, '.2f')))
  doc.lines(report.table(('explainer', 'Jaccard: paper', 'Jaccard: ours [95 % CI]',
                          'Hamming: paper', 'Hamming: ours [95 % CI]'), rows, spec='.2f'))
  doc.paragraph(
      f"Ranks are per explanation (adversarial example x n), ties sharing their mean rank; "
      f"{summary['num_adversarial']} examples x {config['top_n']} = "
      f"{summary['num_adversarial'] * config['top_n']} explanations per explainer (the paper: "
      f'{PAPER_EXAMPLES} x 20 = 12,160). All pixel sets of one explanation have the same size '
      'k, and then both the Jaccard index I / (k + |C| - I) and the Hamming likeness '
      '1 - (k + |C| - 2I) / N grow with the overlap I alone, so they rank explainers '
      "identically: our two columns agree by construction. The paper's differ by up to 0.03, "
      'so its pixel sets cannot all have had equal sizes.')
  if 'all' in mr:
    doc.heading(f'Every method (mean rank among {len(methods)}; mean score over all '
                'explanations)')
    rows = [(label(m), report.with_ci(mr['all']['jaccard'][m], '.2f'),
             report.with_ci(summary['overall'][m]['jaccard']),
             report.with_ci(summary['overall'][m]['hamming']),
             summary['ties'].get(m)) for m in methods]
    rows.append((label('random'), None, report.with_ci(summary['overall']['random']['jaccard']),
                 report.with_ci(summary['overall']['random']['hamming']), None))
    rows.append(('random, closed form', None, summary['random_expected']['jaccard']['overall'],
                 summary['random_expected']['hamming']['overall'], None))
    doc.lines(report.table(('explainer', 'mean rank', 'Jaccard', 'Hamming likeness',
                            'share of selections reaching zero relevance'), rows))
    doc.paragraph(
        'The last column is the share of explanations whose k exceeds the pixels the map '
        'marks as relevant at all; the rest of such a selection is among equal (zero) values '
        'and taken in row-major order. The learnt masker of the project has no checkpoint '
        'yet and is not run.')
  doc.heading('Fig. 4: scores against the size of the explanation')
  n = range(1, config['top_n'] + 1)
  rows = [(label(m), *[summary['curves'][m]['jaccard']['mean'][i - 1] for i in n])
          for m in methods + ['random']]
  doc.lines(report.table(('Jaccard, n =', *n), rows))


def headline(summary: dict, config: dict) -> list[tuple[str, Any, Any]]:
  """(quantity, paper, ours) rows for the results index: Table 1's Jaccard mean ranks."""
  ranks_ = summary.get('mean_rank', {}).get('paper', {}).get('jaccard', {})
  rows = [(f'{label(m)} mean rank (Jaccard)', PAPER_TABLE1[m]['jaccard'], _mean(ranks_.get(m)))
          for m in study.PAPER_METHODS if m in config['methods']]
  return rows + [('adversarial examples', PAPER_EXAMPLES, summary['num_adversarial'])]


def finalize(output_dir: store.PathLike) -> pathlib.Path:
  """Writes the per-example CSV/npz, ``attacks.csv``, ``summary.json``, figures and report.

  Args:
    output_dir: a finished ``localize_attacks.run``'s directory (its shards hold everything,
      the clean images included, so neither the model nor the data is loaded).

  Returns:
    The path of ``report.md``.
  """
  out = pathlib.Path(output_dir)
  config = store.read_json(out / 'config.json')
  attack, res = load(out)
  store.write_csv(out / 'attacks.csv', attack_rows(attack, config))
  if res:
    store.write_npz(out / 'per_example.npz', res)
    store.write_csv(out / 'per_example.csv', per_example_rows(attack, res, config))
  summary = summarize(attack, res, config)
  store.write_json(out / 'summary.json', summary)
  shown = write_figures(out, attack, res, summary, config)
  store.write_text(out / 'report.md', report_markdown(summary, config, figures=shown))
  return out / 'report.md'


def _series(curves: dict, score: str) -> np.ndarray:
  """f64[3, top_n] (mean, ci_low, ci_high) of one summary curve (NaN where undefined)."""
  return np.array([[np.nan if v is None else v for v in curves[score][q]]
                   for q in ('mean', 'ci_low', 'ci_high')], np.float64)


def _change(x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
  """|x_adv - x| summed over channels and scaled to [0, 1]: f64[H,W]."""
  d = np.abs(x_adv - x).sum(-1)
  return d / max(float(d.max()), 1e-12)


def _shown_examples(res: dict[str, np.ndarray]) -> list[int]:
  """Up to six adversarial examples, from as many different images as possible."""
  first = list(dict.fromkeys(res['image_index'].tolist()))
  picks = [int(np.argmax(res['image_index'] == i)) for i in first][:_MAX_FIGURE_EXAMPLES]
  rest = [e for e in range(len(res['index'])) if e not in picks]
  return (picks + rest)[:_MAX_FIGURE_EXAMPLES]


def _figure1_and_2(figures, out, attack, j, r, names):
  """Fig. 1 (image, adversarial image, difference) and Fig. 2 (one image's attacks)."""
  x, x_adv = attack['x'][j], attack['x_adv'][j, r]
  d = x_adv - x  # shown grey where unchanged, scaled to its largest change
  figures.image_grid(
      np.stack([x, x_adv, 0.5 + d / (2 * max(float(np.abs(d).max()), 1e-12))]),
      [f"image: {names[attack['clean_pred'][j]]}",
       f"adversarial: {names[attack['adv_pred'][j, r]]}", f'difference (region {r})'],
      {}, out / 'figure1_attack.png')
  done = np.flatnonzero(attack['status'][j] == study.SUCCESS)
  seg = attack['segments'][j]
  figures.image_grid(
      np.stack([x] + [attack['x_adv'][j, q] for q in done]),
      ['segments'] + [f"region {q} ({attack['region_size'][j, q]} px)\n"
                      f"{names[attack['adv_pred'][j, q]]}" for q in done],
      {'segments / attacked region': np.stack([seg / max(seg.max(), 1)] +
                                              [seg == q for q in done]).astype(float),
       '|difference|': np.stack([np.zeros(seg.shape)] +
                                [_change(x, attack['x_adv'][j, q]) for q in done])},
      out / 'figure2_regions.png')


def _figure3(figures, out, attack, res, shown, pos, config):
  """Fig. 3: the attacked region and every explainer's pixels at n = FIGURE_N."""
  where = [(pos[int(res['image_index'][e])], int(res['region_id'][e])) for e in shown]
  n = min(FIGURE_N, config['top_n'])
  rows = {'attacked region': np.stack([attack['segments'][j] == r for j, r in where])}
  for m in config['methods']:
    rows[label(m)] = np.stack([res['lime_level'][e] < n if m == 'lime'
                               else res[f'order/{m}'][e] < res['k'][e, n - 1] for e in shown])
  figures.image_grid(np.stack([attack['x_adv'][j, r] for j, r in where]),
                     [f"image {res['image_index'][e]}, region {res['region_id'][e]}\n"
                      f"k = {res['k'][e, n - 1]} (n = {n})" for e in shown],
                     {k: v.astype(float) for k, v in rows.items()},
                     out / 'figure3_explanations.png', cmap='gray')


def _figure4(figures, out, res, summary, config, e0):
  """Fig. 4: scores against n, averaged (paper's explainers; all) and for one example."""
  steps = list(range(1, config['top_n'] + 1))
  methods = list(config['methods'])
  base = {title: _series(summary['curves']['random'], s) for s, title in SCORES.items()}
  for name, group in (('figure4_curves.png', [m for m in study.PAPER_METHODS if m in methods]),
                      ('figure4_all_methods.png', methods)):
    panels = {title: {label(m): _series(summary['curves'][m], s) for m in group}
              for s, title in SCORES.items()}
    figures.curves(steps, panels, out / name, xlabel='n (LIME superpixels in the union)',
                   ylabel='mean over adversarial examples', baseline=base)

  def one(m, s):  # a single example: its band is the line itself
    return np.repeat(res[f'{m}/{s}'][e0][None], 3, axis=0)

  figures.curves(steps, {title: {label(m): one(m, s) for m in methods}
                         for s, title in SCORES.items()},
                 out / 'figure4_example.png', xlabel='n (LIME superpixels in the union)',
                 ylabel='score of the Fig. 1 example',
                 baseline={title: one('random', s) for s, title in SCORES.items()})


def write_figures(out: pathlib.Path, attack: dict[str, np.ndarray], res: dict[str, np.ndarray],
                  summary: dict, config: dict) -> list[str]:
  """The paper's Fig. 1-4 from the stored arrays (none without adversarial examples).

  Returns:
    The names of the PNG files written into ``out``.
  """
  from advsal_jax.studies import figures  # pylint: disable=g-import-not-at-top (matplotlib)
  if not res:
    return []
  pos = {int(i): j for j, i in enumerate(attack['index'])}
  shown = _shown_examples(res)
  e0 = shown[0]
  _figure1_and_2(figures, out, attack, pos[int(res['image_index'][e0])],
                 int(res['region_id'][e0]), config['class_names'])
  _figure3(figures, out, attack, res, shown, pos, config)
  _figure4(figures, out, res, summary, config, e0)
  return ['figure1_attack.png', 'figure2_regions.png', 'figure3_explanations.png',
          'figure4_curves.png', 'figure4_all_methods.png', 'figure4_example.png']
