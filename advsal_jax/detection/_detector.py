"""The binary detector: its network, its training set, its training, scores and evaluation.

Labels follow paper 003: the training data is ``[X, X_adv]`` with labels ``[1_n, 0_n]``, so
``CLEAN = 1`` and ``ADVERSARIAL = 0``. A detector's *score* is the logit difference
``z_ADVERSARIAL - z_CLEAN`` (larger = more adversarial; ``sigmoid(score)`` is its
probability of "adversarial"), so detection metrics treat adversarial as the positive class.

The network has the architecture of the classifier it guards (the paper's choice): a
registered model with two classes, built for the detector input's channels, without the
classifier's per-channel normalisation (the inputs are masks, salient pixels, images or
signed gradients) and without its [0, 1] input check.
"""

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from advsal_jax import _checks
from advsal_jax import compilation
from advsal_jax import metrics
from advsal_jax import models
from advsal_jax import saliency
from advsal_jax.attacks import _detector_whitebox
from advsal_jax.detection import _inputs
from advsal_jax.types import ApplyFn, Params, PRNGKey

CLEAN = _detector_whitebox.CLEAN_CLASS
"""Label (and logit index) of clean images: 1, as in paper 003."""
ADVERSARIAL = 1 - CLEAN
"""Label (and logit index) of adversarial images: 0, as in paper 003."""


def create_detector(name: str, channels: int) -> nn.Module:
  """The architecture of registered model ``name`` as a two-class detector of ``channels``.

  Args:
    name: a key of ``models.MODELS`` (the classifier the detector guards).
    channels: channels of the detector input (``detector_input(...).shape[-1]``).

  Returns:
    The flax module: ``apply(variables, inputs f32[B,H,W,channels]) -> logits f32[B,2]``
    (index ``CLEAN`` and ``ADVERSARIAL``), H and W those of ``name``'s images.

  Raises:
    ValueError: unknown ``name``; ``channels < 1``.
    TypeError: ``channels`` not an int.
  """
  spec = models.get_spec(name)
  _checks.check_count(channels, 'channels')
  return spec.build(num_classes=2, mean=(0.0,) * channels, std=(1.0,) * channels,
                    unit_range=False)


def init_detector(name: str, channels: int, *, key: PRNGKey) -> tuple[nn.Module, Params]:
  """``create_detector(name, channels)`` and its variables initialised with ``key``.

  Returns:
    ``(model, variables)``.

  Raises:
    ValueError, TypeError: as ``create_detector``; a missing or untyped ``key``.
  """
  model = create_detector(name, channels)
  _checks.check_key(key, caller='init_detector')
  height, width, _ = models.get_spec(name).input_shape
  return model, model.init(key, jnp.zeros((1, height, width, channels), jnp.float32))


