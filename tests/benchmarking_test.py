"""advsal_jax.benchmarks and experiments/benchmark.py on toy models (no timing assertions)."""

import dataclasses
import gzip
import inspect
import json
import math
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import compilation
from advsal_jax import models
from advsal_jax import parallel
from advsal_jax import saliency
from advsal_jax import training
from advsal_jax.benchmarks import config
from advsal_jax.benchmarks import overlap
from advsal_jax.benchmarks import runner
from advsal_jax.benchmarks import study_pipeline
from advsal_jax.benchmarks import training_steps
from advsal_jax.benchmarks import workloads
from advsal_jax.studies import compare_saliency
from advsal_jax.studies import localize_attacks
from advsal_jax.studies import runner as study_runner

_SHAPE = (8, 8, 3)
# Every workload at its smallest: seconds on 2 CPU cores, not a measurement.
_TINY = dict(batch_size=2, repeats=1, smoothgrad_samples=2, ig_steps=2, ig_chunk=0,
             lime_samples=4, lime_chunk=2, attack_steps=2, cw_binary_search_steps=1,
             cw_max_iterations=3, deepfool_max_iter=2, metric_pairs=6, reference_pairs=3,
             localize_batch_size=1)


class _GapNet(nn.Module):
  """conv 'features' -> global average pooling -> dense 'logits': CAM applies."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3), name='features')(x))
    return nn.Dense(3, name='logits')(h.mean(axis=(1, 2)))


class _FlattenNet(nn.Module):
  """conv 'features' -> flatten -> dense 'logits': CAM does not apply."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3), name='features')(x))
    return nn.Dense(3, name='logits')(h.reshape(h.shape[0], -1))


def _subject(module: nn.Module) -> tuple[workloads.Subject, np.ndarray]:
  key_init, key_x = jax.random.split(jax.random.key(0))
  x = np.asarray(jax.random.uniform(key_x, (2, *_SHAPE)))
  variables = module.init(key_init, jnp.asarray(x))
  return workloads.Subject(type(module).__name__, module.apply, variables, 'features'), x


def _strict_json(path: pathlib.Path):
  def reject(constant):
    raise ValueError(f'{path} holds {constant}, which is not JSON.')
  return json.loads(path.read_text(), parse_constant=reject)


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
  """Every workload on the GAP toy: (records, output dir)."""
  out = tmp_path_factory.mktemp('bench')
  subject, x = _subject(_GapNet())
  cfg = config.BenchmarkConfig(model='toy', **_TINY)
  return runner.benchmark(subject, x, cfg, output_dir=out), out


def test_a_record_with_finite_positive_numbers_for_every_workload(full_run):
  records, _ = full_run
  assert [r['workload'] for r in records] == list(config.WORKLOADS)
  assert set(saliency.METHODS) < set(config.WORKLOADS)
  for r in records:
    if r['workload'] in saliency.MASKER_METHODS:  # The toy has no masking model.
      assert r['status'] == 'skipped' and 'train_masker' in r['reason'], r
      continue
    if r['workload'] == config.PIPELINE_WORKLOAD:  # SSIM's window needs maps of 11 x 11.
      assert r['status'] == 'skipped' and 'at least win_size' in r['reason'], r
      continue
    if r['workload'] in config.TRAIN_WORKLOADS:  # The toy is not a registered model.
      assert r['status'] == 'skipped' and 'registered models' in r['reason'], r
      continue
    assert r['status'] == 'ok', r
    for field in ('items_per_s', 'median_s', 'compile_s', 'xla_bytes', 'xla_temp_bytes',
                  'process_max_rss_bytes'):
      assert math.isfinite(r[field]) and r[field] > 0, (r['workload'], field, r[field])
    assert r['process_max_rss_growth_bytes'] >= 0
    assert len(r['times_s']) == _TINY['repeats']
    per_call = {config.METRICS_WORKLOAD: _TINY['metric_pairs'],
                config.LOCALIZE_WORKLOAD: _TINY['localize_batch_size']}
    assert r['items_per_call'] == per_call.get(r['workload'], 2)


