"""Study 000's pipeline written with the PyTorch stack: the peer of ``study000_pipeline``.

What a PyTorch user would write instead of ``compare_saliency.compare_batch``, on the converted
model (``torch_peers.to_torch``, the same weights), the same images and the study's settings,
batched wherever the libraries allow:

* attack: torchattacks FGSM once per untargeted budget (the per-channel budget as an ``eps``
  tensor) and once, targeted by label, for all K - 1 targets together (the batch repeated
  K - 1 times); the predictions on every variant in one forward pass;
* maps: one Captum call per method on the clean images and every variant together
  (``NoiseTunnel(Saliency)`` SmoothGrad, ``LayerGradCam`` upsampled with
  ``LayerAttribution.interpolate``, ``GuidedBackprop``), reduced and normalised in torch as
  ``saliency.heatmap`` and ``compare_saliency.paper_maps`` do;
* metrics: scipy/skimage per (clean, variant) pair: ``scipy.stats.spearmanr``,
  ``skimage.metrics.structural_similarity`` with the study's two settings, and the Pearson
  correlation (``np.corrcoef``) of ``skimage.feature.hog`` vectors, each clean map's HOG
  computed once for all its variants.

``TorchPipeline`` runs the three stages and times each; ``prepare`` gives the runner its
``(keep, compare)`` pair; ``agreement`` compares the two pipelines where they can agree
exactly. SmoothGrad's noise comes from each framework's generator (and Captum takes one noise
std for the whole batch, the mean of the study's per-image ones), so its maps and metrics are
not compared elementwise.
"""

import os
import statistics
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import skimage.feature
import skimage.metrics

from advsal_jax import saliency
from advsal_jax.benchmarks import study_pipeline
from advsal_jax.benchmarks import torch_peers
from advsal_jax.benchmarks import workloads
from advsal_jax.studies import compare_saliency

METHODS = ('smoothgrad', 'grad_cam', 'guided_backprop')
"""The study's methods this peer has Captum equivalents of."""

AGREEMENT_IMAGES = 2
"""Images of the batch the two pipelines' stages are compared on."""

_PAPER_SSIM_KWARGS = dict(data_range=2.0, win_size=7, gaussian_weights=False,
                          use_sample_covariance=True)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
  return scipy.stats.spearmanr(a.ravel(), b.ravel()).statistic


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
  return skimage.metrics.structural_similarity(a, b, **workloads.SSIM_KWARGS)


def _paper_ssim(a: np.ndarray, b: np.ndarray) -> float:
  return skimage.metrics.structural_similarity(
      a, b, channel_axis=-1 if a.ndim == 3 else None, **_PAPER_SSIM_KWARGS)


def _hog(a: np.ndarray) -> np.ndarray:
  return skimage.feature.hog(a, **workloads.HOG_KWARGS)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
  return np.corrcoef(a, b)[0, 1]


