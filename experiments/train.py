"""Trains a registered classifier and exports it as a checkpoint with metadata.

Example:
  python experiments/train.py --model=alexnet_cifar --epochs=15 \
      --export_dir=checkpoints/alexnet_cifar
"""

from absl import app
from absl import flags

from advsal_jax import data
from advsal_jax import models
from advsal_jax import training

_MODEL = flags.DEFINE_enum('model', None, sorted(models.MODELS), 'Registered model name.')
_DATASET = flags.DEFINE_enum('dataset', None, list(data.DATASETS),
                             "Dataset; defaults to the model's own.")
_EPOCHS = flags.DEFINE_integer('epochs', 15, 'Training epochs.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Batch size.')
_OPTIMIZER = flags.DEFINE_enum('optimizer', 'sgd', ['sgd', 'adam'], 'Optimizer.')
_LR = flags.DEFINE_float('learning_rate', 0.1, 'Peak learning rate.')
_SCHEDULE = flags.DEFINE_enum('schedule', 'onecycle', ['onecycle', 'cosine', 'constant'],
                              'Learning-rate schedule.')
_WD = flags.DEFINE_float('weight_decay', 5e-4, 'Decoupled weight decay.')
_LABEL_SMOOTHING = flags.DEFINE_float('label_smoothing', 0.0, 'Label smoothing.')
_AUGMENT = flags.DEFINE_bool('augment', True, 'Random crop + flip (CIFAR-10 and its subsets).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of init, data order and augmentation.')
_WORKDIR = flags.DEFINE_string('output_dir', None, 'Per-epoch checkpoints (resumable).')
_EXPORT_DIR = flags.DEFINE_string('export_dir', None,
                                  'Where to write the final checkpoint + metadata.json.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Offline data directory; default $ADVSAL_DATA_DIR, then tfds.')
_RESUME = flags.DEFINE_bool('resume', True, 'Resume from the latest checkpoint in output_dir.')

flags.mark_flags_as_required(['model'])


def main(argv):
  del argv
  dataset = _DATASET.value or models.get_spec(_MODEL.value).dataset
  cfg = training.TrainConfig(
      model=_MODEL.value, dataset=dataset, epochs=_EPOCHS.value, batch_size=_BATCH_SIZE.value,
      optimizer=_OPTIMIZER.value, learning_rate=_LR.value, schedule=_SCHEDULE.value,
      weight_decay=_WD.value, label_smoothing=_LABEL_SMOOTHING.value, augment=_AUGMENT.value,
      seed=_SEED.value)
  workdir = _WORKDIR.value or f'runs/train/{cfg.model}'
  training.train(cfg, workdir=workdir, export_dir=_EXPORT_DIR.value, data_dir=_DATA_DIR.value,
                 resume=_RESUME.value)


if __name__ == '__main__':
  app.run(main)
