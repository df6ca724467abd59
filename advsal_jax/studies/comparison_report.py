"""Study 000 results: per-example table, aggregates, Table 1 and the markdown report."""

import csv
import json
import pathlib
from typing import Any

import numpy as np

from advsal_jax import metrics

# Table 1 of the paper (targeted FGSM, eps 0.4): Spearman / mSSIM / HOG-Pearson.
PAPER_TABLE1 = {
    'smoothgrad': {'spearman': 0.288, 'mean_ssim': 0.999, 'hog_pearson': 0.495},
    'grad_cam': {'spearman': 0.0804, 'mean_ssim': 0.689, 'hog_pearson': 0.298},
    'guided_backprop': {'spearman': 0.602, 'mean_ssim': 0.895, 'hog_pearson': 0.668},
}
_SPLITS = {'all': None, 'success': True, 'failed': False}


def load_shards(output_dir: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Concatenates every finished batch, in test-index order.

  Returns:
    ``index``/``label``/``real_pred`` [N] and the per-variant arrays [V, N].
  """
  files = sorted((pathlib.Path(output_dir) / 'shards').glob('batch_*.npz'))
  if not files:
    raise FileNotFoundError(f'No finished batches in {output_dir}/shards.')
  parts = [dict(np.load(f)) for f in files]
  out = {}
  for key in parts[0]:
    if key == 'seconds':
      out[key] = np.array([float(p[key]) for p in parts])
    else:
      out[key] = np.concatenate([p[key] for p in parts], axis=-1)
  order = np.argsort(out['index'], kind='stable')
  return {k: (v if k == 'seconds' else v[..., order]) for k, v in out.items()}


def per_example_rows(res: dict[str, np.ndarray], config: dict) -> list[dict[str, Any]]:
  """One row per (image, adversarial variant, method) with the pair's metrics."""
  variants = _variants(config)
  rows = []
  for v, (kind, eps) in enumerate(variants):
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


def _variants(config: dict) -> list[tuple[str, float]]:
  k = len(config['class_names'])
  return ([('untargeted', float(e)) for e in config['untargeted_eps']] +
          [('targeted', float(config['targeted_eps']))] * (k - 1))


def _stats(values: np.ndarray, seed: int) -> dict[str, float] | None:
  """n, n_undefined (NaN pairs, e.g. a constant map), mean, std, 95 % CI of the finite values."""
  finite = np.isfinite(values)
  undefined = int((~finite).sum())
  values = values[finite]
  if len(values) == 0:
    return None
  out = {'n': int(len(values)), 'n_undefined': undefined, 'mean': float(values.mean()),
         'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0}
  if len(values) > 1:
    ci = metrics.bootstrap_ci(values, rng=seed, n_resamples=1000, method='percentile')
    out.update(ci_low=ci.low, ci_high=ci.high)
  else:
    out.update(ci_low=out['mean'], ci_high=out['mean'])
  return out


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

  def cell(method, rows, mask_fn):
    out = {}
    for name in config['metrics']:
      vals = res[f'{method}/{name}'][rows]
      ok = success[rows]
      extra = mask_fn(rows)
      out[name] = {split: _stats(vals[extra & (ok if want else ~ok)] if want is not None
                                 else vals[extra], seed)
                   for split, want in _SPLITS.items()}
    return out

  summary: dict[str, Any] = {'untargeted': {}, 'targeted_by_class': {}, 'table1': {}}
  for method in config['methods']:
    summary['untargeted'][method] = {
        str(config['untargeted_eps'][i]): cell(method, [i], lambda r: np.ones_like(success[r], bool))
        for i in unt}
    by_class = {}
    for c, cname in enumerate(config['class_names']):
      by_class[cname] = cell(method, tgt, lambda r, c=c: res['target'][r] == c)
    summary['targeted_by_class'][method] = by_class
    summary['table1'][method] = {
        name: _stats(res[f'{method}/{name}'][tgt].ravel(), seed) for name in config['metrics']}
  n = len(res['index'])
  summary['num_examples'] = n
  summary['clean_accuracy'] = float((res['real_pred'] == res['label']).mean())
  summary['attack_success'] = {
      'untargeted': {str(config['untargeted_eps'][i]): float(success[i].mean()) for i in unt},
      'targeted': float(success[tgt].mean()) if tgt else None}
  summary['mean_linf'] = {str(config['untargeted_eps'][i]): float(res['linf'][i].mean())
                          for i in unt}
  seconds = float(res['seconds'].sum())
  summary['compute_seconds'] = seconds
  summary['images_per_second'] = n / seconds if seconds > 0 else None
  return summary


def table1_rows(summary: dict, config: dict) -> list[tuple[str, str, float | None, float]]:
  """(method, metric, paper value or None, our mean) for the report's Table 1."""
  rows = []
  for method in config['methods']:
    for name in config['metrics']:
      paper = PAPER_TABLE1.get(method, {}).get(name)
      ours = summary['table1'][method][name]
      rows.append((method, name, paper, ours['mean'] if ours else float('nan')))
  return rows


def grad_cam_least_similar(summary: dict, config: dict) -> dict[str, bool] | None:
  """Per metric: does Grad-CAM give the lowest Table-1 similarity of all methods?"""
  if 'grad_cam' not in config['methods'] or len(config['methods']) < 2:
    return None
  out = {}
  for name in config['metrics']:
    means = {m: summary['table1'][m][name]['mean'] for m in config['methods']
             if summary['table1'][m][name]}
    out[name] = min(means, key=means.get) == 'grad_cam'
  return out


def write_csv(rows: list[dict], path: pathlib.Path):
  """Writes the per-example rows (atomically)."""
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'w', newline='') as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  tmp.replace(path)


def report_markdown(summary: dict, config: dict, *, figures: list[str]) -> str:
  """The human-readable report: Table 1 beside the paper's, the conclusion, run facts."""
  lines = ['# Study 000: saliency maps of clean vs FGSM-adversarial images', '',
           f"Model `{config['model']}` (checkpoint test accuracy "
           f"{config['checkpoint_test_accuracy']:.4f}); first {summary['num_examples']} CIFAR-10 "
           f"test images; clean accuracy on them {summary['clean_accuracy']:.4f}.", '',
           f"Budgets are in the model's {config['eps_space']} input space"
           + (" (the paper's convention): a budget eps is applied in pixel space as eps * std "
              'per channel (std = the normalisation constants), then clipped to [0, 1].'
              if config['eps_space'] == 'normalized' else ' ([0, 1] pixel units).'), '',
           '## Table 1: targeted FGSM (eps %s), mean similarity over all targets' %
           config['targeted_eps'], '',
           '| method | metric | paper | ours | 95 % CI |', '| --- | --- | --- | --- | --- |']
  for method, name, paper, ours in table1_rows(summary, config):
    st = summary['table1'][method][name]
    ci = f"[{st['ci_low']:.3f}, {st['ci_high']:.3f}]" if st else 'n/a'
    lines.append(f"| {method} | {name} | {'' if paper is None else paper} | {ours:.4f} | {ci} |")
  undefined = {f'{m}/{n}': st['n_undefined'] for m, tab in summary['table1'].items()
               for n, st in tab.items() if st and st['n_undefined']}
  if undefined:
    lines += ['', 'Pairs left out as undefined (a constant map has no rank correlation): ' +
              ', '.join(f'{k}: {v}' for k, v in undefined.items()) + '.']
  verdict = grad_cam_least_similar(summary, config)
  lines += ['', '## Does Grad-CAM give the least similar maps on every metric?', '']
  if verdict is None:
    lines.append('Not tested: the run did not include Grad-CAM and another method.')
  else:
    holds = all(verdict.values())
    lines.append(('**Yes**' if holds else '**No**') + ' for this model: ' + ', '.join(
        f"{name}: {'lowest' if ok else 'not lowest'}" for name, ok in verdict.items()) + '.')
  lines += ['', '## Attack success', '', '| attack | eps | success rate | mean L-inf (pixels) |',
            '| --- | --- | --- | --- |']
  for eps, rate in summary['attack_success']['untargeted'].items():
    lines.append(f"| untargeted FGSM | {eps} | {rate:.4f} | {summary['mean_linf'][eps]:.4f} |")
  if summary['attack_success']['targeted'] is not None:
    lines.append(f"| targeted FGSM (all targets) | {config['targeted_eps']} | "
                 f"{summary['attack_success']['targeted']:.4f} | |")
  lines += ['', '## Untargeted sweep (mean similarity, all pairs)', '',
            '| method | ' + ' | '.join(f'{m} @ eps {e}' for m in config['metrics']
                                       for e in config['untargeted_eps']) + ' |',
            '| --- |' + ' --- |' * (len(config['metrics']) * len(config['untargeted_eps']))]
  for method in config['methods']:
    cells = [summary['untargeted'][method][str(e)][m]['all'] for m in config['metrics']
             for e in config['untargeted_eps']]
    lines.append(f'| {method} | ' + ' | '.join(f"{c['mean']:.3f}" if c else 'n/a'
                                                 for c in cells) + ' |')
  ips = summary['images_per_second']
  lines += ['', '## Run', '',
            f"Compute time {summary['compute_seconds']:.1f} s over {summary['num_examples']} "
            f"images ({ips:.2f} images/s, compilation included); methods "
            f"{', '.join(config['methods'])}; SmoothGrad N={config['smoothgrad_samples']}, "
            f"noise {config['smoothgrad_noise']}; seed {config['seed']}.", '']
  lines += [f'![{f}]({f})' for f in figures]
  return '\n'.join(lines) + '\n'


def write_json(obj: Any, path: pathlib.Path):
  """Writes ``obj`` as indented JSON (atomically)."""
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(obj, indent=2) + '\n')
  tmp.replace(path)
