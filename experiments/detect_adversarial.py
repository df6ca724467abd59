"""Study 003: model-based saliency for the detection of adversarial examples.

Examples:
  python experiments/detect_adversarial.py                      # default preset, cnn_mnist
  python experiments/detect_adversarial.py --checkpoint=alexnet_cifar
  python experiments/detect_adversarial.py --preset=smoke       # seconds of work, for tests
  python experiments/detect_adversarial.py --attacks=fgsm,deepfool --eps=0.1

--experiments=shift (the only experiment so far): Tables 1-2 and Figure 1 of the paper, the
L2 distances between the saliency maps of natural and adversarial images (learnt saliency and
gradients) and the perturbation sizes. Unset L-inf budgets take the dataset's defaults
(``detect_adversarial.DATASET_BUDGETS``).
"""

import time

from absl import app
from absl import flags
from absl import logging

from advsal_jax import checkpoints
from advsal_jax.studies import cli
from advsal_jax.studies import detect_adversarial as study
from advsal_jax.studies import detect_adversarial_report as study_report

_D = study.Config()
cli.define_common_flags(checkpoint=_D.checkpoint, batch_size=_D.batch_size)
flags.DEFINE_list('experiments', list(study.EXPERIMENTS),
                  f'Experiments to run, of {list(study.EXPERIMENTS)}.')
flags.DEFINE_string('masker', '', 'Masking model checkpoint (name or directory); default '
                    'masker_<checkpoint name>.')
flags.DEFINE_list('attacks', list(_D.attacks), f'Attacks, of {list(study.ATTACK_NAMES)}.')
flags.DEFINE_float('eps', None, 'FGSM/BIM/MIM L-inf budget in [0, 1]; default: the '
                   "dataset's (MNIST 0.3, CIFAR-10 8/255).")
flags.DEFINE_float('bim_step', None, "BIM step size; default: the dataset's (0.05, 2/255).")
flags.DEFINE_float('mim_step', None, "MIM step size; default: the dataset's (0.06, 2/255).")
flags.DEFINE_integer('num_steps', _D.num_steps, 'BIM and MIM iterations.')
flags.DEFINE_float('mim_decay', _D.mim_decay, "MIM's momentum decay.")
flags.DEFINE_float('cw_confidence', _D.cw_confidence, 'C&W L2 confidence (kappa).')
flags.DEFINE_float('cw_learning_rate', _D.cw_learning_rate, 'C&W L2 learning rate.')
flags.DEFINE_float('cw_initial_const', _D.cw_initial_const, 'C&W L2 initial constant c.')
flags.DEFINE_integer('cw_binary_search_steps', _D.cw_binary_search_steps,
                     'C&W L2 binary-search steps.')
flags.DEFINE_integer('cw_max_iterations', _D.cw_max_iterations,
                     'C&W L2 iterations per binary-search step.')
flags.DEFINE_float('jsma_theta', _D.jsma_theta, "JSMA's change per feature.")
flags.DEFINE_float('jsma_gamma', _D.jsma_gamma, "JSMA's largest share of changed features.")
flags.DEFINE_float('deepfool_overshoot', _D.deepfool_overshoot, "DeepFool's overshoot.")
flags.DEFINE_integer('deepfool_max_iter', _D.deepfool_max_iter, "DeepFool's iteration limit.")
flags.DEFINE_enum('normalize', _D.normalize, study.NORMALIZATIONS,
                  'Per-map normalisation before the L2 distance.')
flags.DEFINE_integer('num_figure_images', _D.num_figure_images,
                     'Images whose maps are kept for the figures.')

_OWN = ('masker', 'attacks', 'eps', 'bim_step', 'mim_step', 'num_steps', 'mim_decay',
        'cw_confidence', 'cw_learning_rate', 'cw_initial_const', 'cw_binary_search_steps',
        'cw_max_iterations', 'jsma_theta', 'jsma_gamma', 'deepfool_overshoot',
        'deepfool_max_iter', 'normalize', 'num_figure_images')

PRESETS = {
    'smoke': {'num_examples': 4, 'batch_size': 4, 'attacks': ['fgsm', 'jsma', 'deepfool'],
              'num_steps': 2, 'deepfool_max_iter': 3, 'num_figure_images': 1},
    # C&W with cleverhans' 5 x 1000 iterations at learning rate 5e-3 costs minutes per batch
    # on a CPU; 100 iterations at that rate fool cnn_mnist on 2 of 32 images, at 0.1 on all.
    'default': {'num_examples': 128, 'cw_max_iterations': 100, 'cw_learning_rate': 0.1},
    'full': {'num_examples': 1000},
}


def main(argv):
  del argv
  t0 = time.time()
  cli.start()
  unknown = [e for e in flags.FLAGS.experiments if e not in study.EXPERIMENTS]
  if not flags.FLAGS.experiments or unknown:
    raise app.UsageError(f'experiments: expected names of {list(study.EXPERIMENTS)}, got '
                         f'{flags.FLAGS.experiments} (unknown: {unknown}).')
  s = cli.settings(PRESETS, [*cli.COMMON, *_OWN])
  try:
    cfg = study.Config(checkpoint=s['checkpoint'], num_examples=s['num_examples'],
                       batch_size=s['batch_size'], seed=s['seed'],
                       **{k: tuple(s[k]) if k == 'attacks' else s[k] for k in _OWN})
    study.validate(cfg)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  masker_dir = checkpoints.resolve(cfg.masker_name)
  if not (masker_dir / checkpoints.METADATA_FILE).exists():
    raise app.UsageError(f'masker: no masker checkpoint {cfg.masker_name!r} (looked in '
                         f'{masker_dir}); train one with experiments/train_masker.py or pass '
                         '--masker.')
  out = cli.default_output_dir(study.NAME, cfg.checkpoint, cfg.num_examples)
  logging.info('Study 003 (%s), experiments %s: attacks %s on the first %d test images of '
               '%s, masker %s; preset %s; report: %s/report.md', study.NAME,
               ','.join(flags.FLAGS.experiments), ', '.join(cfg.attacks), cfg.num_examples,
               cfg.checkpoint, cfg.masker_name, flags.FLAGS.preset, out)
  cli.run_and_finish(
      study.NAME, out, checkpoint=cfg.checkpoint, start_time=t0,
      run=lambda: study.run(cfg, output_dir=out, data_dir=flags.FLAGS.data_dir,
                            resume=flags.FLAGS.resume),
      finalize=lambda loaded: study_report.finalize(out))


if __name__ == '__main__':
  app.run(main)
