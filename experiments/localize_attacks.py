"""Study 004: can saliency explainers find where a localized adversarial attack changed an image?

Examples:
  python experiments/localize_attacks.py                   # default preset: 48 test images
  python experiments/localize_attacks.py --preset=full     # 180 images (~ the paper's 608 examples)
  python experiments/localize_attacks.py --preset=smoke    # seconds, for tests
  python experiments/localize_attacks.py --checkpoint=cnn_mnist --target_class=8

Every batch is split over all devices (data parallel). The explanation stage reads the attack
stage's shards, so a multi-host run (--distributed) needs an output directory every host sees.
"""

import time

from absl import app
from absl import flags
from absl import logging

from advsal_jax.studies import cli
from advsal_jax.studies import localize_attacks as study
from advsal_jax.studies import localize_attacks_report as study_report

_D = study.Config()
cli.define_common_flags(checkpoint=_D.checkpoint, batch_size=_D.batch_size)
flags.DEFINE_integer('explain_batch_size', _D.explain_batch_size,
                     'Adversarial examples per compiled explanation batch.')
flags.DEFINE_integer('num_regions', _D.num_regions, 'Largest segments attacked per image.')
flags.DEFINE_float('felzenszwalb_scale', _D.felzenszwalb_scale, 'Felzenszwalb scale.')
flags.DEFINE_float('felzenszwalb_sigma', _D.felzenszwalb_sigma, 'Felzenszwalb Gaussian sigma.')
flags.DEFINE_integer('felzenszwalb_min_size', _D.felzenszwalb_min_size,
                     'Felzenszwalb minimum segment size (pixels).')
flags.DEFINE_integer('target_class', _D.target_class, 'The class every attack aims at.')
flags.DEFINE_float('eps', _D.eps, 'L-inf budget in [0, 1] pixels (1: only the segment).')
flags.DEFINE_float('step_size', _D.step_size, 'BIM step in [0, 1] pixels (default 2/255).')
flags.DEFINE_integer('max_steps', _D.max_steps, 'Attacks not successful by then are discarded.')
flags.DEFINE_integer('patience', _D.patience,
                     'Steps without a new loss minimum after which an attack has stalled.')
flags.DEFINE_integer('top_n', _D.top_n, "LIME's best superpixels (partial unions n = 1..top_n).")
flags.DEFINE_list('methods', list(_D.methods),
                  "Explainers (saliency.REGISTRY names); 'lime' is required.")

_OWN = ('explain_batch_size', 'num_regions', 'felzenszwalb_scale', 'felzenszwalb_sigma',
        'felzenszwalb_min_size', 'target_class', 'eps', 'step_size', 'max_steps', 'patience',
        'top_n', 'methods', 'method_kwargs')

PRESETS = {
    'smoke': {'num_examples': 2, 'batch_size': 2, 'explain_batch_size': 4, 'num_regions': 3,
              'step_size': 0.05, 'max_steps': 20, 'top_n': 5,
              'method_kwargs': ['lime.num_samples=50', 'smoothgrad.num_samples=2',
                                'integrated_gradients.num_steps=4']},
    'default': {'num_examples': 48},
    'full': {'num_examples': 180},
}


def main(argv):
  del argv
  t0 = time.time()
  cli.start()
  s = cli.settings(PRESETS, [*cli.COMMON, *_OWN])
  try:
    cfg = study.Config(
        checkpoint=s['checkpoint'], num_examples=s['num_examples'], batch_size=s['batch_size'],
        seed=s['seed'], methods=tuple(s['methods']),
        method_kwargs=cli.parse_method_kwargs(s['method_kwargs'], study.DEFAULT_METHOD_KWARGS),
        **{k: s[k] for k in _OWN if k not in ('methods', 'method_kwargs')})
    study.validate(cfg)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  out = cli.default_output_dir(study.NAME, cfg.checkpoint, cfg.num_examples)
  logging.info('Study 004 (%s): %d largest segments of the first %d test images attacked '
               'towards class %d on %s, explained by %s; preset %s; report: %s/report.md',
               study.NAME, cfg.num_regions, cfg.num_examples, cfg.target_class, cfg.checkpoint,
               ', '.join(cfg.methods), flags.FLAGS.preset, out)
  cli.run_and_finish(
      study.NAME, out, checkpoint=cfg.checkpoint, start_time=t0,
      run=lambda: study.run(cfg, output_dir=out, data_dir=flags.FLAGS.data_dir,
                            resume=flags.FLAGS.resume),
      finalize=lambda loaded: study_report.finalize(out))


if __name__ == '__main__':
  app.run(main)
