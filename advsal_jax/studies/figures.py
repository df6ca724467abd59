"""The studies' figures (the only module that imports matplotlib); every PNG written atomically."""

from typing import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from advsal_jax.studies import store

# panel title -> series name -> f[3, X] rows (mean, ci_low, ci_high)
Curves = Mapping[str, Mapping[str, np.ndarray]]


def _save(fig, path: store.PathLike):
  store.write_png(path, fig)
  plt.close(fig)


def curves(x: Sequence[float], panels: Curves, path: store.PathLike, *, xlabel: str,
           ylabel: str, baseline: Mapping[str, np.ndarray] | None = None):
  """One panel per entry, one line per series with its CI band.

  Args:
    x: the X positions shared by every series.
    panels: panel title -> series name -> f[3, X] (mean, ci_low, ci_high).
    path: PNG to write.
    xlabel, ylabel: axis labels (ylabel on the first panel).
    baseline: optional panel title -> f[3, X] drawn dashed grey as 'random'.
  """
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  for ax, (title, series) in zip(axes[0], panels.items()):
    for name, (mean, low, high) in series.items():
      ax.plot(x, mean, marker='o', markersize=3, label=name)
      ax.fill_between(x, low, high, alpha=0.25)
    if baseline is not None and title in baseline:
      mean, low, high = baseline[title]
      ax.plot(x, mean, '--', color='grey', label='random')
      ax.fill_between(x, low, high, color='grey', alpha=0.15)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel(ylabel)
  axes[0, -1].legend(fontsize=8)
  _save(fig, path)


def grouped_bars(categories: Sequence[str], panels: Mapping[str, Mapping[str, np.ndarray]],
                 path: store.PathLike, *, xlabel: str):
  """One panel (row) per entry, one bar per series in each category.

  Args:
    categories: the K category names on the X axis.
    panels: panel title (its Y label) -> series name -> f[K] (NaN where undefined).
    path: PNG to write.
    xlabel: the X axis label.
  """
  fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), squeeze=False)
  x = np.arange(len(categories))
  for ax, (title, series) in zip(axes[:, 0], panels.items()):
    width = 0.8 / max(len(series), 1)
    for i, (name, v) in enumerate(series.items()):
      ax.bar(x + (i - (len(series) - 1) / 2) * width, v, width, label=name)
    ax.set_ylabel(title)
    ax.set_xticks(x, categories, fontsize=8)
    ax.grid(axis='y', alpha=0.3)
  axes[0, 0].legend(fontsize=8, ncol=max(len(s) for s in panels.values()))
  axes[-1, 0].set_xlabel(xlabel)
  _save(fig, path)


def image_grid(images: np.ndarray, column_titles: Sequence[str],
               rows: Mapping[str, np.ndarray], path: store.PathLike, *,
               cmap: str = 'inferno', signed: bool = False):
  """Images in the top row, one row of maps per entry below them.

  Args:
    images: f32[N,H,W,C] in [0, 1], C in {1, 3}.
    column_titles: N titles (what the column shows, its prediction).
    rows: row label -> f32[N,H,W] maps, in [0, 1] (or [-1, 1] with ``signed``).
    path: PNG to write.
    cmap: the maps' colour map (``'coolwarm'`` suits signed maps).
    signed: maps in [-1, 1] instead of [0, 1].
  """
  n = len(images)
  fig, axes = plt.subplots(1 + len(rows), n, figsize=(2.1 * n, 2.2 * (1 + len(rows))),
                           squeeze=False)
  for j in range(n):
    img = np.clip(images[j], 0, 1)
    axes[0, j].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap='gray', vmin=0, vmax=1)
    axes[0, j].set_title(column_titles[j], fontsize=8)
    for i, (label, maps) in enumerate(rows.items(), start=1):
      axes[i, j].imshow(maps[j], cmap=cmap, vmin=-1 if signed else 0, vmax=1)
      if j == 0:
        axes[i, j].set_ylabel(label, fontsize=8)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  _save(fig, path)


def matrix(values: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str],
           path: store.PathLike, *, title: str, xlabel: str, ylabel: str,
           errors: np.ndarray | None = None, vmin: float = 0.0, vmax: float = 1.0):
  """A heatmap of a matrix with each cell's value (and ``+-`` error) written in it.

  Args:
    values: f[R, C] (NaN cells left blank).
    row_labels, column_labels: R and C labels.
    path: PNG to write.
    title, xlabel, ylabel: texts.
    errors: optional f[R, C] shown as ``value +- error``.
    vmin, vmax: the colour scale.
  """
  values = np.asarray(values, float)
  fig, ax = plt.subplots(figsize=(1.1 * values.shape[1] + 2, 0.8 * values.shape[0] + 1.5))
  ax.imshow(values, cmap='viridis', vmin=vmin, vmax=vmax)
  for r in range(values.shape[0]):
    for c in range(values.shape[1]):
      if np.isfinite(values[r, c]):
        text = f'{values[r, c]:.2f}' + (f'\n±{errors[r, c]:.2f}' if errors is not None else '')
        ax.text(c, r, text, ha='center', va='center', fontsize=7,
                color='white' if values[r, c] < (vmin + vmax) / 2 else 'black')
  ax.set_xticks(range(values.shape[1]), column_labels, fontsize=8)
  ax.set_yticks(range(values.shape[0]), row_labels, fontsize=8)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  _save(fig, path)
