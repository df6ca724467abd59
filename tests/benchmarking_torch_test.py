"""advsal_jax.benchmarks.torch_peers: the converted PyTorch model and the peers.

Skipped without torch. No timing assertions: the PyTorch numbers only have to exist and be
positive.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import models
from advsal_jax import saliency
from advsal_jax.benchmarks import config
from advsal_jax.benchmarks import runner
from advsal_jax.benchmarks import study_pipeline
from advsal_jax.benchmarks import torch_peers
from advsal_jax.benchmarks import torch_training
from advsal_jax.benchmarks import workloads
from advsal_jax.studies import compare_saliency

torch = pytest.importorskip('torch')
pytest.importorskip('captum')


@pytest.fixture(scope='module')
def random_alexnet():
  """``(model, variables)`` of a freshly initialised alexnet_cifar (jitted: eager init is slow)."""
  model = models.create('alexnet_cifar')
  return model, jax.jit(lambda k: models.init('alexnet_cifar', k)[1])(jax.random.key(0))


def _images(n: int, seed: int = 1) -> np.ndarray:
  return np.asarray(jax.random.uniform(jax.random.key(seed), (n, 32, 32, 3)))


def _torch_logits(module, x: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return module(torch.from_numpy(np.array(x.transpose(0, 3, 1, 2)))).numpy()


def _random_batch_stats(variables, key):
  """BatchNorm statistics far from init's (mean 0, var 1), so their conversion matters."""
  leaves, tree = jax.tree.flatten(variables['batch_stats'])
  keys = jax.random.split(key, len(leaves))
  stats = [jax.random.uniform(k, a.shape, minval=0.2, maxval=2.0) for k, a in zip(keys, leaves)]
  return {**variables, 'batch_stats': jax.tree.unflatten(tree, stats)}


@pytest.mark.parametrize('random_stats', [False, True])
def test_converted_random_init_model_has_the_flax_logits(random_alexnet, random_stats):
  model, variables = random_alexnet
  if random_stats:
    variables = _random_batch_stats(variables, jax.random.key(2))
  x = _images(4)
  module = torch_peers.to_torch('alexnet_cifar', variables)
  np.testing.assert_allclose(_torch_logits(module, x), jax.jit(model.apply)(variables, x),
                             atol=1e-4, rtol=1e-4)


def test_converted_checkpoint_has_the_flax_logits(alexnet_cifar):
  model, variables, _ = alexnet_cifar
  x = _images(8)
  module = torch_peers.to_torch('alexnet_cifar', variables)
  np.testing.assert_allclose(_torch_logits(module, x), jax.jit(model.apply)(variables, x),
                             atol=1e-4, rtol=1e-4)
  assert not module.training
  relus = [m for m in module.modules() if isinstance(m, torch.nn.ReLU)]
  assert len(relus) == len(set(map(id, relus))) == 6  # One module per ReLU (GuidedBackprop).


def test_captum_saliency_is_our_gradient(alexnet_cifar):
  from captum.attr import Saliency  # pylint: disable=g-import-not-at-top
  model, variables, _ = alexnet_cifar
  x = _images(4)
  target = jnp.argmax(jax.jit(model.apply)(variables, x), axis=-1).astype(jnp.int32)
  module = torch_peers.to_torch('alexnet_cifar', variables)
  xt = torch.from_numpy(np.array(x.transpose(0, 3, 1, 2))).requires_grad_()
  theirs = Saliency(module).attribute(xt, target=torch.from_numpy(np.asarray(target, np.int64)),
                                      abs=False).detach().numpy().transpose(0, 2, 3, 1)
  ours = np.asarray(jax.jit(saliency.gradient, static_argnums=0)(model.apply, variables, x,
                                                                  target))
  np.testing.assert_allclose(theirs, ours, atol=1e-5 * np.abs(ours).max())


def test_other_models_are_refused_before_any_compilation(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match='only alexnet_cifar'):
    torch_peers.to_torch('cnn_mnist', {})
  cfg = config.BenchmarkConfig(model='cnn_mnist', batch_size=2, workloads=('forward',),
                                     repeats=1, compare_torch=True)
  subject = workloads.Subject('cnn_mnist', lambda params, x: x[:, 0, 0], {}, 'conv4')
  x = np.zeros((2, 28, 28, 1), np.float32)

  def no_jit(*args, **kwargs):
    raise AssertionError('compiled before refusing the model')

  monkeypatch.setattr(runner.jax, 'jit', no_jit)
  with pytest.raises(ValueError, match="only alexnet_cifar.*'cnn_mnist'"):
    runner.benchmark(subject, x, cfg, output_dir=tmp_path)


