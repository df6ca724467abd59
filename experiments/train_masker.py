"""Trains the learnt-saliency masking model of a committed classifier and exports it.

Example:
  python experiments/train_masker.py --classifier=cnn_mnist --steps=1500 \
      --workdir=runs/train_masker/cnn_mnist --export_dir=checkpoints/masker_cnn_mnist
"""

from absl import app
from absl import flags

from advsal_jax import masker_training
from advsal_jax import saliency

_D = masker_training.MaskerConfig(classifier='')
_L = saliency.MaskerLoss()

_CLASSIFIER = flags.DEFINE_string('classifier', None,
                                  'Checkpoint name or directory of the classifier explained.')
_LAYERS = flags.DEFINE_list('layers', [], 'Classifier layers read, shallow to deep; default '
                            'per model (masker_training.DEFAULT_LAYERS).')
_WIDTH = flags.DEFINE_integer('width', _D.width, 'Channels of the decoder convolutions.')
_MASK_DOWNSAMPLE = flags.DEFINE_integer('mask_downsample', _D.mask_downsample,
                                        'Mask predicted at 1/N of the input resolution.')
_STEPS = flags.DEFINE_integer('steps', 0, 'Optimisation steps (or set --epochs).')
_EPOCHS = flags.DEFINE_integer('epochs', 0, 'Epochs of the training split (or set --steps).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', _D.batch_size, 'Images per step.')
_LR = flags.DEFINE_float('lr', _D.learning_rate, "Adam's initial learning rate (cosine decay).")
_LOSS = flags.DEFINE_enum('loss', _L.form, ['paper', 'margin'],
                          "'paper': lambda1*AV(m) - log p_c(Phi(x,m)) + "
                          "lambda2*p_c(Phi(x,1-m))^lambda3; 'margin': the reference code's "
                          'Carlini-Wagner margins.')
_LAMBDA1 = flags.DEFINE_float('lambda1', _L.lambda1, 'Paper loss: area weight.')
_LAMBDA2 = flags.DEFINE_float('lambda2', _L.lambda2, 'Paper loss: destroyer weight.')
_LAMBDA3 = flags.DEFINE_float('lambda3', _L.lambda3, 'Paper loss: destroyer power.')
_AREA_WEIGHT = flags.DEFINE_float('area_weight', _L.area_weight, 'Margin loss: area weight.')
_AREA_POWER = flags.DEFINE_float('area_power', _L.area_power, 'Margin loss: area power.')
_PRESERVER_WEIGHT = flags.DEFINE_float('preserver_weight', _L.preserver_weight,
                                       'Margin loss: preserver weight.')
_SEED = flags.DEFINE_integer('seed', _D.seed, 'Seed of init, batch order and alternatives.')
_CHECKPOINT_EVERY = flags.DEFINE_integer('checkpoint_every', _D.checkpoint_every,
                                         'Steps between saved (resumable) states.')
_LOG_EVERY = flags.DEFINE_integer('log_every', _D.log_every, 'Steps between progress lines.')
_NUM_EVAL = flags.DEFINE_integer('num_eval', _D.num_eval,
                                 'Held-out test images of the quality figures.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (config.json, states); resumed '
                               'if it holds the same run. Default runs/train_masker/<name>.')
_EXPORT_DIR = flags.DEFINE_string('export_dir', None,
                                  'Where to write the decoder and metadata.json.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Offline data directory; default $ADVSAL_DATA_DIR, then tfds.')

flags.mark_flags_as_required(['classifier'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    loss = saliency.MaskerLoss(
        form=_LOSS.value, lambda1=_LAMBDA1.value, lambda2=_LAMBDA2.value,
        lambda3=_LAMBDA3.value, area_weight=_AREA_WEIGHT.value, area_power=_AREA_POWER.value,
        preserver_weight=_PRESERVER_WEIGHT.value)
    cfg = masker_training.MaskerConfig(
        classifier=_CLASSIFIER.value, layers=tuple(_LAYERS.value), width=_WIDTH.value,
        mask_downsample=_MASK_DOWNSAMPLE.value, steps=_STEPS.value, epochs=_EPOCHS.value,
        batch_size=_BATCH_SIZE.value, learning_rate=_LR.value, loss=loss, seed=_SEED.value,
        checkpoint_every=_CHECKPOINT_EVERY.value, log_every=_LOG_EVERY.value,
        num_eval=_NUM_EVAL.value)
    masker_training.validate(cfg)
  except (TypeError, ValueError) as e:
    raise app.UsageError(str(e)) from e
  name = _CLASSIFIER.value.rstrip('/').split('/')[-1]
  masker_training.train(cfg, workdir=_WORKDIR.value or f'runs/train_masker/{name}',
                        export_dir=_EXPORT_DIR.value, data_dir=_DATA_DIR.value)


if __name__ == '__main__':
  app.run(main)
