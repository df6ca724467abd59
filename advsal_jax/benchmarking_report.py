"""The markdown report of ``advsal_jax.benchmarking``: one row per workload, then notes."""

from typing import Any


def _fmt(value: float | None, digits: int = 3) -> str:
  """``value`` with ``digits`` significant digits (no exponent below 1e6); '-' for None."""
  if value is None:
    return '-'
  if value == 0 or abs(value) >= 10 ** (digits - 1):
    return f'{value:,.0f}'
  return f'{value:.{digits}g}'


def _mib(num_bytes: int | None) -> str:
  return '-' if num_bytes is None else _fmt(num_bytes / 2**20)


def _row(r: dict[str, Any]) -> str:
  if r['status'] != 'ok':
    cells = [r['workload'], r['kind'], 'skipped', '-', '-', '-', '-', '-', r['reason']]
  else:
    settings = ', '.join(f'{k}={v}' for k, v in r['settings'].items())
    notes = '; '.join(s for s in (settings, r.get('note', '')) if s)
    cells = [r['workload'], r['kind'], f'{_fmt(r["items_per_s"])} {r["items"]}/s',
             _fmt(r['median_s']), _fmt(r['compile_s']), _mib(r['xla_bytes']),
             _mib(r['xla_temp_bytes']), _mib(r['process_max_rss_bytes']), notes]
  return '| ' + ' | '.join(str(c).replace('|', '/').replace('\n', ' ') for c in cells) + ' |'


def _metrics_summary(r: dict[str, Any]) -> list[str]:
  verdict = 'met' if r['speedup_vs_reference'] >= r['speedup_goal'] else 'NOT met'
  by_metric = ', '.join(f'{k} {_fmt(v)}' for k, v in r['reference_pairs_per_s_by_metric'].items())
  diffs = ', '.join(f'{k} {v:.1e}' for k, v in r['max_abs_diff_vs_reference'].items())
  return [
      f'**{r["workload"]}**: batched JAX {_fmt(r["items_per_s"])} pairs/s on '
      f'{r["items_per_call"]} pairs vs the per-pair scipy/skimage reference '
      f'{_fmt(r["reference_pairs_per_s"])} pairs/s (timed once on {r["reference_pairs_timed"]} '
      f'pairs and extrapolated; by metric: {by_metric}): **{_fmt(r["speedup_vs_reference"])}x** '
      f'(goal >= {_fmt(r["speedup_goal"])}x: {verdict}). Max |JAX - reference| on the timed '
      f'pairs: {diffs}.', '']


def markdown(records: list[dict[str, Any]], config: dict[str, Any],
             env: dict[str, Any]) -> str:
  """The report: one table row per workload, a legend and the metrics comparison."""
  lines = [
      f'# Benchmark: {config["model_name"]}, batch {config["batch_size"]}', '',
      f'jax {env["jax"]} on {env["backend"]} ({", ".join(env["devices"])}), '
      f'{env["cpu_count"]} CPUs, load average {env["loadavg_at_start"][0]:.2f} at start and '
      f'{env["loadavg_at_end"][0]:.2f} at the last write; weights: {config["weights"]}; '
      f'inputs: {config["inputs"]}; median of {config["repeats"]} timed calls.', '',
      '| workload | kind | throughput | median s/call | compile s | XLA arg+out+temp MiB | '
      'XLA temp MiB | process peak RSS MiB | settings; notes |',
      '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
      *(_row(r) for r in records), '',
      'Memory: *XLA arg+out+temp* is the compiled executable\'s `memory_analysis()` '
      '(argument + output + temporary buffers): a static bound on the device memory of one '
      'call; *XLA temp* is the temporary part, which the chunk settings bound. *Process peak '
      'RSS* is `getrusage` max RSS of the whole benchmark process after the workload: a '
      'cumulative high-water mark (it includes earlier workloads, the compiler and the Python '
      'runtime).', '']
  for r in records:
    if r['status'] == 'ok' and 'speedup_vs_reference' in r:
      lines += _metrics_summary(r)
  return '\n'.join(lines)
