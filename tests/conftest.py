"""Shared pytest fixtures: strict JAX config, real data and the committed checkpoints.

Plain helper functions live in ``testing_utils``.
"""

import os

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import checkpoints
from advsal_jax import data

import testing_utils

jax.config.update('jax_numpy_rank_promotion', 'raise')

# The suite draws the same property-test examples on every run, so a CI result is
# reproducible; `pytest --hypothesis-profile=explore` searches with fresh random examples.
hypothesis.settings.register_profile('suite', derandomize=True)
hypothesis.settings.register_profile('explore', derandomize=False, max_examples=200)
hypothesis.settings.load_profile('suite')


@pytest.fixture(scope='session')
def data_dir() -> str:
  """The offline data directory; tests that need real data skip without it."""
  path = os.environ.get(data.DATA_DIR_ENV)
  if not path:
    pytest.skip(f'${data.DATA_DIR_ENV} is not set: no real data for this test.')
  return path


@pytest.fixture(scope='session')
def cifar_test(data_dir) -> data.Dataset:
  """The full CIFAR-10 test split (uint8)."""
  return data.load('cifar10', 'test', data_dir=data_dir)


@pytest.fixture(scope='session')
def mnist_test(data_dir) -> data.Dataset:
  """The full MNIST test split (uint8)."""
  return data.load('mnist', 'test', data_dir=data_dir)


@pytest.fixture(scope='session')
def alexnet_cifar():
  """``(model, variables, metadata)`` of the committed ``alexnet_cifar`` checkpoint."""
  return checkpoints.load('alexnet_cifar')


@pytest.fixture(scope='session')
def cnn_mnist():
  """``(model, variables, metadata)`` of the committed ``cnn_mnist`` checkpoint."""
  return checkpoints.load('cnn_mnist')


@pytest.fixture(scope='session')
def cifar_first500(cifar_test) -> tuple[np.ndarray, np.ndarray]:
  """First 500 CIFAR-10 test images as f32 [500,32,32,3] in [0,1] and labels int32 [500]."""
  return data.to_float(cifar_test.images[:500]), cifar_test.labels[:500]


@pytest.fixture(scope='session')
def checkpoint_saliency_pairs(alexnet_cifar, cifar_first500) -> tuple[np.ndarray, np.ndarray]:
  """Real saliency maps: |gradient| (max over channels) of the predicted logit of the trained
  alexnet_cifar on 4 test images and on their FGSM (0.03) versions, two f32[4,32,32]."""
  model, variables, _ = alexnet_cifar
  x = jnp.asarray(cifar_first500[0][:4])
  label = jnp.argmax(model.apply(variables, x), axis=-1)

  def grad(images):
    def score(images):
      logits = model.apply(variables, images)
      return jnp.sum(jnp.take_along_axis(logits, label[:, None], axis=1))
    return jax.grad(score)(images)

  g = grad(x)
  g_adv = grad(jnp.clip(x + 0.03 * jnp.sign(g), 0, 1))
  return np.asarray(jnp.max(jnp.abs(g), axis=-1)), np.asarray(jnp.max(jnp.abs(g_adv), axis=-1))


@pytest.fixture
def compile_counter():
  """A ``testing_utils.CompileCounter`` registered with jax.monitoring for one test."""
  c = testing_utils.CompileCounter()
  jax.monitoring.register_event_duration_secs_listener(c)
  yield c
  jax.monitoring.unregister_event_duration_listener(c)
