"""Bit reproducibility: one key (or seed) gives the same bits, another key a different result.

``STOCHASTIC`` lists every exported function that draws random numbers; each is called twice
with one key and once with another. Functions that take a key only for a uniform signature
(``KEY_IGNORED``) give the same bits whatever the key. Cases asserted elsewhere are named in
``ELSEWHERE``. A new exported function with a ``key``, ``keys``, ``seed`` or ``rng`` parameter
and no entry fails ``test_every_function_taking_a_key_has_an_entry``.

The study binaries: two runs of the smoke preset with the same flags and ``--seed`` write
byte-identical per-example CSV files and bit-identical arrays in their .npz files and shards,
except each batch's compute time (``seconds``), which studies 000 and 004 also keep in
``per_example.npz`` (slow: subprocesses). Already asserted elsewhere:
study 000's ``per_example.csv`` against a committed golden file
(``studies_compare_saliency_test.py::test_ported_study_gives_the_pre_toolkit_bytes``, real
data) and study 004's ``attacks.csv``/``per_example.csv`` after a kill and resume
(``studies_localize_attacks_test.py::test_binary_killed_mid_run_resumes_to_the_same_tables``).
Bitwise equality is promised on one machine and backend only, not across CPU and GPU.
"""

import functools
import inspect
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks
from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import detection
from advsal_jax import metrics
from advsal_jax import perturbation
from advsal_jax import saliency

from testing_utils import grid_segments, random_study_checkpoint, TinyNet

MODULES = {'saliency': saliency, 'attacks': attacks, 'metrics': metrics, 'data': data,
           'checkpoints': checkpoints, 'perturbation': perturbation, 'detection': detection}
_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TESTS_DIR = pathlib.Path(__file__).parent
_RANDOM_PARAMETERS = ('key', 'keys', 'seed', 'rng')

B, H, W, C, K = 2, 8, 8, 3, 3
X = np.random.default_rng(0).uniform(size=(B, H, W, C)).astype(np.float32)
TARGET = np.array([0, 2], np.int32)


@functools.cache
def _tiny_net():
  model = TinyNet(num_classes=K)
  return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, H, W, C)))


def _masker():
  model, _ = _tiny_net()
  return saliency.Masker(model, ('stem', 'features'), width=4)


def _lime_explain(key):
  model, variables = _tiny_net()
  return saliency.lime_explain(model.apply, variables, X, TARGET, key=key,
                               segments=grid_segments(B, H, W), num_samples=16)


def _pgd(key):
  model, variables = _tiny_net()
  return attacks.pgd(model.apply, variables, X, TARGET, key=key, eps=0.1, step_size=0.05,
                     num_steps=2)


def _linear_detector(variables, x):
  """A two-logit linear detector network of flattened inputs."""
  return x.reshape(x.shape[0], -1) @ variables['params']['w'] + variables['params']['b']


_DETECTOR_VARS = {'params': {
    'w': jnp.asarray(np.random.default_rng(1).normal(size=(H * W * C, 2)), jnp.float32),
    'b': jnp.zeros((1, 2), jnp.float32)}}
_DETECTOR = detection.Detector(_linear_detector, 'id')
_DETECTION_LABELS = np.array([0, 1], np.int32)


def _make_detection_set(key):
  model, variables = _tiny_net()
  return detection.make_detection_set(functools.partial(attacks.fgsm, eps=0.1), model.apply,
                                      variables, X, TARGET, key=key)


def _train_detector(key):
  inputs = np.concatenate([X, X[::-1], X ** 2, 1 - X])
  return detection.train_detector(_linear_detector, _DETECTOR_VARS, inputs,
                                  np.arange(8, dtype=np.int32) % 2, key=key, num_epochs=2,
                                  batch_size=3)


def _adversarial_training(key):
  model, variables = _tiny_net()
  params, history = detection.adversarial_training(
      model.apply, variables, X, TARGET, detector=_DETECTOR,
      detector_params={'source': None, 'detector': _DETECTOR_VARS}, inputs=X,
      input_labels=_DETECTION_LABELS, key=key, num_epochs=2, batch_size=1,
      attack=functools.partial(attacks.whitebox_detector, eps=0.1, step_size=0.05, num_steps=1))
  return params, [h['losses'] for h in history]


