"""Saving and loading model checkpoints (the only module that imports orbax).

A checkpoint is a directory holding ``metadata.json`` (model name, dataset, accuracy,
training command, data checksums, versions, and ``weights_sha256``: the SHA-256 of every
weight file) and ``orbax/<step>/``, an orbax ``CheckpointManager`` step with the flax
variables. ``load`` verifies the digests and the stored shapes before restoring anything, so a
truncated, modified or mismatched checkpoint is an error naming the file, never a model with
other weights. The trained checkpoints shipped with the project live in
``checkpoints/<model name>/`` at the repository root, or under ``$ADVSAL_CHECKPOINT_DIR``.
"""

import hashlib
import json
import os
import pathlib
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from advsal_jax import models
from advsal_jax.studies import store

CHECKPOINT_DIR_ENV = 'ADVSAL_CHECKPOINT_DIR'
METADATA_FILE = 'metadata.json'
ORBAX_SUBDIR = 'orbax'
"""The subfolder of a checkpoint directory that holds the orbax steps."""


class CheckpointError(ValueError):
  """A checkpoint is missing, truncated or does not match its model."""


def default_dir() -> pathlib.Path:
  """``$ADVSAL_CHECKPOINT_DIR`` if set, else the repository's ``checkpoints/``."""
  env = os.environ.get(CHECKPOINT_DIR_ENV)
  if env:
    return pathlib.Path(env)
  return pathlib.Path(__file__).resolve().parent.parent / 'checkpoints'


def resolve(name_or_path: str | os.PathLike) -> pathlib.Path:
  """Maps a registered model name or a directory to a checkpoint directory.

  Raises:
    TypeError: ``name_or_path`` is not a str or os.PathLike.
  """
  if not isinstance(name_or_path, (str, os.PathLike)):
    raise TypeError(f'name_or_path must be a model name or a checkpoint directory (str or '
                    f'os.PathLike), got {name_or_path!r}.')
  path = pathlib.Path(name_or_path)
  if (path / METADATA_FILE).exists() or os.sep in str(name_or_path):
    return path.resolve()
  return (default_dir() / str(name_or_path)).resolve()


