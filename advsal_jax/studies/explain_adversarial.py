"""Study 001: Guided Backprop, its enhanced variant and other maps on adversarial images.

Four experiments over the first N test images, run as resumable stages of ``runner``, each
one compiled call per batch:

* ``pairs`` (class_discriminative): Guided Backprop (GBP) and Enhanced GBP (EGBP) maps of the
  top ``pair_classes`` predicted classes; for every pair of them the Sim-Ratio of the binarised
  maps (with the plain gradient's and chance as controls), the Avg-Diff of the unnormalised
  ones, their Spearman correlation, and the margin drop when each map's top pixels go.
* ``attacks``: FGSM, BIM and C&W-L2 against the clean prediction; adversarial images,
  predictions, success and perturbation norms.
* ``maps`` (clean_vs_adversarial, failed_vs_successful): every method's map of the clean image
  for its prediction and of each adversarial image for its new prediction, and how much they
  differ; share of the perturbation ``|delta|`` on each map's top pixels.
* ``recovery``: on successful C&W images (clean prediction correct), the top p % pixels of
  each method's map (and of a random ranking) are replaced by a fill; accuracy vs p, every p
  and every method in one vmapped model evaluation.

Pixel maps are ``saliency.heatmap``'s: ``sum_c |a_c|``, unnormalised for Avg-Diff and the
rankings (Sim-Ratio binarises per channel), normalised by the method's family for the map
comparisons.

The settings live in ``explain_adversarial_config``, each stage's batch computation in
``explain_adversarial_batches``; ``explain_adversarial_report`` turns the shards into tables,
a summary with the paper's claims, figures and the report.

Reference: Gu & Tresp, Saliency Methods for Explaining Adversarial Attacks, arXiv:1908.08413.
"""

import dataclasses
import pathlib
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import models
from advsal_jax import parallel
from advsal_jax import perturbation
from advsal_jax.studies import explain_adversarial_batches as batches
from advsal_jax.studies import explain_adversarial_config as settings
from advsal_jax.studies import runner
from advsal_jax.studies import store


