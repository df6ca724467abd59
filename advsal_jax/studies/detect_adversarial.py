"""Study 003: its settings, and the saliency-shift half (do adversarial images move a map?).

``Config`` holds the settings of every experiment of the study (``EXPERIMENTS``); ``run``
claims the output directory for them and runs the shift experiment if it is selected. The
detection experiments ('matrix', 'whitebox') run in the same directory afterwards with
``detect_adversarial_detectors.run`` (the binary calls both).

The shift experiment is one stage over the first ``num_examples`` test images. Each batch
is one compiled call that:

* attacks every image with each attack of ``cfg.attacks``, untargeted on its true label
  (JSMA is targeted only: its target is a random class other than the true label, drawn
  from ``example_keys(seed, index, JSMA_STREAM)``, as cleverhans draws one when none is
  given);
* explains the clean image for its predicted class and each adversarial image for its own
  predicted class (the paper uses the prediction, not the label, to avoid a label leak)
  with the learnt saliency mask (Dabkowski & Gal's masking model) and with the gradient
  map (``saliency.gradient``, absolute values summed over channels);
* measures the L2 distance between the clean and each adversarial map, and between the
  clean maps of the image and of its *partner*, another test image (the paper's "different
  images" baseline). Partners are fixed for the run: the work list in the order of a
  permutation keyed by the seed, each image paired with the next one in that order (the
  last with the first), so no image is its own partner. Both map kinds are normalised the
  same way first (``cfg.normalize``, see ``metrics.l2_distance``);
* measures each perturbation ``r = x_adv - x`` as in the paper's Table 2, with m the number
  of pixels: L0 = share of pixels with a channel changed by more than ``l0_atol``,
  L2 = ``||r||_2 / sqrt(m)`` and Linf = ``max |r|``.

A second, small stage keeps the images and maps of the first ``num_figure_images`` images.

Reference: "Model-based Saliency for the Detection of Adversarial Examples" (ICLR 2020
submission), Sec. "L2 distances between saliency maps", Tables 1-2, Figure 1.
"""

import dataclasses
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import attacks
from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import metrics
from advsal_jax import parallel
from advsal_jax import saliency
from advsal_jax.studies import runner
from advsal_jax.studies import store
from advsal_jax.types import Params

NAME = 'detect_adversarial'
SHIFT_STAGE = 'shift'
MAPS_STAGE = 'maps'
EXPERIMENTS = ('shift', 'matrix', 'whitebox')
"""The experiments of the study (``--experiments``): the saliency shift (Tables 1-2), the
train-attack x test-attack detection matrix (Figure 2) and the white-box attack on the
detectors before and after adversarial training (Table 3)."""
DETECTION_EXPERIMENTS = ('matrix', 'whitebox')
DETECTOR_KINDS = ('spd', 'smd', 'id', 'jsd')
"""The paper's detectors, in its order (``detection.INPUT_KINDS``)."""
WHITEBOX_MODES = ('alternate', 'joint')
ATTACK_NAMES = ('fgsm', 'bim', 'mim', 'carlini_wagner_l2', 'jsma', 'deepfool')
"""The paper's six attacks, in its order."""
MAP_KINDS = ('learnt', 'gradient')
MAP_OUTPUTS = ('x_adv', 'learnt_clean', 'learnt_adv', 'gradient_clean', 'gradient_adv')
"""What ``shift_batch`` adds with ``keep_maps`` (kept for the figure images only)."""
JSMA_STREAM = 1
PARTNER_STREAM = 2
NORMALIZATIONS = ('minmax', 'l2')

