"""The AdVis explorer: a whole FGSM sweep precomputed in one compiled call, for one HTML page.

AdVis.js regenerated attacks in the browser. Here every budget of a fine grid is computed
ahead for a few images: the adversarial images made on each source model, every model's
top-5 on them, the Grad-CAM of every class on the source model, GBVS and the saliency
difference. ``advis_page.render`` turns the result into one self-contained HTML file.
"""

import base64
import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import compilation
from advsal_jax import data
from advsal_jax import saliency
from advsal_jax.studies import advis_sweep
from advsal_jax.types import Params


@dataclasses.dataclass(frozen=True)
class ExplorerConfig:
  """Settings of the explorer (written into the page).

  Attributes:
    models: checkpoint names; each is both an attack source and a classifier.
    images: test-split indices of the images shown.
    max_eps: the largest budget, in units of 1/255.
    eps_step: the grid's step, in units of 1/255 (the grid starts at 0).
  """
  models: tuple[str, ...] = ('mobilenet_v1_cifar', 'mobilenet_v2_cifar')
  images: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
  max_eps: float = 16
  eps_step: float = 1

  @property
  def eps(self) -> tuple[float, ...]:
    n = int(round(self.max_eps / self.eps_step))
    return tuple(i * self.eps_step for i in range(n + 1))


def validate(cfg: ExplorerConfig, *, split_size: int | None = None):
  """Raises ValueError naming the bad setting."""
  if not cfg.models or len(set(cfg.models)) != len(cfg.models):
    raise ValueError(f'models: expected distinct checkpoint names, got {list(cfg.models)}.')
  if not cfg.images or len(set(cfg.images)) != len(cfg.images) or min(cfg.images) < 0:
    raise ValueError(f'images: expected distinct test indices >= 0, got {list(cfg.images)}.')
  if split_size is not None and max(cfg.images) >= split_size:
    raise ValueError(f'images: indices must be < {split_size} (the test split), got '
                     f'{max(cfg.images)}.')
  if not 0 < cfg.max_eps <= 255:
    raise ValueError(f'max_eps must be in (0, 255] (units of 1/255), got {cfg.max_eps}.')
  if not 0 < cfg.eps_step <= cfg.max_eps:
    raise ValueError(f'eps_step must be in (0, max_eps={cfg.max_eps}], got {cfg.eps_step}.')
  if len(cfg.eps) > 256:
    raise ValueError(f'eps_step gives {len(cfg.eps)} budgets; at most 256 fit in the page.')


def precompute(classifiers: tuple[advis_sweep.Classifier, ...], params: Mapping[str, Params],
               x: jax.Array, labels: jax.Array, eps: jax.Array) -> dict[str, jax.Array]:
  """Everything the page shows, for N images, S = T models, E budgets and K classes.

  Args:
    classifiers: the models (sources and classifiers).
    params: model name -> variables.
    x: f32[N,H,W,C] in [0, 1].
    labels: i32[N] true classes.
    eps: f32[E] budgets in [0, 1] pixel units.

  Returns:
    ``x_adv`` f32[N,S,E,H,W,C]; ``top_class`` i32[N,S,E,T,5] and ``top_prob``
    f32[N,S,E,T,5] (model T on the image attacked on S); ``cam`` f32[N,S,E,K,H,W] (Grad-CAM of
    every class on the source model); ``gbvs`` f32[N,S,E,H,W]; ``gbvs_clean`` f32[N,H,W].
  """
  n = x.shape[0]
  e = eps.shape[0]
  gbvs_clean = saliency.gbvs(x)[..., 0]
  out: dict[str, list] = {'x_adv': [], 'top_class': [], 'top_prob': [], 'cam': [], 'gbvs': []}
  for s in classifiers:
    p = params[s.name]
    x_adv = advis_sweep.fgsm_sweep(s.apply_fn, p, x, labels, eps)  # [E,N,...]
    flat = x_adv.reshape(e * n, *x.shape[1:])
    cls, prob = zip(*(advis_sweep.top_predictions(t.apply_fn(params[t.name], flat))
                      for t in classifiers))
    out['top_class'].append(jnp.stack(cls, axis=1).reshape(e, n, len(classifiers), -1))
    out['top_prob'].append(jnp.stack(prob, axis=1).reshape(e, n, len(classifiers), -1))
    k = s.apply_fn(p, x[:1]).shape[-1]
    every = jnp.repeat(flat, k, axis=0)
    classes = jnp.tile(jnp.arange(k, dtype=jnp.int32), e * n)
    cam = saliency.grad_cam(s.apply_fn, p, every, classes, layer=s.cam_layer)[..., 0]
    out['cam'].append(cam.reshape(e, n, k, *x.shape[1:3]))
    out['gbvs'].append(saliency.gbvs(flat)[..., 0].reshape(e, n, *x.shape[1:3]))
    out['x_adv'].append(x_adv)
  # Collected as [E,N,...] per source: [S,E,N,...] -> [N,S,E,...].
  result = {name: jnp.moveaxis(jnp.stack(v), 2, 0) for name, v in out.items()}
  result['gbvs_clean'] = gbvs_clean
  return result