def load_results(output_dir: store.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """Every finished stage's shards concatenated: stage -> name -> array (example axis first)."""
  cfg = runner.config_from_json(settings.Config,
                                store.read_json(pathlib.Path(output_dir) / 'config.json'))
  return {s: store.load_shards(output_dir, s) for s in settings.stages(cfg)
          if store.shard_files(output_dir, s)}


def recovery_work(attack_results: Mapping[str, np.ndarray], labels: np.ndarray) -> np.ndarray:
  """Test indices of the recovery stage: clean prediction correct and C&W successful."""
  cw = settings.ATTACKS.index('cw')
  keep = (attack_results['clean_pred'] == labels[attack_results['index']]) & (
      attack_results['success'][:, cw])
  return attack_results['index'][keep]


def run(cfg: settings.Config, *, output_dir: store.PathLike, data_dir: str | None = None,
        resume: bool = False, mesh: jax.sharding.Mesh | None = None) -> pathlib.Path:
  """Runs the selected experiments' stages over the first ``cfg.num_examples`` test images.

  Each finished batch of each stage is written atomically as a shard; with ``resume`` a
  killed run skips what is on disk (same settings required). The maps and recovery stages
  read the adversarial images from the attacks stage's shards (so a multi-host run needs a
  shared output directory).

  Args:
    cfg: the settings (budgets left at None take the dataset's ``BUDGETS``).
    output_dir: where ``config.json`` and ``shards/`` go.
    data_dir: the offline data directory (default ``$ADVSAL_DATA_DIR``, then tfds).
    resume: continue a run already in ``output_dir``.
    mesh: default ``parallel.data_mesh()``.

  Returns:
    ``output_dir``.

  Raises:
    ValueError: bad settings (before anything is loaded), or an existing run with other
      settings / without ``resume``.
    checkpoints.CheckpointError, FileNotFoundError: missing checkpoint or data.
  """
  settings.validate(cfg)
  model, variables, meta = checkpoints.load(cfg.checkpoint)
  test = data.load(meta['dataset'], 'test', data_dir=data_dir)
  cfg = settings.with_dataset_budgets(cfg, meta['dataset'])
  num_classes = int(jax.eval_shape(model.apply, variables,
                                   jnp.zeros((1, *test.images.shape[1:]))).shape[-1])
  settings.validate(cfg, split_size=len(test.labels), num_classes=num_classes)
  config = {**dataclasses.asdict(cfg), 'model': meta['model'], 'dataset': meta['dataset'],
            'checkpoint_test_accuracy': meta['test_accuracy'], 'class_names': test.class_names,
            'cam_layer': models.cam_layer(meta), 'stages': settings.stages(cfg)}
  out = runner.open_output_dir(output_dir, config, resume=resume)
  mesh = parallel.data_mesh() if mesh is None else mesh
  layer = config['cam_layer']
  work = np.arange(cfg.num_examples)
  apply_fn = model.apply

  def clean_inputs(ids):
    return {'x': data.to_float(test.images[ids]), 'label': test.labels[ids]}

  todo = settings.stages(cfg)
  if 'pairs' in todo:
    step = runner.compile_step(lambda rep, batch: batches.pairs_batch(
        apply_fn, rep[0], batch['x'], batch['index'], rep[1], cfg=cfg), mesh)
    runner.run_stage(runner.Stage('pairs', step, clean_inputs, cfg.batch_size,
                                  record=('label',)),
                     output_dir=out, work=work,
                     replicated=(variables, np.asarray(model.mean, np.float32)), mesh=mesh)
  if 'attacks' not in todo:
    return out
  budgets = {k: np.float32(getattr(cfg, k)) for k in settings.BUDGETS[meta['dataset']]}
  step = runner.compile_step(
      lambda rep, batch: batches.attacks_batch(apply_fn, rep[0], batch['x'], rep[1], cfg=cfg), mesh)
  runner.run_stage(runner.Stage('attacks', step, clean_inputs, cfg.batch_size,
                                record=('label',)),
                   output_dir=out, work=work, replicated=(variables, budgets), mesh=mesh)
  adv = store.load_shards(out, 'attacks')
  row = np.full(len(test.labels), -1, np.int64)
  row[adv['index']] = np.arange(len(adv['index']))
  missing = np.flatnonzero(row[work] < 0)
  if len(missing):
    raise RuntimeError(
        f'attacks: {len(missing)} of {len(work)} images have no shard in {out} (first: test '
        f'index {int(work[missing[0]])}); a multi-process run needs a shared output directory '
        'and every process past the attacks stage before the maps stage reads it.')

  def adversarial_inputs(ids):
    r = row[ids]
    return {**clean_inputs(ids), 'x_adv': adv['x_adv'][r], 'clean_pred': adv['clean_pred'][r],
            'adv_pred': adv['adv_pred'][r]}

  if 'maps' in todo:
    step = runner.compile_step(lambda params, batch: batches.maps_batch(
        apply_fn, params, batch['x'], batch['x_adv'], batch['clean_pred'], batch['adv_pred'],
        batch['index'], cfg=cfg, layer=layer), mesh)
    runner.run_stage(runner.Stage('maps', step, adversarial_inputs, cfg.batch_size),
                     output_dir=out, work=work, replicated=variables, mesh=mesh)
  if 'recovery' in todo:
    cw = settings.ATTACKS.index('cw')
    rec_work = recovery_work(adv, test.labels)
    if not len(rec_work):
      return out
    step = runner.compile_step(lambda rep, batch: batches.recovery_batch(
        apply_fn, rep[0], batch['x_adv'][:, cw], batch['adv_pred'][:, cw], batch['index'],
        rep[1], rep[2], cfg=cfg, layer=layer), mesh)
    num_pixels = perturbation.pixel_counts(cfg.recovery_grid, int(np.prod(test.images.shape[1:3])))
    runner.run_stage(runner.Stage('recovery', step, adversarial_inputs, cfg.batch_size,
                                  record=('label',)),
                     output_dir=out, work=rec_work,
                     replicated=(variables, np.asarray(model.mean, np.float32), num_pixels),
                     mesh=mesh)
  return out