def map_batches(fn: Callable[..., Any], *arrays: jax.typing.ArrayLike,
                batch_size: int | None) -> Any:
  """``fn(i, *chunk_i)`` over chunks of ``batch_size`` examples, in one compiled loop.

  The last chunk is padded by repeating the last example (padding is dropped from the
  result), so every chunk has one shape and ``fn`` compiles once (``jax.lax.map``).

  Args:
    fn: ``fn(chunk_index i32[], *chunks) -> pytree of arrays with leading axis batch_size``.
    *arrays: arrays with one leading axis N >= 1.
    batch_size: static chunk size >= 1; None runs ``fn(0, *arrays)`` once.

  Returns:
    The outputs, leading axis N.
  """
  n = np.shape(arrays[0])[0]
  if batch_size is None or batch_size >= n:
    return fn(jnp.int32(0), *arrays)
  chunks = -(-n // batch_size)
  pad = chunks * batch_size - n

  def split(a):
    a = jnp.asarray(a)
    a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
    return a.reshape(chunks, batch_size, *a.shape[1:])

  out = jax.lax.map(lambda args: fn(args[0], *args[1]),
                    (jnp.arange(chunks, dtype=jnp.int32), tuple(split(a) for a in arrays)))
  return jax.tree.map(lambda o: o.reshape(chunks * batch_size, *o.shape[2:])[:n], out)


@dataclasses.dataclass(frozen=True)
class Detector:
  """A detector of images: the input transform ``kind``, then the binary ``network``.

  A frozen dataclass (hashable, so a static argument under ``jax.jit``) and a function of
  ``(params, x)``, like every ``apply_fn``: ``Detector(...)(params, x) -> logits f32[B,2]``
  with ``params = {'source': <variables of source>, 'detector': <network variables>}``. It
  is what ``attacks.whitebox_detector`` differentiates through.

  Attributes:
    network: the detector network's apply, ``network(variables, inputs) -> logits
      f32[B,2]`` (e.g. ``create_detector(...).apply``).
    kind: the detector input, one of ``INPUT_KINDS``.
    source: what the input transform explains with: a masking model's apply for
      'learnt_saliency', the classifier's otherwise; None only for 'id'.
    method: the saliency method of 'smd' and 'spd'.
    options: ``(name, value)`` pairs passed to ``saliency.explain`` (``layer``,
      hyper-parameters), hashable values only.

  Raises:
    ValueError: (on construction) unknown ``kind`` or ``method``, or no ``source`` for a kind
      that needs one.
  """
  network: ApplyFn
  kind: str
  source: ApplyFn | None = None
  method: str = 'learnt_saliency'
  options: tuple[tuple[str, Any], ...] = ()

  def __post_init__(self):
    if self.kind not in _inputs.INPUT_KINDS:
      raise ValueError(f'kind must be one of {_inputs.INPUT_KINDS}, got {self.kind!r}.')
    if self.method not in saliency.REGISTRY:
      raise ValueError(f'method must be a saliency method of {sorted(saliency.REGISTRY)}, got '
                       f'{self.method!r}.')
    if self.source is None and self.kind != 'id':
      raise ValueError(f'kind {self.kind!r} needs source= (the masker or classifier apply_fn '
                       'its input is computed with).')

  def inputs(self, source_params: Params, x: jax.typing.ArrayLike, *,
             batch_size: int | None = None) -> jax.Array:
    """The detector inputs of images ``x`` f32[N,H,W,C] in [0, 1]: f32[N,H,W,C']."""
    _checks.check_images(x)
    _checks.check_pixels(x)
    if batch_size is not None:
      _checks.check_count(batch_size, 'batch_size')
    return map_batches(
        lambda _, xc: _inputs.detector_input(self.kind, self.source, source_params, xc,
                                             method=self.method, **dict(self.options)),
        x, batch_size=batch_size)

  def __call__(self, params: Params, x: jax.typing.ArrayLike) -> jax.Array:
    """Logits f32[B,2] of images ``x`` f32[B,H,W,C] in [0, 1]."""
    return self.network(params['detector'], self.inputs(params['source'], x))


def check_labels01(labels: jax.typing.ArrayLike, n: int, *, name: str = 'labels'):
  """``labels`` must be integer [n] with values CLEAN/ADVERSARIAL (values when concrete)."""
  if np.shape(labels) != (n,):
    raise ValueError(f'{name} must be i32[N] with N={n} (one per input), got shape '
                     f'{np.shape(labels)}.')
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise TypeError(f'{name} must be integer (CLEAN=1, ADVERSARIAL=0), got dtype '
                    f'{jnp.result_type(labels)}.')
  if _checks.is_concrete(labels) and not np.isin(np.asarray(labels), (0, 1)).all():
    raise ValueError(f'{name} must be CLEAN=1 or ADVERSARIAL=0, got values '
                     f'{np.unique(np.asarray(labels))}.')


def check_inputs(inputs: jax.typing.ArrayLike):
  """Detector inputs: a non-empty float batch [N,H,W,C'], finite when concrete (any range)."""
  _checks.check_images(inputs, name='inputs')
  _checks.check_finite(inputs, name='inputs')


def make_detection_set(attack: Callable[..., jax.Array], apply_fn: ApplyFn, params: Params,
                       x: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *, key: PRNGKey,
                       batch_size: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Paper 003's detection set ``[X, X_adv]``, labels ``[1_n, 0_n]``, shuffled with ``key``.

  One adversarial example per clean image (successful or not: the detector learns to flag
  attacked images; filter by ``attacks.evaluate_attack`` first if only successes should
  count), computed in compiled batches.

  Args:
    attack: ``attack(apply_fn, params, x, labels, *, key) -> x_adv``, e.g.
      ``functools.partial(attacks.bim, eps=0.3, step_size=0.05)``.
    apply_fn: the classifier, ``apply_fn(params, x) -> logits f32[B,K]``.
    params: its variables.
    x: f32[N,H,W,C] clean images in [0, 1] (the training split, or the held-out split for
      evaluation).
    labels: i32[N] their classes (the attack's ``labels``).
    key: typed PRNG key: batch ``i`` is attacked with ``fold_in(k_attack, i)`` and the set
      is shuffled with another key split from it.
    batch_size: static number of images per compiled attack batch; None: all at once.

  Returns:
    ``(images f32[2N,H,W,C], labels i32[2N])``: each clean image (``CLEAN``) and its
    adversarial version (``ADVERSARIAL``), in a random order.

  Raises:
    ValueError, TypeError: malformed ``x``/``labels``, ``key`` or ``batch_size``, or an
      ``attack`` that is not callable (before any compilation).
  """
  if not callable(attack):
    raise TypeError(f'attack must be a callable (apply_fn, params, x, labels, *, key) -> '
                    f'x_adv, got {type(attack).__name__}.')
  _checks.check_classifier_inputs(apply_fn, params, x, labels, name='labels')
  _checks.check_key(key, caller='make_detection_set')
  if batch_size is not None:
    _checks.check_count(batch_size, 'batch_size')
  k_attack, k_shuffle = jax.random.split(key)
  x = jnp.asarray(x)
  x_adv = map_batches(
      lambda i, xc, yc: attack(apply_fn, params, xc, yc, key=jax.random.fold_in(k_attack, i)),
      x, jnp.asarray(labels), batch_size=batch_size)
  n = x.shape[0]
  images = jnp.concatenate([x, x_adv.astype(x.dtype)])
  set_labels = jnp.concatenate([jnp.full((n,), CLEAN, jnp.int32),
                                jnp.full((n,), ADVERSARIAL, jnp.int32)])
  order = jax.random.permutation(k_shuffle, 2 * n)
  return images[order], set_labels[order]


def _loss(apply_fn: ApplyFn, params: Params, variables: Params, inputs: jax.Array,
          labels: jax.Array) -> tuple[jax.Array, Params]:
  """Mean cross-entropy of a batch in training mode, and the updated non-param collections."""
  mutable = [c for c in variables if c != 'params']
  variables = {**variables, 'params': params}
  if mutable:  # BatchNorm: batch statistics, and the running averages updated.
    logits, updates = apply_fn(variables, inputs, train=True, mutable=mutable)
  else:
    logits, updates = apply_fn(variables, inputs), {}
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates


def _train_step(state: tuple[Params, Any], inputs: jax.Array, labels: jax.Array, *,
                apply_fn: ApplyFn, optimizer: optax.GradientTransformation
                ) -> tuple[tuple[Params, Any], jax.Array]:
  """One optimizer step on a batch: ``((variables, opt_state), loss)``."""
  variables, opt_state = state
  (loss, updates), grads = jax.value_and_grad(
      lambda p: _loss(apply_fn, p, variables, inputs, labels), has_aux=True)(
          variables['params'])
  step, opt_state = optimizer.update(grads, opt_state, variables['params'])
  params = optax.apply_updates(variables['params'], step)
  return ({**variables, **updates, 'params': params}, opt_state), loss


@functools.cache
def _compiled_train_step() -> Callable[..., Any]:
  """``_train_step`` compiled (built on first use: compiling options query the backend)."""
  return compilation.jit(_train_step, static_argnames=('apply_fn', 'optimizer'),
                         donate_argnums=0)

DEFAULT_OPTIMIZER = optax.adam(1e-3)
"""``train_detector``'s optimizer: Adam with the standard settings, as paper 003."""


def train_detector(apply_fn: ApplyFn, variables: Params, inputs: jax.typing.ArrayLike,
                   labels: jax.typing.ArrayLike, *, key: PRNGKey, num_epochs: int = 10,
                   batch_size: int = 128,
                   optimizer: optax.GradientTransformation = DEFAULT_OPTIMIZER
                   ) -> tuple[Params, jax.Array]:
  """Trains the detector network on ``(inputs, labels)`` by minibatch cross-entropy.

  Each epoch visits a permutation of the examples drawn with ``fold_in(key, epoch)`` in
  ``N // batch_size`` batches (the rest of the permutation waits for another epoch). Each
  step is one compiled call (a Python loop over jitted steps, as in the flax examples: on
  XLA:CPU a ``lax.scan`` over steps runs the weight-gradient convolutions on a slow path, about
  25x slower). The step compiles once per ``(apply_fn, optimizer, batch shape)``: pass the same
  ``optimizer`` object to reuse it across calls. Under an outer ``jax.jit`` the steps are
  traced into the caller's program instead (unrolled).

  Args:
    apply_fn: a flax ``apply``: ``apply_fn(variables, inputs) -> logits f32[B,2]``; with
      collections other than 'params' (BatchNorm's 'batch_stats') it is called with
      ``train=True, mutable=[...]`` like the registered models. Hashable (a static argument).
    variables: flax variables holding 'params' (e.g. ``init_detector``'s, or a detector to
      fine-tune).
    inputs: f32[N,H,W,C'] detector inputs (any finite values).
    labels: i32[N], ``CLEAN`` (1) or ``ADVERSARIAL`` (0).
    key: typed PRNG key of the minibatch order.
    num_epochs: number of epochs >= 1.
    batch_size: minibatch size, 1 <= batch_size <= N.
    optimizer: an optax transformation (``DEFAULT_OPTIMIZER``: Adam, lr 1e-3, the paper's
      standard settings). Its state starts fresh at every call.

  Returns:
    ``(variables, losses f32[num_epochs, N // batch_size])``: the trained variables and the
    loss of every step.

  Raises:
    ValueError, TypeError: malformed or mismatched ``inputs``/``labels``, a bad count, key or
      ``variables`` without 'params', or a network that does not return two logits (before
      any compilation).
  """
  check_inputs(inputs)
  n = np.shape(inputs)[0]
  check_labels01(labels, n)
  _checks.check_key(key, caller='train_detector')
  _checks.check_count(num_epochs, 'num_epochs')
  _checks.check_count(batch_size, 'batch_size')
  if batch_size > n:
    raise ValueError(f'batch_size must be <= the number of inputs N={n}, got {batch_size}.')
  if not isinstance(variables, Mapping) or 'params' not in variables:
    got = sorted(variables) if isinstance(variables, Mapping) else type(variables).__name__
    raise ValueError(f"variables must be flax variables holding 'params', got {got}.")
  if _checks.num_classes(apply_fn, variables, inputs) != 2:
    raise ValueError('apply_fn must return two logits per input (ADVERSARIAL=0, CLEAN=1).')
  inputs, labels = jnp.asarray(inputs, jnp.float32), jnp.asarray(labels, jnp.int32)
  steps = n // batch_size
  concrete = _checks.is_concrete(*jax.tree.leaves((inputs, labels, key, variables)))
  step = _compiled_train_step() if concrete else _train_step
  # The compiled step donates its state: work on a copy so the caller's variables stay valid.
  state = (jax.tree.map(jnp.array, variables), optimizer.init(variables['params']))
  losses = []
  for e in range(num_epochs):
    order = jax.random.permutation(jax.random.fold_in(key, e), n)[:steps * batch_size]
    for batch in order.reshape(steps, batch_size):
      state, loss = step(state, inputs[batch], labels[batch], apply_fn=apply_fn,
                         optimizer=optimizer)
      losses.append(loss)
  return state[0], jnp.stack(losses).reshape(num_epochs, steps)


def detector_scores(apply_fn: ApplyFn, params: Params, inputs: jax.typing.ArrayLike, *,
                    batch_size: int | None = None) -> jax.Array:
  """The detector's score of each input: ``z_ADVERSARIAL - z_CLEAN`` (larger = adversarial).

  Args:
    apply_fn: ``apply_fn(params, inputs) -> logits f32[B,2]``: a detector network on detector
      inputs, or a ``Detector`` on images (then ``params`` holds 'source' and 'detector').
    params: its variables.
    inputs: f32[N,H,W,C'] what ``apply_fn`` takes.
    batch_size: static inputs per compiled batch; None: all at once.

  Returns:
    f32[N]; ``score > 0`` when the adversarial logit is the larger (a tie, score 0, counts as
    clean in ``evaluate_detector``).

  Raises:
    ValueError, TypeError: malformed ``inputs``, ``batch_size``, or a network that does not
      return two logits.
  """
  check_inputs(inputs)
  if batch_size is not None:
    _checks.check_count(batch_size, 'batch_size')
  if _checks.num_classes(apply_fn, params, inputs) != 2:
    raise ValueError('apply_fn must return two logits per input (ADVERSARIAL=0, CLEAN=1).')

  def scores(_, chunk):
    logits = apply_fn(params, chunk)
    return logits[:, ADVERSARIAL] - logits[:, CLEAN]

  return map_batches(scores, jnp.asarray(inputs, jnp.float32), batch_size=batch_size)


class DetectionMetrics(NamedTuple):
  """Result of ``evaluate_detector`` (Python floats).

  Attributes:
    accuracy: share of examples labelled correctly by the rule "adversarial if score > 0".
    auroc: area under the ROC curve, adversarial = positive.
    tpr_at_fpr: share of adversarial examples flagged at the given rate of clean ones flagged.
  """
  accuracy: float
  auroc: float
  tpr_at_fpr: float


def evaluate_detector(scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                      fpr: float = 0.05) -> DetectionMetrics:
  """Detection accuracy, AUROC and TPR at ``fpr`` of scores on a labelled (held-out) set.

  Args:
    scores: f[N] ``detector_scores``.
    labels: i[N] ``CLEAN`` (1) or ``ADVERSARIAL`` (0); both present.
    fpr: false-positive rate (clean images flagged) of the TPR, in [0, 1].

  Returns:
    ``DetectionMetrics(accuracy, auroc, tpr_at_fpr)``.

  Raises:
    ValueError, TypeError: as ``metrics.auroc`` and ``metrics.tpr_at_fpr``; ``labels`` not
      integer.
  """
  scores, labels = np.asarray(scores), np.asarray(labels)
  if scores.ndim != 1:
    raise ValueError(f'scores must be 1-D f32[N], got shape {scores.shape}.')
  check_labels01(labels, scores.shape[0])
  adversarial = labels == ADVERSARIAL
  auroc = metrics.auroc(scores, adversarial)  # Checks scores and both classes first.
  return DetectionMetrics(accuracy=float(np.mean((scores > 0) == adversarial)), auroc=auroc,
                          tpr_at_fpr=metrics.tpr_at_fpr(scores, adversarial, fpr))