def manager(directory: str | os.PathLike, *, max_to_keep: int | None = None
            ) -> ocp.CheckpointManager:
  """An orbax ``CheckpointManager`` over ``directory`` (created if missing).

  Its items are pytrees of the ``StandardCheckpointHandler``, whose stored shapes
  ``item_metadata`` reads without restoring.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(pathlib.Path(directory).resolve(), options=options,
                               item_handlers=ocp.StandardCheckpointHandler())


def _is_step(step: Any) -> bool:
  """Whether ``step`` is an int >= 0 (an orbax step number)."""
  return not isinstance(step, bool) and isinstance(step, (int, np.integer)) and step >= 0


def _check_step(step: Any):
  """Raises ValueError unless ``step`` is an int >= 0."""
  if not _is_step(step):
    raise ValueError(f'step must be an int >= 0, got {step!r}.')


def save_state(mngr: ocp.CheckpointManager, step: int, state: Any):
  """Saves the pytree ``state`` as ``step`` and waits until it is on disk.

  Raises:
    ValueError: ``step`` is not an int >= 0.
  """
  _check_step(step)
  mngr.save(step, args=ocp.args.StandardSave(state))
  mngr.wait_until_finished()


def restore_state(mngr: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
                  ) -> Any:
  """Restores ``step`` (default: latest) into the structure of ``abstract_state``."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f'No checkpoint step in {mngr.directory}.')
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def weights_sha256(directory: str | os.PathLike, step: int) -> dict[str, str]:
  """SHA-256 of every file of the orbax step ``step`` of the checkpoint at ``directory``.

  Returns:
    ``{path relative to directory (POSIX): hex digest}`` for the files under
    ``orbax/<step>/``, sorted by path; ``save`` records it in ``metadata.json`` as
    ``weights_sha256`` and ``load`` checks it.

  Raises:
    CheckpointError: ``directory`` has no ``orbax/<step>/`` directory.
  """
  directory = pathlib.Path(directory)
  step_dir = directory / ORBAX_SUBDIR / str(step)
  if not step_dir.is_dir():
    raise CheckpointError(f'{step_dir} is not a directory: {directory} holds no orbax step '
                          f'{step}.')
  files = sorted(f for f in step_dir.rglob('*') if f.is_file())
  return {f.relative_to(directory).as_posix(): _sha256(f) for f in files}


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as fh:
    for block in iter(lambda: fh.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _write_metadata(directory: pathlib.Path, metadata: dict):
  store.write_text(directory / METADATA_FILE,
                   json.dumps(metadata, indent=2, sort_keys=True) + '\n')


def save(directory: str | os.PathLike, *, model_name: str, variables: Any,
         metadata: dict, step: int = 0) -> pathlib.Path:
  """Writes ``variables`` of registered model ``model_name`` plus ``metadata.json``.

  orbax writes the step into a temporary directory and renames it into place when complete;
  ``metadata.json``, with the SHA-256 of every weight file (``weights_sha256``), is written
  after it, atomically, so a directory with metadata is complete.

  Returns:
    The checkpoint directory.

  Raises:
    ValueError: an unregistered ``model_name``; ``step`` is not an int >= 0.
    TypeError: ``metadata`` is not a mapping.
  """
  if not isinstance(metadata, Mapping):
    raise TypeError(f'metadata must be a mapping (a dict of JSON values), got '
                    f'{type(metadata).__name__} {metadata!r}.')
  _check_step(step)
  models.get_spec(model_name)
  directory = pathlib.Path(directory).resolve()
  directory.mkdir(parents=True, exist_ok=True)
  save_state(manager(directory / ORBAX_SUBDIR, max_to_keep=1), step, variables)
  _write_metadata(directory, {**metadata, 'model': model_name, 'step': step,
                              'weights_sha256': weights_sha256(directory, step)})
  return directory


def record_weights_sha256(name_or_path: str | os.PathLike) -> dict[str, str]:
  """Adds ``weights_sha256`` to the ``metadata.json`` of a checkpoint saved without it.

  For trusted checkpoints written before ``save`` recorded checksums (the committed ones got
  theirs this way): the digests are taken from the files as they are now. A checkpoint that
  already has them is verified instead and left unchanged.

  Args:
    name_or_path: a registered model name or a checkpoint directory (see ``resolve``).

  Returns:
    The recorded ``{relative path: SHA-256}``.

  Raises:
    CheckpointError: no readable metadata, no orbax step, or recorded checksums that do not
      match the files.
  """
  directory = resolve(name_or_path)
  metadata = _read_metadata(directory)
  step = _step(directory, metadata)
  if 'weights_sha256' in metadata:
    _verify_weights(directory, metadata)
    return metadata['weights_sha256']
  sums = weights_sha256(directory, step)
  if not sums:
    raise CheckpointError(f'{directory / ORBAX_SUBDIR / str(step)} holds no weight files.')
  _write_metadata(directory, {**metadata, 'weights_sha256': sums})
  return sums


def _read_metadata(directory: pathlib.Path) -> dict:
  """The metadata dict of the checkpoint at ``directory`` (a registered model named)."""
  meta_file = directory / METADATA_FILE
  if not meta_file.exists():
    raise CheckpointError(
        f'No checkpoint at {directory} ({METADATA_FILE} missing). Pass a registered model name '
        f'with a trained checkpoint under {default_dir()} or a checkpoint directory; train one '
        'with experiments/train.py.')
  try:
    metadata = json.loads(meta_file.read_bytes())
  except ValueError as e:  # JSONDecodeError or UnicodeDecodeError.
    raise CheckpointError(f'{meta_file} is not valid JSON: {e}.') from e
  if not isinstance(metadata, dict):
    raise CheckpointError(f'{meta_file} must hold a JSON object, got {type(metadata).__name__}.')
  name = metadata.get('model')
  if name not in models.MODELS:
    raise CheckpointError(f'{meta_file} names model {name!r}, not one of {sorted(models.MODELS)}.')
  return metadata


def _step(directory: pathlib.Path, metadata: dict) -> int:
  """The orbax step named by ``metadata``, checked to be a directory of the checkpoint."""
  step = metadata.get('step')
  if not _is_step(step):
    raise CheckpointError(f'{directory / METADATA_FILE}: step must be an int >= 0, got '
                          f'{step!r}.')
  step_dir = directory / ORBAX_SUBDIR / str(step)
  if not step_dir.is_dir():
    raise CheckpointError(f'{directory} has metadata but no weights ({step_dir} missing).')
  return step


def _verify_weights(directory: pathlib.Path, metadata: dict):
  """Checks every file recorded in ``weights_sha256`` against its digest.

  Files of the step that are not recorded are not read: orbax reaches the arrays through the
  recorded manifests, so they cannot change the weights.
  """
  meta_file = directory / METADATA_FILE
  sums = metadata.get('weights_sha256')
  if not isinstance(sums, dict) or not sums:
    raise CheckpointError(
        f'{meta_file} records no weights_sha256, so the weights cannot be verified. If the '
        'checkpoint is trusted, record them with '
        f'checkpoints.record_weights_sha256({str(directory)!r}).')
  for rel, want in sorted(sums.items()):
    path = directory / rel
    if not path.resolve().is_relative_to(directory):
      raise CheckpointError(f'{meta_file} records {rel!r}, a path outside {directory}.')
    if not path.is_file():
      raise CheckpointError(f'{path} is missing: {meta_file} records it as part of the '
                            'weights (the checkpoint is incomplete).')
    got = _sha256(path)
    if got != want:
      raise CheckpointError(f'{path} is corrupt: its SHA-256 is {got}, {meta_file} records '
                            f'{want} (truncated, modified or from another checkpoint).')


def verify(name_or_path: str | os.PathLike) -> tuple[pathlib.Path, dict]:
  """Checks a checkpoint's metadata and the SHA-256 of its weight files, reading no weights.

  ``load`` runs it first; a loader of another kind of checkpoint saved with ``save`` (e.g. a
  masker's) calls it before restoring.

  Args:
    name_or_path: a registered model name or a checkpoint directory (see ``resolve``).

  Returns:
    ``(directory, metadata)``.

  Raises:
    CheckpointError: naming the file: no metadata, metadata that is not a JSON object naming
      a registered model and an existing step, no ``weights_sha256``, or a weight file that is
      missing or whose digest differs.
  """
  directory = resolve(name_or_path)
  metadata = _read_metadata(directory)
  _step(directory, metadata)
  _verify_weights(directory, metadata)
  return directory, metadata


def _check_architecture(mngr: ocp.CheckpointManager, step: int, abstract: Any,
                        meta_file: pathlib.Path, name: str):
  """Compares the stored array shapes and dtypes with those of ``name`` before restoring."""
  def arrays(tree):
    return {jax.tree_util.keystr(k, simple=True, separator='/'): (tuple(v.shape), str(v.dtype))
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

  stored, wanted = arrays(mngr.item_metadata(step)), arrays(abstract)
  if stored != wanted:
    missing = sorted(wanted.keys() - stored.keys())
    extra = sorted(stored.keys() - wanted.keys())
    differ = sorted(k for k in wanted.keys() & stored.keys() if wanted[k] != stored[k])
    raise CheckpointError(
        f'{meta_file} names model {name!r}, but the weights in {mngr.directory / str(step)} '
        f'are of another architecture: {len(missing)} arrays of {name!r} missing (e.g. '
        f'{missing[:2]}), {len(extra)} arrays not in {name!r} (e.g. {extra[:2]}), '
        f'{len(differ)} of another shape or dtype (e.g. '
        f'{[(k, "stored", stored[k], "expected", wanted[k]) for k in differ[:2]]}).')


def load(name_or_path: str | os.PathLike) -> tuple[nn.Module, Any, dict]:
  """Loads a checkpoint by registered model name or directory.

  The weight files are checked against the SHA-256 digests in ``metadata.json``, and their
  array shapes against the architecture it names, before anything is restored.

  Args:
    name_or_path: e.g. ``'alexnet_cifar'`` (looked up in ``default_dir()``) or a directory.

  Returns:
    ``(model, variables, metadata)``; ``model.apply(variables, x)`` gives logits. For a
    masking model's checkpoint (metadata kind ``'masker'``): ``saliency.load_masker``'s
    ``(masker, variables, metadata)``, whose ``masker.apply(variables, x, target)`` gives masks.

  Raises:
    CheckpointError: naming the file or directory, when the directory, its metadata or its
      weights are missing, truncated, modified (a SHA-256 mismatch) or do not match the
      registered architecture.
  """
  directory, metadata = verify(name_or_path)
  if metadata.get('kind') == 'masker':
    # saliency imports this module: import it here, where a masker is asked for.
    from advsal_jax import saliency  # pylint: disable=g-import-not-at-top
    return saliency.load_masker(directory)
  step = metadata['step']
  name = metadata['model']
  model = models.create(name)
  abstract = jax.eval_shape(lambda: models.init(name, jax.random.key(0))[1])
  # Restore onto this process's first device: the saved sharding names the device that wrote
  # the checkpoint (cpu:0 for the committed ones), which a GPU/TPU host or another process of
  # a multi-host run does not have.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          abstract)
  orbax_dir = directory / ORBAX_SUBDIR
  mngr = manager(orbax_dir)
  try:
    _check_architecture(mngr, step, abstract, directory / METADATA_FILE, name)
    variables = restore_state(mngr, abstract, step)
  except CheckpointError:
    raise
  except Exception as e:  # orbax raises many types; the user needs to know which file.
    raise CheckpointError(
        f'Could not restore the weights of {name!r} from {orbax_dir}: the checkpoint is '
        f'truncated or does not match the architecture ({type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""}).') from e
  return model, variables, metadata