DATASET_BUDGETS = {
    'mnist': {'eps': 0.3, 'bim_step': 0.05, 'mim_step': 0.06},
    'cifar10': {'eps': 8 / 255, 'bim_step': 2 / 255, 'mim_step': 2 / 255},
    'cifar10_catdog': {'eps': 8 / 255, 'bim_step': 2 / 255, 'mim_step': 2 / 255},
}
"""L-inf budgets per dataset where ``Config`` leaves them None. MNIST: cleverhans' defaults
(FGSM/BIM/MIM eps 0.3, BIM step 0.05, MIM step 0.06), the implementation paper 003 used;
CIFAR-10 and its cat-vs-dog subset (the ASSIRA stand-in): the usual 8/255 with steps of
2/255 (the text we have of paper 003 gives no CIFAR-10 value; it says only that its FGSM
budgets exceed 0.01)."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of one run (written to ``config.json``).

  Attributes:
    checkpoint: the classifier (checkpoint name or directory).
    masker: the masking model's checkpoint (name or directory) trained for ``checkpoint``;
      '' means ``masker_<checkpoint name>``.
    attacks: names from ``ATTACK_NAMES``.
    num_examples: the first N test images.
    batch_size: images per compiled batch.
    eps: FGSM/BIM/MIM L-inf budget in [0, 1]; None: the dataset's (``DATASET_BUDGETS``).
    bim_step: BIM's step size; None: the dataset's.
    mim_step: MIM's step size; None: the dataset's.
    num_steps: BIM and MIM iterations (cleverhans: 10).
    mim_decay: MIM's momentum decay (cleverhans: 1.0).
    cw_confidence, cw_learning_rate, cw_initial_const, cw_binary_search_steps,
      cw_max_iterations: Carlini-Wagner L2 (cleverhans: 0, 5e-3, 1e-2, 5, 1000).
    jsma_theta, jsma_gamma: JSMA's change per feature and largest share of changed
      features (cleverhans' tutorial: 1.0, 0.1).
    deepfool_overshoot, deepfool_max_iter: DeepFool (cleverhans: 0.02, 50).
    normalize: how each map is normalised before the L2 distance, 'minmax' (to [0, 1]) or
      'l2' (to unit norm); see ``metrics.l2_distance``.
    l0_atol: a pixel counts as changed when a channel moves by more than this (half a
      quantisation step by default).
    num_figure_images: images whose maps are kept for the figures.
    seed: JSMA targets, the partners of the baseline and the report's bootstrap; the
      detectors' seeds are ``seed, seed + 1, ...``.
    experiments: names from ``EXPERIMENTS``.
    detectors: detector inputs of the detection experiments, from ``DETECTOR_KINDS``.
    detector_saliency: the saliency method of SMD and SPD (a key of ``saliency.REGISTRY``;
      the paper's learnt mask by default).
    num_train: the first N training images, attacked to train the detectors.
    num_seeds: detectors trained per cell (seeds of initialisation and batch order).
    only_successful: train and test the detectors on the images the classifier got right
      and the attack fooled (each with its adversarial version); False: every image.
    detector_epochs, detector_batch_size, detector_lr: training of each detector (Adam).
    whitebox_train_attack: the black-box attack the detectors of the white-box experiment
      are first trained on (its matrix row).
    whitebox_eps: the white-box L-inf budget; None: ``eps``.
    whitebox_step: its step size; None: ``bim_step``.
    whitebox_steps: its rounds T (paper: 5).
    whitebox_modes: names from ``WHITEBOX_MODES``: the paper's alternating steps, and the
      joint step on both objectives (Metzen et al.), evaluated before and after adversarial
      training (which always trains against the first mode).
    whitebox_weight: the detector's weight in a joint step (paper: alpha = 0.5).
    adversarial_rounds: rounds of adversarial training of each detector.
    adversarial_epochs: fine-tuning epochs per round.
  """
  checkpoint: str = 'cnn_mnist'
  masker: str = ''
  attacks: tuple[str, ...] = ATTACK_NAMES
  num_examples: int = 256
  batch_size: int = 32
  eps: float | None = None
  bim_step: float | None = None
  mim_step: float | None = None
  num_steps: int = 10
  mim_decay: float = 1.0
  cw_confidence: float = 0.0
  cw_learning_rate: float = 5e-3
  cw_initial_const: float = 1e-2
  cw_binary_search_steps: int = 5
  cw_max_iterations: int = 1000
  jsma_theta: float = 1.0
  jsma_gamma: float = 0.1
  deepfool_overshoot: float = 0.02
  deepfool_max_iter: int = 50
  normalize: str = 'minmax'
  l0_atol: float = 0.5 / 255
  num_figure_images: int = 4
  seed: int = 0
  experiments: tuple[str, ...] = ('shift',)
  detectors: tuple[str, ...] = DETECTOR_KINDS
  detector_saliency: str = 'learnt_saliency'
  num_train: int = 256
  num_seeds: int = 1
  only_successful: bool = True
  detector_epochs: int = 10
  detector_batch_size: int = 64
  detector_lr: float = 1e-3
  whitebox_train_attack: str = 'bim'
  whitebox_eps: float | None = None
  whitebox_step: float | None = None
  whitebox_steps: int = 5
  whitebox_modes: tuple[str, ...] = WHITEBOX_MODES
  whitebox_weight: float = 0.5
  adversarial_rounds: int = 2
  adversarial_epochs: int = 5

  @property
  def masker_name(self) -> str:
    """The masker checkpoint: ``masker`` or ``masker_<checkpoint name>``."""
    return self.masker or f'masker_{pathlib.Path(self.checkpoint).name}'


