"""Study 002's outputs: per-example tables, the summary, figures and the report.

Reads only the run's shards and ``config.json``: neither the models nor the data are loaded.
"""

import pathlib
from typing import Any

import numpy as np

from advsal_jax.studies import advis_sweep as study
from advsal_jax.studies import advis_sweep_claims
from advsal_jax.studies import figures
from advsal_jax.studies import report
from advsal_jax.studies import store
from advsal_jax.studies import summary as summary_lib

SWEEP_METRICS = ('cam_shift', 'cam_spearman', 'cam_area', 'diff_l1', 'diff_area',
                 'logratio_cam_spearman', 'logratio_control_spearman', 'border_delta_share')
"""Per (image, source, eps) measurements, summarised by attack outcome."""
OVERLAPS = ('overlap_delta_spearman', 'overlap_delta_jaccard', 'overlap_diff_spearman',
            'overlap_diff_jaccard', 'overlap_delta_cosine')
"""DeepFool-vs-FGSM overlaps per (image, source)."""


def eps_key(e: float) -> str:
  """The summary's key of a budget: '4' for 4/255 (or '2.5')."""
  return f'{e:g}'


def outcomes(res: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Who classified what correctly, and which attacks succeeded.

  Returns:
    ``clean_correct`` bool[B,T]; ``success`` bool[B,S,E,T] (the target model classified the
    clean image correctly and the adversarial image wrongly); ``success_crop`` bool[B,S,E,T]
    (the same after upscaling and centre-cropping, among images the target classifies
    correctly when cropped); ``crop_correct`` bool[B,T]; ``evaluated`` and
    ``evaluated_crop`` bool[B,S,E,T], the denominators; ``deepfool_success`` bool[B,S].
  """
  label = res['label']
  clean_correct = res['clean_top_class'][..., 0] == label[:, None]
  crop_correct = res['clean_crop_pred'] == label[:, None]
  adv_wrong = res['adv_top_class'][..., 0] != label[:, None, None, None]
  crop_wrong = res['adv_crop_pred'] != label[:, None, None, None]
  evaluated = np.broadcast_to(clean_correct[:, None, None, :], adv_wrong.shape)
  evaluated_crop = np.broadcast_to(crop_correct[:, None, None, :], crop_wrong.shape)
  return {'clean_correct': clean_correct, 'crop_correct': crop_correct,
          'success': evaluated & adv_wrong, 'evaluated': evaluated,
          'success_crop': evaluated_crop & crop_wrong, 'evaluated_crop': evaluated_crop,
          # Sources and targets are the same models in the same order.
          'deepfool_success': clean_correct & (res['deepfool_pred'] != label[:, None])}


def rate(success: np.ndarray, evaluated: np.ndarray, *, seed: int) -> dict | None:
  """``describe`` of the success indicator over the evaluated examples."""
  return summary_lib.describe(success[evaluated].astype(float), seed=seed)


def per_example_rows(res: dict[str, np.ndarray], config: dict) -> list[dict[str, Any]]:
  """One row per (image, source model, eps): white-box outcome and every sweep measurement."""
  o = outcomes(res)
  models = config['models']
  rows = []
  for b, index in enumerate(res['index']):
    for si, s in enumerate(models):
      for ei, e in enumerate(config['eps']):
        rows.append({
            'index': int(index), 'label': int(res['label'][b]), 'source': s, 'eps': e,
            'clean_pred': int(res['clean_top_class'][b, si, 0]),
            'adv_pred': int(res['adv_top_class'][b, si, ei, si, 0]),
            'adv_prob': float(res['adv_top_prob'][b, si, ei, si, 0]),
            'success': bool(o['success'][b, si, ei, si]),
            **{m: float(res[m][b, si, ei]) for m in SWEEP_METRICS}})
  return rows


def transfer_rows(res: dict[str, np.ndarray], config: dict) -> list[dict[str, Any]]:
  """One row per (image, source, eps, target): predictions as is and after the crop."""
  models = config['models']
  rows = []
  for b, index in enumerate(res['index']):
    for si, s in enumerate(models):
      for ei, e in enumerate(config['eps']):
        for ti, t in enumerate(models):
          rows.append({
              'index': int(index), 'label': int(res['label'][b]), 'source': s, 'eps': e,
              'target': t, 'white_box': s == t,
              'clean_pred': int(res['clean_top_class'][b, ti, 0]),
              'adv_pred': int(res['adv_top_class'][b, si, ei, ti, 0]),
              'clean_crop_pred': int(res['clean_crop_pred'][b, ti]),
              'adv_crop_pred': int(res['adv_crop_pred'][b, si, ei, ti])})
  return rows


def deepfool_rows(res: dict[str, np.ndarray], config: dict) -> list[dict[str, Any]]:
  """One row per (image, source): DeepFool's outcome, size and overlap with FGSM."""
  o = outcomes(res)
  e_cmp = list(config['eps']).index(config['compare_eps'])
  rows = []
  for b, index in enumerate(res['index']):
    for si, s in enumerate(config['models']):
      rows.append({
          'index': int(index), 'label': int(res['label'][b]), 'source': s,
          'clean_pred': int(res['clean_top_class'][b, si, 0]),
          'deepfool_pred': int(res['deepfool_pred'][b, si]),
          'deepfool_success': bool(o['deepfool_success'][b, si]),
          'fgsm_success': bool(o['success'][b, si, e_cmp, si]),
          'deepfool_l2': float(res['deepfool_l2'][b, si]),
          'deepfool_linf': float(res['deepfool_linf'][b, si]),
          **{m: float(res[m][b, si]) for m in OVERLAPS}})
  return rows


def summarize(res: dict[str, np.ndarray], config: dict) -> dict[str, Any]:
  """Every aggregate of the report, with bootstrap CIs (``summary.describe``)."""
  seed = config['seed']
  o = outcomes(res)
  models, eps = config['models'], config['eps']
  e_cmp = list(eps).index(config['compare_eps'])
  h, w = config['image_shape'][:2]
  out: dict[str, Any] = {
      'num_images': int(len(res['index'])),
      'clean_accuracy': {t: summary_lib.describe(o['clean_correct'][:, ti], seed=seed)
                         for ti, t in enumerate(models)},
      'clean_crop_accuracy': {t: summary_lib.describe(o['crop_correct'][:, ti], seed=seed)
                              for ti, t in enumerate(models)},
      'band_share': float(study.border_mask(h, w, config['border']).mean()),
      'success': {}, 'success_crop': {}, 'sweep': {}, 'cam_area_clean': {},
      'border_grad_share': {}, 'deepfool': {}}
  for si, s in enumerate(models):
    white = o['success'][:, si, :, si]
    out['cam_area_clean'][s] = summary_lib.describe(res['cam_area_clean'][:, si], seed=seed)
    out['border_grad_share'][s] = summary_lib.describe(res['border_grad_share'][:, si],
                                                       seed=seed)
    out['success'][s], out['success_crop'][s], out['sweep'][s] = {}, {}, {}
    for ei, e in enumerate(eps):
      k = eps_key(e)
      out['success'][s][k] = {t: rate(o['success'][:, si, ei, ti], o['evaluated'][:, si, ei, ti],
                                      seed=seed) for ti, t in enumerate(models)}
      out['success_crop'][s][k] = {
          t: rate(o['success_crop'][:, si, ei, ti], o['evaluated_crop'][:, si, ei, ti],
                  seed=seed) for ti, t in enumerate(models)}
      out['sweep'][s][k] = {m: summary_lib.by_success(res[m][:, si, ei], white[:, ei],
                                                      seed=seed) for m in SWEEP_METRICS}
    df = {'success': rate(o['deepfool_success'][:, si], o['clean_correct'][:, si], seed=seed),
          'fgsm_success': out['success'][s][eps_key(eps[e_cmp])][s]}
    both = o['deepfool_success'][:, si] & o['success'][:, si, e_cmp, si]
    for m in ('deepfool_l2', 'deepfool_linf'):
      df[m] = summary_lib.describe(res[m][:, si][o['deepfool_success'][:, si]], seed=seed)
    for m in OVERLAPS:
      df[m] = summary_lib.by_success(res[m][:, si], both, seed=seed)
    out['deepfool'][s] = df
  return out


def load(output_dir: store.PathLike) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(sweep results, figure maps) of a finished run (the maps empty without that stage)."""
  out = pathlib.Path(output_dir)
  res = store.load_shards(out, study.SWEEP_STAGE)
  maps = (store.load_shards(out, study.MAPS_STAGE)
          if store.shard_files(out, study.MAPS_STAGE) else {})
  return res, maps


def _series(summary: dict, config: dict, get) -> dict[str, np.ndarray]:
  """Source model -> f[3, E] (mean, ci_low, ci_high) of ``get(source, eps_key)``."""
  out = {}
  for s in config['models']:
    stats = [get(s, eps_key(e)) for e in config['eps']]
    out[s] = np.array([[np.nan if st is None else st[f] for st in stats]
                       for f in ('mean', 'ci_low', 'ci_high')], float)
  return out


def _minmax(maps: np.ndarray) -> np.ndarray:
  lo = maps.min(axis=(-2, -1), keepdims=True)
  hi = maps.max(axis=(-2, -1), keepdims=True)
  return (maps - lo) / np.where(hi > lo, hi - lo, 1)


def _signed(maps: np.ndarray) -> np.ndarray:
  peak = np.abs(maps).max(axis=(-2, -1), keepdims=True)
  return maps / np.where(peak > 0, peak, 1)


def write_figures(out: pathlib.Path, res: dict, maps: dict, summary: dict,
                  config: dict) -> list[tuple[str, str]]:
  """Writes the PNGs; returns (file name, caption) pairs for the report."""
  models, eps, names = config['models'], config['eps'], config['class_names']
  shown = []
  white = lambda key: (lambda s, e: summary[key][s][e][s])
  sweep = lambda m: (lambda s, e: summary['sweep'][s][e][m]['all'])
  figures.curves(eps, {
      'white-box success': _series(summary, config, white('success')),
      'CAM centre-of-mass shift (px)': _series(summary, config, sweep('cam_shift')),
      'CAM area (share >= half max)': _series(summary, config, sweep('cam_area')),
      'GBVS difference L1': _series(summary, config, sweep('diff_l1')),
      'Spearman(log-ratio diff, CAM)': _series(summary, config,
                                               sweep('logratio_cam_spearman'))},
      out / 'fig_vs_eps.png', xlabel='eps (/255)', ylabel='mean [95% CI]')
  shown.append(('fig_vs_eps.png', 'Every measurement against eps, one line per attacked model'))
  figures.curves(eps, {f'classified by {t}': {
      f'from {s}': _series(summary, config, lambda s_, e, t=t: summary['success'][s_][e][t])[s]
      for s in models} for t in models}, out / 'fig_transfer.png', xlabel='eps (/255)',
      ylabel='FGSM success')
  shown.append(('fig_transfer.png', 'Transfer: success of the attack made on each model '
                '(white box where source = target)'))
  k = eps_key(config['compare_eps'])
  figures.matrix(np.array([[summary['success'][s][k][t]['mean'] if summary['success'][s][k][t]
                            else np.nan for t in models] for s in models]), models, models,
                 out / 'fig_transfer_matrix.png', title=f'FGSM success at eps {k}/255',
                 xlabel='classified by', ylabel='attack made on')
  shown.append(('fig_transfer_matrix.png', f'Transfer matrix at eps {k}/255'))
  figures.curves(eps, {f'classified by {t}': {
      **{f'{s}, as is': _series(summary, config, lambda s_, e, t=t: summary['success'][s_][e][t])[s]
         for s in models},
      **{f'{s}, cropped': _series(
          summary, config, lambda s_, e, t=t: summary['success_crop'][s_][e][t])[s]
         for s in models}} for t in models}, out / 'fig_crop.png', xlabel='eps (/255)',
      ylabel='FGSM success')
  shown.append(('fig_crop.png', f"Success as is vs after upscaling by "
                f"{config['crop_scale']:.3f} and centre-cropping"))
  band = np.full((3, len(eps)), summary['band_share'])
  figures.curves(eps, {'perturbation energy in the border band': _series(
      summary, config, sweep('border_delta_share'))}, out / 'fig_border.png',
      xlabel='eps (/255)', ylabel='share of energy',
      baseline={'perturbation energy in the border band': band})
  shown.append(('fig_border.png', "Share of the FGSM perturbation's energy in the "
                f"{config['border']}-pixel border band; dashed: the band's share of pixels "
                "(a uniform perturbation)"))
  if maps:
    for si, s in enumerate(models):
      x, x_adv = maps['x'][0], maps['x_adv'][0, si]
      images = np.concatenate([x[None], x_adv])
      preds = [maps['clean_top_class'][0, si, 0]] + [
          maps['adv_top_class'][0, si, ei, si, 0] for ei in range(len(eps))]
      titles = [f'{"clean" if i == 0 else f"eps {eps_key(eps[i - 1])}"}: {names[p]}'
                for i, p in enumerate(preds)]
      cams = np.concatenate([maps['cam_clean'][0, si][None], maps['cam_adv'][0, si]])
      gb = np.concatenate([maps['gbvs_clean'][0][None], maps['gbvs_adv'][0, si]])
      name = f'fig_sweep_{s}.png'
      figures.image_grid(images, titles, {'Grad-CAM': _minmax(cams), 'GBVS': _minmax(gb)},
                         out / name)
      figures.image_grid(images, titles, {'saliency difference': _signed(gb - gb[0])},
                         out / f'fig_difference_{s}.png', cmap='coolwarm', signed=True)
      shown.append((name, f'Image {int(maps["index"][0])} attacked on {s}: Grad-CAM of each '
                    'prediction and GBVS'))
      shown.append((f'fig_difference_{s}.png', 'The GBVS saliency difference (adv - clean)'))
    si = 0
    e_cmp = list(eps).index(config['compare_eps'])
    fgsm = maps['x_adv'][:, si, e_cmp] - maps['x']
    df = maps['x_deepfool'][:, si] - maps['x']
    titles = [f'{int(i)}: {names[int(y)]}' for i, y in zip(maps['index'], maps['label'])]
    figures.image_grid(maps['x'], titles, {
        f'|FGSM delta| (eps {eps_key(eps[e_cmp])})': _minmax(np.abs(fgsm).sum(-1)),
        '|DeepFool delta|': _minmax(np.abs(df).sum(-1))}, out / 'fig_deepfool_delta.png')
    figures.image_grid(maps['x'], titles, {
        'GBVS diff, FGSM': _signed(maps['gbvs_adv'][:, si, e_cmp] - maps['gbvs_clean']),
        'GBVS diff, DeepFool': _signed(maps['gbvs_deepfool'][:, si] - maps['gbvs_clean'])},
        out / 'fig_deepfool_gbvs.png', cmap='coolwarm', signed=True)
    shown.append(('fig_deepfool_delta.png', f'Where FGSM and DeepFool change the image ({models[0]})'))
    shown.append(('fig_deepfool_gbvs.png', 'Their GBVS saliency differences'))
  return shown


def top5_table(maps: dict, config: dict, image: int = 0) -> list[str]:
  """The paper's table: each model's top-5 on the adversarial images made on each model."""
  models, eps, names = config['models'], config['eps'], config['class_names']
  rows = []
  for ti, t in enumerate(models):
    for si, s in enumerate(models):
      cells = []
      for ei in range(len(eps)):
        cls, prob = maps['adv_top_class'][image, si, ei, ti], maps['adv_top_prob'][image, si, ei, ti]
        cells.append('; '.join(f'{names[c]} {100 * p:.1f}' for c, p in zip(cls, prob)))
      rows.append((f'{t} on images attacked on {s}', *cells))
  return report.table(('classifier / attack', *(f'eps {eps_key(e)}' for e in eps)), rows)


def report_markdown(summary: dict, config: dict, *, maps: dict,
                    figures_: list[tuple[str, str]]) -> str:
  """The report: setup, claims, the tables behind them, figures."""
  models, eps = config['models'], config['eps']
  doc = report.Markdown('Study 002: FGSM epsilon sweep, CAM and graph-based visual saliency '
                        '(AdVis.js)')
  doc.paragraph(
      f"{summary['num_images']} {config['dataset']} test images; models "
      + ', '.join(f'{m} ({a + ", " if a != m else ""}test accuracy {acc:.3f})' for m, a, acc in zip(
          models, config['architectures'], config['checkpoint_test_accuracy']))
      + f". Untargeted FGSM on the true label at eps {', '.join(map(eps_key, eps))} /255. "
      'The paper used ImageNet MobileNet V1/V2 in the browser; we have no ImageNet, so its '
      'qualitative statements are measured here on CIFAR-10 models. CAM is computed as '
      'Grad-CAM on each model\'s last convolutional layer (equal to CAM up to a constant on '
      'the MobileNets, which pool that layer into one dense layer). Success rates count '
      'images the classifier got right before the attack.')
  doc.heading('Claims')
  doc.lines(report.claims(advis_sweep_claims.claims(summary, config)))
  doc.heading('White-box success and saliency change per eps')
  rows = []
  for s in models:
    for e in eps:
      k = eps_key(e)
      sw = summary['sweep'][s][k]
      rows.append((s, k, report.with_ci(summary['success'][s][k][s]),
                   report.with_ci(sw['cam_shift']['all'], '.2f'),
                   report.with_ci(sw['cam_area']['all']),
                   report.with_ci(sw['diff_l1']['all']),
                   report.with_ci(sw['logratio_cam_spearman']['all']),
                   report.with_ci(sw['logratio_control_spearman']['all'])))
  doc.lines(report.table(('model', 'eps', 'success', 'CAM shift (px)', 'CAM area',
                          'GBVS diff L1', 'rho(log-ratio, CAM)', 'control rho'), rows))
  doc.heading('Transfer (success of attacks made on the row model)')
  for e in eps:
    k = eps_key(e)
    doc.paragraph(f'eps {k}/255:')
    doc.lines(report.table(('made on \\ classified by', *models), [
        (s, *(report.with_ci(summary['success'][s][k][t]) for t in models)) for s in models]))
  doc.heading('Crop vs resize')
  doc.lines(report.table(('model', 'clean accuracy', 'after upscale + centre crop'), [
      (t, report.with_ci(summary['clean_accuracy'][t]),
       report.with_ci(summary['clean_crop_accuracy'][t])) for t in models]))
  doc.heading('DeepFool vs FGSM')
  doc.lines(report.table(
      ('model', 'DeepFool success', f"FGSM success (eps {eps_key(config['compare_eps'])})",
       'DeepFool L2', 'DeepFool Linf', 'rho |delta|', 'rho GBVS diff', 'Jaccard GBVS diff',
       'cosine delta'),
      [(s, report.with_ci(d['success']), report.with_ci(d['fgsm_success']),
        report.with_ci(d['deepfool_l2']), report.with_ci(d['deepfool_linf'], '.4f'),
        report.with_ci(d['overlap_delta_spearman']['all']),
        report.with_ci(d['overlap_diff_spearman']['all']),
        report.with_ci(d['overlap_diff_jaccard']['all']),
        report.with_ci(d['overlap_delta_cosine']['all']))
       for s, d in summary['deepfool'].items()]))
  if maps:
    doc.heading('Top-5 predictions of one image (the paper\'s table)')
    doc.paragraph(f"Image {int(maps['index'][0])} ({config['class_names'][int(maps['label'][0])]}); "
                  'probabilities in %.')
    doc.lines(top5_table(maps, config))
  doc.heading('Figures')
  for name, caption in figures_:
    doc.figure(name, caption)
  return doc.text()


def headline(summary: dict, config: dict) -> list[tuple[str, Any, Any]]:
  """(quantity, paper, ours) rows for the results index."""
  first, last = eps_key(config['eps'][0]), eps_key(config['eps'][-1])
  rows = []
  for s in config['models'][:2]:
    rows.append((f'{s} white-box FGSM success, eps {first} -> {last}', 'grows with eps',
                 f"{summary['success'][s][first][s]['mean']:.2f} -> "
                 f"{summary['success'][s][last][s]['mean']:.2f}"))
  return rows


def finalize(output_dir: store.PathLike) -> pathlib.Path:
  """Writes the per-example CSVs, ``summary.json``, figures and ``report.md``.

  Args:
    output_dir: a finished ``advis_sweep.run``'s directory.

  Returns:
    The path of ``report.md``.
  """
  out = pathlib.Path(output_dir)
  config = store.read_json(out / 'config.json')
  res, maps = load(out)
  store.write_csv(out / 'per_example.csv', per_example_rows(res, config))
  store.write_csv(out / 'transfer.csv', transfer_rows(res, config))
  store.write_csv(out / 'deepfool.csv', deepfool_rows(res, config))
  summary = summarize(res, config)
  store.write_json(out / 'summary.json', summary)
  shown = write_figures(out, res, maps, summary, config)
  store.write_text(out / 'report.md',
                   report_markdown(summary, config, maps=maps, figures_=shown))
  return out / 'report.md'