def test_settings_record_the_values_used(full_run):
  settings = {r['workload']: r['settings'] for r in full_run[0] if r['status'] == 'ok'}
  sg_default = inspect.signature(saliency.smoothgrad).parameters['batch_size'].default
  assert settings['smoothgrad'] == {'num_samples': 2, 'batch_size': sg_default}
  assert settings['integrated_gradients'] == {'num_steps': 2, 'batch_size': None}  # chunk 0
  assert settings['lime']['batch_size'] == 2 and settings['lime']['num_samples'] == 4
  assert settings['pgd'] == {'num_steps': 2}
  assert settings['carlini_wagner_l2'] == {'binary_search_steps': 1, 'max_iterations': 3}
  assert settings['jsma'] == {'targeted': True}
  assert settings['cam'] == {'layer': 'features'}


def test_metrics_record_compares_with_the_reference(full_run):
  (r,) = [r for r in full_run[0] if r['workload'] == config.METRICS_WORKLOAD]
  assert set(workloads.REFERENCE_METRICS) == set(compare_saliency.METRICS)
  assert r['reference_pairs_timed'] == 3
  assert r['reference_repeats'] == _TINY['repeats']
  assert r['reference_pairs_per_s'] > 0
  assert set(r['reference_pairs_per_s_by_metric']) == set(compare_saliency.METRICS)
  assert r['speedup_vs_reference'] == pytest.approx(r['items_per_s'] / r['reference_pairs_per_s'])
  for name, diff in r['max_abs_diff_vs_reference'].items():
    assert diff < 1e-4, name


def test_localize_record_times_the_stage_against_its_compiled_and_host_work(full_run):
  records, out = full_run
  (r,) = [r for r in records if r['workload'] == config.LOCALIZE_WORKLOAD]
  assert r['kind'] == 'pipeline'
  assert (r['stage_images'], r['stage_batches'], r['stage_batch_size']) == (2, 2, 1)
  assert r['settings']['batch_size'] == 1 and r['settings']['max_steps'] == 2  # attack_steps
  for name in ('host', 'compiled', 'wall'):
    assert len(r[f'{name}_times_s']) == _TINY['repeats']
    assert r[f'{name}_s'] == statistics.median(r[f'{name}_times_s']) > 0
  assert r['serial_s'] == pytest.approx(r['host_s'] + r['compiled_s'])
  assert r['wall_over_compiled'] == pytest.approx(r['wall_s'] / r['compiled_s'])
  assert r['stage_images_per_s'] == pytest.approx(2 / r['wall_s'])
  assert r['overlap_goal'] == runner.OVERLAP_GOAL
  report = (out / 'benchmark.md').read_text()
  assert '| stage wall / compiled |' in report
  assert f'**{config.LOCALIZE_WORKLOAD}**: the whole stage over 2 images in 2 batches' in report


def test_the_timed_stage_is_study_004s_attack_stage(monkeypatch):
  built = []
  attack_stage = localize_attacks.attack_stage
  monkeypatch.setattr(localize_attacks, 'attack_stage',
                      lambda *a, **kw: built.append(attack_stage(*a, **kw)) or built[-1])
  timed = []
  monkeypatch.setattr(overlap, 'time_stage', lambda stage, *a, **kw: timed.append(stage) or {})
  subject, x = _subject(_GapNet())
  job = workloads.build_job(config.LOCALIZE_WORKLOAD, subject, jnp.asarray(x),
                            jnp.zeros(2, jnp.int32), 3, config.BenchmarkConfig(**_TINY),
                            jax.random.key(0))
  job.stage(1, None)
  (study,), (stage,) = built, timed
  assert (stage.name, stage.inputs, stage.prepare, stage.batch_size, stage.record) == (
      study.name, study.inputs, study.prepare, 1, study.record)
  assert job.fn is stage.step
  np.testing.assert_array_equal(job.args[1]['x'], x[:1])
  np.testing.assert_array_equal(job.args[1]['segments'], localize_attacks.segment_batch(
      x[:1], cfg=localize_attacks.Config())['segments'])
  ours, theirs = jax.jit(job.fn)(*job.args), study.step(*job.args)
  assert ours.keys() == theirs.keys()
  for k in ours:
    np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def test_pipeline_is_study_000s_batch_and_its_stages_compose_to_it(tmp_path):
  module = _GapNet()
  x = np.asarray(jax.random.uniform(jax.random.key(1), (3, 16, 16, 3)))  # HOG: 16 x 16.
  subject = workloads.Subject('toy', module.apply, module.init(jax.random.key(0), x),
                              'features')
  cfg = config.BenchmarkConfig(workloads=(config.PIPELINE_WORKLOAD,),
                               **{**_TINY, 'batch_size': 3, 'pipeline_batch_size': 2})
  (r,) = runner.benchmark(subject, x, cfg, output_dir=tmp_path)
  assert r['status'] == 'ok' and r['kind'] == 'pipeline', r
  assert r['items_per_call'] == 2
  study = compare_saliency.Config()
  assert r['settings']['targets'] == 2 and r['settings']['metrics'] == list(study.metrics)
  assert list(r['stage_s']) == list(study_pipeline.STAGES)
  assert r['stages_sum_s'] == pytest.approx(sum(r['stage_s'].values()))
  assert all(len(t) == _TINY['repeats'] for t in r['stage_times_s'].values())
  assert f'**{config.PIPELINE_WORKLOAD}**: study 000' in (tmp_path / 'benchmark.md').read_text()
  job = runner.build_job(config.PIPELINE_WORKLOAD, subject, jnp.asarray(x),
                         jnp.zeros(3, jnp.int32), 3, cfg, jax.random.key(0))
  fused = jax.jit(job.fn)(*job.args)
  attack, maps, metrics = study_pipeline.stage_fns(
      subject.apply_fn, study_cfg=study, layer='features', num_classes=3, std=None)
  params, images, index, eps_u, eps_t = job.args
  adv = jax.jit(attack)(params, images, eps_u, eps_t)
  staged = jax.jit(metrics)(jax.jit(maps)(params, images, index, adv))
  for k, v in staged.items():
    np.testing.assert_allclose(v, fused[k], atol=1e-5, err_msg=k)
  np.testing.assert_array_equal(adv['fake_pred'], fused['fake_pred'])


