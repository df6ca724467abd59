"""Attack objectives and the one place where targeted vs untargeted signs are decided.

An objective maps ``(logits f32[B,K], labels i32[B]) -> f32[B]``: how strongly the model
*disfavours* ``labels``. Every gradient attack ascends ``signed_objective(...)``, which is the
objective itself for untargeted attacks (push away from the true class) and its negation for
targeted ones (pull towards the target class).
"""

from typing import Callable, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advsal_jax import rewrites
from advsal_jax.types import ApplyFn, Params

Objective = Callable[[jax.Array, jax.Array], jax.Array]
"""``(logits f32[B,K], labels i32[B]) -> f32[B]``, larger = ``labels`` less favoured."""


def _check_logits_labels(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike):
  """Shape and dtype checks of an objective's arguments (they also run under ``jax.jit``).

  Label values are not checked: objectives are evaluated on traced arrays inside the attacks,
  which check their labels' range before tracing.
  """
  shape = np.shape(logits)
  if len(shape) != 2 or 0 in shape:
    raise ValueError(f'logits must be f32[B,K] with B, K >= 1, got shape {shape}.')
  if not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
    raise TypeError(f'logits must be floating point, got dtype {jnp.result_type(logits)}.')
  if np.shape(labels) != shape[:1]:
    raise ValueError(f'labels must be i32[B] with B={shape[0]} (one per row of logits), got '
                     f'shape {np.shape(labels)}.')
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise TypeError(f'labels must be integer class indices, got dtype '
                    f'{jnp.result_type(labels)}.')


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy ``-log softmax(logits)[labels]``.

  Args:
    logits: f32[B, K].
    labels: i32[B] in [0, K).

  Returns:
    f32[B], >= 0.

  Raises:
    ValueError, TypeError: ``logits`` not a float [B, K] array or ``labels`` not integer
      [B] (checked on shapes and dtypes, also under ``jax.jit``).
  """
  _check_logits_labels(logits, labels)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def cw_margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Carlini-Wagner logit margin ``max_{j != label} z_j - z_label``.

  Positive exactly when some class other than ``labels`` has the largest logit.

  Args:
    logits: f32[B, K].
    labels: i32[B] in [0, K).

  Returns:
    f32[B].

  Raises:
    ValueError, TypeError: as ``cross_entropy``.

  References:
    Carlini & Wagner, Towards Evaluating the Robustness of Neural Networks, arXiv:1608.04644.
  """
  _check_logits_labels(logits, labels)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  label_logit = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
  other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
  return other - label_logit


OBJECTIVES: dict[str, Objective] = {
    'cross_entropy': cross_entropy,
    'cw_margin': cw_margin,
}


def resolve(objective: Union[str, Objective]) -> Objective:
  """Returns the objective named ``objective`` or the user callable itself.

  Args:
    objective: ``'cross_entropy'``, ``'cw_margin'`` or a callable
      ``(logits f32[B,K], labels i32[B]) -> f32[B]`` (larger = ``labels`` less favoured).

  Raises:
    ValueError: for an unknown name.
    TypeError: for anything that is neither a string nor callable.
  """
  if isinstance(objective, str):
    if objective not in OBJECTIVES:
      raise ValueError(f'objective must be one of {sorted(OBJECTIVES)} or a callable '
                       f'(logits, labels) -> f32[B], got {objective!r}.')
    return OBJECTIVES[objective]
  if not callable(objective):
    raise TypeError('objective must be a name or a callable (logits, labels) -> f32[B], got '
                    f'{type(objective).__name__}.')
  return objective


def signed_objective(objective: Union[str, Objective], *, targeted: bool) -> Objective:
  """The per-example quantity every attack *ascends*.

  Untargeted (``labels`` = true classes): the objective (move away from the true class).
  Targeted (``labels`` = targets): minus the objective (move towards the target).

  Args:
    objective: a name accepted by ``resolve`` or a callable.
    targeted: whether ``labels`` are target classes.

  Returns:
    ``(logits f32[B,K], labels i32[B]) -> f32[B]``.
  """
  fn = resolve(objective)
  if targeted:
    return lambda logits, labels: -fn(logits, labels)
  return fn


def succeeded(logits: jax.Array, labels: jax.Array, *, targeted: bool,
              confidence: jax.typing.ArrayLike = 0.0) -> jax.Array:
  """Whether each example is adversarial with a logit margin above ``confidence``.

  Untargeted: some class beats the true class by more than ``confidence``; targeted: the
  target beats every other class by more than ``confidence``. With ``confidence = 0`` this is
  ``argmax != labels`` (resp. ``argmax == labels``) up to exact ties.

  Args:
    logits: f32[B, K].
    labels: i32[B].
    targeted: whether ``labels`` are targets.
    confidence: scalar or [B] margin kappa >= 0.

  Returns:
    bool[B].
  """
  margin = signed_objective(cw_margin, targeted=targeted)(logits, labels)
  return margin > jnp.asarray(confidence, logits.dtype)


def input_gradient(apply_fn: ApplyFn, params: Params, x: jax.Array, labels: jax.Array,
                   fn: Objective) -> jax.Array:
  """Gradient of ``fn(apply_fn(params, x), labels)`` w.r.t. each example of ``x``.

  The batch sum is differentiated: the models are evaluated in inference mode, so examples do
  not interact and row ``b`` of the result is example ``b``'s own gradient.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits f32[B,K]``.
    params: model variables.
    x: f32[B, H, W, C].
    labels: i32[B].
    fn: per-example objective to ascend.

  Returns:
    f32[B, H, W, C].
  """
  apply_fn = rewrites.fast_gradients(apply_fn)
  return jax.grad(lambda xa: jnp.sum(fn(apply_fn(params, xa), labels)))(x)
