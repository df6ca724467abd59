"""Adversarial training of a detector against the white-box attack, iterated as paper 003 does.

"We iteratively train the detectors against the white-box attack and allow the white-box
attack access to the new defense": every round attacks the *current* detector (and the
classifier) on the clean training images, adds the results to the detector's training set
and fine-tunes the detector on the enlarged set. To keep the set balanced, each round adds
the clean images again (``CLEAN``) beside their white-box versions (``ADVERSARIAL``).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advsal_jax import _checks
from advsal_jax import attacks
from advsal_jax.detection import _detector
from advsal_jax.types import ApplyFn, Params, PRNGKey


def adversarial_training(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                         labels: jax.typing.ArrayLike, *, detector: _detector.Detector,
                         detector_params: Params, inputs: jax.typing.ArrayLike,
                         input_labels: jax.typing.ArrayLike, key: PRNGKey, rounds: int = 1,
                         attack: Callable[..., jax.Array] = attacks.whitebox_detector,
                         num_epochs: int = 5, batch_size: int = 128,
                         attack_batch_size: int | None = None,
                         optimizer: optax.GradientTransformation = (
                             _detector.DEFAULT_OPTIMIZER)
                         ) -> tuple[Params, list[dict[str, Any]]]:
  """``rounds`` rounds of: white-box attack on the current detector, grow the set, fine-tune.

  Round r (keys from ``fold_in(key, r)``):

  1. ``x_wb = attack(apply_fn, params, x, labels, detector_fn=detector,
     detector_params=<current>, key=...)`` in compiled batches of ``attack_batch_size``;
  2. records how many ``x_wb`` evade the current detector (score < 0, "clean") and fool the
     classifier;
  3. appends the detector inputs of ``x`` (``CLEAN``) and ``x_wb`` (``ADVERSARIAL``) to
     ``(inputs, input_labels)``;
  4. fine-tunes the current network on the whole set with ``train_detector`` (fresh
     optimizer state).

  Args:
    apply_fn: the classifier, ``apply_fn(params, x) -> logits f32[B,K]``.
    params: its variables.
    x: f32[N,H,W,C] clean training images in [0, 1].
    labels: i32[N] their classes.
    detector: the detector (input transform and network).
    detector_params: ``{'source': ..., 'detector': ...}``, the detector already trained
      (e.g. on ``make_detection_set``'s black-box set).
    inputs: f32[M,H,W,C'] the detector's training inputs so far (``detector.inputs`` of the
      detection set).
    input_labels: i32[M] their labels (``CLEAN``/``ADVERSARIAL``).
    key: typed PRNG key.
    rounds: static number of rounds >= 1.
    attack: ``attacks.whitebox_detector`` with its budget bound, e.g.
      ``functools.partial(attacks.whitebox_detector, eps=0.3, step_size=0.1, num_steps=5)``.
    num_epochs: fine-tuning epochs per round.
    batch_size: fine-tuning minibatch size.
    attack_batch_size: static images per compiled attack batch; None: all at once.
    optimizer: as ``train_detector``.

  Returns:
    ``(detector_params, history)``: the parameters after the last round (``source``
    unchanged) and per round a dict with 'evaded' and 'fooled' (shares of the round's
    white-box images the detector called clean / the classifier misclassified, before
    fine-tuning), 'evaded_and_fooled' and 'losses' (``train_detector``'s).

  Raises:
    ValueError, TypeError: malformed arguments, naming them (before any compilation).
  """
  _checks.check_classifier_inputs(apply_fn, params, x, labels, name='labels')
  _checks.check_key(key, caller='adversarial_training')
  _checks.check_count(rounds, 'rounds')
  if attack_batch_size is not None:
    _checks.check_count(attack_batch_size, 'attack_batch_size')
  if not isinstance(detector, _detector.Detector):
    raise TypeError(f'detector must be a detection.Detector, got {type(detector).__name__}.')
  if not isinstance(detector_params, dict) or set(detector_params) != {'source', 'detector'}:
    got = (sorted(detector_params) if isinstance(detector_params, dict)
           else type(detector_params).__name__)
    raise ValueError("detector_params must be a dict with keys 'source' and 'detector', got "
                     f'{got}.')
  _detector.check_inputs(inputs)
  _detector.check_labels01(input_labels, np.shape(inputs)[0], name='input_labels')
  shape = jax.eval_shape(detector.inputs, detector_params['source'],
                         jax.ShapeDtypeStruct(np.shape(x), jnp.float32)).shape[1:]
  if tuple(np.shape(inputs)[1:]) != shape:
    raise ValueError(f'inputs must be detector inputs of shape [M, *{shape}] (what '
                     f'detector.inputs gives), got {np.shape(inputs)}.')
  x, labels = jnp.asarray(x), jnp.asarray(labels)
  n = x.shape[0]
  clean_inputs = detector.inputs(detector_params['source'], x, batch_size=attack_batch_size)
  inputs = jnp.asarray(inputs, jnp.float32)
  input_labels = jnp.asarray(input_labels, jnp.int32)
  round_labels = jnp.concatenate([jnp.full((n,), _detector.CLEAN, jnp.int32),
                                  jnp.full((n,), _detector.ADVERSARIAL, jnp.int32)])
  history = []
  for r in range(rounds):
    k_attack, k_train = jax.random.split(jax.random.fold_in(key, r))
    current = detector_params
    x_wb = _detector.map_batches(
        lambda i, xc, yc, p=current: attack(apply_fn, params, xc, yc, detector_fn=detector,
                                            detector_params=p,
                                            key=jax.random.fold_in(k_attack, i)),
        x, labels, batch_size=attack_batch_size)
    wb_inputs = detector.inputs(detector_params['source'], x_wb, batch_size=attack_batch_size)
    scores = _detector.detector_scores(detector.network, detector_params['detector'],
                                       wb_inputs, batch_size=attack_batch_size)
    predicted = _detector.map_batches(lambda _, xc: jnp.argmax(apply_fn(params, xc), -1),
                                      x_wb, batch_size=attack_batch_size)
    evaded, fooled = np.asarray(scores < 0), np.asarray(predicted != labels)
    inputs = jnp.concatenate([inputs, clean_inputs, wb_inputs])
    input_labels = jnp.concatenate([input_labels, round_labels])
    network_vars, losses = _detector.train_detector(
        detector.network, detector_params['detector'], inputs, input_labels, key=k_train,
        num_epochs=num_epochs, batch_size=batch_size, optimizer=optimizer)
    detector_params = {'source': detector_params['source'], 'detector': network_vars}
    history.append({'evaded': float(evaded.mean()), 'fooled': float(fooled.mean()),
                    'evaded_and_fooled': float((evaded & fooled).mean()),
                    'losses': np.asarray(losses)})
  return detector_params, history