def _check_names(values: tuple[str, ...], allowed: tuple[str, ...], name: str):
  """``values`` must be distinct names of ``allowed``, at least one."""
  if not values or any(v not in allowed for v in values) or len(set(values)) != len(values):
    raise ValueError(f'{name}: expected distinct names from {list(allowed)}, got '
                     f'{list(values)}.')


def validate(cfg: Config, *, split_size: int | None = None, train_size: int | None = None):
  """Raises ValueError naming the bad setting; runs before anything is loaded or compiled.

  Args:
    cfg: the settings.
    split_size: test images available (checked when given).
    train_size: training images available (checked when given and a detection experiment
      is selected).
  """
  _check_names(cfg.attacks, ATTACK_NAMES, 'attacks')
  _check_names(cfg.experiments, EXPERIMENTS, 'experiments')
  _check_names(cfg.detectors, DETECTOR_KINDS, 'detectors')
  _check_names(cfg.whitebox_modes, WHITEBOX_MODES, 'whitebox_modes')
  if cfg.whitebox_train_attack not in ATTACK_NAMES:
    raise ValueError(f'whitebox_train_attack must be one of {ATTACK_NAMES}, got '
                     f'{cfg.whitebox_train_attack!r}.')
  if cfg.detector_saliency not in saliency.REGISTRY:
    raise ValueError(f'detector_saliency must be a saliency method of '
                     f'{sorted(saliency.REGISTRY)}, got {cfg.detector_saliency!r}.')
  for name in ('num_examples', 'batch_size', 'num_steps', 'cw_binary_search_steps',
               'cw_max_iterations', 'deepfool_max_iter', 'num_train', 'num_seeds',
               'detector_epochs', 'detector_batch_size', 'whitebox_steps',
               'adversarial_rounds', 'adversarial_epochs'):
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'{name} must be an integer >= 1, got {value!r}.')
  for name in ('eps', 'bim_step', 'mim_step', 'whitebox_eps', 'whitebox_step'):
    value = getattr(cfg, name)
    if value is not None and not 0 < value <= 1:
      raise ValueError(f'{name} must be in (0, 1] (pixels in [0, 1]) or unset, got {value}.')
  for name in ('mim_decay', 'cw_confidence', 'deepfool_overshoot', 'l0_atol'):
    if not getattr(cfg, name) >= 0:
      raise ValueError(f'{name} must be >= 0, got {getattr(cfg, name)}.')
  if not isinstance(cfg.only_successful, bool):
    raise ValueError(f'only_successful must be a bool, got {cfg.only_successful!r}.')
  if not 0 <= cfg.whitebox_weight <= 1:
    raise ValueError(f'whitebox_weight must be in [0, 1], got {cfg.whitebox_weight}.')
  for name in ('cw_learning_rate', 'cw_initial_const', 'detector_lr'):
    if not getattr(cfg, name) > 0:
      raise ValueError(f'{name} must be > 0, got {getattr(cfg, name)}.')
  if cfg.jsma_theta == 0 or not -1 <= cfg.jsma_theta <= 1:
    raise ValueError(f'jsma_theta must be nonzero in [-1, 1], got {cfg.jsma_theta}.')
  if not 0 < cfg.jsma_gamma <= 1:
    raise ValueError(f'jsma_gamma must be in (0, 1], got {cfg.jsma_gamma}.')
  if cfg.normalize not in NORMALIZATIONS:
    raise ValueError(f'normalize must be one of {NORMALIZATIONS}, got {cfg.normalize!r}.')
  if cfg.num_examples < 2:
    raise ValueError('num_examples must be >= 2 (the baseline pairs different images), got '
                     f'{cfg.num_examples}.')
  if not 0 <= cfg.num_figure_images <= cfg.num_examples:
    raise ValueError(f'num_figure_images must be in [0, num_examples={cfg.num_examples}], '
                     f'got {cfg.num_figure_images}.')
  if split_size is not None and cfg.num_examples > split_size:
    raise ValueError(f'num_examples must be <= {split_size} (the test split), got '
                     f'{cfg.num_examples}.')
  detection = any(e in DETECTION_EXPERIMENTS for e in cfg.experiments)
  if detection and train_size is not None and cfg.num_train > train_size:
    raise ValueError(f'num_train must be <= {train_size} (the training split), got '
                     f'{cfg.num_train}.')


