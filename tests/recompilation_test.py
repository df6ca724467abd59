"""No recompilation when only array values change (params, budgets, keys, baselines).

Params, eps and step sizes are traced arguments, so one compilation serves every checkpoint
and every budget of a sweep. Each test calls a jitted function once, then again with other
values of the same shapes and dtypes, and counts traces (a Python side effect that only runs
while tracing) and XLA compilations (``jax.monitoring``) during the later calls.
"""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks
from advsal_jax import checkpoints
from advsal_jax import models
from advsal_jax import parallel
from advsal_jax import saliency
from advsal_jax.studies import compare_saliency as study
from advsal_jax.studies import store
from testing_utils import write_official_cifar


class _Tiny(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(3)(h.reshape(h.shape[0], -1))


_MODEL = _Tiny()


def _params(seed):
  return _MODEL.init(jax.random.key(seed), jnp.zeros((1, 6, 6, 3)))


def _inputs(seed):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(size=(4, 6, 6, 3)), jnp.float32)
  return x, jnp.asarray(rng.integers(0, 3, 4), jnp.int32)


def _assert_compiled_once(fn, compile_counter, calls):
  """``fn(*args)`` for every args in ``calls``: the first traces and compiles, the rest reuse it."""
  jitted = jax.jit(compile_counter.wrap(fn))
  first = jitted(*calls[0])
  jax.block_until_ready(first)
  assert compile_counter.traces == 1
  traces, compiles = compile_counter.traces, compile_counter.compiles
  outs = [jax.block_until_ready(jitted(*args)) for args in calls[1:]]
  assert (compile_counter.traces - traces, compile_counter.compiles - compiles) == (0, 0)
  # The later calls really used their new values.
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first),
                                                      jax.tree.leaves(outs[0])))


_SALIENCY = {
    'smoothgrad': lambda p, x, y, key, level: saliency.smoothgrad(
        _MODEL.apply, p, x, y, key=key, num_samples=3, noise_level=level),
    'integrated_gradients': lambda p, x, y, key, baseline: saliency.integrated_gradients(
        _MODEL.apply, p, x, y, key=key, baseline=baseline, num_steps=4),
    'gradient': lambda p, x, y, key, unused: saliency.gradient(_MODEL.apply, p, x, y),
}


@pytest.mark.parametrize('name', sorted(_SALIENCY))
def test_saliency_compiles_once_for_new_params_keys_and_settings(name, compile_counter):
  x, y = _inputs(0)
  x2, y2 = _inputs(1)
  calls = [(_params(0), x, y, jax.random.key(0), jnp.float32(0.1)),
           (_params(1), x, y, jax.random.key(0), jnp.float32(0.1)),
           (_params(1), x2, y2, jax.random.key(5), jnp.float32(0.3))]
  _assert_compiled_once(_SALIENCY[name], compile_counter, calls)


_ATTACKS = {
    'fgsm': lambda p, x, y, key, eps, step: attacks.fgsm(_MODEL.apply, p, x, y, eps=eps),
    'bim': lambda p, x, y, key, eps, step: attacks.bim(
        _MODEL.apply, p, x, y, eps=eps, step_size=step, num_steps=3),
    'pgd': lambda p, x, y, key, eps, step: attacks.pgd(
        _MODEL.apply, p, x, y, key=key, eps=eps, step_size=step, num_steps=3),
}


@pytest.mark.parametrize('budget', [jnp.float32, float], ids=['array', 'python_float'])
@pytest.mark.parametrize('name', sorted(_ATTACKS))
def test_attacks_compile_once_for_new_params_and_budgets(name, budget, compile_counter):
  # Python floats are weakly typed scalars: their values are traced as well.
  x, y = _inputs(0)
  calls = [(_params(0), x, y, jax.random.key(0), budget(0.05), budget(0.02)),
           (_params(1), x, y, jax.random.key(0), budget(0.05), budget(0.02)),
           (_params(1), x, y, jax.random.key(1), budget(0.2), budget(0.1))]
  _assert_compiled_once(_ATTACKS[name], compile_counter, calls)


def test_the_counters_see_a_recompilation(compile_counter):
  """Control: a budget bound as a static argument recompiles for each new value."""
  x, y = _inputs(0)
  fgsm = jax.jit(compile_counter.wrap(lambda p, x, y, eps: attacks.fgsm(_MODEL.apply, p, x, y, eps=eps)),
                 static_argnums=3)
  for eps in (0.05, 0.1):
    jax.block_until_ready(fgsm(_params(0), x, y, eps))
  assert compile_counter.traces == 2 and compile_counter.compiles >= 2


_SMALL = dict(num_examples=3, batch_size=2, untargeted_eps=(0.2, 1.0),
              method_kwargs={'smoothgrad': {'num_samples': 2}},
              methods=('smoothgrad', 'grad_cam'), metrics=('spearman',))


def test_study_000_step_compiles_once_for_new_params_and_budgets(compile_counter, monkeypatch):
  monkeypatch.setattr(study, 'compare_batch', compile_counter.wrap(study.compare_batch))
  model, v0 = models.init('alexnet_cifar', jax.random.key(0))
  _, v1 = models.init('alexnet_cifar', jax.random.key(1))
  cfg = study.Config(**_SMALL)
  mesh = parallel.data_mesh()
  step = study.make_step(model.apply, mesh, cfg=cfg, num_classes=10,
                              layer=models.get_spec('alexnet_cifar').last_conv)
  x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  index = np.arange(2, dtype=np.int32)

  def eps(scale):
    return (np.full((2, 3), 0.01, np.float32) * scale, np.full((3,), 0.02, np.float32) * scale)

  first = jax.device_get(step((v0, *eps(1)), {'x': x, 'index': index}))
  assert compile_counter.traces == 1
  traces, compiles = compile_counter.traces, compile_counter.compiles
  second = jax.device_get(step((v1, *eps(1)), {'x': x, 'index': index}))
  third = jax.device_get(step((v1, *eps(3)), {'x': x, 'index': index + 5}))
  assert (compile_counter.traces - traces, compile_counter.compiles - compiles) == (0, 0)
  assert not np.array_equal(first['linf'], third['linf'])
  assert not np.array_equal(first['smoothgrad/spearman'], second['smoothgrad/spearman'])


def test_study_000_run_compiles_once_for_every_batch(compile_counter, monkeypatch, tmp_path):
  """Two batches, the last one padded: ``run`` traces ``compare_batch`` once."""
  write_official_cifar(tmp_path / 'data', np.random.default_rng(0), per_batch=4)
  _, variables = models.init('alexnet_cifar', jax.random.key(0))
  ckpt = checkpoints.save(tmp_path / 'ckpt', model_name='alexnet_cifar', variables=variables,
                          metadata={'test_accuracy': 0.1, 'dataset': 'cifar10'})
  monkeypatch.setattr(study, 'compare_batch', compile_counter.wrap(study.compare_batch))
  out = tmp_path / 'run'
  study.run(study.Config(checkpoint=str(ckpt), **_SMALL), output_dir=out,
            data_dir=str(tmp_path / 'data'))
  assert len(store.shard_files(out, study.STAGE)) == 2
  assert compile_counter.traces == 1
