"""Shared pytest fixtures: strict JAX config, real data and the committed checkpoints."""

import os

import jax
import numpy as np
import pytest

from advsal_jax import checkpoints
from advsal_jax import data

jax.config.update('jax_numpy_rank_promotion', 'raise')


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