def with_dataset_budgets(cfg: Config, dataset: str) -> Config:
  """``cfg`` with every unset L-inf budget taken from ``DATASET_BUDGETS[dataset]``.

  The white-box budget and step, when unset, are then ``eps`` and ``bim_step``.

  Raises:
    ValueError: a budget is unset and the dataset has no default.
  """
  unset = [k for k in ('eps', 'bim_step', 'mim_step') if getattr(cfg, k) is None]
  if unset and dataset not in DATASET_BUDGETS:
    raise ValueError(f'{", ".join(unset)}: no default for dataset {dataset!r} (defaults for '
                     f'{sorted(DATASET_BUDGETS)}); set them.')
  cfg = dataclasses.replace(cfg, **{k: DATASET_BUDGETS[dataset][k] for k in unset})
  return dataclasses.replace(
      cfg, whitebox_eps=cfg.eps if cfg.whitebox_eps is None else cfg.whitebox_eps,
      whitebox_step=cfg.bim_step if cfg.whitebox_step is None else cfg.whitebox_step)


def partners(num_examples: int, seed: int) -> np.ndarray:
  """The baseline's partner of each work position: int64[N], never the position itself.

  The positions in the order of a permutation keyed by ``seed``; each is paired with the next
  one in that order (the last with the first).
  """
  order = np.asarray(jax.random.permutation(
      jax.random.fold_in(jax.random.key(seed), PARTNER_STREAM), num_examples))
  out = np.empty(num_examples, np.int64)
  out[order] = np.roll(order, -1)
  return out


def jsma_targets(labels: jax.Array, index: jax.Array, *, seed: int,
                 num_classes: int) -> jax.Array:
  """A random class other than ``labels[b]`` per example, keyed by its id: i32[B]."""
  keys = runner.example_keys(seed, index, JSMA_STREAM)
  shift = jax.vmap(lambda k: jax.random.randint(k, (), 1, num_classes))(keys)
  return ((labels + shift) % num_classes).astype(jnp.int32)


def run_attack(name: str, apply_fn: Callable, params: Params, x: jax.Array,
               labels: jax.Array, jsma_target: jax.Array, *, cfg: Config,
               num_classes: int) -> jax.Array:
  """The adversarial images of attack ``name`` with ``cfg``'s hyper-parameters.

  Args:
    name: one of ``ATTACK_NAMES``.
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: its variables.
    x: f32[B,H,W,C] in [0, 1].
    labels: i32[B] true classes (untargeted attacks move away from them).
    jsma_target: i32[B] JSMA's target classes.
    cfg: the settings, budgets resolved (``with_dataset_budgets``).
    num_classes: K.

  Returns:
    f32[B,H,W,C] in [0, 1].
  """
  if name == 'fgsm':
    return attacks.fgsm(apply_fn, params, x, labels, eps=cfg.eps)
  if name == 'bim':
    return attacks.bim(apply_fn, params, x, labels, eps=cfg.eps, step_size=cfg.bim_step,
                       num_steps=cfg.num_steps)
  if name == 'mim':
    return attacks.mim(apply_fn, params, x, labels, eps=cfg.eps, step_size=cfg.mim_step,
                       num_steps=cfg.num_steps, decay=cfg.mim_decay)
  if name == 'carlini_wagner_l2':
    return attacks.carlini_wagner_l2(
        apply_fn, params, x, labels, confidence=cfg.cw_confidence,
        learning_rate=cfg.cw_learning_rate, initial_const=cfg.cw_initial_const,
        binary_search_steps=cfg.cw_binary_search_steps, max_iterations=cfg.cw_max_iterations)
  if name == 'jsma':
    return attacks.jsma(apply_fn, params, x, jsma_target, targeted=True, theta=cfg.jsma_theta,
                        gamma=cfg.jsma_gamma)
  if name == 'deepfool':
    return attacks.deepfool(apply_fn, params, x, labels, num_classes=num_classes,
                            overshoot=cfg.deepfool_overshoot, max_iter=cfg.deepfool_max_iter)
  raise ValueError(f'attack must be one of {ATTACK_NAMES}, got {name!r}.')


