"""Study 003: model-based saliency for the detection of adversarial examples.

Examples:
  python experiments/detect_adversarial.py                      # default preset, cnn_mnist
  python experiments/detect_adversarial.py --checkpoint=alexnet_cifar
  python experiments/detect_adversarial.py --preset=smoke       # seconds of work, for tests
  python experiments/detect_adversarial.py --experiments=matrix --detectors=spd,smd

Experiments (``--experiments``, default all):
  shift     Tables 1-2 and Figure 1: L2 distances between the saliency maps of natural and
            adversarial images (learnt saliency and gradients), perturbation sizes.
  matrix    Figure 2: detectors (SPD, SMD, ID, JSD) trained on one attack, tested on all.
  whitebox  Table 3: the white-box attack on classifier and detector, before and after
            adversarial training of the detector.
Unset L-inf budgets take the dataset's defaults (``detect_adversarial.DATASET_BUDGETS``).
The adversarial sets of the detection experiments are cached by content hash under
--cache_dir and shared between runs.
"""

import time

from absl import app
from absl import flags
from absl import logging

from advsal_jax import checkpoints
from advsal_jax.studies import cli
from advsal_jax.studies import detect_adversarial as study
from advsal_jax.studies import detect_adversarial_detectors as detectors
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
flags.DEFINE_list('detectors', list(_D.detectors),
                  f'Detectors of the detection experiments, of {list(study.DETECTOR_KINDS)}.')
flags.DEFINE_string('detector_saliency', _D.detector_saliency,
                    'Saliency method of SMD and SPD (the learnt mask by default; e.g. gradient).')
flags.DEFINE_integer('num_train', _D.num_train,
                     'First N training images attacked to train the detectors.')
flags.DEFINE_integer('num_seeds', _D.num_seeds, 'Detectors trained per cell (mean +- std).')
flags.DEFINE_bool('only_successful', _D.only_successful,
                  'Detectors see only the images the classifier got right and the attack '
                  'fooled (and their adversarial versions).')
flags.DEFINE_integer('detector_epochs', _D.detector_epochs, 'Epochs of each detector.')
flags.DEFINE_integer('detector_batch_size', _D.detector_batch_size, 'Detector minibatch size.')
flags.DEFINE_float('detector_lr', _D.detector_lr, "Detectors' Adam learning rate.")
flags.DEFINE_enum('whitebox_train_attack', _D.whitebox_train_attack, study.ATTACK_NAMES,
                  'Black-box attack the white-box experiment\'s detectors are trained on.')
flags.DEFINE_float('whitebox_eps', None, "White-box L-inf budget; default --eps.")
flags.DEFINE_float('whitebox_step', None, "White-box step size; default --bim_step.")
flags.DEFINE_integer('whitebox_steps', _D.whitebox_steps, 'White-box rounds T (paper: 5).')
flags.DEFINE_list('whitebox_modes', list(_D.whitebox_modes),
                  f'White-box modes, of {list(study.WHITEBOX_MODES)}; adversarial training '
                  'uses the first.')
flags.DEFINE_float('whitebox_weight', _D.whitebox_weight,
                   "The detector's weight in a joint white-box step.")
flags.DEFINE_integer('adversarial_rounds', _D.adversarial_rounds,
                     'Rounds of adversarial training of each detector.')
flags.DEFINE_integer('adversarial_epochs', _D.adversarial_epochs,
                     'Fine-tuning epochs per adversarial-training round.')
flags.DEFINE_string('cache_dir', 'results/detect_adversarial/cache',
                    'Where adversarial sets are cached by content hash (shared by runs).')

_OWN = ('masker', 'attacks', 'eps', 'bim_step', 'mim_step', 'num_steps', 'mim_decay',
        'cw_confidence', 'cw_learning_rate', 'cw_initial_const', 'cw_binary_search_steps',
        'cw_max_iterations', 'jsma_theta', 'jsma_gamma', 'deepfool_overshoot',
        'deepfool_max_iter', 'normalize', 'num_figure_images', 'experiments', 'detectors',
        'detector_saliency', 'num_train', 'num_seeds', 'only_successful', 'detector_epochs',
        'detector_batch_size', 'detector_lr', 'whitebox_train_attack', 'whitebox_eps',
        'whitebox_step', 'whitebox_steps', 'whitebox_modes', 'whitebox_weight',
        'adversarial_rounds', 'adversarial_epochs')
_LISTS = ('attacks', 'experiments', 'detectors', 'whitebox_modes')

PRESETS = {
    'smoke': {'num_examples': 4, 'batch_size': 4, 'attacks': ['fgsm', 'jsma', 'deepfool'],
              'num_steps': 2, 'deepfool_max_iter': 3, 'num_figure_images': 1, 'num_train': 8,
              'only_successful': False, 'detector_epochs': 1, 'detector_batch_size': 4,
              'whitebox_steps': 1, 'adversarial_rounds': 1, 'adversarial_epochs': 1},
    # C&W with cleverhans' 5 x 1000 iterations at learning rate 5e-3 costs minutes per batch
    # on a CPU; 100 iterations at that rate fool cnn_mnist on 2 of 32 images, at 0.1 on all.
    'default': {'num_examples': 128, 'cw_max_iterations': 100, 'cw_learning_rate': 0.1,
                'num_train': 256},
    'full': {'num_examples': 1000, 'num_train': 2000, 'num_seeds': 3, 'detector_epochs': 20,
             'adversarial_rounds': 3},
}


def run(cfg: study.Config, out: str):
  """The shift experiment (if selected), then the detection experiments, in ``out``."""
  study.run(cfg, output_dir=out, data_dir=flags.FLAGS.data_dir, resume=flags.FLAGS.resume)
  detectors.run(cfg, output_dir=out, cache_dir=flags.FLAGS.cache_dir,
                data_dir=flags.FLAGS.data_dir)


def main(argv):
  del argv
  t0 = time.time()
  cli.start()
  s = cli.settings(PRESETS, [*cli.COMMON, *_OWN])
  try:
    cfg = study.Config(checkpoint=s['checkpoint'], num_examples=s['num_examples'],
                       batch_size=s['batch_size'], seed=s['seed'],
                       **{k: tuple(s[k]) if k in _LISTS else s[k] for k in _OWN})
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
               ','.join(cfg.experiments), ', '.join(cfg.attacks), cfg.num_examples,
               cfg.checkpoint, cfg.masker_name, flags.FLAGS.preset, out)
  cli.run_and_finish(
      study.NAME, out, checkpoint=cfg.checkpoint, start_time=t0,
      run=lambda: run(cfg, out),
      finalize=lambda loaded: study_report.finalize(out))


if __name__ == '__main__':
  app.run(main)
