"""Detection sets, detector training, scores, evaluation, adversarial training: toy problems."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advsal_jax import attacks
from advsal_jax import detection
from advsal_jax import metrics

from testing_utils import tanh_mlp, tanh_mlp_params

H, W, C, K = 6, 6, 1, 3
PATTERN = (0.25 * (np.indices((H, W)).sum(0) % 2)).astype(np.float32)[None, :, :, None]


class LinearDetector(nn.Module):
  """logits = Dense(2)(flatten(inputs))."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2, name='dense')(x.reshape(x.shape[0], -1))


class BatchNormDetector(nn.Module):
  """Dense -> BatchNorm -> Dense: trains with ``train=True, mutable=['batch_stats']``."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(4)(x.reshape(x.shape[0], -1))
    h = nn.BatchNorm(use_running_average=not train)(h)
    return nn.Dense(2)(nn.relu(h))


def _images(n, seed):
  return np.random.default_rng(seed).uniform(0.0, 0.75, (n, H, W, C)).astype(np.float32)


def _classifier():
  return tanh_mlp_params(H * W * C, K)


def _labels(x):
  return np.asarray(jnp.argmax(tanh_mlp(_classifier(), x), -1)).astype(np.int32)


def _add_pattern(apply_fn, params, x, labels, *, key=None):
  """A toy 'attack': every image plus one constant pattern (clean and adversarial separable)."""
  del apply_fn, params, labels, key
  return jnp.clip(x + PATTERN, 0.0, 1.0)


def _identity(apply_fn, params, x, labels, *, key=None):
  """A toy 'attack' that changes nothing (clean and adversarial identical)."""
  del apply_fn, params, labels, key
  return jnp.asarray(x)


def _detection_set(attack, n, seed):
  x = _images(n, seed)
  return detection.make_detection_set(attack, tanh_mlp, _classifier(), x, _labels(x),
                                      key=jax.random.key(seed), batch_size=16)


def test_detection_set_holds_each_image_and_its_attack_shuffled():
  x = _images(20, 0)
  attack = functools.partial(attacks.fgsm, eps=0.1)
  images, labels = detection.make_detection_set(attack, tanh_mlp, _classifier(), x, _labels(x),
                                                key=jax.random.key(3), batch_size=8)
  assert images.shape == (40, H, W, C) and labels.dtype == jnp.int32
  assert int(labels.sum()) == 20 and detection.CLEAN == 1 and detection.ADVERSARIAL == 0
  x_adv = attack(tanh_mlp, _classifier(), x, _labels(x))
  as_set = lambda a: sorted(map(bytes, np.asarray(a).reshape(len(a), -1)))
  images = np.asarray(images)
  assert as_set(images[labels == detection.CLEAN]) == as_set(x)
  np.testing.assert_allclose(np.sort(images[labels == detection.ADVERSARIAL].ravel()),
                             np.sort(np.asarray(x_adv).ravel()), atol=1e-6)
  assert np.asarray(labels)[:20].sum() not in (0, 20)  # Shuffled, not [clean, adversarial].
  again = detection.make_detection_set(attack, tanh_mlp, _classifier(), x, _labels(x),
                                       key=jax.random.key(3))  # One batch: same set.
  np.testing.assert_allclose(again[0], images, atol=1e-6)
  np.testing.assert_array_equal(again[1], labels)


def _train_and_score(attack):
  """AUROC on a held-out set of a linear detector trained on the ID input."""
  train_x, train_y = _detection_set(attack, 256, 0)
  test_x, test_y = _detection_set(attack, 64, 1)
  model = LinearDetector()
  variables = model.init(jax.random.key(0), train_x[:1])
  variables, losses = detection.train_detector(model.apply, variables, train_x, train_y,
                                               key=jax.random.key(1), num_epochs=20,
                                               batch_size=32, optimizer=optax.adam(1e-2))
  assert losses.shape == (20, 512 // 32) and np.isfinite(np.asarray(losses)).all()
  scores = detection.detector_scores(model.apply, variables, test_x, batch_size=50)
  return detection.evaluate_detector(scores, test_y), losses


def test_separable_problem_is_detected():
  result, losses = _train_and_score(_add_pattern)
  assert result.auroc > 0.95 and result.accuracy > 0.9 and result.tpr_at_fpr > 0.5
  assert float(losses[-1].mean()) < float(losses[0].mean())


def test_identical_problem_stays_at_chance():
  result, _ = _train_and_score(_identity)
  assert 0.35 <= result.auroc <= 0.65


def test_jit_equals_eager():
  x, y = _detection_set(_add_pattern, 16, 5)
  model = LinearDetector()
  variables = model.init(jax.random.key(0), x[:1])
  train = functools.partial(detection.train_detector, model.apply, num_epochs=2, batch_size=8)
  eager, eager_losses = train(variables, x, y, key=jax.random.key(1))
  jitted, jitted_losses = jax.jit(train)(variables, x, y, key=jax.random.key(1))
  np.testing.assert_allclose(jitted_losses, eager_losses, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  scores = functools.partial(detection.detector_scores, model.apply, batch_size=5)
  np.testing.assert_allclose(jax.jit(scores)(eager, x), scores(eager, x), rtol=1e-5, atol=1e-6)
  clean = _images(8, 6)
  make = functools.partial(detection.make_detection_set, functools.partial(attacks.fgsm, eps=0.1),
                           tanh_mlp, batch_size=3)
  want = make(_classifier(), clean, _labels(clean), key=jax.random.key(2))
  got = jax.jit(make)(_classifier(), clean, _labels(clean), key=jax.random.key(2))
  np.testing.assert_allclose(got[0], want[0], atol=1e-6)
  np.testing.assert_array_equal(got[1], want[1])


def test_scores_are_the_logit_difference_in_any_batch_size():
  model = LinearDetector()
  x = _images(10, 2)
  variables = model.init(jax.random.key(0), x[:1])
  logits = np.asarray(model.apply(variables, x))
  want = logits[:, detection.ADVERSARIAL] - logits[:, detection.CLEAN]
  for batch_size in (None, 3, 10, 64):
    np.testing.assert_allclose(
        detection.detector_scores(model.apply, variables, x, batch_size=batch_size), want,
        rtol=1e-5, atol=1e-6)


def test_evaluate_detector_counts_adversarial_as_positive():
  scores = np.array([-2.0, -1.0, 0.5, 1.0, 3.0, -0.5])
  labels = np.array([1, 1, 1, 0, 0, 0])
  result = detection.evaluate_detector(scores, labels, fpr=0.34)
  assert result.accuracy == pytest.approx(4 / 6)
  # Adversarial scores 1, 3, -0.5 beat 3, 3 and 2 of the clean scores -2, -1, 0.5.
  assert result.auroc == metrics.auroc(scores, labels == 0) == pytest.approx(8 / 9)
  # Flagging score >= -0.5 flags one clean image of three (FPR 1/3) and every adversarial one.
  assert result.tpr_at_fpr == metrics.tpr_at_fpr(scores, labels == 0, 0.34) == 1.0
  assert detection.evaluate_detector(scores, labels, fpr=0.3).tpr_at_fpr == 2 / 3


def test_batch_norm_statistics_are_trained():
  x, y = _detection_set(_add_pattern, 32, 0)
  model = BatchNormDetector()
  variables = model.init(jax.random.key(0), x[:1])
  trained, _ = detection.train_detector(model.apply, variables, x, y, key=jax.random.key(1),
                                        num_epochs=2, batch_size=16)
  assert set(trained) == {'params', 'batch_stats'}
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), trained['batch_stats'],
                       variables['batch_stats'])
  assert max(jax.tree.leaves(moved)) > 0


def test_registered_architecture_as_detector_of_signed_inputs():
  model, variables = detection.init_detector('cnn_mnist', 2, key=jax.random.key(0))
  logits = model.apply(variables, jnp.full((2, 28, 28, 2), -3.0))  # Outside [0, 1]: fine.
  assert logits.shape == (2, 2)
  with pytest.raises(ValueError, match=r'per-image shape \(28, 28, 2\)'):
    model.apply(variables, jnp.zeros((1, 28, 28, 1)))


def test_adversarial_training_grows_the_set_and_hardens_the_detector():
  x = _images(32, 4)
  y = _labels(x)
  inputs, input_labels = _detection_set(_add_pattern, 32, 4)
  model = LinearDetector()
  detector = detection.Detector(model.apply, 'id')
  variables, _ = detection.train_detector(model.apply, model.init(jax.random.key(0), x[:1]),
                                          inputs, input_labels, key=jax.random.key(1),
                                          num_epochs=10, batch_size=16)
  params = {'source': None, 'detector': variables}
  attack = functools.partial(attacks.whitebox_detector, eps=0.2, step_size=0.05, num_steps=4)
  x_wb = attack(tanh_mlp, _classifier(), x, y, detector_fn=detector, detector_params=params)
  before = detection.detector_scores(detector, params, x_wb)
  hardened, history = detection.adversarial_training(
      tanh_mlp, _classifier(), x, y, detector=detector, detector_params=params, inputs=inputs,
      input_labels=input_labels, key=jax.random.key(2), rounds=2, attack=attack, num_epochs=10,
      batch_size=16, attack_batch_size=16)
  assert len(history) == 2 and hardened['source'] is None
  assert history[0]['evaded'] == float(np.mean(np.asarray(before) < 0))
  assert history[1]['losses'].shape == (10, (64 + 2 * 64) // 16)
  after = detection.detector_scores(detector, hardened, x_wb)
  assert float(after.mean()) > float(before.mean())  # The old white-box images look adversarial.


def test_errors_name_the_argument():
  x, y = _detection_set(_add_pattern, 8, 0)
  model = LinearDetector()
  variables = model.init(jax.random.key(0), x[:1])
  train = functools.partial(detection.train_detector, model.apply, variables,
                            key=jax.random.key(0), batch_size=4)
  with pytest.raises(ValueError, match='labels must be CLEAN=1 or ADVERSARIAL=0'):
    train(x, y + 1)
  with pytest.raises(ValueError, match=r'labels must be i32\[N\] with N=16'):
    train(x, y[:3])
  with pytest.raises(ValueError, match='batch_size must be <= the number of inputs'):
    train(x, y, batch_size=17)
  with pytest.raises(ValueError, match='pass key='):
    detection.train_detector(model.apply, variables, x, y, key=None)
  with pytest.raises(TypeError, match='attack must be a callable'):
    detection.make_detection_set('fgsm', tanh_mlp, _classifier(), _images(2, 0),
                                 np.zeros(2, np.int32), key=jax.random.key(0))
  with pytest.raises(ValueError, match='apply_fn must return two logits'):
    detection.detector_scores(tanh_mlp, _classifier(), x)
