"""Study 001's figures from a finished run's shards and summary, as PNGs.

Figs. 1a/1b (histograms of the class-pair statistics), 3 (maps of clean and adversarial
images, every method), 4 (recovery curves), 5 (GBP and EGBP maps of failed and successful
attacks, and the failed-vs-successful statistics). This module imports matplotlib (through
``figures``).
"""

import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import checkpoints
from advsal_jax import compilation
from advsal_jax import data
from advsal_jax.studies import explain_adversarial_batches as batches
from advsal_jax.studies import explain_adversarial_config as settings
from advsal_jax.studies import explain_adversarial_summary as study_summary
from advsal_jax.studies import figures
from advsal_jax.studies import runner
from advsal_jax.studies import store

def _histograms(panels: Mapping[str, Mapping[str, np.ndarray]], path: pathlib.Path, *,
                xlabel: str, bins: np.ndarray):
  """One panel per entry, one step histogram per series (finite values, shared ``bins``)."""
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


def write_figures(out: pathlib.Path, res: study_summary.Results, s: Mapping[str, Any],
                  config: Mapping[str, Any], *, data_dir: str | None,
                  model_and_variables: tuple[Any, Any] | None) -> list[str]:
  """Writes every figure the finished stages allow into ``out``.

  Args:
    out: the run's output directory.
    res: stage -> name -> array, the run's shards (``explain_adversarial.load_results``).
    s: the run's summary (``explain_adversarial_summary.summarize``).
    config: the run's ``config.json``.
    data_dir: the offline data directory (the clean images of Figs. 3 and 5).
    model_and_variables: the run's checkpoint, already loaded; None loads it.

  Returns:
    The file names written, sorted.
  """
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
    figures.curves(rec['grid'], {title: {settings.SHORT[n]: v for n, v in curves.items()}},
                   out / 'figure4_recovery.png', xlabel='pixels perturbed (%)',
                   ylabel='accuracy (true label)',
                   baseline={title: np.array([rec['curves']['random'][k] for k in
                                              ('mean', 'ci_low', 'ci_high')])})
    written.append('figure4_recovery.png')
  fvs = s.get('failed_vs_successful')
  if fvs:
    groups = [*settings.ATTACKS, 'all']
    panels = {f'{settings.SHORT[m]} {stat}': {
        split_label: np.array([(fvs[g][m][stat][split] or {'mean': np.nan})['mean']
                               for g in groups])
        for split, split_label in (('failed', 'Adv_f'), ('success', 'Adv_s'))}
              for m in (settings.GBP, settings.EGBP) for stat in study_summary.SHIFT_STATS}
    figures.grouped_bars([settings.ATTACK_LABELS.get(g, g) for g in groups], panels,
                         out / 'figure5_statistics.png', xlabel='attack')
    written.append('figure5_statistics.png')
  if 'maps' not in res:
    return sorted(written)
  cfg = runner.config_from_json(settings.Config, config)
  model, variables = model_and_variables or checkpoints.load(cfg.checkpoint)[:2]
  test = data.load(config['dataset'], 'test', data_dir=data_dir)
  a = res['attacks']
  rows = _pick(a['success'], 2)
  idx = a['index'][rows]
  maps_fn = compilation.jit(lambda p, x, xa, cp, ap, i: batches.example_maps(
      model.apply, p, x, xa, cp, ap, i, cfg=cfg, layer=config['cam_layer']))
  ex = jax.device_get(maps_fn(variables, jnp.asarray(data.to_float(test.images[idx])),
                              jnp.asarray(a['x_adv'][rows]),
                              jnp.asarray(a['clean_pred'][rows]),
                              jnp.asarray(a['adv_pred'][rows]), jnp.asarray(idx, jnp.int32)))
  names = config['class_names']
  images = np.concatenate([data.to_float(test.images[idx])[:, None], a['x_adv'][rows]], 1)
  images = images.reshape(-1, *images.shape[2:])
  preds = np.concatenate([a['clean_pred'][rows][:, None], a['adv_pred'][rows]], 1)
  titles = []
  for j, i in enumerate(idx):
    titles.append(f'#{i} clean\npred {names[preds[j, 0]]}')
    for k, att in enumerate(settings.ATTACKS):
      outcome = 'success' if a['success'][rows[j], k] else 'failed'
      titles.append(f'{settings.ATTACK_LABELS[att]} {outcome}\npred {names[preds[j, k + 1]]}')
  flat = {settings.SHORT[m]: ex[m].reshape(-1, *ex[m].shape[2:]) for m in cfg.methods}
  figures.image_grid(images, titles, flat, out / 'figure3_maps.png')
  written.append('figure3_maps.png')
  fig5 = [m for m in (settings.GBP, settings.EGBP) if m in cfg.methods]
  if fig5:
    # EGBP explains each image's prediction against its runner-up class.
    runner_up = np.argsort(-np.asarray(jax.device_get(compilation.jit(model.apply)(
        variables, jnp.asarray(images)))), axis=-1)[:, 1]
    pred = preds.reshape(-1)
    map_titles = {settings.GBP: [f'GBP: {names[p]}' for p in pred],
                  settings.EGBP: [f'EGBP: {names[p]}\nvs {names[r]}'
                                  for p, r in zip(pred, runner_up)]}
    _maps_with_predictions(
        images, [t.split('\n')[0] for t in titles],
        {settings.SHORT[m]: (flat[settings.SHORT[m]], map_titles[m]) for m in fig5},
        out / 'figure5_maps.png')
    written.append('figure5_maps.png')
  return sorted(written)


def _maps_with_predictions(images: np.ndarray, image_titles: list[str],
                           rows: Mapping[str, tuple[np.ndarray, list[str]]],
                           path: pathlib.Path):
  """Fig. 5: images on top, a row of maps per method, each map titled with its class.

  The paper prints under each map the prediction it explains; here it is the map's title,
  above it, so the class a map explains (and EGBP's contrast class) reads with the map.

  Args:
    images: f32[N,H,W,C] in [0, 1], C in {1, 3}.
    image_titles: N titles of the images (which image, the attack and its outcome).
    rows: row label -> (f32[N,H,W] maps in [0, 1], N titles naming the explained class).
    path: PNG to write.
  """
  plt = figures.plt
  n = len(images)
  fig, axes = plt.subplots(1 + len(rows), n, figsize=(2.1 * n, 2.6 * (1 + len(rows))),
                           squeeze=False, layout='constrained')
  for j in range(n):
    img = np.clip(images[j], 0, 1)
    axes[0, j].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap='gray', vmin=0, vmax=1)
    axes[0, j].set_title(image_titles[j], fontsize=8)
    for i, (label, (maps, titles)) in enumerate(rows.items(), start=1):
      axes[i, j].imshow(maps[j], cmap='inferno', vmin=0, vmax=1)
      axes[i, j].set_title(titles[j], fontsize=8)
      if j == 0:
        axes[i, j].set_ylabel(label, fontsize=9)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  store.write_png(path, fig)
  plt.close(fig)
