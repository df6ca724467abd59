"""Study 002 (AdVis): the FGSM epsilon sweep through CAM and graph-based visual saliency.

Examples:
  python experiments/advis_sweep.py                    # default preset
  python experiments/advis_sweep.py --preset=full      # more images
  python experiments/advis_sweep.py --preset=smoke     # seconds of work, for tests
  python experiments/advis_sweep.py --models=mobilenet_v1_cifar,mobilenet_v2_cifar --eps=2,8

Transfer, crop-vs-resize and DeepFool-vs-FGSM are measured in the same pass. The study
compares several models: it takes --models, not --checkpoint.
"""

import time

from absl import app
from absl import flags
from absl import logging

from advsal_jax.studies import advis_sweep as study
from advsal_jax.studies import advis_sweep_report as study_report
from advsal_jax.studies import cli

_D = study.Config()
cli.define_common_flags(checkpoint=_D.models[0], batch_size=_D.batch_size)
flags.DEFINE_list('models', list(_D.models),
                  'Checkpoints to attack and to classify with (the first two play MobileNet V1 '
                  'and V2); all on one dataset.')
flags.DEFINE_list('eps', [f'{e:g}' for e in _D.eps], 'FGSM budgets in units of 1/255.')
flags.DEFINE_float('compare_eps', _D.compare_eps, 'The FGSM budget DeepFool is compared with.')
flags.DEFINE_float('crop_scale', _D.crop_scale, 'Upscaling before the centre crop.')
flags.DEFINE_integer('border', _D.border, 'Border band width in pixels.')
flags.DEFINE_float('diff_threshold', _D.diff_threshold,
                   'Saliency-difference area threshold, in units of the uniform density.')
flags.DEFINE_float('top_fraction', _D.top_fraction, 'Share of pixels in top-k Jaccard masks.')
flags.DEFINE_float('deepfool_overshoot', _D.deepfool_overshoot, "DeepFool's overshoot.")
flags.DEFINE_integer('deepfool_max_iter', _D.deepfool_max_iter, "DeepFool's iteration limit.")
flags.DEFINE_integer('num_figure_images', _D.num_figure_images,
                     'Images whose maps are kept for the figures.')

_OWN = ('models', 'eps', 'compare_eps', 'crop_scale', 'border', 'diff_threshold',
        'top_fraction', 'deepfool_overshoot', 'deepfool_max_iter', 'num_figure_images')

PRESETS = {
    'smoke': {'num_examples': 2, 'batch_size': 2, 'models': ['mobilenet_v1_cifar',
                                                             'mobilenet_v2_cifar'],
              'eps': ['2', '8'], 'compare_eps': 8, 'deepfool_max_iter': 3,
              'num_figure_images': 1},
    'default': {'num_examples': 256},
    'full': {'num_examples': 1000},
}


def main(argv):
  del argv
  t0 = time.time()
  cli.start()
  if flags.FLAGS['checkpoint'].present:
    raise app.UsageError('study 002 compares several models: pass --models, not --checkpoint.')
  s = cli.settings(PRESETS, [*cli.COMMON, *_OWN])
  try:
    eps = tuple(float(e) for e in s['eps'])
  except ValueError as e:
    raise app.UsageError(f'eps: expected numbers (units of 1/255), got {s["eps"]}.') from e
  try:
    cfg = study.Config(
        models=tuple(s['models']), eps=eps, num_examples=s['num_examples'],
        batch_size=s['batch_size'], seed=s['seed'],
        **{k: s[k] for k in _OWN if k not in ('models', 'eps')})
    study.validate(cfg)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  out = cli.default_output_dir(study.NAME, '+'.join(cfg.models), cfg.num_examples)
  logging.info('Study 002 (%s): FGSM at eps %s /255 on the first %d test images, models %s; '
               'preset %s; report: %s/report.md', study.NAME, ', '.join(s['eps']),
               cfg.num_examples, ', '.join(cfg.models), flags.FLAGS.preset, out)
  cli.run_and_finish(
      study.NAME, out, checkpoint=cfg.models[0], start_time=t0,
      run=lambda: study.run(cfg, output_dir=out, data_dir=flags.FLAGS.data_dir,
                            resume=flags.FLAGS.resume),
      finalize=lambda loaded: study_report.finalize(out))


if __name__ == '__main__':
  app.run(main)