def pair_metrics(maps: dict[str, dict[str, np.ndarray]],
                 metric_names: tuple[str, ...]) -> dict[str, np.ndarray]:
  """The study's metrics of every (clean, variant) pair with scipy/skimage, pair by pair.

  Args:
    maps: per method ``clean`` f[B,H,W] and ``adv`` f[V*B,H,W] heatmaps in [0, 1], and
      ``clean_paper``/``adv_paper`` their paper maps ([.., H, W] or [.., H, W, C]).
    metric_names: names of ``compare_saliency.METRICS`` and ``PAPER_METRICS``.

  Returns:
    ``<method>/<metric>`` f64[V,B], as ``compare_saliency.pair_metrics``; NaN where a map
    (Spearman) or a HOG vector (HOG-Pearson) is constant, as scipy gives.
  """
  out = {}
  with warnings.catch_warnings(), np.errstate(invalid='ignore', divide='ignore'):
    warnings.simplefilter('ignore')  # scipy's warning on a constant map, once per pair.
    for method, m in maps.items():
      clean, adv = m['clean'].astype(np.float64), m['adv'].astype(np.float64)
      b = clean.shape[0]
      v = adv.shape[0] // b
      pairs = [(i % b, i) for i in range(v * b)]  # (clean index, variant index)
      for name in metric_names:
        if name == 'spearman':
          values = [_spearman(clean[c], adv[a]) for c, a in pairs]
        elif name == 'mean_ssim':
          values = [_ssim(clean[c], adv[a]) for c, a in pairs]
        elif name == 'hog_pearson':
          clean_hog, adv_hog = [_hog(c) for c in clean], [_hog(a) for a in adv]
          values = [_pearson(clean_hog[c], adv_hog[a]) for c, a in pairs]
        else:
          paper_c = m['clean_paper'].astype(np.float64)
          paper_a = m['adv_paper'].astype(np.float64)
          values = [_paper_ssim(paper_c[c], paper_a[a]) for c, a in pairs]
        out[f'{method}/{name}'] = np.asarray(values).reshape(v, b)
  return out