def _batches(seed):
  images = (np.arange(10 * H * W * C) % 251).astype(np.uint8).reshape(10, H, W, C)
  return list(data.batches(images, np.arange(10, dtype=np.int32), 4, seed=seed))


# '<module>.<name>' -> (call with one key or seed, two different keys or seeds).
STOCHASTIC = {
    'saliency.lime_explain': (_lime_explain, (jax.random.key(1), jax.random.key(2))),
    'saliency.alternative_images': (lambda k: saliency.alternative_images(k, X),
                                    (jax.random.key(1), jax.random.key(2))),
    'saliency.init_masker': (lambda k: saliency.init_masker(_masker(), _tiny_net()[1], X, key=k),
                             (jax.random.key(1), jax.random.key(2))),
    'attacks.pgd': (_pgd, (jax.random.key(1), jax.random.key(2))),
    'data.augment_cifar': (lambda k: data.augment_cifar(k, X, pad=2),
                           (jax.random.key(1), jax.random.key(2))),
    'data.batches': (_batches, (0, 1)),
    'detection.make_detection_set': (_make_detection_set, (jax.random.key(1), jax.random.key(2))),
    'detection.train_detector': (_train_detector, (jax.random.key(1), jax.random.key(2))),
    'detection.init_detector': (
        lambda k: detection.init_detector('cnn_mnist', 1, key=k)[1],
        (jax.random.key(1), jax.random.key(2))),
    'detection.adversarial_training': (_adversarial_training,
                                       (jax.random.key(1), jax.random.key(2))),
    'perturbation.fill_images': (
        lambda k: perturbation.fill_images(X, 'noise', keys=jax.random.split(k, B)),
        (jax.random.key(1), jax.random.key(2))),
}

# Attacks whose key is accepted for a uniform signature only, with small budgets.
KEY_IGNORED = {
    'attacks.fgsm': dict(eps=0.1),
    'attacks.bim': dict(eps=0.1, step_size=0.05, num_steps=2),
    'attacks.mim': dict(eps=0.1, step_size=0.05, num_steps=2),
    'attacks.carlini_wagner_l2': dict(binary_search_steps=1, max_iterations=5),
    'attacks.deepfool': dict(max_iter=3),
    'attacks.jsma': dict(targeted=True, gamma=0.1),
    'attacks.whitebox_detector': dict(detector_fn=_DETECTOR, eps=0.1, step_size=0.05,
                                      num_steps=2, detector_params={'source': None,
                                                                    'detector': _DETECTOR_VARS}),
}

_CONTRACT = 'saliency_contract_test.py::test_contract'
ELSEWHERE = {
    # Same key == same bits, another key differs (stochastic), or the key is ignored
    # (deterministic), for every registered method through explain, jitted. (Registered
    # 'gbvs' wraps the exported label-free gbvs(x), which takes no key.)
    **{f'saliency.{name}': _CONTRACT for name, spec in saliency.REGISTRY.items()
       if spec.fn is getattr(saliency, name, None)},
    'saliency.explain': _CONTRACT,
    'metrics.bootstrap_ci':
        'metrics_stats_test.py::test_bootstrap_ci_is_seeded_and_has_normal_theory_width',
}


def _exported(module) -> set[str]:
  if hasattr(module, '__all__'):
    return set(module.__all__)
  return {n for n, v in vars(module).items()
          if not n.startswith('_') and (inspect.isfunction(v) or inspect.isclass(v))
          and v.__module__ == module.__name__}


def _takes_randomness(fn) -> bool:
  try:
    parameters = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False
  return any(p in parameters for p in _RANDOM_PARAMETERS)


def test_every_function_taking_a_key_has_an_entry():
  taking = {f'{m}.{n}' for m, module in MODULES.items() for n in _exported(module)
            if callable(getattr(module, n)) and not inspect.isclass(getattr(module, n))
            and _takes_randomness(getattr(module, n))}
  listed = set(STOCHASTIC) | set(KEY_IGNORED) | set(ELSEWHERE)
  assert taking == listed, (f'no entry: {sorted(taking - listed)}; entries for functions '
                            f'without a key: {sorted(listed - taking)}')


