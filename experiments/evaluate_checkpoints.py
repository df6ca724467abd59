"""Evaluates the committed checkpoints on their full test splits and prints a table.

Example:
  python experiments/evaluate_checkpoints.py --models=alexnet_cifar,cnn_mnist
"""

import time

from absl import app
from absl import flags
from absl import logging

from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import models
from advsal_jax import training
from advsal_jax.studies import store

_MODELS = flags.DEFINE_list('models', None,
                            'Checkpoints to evaluate; default: every registered model that has a '
                            'committed checkpoint.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Offline data directory; default $ADVSAL_DATA_DIR, then tfds.')
_OUTPUT = flags.DEFINE_string('output', 'results/evaluate_checkpoints.json',
                              'Where to write the accuracies as JSON.')


def main(argv):
  del argv
  names = _MODELS.value
  if names is None:
    names = [n for n in sorted(models.MODELS) if checkpoints.resolve(n).joinpath(
        checkpoints.METADATA_FILE).exists()]
    missing = sorted(set(models.MODELS) - set(names))
    if missing:
      logging.warning('No committed checkpoint (not evaluated): %s', ', '.join(missing))
  for name in names:
    models.get_spec(name)  # Fail on an unknown name before any work.
  rows = []
  for name in names:
    model, variables, meta = checkpoints.load(name)
    ds = data.load(meta['dataset'], 'test', data_dir=_DATA_DIR.value)
    t = time.time()
    acc = training.evaluate(model.apply, variables, ds.images, ds.labels)
    seconds = time.time() - t
    rows.append({'model': name, 'dataset': meta['dataset'], 'test_accuracy': acc,
                 'metadata_accuracy': meta['test_accuracy'], 'examples': len(ds.labels),
                 'images_per_second': len(ds.labels) / seconds})
    logging.info('%s: %.4f on %d %s test images (%.0f img/s)', name, acc, len(ds.labels),
                 meta['dataset'], len(ds.labels) / seconds)
  store.write_json(_OUTPUT.value, rows)
  print(f'{"model":<20} {"dataset":<8} {"test acc":>8} {"img/s":>8}')
  for r in rows:
    print(f'{r["model"]:<20} {r["dataset"]:<8} {r["test_accuracy"]:>8.4f} '
          f'{r["images_per_second"]:>8.0f}')
  print(f'Wrote {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
