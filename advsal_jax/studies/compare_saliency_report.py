"""Study 000's outputs: the per-example table, summary, figures and the report with verdicts."""

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import checkpoints
from advsal_jax import compilation
from advsal_jax import data
from advsal_jax.studies import compare_saliency as study
from advsal_jax.studies import report
from advsal_jax.studies import runner
from advsal_jax.studies import store
from advsal_jax.studies import summary as summ

# Table 1 of the paper (targeted FGSM, eps 0.4): Spearman / mSSIM / HOG-Pearson.
PAPER_TABLE1 = {
    'smoothgrad': {'spearman': 0.288, 'mean_ssim': 0.999, 'hog_pearson': 0.495},
    'grad_cam': {'spearman': 0.0804, 'mean_ssim': 0.689, 'hog_pearson': 0.298},
    'guided_backprop': {'spearman': 0.602, 'mean_ssim': 0.895, 'hog_pearson': 0.668},
}
# The paper's mSSIM column is compared with both of ours.
_PAPER_METRIC = {'mean_ssim_paper': 'mean_ssim'}
CLASS_SPREAD = 0.1
"""Largest range of per-target-class means that counts as 'little variance across classes'."""


def _variants(config: dict) -> list[tuple[str, float]]:
  k = len(config['class_names'])
  return ([('untargeted', float(e)) for e in config['untargeted_eps']] +
          [('targeted', float(config['targeted_eps']))] * (k - 1))


def per_example_rows(res: dict[str, np.ndarray], config: dict) -> list[dict[str, Any]]:
  """One row per (image, adversarial variant, method) with the pair's metrics."""
  rows = []
  for v, (kind, eps) in enumerate(_variants(config)):
    for j in range(len(res['index'])):
      base = {'index': int(res['index'][j]), 'label': int(res['label'][j]),
              'real_pred': int(res['real_pred'][j]), 'kind': kind, 'eps': eps,
              'target': int(res['target'][v, j]), 'fake_pred': int(res['fake_pred'][v, j]),
              'success': bool(res['success'][v, j]), 'linf': float(res['linf'][v, j]),
              'l2': float(res['l2'][v, j])}
      for method in config['methods']:
        row = {**base, 'method': method}
        for name in config['metrics']:
          row[name] = float(res[f'{method}/{name}'][v, j])
        rows.append(row)
  return rows


def summarize(res: dict[str, np.ndarray], config: dict) -> dict[str, Any]:
  """Aggregates per method x eps (untargeted) and per method x target class (targeted).

  Each cell holds, per metric and per split (``all``, ``success``: the attack changed the
  prediction / reached the target, ``failed``), n, mean, std and a 95 % percentile-bootstrap
  confidence interval of the mean (1,000 resamples, seed = the run's seed).
  """
  seed = int(config['seed'])
  kinds = [k for k, _ in _variants(config)]
  unt = [i for i, k in enumerate(kinds) if k == 'untargeted']
  tgt = [i for i, k in enumerate(kinds) if k == 'targeted']
  success = res['success']
  out: dict[str, Any] = {'untargeted': {}, 'targeted_by_class': {}, 'table1': {}}
  for method in config['methods']:
    def cells(rows, keep, method=method):
      return {name: summ.by_success(res[f'{method}/{name}'][rows][keep[rows]],
                                    success[rows][keep[rows]], seed=seed)
              for name in config['metrics']}
    everything = np.ones_like(success, bool)
    out['untargeted'][method] = {str(config['untargeted_eps'][i]): cells([i], everything)
                                 for i in unt}
    out['targeted_by_class'][method] = {
        cname: cells(tgt, res['target'] == c) for c, cname in enumerate(config['class_names'])}
    out['table1'][method] = {name: summ.describe(res[f'{method}/{name}'][tgt], seed=seed)
                             for name in config['metrics']}
  out['num_examples'] = len(res['index'])
  out['clean_accuracy'] = float((res['real_pred'] == res['label']).mean())
  out['attack_success'] = {
      'untargeted': {str(config['untargeted_eps'][i]): float(success[i].mean()) for i in unt},
      'targeted': float(success[tgt].mean()) if tgt else None}
  out['mean_linf'] = {str(config['untargeted_eps'][i]): float(res['linf'][i].mean())
                      for i in unt}
  seconds = float(res['seconds'].sum())
  out['compute_seconds'] = seconds
  out['images_per_second'] = out['num_examples'] / seconds if seconds > 0 else None
  return out


