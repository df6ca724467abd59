"""Study 000: compare saliency maps of clean and FGSM-adversarial CIFAR-10 images.

Example (the paper's full experiment):
  python experiments/compare_saliency.py --num_examples=10000 \
      --output_dir=results/compare_saliency/full

Every batch is split over all devices (data parallel); on several hosts start one process per
host with --distributed (Cloud TPU and SLURM are detected, elsewhere add
--coordinator_address, --num_processes and --process_id). Only process 0 writes.
"""

from absl import app
from absl import flags
from absl import logging
import jax

from advsal_jax import checkpoints
from advsal_jax import parallel
from advsal_jax.studies import comparison

_D = comparison.ComparisonConfig()
_CHECKPOINT = flags.DEFINE_string('checkpoint', _D.checkpoint, 'Model name or checkpoint dir.')
_NUM = flags.DEFINE_integer('num_examples', _D.num_examples, 'First N CIFAR-10 test images.')
_BATCH = flags.DEFINE_integer('batch_size', _D.batch_size, 'Images per compiled batch.')
_UNT_EPS = flags.DEFINE_list('untargeted_eps', [str(e) for e in _D.untargeted_eps],
                             'Untargeted FGSM budgets.')
_TGT_EPS = flags.DEFINE_float('targeted_eps', _D.targeted_eps, 'Targeted FGSM budget.')
_EPS_SPACE = flags.DEFINE_enum('eps_space', _D.eps_space, list(comparison.EPS_SPACES),
                               "Budgets in the model's normalised input space or in pixels.")
_METHODS = flags.DEFINE_list('methods', list(_D.methods), 'Saliency methods.')
_METRICS = flags.DEFINE_list('metrics', list(_D.metrics), 'Similarity metrics.')
_SG_N = flags.DEFINE_integer('smoothgrad_samples', _D.smoothgrad_samples, 'SmoothGrad N.')
_SG_NOISE = flags.DEFINE_float('smoothgrad_noise', _D.smoothgrad_noise, 'SmoothGrad noise.')
_SEED = flags.DEFINE_integer('seed', _D.seed, 'Seed of the SmoothGrad noise.')
_OUTPUT = flags.DEFINE_string('output_dir', None,
                              'Default: results/compare_saliency/<checkpoint>_n<num_examples>.')
_RESUME = flags.DEFINE_bool('resume', False, 'Continue a killed run in output_dir.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Offline data directory; default $ADVSAL_DATA_DIR, then tfds.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Multi-host run: call jax.distributed.initialize (cluster settings '
    'auto-detected on Cloud TPU / SLURM unless the three flags below are given).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'With --distributed: host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'With --distributed: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   "With --distributed: this process's rank.")


def main(argv):
  del argv
  try:
    parallel.maybe_initialize_distributed(
        _DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  logging.info('process %d of %d; %d devices (%d local)', jax.process_index(),
               jax.process_count(), jax.device_count(), jax.local_device_count())
  try:
    eps = tuple(float(e) for e in _UNT_EPS.value)
  except ValueError as e:
    raise app.UsageError(f'--untargeted_eps must be numbers: {e}') from e
  cfg = comparison.ComparisonConfig(
      checkpoint=_CHECKPOINT.value, num_examples=_NUM.value, batch_size=_BATCH.value,
      untargeted_eps=eps, targeted_eps=_TGT_EPS.value, eps_space=_EPS_SPACE.value,
      methods=tuple(_METHODS.value), metrics=tuple(_METRICS.value),
      smoothgrad_samples=_SG_N.value, smoothgrad_noise=_SG_NOISE.value, seed=_SEED.value)
  out = _OUTPUT.value or f'results/compare_saliency/{cfg.checkpoint}_n{cfg.num_examples}'
  comparison.run(cfg, output_dir=out, data_dir=_DATA_DIR.value, resume=_RESUME.value)
  # Only process 0 writes the report, but orbax loads a checkpoint with every process.
  loaded = checkpoints.load(cfg.checkpoint)[:2] if jax.process_count() > 1 else None
  if jax.process_index() == 0:
    report = comparison.finalize(out, data_dir=_DATA_DIR.value, model_and_variables=loaded)
    logging.info('Report: %s', report)
    print(f'Report written to {report}')
  parallel.barrier('compare_saliency finished')


if __name__ == '__main__':
  app.run(main)
