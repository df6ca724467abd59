"""Study 003's adversarial sets, computed once and cached by content hash.

The detection experiments attack the first ``num_train`` training images and the first
``num_examples`` test images with every attack; each detector kind, train attack and seed then
reads the same sets. A set is identified by the SHA-256 of everything that determines it: the
classifier's weights, the dataset and split, the images, the attack and its hyper-parameters,
the seed (JSMA's targets) and the batch size (the batches the shards are cut in). It lives in
``<cache_dir>/<attack>_<split>_<hash[:16]>/`` as a study run of its own (``config.json``
holding the hashed settings, one shard per batch), so a killed run resumes batch by batch,
and another run (another seed, detector or preset with the same attacks) reads it instead of
attacking again.
"""

import hashlib
import json
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import data
from advsal_jax.studies import detect_adversarial as study
from advsal_jax.studies import runner
from advsal_jax.studies import store
from advsal_jax.types import Params

STAGE = 'adversarial'
_ATTACK_FIELDS = {
    'fgsm': ('eps',),
    'bim': ('eps', 'bim_step', 'num_steps'),
    'mim': ('eps', 'mim_step', 'num_steps', 'mim_decay'),
    'carlini_wagner_l2': ('cw_confidence', 'cw_learning_rate', 'cw_initial_const',
                          'cw_binary_search_steps', 'cw_max_iterations'),
    'jsma': ('jsma_theta', 'jsma_gamma', 'seed'),
    'deepfool': ('deepfool_overshoot', 'deepfool_max_iter'),
}
"""The ``Config`` fields each attack's result depends on (``seed`` keys JSMA's targets)."""


def params_digest(variables: Params) -> str:
  """SHA-256 (hex) of a pytree of arrays: every leaf's path, dtype, shape and bytes."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    leaf = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}|'.encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def set_identity(cfg: study.Config, attack: str, *, split: str, num: int, dataset: str,
                 classifier_digest: str) -> dict[str, Any]:
  """Everything that determines an adversarial set (JSON-serialisable).

  Args:
    cfg: the study's settings, budgets resolved (``study.with_dataset_budgets``).
    attack: a name of ``study.ATTACK_NAMES``.
    split: 'train' or 'test'.
    num: the first ``num`` images of the split are attacked.
    dataset: the dataset's name.
    classifier_digest: ``params_digest`` of the classifier's variables.
  """
  return {'attack': attack, 'split': split, 'num_images': num, 'dataset': dataset,
          'classifier_sha256': classifier_digest, 'batch_size': cfg.batch_size,
          **{f: getattr(cfg, f) for f in _ATTACK_FIELDS[attack]}}


def set_dir(cache_dir: store.PathLike, identity: dict[str, Any]) -> pathlib.Path:
  """``<cache_dir>/<attack>_<split>_<first 16 hex digits of the identity's SHA-256>``."""
  digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
  return pathlib.Path(cache_dir) / f"{identity['attack']}_{identity['split']}_{digest[:16]}"


def attack_step(attack: str, classify: Callable, *, cfg: study.Config,
                num_classes: int) -> runner.StepFn:
  """The per-batch step of a set: ``step(params, batch) -> {x_adv, clean_pred, adv_pred}``.

  ``batch`` holds ``x`` f32[B,H,W,C], ``label`` i32[B] and ``index`` i32[B] (the images'
  positions in the split, which key JSMA's targets as in the shift experiment).
  """

  def step(params: Params, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    x, labels = batch['x'], batch['label']
    target = study.jsma_targets(labels, batch['index'], seed=cfg.seed,
                                num_classes=num_classes)
    x_adv = study.run_attack(attack, classify, params, x, labels, target, cfg=cfg,
                             num_classes=num_classes)
    predict = lambda images: classify(params, images).argmax(-1).astype(jnp.int32)
    return {'x_adv': x_adv, 'clean_pred': predict(x), 'adv_pred': predict(x_adv)}

  return step


def adversarial_set(attack: str, split: data.Dataset, *, split_name: str, num: int,
                    classify: Callable, params: Params, cfg: study.Config, dataset: str,
                    classifier_digest: str, cache_dir: store.PathLike,
                    mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
  """The ``attack`` set of the first ``num`` images of ``split``, from the cache or computed.

  Args:
    attack: a name of ``study.ATTACK_NAMES``.
    split: the loaded split.
    split_name: 'train' or 'test' (part of the set's identity).
    num: images attacked.
    classify: ``classify(params, x) -> logits f32[B,K]``.
    params: its variables.
    cfg: the settings, budgets resolved.
    dataset: the dataset's name.
    classifier_digest: ``params_digest`` of the classifier's weights.
    cache_dir: the cache's root.
    mesh: the devices the batches are split over.

  Returns:
    ``x_adv`` f32[N,H,W,C]; ``clean_pred``, ``adv_pred``, ``label``, ``index`` i32/i64[N].
  """
  identity = set_identity(cfg, attack, split=split_name, num=num, dataset=dataset,
                          classifier_digest=classifier_digest)
  out = runner.open_output_dir(set_dir(cache_dir, identity), identity, resume=True)
  step = runner.compile_step(
      attack_step(attack, classify, cfg=cfg, num_classes=len(split.class_names)), mesh)

  def inputs(ids: np.ndarray) -> dict[str, np.ndarray]:
    return {'x': data.to_float(split.images[ids]), 'label': split.labels[ids].astype(np.int32)}

  runner.run_stage(runner.Stage(STAGE, step, inputs, cfg.batch_size, record=('label',),
                                unit=f'{split_name} images ({attack})'),
                   output_dir=out, work=np.arange(num), replicated=params, mesh=mesh)
  return store.load_shards(out, STAGE)
