"""The ``lime`` package's image explainer as the peer of the benchmark's ``lime`` workload.

With ``BenchmarkConfig.compare_lime``, ``runner.benchmark`` times
``lime_image.LimeImageExplainer`` (the reference implementation of Ribeiro et al.) with the
settings of our ``lime`` workload: the same superpixels (a ``segmentation_fn`` that returns
ours), ``num_samples``, kernel width on the cosine distance, ridge penalty
(``Ridge(alpha=ridge_alpha)`` on every superpixel: ``feature_selection='none'``), "off"
superpixels filled as ours fills them (``hide_color`` = our ``fill``; None: each superpixel's
mean colour), the same explained logit, and a ``classifier_fn`` that calls the same model,
jitted with the run's compiler options, on ``batch_size`` (our chunk) perturbed copies at a
time. Both put the unperturbed image first. The package draws its on/off vectors from numpy,
so the two explanations agree in distribution, not sample for sample; the record gives the
overlap of their top-5 superpixels.

The package explains one image at a time in a Python loop, so it is timed on the first
``lime_peer_images`` images of the batch (one untimed warm-up image first, which also compiles
the model at the chunk's batch size) and its images/s compared with ours on the whole batch.

lime is not a dependency of the package; it is imported inside the functions here. Install it
with ``pip install -e '.[peers]'``.
"""

import contextlib
import importlib.metadata
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax.benchmarks import torch_peers
from advsal_jax.types import ApplyFn, Params

TOP_K = 5
"""How many of the highest-coefficient superpixels are compared."""


def import_lime_image() -> Any:
  """The package's ``lime.lime_image`` module (``torch_peers.import_peer`` for --compare_lime)."""
  return torch_peers.import_peer('lime.lime_image', flag='--compare_lime',
                                 what='the lime package')


def classifier(apply_fn: ApplyFn, params: Params, channels: int, *,
               options: dict[str, str] | None) -> Callable[[np.ndarray], np.ndarray]:
  """The package's ``classifier_fn``: the jitted model on a batch of perturbed copies.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[N,K]``.
    params: its variables.
    channels: C of the model's input; the package works on RGB copies, of which the first
      C channels are passed on (all three are equal for a grey image, see ``explain``).
    options: XLA compiler options of the run (None: XLA's defaults).

  Returns:
    ``classifier_fn(images f32[N,H,W,3]) -> np.ndarray f32[N,K]`` logits.
  """
  jitted = jax.jit(apply_fn, compiler_options=options)

  def classifier_fn(images: np.ndarray) -> np.ndarray:
    return np.asarray(jitted(params, jnp.asarray(images[..., :channels], jnp.float32)))

  return classifier_fn


def explain(lime_image: Any, image: np.ndarray, segments: np.ndarray,
            classifier_fn: Callable[[np.ndarray], np.ndarray], target: int, *,
            num_samples: int, batch_size: int, kernel_width: float, ridge_alpha: float,
            fill: Any, seed: int) -> np.ndarray:
  """The package's surrogate coefficient of each superpixel of one image.

  Args:
    lime_image: the package's ``lime.lime_image`` module (``import_lime_image``).
    image: f32[H,W,C] in [0, 1], C = 1 or 3 (a grey image is explained as its RGB copy).
    segments: i32[H,W] labels, each of 0..S-1 present (the package numbers its features by
      label).
    classifier_fn: see ``classifier``.
    target: the explained class; its column of ``classifier_fn``'s output is regressed.
    num_samples: perturbed copies, the first one unperturbed.
    batch_size: copies per ``classifier_fn`` call.
    kernel_width: width of the exponential kernel on the cosine distance, > 0.
    ridge_alpha: the surrogate's ridge penalty.
    fill: the package's ``hide_color``: None (each superpixel's mean colour) or a value.
    seed: seeds the package's numpy generator.

  Returns:
    f64[S] coefficients, indexed by superpixel label.

  Raises:
    ValueError: ``segments`` whose labels are not 0..S-1 each present.
  """
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  labels = np.unique(segments)
  if not np.array_equal(labels, np.arange(labels.size)):
    raise ValueError(f'segments must hold the labels 0..S-1, each present (the lime package '
                     f'numbers its features by label), got {labels.tolist()}.')
  explainer = lime_image.LimeImageExplainer(kernel_width=kernel_width,
                                            feature_selection='none', random_state=seed)
  rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
  # The package draws a progress bar per image on stderr.
  with open(os.devnull, 'w', encoding='utf-8') as sink, contextlib.redirect_stderr(sink):
    explanation = explainer.explain_instance(
        rgb, classifier_fn, labels=(target,), hide_color=fill, top_labels=None,
        num_samples=num_samples, batch_size=batch_size,
        segmentation_fn=lambda _: segments,
        model_regressor=linear_model.Ridge(alpha=ridge_alpha))
  coef = np.zeros(labels.size)
  for feature, weight in explanation.local_exp[target]:
    coef[feature] = weight
  return coef