def test_benchmark_records_the_pytorch_peers(random_alexnet, tmp_path):
  torchattacks = pytest.importorskip('torchattacks')
  cfg = config.BenchmarkConfig(
      batch_size=2, repeats=1, ig_steps=2, ig_chunk=1,
      workloads=('gradient', 'gradient_x_input', 'grad_cam', 'integrated_gradients', 'fgsm'),
      compare_torch=True)
  model, variables = random_alexnet
  subject = workloads.Subject('alexnet_cifar', model.apply, variables, 'conv5')
  records = runner.benchmark(subject, _images(2), cfg, output_dir=tmp_path)
  by_name = {r['workload']: r for r in records}
  assert by_name['gradient_x_input']['torch_tool'] is None  # No peer.
  assert 'speedup_vs_torch' not in by_name['gradient_x_input']
  for name in ('gradient', 'grad_cam', 'integrated_gradients', 'fgsm'):
    r = by_name[name]
    assert r['status'] == 'ok', r
    assert r['torch_items_per_s'] > 0 and r['torch_median_s'] > 0, r
    assert r['speedup_vs_torch'] == pytest.approx(r['items_per_s'] / r['torch_items_per_s'])
    assert r['torch_model_calls_per_call'] >= 1
    # Equal up to ReLU gates that float rounding opens in one framework only (here one
    # conv2 unit on IG's path point 0.75 moves 2.5 %); a wrong conversion moves ~100 %.
    assert r['torch_agreement']['rel_l2_diff'] < 0.1, (name, r['torch_agreement'])
  assert by_name['fgsm']['torch_agreement']['torch_fooled_rate'] == pytest.approx(
      by_name['fgsm']['torch_agreement']['jax_fooled_rate'])
  assert by_name['integrated_gradients']['torch_settings']['method'] == 'riemann_middle'
  assert by_name['integrated_gradients']['torch_settings']['internal_batch_size'] == 2
  plain = by_name['gradient']['plain_jit']  # Single-pass: also compiled with plain jax.jit.
  assert plain['speedup_vs_torch'] == pytest.approx(
      plain['items_per_s'] / by_name['gradient']['torch_items_per_s'])
  env = json.loads((tmp_path / 'benchmark.json').read_text())['environment']['torch']
  assert env['parity_max_abs_logit_diff'] <= torch_peers.PARITY_TOLERANCE
  assert env['torch'] == torch.__version__
  report = (tmp_path / 'benchmark.md').read_text()
  assert '| peer items/s | JAX/peer |' in report
  rows = [line for line in report.splitlines() if line.startswith('| ')]
  assert len({row.count(' | ') for row in rows}) == 1  # Every row has every column.
  assert f'- **fgsm**: torchattacks {torchattacks.__version__} FGSM' in report
  assert '; plain jax.jit/PyTorch ' in report


@pytest.fixture(scope='module')
def pipeline_and_training_run(alexnet_cifar, tmp_path_factory):
  """study000_pipeline and the training workloads with their PyTorch peers, tiny."""
  pytest.importorskip('torchattacks')
  out = tmp_path_factory.mktemp('peers')
  model, variables, _ = alexnet_cifar
  cfg = config.BenchmarkConfig(batch_size=2, repeats=1, pipeline_batch_size=2,
                               train_batch_size=4, compare_torch=True,
                               workloads=(config.PIPELINE_WORKLOAD, *config.TRAIN_WORKLOADS))
  subject = workloads.Subject('alexnet_cifar', model.apply, variables, 'conv5')
  records = runner.benchmark(subject, _images(2), cfg, output_dir=out)
  return {r['workload']: r for r in records}, out


def test_pipeline_peer_is_timed_by_stage_and_agrees(pipeline_and_training_run):
  by_name, out = pipeline_and_training_run
  r = by_name[config.PIPELINE_WORKLOAD]
  assert r['status'] == 'ok', r
  assert r['torch_items_per_s'] > 0 and r['torch_model_calls_per_call'] >= 1
  assert r['speedup_vs_torch'] == pytest.approx(r['items_per_s'] / r['torch_items_per_s'])
  assert r['torch_speedup_goal'] == runner.TORCH_GOALS[config.PIPELINE_WORKLOAD] == 1.5
  assert list(r['torch_stage_s']) == list(study_pipeline.STAGES)
  assert r['torch_median_s'] == pytest.approx(sum(r['torch_stage_s'].values()))
  agree = r['torch_agreement']
  # The same variants but where a gradient within rounding of zero takes another sign.
  assert agree['attack_pixels_differing'] < 0.01, agree
  assert agree['fake_pred_agreement'] >= 0.9 and agree['batch_real_pred_agreement'] == 1.0
  # Captum's maps of the same images and classes; normalised heatmaps in [0, 1].
  for method in ('grad_cam', 'guided_backprop'):
    assert agree[f'{method}_max_abs_diff'] < 1e-3, agree
  # scipy/skimage on the same maps (SmoothGrad's included) against the batched metrics.
  for name in compare_saliency.Config().metrics:
    assert agree[f'{name}_max_abs_diff'] < 1e-3, (name, agree)
  report = (out / 'benchmark.md').read_text()
  assert f'**{config.PIPELINE_WORKLOAD}**: study 000' in report
  assert 'The PyTorch stack: ' in report


@pytest.mark.parametrize('name', config.TRAIN_WORKLOADS)
def test_training_peers_take_the_same_step(pipeline_and_training_run, name):
  by_name, out = pipeline_and_training_run
  r = by_name[name]
  assert r['status'] == 'ok', r
  assert r['items_per_call'] == 4 and r['torch_items_per_s'] > 0
  assert r['speedup_vs_torch'] == pytest.approx(r['items_per_s'] / r['torch_items_per_s'])
  assert r['torch_speedup_goal'] == 1.0
  assert list(r['torch_part_s']) == list(torch_training.PARTS)
  assert r['torch_model_calls_per_call'] == (2 if name == 'train_masker' else 1)
  agree = r['torch_agreement']
  assert agree['loss_abs_diff'] < 1e-4, agree
  assert agree['param_max_abs_update'] > 0 and agree['update_rel_l2_diff'] < 0.05, agree
  assert f'| {name} | 4 |' in (out / 'benchmark.md').read_text()