class TorchPipeline:
  """Study 000's per-batch pipeline with torchattacks, Captum and scipy/skimage.

  Attributes:
    stages: ``STAGES`` of ``study_pipeline``, the order ``__call__`` times them in.
  """
  stages = study_pipeline.STAGES

  def __init__(self, module: Any, *, study_cfg: compare_saliency.Config,
               eps_untargeted: np.ndarray, eps_targeted: np.ndarray, num_classes: int,
               layer: str, input_std: tuple[float, ...] | None):
    """Builds the attacks and Captum methods on ``module``.

    Args:
      module: the converted model (``torch_peers.to_torch``), NCHW images in [0, 1].
      study_cfg: the study's settings (methods, their hyper-parameters, metrics).
      eps_untargeted: f32[E,C] pixel budgets per channel; eps_targeted: f32[C]
        (``study_pipeline.budgets``).
      num_classes: K.
      layer: the Grad-CAM layer, a submodule name of ``module``.
      input_std: the model's normalisation std (None: 1), for the paper's maps.

    Raises:
      ValueError: a method without a Captum equivalent here.
      ImportError: torch, captum or torchattacks missing.
    """
    unknown = [m for m in study_cfg.methods if m not in METHODS]
    if unknown:
      raise ValueError(f'the PyTorch pipeline has Captum equivalents of {METHODS} only, got '
                       f'methods {unknown}.')
    import captum.attr  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    import torchattacks  # pylint: disable=g-import-not-at-top
    self._torch, self.module, self._cfg = torch, module, study_cfg
    channels = eps_untargeted.shape[-1]
    self._std = torch.tensor(input_std or (1.0,) * channels).reshape(1, -1, 1, 1)
    self._offsets = torch.arange(1, num_classes).reshape(-1, 1)
    self._k = num_classes

    def eps(e):
      return torch.from_numpy(np.asarray(e, np.float32).reshape(1, -1, 1, 1))

    self._untargeted = [torchattacks.FGSM(module, eps=eps(e)) for e in eps_untargeted]
    self._targeted = torchattacks.FGSM(module, eps=eps(eps_targeted))
    self._targeted.set_mode_targeted_by_label(quiet=True)
    self._hp = {m: {**saliency.REGISTRY[m].defaults, **study_cfg.method_kwargs.get(m, {})}
                for m in study_cfg.methods}
    self._captum = captum.attr
    self._methods = {
        'smoothgrad': captum.attr.NoiseTunnel(captum.attr.Saliency(module)),
        'grad_cam': captum.attr.LayerGradCam(module, getattr(module, layer)),
        'guided_backprop': captum.attr.GuidedBackprop(module),
    }

  def settings(self) -> dict[str, Any]:
    """What the peer runs, for the record."""
    sg = self._hp.get('smoothgrad', {})
    return {'untargeted': f'{len(self._untargeted)} torchattacks FGSM calls (eps per channel)',
            'targeted': f'one FGSM call by label on the batch x {self._k - 1} targets',
            'smoothgrad': (f"NoiseTunnel(Saliency(abs=False)), nt_samples={sg.get('num_samples')}"
                           f", nt_samples_batch_size={sg.get('batch_size')}"),
            'metrics': 'scipy.stats.spearmanr, skimage structural_similarity, skimage hog + '
                       'np.corrcoef, per pair',
            'note': ('Captum draws SmoothGrad noise with one std for the whole batch: the mean '
                     "of the study's per-image noise_level * (max - min)")}

  def attack(self, x: Any) -> tuple[Any, Any, Any]:
    """Every FGSM variant of ``x`` f32[B,C,H,W] and the model's predictions.

    Returns:
      ``(real i64[B], x_adv f32[V*B,C,H,W], fake i64[V*B])``, variant-major as the study's.
    """
    torch = self._torch
    with torch.no_grad():
      real = self.module(x).argmax(1)
    targets = ((real[None] + self._offsets) % self._k).reshape(-1)
    repeated = x.repeat(self._k - 1, 1, 1, 1)
    x_adv = torch.cat([*(a(x, real) for a in self._untargeted),
                       self._targeted(repeated, targets)])
    with torch.no_grad():
      fake = self.module(x_adv).argmax(1)
    return real, x_adv, fake

  def _attribute(self, method: str, images: Any, target: Any) -> Any:
    if method == 'smoothgrad':
      hp = self._hp[method]
      flat = images.detach().flatten(1)
      sigma = hp['noise_level'] * (flat.max(1).values - flat.min(1).values).mean()
      return self._methods[method].attribute(
          images, target=target, nt_type='smoothgrad_sq' if hp['squared'] else 'smoothgrad',
          nt_samples=hp['num_samples'], nt_samples_batch_size=hp['batch_size'],
          stdevs=float(sigma), abs=False)
    if method == 'grad_cam':
      cam = self._methods[method].attribute(images, target=target, relu_attributions=True)
      return self._captum.LayerAttribution.interpolate(cam, tuple(images.shape[2:]),
                                                       'bilinear')
    return self._methods[method].attribute(images, target=target)

  def _normalize(self, maps: Any, mode: str) -> Any:
    """``saliency.normalize`` of f32[N,H,W] ('minmax' or 'percentile', 99)."""
    torch = self._torch
    flat = maps.flatten(1)
    if mode == 'percentile':
      hi = torch.quantile(flat, 0.99, dim=1, keepdim=True)
      lo = torch.quantile(flat, 0.01, dim=1, keepdim=True)
      flat = torch.minimum(torch.maximum(flat, lo), hi)
    else:
      lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    den = hi - lo
    ok = den > 0
    return torch.where(ok, (flat - lo) / torch.where(ok, den, 1.0), 0.0).reshape(maps.shape)

  def maps(self, x: Any, real: Any, x_adv: Any, fake: Any) -> dict[str, dict[str, np.ndarray]]:
    """Each method's maps of the clean images and of every variant, in one call per method.

    Args:
      x: f32[B,C,H,W]; real: i64[B] its explained classes.
      x_adv: f32[V*B,C,H,W]; fake: i64[V*B] theirs.

    Returns:
      Per method ``clean`` f32[B,H,W] and ``adv`` f32[V*B,H,W] heatmaps (``saliency.heatmap``),
      ``clean_paper`` and ``adv_paper`` (``compare_saliency.paper_maps``, NHWC), as numpy.
    """
    torch = self._torch
    # Captum warns on inputs that do not require gradients; it only reads them.
    images = torch.cat([x, x_adv]).detach().requires_grad_()
    target = torch.cat([real, fake])
    b = x.shape[0]
    out = {}
    for method in self._cfg.methods:
      attr = self._attribute(method, images, target).detach()
      family = saliency.REGISTRY[method].family
      heat = self._normalize(attr.abs().sum(1), saliency.FAMILIES[family])
      if family == 'gradient':
        paper = (attr * self._std).permute(0, 2, 3, 1)
      else:
        paper = self._normalize(attr.abs().sum(1), 'minmax')
      heat, paper = heat.numpy(), paper.numpy()
      out[method] = {'clean': heat[:b], 'adv': heat[b:], 'clean_paper': paper[:b],
                     'adv_paper': paper[b:]}
    return out

  def __call__(self, x: Any) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The whole pipeline on ``x`` f32[B,C,H,W] in [0, 1].

    Returns:
      ``(outputs, seconds)``: ``real_pred`` [B], ``fake_pred`` [V,B] and
      ``<method>/<metric>`` f64[V,B]; the seconds of each stage.
    """
    start = time.perf_counter()
    real, x_adv, fake = self.attack(x)
    attacked = time.perf_counter()
    maps = self.maps(x, real, x_adv, fake)
    mapped = time.perf_counter()
    values = pair_metrics(maps, self._cfg.metrics)
    end = time.perf_counter()
    b = x.shape[0]
    return ({'real_pred': real.numpy(), 'fake_pred': fake.numpy().reshape(-1, b), **values},
            {'attack': attacked - start, 'maps': mapped - attacked, 'metrics': end - mapped})


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b|, NaN where both are NaN counting as equal and NaN in one as inf."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  both = np.isnan(a) & np.isnan(b)
  diff = np.where(both, 0.0, np.abs(a - b))
  return float(np.max(np.where(np.isnan(diff), np.inf, diff)))


def agreement(pipeline: TorchPipeline, peer_inputs: dict[str, Any],
              images: int = AGREEMENT_IMAGES) -> dict[str, float]:
  """Compares the two pipelines stage by stage on the first ``images`` images.

  * attack: each variant from both (``attack_max_abs_diff``, the share of pixels that
    differ, ``attack_pixels_differing``: a gradient within rounding of zero takes another
    sign) and the predictions on them (``fake_pred_agreement``);
  * maps: Captum's on JAX's variants and predictions, against JAX's, for Grad-CAM and Guided
    Backprop (``<method>_max_abs_diff`` over the normalised heatmaps of the clean images and
    every variant, ``<method>_paper_max_abs_diff`` over the paper's maps);
  * metrics: scipy/skimage on JAX's maps (SmoothGrad's too), against JAX's values
    (``<metric>_max_abs_diff`` over every method and pair; NaN in both counts as equal).

  Args:
    pipeline: the PyTorch pipeline.
    peer_inputs: the ``study_pipeline`` job's.
    images: how many images.

  Returns:
    The entries above, floats.
  """
  torch = torch_peers.import_torch()
  p = peer_inputs
  x = jnp.asarray(p['x'][:images])
  attack, maps_fn, metrics_fn = study_pipeline.stage_fns(
      p['apply_fn'], study_cfg=p['study_cfg'], layer=p['layer'],
      num_classes=p['num_classes'], std=p['input_std'])
  adv = jax.jit(attack)(p['variables'], x, p['eps_untargeted'], p['eps_targeted'])
  maps = jax.jit(maps_fn)(p['variables'], x, jnp.arange(images, dtype=jnp.int32), adv)
  values = jax.jit(metrics_fn)(maps)
  maps = jax.tree.map(np.asarray, maps)
  tx = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
  _, x_adv, fake = pipeline.attack(tx)
  jax_adv = np.asarray(adv['x_adv']).reshape(-1, *x.shape[1:])
  diff = np.abs(x_adv.numpy().transpose(0, 2, 3, 1) - jax_adv)
  out = {'attack_max_abs_diff': float(diff.max()),
         'attack_pixels_differing': float(np.mean(diff > 1e-6)),
         'fake_pred_agreement': float(np.mean(fake.numpy() == np.asarray(adv['fake_pred'])
                                              .reshape(-1)))}
  theirs = pipeline.maps(
      tx, torch.from_numpy(np.asarray(adv['real_pred'], np.int64)),
      torch.from_numpy(np.ascontiguousarray(jax_adv.transpose(0, 3, 1, 2))),
      torch.from_numpy(np.asarray(adv['fake_pred'], np.int64).reshape(-1)))
  for method in ('grad_cam', 'guided_backprop'):
    if method in theirs:
      t, m = theirs[method], maps[method]
      out[f'{method}_max_abs_diff'] = max(_max_abs_diff(t[k], m[k]) for k in ('clean', 'adv'))
      out[f'{method}_paper_max_abs_diff'] = max(
          _max_abs_diff(t[k], m[k]) for k in ('clean_paper', 'adv_paper'))
  reference = pair_metrics(maps, p['study_cfg'].metrics)
  for name in p['study_cfg'].metrics:
    out[f'{name}_max_abs_diff'] = max(_max_abs_diff(reference[k], values[k])
                                      for k in reference if k.endswith(f'/{name}'))
  return out


def prepare(peers: torch_peers.TorchPeers, job: workloads.Job
            ) -> tuple[Callable[[Any], None], Callable[[int], dict[str, Any]]]:
  """The PyTorch stack's pipeline on the ``study000_pipeline`` job's images.

  Args:
    peers: the converted model and versions (bound to the benchmark batch).
    job: the ``study_pipeline`` job (its ``peer_inputs``).

  Returns:
    ``(keep, compare)`` as ``TorchPeers.prepare``: ``compare(repeats)`` runs one untimed
    warm-up call, then ``repeats`` timed calls, and gives the ``torch_*`` entries with
    ``torch_stage_s`` (median seconds per stage) and ``torch_agreement`` (``agreement``,
    and ``real_pred_agreement``/``fake_pred_agreement`` over the whole batch).
  """
  torch = torch_peers.import_torch()
  p = job.peer_inputs
  pipeline = TorchPipeline(peers.module, study_cfg=p['study_cfg'],
                           eps_untargeted=p['eps_untargeted'], eps_targeted=p['eps_targeted'],
                           num_classes=p['num_classes'], layer=p['layer'],
                           input_std=p['input_std'])
  x = torch.from_numpy(np.ascontiguousarray(p['x'].transpose(0, 3, 1, 2)))
  kept = {}

  def keep(output):
    kept['output'] = jax.tree.map(np.asarray, output)

  def compare(repeats: int) -> dict[str, Any]:
    calls, warmup = torch_peers.warm_up(peers.module, lambda: pipeline(x))
    times, stage_times, output = [], {k: [] for k in pipeline.stages}, None
    for _ in range(repeats):
      output, seconds = pipeline(x)
      times.append(sum(seconds.values()))
      for k, s in seconds.items():
        stage_times[k].append(s)
    median = statistics.median(times)
    agree = agreement(pipeline, p)
    if 'output' in kept:
      for k in ('real_pred', 'fake_pred'):
        agree[f'batch_{k}_agreement'] = float(np.mean(output[k] == kept['output'][k]))
    versions = peers.versions
    return {'torch_tool': (f'torchattacks {versions["torchattacks"]} FGSM + captum '
                           f'{versions["captum"]} + scipy/skimage per pair (torch '
                           f'{versions["torch"]})'),
            'torch_settings': pipeline.settings(), 'torch_model_calls_per_call': calls,
            'torch_median_s': median, 'torch_times_s': times, 'torch_warmup_s': warmup,
            'torch_items_per_s': x.shape[0] / median,
            'torch_stage_s': {k: statistics.median(v) for k, v in stage_times.items()},
            'torch_stage_times_s': stage_times, 'torch_agreement': agree,
            'loadavg_1min': os.getloadavg()[0]}

  return keep, compare
