"""Study 000: compare saliency maps of clean and FGSM-adversarial images.

Examples:
  python experiments/compare_saliency.py                  # default preset: 448 test images
  python experiments/compare_saliency.py --preset=full    # the paper's 10,000 images
  python experiments/compare_saliency.py --preset=smoke   # seconds, for tests

Every batch is split over all devices (data parallel); on several hosts start one process per
host with --distributed (Cloud TPU and SLURM are detected, elsewhere add
--coordinator_address, --num_processes and --process_id). Only process 0 writes.
"""

import time

from absl import app
from absl import flags
from absl import logging

from advsal_jax.studies import cli
from advsal_jax.studies import compare_saliency as study
from advsal_jax.studies import compare_saliency_report as study_report

_D = study.Config()
cli.define_common_flags(checkpoint=_D.checkpoint, batch_size=_D.batch_size)
flags.DEFINE_list('untargeted_eps', [str(e) for e in _D.untargeted_eps],
                  'Untargeted FGSM budgets.')
flags.DEFINE_float('targeted_eps', _D.targeted_eps, 'Targeted FGSM budget.')
flags.DEFINE_enum('eps_space', _D.eps_space, list(study.EPS_SPACES),
                  "Budgets in the model's normalised input space or in pixels.")
flags.DEFINE_list('methods', list(_D.methods), 'Saliency methods (saliency.REGISTRY names).')
flags.DEFINE_list('metrics', list(_D.metrics),
                  f'Similarity metrics: {", ".join({**study.METRICS, **study.PAPER_METRICS})}.')

PRESETS = {
    'smoke': {'num_examples': 3, 'batch_size': 2, 'untargeted_eps': ['0.2', '1.0'],
              'method_kwargs': ['smoothgrad.num_samples=2']},
    'default': {'num_examples': 448},
    'full': {'num_examples': 10_000},
}


def main(argv):
  del argv
  t0 = time.time()
  cli.start()
  s = cli.settings(PRESETS, [*cli.COMMON, 'untargeted_eps', 'method_kwargs'])
  try:
    cfg = study.Config(
        checkpoint=s['checkpoint'], num_examples=s['num_examples'], batch_size=s['batch_size'],
        untargeted_eps=tuple(float(e) for e in s['untargeted_eps']),
        targeted_eps=flags.FLAGS.targeted_eps, eps_space=flags.FLAGS.eps_space,
        methods=tuple(flags.FLAGS.methods), metrics=tuple(flags.FLAGS.metrics),
        method_kwargs=cli.parse_method_kwargs(s['method_kwargs'], study.PAPER_METHOD_KWARGS),
        seed=s['seed'])
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  out = cli.default_output_dir(study.NAME, cfg.checkpoint, cfg.num_examples)
  logging.info('Study 000 (%s): %s on %s, first %d test images, preset %s; report: %s/report.md',
               study.NAME, ', '.join(cfg.methods), cfg.checkpoint, cfg.num_examples,
               flags.FLAGS.preset, out)
  cli.run_and_finish(
      study.NAME, out, checkpoint=cfg.checkpoint, start_time=t0,
      run=lambda: study.run(cfg, output_dir=out, data_dir=flags.FLAGS.data_dir,
                            resume=flags.FLAGS.resume),
      finalize=lambda loaded: study_report.finalize(
          out, data_dir=flags.FLAGS.data_dir, model_and_variables=loaded))


if __name__ == '__main__':
  app.run(main)