def test_training_workloads_time_one_step_and_its_forward_pass(tmp_path):
  cfg = config.BenchmarkConfig(model='cnn_mnist', random_init=True,
                               workloads=config.TRAIN_WORKLOADS,
                               **{**_TINY, 'train_batch_size': 3})
  records = runner.benchmark(*runner.load_subject(cfg)[:2], cfg, output_dir=tmp_path)
  assert [r['workload'] for r in records] == list(config.TRAIN_WORKLOADS)
  for r in records:
    assert r['status'] == 'ok' and r['kind'] == 'training', r
    assert r['items_per_call'] == r['settings']['batch_size'] == 3
    assert r['forward_s'] > 0 and len(r['forward_times_s']) == _TINY['repeats']
  by_name = {r['workload']: r for r in records}
  assert by_name['train_classifier']['settings']['augment'] is False  # MNIST.
  assert by_name['train_masker']['settings']['layers'] == ['conv2', 'conv4']
  report = (tmp_path / 'benchmark.md').read_text()
  assert '| workload | batch | JAX images/s | JAX forward / backward+update s |' in report
  assert '| train_detector | 3 |' in report


def test_training_steps_are_the_library_steps():
  cfg = config.BenchmarkConfig(model='cnn_mnist', random_init=True, train_batch_size=2)
  subject, x, _ = runner.load_subject(cfg)
  pred = np.array([3, 5], np.int32)
  job = runner.build_job('train_classifier', subject, x, pred, 10, cfg, jax.random.key(0))
  state, xb, yb = job.args
  np.testing.assert_array_equal(yb, pred)
  tcfg = job.peer_inputs['train_config']
  tx = training.make_optimizer(tcfg, training_steps.SCHEDULE_STEPS // tcfg.epochs)
  ours, _ = jax.jit(job.fn)(*job.args)
  theirs, _ = jax.jit(lambda s, images, labels: training.train_step(
      models.create('cnn_mnist'), tx, tcfg, s, images, labels))(state, xb, yb)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_time_stage_times_a_toy_stage_and_leaves_no_files(tmp_path, monkeypatch):
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  data = np.arange(12, dtype=np.float32).reshape(6, 2)
  mesh = parallel.data_mesh()
  step = parallel.data_parallel(lambda w, b: {'y': b['x'] * w + b['shift']}, mesh,
                                batched=(False, True))
  stage = study_runner.Stage('toy', step, lambda ids: {'x': data[ids]}, 4,
                             prepare=lambda b: {'shift': b['x'][:, :1]})
  r = overlap.time_stage(stage, np.arange(6), np.float32(2), repeats=2, options=None,
                         mesh=mesh)
  assert (r['stage_images'], r['stage_batches'], r['stage_batch_size']) == (6, 2, 4)
  assert [len(r[f'{k}_times_s']) for k in ('host', 'compiled', 'wall')] == [2, 2, 2]
  assert min(r['host_s'], r['compiled_s'], r['wall_s']) > 0
  assert not list(tmp_path.iterdir())


def test_outputs_parse_and_markdown_has_a_row_per_workload(full_run):
  records, out = full_run
  assert sorted(p.name for p in out.iterdir()) == ['benchmark.json', 'benchmark.md',
                                                  'config.json']  # no *.tmp left over
  run_config = _strict_json(out / 'config.json')
  assert run_config['batch_size'] == 2 and run_config['model_name'] == '_GapNet'
  result = _strict_json(out / 'benchmark.json')
  assert result['records'] == json.loads(json.dumps(records))
  assert result['environment']['backend'] == jax.default_backend()
  assert result['environment']['compiler_options'] == compilation.compiler_options()
  rows = [line for line in (out / 'benchmark.md').read_text().splitlines()
          if line.startswith('| ')]
  assert rows[1].startswith('| ---')
  assert [row.split(' | ')[0][2:] for row in rows[2:]] == list(config.WORKLOADS)
  assert f'**{config.METRICS_WORKLOAD}**: batched JAX' in (out / 'benchmark.md').read_text()


def test_plain_model_runs_the_stock_flax_layers_with_the_same_weights(tmp_path):
  cfg = config.BenchmarkConfig(model='cnn_mnist', random_init=True, plain_model=True,
                                     workloads=('forward', 'gradient'), **_TINY)
  subject, x, info = runner.load_subject(cfg)
  fast, _, _ = runner.load_subject(dataclasses.replace(cfg, plain_model=False))
  assert 'reduce_window_max' in str(jax.make_jaxpr(subject.apply_fn)(subject.variables, x))
  assert 'reduce_window_max' not in str(jax.make_jaxpr(fast.apply_fn)(fast.variables, x))
  np.testing.assert_allclose(subject.apply_fn(subject.variables, x),
                             fast.apply_fn(fast.variables, x), rtol=1e-5, atol=1e-5)
  records = runner.benchmark(subject, x, cfg, output_dir=tmp_path, info=info)
  assert [r['status'] for r in records] == ['ok', 'ok']
  assert _strict_json(tmp_path / 'config.json')['plain_model'] is True
  assert '# Benchmark: cnn_mnist (plain' in (tmp_path / 'benchmark.md').read_text()
  assert config.default_output_dir(cfg).endswith('cnn_mnist_plain_b2')


def test_xla_defaults_compiles_without_the_package_options(tmp_path, monkeypatch):
  compilation.compiler_options()  # its one-time probe compile happens before the spy
  compiled_with = []
  compile_ = jax.stages.Lowered.compile
  monkeypatch.setattr(jax.stages.Lowered, 'compile', lambda self, compiler_options=None:
                      compiled_with.append(compiler_options) or compile_(self, compiler_options))
  subject, x = _subject(_GapNet())
  records = {}
  for xla_defaults in (False, True):
    cfg = config.BenchmarkConfig(workloads=('gradient', config.METRICS_WORKLOAD),
                                       xla_defaults=xla_defaults, **_TINY)
    records[xla_defaults] = runner.benchmark(subject, x, cfg,
                                                   output_dir=tmp_path / str(xla_defaults))
  # The metrics workload (no model) always compiles with XLA's defaults; the single-pass
  # gradient once more with them (plain jax.jit) unless the run uses them already.
  assert compiled_with == [compilation.compiler_options(), None, None, None, None]
  assert 'plain_jit' in records[False][0] and 'plain_jit' not in records[True][0]
  assert [r['compiler_options'] for r in records[False]] == [compilation.compiler_options(), {}]
  assert [r['compiler_options'] for r in records[True]] == [{}, {}]
  env = _strict_json(tmp_path / 'True' / 'benchmark.json')['environment']
  assert env['compiler_options'] == {}
  assert "XLA compiler options: XLA's defaults" in (tmp_path / 'True' / 'benchmark.md').read_text()


def test_cam_is_skipped_with_the_library_reason(tmp_path):
  subject, x = _subject(_FlattenNet())
  cfg = config.BenchmarkConfig(workloads=('cam', 'forward'), **_TINY)
  records = runner.benchmark(subject, x, cfg, output_dir=tmp_path)
  assert [(r['workload'], r['status']) for r in records] == [('forward', 'ok'),
                                                              ('cam', 'skipped')]
  assert "dense kernel 'logits'" in records[1]['reason']
  assert '| cam | saliency | skipped |' in (tmp_path / 'benchmark.md').read_text()


def test_unknown_workload_raises_before_any_compilation(tmp_path, monkeypatch):
  def no_jit(*args, **kwargs):
    raise AssertionError('compiled before validating')

  subject, x = _subject(_GapNet())
  monkeypatch.setattr(runner.jax, 'jit', no_jit)
  cfg = config.BenchmarkConfig(workloads=('forward', 'gradients'), **_TINY)
  with pytest.raises(ValueError, match=r"--workloads: unknown \['gradients'\]") as e:
    runner.benchmark(subject, x, cfg, output_dir=tmp_path)
  assert all(name in str(e.value) for name in config.WORKLOADS)
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('field,value', [('repeats', 0), ('batch_size', 0), ('ig_chunk', -1),
                                         ('cw_max_iterations', 0), ('lime_peer_images', 0),
                                         ('localize_batches', 0), ('pipeline_batch_size', 0),
                                         ('train_batch_size', 0)])
def test_bad_counts_name_their_flag(field, value):
  cfg = config.BenchmarkConfig(**{field: value})
  with pytest.raises(ValueError, match=f'--{field} must be'):
    config.validate(cfg)


def test_binary_rejects_unknown_workload_naming_the_flag():
  root = pathlib.Path(__file__).resolve().parent.parent
  proc = subprocess.run(
      [sys.executable, str(root / 'experiments' / 'benchmark.py'), '--random_init',
       '--model=cnn_mnist', '--workloads=forward,nope', '--batch_size=2'],
      capture_output=True, text=True, cwd=root, timeout=300, check=False)
  assert proc.returncode != 0
  assert "--workloads: unknown ['nope']" in proc.stderr
  assert 'study000_metrics' in proc.stderr


def test_single_pass_workloads_also_run_with_plain_jit_and_agree(full_run):
  records, out = full_run
  assert set(config.SINGLE_PASS) < set(config.WORKLOADS)
  for r in records:
    if r['workload'] not in config.SINGLE_PASS:
      assert 'plain_jit' not in r, r['workload']
      continue
    plain = r['plain_jit']
    assert math.isfinite(plain['items_per_s']) and plain['items_per_s'] > 0, r['workload']
    assert len(plain['times_s']) == _TINY['repeats']
    assert r['speedup_vs_plain_jit'] == pytest.approx(r['items_per_s'] / plain['items_per_s'])
    assert plain['max_abs_reference'] > 0, r['workload']
    assert plain['max_abs_diff'] <= 1e-5 * plain['max_abs_reference'], r['workload']
  rows = [line for line in (out / 'benchmark.md').read_text().splitlines()
          if line.startswith('| ')]
  assert '| throughput | plain jax.jit | compilation.jit/plain |' in rows[0]
  assert len({row.count(' | ') for row in rows}) == 1  # Every row has every column.


@pytest.mark.parametrize('name', config.SINGLE_PASS)
def test_plain_jit_and_compilation_jit_agree(name):
  subject, x = _subject(_GapNet())
  x = jnp.asarray(x)
  pred = jnp.argmax(subject.apply_fn(subject.variables, x), axis=-1).astype(jnp.int32)
  job = workloads.build_job(name, subject, x, pred, 3, config.BenchmarkConfig(**_TINY),
                            jax.random.key(0))
  plain = np.asarray(jax.jit(job.fn)(*job.args))
  fast = np.asarray(compilation.jit(job.fn)(*job.args))
  assert np.abs(plain).max() > 0
  np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6 * np.abs(plain).max())


