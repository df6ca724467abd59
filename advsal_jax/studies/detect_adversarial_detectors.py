"""Study 003, detection half: the attack matrix (Figure 2) and the white-box attack (Table 3).

Runs in an output directory claimed by ``detect_adversarial.run`` (same ``Config``), after
the shift experiment if that was selected. Everything reads the adversarial sets of
``detect_adversarial_sets`` (cached by content hash): every attack of ``cfg.attacks`` on the
first ``num_train`` training and ``num_examples`` test images.

*Pairs.* A detector is trained and tested on pairs (clean image, its adversarial version),
labelled ``CLEAN`` and ``ADVERSARIAL``. With ``only_successful`` (default) a pair counts only
when the classifier got the clean image right and the attack fooled it (the shift
experiment's definition of success), so an attack that failed never teaches the detector
that an unchanged image is adversarial.

*Matrix.* For each detector kind (SPD, SMD, ID, JSD; ``detection.detector_input``), train
attack and seed: a fresh detector network with the guarded classifier's architecture
(``detection.init_detector``) is trained on the training pairs of that attack
(``detection.train_detector``, Adam) and scores the test pairs of every attack. Each cell's
scores go to ``cells/matrix/<kind>_<attack>_s<seed>.npz`` and its trained variables to
``detectors/`` (the white-box experiment starts from them), so a killed run resumes by cell.

*White-box.* For each kind and seed, the detector trained on ``whitebox_train_attack``
(its matrix cell's, trained here if the matrix did not run) is attacked on the test images
by ``attacks.whitebox_detector`` in every mode of ``whitebox_modes`` ("before"); then it is
adversarially trained for ``adversarial_rounds`` rounds against the first mode on the
training images (``detection.adversarial_training``) and attacked again ("after"). The
attacks run as runner stages (``whitebox_<kind>_s<seed>_<phase>_<mode>``), resumable by
batch; the hardened variables and the training history are saved before the "after" stages.

Randomness: a detector's initialisation and batch order are keyed by ``seed + s`` (s-th of
``num_seeds``) folded with the positions of its kind and train attack in
``DETECTOR_KINDS`` and ``ATTACK_NAMES``, so a subset of kinds or attacks gives the same cells.
"""

import dataclasses
import functools
import pathlib
from typing import Any, Callable

from absl import logging
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from advsal_jax import attacks
from advsal_jax import checkpoints
from advsal_jax import compilation
from advsal_jax import data
from advsal_jax import detection
from advsal_jax import parallel
from advsal_jax import saliency
from advsal_jax.studies import detect_adversarial as study
from advsal_jax.studies import detect_adversarial_sets as sets
from advsal_jax.studies import progress
from advsal_jax.studies import runner
from advsal_jax.studies import store
from advsal_jax.types import Params

MATRIX_DIR = 'cells/matrix'
WHITEBOX_DIR = 'cells/whitebox'
DETECTORS_DIR = 'detectors'
PHASES = ('before', 'after')
_INIT_STREAM, _TRAIN_STREAM, _ADVERSARIAL_STREAM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the detection experiments share: models, data and the adversarial sets.

  Attributes:
    cfg: the settings, budgets resolved.
    masker: the masking model (its ``classify`` method is the classifier).
    variables: the masker's variables (they hold the classifier's).
    architecture: the classifier's registered model name (the detectors' architecture).
    train: the training split; test: the test split.
    sets: ``(split name, attack) -> adversarial set`` (``sets.adversarial_set``).
    mesh: the devices batches are split over.
    optimizer: the detectors' (one object, so their training step compiles once per shape).
  """
  cfg: study.Config
  masker: Any
  variables: Params
  architecture: str
  train: data.Dataset
  test: data.Dataset
  sets: dict[tuple[str, str], dict[str, np.ndarray]]
  mesh: jax.sharding.Mesh
  optimizer: optax.GradientTransformation

  @property
  def classify(self) -> Callable[[Params, jax.Array], jax.Array]:
    """``classify(masker variables, x) -> logits``."""
    return study.classify_fn(self.masker.apply)

  def clean(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x f32[N,H,W,C], labels i32[N])``: the split's images the experiments use."""
    ds, n = ((self.train, self.cfg.num_train) if split == 'train'
             else (self.test, self.cfg.num_examples))
    return data.to_float(ds.images[:n]), ds.labels[:n].astype(np.int32)