def perturbation_sizes(delta: jax.Array, *, l0_atol: float) -> dict[str, jax.Array]:
  """Table 2's sizes of perturbations f32[B,H,W,C], m = H*W pixels: f32[B] each.

  Returns:
    ``l0``: share of pixels with a channel changed by more than ``l0_atol``;
    ``l2``: ``||delta||_2 / sqrt(m)``; ``linf``: ``max |delta|``.
  """
  m = delta.shape[1] * delta.shape[2]
  return {'l0': metrics.l0_norm(delta, atol=l0_atol, per_pixel=True) / m,
          'l2': metrics.l2_norm(delta) / np.sqrt(m),
          'linf': metrics.linf_norm(delta)}


def classify_fn(mask_fn: Callable) -> Callable:
  """``classify(params, x) -> logits``: the masker's ``classify`` method as an ``apply_fn``."""
  return lambda params, x: mask_fn(params, x, method='classify')


def saliency_maps(mask_fn: Callable, params: Params, x: jax.Array,
                  target: jax.Array) -> dict[str, jax.Array]:
  """Both map kinds of ``target`` on ``x``: {'learnt', 'gradient'} -> f32[B,H,W].

  Args:
    mask_fn: a ``Masker``'s ``apply``; its ``classify`` method is the classifier.
    params: the masker's variables (they hold the classifier's).
    x: f32[B,H,W,C] in [0, 1].
    target: i32[B] classes explained.
  """
  classify = classify_fn(mask_fn)
  return {'learnt': saliency.learnt_saliency(mask_fn, params, x, target)[..., 0],
          'gradient': jnp.abs(saliency.gradient(classify, params, x, target)).sum(axis=-1)}


def shift_batch(mask_fn: Callable, params: Params, x: jax.Array, labels: jax.Array,
                x_partner: jax.Array, index: jax.Array, *, cfg: Config, num_classes: int,
                keep_maps: bool = False) -> dict[str, jax.Array]:
  """Everything the study measures on one batch of clean images (see the module docstring).

  Axes: B images, A attacks (``cfg.attacks``).

  Args:
    mask_fn: a ``Masker``'s ``apply`` (its ``classify`` method is the attacked classifier).
    params: the masker's variables.
    x: f32[B,H,W,C] in [0, 1].
    labels: i32[B] true classes.
    x_partner: f32[B,H,W,C] each image's baseline partner (``partners``).
    index: i32[B] the images' ids (key JSMA's targets).
    cfg: the settings, budgets resolved.
    num_classes: K.
    keep_maps: also return the images and maps (for figures).

  Returns:
    ``clean_pred``, ``partner_pred``, ``jsma_target`` i32[B]; ``learnt_l2_different``,
    ``gradient_l2_different`` f32[B]; ``adv_pred`` i32[B,A]; f32[B,A]: ``learnt_l2``,
    ``gradient_l2`` (clean vs adversarial map), ``l0``, ``l2``, ``linf``. With
    ``keep_maps``: ``x_adv`` [B,A,H,W,C], ``learnt_clean``/``gradient_clean`` [B,H,W],
    ``learnt_adv``/``gradient_adv`` [B,A,H,W].
  """
  classify = classify_fn(mask_fn)
  clean_pred = classify(params, x).argmax(-1).astype(jnp.int32)
  partner_pred = classify(params, x_partner).argmax(-1).astype(jnp.int32)
  clean = saliency_maps(mask_fn, params, x, clean_pred)
  partner = saliency_maps(mask_fn, params, x_partner, partner_pred)
  target = jsma_targets(labels, index, seed=cfg.seed, num_classes=num_classes)
  out: dict[str, Any] = {'clean_pred': clean_pred, 'partner_pred': partner_pred,
                         'jsma_target': target}
  for kind in MAP_KINDS:
    out[f'{kind}_l2_different'] = metrics.l2_distance(clean[kind], partner[kind],
                                                      normalize=cfg.normalize)
  per_attack: dict[str, list] = {}
  for name in cfg.attacks:
    x_adv = run_attack(name, classify, params, x, labels, target, cfg=cfg,
                       num_classes=num_classes)
    adv_pred = classify(params, x_adv).argmax(-1).astype(jnp.int32)
    adv = saliency_maps(mask_fn, params, x_adv, adv_pred)
    values = {'adv_pred': adv_pred,
              **{f'{k}_l2': metrics.l2_distance(clean[k], adv[k], normalize=cfg.normalize)
                 for k in MAP_KINDS},
              **perturbation_sizes(x_adv - x, l0_atol=cfg.l0_atol)}
    if keep_maps:
      values.update(x_adv=x_adv, learnt_adv=adv['learnt'], gradient_adv=adv['gradient'])
    for k, v in values.items():
      per_attack.setdefault(k, []).append(v)
  out.update({k: jnp.stack(v, axis=1) for k, v in per_attack.items()})
  if keep_maps:
    out.update(learnt_clean=clean['learnt'], gradient_clean=clean['gradient'])
  return out


