"""Plain helpers shared by the tests: toy models, tiny official-format data, compile counting.

Fixtures stay in ``conftest.py``; a test imports these with ``from testing_utils import ...``.
"""

import functools
import os
import pathlib
import pickle
import signal
import subprocess
import time
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import checkpoints
from advsal_jax import models
from advsal_jax import saliency

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


def random_study_masker(root: pathlib.Path, classifier_dir: str) -> str:
  """A random masker of the random alexnet_cifar checkpoint at ``classifier_dir``."""
  classifier, cvars, cmeta = checkpoints.load(classifier_dir)
  masker = saliency.Masker(classifier, ('conv1', 'conv5'), width=4)
  mvars = saliency.init_masker(masker, cvars, jnp.zeros((1, 32, 32, 3)), key=jax.random.key(3))
  metadata = {'kind': 'masker', 'classifier': classifier_dir, 'dataset': 'cifar10',
              'classifier_checkpoint': {k: cmeta.get(k) for k in ('model', 'test_accuracy')},
              'masker': {'layers': list(masker.layers), 'width': 4, 'mask_downsample': 2}}
  return str(checkpoints.save(root / 'masker', model_name='alexnet_cifar',
                              variables=saliency.decoder_params(mvars), metadata=metadata))


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


class ConvRelu(nn.Module):
  """3x3 convolution then ReLU; its conv is the submodule 'conv'."""
  features: int

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(self.features, (3, 3), name='conv')(x))


class TinyNet(nn.Module):
  """conv-relu, 2x2 max pool, conv-relu ('features'), global average pooling, dense 'logits'.

  CAM-exact (the logits are a dense layer of the pooled 'features' activation); H and W of
  the input must be even.
  """
  num_classes: int = 3

  @nn.compact
  def __call__(self, x):
    x = ConvRelu(6, name='stem')(x)
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    x = ConvRelu(8, name='features')(x)
    return nn.Dense(self.num_classes, name='logits')(x.mean(axis=(1, 2)))


def grid_segments(batch: int, height: int, width: int) -> np.ndarray:
  """Four quadrant superpixels per image: i32[batch,height,width] in [0, 4)."""
  seg = ((np.arange(height)[:, None] >= height // 2) * 2
         + (np.arange(width)[None, :] >= width // 2))
  return np.broadcast_to(seg, (batch, height, width)).astype(np.int32)


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


def kill_when(cmd: Sequence[str], ready: Callable[[], bool], *, cwd: pathlib.Path, env: dict,
              timeout: float = 600.0):
  """Runs ``cmd`` and kills it with SIGKILL once ``ready()`` holds (or it exits, or time is up)."""
  child = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while not ready() and child.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  child.send_signal(signal.SIGKILL)
  child.wait()


def assert_killed_run_resumes_to_the_same_files(
    cmd: Callable[..., list[str]], first: Callable[[pathlib.Path], pathlib.Path],
    names: Sequence[str], *, tmp_path: pathlib.Path, cwd: pathlib.Path, timeout: float = 900):
  """A binary killed once ``first(out)`` exists, then resumed, writes ``names`` byte for byte
  as an uninterrupted run does.

  Args:
    cmd: ``cmd(output_dir, *extra_flags) -> argv`` of the binary.
    first: the file whose appearance marks finished work in an output directory.
    names: result files compared between the two runs.
    tmp_path: where the two output directories go.
    cwd: the working directory of the binary.
    timeout: seconds per run.
  """
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  whole, killed = tmp_path / 'whole', tmp_path / 'killed'
  proc = subprocess.run(cmd(whole), cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  kill_when(cmd(killed), first(killed).exists, cwd=cwd, env=env, timeout=timeout)
  assert first(killed).exists() and not (killed / 'report.md').exists()
  proc = subprocess.run(cmd(killed, '--resume'), cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  for name in names:
    assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
