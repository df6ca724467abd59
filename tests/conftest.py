"""Shared pytest fixtures: strict JAX config, real data and the committed checkpoints."""

import functools
import os
import pathlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import models

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


CIFAR_CLASSES = (b'airplane', b'automobile', b'bird', b'cat', b'deer', b'dog', b'frog', b'horse',
                 b'ship', b'truck')


def write_official_cifar(root: pathlib.Path, rng: np.random.Generator, *, per_batch: int = 3
                         ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Writes tiny CIFAR-10 python-version pickles (protocol 2, bytes keys) like the official ones.

  Returns:
    file name -> (uint8 images [n,32,32,3], int32 labels [n]).
  """
  d = root / 'cifar10' / 'cifar-10-batches-py'
  d.mkdir(parents=True)
  arrays = {}
  for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
    imgs = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, per_batch).tolist()
    planar = imgs.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # R, G, B planes
    with open(d / name, 'wb') as f:
      pickle.dump({b'batch_label': b'x', b'labels': labels, b'data': planar,
                   b'filenames': [b'a.png'] * per_batch}, f, protocol=2)
    arrays[name] = (imgs, np.asarray(labels, np.int32))
  with open(d / 'batches.meta', 'wb') as f:
    pickle.dump({b'num_cases_per_batch': per_batch, b'label_names': list(CIFAR_CLASSES),
                 b'num_vis': 3072}, f, protocol=2)
  return arrays


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


def random_study_checkpoint(root: pathlib.Path) -> tuple[pathlib.Path, str, str]:
  """A random-weight alexnet_cifar checkpoint and a tiny official-format CIFAR-10 test split.

  Returns:
    (root, checkpoint directory, data directory).
  """
  write_official_cifar(root / 'data', np.random.default_rng(0), per_batch=4)
  _, variables = models.init('alexnet_cifar', jax.random.key(0))
  ckpt = checkpoints.save(root / 'ckpt', model_name='alexnet_cifar', variables=variables,
                          metadata={'test_accuracy': 0.1, 'dataset': 'cifar10'})
  return root, str(ckpt), str(root / 'data')


def linear_apply(params, x):
  """A linear classifier ``flatten(x) @ w + b`` (closed-form gradients): logits f32[B,K]."""
  return x.reshape(x.shape[0], -1) @ params['w'] + params['b']


def tanh_mlp(params, x):
  """A tiny non-linear classifier, tanh features then a linear read-out: logits f32[B,K]."""
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params['w1'])
  return h @ params['w2'] + params['b']


def tanh_mlp_params(num_features: int, num_classes: int) -> dict[str, jax.Array]:
  """Fixed (seed 0) weights of ``tanh_mlp`` with 8 hidden units."""
  rng = np.random.default_rng(0)
  return {'w1': jnp.asarray(rng.normal(size=(num_features, 8)), jnp.float32),
          'w2': jnp.asarray(rng.normal(size=(8, num_classes)) * 2, jnp.float32),
          'b': jnp.zeros((1, num_classes), jnp.float32)}


class CompileCounter:
  """Counts traces of the functions it wraps and XLA compilations while registered."""

  def __init__(self):
    self.traces = 0
    self.compiles = 0

  def wrap(self, fn):
    @functools.wraps(fn)
    def counted(*args, **kwargs):
      self.traces += 1  # Runs while tracing only; a cached executable skips it.
      return fn(*args, **kwargs)
    return counted

  def __call__(self, event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      self.compiles += 1


@pytest.fixture
def compile_counter():
  c = CompileCounter()
  jax.monitoring.register_event_duration_secs_listener(c)
  yield c
  jax.monitoring.unregister_event_duration_listener(c)
