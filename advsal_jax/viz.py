"""Figures (the only module that imports matplotlib)."""

import pathlib
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def _save(fig, path: str | pathlib.Path):
  path = pathlib.Path(path)
  tmp = path.with_name(path.stem + '.tmp' + path.suffix)
  fig.savefig(tmp, dpi=120, bbox_inches='tight')
  plt.close(fig)
  tmp.replace(path)


def example_grid(images: np.ndarray, preds: Sequence[int], maps: dict[str, np.ndarray],
                 class_names: Sequence[str], column_titles: Sequence[str],
                 path: str | pathlib.Path):
  """Figure 1/3: an image and its adversarial versions (top row), one row of maps per method.

  Args:
    images: f32[N,H,W,C] in [0, 1] (clean first).
    preds: N predicted classes (shown in the titles).
    maps: method -> f32[N,H,W] in [0, 1].
    class_names: names of the classes.
    column_titles: N titles (e.g. 'clean', 'eps 0.2').
    path: PNG to write.
  """
  n, rows = len(images), 1 + len(maps)
  fig, axes = plt.subplots(rows, n, figsize=(2.1 * n, 2.2 * rows), squeeze=False)
  for j in range(n):
    img = images[j]
    axes[0, j].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap='gray')
    axes[0, j].set_title(f'{column_titles[j]}\npred: {class_names[preds[j]]}', fontsize=8)
    for i, (method, m) in enumerate(maps.items(), start=1):
      axes[i, j].imshow(m[j], cmap='inferno', vmin=0, vmax=1)
      if j == 0:
        axes[i, j].set_ylabel(method, fontsize=8)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  _save(fig, path)


def metric_vs_eps(eps: Sequence[float], curves: dict[str, dict[str, np.ndarray]],
                  path: str | pathlib.Path, *, xlabel: str = 'eps'):
  """Figure 2: one panel per metric, mean similarity vs eps, one line per method, CI band.

  Args:
    eps: the E budgets.
    curves: metric -> method -> f32[3, E] rows (mean, ci_low, ci_high).
    path: PNG to write.
  """
  fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
  for ax, (metric, by_method) in zip(axes[0], curves.items()):
    for method, (mean, low, high) in by_method.items():
      ax.plot(eps, mean, marker='o', label=method)
      ax.fill_between(eps, low, high, alpha=0.25)
    ax.set_title(metric)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel('mean similarity (clean vs adversarial map)')
  axes[0, -1].legend(fontsize=8)
  _save(fig, path)


def bars_by_class(class_names: Sequence[str], values: dict[str, dict[str, np.ndarray]],
                  path: str | pathlib.Path):
  """Figure 4: per target class, one bar per method, one panel per metric.

  Args:
    class_names: the K target classes.
    values: metric -> method -> f32[K] means (NaN where a class has no pair).
    path: PNG to write.
  """
  fig, axes = plt.subplots(len(values), 1, figsize=(9, 2.6 * len(values)), squeeze=False)
  x = np.arange(len(class_names))
  for ax, (metric, by_method) in zip(axes[:, 0], values.items()):
    width = 0.8 / max(len(by_method), 1)
    for i, (method, v) in enumerate(by_method.items()):
      ax.bar(x + (i - (len(by_method) - 1) / 2) * width, v, width, label=method)
    ax.set_ylabel(metric)
    ax.set_xticks(x, class_names, fontsize=8)
    ax.grid(axis='y', alpha=0.3)
  axes[0, 0].legend(fontsize=8, ncol=len(values))
  axes[-1, 0].set_xlabel('target class')
  _save(fig, path)
