"""advsal_jax.studies summary, report, progress and cli: against direct computations."""

import io
import logging as std_logging

from absl import flags
import numpy as np
import pytest
import scipy.stats

from advsal_jax.studies import cli
from advsal_jax.studies import progress
from advsal_jax.studies import report
from advsal_jax.studies import summary


def test_describe_matches_numpy_and_scipy_and_counts_nan():
  rng = np.random.default_rng(0)
  v = rng.normal(0.3, 1.0, 40)
  with_nan = np.concatenate([v, [np.nan, np.nan]])
  d = summary.describe(with_nan, seed=3)
  assert d['n'] == 40 and d['n_undefined'] == 2
  np.testing.assert_allclose(d['mean'], v.mean(), rtol=1e-12)
  np.testing.assert_allclose(d['std'], v.std(ddof=1), rtol=1e-12)
  ref = scipy.stats.bootstrap((v,), np.mean, n_resamples=1000, method='percentile',
                              rng=np.random.default_rng(3), confidence_level=0.95,
                              vectorized=True).confidence_interval
  np.testing.assert_allclose([d['ci_low'], d['ci_high']], [ref.low, ref.high], rtol=1e-12)
  assert summary.describe([np.nan], seed=0) is None
  one = summary.describe([2.0], seed=0)
  assert one['std'] == 0 and one['ci_low'] == one['ci_high'] == 2.0


def test_by_success_splits_and_group_by_matches_a_brute_force_loop():
  rng = np.random.default_rng(1)
  n = 60
  table = {'method': np.array(['a', 'b', 'c'])[rng.integers(0, 3, n)],
           'eps': rng.choice([0.1, 0.2], n), 'success': rng.random(n) < 0.5,
           'score': rng.random(n), 'other': rng.random(n)}
  split = summary.by_success(table['score'], table['success'], seed=0)
  np.testing.assert_allclose(split['success']['mean'], table['score'][table['success']].mean())
  np.testing.assert_allclose(split['failed']['mean'], table['score'][~table['success']].mean())
  assert split['all']['n'] == n
  rows = summary.group_by(table, ['score', 'other'], ['method', 'eps'], seed=0,
                          where=table['success'])
  assert len(rows) == len({(m, e) for m, e, s in zip(table['method'], table['eps'],
                                                     table['success']) if s}) * 2
  for row in rows:
    keep = ((table['method'] == row['method']) & (table['eps'] == row['eps']) &
            table['success'])
    np.testing.assert_allclose(row['mean'], table[row['value']][keep].mean(), rtol=1e-12)
    assert row['n'] == keep.sum()
  with pytest.raises(ValueError, match='no column'):
    summary.group_by(table, ['nope'], ['method'], seed=0)
  with pytest.raises(ValueError, match='one length'):
    summary.group_by({'a': np.zeros(2), 'b': np.zeros(3)}, ['a'], ['b'], seed=0)


def test_markdown_tables_escape_and_format():
  lines = report.table(('name', 'value'), [('a|b', 0.12345), ('n', None), ('k', 3),
                                           ('nan', float('nan')), ('flag', True)])
  assert lines[0] == '| name | value |' and lines[1] == '| --- | --- |'
  assert lines[2] == '| a\\|b | 0.123 |'
  assert lines[3:] == ['| n | n/a |', '| k | 3 |', '| nan | n/a |', '| flag | yes |']
  with pytest.raises(ValueError, match='rows'):
    report.table(('a', 'b'), [(1,)])
  assert report.with_ci({'mean': 0.5, 'ci_low': 0.4, 'ci_high': 0.6}) == '0.500 [0.400, 0.600]'
  assert report.with_ci(None) == 'n/a'


def test_claims_need_a_known_verdict_and_render_it():
  c = report.Claim('X beats Y.', '0.9', '0.7 [0.6, 0.8]', 'does not hold', 'Y wins here')
  text = '\n'.join(report.claims([c]))
  assert '| X beats Y. | 0.9 | 0.7 [0.6, 0.8] | **does not hold**: Y wins here |' in text
  with pytest.raises(ValueError, match='verdict'):
    report.Claim('x', '', '', 'maybe')
  doc = report.Markdown('T').heading('H').paragraph('p').figure('f.png').text()
  assert doc == '# T\n\n## H\n\np\n\n![f.png](f.png)\n'


def test_progress_rate_and_eta_from_the_clock():
  now = [100.0]
  stream = io.StringIO()
  p = progress.Progress('stage x', 100, unit='images', already_done=20, stream=stream,
                        clock=lambda: now[0])
  now[0] = 110.0
  p.update(40)  # 40 new images in 10 s, 40 left
  assert p.rate == pytest.approx(4.0) and p.eta_seconds == pytest.approx(10.0)
  assert p.line() == 'stage x: 60/100 images (60%), 4.00 images/s, ETA 10 s'

  class Tty(io.StringIO):

    def isatty(self):
      return True

  tty = Tty()
  bar = progress.Progress('s', 4, stream=tty, clock=lambda: now[0])
  now[0] = 112.0
  bar.update(4)
  assert tty.getvalue().startswith('\r[########################] s: 4/4')
  assert tty.getvalue().endswith('\n')


def test_settings_take_the_flag_then_the_preset_then_the_default():
  fv = flags.FlagValues()
  flags.DEFINE_integer('num_examples', None, '', flag_values=fv)
  flags.DEFINE_integer('batch_size', 32, '', flag_values=fv)
  flags.DEFINE_integer('seed', 0, '', flag_values=fv)
  flags.DEFINE_enum('preset', 'default', cli.PRESETS, '', flag_values=fv)
  presets = {'smoke': {'num_examples': 3, 'batch_size': 2}, 'default': {'num_examples': 448},
             'full': {'num_examples': 10_000}}
  fv(['prog', '--preset=smoke', '--batch_size=8'])
  orig = cli.FLAGS
  try:
    cli.FLAGS = fv
    got = cli.settings(presets, ['num_examples', 'batch_size', 'seed'])
    assert got == {'num_examples': 3, 'batch_size': 8, 'seed': 0}
    with pytest.raises(ValueError, match='presets'):
      cli.settings({'smoke': {}}, ['seed'])
    with pytest.raises(ValueError, match='undefined'):
      cli.settings({**presets, 'smoke': {'nope': 1}}, ['seed'])
  finally:
    cli.FLAGS = orig


def test_method_kwargs_parse_over_the_study_defaults():
  base = {'smoothgrad': {'num_samples': 10, 'noise_level': 0.15}}
  got = cli.parse_method_kwargs(['smoothgrad.num_samples=2', 'lime.segmentation=slic',
                                 'integrated_gradients.baseline=null'], base)
  assert got == {'smoothgrad': {'num_samples': 2, 'noise_level': 0.15},
                 'lime': {'segmentation': 'slic'}, 'integrated_gradients': {'baseline': None}}
  assert base['smoothgrad']['num_samples'] == 10
  for bad in ('smoothgrad=2', 'num_samples.=2', 'a.b'):
    with pytest.raises(ValueError, match='method_kwargs'):
      cli.parse_method_kwargs([bad])


def test_other_libraries_info_records_are_dropped_ours_and_warnings_kept():
  keep = cli._OwnRecords()

  def record(path, level=std_logging.INFO):
    return std_logging.LogRecord('absl', level, path, 1, 'm', (), None)

  assert keep.filter(record(cli.__file__))
  assert not keep.filter(record('/site-packages/orbax/checkpoint/checkpoint_manager.py'))
  assert keep.filter(record('/site-packages/orbax/checkpoint/x.py', std_logging.WARNING))