def _lowest(means: dict[str, float]) -> str | None:
  means = {m: v for m, v in means.items() if v is not None and np.isfinite(v)}
  return min(means, key=means.get) if means else None


def claims(summary: dict, config: dict) -> list[report.Claim]:
  """The paper's claims with our numbers and verdicts."""
  methods, names = config['methods'], config['metrics']
  eps = [str(e) for e in config['untargeted_eps']]
  out = []
  # 1. Similarity falls as eps grows, for every method and metric.
  falls, pairs = [], []
  for m in methods:
    for n in names:
      lo, hi = (summary['untargeted'][m][e][n]['all'] for e in (eps[0], eps[-1]))
      if lo and hi:
        falls.append(hi['mean'] < lo['mean'])
        pairs.append(f"{m}/{n} {lo['mean']:.3f}->{hi['mean']:.3f}")
  if len(eps) < 2 or not falls:
    out.append(report.Claim('Maps grow less similar as the untargeted budget grows.',
                            'Fig. 2', 'n/a', 'cannot be tested',
                            'the run needs two untargeted budgets'))
  else:
    out.append(report.Claim(
        'Maps grow less similar as the untargeted budget grows (every method and metric).',
        'Fig. 2: all curves fall', f'eps {eps[0]} -> {eps[-1]}: ' + ', '.join(pairs),
        'holds' if all(falls) else ('partly holds' if any(falls) else 'does not hold'),
        '' if all(falls) else f'{sum(falls)} of {len(falls)} curves fall'))
  if 'grad_cam' in methods and len(methods) > 1:
    # 2. Grad-CAM lowest in the untargeted sweep at every budget.
    lowest = [_lowest({m: (summary['untargeted'][m][e][n]['all'] or {}).get('mean')
                       for m in methods}) == 'grad_cam' for e in eps for n in names]
    out.append(report.Claim(
        'Grad-CAM gives the least similar maps at every untargeted budget and metric.',
        'Fig. 2; Spearman ~0.1, mSSIM ~0.7, HOG ~0.3',
        f'lowest in {sum(lowest)} of {len(lowest)} (budget, metric) cells',
        'holds' if all(lowest) else ('partly holds' if any(lowest) else 'does not hold')))
    # 3. Grad-CAM lowest in Table 1.
    verdict = {n: _lowest({m: (summary['table1'][m][n] or {}).get('mean') for m in methods})
               == 'grad_cam' for n in names}
    out.append(report.Claim(
        'Grad-CAM gives the least similar maps under targeted FGSM on every metric (Table 1).',
        'Table 1', ', '.join(f"{n}: {'lowest' if ok else 'not lowest'}"
                             for n, ok in verdict.items()),
        'holds' if all(verdict.values()) else
        ('partly holds' if any(verdict.values()) else 'does not hold')))
  else:
    out.append(report.Claim('Grad-CAM gives the least similar maps.', 'Table 1, Fig. 2', 'n/a',
                            'cannot be tested', 'the run did not include Grad-CAM and another '
                            'method'))
  # 4. Little variance across target classes.
  spreads = {}
  for m in methods:
    for n in names:
      means = [c[n]['all']['mean'] for c in summary['targeted_by_class'][m].values()
               if c[n]['all']]
      if len(means) > 1:
        spreads[f'{m}/{n}'] = max(means) - min(means)
  if spreads:
    worst = max(spreads, key=spreads.get)
    small = all(v < CLASS_SPREAD for v in spreads.values())
    out.append(report.Claim(
        'The similarity varies little across target classes.', 'Fig. 4',
        f'largest range of per-class means {spreads[worst]:.3f} ({worst}); threshold '
        f'{CLASS_SPREAD}', 'holds' if small else 'does not hold'))
  return out