def test_profile_traces_one_call_of_the_named_workload(tmp_path):
  subject, x = _subject(_GapNet())
  cfg = config.BenchmarkConfig(workloads=('forward', 'gradient'), profile='gradient', **_TINY)
  records = runner.benchmark(subject, x, cfg, output_dir=tmp_path)
  assert 'profile_dir' not in records[0]
  assert records[1]['profile_dir'] == str(tmp_path / 'profile')
  (run,) = (tmp_path / 'profile' / 'plugins' / 'profile').iterdir()
  assert [p.stat().st_size > 0 for p in run.glob('*.xplane.pb')] == [True]
  with gzip.open(run / 'perfetto_trace.json.gz') as f:
    trace = json.load(f)
  names = {e.get('name') for e in (trace['traceEvents'] if isinstance(trace, dict) else trace)}
  hlo = (tmp_path / 'profile' / 'hlo.txt').read_text()
  assert 'transpose(jvp' in hlo  # The gradient's program, not the forward pass's.
  instructions = set(re.findall(r'^\s*(?:ROOT )?%([\w.\-]+) = ', hlo, re.MULTILINE))
  # The trace's op slices are named after the HLO instructions they run.
  assert any(name.startswith('conv') for name in names & instructions), sorted(names)


def test_binary_writes_a_profile_trace(tmp_path):
  root = pathlib.Path(__file__).resolve().parent.parent
  proc = subprocess.run(
      [sys.executable, str(root / 'experiments' / 'benchmark.py'), '--random_init',
       '--model=cnn_mnist', '--workloads=forward', '--batch_size=2', '--repeats=1',
       '--noplain_jit', '--profile=forward', f'--output_dir={tmp_path}'],
      capture_output=True, text=True, cwd=root, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  assert len(list((tmp_path / 'profile').glob('plugins/profile/*/*.xplane.pb'))) == 1
  assert _strict_json(tmp_path / 'config.json')['profile'] == 'forward'


def test_profile_must_name_a_workload_that_runs():
  cfg = config.BenchmarkConfig(workloads=('forward',), profile='gradient')
  with pytest.raises(ValueError, match=r"--profile must name one of the workloads that run "
                                       r"\(forward\), got 'gradient'"):
    config.validate(cfg)


def test_lime_is_reported_against_its_forward_floor(tmp_path):
  subject, x = _subject(_GapNet())
  cfg = config.BenchmarkConfig(workloads=('forward', 'lime'), **_TINY)
  forward, lime = runner.benchmark(subject, x, cfg, output_dir=tmp_path)
  floor = _TINY['lime_samples'] / forward['items_per_s']
  assert lime['forward_floor_s_per_image'] == pytest.approx(floor)
  assert lime['time_over_forward_floor'] == pytest.approx(1 / lime['items_per_s'] / floor)
  assert lime['forward_floor_goal'] == runner.FORWARD_FLOOR_GOAL
  report = (tmp_path / 'benchmark.md').read_text()
  assert '| time / forward floor |' in report
  assert f'the time of num_samples={_TINY["lime_samples"]} forward passes' in report
  assert runner.forward_floor(lime, None) == {}
  assert runner.forward_floor(lime, {'status': 'skipped'}) == {}


def test_benchmark_records_the_lime_package(tmp_path):
  pytest.importorskip('lime')
  subject, x = _subject(_GapNet())
  cfg = config.BenchmarkConfig(workloads=('lime',), compare_lime=True, lime_peer_images=1,
                               **_TINY)
  (r,) = runner.benchmark(subject, x, cfg, output_dir=tmp_path)
  assert r['status'] == 'ok', r
  assert r['lime_package_images'] == 1
  assert len(r['lime_package_times_s']) == _TINY['repeats']
  assert r['lime_package_items_per_s'] > 0 and r['lime_package_warmup_s'] > 0
  assert r['speedup_vs_lime_package'] == pytest.approx(
      r['items_per_s'] / r['lime_package_items_per_s'])
  assert 0 <= r['lime_package_top5_overlap'] <= 1
  assert r['lime_package_settings'] == {'num_samples': 4, 'batch_size': 2, 'kernel_width': 0.25,
                                        'ridge_alpha': 1.0, 'fill': 'None'}
  report = (tmp_path / 'benchmark.md').read_text()
  assert '| peer items/s | JAX/peer |' in report
  assert 'The lime package (lime ' in report


def test_compare_lime_without_the_package_fails_before_any_compilation(tmp_path, monkeypatch):
  def no_jit(*args, **kwargs):
    raise AssertionError('compiled before checking for lime')

  monkeypatch.setitem(sys.modules, 'lime', None)  # Makes `import lime` raise ImportError.
  monkeypatch.setattr(runner.jax, 'jit', no_jit)
  subject, x = _subject(_GapNet())
  cfg = config.BenchmarkConfig(workloads=('lime',), compare_lime=True, **_TINY)
  with pytest.raises(ImportError, match=r"--compare_lime needs the lime package: pip install "
                                        r"-e '\.\[peers\]'"):
    runner.benchmark(subject, x, cfg, output_dir=tmp_path)