@pytest.mark.parametrize('qualified', sorted(ELSEWHERE))
def test_covering_test_exists(qualified):
  path, name = ELSEWHERE[qualified].split('::')
  assert f'def {name}(' in (_TESTS_DIR / path).read_text()


def _leaves(tree) -> list[np.ndarray]:
  return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def _assert_same_bits(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize('qualified', sorted(STOCHASTIC))
def test_one_key_gives_the_same_bits_another_key_a_different_result(qualified):
  call, (key, other) = STOCHASTIC[qualified]
  first = call(key)
  _assert_same_bits(call(key), first)
  different = call(other)
  assert any(x.shape != y.shape or x.tobytes() != y.tobytes()
             for x, y in zip(_leaves(first), _leaves(different))), 'the key changes nothing'


@pytest.mark.parametrize('qualified', sorted(KEY_IGNORED))
def test_an_unused_key_changes_nothing(qualified):
  model, variables = _tiny_net()
  name = qualified.split('.')[1]
  attack = functools.partial(getattr(attacks, name), model.apply, variables, X, TARGET,
                             **KEY_IGNORED[qualified])
  first = attack(key=jax.random.key(1))
  _assert_same_bits(attack(key=jax.random.key(2)), first)
  _assert_same_bits(attack(), first)


# Study binaries.

_STUDIES = {
    # binary -> (extra flags, files to compare besides the shards)
    'compare_saliency': ((), ('per_example.csv', 'per_example.npz')),
    'explain_adversarial': ((), ('per_example.npz', 'per_example_pairs.csv',
                                 'per_example_attacks.csv', 'per_example_maps.csv',
                                 'per_example_recovery.csv')),
    # The flags of studies_localize_attacks_test.py's kill test: some attacks succeed on the
    # random network, so the explanation stage runs; its csv files are compared there.
    'localize_attacks': (('--num_examples=4', '--felzenszwalb_min_size=100', '--step_size=0.1',
                          '--max_steps=20'), ('per_example.npz',)),
}


@pytest.fixture(scope='module')
def study_inputs(tmp_path_factory):
  """A random-weight alexnet_cifar checkpoint and a tiny official-format CIFAR-10 split."""
  return random_study_checkpoint(tmp_path_factory.mktemp('study'))


# The compute time of each batch, stored beside its results: the one value that differs.
_TIMINGS = ('seconds',)


def _arrays(path: pathlib.Path) -> dict[str, bytes]:
  """The arrays of an .npz file as (dtype, shape, bytes), timings left out."""
  with np.load(path) as f:
    return {k: (f[k].dtype.str, f[k].shape, f[k].tobytes()) for k in f.files
            if k not in _TIMINGS}


@pytest.mark.slow
@pytest.mark.parametrize('binary', sorted(_STUDIES))
def test_same_seed_gives_bit_identical_per_example_files(binary, study_inputs, tmp_path):
  """CSV files byte for byte; .npz files (per-example results and every shard) array by
  array, bit for bit, but for the batches' compute ``seconds``."""
  _, ckpt, data_dir = study_inputs
  extra, files = _STUDIES[binary]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  outs = [tmp_path / 'first', tmp_path / 'second']
  for out in outs:
    proc = subprocess.run(
        [sys.executable, f'experiments/{binary}.py', '--preset=smoke', '--seed=3', *extra,
         f'--checkpoint={ckpt}', f'--data_dir={data_dir}', f'--output_dir={out}'],
        cwd=_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
  first, second = outs
  shards = sorted(p.relative_to(first) for p in (first / 'shards').rglob('*.npz'))
  assert shards == sorted(p.relative_to(second) for p in (second / 'shards').rglob('*.npz'))
  assert shards, 'no shard written'
  for name in [*files, *shards]:
    if str(name).endswith('.npz'):
      assert _arrays(first / name) == _arrays(second / name), name
    else:
      assert (first / name).read_bytes() == (second / name).read_bytes(), name