def run(cfg: Config, *, output_dir: store.PathLike, data_dir: str | None = None,
        resume: bool = False, mesh: jax.sharding.Mesh | None = None) -> pathlib.Path:
  """Claims ``output_dir`` for ``cfg`` and runs the shift experiment if it is selected.

  The shift experiment is the shift stage over the first ``cfg.num_examples`` test images,
  then the maps stage. With a detection experiment selected, the training split's size is
  checked here too, before any work; ``detect_adversarial_detectors.run`` runs them next.

  Args:
    cfg: the settings (unset budgets are taken from the dataset's defaults).
    output_dir: where ``config.json`` and ``shards/`` go.
    data_dir: the offline data directory (default ``$ADVSAL_DATA_DIR``, then tfds).
    resume: continue a run already in ``output_dir``.
    mesh: default ``parallel.data_mesh()``.

  Returns:
    ``output_dir``.

  Raises:
    ValueError: bad settings, a masker trained for another classifier, or an existing run
      with other settings / without ``resume``.
    checkpoints.CheckpointError, FileNotFoundError: missing checkpoint or data.
  """
  validate(cfg)
  masker, variables, masker_meta = saliency.load_masker(cfg.masker_name)
  classifier_dir, classifier_meta = checkpoints.verify(cfg.checkpoint)
  if checkpoints.resolve(masker_meta['classifier']) != classifier_dir:
    raise ValueError(f'masker: {cfg.masker_name!r} explains classifier '
                     f'{masker_meta["classifier"]!r}, not checkpoint {cfg.checkpoint!r}.')
  dataset = classifier_meta['dataset']
  cfg = with_dataset_budgets(cfg, dataset)
  test = data.load(dataset, 'test', data_dir=data_dir)
  train_size = None
  if any(e in DETECTION_EXPERIMENTS for e in cfg.experiments):
    train_size = len(data.load(dataset, 'train', data_dir=data_dir).labels)
  validate(cfg, split_size=len(test.labels), train_size=train_size)
  num_classes = len(test.class_names)
  config = {**dataclasses.asdict(cfg), 'masker': cfg.masker_name, 'dataset': dataset,
            'architecture': classifier_meta['model'],
            'checkpoint_test_accuracy': classifier_meta.get('test_accuracy'),
            'masker_quality': masker_meta.get('quality'), 'class_names': test.class_names,
            'image_shape': list(test.images.shape[1:])}
  out = runner.open_output_dir(output_dir, config, resume=resume)
  if SHIFT_STAGE not in cfg.experiments:
    return out
  mesh = parallel.data_mesh() if mesh is None else mesh
  partner = partners(cfg.num_examples, cfg.seed)

  def inputs(ids):
    return {'x': data.to_float(test.images[ids]), 'label': test.labels[ids].astype(np.int32),
            'x_partner': data.to_float(test.images[partner[ids]]),
            'partner': partner[ids].astype(np.int32)}

  # One compilation serves both stages: the step always computes the maps (they are
  # intermediates anyway) and the shift stage drops them on the device.
  full = runner.compile_step(
      lambda p, batch: shift_batch(masker.apply, p, batch['x'], batch['label'],
                                   batch['x_partner'], batch['index'], cfg=cfg,
                                   num_classes=num_classes, keep_maps=True), mesh)

  def scalars(p, batch):
    return {k: v for k, v in full(p, batch).items() if k not in MAP_OUTPUTS}

  runner.run_stage(runner.Stage(SHIFT_STAGE, scalars, inputs, cfg.batch_size,
                                record=('label', 'partner')),
                   output_dir=out, work=np.arange(cfg.num_examples), replicated=variables,
                   mesh=mesh)
  if cfg.num_figure_images:
    runner.run_stage(runner.Stage(MAPS_STAGE, full, inputs, cfg.batch_size,
                                  record=('x', 'label')),
                     output_dir=out, work=np.arange(cfg.num_figure_images),
                     replicated=variables, mesh=mesh)
  return out