def segment_coefficients(pixel_weights: np.ndarray, segments: np.ndarray) -> np.ndarray:
  """Per-superpixel coefficients from LIME's per-pixel weights (constant over a superpixel).

  Args:
    pixel_weights: f32[H,W,C] our ``lime`` output for one image.
    segments: i32[H,W] its labels 0..S-1.

  Returns:
    f64[S] the weight of each superpixel.
  """
  coef = np.zeros(int(segments.max()) + 1)
  coef[segments.ravel()] = pixel_weights[..., 0].ravel()
  return coef


def top_k(coef: np.ndarray, k: int = TOP_K) -> np.ndarray:
  """The labels of the ``min(k, S)`` largest coefficients, largest first (ours' ranking).

  Args:
    coef: f64[S] coefficients.
    k: how many.

  Returns:
    i64[min(k, S)] labels.
  """
  return np.argsort(-coef, kind='stable')[:k]


def compare(apply_fn: ApplyFn, params: Params, x: np.ndarray, target: np.ndarray,
            segments: np.ndarray, ours: np.ndarray, settings: dict[str, Any], *,
            images: int, repeats: int, seed: int,
            options: dict[str, str] | None) -> dict[str, Any]:
  """Times the package on the first ``images`` images and compares its top superpixels.

  Args:
    apply_fn: the model, ``apply_fn(params, x) -> logits f32[N,K]``.
    params: its variables.
    x: f32[B,H,W,C] in [0, 1], the workload's batch.
    target: i32[B] the explained classes.
    segments: i32[B,H,W] the workload's superpixels (labels 0..S_b-1 per image).
    ours: f32[B,H,W,C] the workload's output (per-pixel weights).
    settings: the workload's ``num_samples``, ``batch_size`` (None: all copies at once),
      ``kernel_width``, ``ridge_alpha`` and ``fill``.
    images: how many images one timed call explains (at most B).
    repeats: timed calls; the median is reported.
    seed: seeds the package's numpy generator.
    options: XLA compiler options of the run (None: XLA's defaults).

  Returns:
    The record's ``lime_package_*`` entries: ``tool``, ``settings``, ``images``,
    ``median_s``, ``times_s``, ``warmup_s``, ``items_per_s`` and ``top5_overlap`` (the mean
    over the timed images of |our top-5 & the package's| / 5, top-min(5, S) on images of
    fewer superpixels), and ``loadavg_1min``.

  Raises:
    ImportError: lime is not installed.
  """
  lime_image = import_lime_image()
  n = min(images, x.shape[0])
  batch_size = settings['batch_size'] or settings['num_samples']
  peer_settings = dict(num_samples=settings['num_samples'], batch_size=batch_size,
                       kernel_width=settings['kernel_width'],
                       ridge_alpha=settings['ridge_alpha'], fill=settings['fill'])
  classifier_fn = classifier(apply_fn, params, x.shape[-1], options=options)

  def run(b: int) -> np.ndarray:
    return explain(lime_image, x[b], segments[b], classifier_fn, int(target[b]),
                   seed=seed + b, **peer_settings)

  warmup, _ = torch_peers.time_calls(lambda: run(0), 1)
  timing, theirs = torch_peers.time_calls(lambda: [run(b) for b in range(n)], repeats)
  overlaps = []
  for b, coef in enumerate(theirs):
    mine = top_k(segment_coefficients(ours[b], segments[b]))
    overlaps.append(len(set(mine) & set(top_k(coef))) / len(mine))
  return {'lime_package_tool': (f'lime {importlib.metadata.version("lime")} '
                                "lime_image.LimeImageExplainer (feature_selection='none', "
                                'Ridge)'),
          'lime_package_settings': {**peer_settings, 'fill': str(peer_settings['fill'])},
          'lime_package_images': n,
          **{f'lime_package_{k}': v for k, v in timing.items()},
          'lime_package_warmup_s': warmup['median_s'],
          'lime_package_items_per_s': n / timing['median_s'],
          'lime_package_top5_overlap': float(np.mean(overlaps)),
          'loadavg_1min': os.getloadavg()[0]}
