"""The markdown report of a benchmark run: one row per workload, then notes."""

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


def _plain_cells(r: dict[str, Any]) -> list[str]:
  """'plain jax.jit' and 'compilation.jit/plain' cells ('-' where not timed)."""
  if 'plain_jit' not in r:
    return ['-', '-']
  return [_fmt(r['plain_jit']['items_per_s']), f'{_fmt(r["speedup_vs_plain_jit"])}x']


def _peer_cells(r: dict[str, Any]) -> list[str]:
  """'peer items/s' and 'JAX/peer' cells: the PyTorch peer's or the lime package's."""
  if r.get('torch_items_per_s'):
    return [_fmt(r['torch_items_per_s']), f'{_fmt(r["speedup_vs_torch"])}x']
  if r.get('lime_package_items_per_s'):
    return [_fmt(r['lime_package_items_per_s']), f'{_fmt(r["speedup_vs_lime_package"])}x']
  return ['-', '-']


def _floor_cells(r: dict[str, Any]) -> list[str]:
  return [_fmt(r.get('time_over_forward_floor'))]


def _overlap_cells(r: dict[str, Any]) -> list[str]:
  return [_fmt(r.get('wall_over_compiled'))]


# Optional column groups: (headers, whether a record calls for them, its cells).
_OPTIONAL_COLUMNS = (
    (('plain jax.jit', 'compilation.jit/plain'), lambda r: 'plain_jit' in r, _plain_cells),
    (('peer items/s', 'JAX/peer'), lambda r: 'torch_tool' in r or 'lime_package_tool' in r,
     _peer_cells),
    (('time / forward floor',), lambda r: 'time_over_forward_floor' in r, _floor_cells),
    (('stage wall / compiled',), lambda r: 'wall_over_compiled' in r, _overlap_cells),
)