def report_markdown(summary: dict, config: dict, *, figures: list[str]) -> str:
  """The report: Table 1 beside the paper's, the claims with verdicts, the run's facts."""
  dataset = config['dataset']
  doc = report.Markdown('Study 000: saliency maps of clean vs FGSM-adversarial images')
  doc.paragraph(
      f"Model `{config['model']}` (checkpoint test accuracy "
      f"{config['checkpoint_test_accuracy']:.4f}); first {summary['num_examples']} {dataset} "
      f"test images; clean accuracy on them {summary['clean_accuracy']:.4f}.")
  doc.paragraph(
      f"Budgets are in the model's {config['eps_space']} input space" +
      (" (the paper's convention): a budget eps is applied in pixel space as eps * std per "
       'channel (std = the normalisation constants), then clipped to [0, 1].'
       if config['eps_space'] == 'normalized' else ' ([0, 1] pixel units).'))
  doc.heading(f"Table 1: targeted FGSM (eps {config['targeted_eps']}), mean similarity over "
              'all targets')
  rows = []
  for method in config['methods']:
    for name in config['metrics']:
      st = summary['table1'][method][name]
      paper = PAPER_TABLE1.get(method, {}).get(_PAPER_METRIC.get(name, name))
      rows.append((method, name, paper, st['mean'] if st else None, report.with_ci(st)))
  doc.lines(report.table(('method', 'metric', 'paper', 'ours', 'ours, 95 % CI'), rows,
                         spec='.4f'))
  undefined = {f'{m}/{n}': st['n_undefined'] for m, tab in summary['table1'].items()
               for n, st in tab.items() if st and st['n_undefined']}
  if undefined:
    doc.paragraph('Pairs left out as undefined (a constant map has no rank correlation): ' +
                  ', '.join(f'{k}: {v}' for k, v in undefined.items()) + '.')
  if 'mean_ssim' in config['metrics'] or 'mean_ssim_paper' in config['metrics']:
    doc.paragraph(
        "**Two SSIM conventions.** `mean_ssim` compares the normalised one-channel maps "
        '([0, 1], data range 1, Gaussian 11x11 window, Wang et al. 2004). `mean_ssim_paper` '
        "is the paper's own: its code calls skimage's `structural_similarity(a, b, "
        "multichannel=True)` with every default, on raw gradient maps (in standardised-input "
        'units, channels kept) and min-max-normalised Grad-CAM maps; skimage then took the '
        "data range from the float dtype, [-1, 1], so 2. Raw gradients are of order 1e-3 to "
        "1e-2, far below that range, so SSIM's stabilising constants swamp the maps' "
        '(co)variances and the score approaches 1 even for maps of two unrelated images. '
        'Only `mean_ssim` measures structural similarity; `mean_ssim_paper` is shown to '
        "explain the paper's 0.69-0.999. The paper's SmoothGrad was the mean of squared "
        "gradients with 3 samples (its code) and its maps were 224x224 upsampled images; ours "
        'are plain SmoothGrad at 32x32, which is why Grad-CAM stays far below 0.689 here.')
  doc.heading("The paper's claims on our model")
  doc.lines(report.claims(claims(summary, config)))
  doc.heading('Attack success')
  rows = [('untargeted FGSM', eps, rate, summary['mean_linf'][eps])
          for eps, rate in summary['attack_success']['untargeted'].items()]
  if summary['attack_success']['targeted'] is not None:
    rows.append(('targeted FGSM (all targets)', config['targeted_eps'],
                 summary['attack_success']['targeted'], None))
  doc.lines(report.table(('attack', 'eps', 'success rate', 'mean L-inf (pixels)'), rows,
                         spec='.4f'))
  doc.heading('Untargeted sweep (mean similarity, all pairs)')
  headers = ['method'] + [f'{m} @ eps {e}' for m in config['metrics']
                          for e in config['untargeted_eps']]
  rows = [[method] + [(summary['untargeted'][method][str(e)][m]['all'] or {}).get('mean')
                      for m in config['metrics'] for e in config['untargeted_eps']]
          for method in config['methods']]
  doc.lines(report.table(headers, rows))
  ips = summary['images_per_second']
  kwargs = '; '.join(f'{m}: {kw}' for m, kw in config['method_kwargs'].items()
                     if m in config['methods'])
  doc.heading('Run')
  doc.paragraph(f"Compute time {summary['compute_seconds']:.1f} s over "
                f"{summary['num_examples']} images ({report.fmt(ips, '.2f')} images/s, "
                f"compilation included); methods {', '.join(config['methods'])}"
                f"{'; ' + kwargs if kwargs else ''}; seed {config['seed']}.")
  for f in figures:
    doc.figure(f)
  return doc.text()


