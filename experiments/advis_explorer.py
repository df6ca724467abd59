"""The AdVis explorer: one self-contained HTML page with a precomputed FGSM sweep.

Examples:
  python experiments/advis_explorer.py                          # 6 images, eps 0..16/255
  python experiments/advis_explorer.py --images=7,42 --eps_step=0.5
  python experiments/advis_explorer.py --output=/tmp/advis.html

Open the page from disk in any browser: no server and no network are needed. Beside it,
``<output>.npz`` holds the precomputed arrays the page shows.
"""

import pathlib
import time

from absl import app
from absl import flags
from absl import logging

from advsal_jax.studies import advis_explorer
from advsal_jax.studies import advis_page
from advsal_jax.studies import cli
from advsal_jax.studies import store

_D = advis_explorer.ExplorerConfig()
_MODELS = flags.DEFINE_list('models', list(_D.models),
                            'Checkpoints: attack sources and classifiers (one dataset).')
_IMAGES = flags.DEFINE_list('images', [str(i) for i in _D.images], 'Test-split indices shown.')
_MAX_EPS = flags.DEFINE_float('max_eps', _D.max_eps, 'Largest FGSM budget (units of 1/255).')
_EPS_STEP = flags.DEFINE_float('eps_step', _D.eps_step, 'Budget grid step (units of 1/255).')
_OUTPUT = flags.DEFINE_string('output', 'results/advis_explorer/explorer.html',
                              'The HTML file to write.')
_TITLE = flags.DEFINE_string('title', 'AdVis: FGSM, CAM and graph-based visual saliency',
                             'The page heading.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Offline data directory; default $ADVSAL_DATA_DIR, then tfds.')


def main(argv):
  del argv
  t0 = time.time()
  cli.quiet_other_libraries()
  try:
    images = tuple(int(i) for i in _IMAGES.value)
  except ValueError as e:
    raise app.UsageError(f'images: expected integers, got {_IMAGES.value}.') from e
  cfg = advis_explorer.ExplorerConfig(models=tuple(_MODELS.value), images=images,
                                      max_eps=_MAX_EPS.value, eps_step=_EPS_STEP.value)
  try:
    advis_explorer.validate(cfg)
    logging.info('Precomputing %d budgets x %d images x %d models in one compiled call...',
                 len(cfg.eps), len(images), len(cfg.models))
    page, arrays = advis_explorer.build(cfg, data_dir=_DATA_DIR.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  out = pathlib.Path(_OUTPUT.value)
  store.write_npz(out.with_suffix('.npz'), arrays)
  store.write_text(out, advis_page.render(page, title=_TITLE.value))
  logging.info('Wrote %s (%.1f MB) in %.0f s', out, out.stat().st_size / 2**20, time.time() - t0)
  print(f'Explorer written to {out}')


if __name__ == '__main__':
  app.run(main)
