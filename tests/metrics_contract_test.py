"""Contract of every name exported by advsal_jax.metrics.

JAX metrics: output shape and dtype, finite values on generic inputs, jit == eager, and
batch == per-example (each row of a batched call equals the call on that example alone).
Host statistics and detection metrics: deterministic, documented result types. A name exported without an entry
here fails ``test_every_exported_name_is_in_the_table``.
"""

import functools

import jax
import numpy as np
import pytest

from advsal_jax import metrics

_B, _H, _W = 3, 16, 16


def _maps(rng, channels=None):
  shape = (_B, _H, _W) if channels is None else (_B, _H, _W, channels)
  a = rng.random(shape).astype(np.float32)
  return a, np.clip(a + 0.3 * rng.normal(size=shape), 0, 1).astype(np.float32)


def _masks(rng):
  return rng.random((_B, _H, _W)) > 0.6, rng.random((_B, _H, _W)) > 0.3


# name -> (function, inputs from an rng, keyword arguments, output shape, output dtype)
_JAX_TABLE = {
    'spearman': (metrics.spearman, _maps, dict(absolute=True), (_B,), np.float32),
    'pearson': (metrics.pearson, functools.partial(_maps, channels=3), {}, (_B,), np.float32),
    'cosine': (metrics.cosine, _maps, {}, (_B,), np.float32),
    'l2_distance': (metrics.l2_distance, _maps, dict(normalize='minmax'), (_B,), np.float32),
    'ssim': (metrics.ssim, functools.partial(_maps, channels=2), dict(data_range=1.0),
             (_B, _H, _W, 2), np.float32),
    'mean_ssim': (metrics.mean_ssim, _maps, dict(data_range=1.0), (_B,), np.float32),
    'hog': (metrics.hog, lambda rng: _maps(rng)[:1], {}, (_B, 36), np.float32),
    'hog_pearson': (metrics.hog_pearson, _maps, {}, (_B,), np.float32),
    'hog_spearman': (metrics.hog_spearman, functools.partial(_maps, channels=3),
                     dict(pixels_per_cell=(4, 4)), (_B,), np.float32),
    'top_k_mask': (metrics.top_k_mask, lambda rng: (np.round(_maps(rng)[0] * 3), 20), {},
                   (_B, _H, _W), np.bool_),
    'jaccard': (metrics.jaccard, _masks, {}, (_B,), np.float32),
    'hamming_likeness': (metrics.hamming_likeness, _masks, {}, (_B,), np.float32),
    'sim_ratio': (metrics.sim_ratio, _maps, dict(threshold=0.5), (_B,), np.float32),
    'avg_diff': (metrics.avg_diff, _maps, {}, (_B,), np.float32),
    'l0_norm': (metrics.l0_norm, lambda rng: (_maps(rng, channels=3)[0] - 0.5,),
                dict(per_pixel=True, atol=0.1), (_B,), np.float32),
    'l2_norm': (metrics.l2_norm, lambda rng: _maps(rng)[:1], {}, (_B,), np.float32),
    'linf_norm': (metrics.linf_norm, lambda rng: _maps(rng)[:1], {}, (_B,), np.float32),
}

# Host-side functions: name -> (function, inputs, keyword arguments, result type).
_HOST_TABLE = {
    'mann_whitney_u': (metrics.mann_whitney_u,
                       lambda rng: (rng.normal(size=30), rng.normal(0.5, 1, size=20)), {},
                       metrics.MannWhitneyResult),
    'bootstrap_ci': (metrics.bootstrap_ci, lambda rng: (rng.normal(size=50),),
                     dict(rng=0, n_resamples=500), metrics.MeanCI),
    'auroc': (metrics.auroc, lambda rng: (rng.normal(size=40), np.arange(40) % 2), {}, float),
    'tpr_at_fpr': (metrics.tpr_at_fpr, lambda rng: (rng.normal(size=40), np.arange(40) % 2),
                   dict(fpr=0.1), float),
}

# Result types: name -> the host function returning it.
_TYPE_TABLE = {'MannWhitneyResult': 'mann_whitney_u', 'MeanCI': 'bootstrap_ci'}


def test_every_exported_name_is_in_the_table():
  tables = (_JAX_TABLE, _HOST_TABLE, _TYPE_TABLE)
  covered = set().union(*tables)
  assert sum(map(len, tables)) == len(covered), 'a name is in two tables'
  assert set(metrics.__all__) == covered, (
      f'missing from the table: {sorted(set(metrics.__all__) - covered)}; '
      f'not exported: {sorted(covered - set(metrics.__all__))}')


@pytest.mark.parametrize('name', sorted(_JAX_TABLE))
def test_jax_metric_contract(name):
  fn, make_inputs, kwargs, shape, dtype = _JAX_TABLE[name]
  inputs = make_inputs(np.random.default_rng(0))
  call = functools.partial(fn, **kwargs)
  eager = np.asarray(call(*inputs))
  assert eager.shape == shape and eager.dtype == dtype
  assert np.all(np.isfinite(eager))
  np.testing.assert_allclose(jax.jit(call)(*inputs), eager, rtol=1e-6, atol=1e-6)
  for i in range(_B):
    one = [x[i:i + 1] if np.ndim(x) else x for x in inputs]
    np.testing.assert_allclose(call(*one)[0], eager[i], rtol=1e-6, atol=1e-6,
                               err_msg=f'{name}: example {i} alone differs from the batch')


@pytest.mark.parametrize('name', sorted(_HOST_TABLE))
def test_host_function_contract(name):
  fn, make_inputs, kwargs, result_type = _HOST_TABLE[name]
  inputs = make_inputs(np.random.default_rng(0))
  first, second = fn(*inputs, **kwargs), fn(*inputs, **kwargs)
  assert isinstance(first, result_type) and first == second
  values = first if isinstance(first, tuple) else (first,)
  assert all(isinstance(v, float) and np.isfinite(v) for v in values)


@pytest.mark.parametrize('name', sorted(_TYPE_TABLE))
def test_result_type_is_returned_by_its_function(name):
  fn, make_inputs, kwargs, result_type = _HOST_TABLE[_TYPE_TABLE[name]]
  assert result_type is getattr(metrics, name)
  assert type(fn(*make_inputs(np.random.default_rng(1)), **kwargs)) is result_type