def headline(summary: dict, config: dict) -> list[tuple[str, Any, Any]]:
  """(quantity, paper, ours) rows for the results index: Table 1's Spearman per method."""
  return [(f'{m} Spearman (targeted)', PAPER_TABLE1.get(m, {}).get('spearman'),
           (summary['table1'][m].get('spearman') or {}).get('mean'))
          for m in config['methods'] if 'spearman' in config['metrics']]


def finalize(output_dir: store.PathLike, *, data_dir: str | None = None,
             model_and_variables: tuple[Any, Any] | None = None) -> pathlib.Path:
  """Writes the per-example CSV/npz, ``summary.json``, the figures and ``report.md``.

  Args:
    output_dir: a finished ``compare_saliency.run``'s directory.
    data_dir: as in ``run``.
    model_and_variables: the run's checkpoint, already loaded; default loads it. A
      multi-process run must pass it: orbax loads collectively, and only process 0 finalizes.

  Returns:
    The path of ``report.md``.
  """
  from advsal_jax.studies import figures  # pylint: disable=g-import-not-at-top (matplotlib)
  out = pathlib.Path(output_dir)
  config = store.read_json(out / 'config.json')
  cfg = runner.config_from_json(study.Config, config)
  res = study.load_results(out)
  store.write_npz(out / 'per_example.npz', res)
  store.write_csv(out / 'per_example.csv', per_example_rows(res, config))
  summary = summarize(res, config)
  store.write_json(out / 'summary.json', summary)

  eps = list(cfg.untargeted_eps)
  curves = {m: {meth: np.array([[(summary['untargeted'][meth][str(e)][m]['all'] or {}).get(
      k, np.nan) for e in eps] for k in ('mean', 'ci_low', 'ci_high')])
                for meth in cfg.methods} for m in cfg.metrics}
  figures.curves(eps, curves, out / 'figure2_sweep.png', xlabel=f'FGSM eps ({cfg.eps_space} '
                 'space)', ylabel='mean similarity (clean vs adversarial map)')
  names = config['class_names']
  bars = {m: {meth: np.array([(summary['targeted_by_class'][meth][c][m]['all'] or
                               {'mean': np.nan})['mean'] for c in names])
              for meth in cfg.methods} for m in cfg.metrics}
  figures.grouped_bars(names, bars, out / 'figure4_by_target.png', xlabel='target class')
  model, variables = model_and_variables or checkpoints.load(cfg.checkpoint)[:2]
  test = data.load(config['dataset'], 'test', data_dir=data_dir)
  picks = sorted({0, len(eps) // 2, len(eps) - 1})
  e_pix = jnp.asarray(np.stack([study.eps_per_channel(eps[i], cfg, model.std) for i in picks]))
  maps_fn = compilation.jit(functools.partial(study.example_maps, model.apply, cfg=cfg,
                                               layer=config['cam_layer'], index=0))
  ex = jax.device_get(maps_fn(variables, data.to_float(test.images[:1]), e_pix))
  titles = [f'{t}\npred: {names[p]}' for t, p in
            zip(['clean'] + [f'eps {eps[i]}' for i in picks], ex['preds'].tolist())]
  figures.image_grid(ex['images'], titles, ex['maps'], out / 'figure1_example.png')
  shown = ['figure1_example.png', 'figure2_sweep.png', 'figure4_by_target.png']
  store.write_text(out / 'report.md', report_markdown(summary, config, figures=shown))
  return out / 'report.md'
