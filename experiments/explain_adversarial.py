"""Study 001: saliency methods for explaining adversarial attacks (Gu & Tresp).

Examples:
  python experiments/explain_adversarial.py                   # default preset
  python experiments/explain_adversarial.py --preset=full     # the whole test split
  python experiments/explain_adversarial.py --preset=smoke    # seconds, for tests
  python experiments/explain_adversarial.py --checkpoint=cnn_mnist --experiments=recovery

Budgets left unset take the dataset's defaults
(advsal_jax.studies.explain_adversarial_config.BUDGETS).
A killed run continues with --resume (same flags).
"""

import time

from absl import app
from absl import flags
from absl import logging

from advsal_jax import perturbation
from advsal_jax.studies import cli
from advsal_jax.studies import explain_adversarial as study
from advsal_jax.studies import explain_adversarial_config as settings
from advsal_jax.studies import explain_adversarial_report as study_report

_D = settings.Config()
cli.define_common_flags(checkpoint=_D.checkpoint, batch_size=_D.batch_size)
flags.DEFINE_list('experiments', list(_D.experiments),
                  f'Any of {", ".join(settings.EXPERIMENTS)}.')
flags.DEFINE_list('methods', list(_D.methods),
                  f'Saliency methods: {", ".join(settings.METHODS)}.')
flags.DEFINE_integer('pair_classes', _D.pair_classes,
                     'Top predicted classes whose maps are paired (all pairs).')
flags.DEFINE_float('fgsm_eps', None, 'FGSM L-inf budget in pixels (default: per dataset).')
flags.DEFINE_float('bim_eps', None, 'BIM L-inf budget in pixels (default: per dataset).')
flags.DEFINE_float('bim_step_size', None, 'BIM step in pixels (default: per dataset).')
flags.DEFINE_integer('bim_steps', _D.bim_steps, 'BIM iterations.')
flags.DEFINE_integer('cw_steps', _D.cw_steps, 'C&W Adam steps per binary-search step.')
flags.DEFINE_integer('cw_search_steps', _D.cw_search_steps, 'C&W binary-search steps.')
flags.DEFINE_float('cw_learning_rate', None, 'C&W Adam step (default: per dataset).')
flags.DEFINE_float('cw_initial_const', None, 'C&W first constant (default: per dataset).')
flags.DEFINE_list('recovery_grid', [f'{p:g}' for p in _D.recovery_grid],
                  'Percentages of pixels perturbed in the recovery experiment.')
flags.DEFINE_enum('recovery_fill', _D.recovery_fill, list(perturbation.FILLS),
                  'What perturbed pixels become: the dataset mean colour, a blur of the '
                  'adversarial image, or uniform noise.')
flags.DEFINE_float('overlap_percent', _D.overlap_percent,
                   'Top pixels (%) compared with the top pixels of |delta|.')

PRESETS = {
    'smoke': {'num_examples': 4, 'batch_size': 2, 'bim_steps': 2, 'cw_steps': 4,
              'cw_search_steps': 2, 'recovery_grid': ['0', '25', '50'],
              'method_kwargs': ['smoothgrad.num_samples=2', 'integrated_gradients.num_steps=4']},
    'default': {'num_examples': 512},
    'full': {'num_examples': 10_000},
}
_OWN = ('experiments', 'methods', 'pair_classes', 'fgsm_eps', 'bim_eps', 'bim_step_size',
        'bim_steps', 'cw_steps', 'cw_search_steps', 'cw_learning_rate', 'cw_initial_const',
        'recovery_grid', 'recovery_fill', 'overlap_percent', 'method_kwargs')


def main(argv):
  del argv
  t0 = time.time()
  cli.start()
  s = cli.settings(PRESETS, [*cli.COMMON, *_OWN])
  try:
    cfg = settings.Config(
        checkpoint=s['checkpoint'], num_examples=s['num_examples'], batch_size=s['batch_size'],
        experiments=tuple(s['experiments']), methods=tuple(s['methods']),
        pair_classes=s['pair_classes'], fgsm_eps=s['fgsm_eps'], bim_eps=s['bim_eps'],
        bim_step_size=s['bim_step_size'], bim_steps=s['bim_steps'], cw_steps=s['cw_steps'],
        cw_search_steps=s['cw_search_steps'], cw_learning_rate=s['cw_learning_rate'],
        cw_initial_const=s['cw_initial_const'],
        recovery_grid=tuple(float(p) for p in s['recovery_grid']),
        recovery_fill=s['recovery_fill'], overlap_percent=s['overlap_percent'],
        method_kwargs=cli.parse_method_kwargs(s['method_kwargs'],
                                              settings.DEFAULT_METHOD_KWARGS),
        seed=s['seed'])
    settings.validate(cfg)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  out = cli.default_output_dir(settings.NAME, cfg.checkpoint, cfg.num_examples)
  logging.info('Study 001 (%s): %s on %s, first %d test images, preset %s; report: %s/report.md',
               settings.NAME, ', '.join(cfg.experiments), cfg.checkpoint, cfg.num_examples,
               flags.FLAGS.preset, out)
  cli.run_and_finish(
      settings.NAME, out, checkpoint=cfg.checkpoint, start_time=t0,
      run=lambda: study.run(cfg, output_dir=out, data_dir=flags.FLAGS.data_dir,
                            resume=flags.FLAGS.resume),
      finalize=lambda loaded: study_report.finalize(
          out, data_dir=flags.FLAGS.data_dir, model_and_variables=loaded))


if __name__ == '__main__':
  app.run(main)
