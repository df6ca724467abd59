"""Saving and loading model checkpoints (the only module that imports orbax).

A checkpoint is a directory holding ``metadata.json`` (model name, dataset, accuracy,
training command, data checksums, versions) and ``orbax/<step>/``, an orbax
``CheckpointManager`` step with the flax variables. The trained checkpoints shipped with
the project live in ``checkpoints/<model name>/`` at the repository root, or under
``$ADVSAL_CHECKPOINT_DIR``.
"""

import json
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from advsal_jax import models

CHECKPOINT_DIR_ENV = 'ADVSAL_CHECKPOINT_DIR'
METADATA_FILE = 'metadata.json'
_ORBAX_SUBDIR = 'orbax'


class CheckpointError(ValueError):
  """A checkpoint is missing, truncated or does not match its model."""


def default_dir() -> pathlib.Path:
  """``$ADVSAL_CHECKPOINT_DIR`` if set, else the repository's ``checkpoints/``."""
  env = os.environ.get(CHECKPOINT_DIR_ENV)
  if env:
    return pathlib.Path(env)
  return pathlib.Path(__file__).resolve().parent.parent / 'checkpoints'


def resolve(name_or_path: str | os.PathLike) -> pathlib.Path:
  """Maps a registered model name or a directory to a checkpoint directory."""
  path = pathlib.Path(name_or_path)
  if (path / METADATA_FILE).exists() or os.sep in str(name_or_path):
    return path.resolve()
  return (default_dir() / str(name_or_path)).resolve()


def manager(directory: str | os.PathLike, *, max_to_keep: int | None = None
            ) -> ocp.CheckpointManager:
  """An orbax ``CheckpointManager`` over ``directory`` (created if missing)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(pathlib.Path(directory).resolve(), options=options)


def save_state(mngr: ocp.CheckpointManager, step: int, state: Any):
  """Saves the pytree ``state`` as ``step`` and waits until it is on disk."""
  mngr.save(step, args=ocp.args.StandardSave(state))
  mngr.wait_until_finished()


def restore_state(mngr: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
                  ) -> Any:
  """Restores ``step`` (default: latest) into the structure of ``abstract_state``."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f'No checkpoint step in {mngr.directory}.')
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def save(directory: str | os.PathLike, *, model_name: str, variables: Any,
         metadata: dict, step: int = 0) -> pathlib.Path:
  """Writes ``variables`` of registered model ``model_name`` plus ``metadata.json``.

  The metadata file is written last (atomically), so a directory with metadata is complete.

  Returns:
    The checkpoint directory.
  """
  models.get_spec(model_name)
  directory = pathlib.Path(directory).resolve()
  directory.mkdir(parents=True, exist_ok=True)
  save_state(manager(directory / _ORBAX_SUBDIR, max_to_keep=1), step, variables)
  meta = {**metadata, 'model': model_name, 'step': step}
  tmp = directory / (METADATA_FILE + '.tmp')
  tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + '\n')
  tmp.replace(directory / METADATA_FILE)
  return directory


def load(name_or_path: str | os.PathLike) -> tuple[nn.Module, Any, dict]:
  """Loads a checkpoint by registered model name or directory.

  Args:
    name_or_path: e.g. ``'alexnet_cifar'`` (looked up in ``default_dir()``) or a directory.

  Returns:
    ``(model, variables, metadata)``; ``model.apply(variables, x)`` gives logits.

  Raises:
    CheckpointError: the directory, its metadata or its weights are missing, truncated or
      do not match the registered architecture.
  """
  directory = resolve(name_or_path)
  meta_file = directory / METADATA_FILE
  if not meta_file.exists():
    raise CheckpointError(
        f'No checkpoint at {directory} ({METADATA_FILE} missing). Pass a registered model name '
        f'with a trained checkpoint under {default_dir()} or a checkpoint directory; train one '
        'with experiments/train.py.')
  try:
    metadata = json.loads(meta_file.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f'{meta_file} is not valid JSON: {e}.') from e
  name = metadata.get('model')
  if name not in models.MODELS:
    raise CheckpointError(f'{meta_file} names model {name!r}, not one of {sorted(models.MODELS)}.')
  model = models.create(name)
  abstract = jax.eval_shape(lambda: models.init(name, jax.random.key(0))[1])
  # Restore onto this process's first device: the saved sharding names the device that wrote
  # the checkpoint (cpu:0 for the committed ones), which a GPU/TPU host or another process of
  # a multi-host run does not have.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          abstract)
  orbax_dir = directory / _ORBAX_SUBDIR
  if not orbax_dir.is_dir():
    raise CheckpointError(f'{directory} has metadata but no weights ({orbax_dir} missing).')
  try:
    variables = restore_state(manager(orbax_dir), abstract, metadata.get('step'))
  except CheckpointError:
    raise
  except Exception as e:  # orbax raises many types; the user needs to know which file.
    raise CheckpointError(
        f'Could not restore the weights of {name!r} from {orbax_dir}: the checkpoint is '
        f'truncated or does not match the architecture ({type(e).__name__}: {e}).') from e
  return model, variables, metadata