def kept(adversarial_set: dict[str, np.ndarray], *, only_successful: bool) -> np.ndarray:
  """bool[N]: the images whose (clean, adversarial) pair the detectors see.

  Every image, or with ``only_successful`` those the classifier got right and the attack
  fooled.
  """
  if not only_successful:
    return np.ones(len(adversarial_set['label']), bool)
  label = adversarial_set['label']
  return (adversarial_set['clean_pred'] == label) & (adversarial_set['adv_pred'] != label)


def detection_pairs(clean: np.ndarray, adversarial: np.ndarray, keep: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The pairs of the images ``keep`` selects, as a detection set.

  Args:
    clean: [N, ...] detector inputs (or images) of the clean images.
    adversarial: [N, ...] those of their adversarial versions.
    keep: bool[N].

  Returns:
    ``(inputs [2k, ...], labels i32[2k], index i64[2k])``: the k kept clean inputs
    (``CLEAN``), then their adversarial versions (``ADVERSARIAL``); ``index`` is each one's
    position in the split.
  """
  ids = np.flatnonzero(keep)
  inputs = np.concatenate([np.asarray(clean)[ids], np.asarray(adversarial)[ids]])
  labels = np.concatenate([np.full(len(ids), detection.CLEAN, np.int32),
                           np.full(len(ids), detection.ADVERSARIAL, np.int32)])
  return inputs, labels, np.concatenate([ids, ids]).astype(np.int64)


def make_detector(setup: Setup, kind: str) -> detection.Detector:
  """The detector ``kind`` of ``setup``'s classifier (input transform + network)."""
  method = setup.cfg.detector_saliency
  source = {'id': None, 'jsd': setup.classify}.get(
      kind, setup.masker.apply if method in saliency.MASKER_METHODS else setup.classify)
  shape = (1, *setup.test.images.shape[1:])
  channels = jax.eval_shape(
      lambda p, x: detection.detector_input(kind, source, p, x, method=method),
      setup.variables, jax.ShapeDtypeStruct(shape, jnp.float32)).shape[-1]
  network = detection.create_detector(setup.architecture, channels)
  return detection.Detector(network.apply, kind, source=source, method=method)


def cell_key(cfg: study.Config, kind: str, attack: str, seed_index: int) -> jax.Array:
  """The key of a detector's initialisation and training (see the module docstring)."""
  key = jax.random.key(cfg.seed + seed_index)
  key = jax.random.fold_in(key, study.DETECTOR_KINDS.index(kind))
  return jax.random.fold_in(key, study.ATTACK_NAMES.index(attack))


def _detector_path(out: pathlib.Path, name: str) -> pathlib.Path:
  return out / DETECTORS_DIR / f'{name}.msgpack'


def save_variables(path: pathlib.Path, variables: Params):
  """Writes flax variables as msgpack bytes (atomically)."""
  with store.atomic(path) as fh:
    fh.write(flax.serialization.to_bytes(variables))


def load_variables(path: pathlib.Path, template: Params) -> Params:
  """Reads variables written by ``save_variables`` into the structure of ``template``."""
  return flax.serialization.from_bytes(template, path.read_bytes())


class Inputs:
  """Detector inputs of one kind, computed once per split and attack and kept in memory."""

  def __init__(self, setup: Setup, kind: str):
    self.setup, self.kind = setup, kind
    self.detector = make_detector(setup, kind)
    self._fn = compilation.jit(functools.partial(self.detector.inputs,
                                                 batch_size=setup.cfg.batch_size))
    self._cache: dict[tuple[str, str], np.ndarray] = {}

  def __call__(self, split: str, attack: str | None) -> np.ndarray:
    """Inputs f32[N,H,W,C'] of the clean images (``attack`` None) or of an attack's set."""
    if (split, attack) not in self._cache:
      x = (self.setup.clean(split)[0] if attack is None
           else self.setup.sets[split, attack]['x_adv'])
      self._cache[split, attack] = np.asarray(self._fn(self.setup.variables, x))
    return self._cache[split, attack]

  def pairs(self, split: str, attack: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``detection_pairs`` of the split's clean images and ``attack``'s set."""
    keep = kept(self.setup.sets[split, attack], only_successful=self.setup.cfg.only_successful)
    return detection_pairs(self(split, None), self(split, attack), keep)


def _fit(setup: Setup, inputs: Inputs, attack: str, seed_index: int
         ) -> tuple[Params | None, np.ndarray]:
  """A fresh detector trained on ``attack``'s training pairs: (variables, losses).

  Returns ``(None, empty)`` when the attack left no training pair.
  """
  cfg = setup.cfg
  x, y, _ = inputs.pairs('train', attack)
  if not len(y):
    return None, np.zeros((0,), np.float32)
  k_init, k_train = (jax.random.fold_in(cell_key(cfg, inputs.kind, attack, seed_index), s)
                     for s in (_INIT_STREAM, _TRAIN_STREAM))
  _, variables = detection.init_detector(setup.architecture, x.shape[-1], key=k_init)
  variables, losses = detection.train_detector(
      inputs.detector.network, variables, x, y, key=k_train, num_epochs=cfg.detector_epochs,
      batch_size=min(cfg.detector_batch_size, len(y)), optimizer=setup.optimizer)
  return variables, np.asarray(losses)


def trained_detector(setup: Setup, inputs: Inputs, attack: str, seed_index: int,
                     out: pathlib.Path) -> tuple[Params | None, np.ndarray]:
  """The detector of (kind, ``attack``, seed): loaded from ``detectors/`` or trained and saved.

  Returns:
    ``(variables or None if the attack left no training pair, losses of its training)``
    (losses empty when loaded).
  """
  path = _detector_path(out, f'{inputs.kind}_{attack}_s{seed_index}')
  if path.exists():
    x = inputs('train', None)
    _, template = detection.init_detector(setup.architecture, x.shape[-1],
                                          key=jax.random.key(0))
    return load_variables(path, template), np.zeros((0,), np.float32)
  variables, losses = _fit(setup, inputs, attack, seed_index)
  if variables is not None:
    save_variables(path, variables)
  return variables, losses


def matrix_cell(setup: Setup, inputs: Inputs, attack: str, seed_index: int,
                out: pathlib.Path) -> dict[str, np.ndarray]:
  """One matrix cell: the detector trained on ``attack`` scoring every attack's test pairs.

  Returns:
    ``n_train`` (training pairs), ``losses``, and per test attack b: ``scores_<b>`` f32[2k],
    ``labels_<b>`` i32[2k], ``index_<b>`` i64[2k] (empty when untrained or k = 0).
  """
  variables, losses = trained_detector(setup, inputs, attack, seed_index, out)
  n_train = int(len(inputs.pairs('train', attack)[1]) // 2)
  result: dict[str, np.ndarray] = {'n_train': np.int64(n_train), 'losses': losses}
  for test_attack in setup.cfg.attacks:
    x, y, index = inputs.pairs('test', test_attack)
    scores = (np.asarray(detection.detector_scores(inputs.detector.network, variables, x,
                                                   batch_size=setup.cfg.batch_size))
              if variables is not None and len(y) else np.zeros((0,), np.float32))
    keep = len(scores)
    result.update({f'scores_{test_attack}': scores, f'labels_{test_attack}': y[:keep],
                   f'index_{test_attack}': index[:keep]})
  return result


def matrix_cells(cfg: study.Config) -> list[tuple[str, str, int]]:
  """Every (kind, train attack, seed index) of the matrix, in run order."""
  return [(k, a, s) for k in cfg.detectors for a in cfg.attacks for s in range(cfg.num_seeds)]


def matrix_path(out: pathlib.Path, kind: str, attack: str, seed_index: int) -> pathlib.Path:
  """The file of a matrix cell."""
  return out / MATRIX_DIR / f'{kind}_{attack}_s{seed_index}.npz'


def run_matrix(setup: Setup, out: pathlib.Path):
  """Computes every matrix cell without a file (see the module docstring)."""
  cells = matrix_cells(setup.cfg)
  todo = [c for c in cells if not matrix_path(out, *c).exists()]
  logging.info('matrix: %d of %d cells to do (%d detectors x %d train attacks x %d seeds)',
               len(todo), len(cells), len(setup.cfg.detectors), len(setup.cfg.attacks),
               setup.cfg.num_seeds)
  bar = progress.Progress('matrix', len(cells), unit='detectors',
                          already_done=len(cells) - len(todo))
  for kind in setup.cfg.detectors:
    mine = [c for c in todo if c[0] == kind]
    if not mine:
      continue
    inputs = Inputs(setup, kind)
    for _, attack, s in mine:
      store.write_npz(matrix_path(out, kind, attack, s),
                      matrix_cell(setup, inputs, attack, s, out))
      bar.update(1)


def whitebox_attack(setup: Setup, mode: str) -> Callable[..., jax.Array]:
  """``attacks.whitebox_detector`` with the run's budget, steps, mode and joint weight."""
  cfg = setup.cfg
  return functools.partial(attacks.whitebox_detector, eps=cfg.whitebox_eps,
                           step_size=cfg.whitebox_step, num_steps=cfg.whitebox_steps,
                           mode=mode, detector_weight=cfg.whitebox_weight)


def whitebox_step(setup: Setup, detector: detection.Detector, mode: str) -> runner.StepFn:
  """Per batch of test images: the white-box attack on (classifier, detector) and its outcome.

  ``step({'source', 'detector'}, batch) -> {'pred', 'score', 'clean_score'}``: the
  classifier's prediction on the attacked image, and the detector's scores (``z_adv -
  z_clean``) of the attacked and the clean image.
  """
  attack = whitebox_attack(setup, mode)
  classify = setup.classify

  def step(params: Params, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    x_wb = attack(classify, params['source'], batch['x'], batch['label'],
                  detector_fn=detector, detector_params=params)

    def score(images):
      logits = detector(params, images)
      return logits[:, detection.ADVERSARIAL] - logits[:, detection.CLEAN]

    return {'pred': classify(params['source'], x_wb).argmax(-1).astype(jnp.int32),
            'score': score(x_wb), 'clean_score': score(batch['x'])}

  return step


def whitebox_stage(kind: str, seed_index: int, phase: str, mode: str) -> str:
  """The runner stage name of one white-box evaluation."""
  return f'whitebox_{kind}_s{seed_index}_{phase}_{mode}'


def _evaluate_whitebox(setup: Setup, detector: detection.Detector, params: Params, *,
                       kind: str, seed_index: int, phase: str, out: pathlib.Path):
  x, labels = setup.clean('test')
  for mode in setup.cfg.whitebox_modes:
    step = runner.compile_step(whitebox_step(setup, detector, mode), setup.mesh)
    runner.run_stage(
        runner.Stage(whitebox_stage(kind, seed_index, phase, mode), step,
                     lambda ids: {'x': x[ids], 'label': labels[ids]}, setup.cfg.batch_size,
                     record=('label',), unit=f'images ({kind}, {phase}, {mode})'),
        output_dir=out, work=np.arange(len(labels)), replicated=params, mesh=setup.mesh)


def whitebox_cell(setup: Setup, inputs: Inputs, seed_index: int, out: pathlib.Path):
  """The white-box experiment of one detector kind and seed (see the module docstring)."""
  cfg = setup.cfg
  kind, attack = inputs.kind, cfg.whitebox_train_attack
  variables, _ = trained_detector(setup, inputs, attack, seed_index, out)
  if variables is None:
    logging.warning('whitebox: %s has no training pair of %s (seed %d); skipped.', kind,
                    attack, seed_index)
    return
  before = {'source': setup.variables, 'detector': variables}
  _evaluate_whitebox(setup, inputs.detector, before, kind=kind, seed_index=seed_index,
                     phase='before', out=out)
  hardened = _detector_path(out, f'{kind}_whitebox_s{seed_index}')
  history_path = out / WHITEBOX_DIR / f'{kind}_s{seed_index}_history.npz'
  if hardened.exists() and history_path.exists():
    after = {'source': setup.variables,
             'detector': load_variables(hardened, variables)}
  else:
    x, labels = setup.clean('train')
    train_x, train_y, _ = inputs.pairs('train', attack)
    key = jax.random.fold_in(cell_key(cfg, kind, attack, seed_index), _ADVERSARIAL_STREAM)
    after, history = detection.adversarial_training(
        setup.classify, setup.variables, x, labels, detector=inputs.detector,
        detector_params=before, inputs=train_x, input_labels=train_y, key=key,
        rounds=cfg.adversarial_rounds, attack=whitebox_attack(setup, cfg.whitebox_modes[0]),
        num_epochs=cfg.adversarial_epochs,
        batch_size=min(cfg.detector_batch_size, len(train_y)),
        attack_batch_size=cfg.batch_size, optimizer=setup.optimizer)
    save_variables(hardened, after['detector'])
    store.write_npz(history_path, {k: np.array([h[k] for h in history])
                                   for k in ('evaded', 'fooled', 'evaded_and_fooled')})
  _evaluate_whitebox(setup, inputs.detector, after, kind=kind, seed_index=seed_index,
                     phase='after', out=out)


def run_whitebox(setup: Setup, out: pathlib.Path):
  """The white-box experiment of every detector kind and seed."""
  cells = [(k, s) for k in setup.cfg.detectors for s in range(setup.cfg.num_seeds)]
  bar = progress.Progress('whitebox', len(cells), unit='detectors')
  for kind in setup.cfg.detectors:
    inputs = Inputs(setup, kind)
    for s in range(setup.cfg.num_seeds):
      whitebox_cell(setup, inputs, s, out)
      bar.update(1)


def run(cfg: study.Config, *, output_dir: store.PathLike, cache_dir: store.PathLike,
        data_dir: str | None = None, mesh: jax.sharding.Mesh | None = None) -> pathlib.Path:
  """Runs the detection experiments of ``cfg.experiments`` in a claimed output directory.

  Args:
    cfg: the settings ``detect_adversarial.run`` claimed ``output_dir`` with.
    output_dir: the run's directory.
    cache_dir: the root of the adversarial-set cache (shared between runs).
    data_dir: the offline data directory (default ``$ADVSAL_DATA_DIR``, then tfds).
    mesh: default ``parallel.data_mesh()``.

  Returns:
    ``output_dir``.

  Raises:
    ValueError: ``output_dir`` not claimed by ``detect_adversarial.run`` with ``cfg``.
  """
  out = pathlib.Path(output_dir)
  selected = [e for e in cfg.experiments if e in study.DETECTION_EXPERIMENTS]
  if not selected:
    return out
  masker, variables, _ = saliency.load_masker(cfg.masker_name)
  classifier_dir, classifier_meta = checkpoints.verify(cfg.checkpoint)
  cfg = study.with_dataset_budgets(cfg, classifier_meta['dataset'])
  settings = {**dataclasses.asdict(cfg), 'masker': cfg.masker_name}
  stored = store.read_json(out / 'config.json') if (out / 'config.json').exists() else {}
  diff = runner.config_differences({k: stored.get(k, '<absent>') for k in settings}, settings)
  if diff:
    raise ValueError(f'output_dir: {out} is not a run of these settings (differs in '
                     f'{"; ".join(diff)}); start it with detect_adversarial.run.')
  train = data.load(classifier_meta['dataset'], 'train', data_dir=data_dir)
  test = data.load(classifier_meta['dataset'], 'test', data_dir=data_dir)
  mesh = parallel.data_mesh() if mesh is None else mesh
  classify = study.classify_fn(masker.apply)
  digest = sets.params_digest(checkpoints.load(classifier_dir)[1])
  attacked = set(cfg.attacks) | ({cfg.whitebox_train_attack} if 'whitebox' in selected
                                 else set())
  adversarial = {}
  for split_name, split, num in (('train', train, cfg.num_train),
                                 ('test', test, cfg.num_examples)):
    for attack in (a for a in study.ATTACK_NAMES if a in attacked):
      if split_name == 'test' and attack not in cfg.attacks:
        continue
      adversarial[split_name, attack] = sets.adversarial_set(
          attack, split, split_name=split_name, num=num, classify=classify, params=variables,
          cfg=cfg, dataset=classifier_meta['dataset'], classifier_digest=digest,
          cache_dir=cache_dir, mesh=mesh)
  setup = Setup(cfg=cfg, masker=masker, variables=variables,
                architecture=classifier_meta['model'], train=train, test=test,
                sets=adversarial, mesh=mesh, optimizer=optax.adam(cfg.detector_lr))
  if 'matrix' in selected:
    run_matrix(setup, out)
  if 'whitebox' in selected:
    run_whitebox(setup, out)
  return out