def _columns(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
  """The optional column groups some record of the run fills."""
  return [group for group in _OPTIONAL_COLUMNS if any(group[1](r) for r in records)]


def _row(r: dict[str, Any], columns: list[tuple[Any, ...]]) -> str:
  optional = [cell for headers, _, cells in columns
              for cell in (cells(r) if r['status'] == 'ok' else ['-'] * len(headers))]
  if r['status'] != 'ok':
    cells = [r['workload'], r['kind'], 'skipped', *optional, '-', '-', '-', '-', '-',
             r['reason']]
  else:
    settings = ', '.join(f'{k}={v}' for k, v in r['settings'].items())
    notes = '; '.join(s for s in (settings, r.get('note', '')) if s)
    cells = [r['workload'], r['kind'], f'{_fmt(r["items_per_s"])} {r["items"]}/s', *optional,
             _fmt(r['median_s']), _fmt(r['compile_s']), _mib(r['xla_bytes']),
             _mib(r['xla_temp_bytes']), _mib(r['process_max_rss_bytes']), notes]
  return '| ' + ' | '.join(str(c).replace('|', '/').replace('\n', ' ') for c in cells) + ' |'


def _plain_summary(records: list[dict[str, Any]]) -> list[str]:
  """The legend of the plain ``jax.jit`` columns, with how far the two outputs differ."""
  timed = [r for r in records if 'plain_jit' in r]
  diffs = ', '.join(f'{r["workload"]} {r["plain_jit"]["max_abs_diff"]:.1e} (of max '
                    f'{r["plain_jit"]["max_abs_reference"]:.2g})' for r in timed)
  return [
      '*plain jax.jit*: the single-pass workloads compiled again with XLA\'s default options '
      '(what `jax.jit(fn)` gives) and timed the same way; *throughput* is compiled with the '
      'package\'s options, as `advsal_jax.compilation.jit(fn)` compiles, and '
      '*compilation.jit/plain* is its ratio to the plain column. Max |difference| between '
      f'the two outputs: {diffs}.', '']


def _lime_summary(r: dict[str, Any]) -> list[str]:
  """LIME against its forward-pass floor and, when timed, against the lime package."""
  lines = []
  n = r['settings']['num_samples']
  if 'time_over_forward_floor' in r:
    verdict = ('met' if r['time_over_forward_floor'] <= r['forward_floor_goal']
               else 'NOT met')
    lines.append(
        f'**lime**: {_fmt(1 / r["items_per_s"])} s per image = '
        f'**{_fmt(r["time_over_forward_floor"])}x** the time of num_samples={n} forward '
        f'passes at the forward workload\'s rate ({_fmt(r["forward_floor_s_per_image"])} s; '
        f'goal <= {_fmt(r["forward_floor_goal"])}x: {verdict}). The forward workload runs '
        f'{r["items_per_call"]} images per call; LIME runs batch_size x '
        f'{r["items_per_call"]} perturbed images per model call.')
  if 'lime_package_items_per_s' in r:
    settings = ', '.join(f'{k}={v}' for k, v in r['lime_package_settings'].items())
    lines.append(
        f'The lime package ({r["lime_package_tool"]}; the same superpixels, {settings}; '
        'classifier_fn: the same model jitted with the run\'s options) explained the first '
        f'{r["lime_package_images"]} images at {_fmt(r["lime_package_items_per_s"])} '
        f'images/s (median of {len(r["lime_package_times_s"])} calls after an untimed '
        f'warm-up image; load average {r["loadavg_1min"]:.2f}): ours/package '
        f'**{_fmt(r["speedup_vs_lime_package"])}x**. Top-5 superpixels shared with ours: '
        f'{r["lime_package_top5_overlap"]:.0%} on average (each draws its own perturbations).')
  return [' '.join(lines), ''] if lines else []


def _overlap_summary(r: dict[str, Any]) -> list[str]:
  """A study stage's wall time against its compiled work and its host work alone."""
  verdict = 'met' if r['wall_over_compiled'] <= r['overlap_goal'] else 'NOT met'
  return [
      f'**{r["workload"]}**: the whole stage over {r["stage_images"]} images in '
      f'{r["stage_batches"]} batches of {r["stage_batch_size"]} (`runner.run_stage`: each '
      'batch\'s host work in a background thread while the previous batch\'s step runs, shards '
      f'written) took {_fmt(r["wall_s"])} s ({_fmt(r["stage_images_per_s"])} images/s) = '
      f'**{_fmt(r["wall_over_compiled"])}x** its compiled work alone '
      f'({_fmt(r["compiled_s"])} s: the step on the prepared batches, placed, run and fetched '
      f'one after another; goal <= {_fmt(r["overlap_goal"])}x: {verdict}). Its host work alone '
      f'(inputs and prepare of every batch) took {_fmt(r["host_s"])} s, so without overlap '
      f'the stage would take about {_fmt(r["serial_s"])} s '
      f'({_fmt(r["serial_s"] / r["compiled_s"])}x). Medians of '
      f'{len(r["wall_times_s"])} runs of each.', '']


def _verdict(ratio: float, goal: float) -> str:
  return f'goal >= {_fmt(goal)}x: {"met" if ratio >= goal else "NOT met"}'


def _seconds(parts: dict[str, float]) -> str:
  return ', '.join(f'{k} {_fmt(v)} s' for k, v in parts.items())


def _pipeline_summary(r: dict[str, Any]) -> list[str]:
  """A whole pipeline's rate, its stages, and the PyTorch stack's when timed."""
  s = r['settings']
  line = (f'**{r["workload"]}**: study 000\'s per-batch pipeline on {r["items_per_call"]} '
          f'images (FGSM at {len(s["untargeted_eps"])} budgets and towards {s["targets"]} '
          f'targets; {", ".join(s["methods"])} of every image and variant; '
          f'{", ".join(s["metrics"])} per pair): JAX {_fmt(r["items_per_s"])} images/s as one '
          f'compiled call ({_fmt(r["median_s"])} s); its stages compiled apart: '
          f'{_seconds(r["stage_s"])} ({_fmt(r["stages_sum_s"])} s together).')
  if r.get('torch_items_per_s'):
    line += (f' The PyTorch stack: {_fmt(r["torch_items_per_s"])} images/s '
             f'({_fmt(r["torch_median_s"])} s: {_seconds(r["torch_stage_s"])}): JAX/PyTorch '
             f'**{_fmt(r["speedup_vs_torch"])}x** '
             f'({_verdict(r["speedup_vs_torch"], r["torch_speedup_goal"])}).')
  return [line, '']


def _training_summary(records: list[dict[str, Any]]) -> list[str]:
  """A table of the training steps: rates, where the time goes, and the PyTorch steps'."""
  lines = [
      '**Training steps** (one optimizer step; *JAX forward* is the same step with '
      '`optax.set_to_zero()` as the optimizer, whose gradient XLA drops: the forward pass '
      'with the step\'s input work; the rest of the step is the backward pass and the update):',
      '', '| workload | batch | JAX images/s | JAX forward / backward+update s | PyTorch '
      'images/s | PyTorch inputs / forward / backward / update s | JAX/PyTorch |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: |']
  for r in records:
    if r['status'] != 'ok' or 'forward_s' not in r:
      continue
    cells = [r['workload'], str(r['items_per_call']), _fmt(r['items_per_s']),
             f'{_fmt(r["forward_s"])} / {_fmt(r["median_s"] - r["forward_s"])}']
    if r.get('torch_items_per_s'):
      cells += [_fmt(r['torch_items_per_s']),
                ' / '.join(_fmt(v) for v in r['torch_part_s'].values()),
                f'**{_fmt(r["speedup_vs_torch"])}x** '
                f'({_verdict(r["speedup_vs_torch"], r["torch_speedup_goal"])})']
    else:
      cells += ['-', '-', '-']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return [*lines, '']


def _metrics_summary(r: dict[str, Any]) -> list[str]:
  verdict = 'met' if r['speedup_vs_reference'] >= r['speedup_goal'] else 'NOT met'
  by_metric = ', '.join(f'{k} {_fmt(v)}' for k, v in r['reference_pairs_per_s_by_metric'].items())
  diffs = ', '.join(f'{k} {v:.1e}' for k, v in r['max_abs_diff_vs_reference'].items())
  return [
      f'**{r["workload"]}**: batched JAX {_fmt(r["items_per_s"])} pairs/s on '
      f'{r["items_per_call"]} pairs vs the per-pair scipy/skimage reference '
      f'{_fmt(r["reference_pairs_per_s"])} pairs/s (median of {r["reference_repeats"]} loops over '
      f'{r["reference_pairs_timed"]} pairs, extrapolated; by metric: {by_metric}): '
      f'**{_fmt(r["speedup_vs_reference"])}x** '
      f'(goal >= {_fmt(r["speedup_goal"])}x: {verdict}). Max |JAX - reference| on the timed '
      f'pairs: {diffs}.', '']


def _torch_summary(records: list[dict[str, Any]], env: dict[str, Any]) -> list[str]:
  """The PyTorch comparison's legend: versions, parity, and each peer with its settings."""
  info = env.get('torch') or {}
  lines = [
      f'PyTorch peers (torch {info.get("torch")}, captum {info.get("captum")}, torchattacks '
      f'{info.get("torchattacks")}, {info.get("torch_num_threads")} threads) run on the '
      'converted model (max |logit difference| from the flax model '
      f'{info.get("parity_max_abs_logit_diff", float("nan")):.1e} on the batch), the same '
      'images and targets, in the same process: one untimed warm-up call, then the median '
      'of the same number of timed calls. In these rows *peer items/s* is PyTorch\'s and '
      '*JAX/peer* JAX items/s over PyTorch items/s (> 1: JAX is faster).', '']
  cores = env.get('cpu_count') or 1
  busy = [r['workload'] for r in records
          if r.get('torch_tool') and r.get('loadavg_1min', 0) > cores]
  if busy:
    lines += [f'**Load above the {cores} cores while timing {", ".join(busy)}**: PyTorch\'s '
              'OpenMP threads slow down far more than XLA\'s on an oversubscribed machine, which '
              'skews these ratios (mostly in JAX\'s favour); time them again on a quiet '
              'machine.', '']
  for r in records:
    if not r.get('torch_tool'):
      continue
    settings = ', '.join(f'{k}={v}' for k, v in r['torch_settings'].items() if k != 'note')
    agree = ', '.join(f'{k} {v:.3g}' for k, v in r.get('torch_agreement', {}).items())
    note = r['torch_settings'].get('note')
    lines.append(f'- **{r["workload"]}**: {r["torch_tool"]}'
                 + (f'; {settings}' if settings else '')
                 + (f'; load average {r["loadavg_1min"]:.2f}' if 'loadavg_1min' in r else '')
                 + f'; {r["torch_model_calls_per_call"]} model calls per call'
                 + (f'; plain jax.jit/PyTorch {_fmt(r["plain_jit"]["speedup_vs_torch"])}'
                    if 'speedup_vs_torch' in r.get('plain_jit', {}) else '')
                 + (f'; agreement: {agree}' if agree else '')
                 + (f'. {note}.' if note else '.'))
  return [*lines, '']


def _options(options: dict[str, str] | None) -> str:
  """The compiler options of a run, for the report's header line."""
  if not options:
    return "XLA's defaults"
  return (', '.join(f'`{k}={v}`' for k, v in options.items())
          + " for the workloads that run the model (the metrics: XLA's defaults)")


def markdown(records: list[dict[str, Any]], config: dict[str, Any],
             env: dict[str, Any]) -> str:
  """The report: one table row per workload, a legend, then the metrics, LIME, study-stage
  overlap, whole-pipeline, training-step, plain ``jax.jit`` and PyTorch comparisons."""
  columns = _columns(records)
  headers = [h for group in columns for h in group[0]]
  lines = [
      f'# Benchmark: {config["model_name"]}'
      + (' (plain: flax\'s stock layers)' if config.get('plain_model') else '')
      + f', batch {config["batch_size"]}', '',
      f'jax {env["jax"]} on {env["backend"]} ({", ".join(env["devices"])}), '
      f'{env["cpu_count"]} CPUs, load average {env["loadavg_at_start"][0]:.2f} at start and '
      f'{env["loadavg_at_end"][0]:.2f} at the last write; weights: {config["weights"]}; '
      f'inputs: {config["inputs"]}; median of {config["repeats"]} timed calls; XLA compiler '
      f'options: {_options(env.get("compiler_options"))}.', '',
      '| ' + ' | '.join(['workload', 'kind', 'throughput', *headers, 'median s/call',
                          'compile s', 'XLA arg+out+temp MiB', 'XLA temp MiB',
                          'process peak RSS MiB', 'settings; notes']) + ' |',
      '| --- | --- | ---: |' + ' ---: |' * len(headers)
      + ' ---: | ---: | ---: | ---: | ---: | --- |',
      *(_row(r, columns) for r in records), '',
      'Memory: *XLA arg+out+temp* is the compiled executable\'s `memory_analysis()` '
      '(argument + output + temporary buffers): a static bound on the device memory of one '
      'call; *XLA temp* is the temporary part, which the chunk settings bound. *Process peak '
      'RSS* is `getrusage` max RSS of the whole benchmark process after the workload: a '
      'cumulative high-water mark (it includes earlier workloads, the compiler and the Python '
      'runtime).', '']
  for r in records:
    if r['status'] == 'ok' and 'speedup_vs_reference' in r:
      lines += _metrics_summary(r)
    if r['status'] == 'ok' and r['workload'] == 'lime':
      lines += _lime_summary(r)
    if r['status'] == 'ok' and 'wall_over_compiled' in r:
      lines += _overlap_summary(r)
    if r['status'] == 'ok' and 'stages_sum_s' in r:
      lines += _pipeline_summary(r)
  if any(r['status'] == 'ok' and 'forward_s' in r for r in records):
    lines += _training_summary(records)
  if any('plain_jit' in r for r in records):
    lines += _plain_summary(records)
  if any('torch_tool' in r for r in records):
    lines += _torch_summary(records, env)
  return '\n'.join(lines)