def _b64(a: np.ndarray) -> str:
  return base64.b64encode(np.ascontiguousarray(a, np.uint8).tobytes()).decode('ascii')


def _unit(maps: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
  """Min-max normalised to uint8 over ``axes``; constant maps give 0."""
  lo = maps.min(axis=axes, keepdims=True)
  hi = maps.max(axis=axes, keepdims=True)
  return np.round(255 * (maps - lo) / np.where(hi > lo, hi - lo, 1)).astype(np.uint8)


def page_data(result: Mapping[str, np.ndarray], *, x: np.ndarray, labels: np.ndarray,
              indices: np.ndarray, cfg: ExplorerConfig, class_names: tuple[str, ...]
              ) -> dict[str, Any]:
  """The page's data: shapes, names and uint8 arrays as base64 (row-major).

  Maps are quantised to uint8 for the page: Grad-CAM and GBVS min-max per map; the saliency
  difference ``gbvs - gbvs_clean`` signed, 128 for 0 and scaled by its largest magnitude
  over the budgets of each (image, source), so its growth with eps stays visible.
  Probabilities are kept as numbers (the values the top-5 tables show).
  """
  r = {k: np.asarray(v) for k, v in result.items()}
  n, s, e, h, w, c = r['x_adv'].shape
  diff = r['gbvs'] - r['gbvs_clean'][:, None, None]
  peak = np.abs(diff).max(axis=(2, 3, 4), keepdims=True)
  diff_u8 = np.round(127.5 + 127.5 * diff / np.where(peak > 0, peak, 1)).astype(np.uint8)
  return {
      'models': list(cfg.models), 'eps': [float(v) for v in cfg.eps],
      'class_names': list(class_names), 'shape': [n, s, e, h, w, c],
      'num_classes': int(r['cam'].shape[3]),
      'images': [{'index': int(i), 'label': int(y)} for i, y in zip(indices, labels)],
      'clean': _b64(np.round(255 * np.clip(x, 0, 1))),
      'x_adv': _b64(np.round(255 * np.clip(r['x_adv'], 0, 1))),
      'top_class': r['top_class'].tolist(),
      'top_prob': np.round(r['top_prob'].astype(np.float64), 6).tolist(),
      'cam': _b64(_unit(r['cam'], (-2, -1))),
      'gbvs': _b64(_unit(r['gbvs'], (-2, -1))),
      'gbvs_clean': _b64(_unit(r['gbvs_clean'], (-2, -1))),
      'diff': _b64(diff_u8),
  }


def build(cfg: ExplorerConfig, *, data_dir: str | None = None
          ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Loads the models and images, precomputes the sweep in one compiled call.

  Args:
    cfg: the settings.
    data_dir: the offline data directory (default ``$ADVSAL_DATA_DIR``, then tfds).

  Returns:
    (page data for ``advis_page.render``, the precomputed arrays with ``index`` and
    ``label``).

  Raises:
    ValueError: bad settings; models on different datasets.
    checkpoints.CheckpointError, FileNotFoundError: missing checkpoint or data.
  """
  validate(cfg)
  classifiers, params, metas = advis_sweep.load_classifiers(cfg.models)
  test = data.load(metas[0]['dataset'], 'test', data_dir=data_dir)
  validate(cfg, split_size=len(test.labels))
  ids = np.asarray(cfg.images)
  x = data.to_float(test.images[ids])
  labels = test.labels[ids].astype(np.int32)
  eps = jnp.asarray(cfg.eps, jnp.float32) / 255
  fn = compilation.jit(lambda p, xx, yy, ee: precompute(classifiers, p, xx, yy, ee))
  result = {k: np.asarray(v) for k, v in fn(params, x, labels, eps).items()}
  page = page_data(result, x=x, labels=labels, indices=ids, cfg=cfg,
                   class_names=test.class_names)
  return page, {**result, 'index': ids, 'label': labels}
