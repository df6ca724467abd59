"""Learnt real-time saliency (Dabkowski & Gal): a masking model, its objective and inference.

The masking model ``Masker`` predicts, in one forward pass, a mask ``m`` in [0, 1] that keeps
the evidence for a class ``c`` of image ``x``. Its encoder is the frozen classifier it explains:
the outputs of named classifier layers are read as Grad-CAM reads its layer (flax
``intercept_methods``, no change to the classifier). The classifier is a submodule named
``'classifier'``, so a masker's variables hold the classifier's variables under
``variables[collection]['classifier']`` beside the decoder's parameters; ``masker.apply`` is
therefore an ``apply_fn`` with everything it needs, and one compiled program serves every
checkpoint. A checkpoint stores the decoder's parameters only (``decoder_params``) and names
the classifier checkpoint; ``load_masker`` joins them again.

The decoder is U-Net-like: the deepest layer is the bottleneck, where an embedding of ``c``
modulates the features (a per-class scale and shift), then each shallower layer joins as a
skip connection. The mask is predicted at ``1 / mask_downsample`` of the input resolution
(``mask_downsample=2``: 14x14 for MNIST, 16x16 for CIFAR-10; the reference predicts at a
quarter of 224 px) with a sigmoid, and upsampled bilinearly to the input.
"""

import dataclasses
from typing import Mapping

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import _checks
from advsal_jax import checkpoints
from advsal_jax import models
from advsal_jax.saliency import _gradients
from advsal_jax.types import ApplyFn, Params, PRNGKey

CLASSIFIER = 'classifier'
"""Name of the classifier submodule (and its key in each variable collection)."""

LOSS_FORMS = ('paper', 'margin')
"""The forms of ``MaskerLoss``: paper 003's objective and the reference code's margins."""

# The reference blurs 224 px images with sigma 11 and a 55-tap kernel (radius 27 = 2.45 sigma).
_REFERENCE_SIZE, _REFERENCE_SIGMA, _RADIUS_IN_SIGMAS = 224, 11.0, 27 / 11
# Offset of the reference's area term, (m + 5e-4) ** power: its gradient at m = 0 is finite.
_AREA_EPS = 5e-4


def _resize(a: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear resize of f32[B,h,w,k] (antialiased when shrinking); unchanged if already h x w."""
  if a.shape[1:3] == (height, width):
    return a
  return jax.image.resize(a, (a.shape[0], height, width, a.shape[3]), 'linear', antialias=True)


class Masker(nn.Module):
  """Masking model over a frozen classifier.

  Attributes:
    classifier: the flax classifier explained, ``classifier(x) -> logits f32[B,K]``; its
      variables live under ``'classifier'`` in every collection of the masker's variables.
    layers: classifier layers read as features, shallow to deep: module paths (e.g.
      'conv2', 'ir3/dw') or unique module names; each must output [B,h,w,k]. The last one is
      the bottleneck.
    width: channels of every decoder convolution.
    mask_downsample: the mask is predicted at ``ceil(H / mask_downsample)`` x
      ``ceil(W / mask_downsample)`` and upsampled bilinearly to H x W.
  """
  classifier: nn.Module
  layers: tuple[str, ...]
  width: int = 32
  mask_downsample: int = 2

  def features(self, x: jax.Array) -> tuple[list[jax.Array], jax.Array]:
    """The outputs of ``layers`` (in order) and the logits f32[B,K] of one classifier pass."""
    prefix = self.path + (CLASSIFIER,)
    calls: dict[str, list[jax.Array]] = {}

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      path = context.module.path
      if (context.method_name == '__call__' and len(path) > len(prefix)
          and path[:len(prefix)] == prefix):
        calls.setdefault('/'.join(path[len(prefix):]), []).append(out)
      return out

    with nn.intercept_methods(record):
      logits = self.classifier(x)
    return [_layer_output(calls, layer, x.shape[0]) for layer in self.layers], logits

  def classify(self, x: jax.Array) -> jax.Array:
    """The classifier's logits f32[B,K] on images f32[B,H,W,C] in [0, 1]."""
    return self.classifier(x)

  @nn.compact
  def __call__(self, x: jax.Array, target: jax.Array) -> jax.Array:
    """Mask f32[B,H,W,1] in [0, 1] keeping the evidence for class ``target`` i32[B] of ``x``."""
    if not self.layers:
      raise ValueError('layers must name at least one classifier layer, got ().')
    # The encoder is frozen by training the decoder's parameters only (masker_training);
    # no stop_gradient here, so the mask stays differentiable in x for adaptive attacks.
    feats, logits = self.features(x)
    b, height, width = x.shape[:3]
    mh, mw = -(-height // self.mask_downsample), -(-width // self.mask_downsample)
    h = nn.relu(nn.Conv(self.width, (1, 1), name='bottleneck')(feats[-1]))
    film = nn.Embed(logits.shape[-1], 2 * self.width, embedding_init=nn.initializers.zeros,
                    name='class_embedding')(target)
    scale, shift = film[:, None, None, :self.width], film[:, None, None, self.width:]
    h = nn.relu(nn.Conv(self.width, (3, 3), name='bottleneck_conv')(h * (1 + scale) + shift))
    for i, skip in enumerate(reversed(feats[:-1])):
      size = (min(skip.shape[1], mh), min(skip.shape[2], mw))
      h = _resize(h, *size)
      skip = nn.relu(nn.Conv(self.width, (1, 1), name=f'skip{i}')(_resize(skip, *size)))
      h = nn.relu(nn.Conv(self.width, (3, 3), name=f'up{i}')(jnp.concatenate([h, skip], -1)))
    logit = nn.Conv(1, (3, 3), name='mask_logit')(_resize(h, mh, mw))
    mask = jax.image.resize(jax.nn.sigmoid(logit), (b, height, width, 1), 'bilinear')
    return jnp.clip(mask, 0.0, 1.0)


def _layer_output(calls: dict[str, list[jax.Array]], layer: str, batch: int) -> jax.Array:
  """The one output [B,h,w,k] of ``layer`` (a path or a unique name) among recorded calls.

  Raises:
    TypeError: ``layer`` is not a string.
    ValueError: unknown, ambiguous or reused layer, or an output that is not [B,h,w,k].
  """
  if not isinstance(layer, str):
    raise TypeError(f'layers must hold module paths or names (str), got {layer!r}.')
  if layer in calls:
    path = layer
  else:
    matches = [p for p in calls if p.split('/')[-1] == layer]
    if len(matches) != 1:
      why = 'is ambiguous' if matches else 'is not a layer of the classifier'
      raise ValueError(f'layer {layer!r} {why}; valid layers (module paths): {sorted(calls)}.')
    path = matches[0]
  outs = calls[path]
  if len(outs) != 1:
    raise ValueError(f'layer {path!r} is called {len(outs)} times per forward pass; its '
                     'activation is ambiguous.')
  out = outs[0]
  if getattr(out, 'ndim', None) != 4 or out.shape[0] != batch:
    raise ValueError(f'layer {path!r} must output an activation map [B,h,w,k], got '
                     f'{getattr(out, "shape", type(out))}.')
  return out


def _check_collections(variables: Params, name: str, *, params: bool = True):
  """Checks ``variables`` is a mapping of collections (holding a 'params' mapping).

  Raises:
    TypeError: not a mapping.
    ValueError: no 'params' mapping (with ``params``).
  """
  if not isinstance(variables, Mapping):
    raise TypeError(f'{name} must be flax variables, a mapping of collections; got '
                    f'{type(variables).__name__}.')
  if params and not isinstance(variables.get('params'), Mapping):
    raise ValueError(f"{name} must be flax variables, a mapping of collections holding "
                     f"'params'; got collections {sorted(variables)}.")


def classifier_variables(variables: Params) -> Params:
  """The classifier's variables inside a masker's ``variables`` (collections that hold any).

  Empty for a classifier without variables.

  Raises:
    TypeError: ``variables`` is not a mapping of collections.
  """
  _check_collections(variables, 'variables', params=False)
  return {col: tree[CLASSIFIER] for col, tree in variables.items() if CLASSIFIER in tree}


def decoder_params(variables: Params) -> Params:
  """The masker's own trainable parameters: ``{'params': ...}`` without the classifier.

  Raises:
    TypeError: ``variables`` is not a mapping of collections.
    ValueError: ``variables`` holds no ``'params'`` collection.
  """
  _check_collections(variables, 'variables')
  return {'params': {k: v for k, v in variables['params'].items() if k != CLASSIFIER}}


def attach_classifier(decoder: Params, classifier_vars: Params) -> Params:
  """Masker variables from decoder parameters and classifier variables (inverse of the two above).

  Raises:
    TypeError: ``decoder`` or ``classifier_vars`` is not a mapping of collections.
    ValueError: ``decoder`` holds no ``'params'`` (``decoder_params`` gives
      ``{'params': ...}``).
  """
  _check_collections(decoder, 'decoder')
  _check_collections(classifier_vars, 'classifier_vars', params=False)
  variables = {col: {CLASSIFIER: tree} for col, tree in classifier_vars.items() if tree}
  variables['params'] = {**variables.get('params', {}), **decoder['params']}
  return variables


def init_masker(masker: Masker, classifier_vars: Params, x: jax.typing.ArrayLike, *,
                key: PRNGKey) -> Params:
  """Random decoder parameters joined with the trained classifier's variables.

  Args:
    masker: the masking model.
    classifier_vars: the variables of ``masker.classifier`` (e.g. from ``checkpoints.load``).
    x: f32[B,H,W,C] example images (only their shape matters).
    key: PRNG key of the decoder's initialisation.

  Returns:
    The masker's variables: ``masker.apply(variables, x, target)`` gives masks.

  Raises:
    ValueError: ``classifier_vars`` do not have the structure and shapes of the classifier's.
  """
  _checks.check_images(x)
  x = jnp.zeros(jnp.shape(x), jnp.float32)
  variables = jax.jit(masker.init)(key, x, jnp.zeros((x.shape[0],), jnp.int32))
  want = jax.tree.map(jnp.shape, classifier_variables(variables))
  got = jax.tree.map(jnp.shape, {c: t for c, t in classifier_vars.items() if t})
  if want != got:
    raise ValueError(f'classifier_vars must match the variables of masker.classifier '
                     f'(shapes {want}), got shapes {got}.')
  return attach_classifier(decoder_params(variables), classifier_vars)


def _classify_fn(apply_fn: ApplyFn) -> ApplyFn:
  """``(params, x) -> logits`` of a masker's ``apply``: its ``classify`` method."""
  return lambda params, x: apply_fn(params, x, method='classify')


def learnt_saliency(apply_fn: ApplyFn, params: Params, x: jax.typing.ArrayLike,
                    target: jax.typing.ArrayLike, *, key: PRNGKey | None = None) -> jax.Array:
  """The learnt saliency mask of Dabkowski & Gal for class ``target[b]`` of each image.

  Unlike the other methods, ``apply_fn`` and ``params`` are the masking model's (their
  variables hold the frozen classifier's), e.g. from ``load_masker``. One forward pass, no
  gradient.

  Args:
    apply_fn: a ``Masker``'s ``apply``: ``apply_fn(params, x, target) -> f32[B,H,W,1]``, and
      ``apply_fn(params, x, method='classify') -> logits f32[B,K]``.
    params: the masker's variables.
    x: f32[B,H,W,C] images in [0, 1].
    target: i32[B] class indices in [0, K).
    key: unused (deterministic method).

  Returns:
    f32[B,H,W,1] mask in [0, 1]: 1 keeps a pixel's evidence for the class, 0 removes it.

  Raises:
    ValueError: ``apply_fn``/``params`` are not a masking model's (e.g. a classifier's);
      malformed ``x``/``target``; ``x`` with NaN/inf or outside [0, 1] (when concrete).
    TypeError: non-float ``x``, non-integer ``target``.

  References:
    Dabkowski & Gal, Real Time Image Saliency for Black Box Classifiers, arXiv:1705.07857.
  """
  del key
  _checks.check_images(x)
  _checks.check_pixels(x)
  classify = _classify_fn(apply_fn)
  try:
    _checks.num_classes(classify, params, x)
  except (AttributeError, TypeError, KeyError, ValueError, flax.errors.FlaxError) as e:
    raise ValueError('learnt_saliency needs the apply_fn and variables of a masking model '
                     '(saliency.load_masker or Masker.apply), with a classify method; the '
                     f'given apply_fn/params failed as one ({type(e).__name__}: {e}).') from e
  _checks.check_labels(classify, params, x, target, name='target')
  return apply_fn(params, jnp.asarray(x), jnp.asarray(target))


def _check_phi_shapes(x, mask, alt, *, mask_name: str):
  """``check_images(x)``; the mask and ``alt`` must broadcast to ``x``'s shape."""
  _checks.check_images(x)
  shape = tuple(np.shape(x))
  for name, value, want in ((mask_name, mask, 'f32[B,H,W,1] or f32[B,H,W,C]'),
                            ('alt', alt, 'f32[B,H,W,C]')):
    try:
      fits = np.broadcast_shapes(np.shape(value), shape) == shape
    except ValueError:
      fits = False
    if not fits:
      raise ValueError(f'{name} must be {want}, broadcastable to x\'s shape {shape}; got shape '
                       f'{tuple(np.shape(value))}.')


def phi(x: jax.typing.ArrayLike, m: jax.typing.ArrayLike,
        alt: jax.typing.ArrayLike) -> jax.Array:
  """``Phi(x, m) = m * x + (1 - m) * alt``: keeps ``x`` where ``m`` is 1, ``alt`` where it is 0.

  Args:
    x: f32[B,H,W,C] images.
    m: f32[B,H,W,1] (or [B,H,W,C]) mask in [0, 1].
    alt: f32[B,H,W,C] alternative images (``alternative_images``).

  Returns:
    f32[B,H,W,C]; in [0, 1] when ``x`` and ``alt`` are.

  Raises:
    ValueError: ``x`` is not a batch of images, or ``m`` or ``alt`` does not broadcast to
      its shape.
    TypeError: non-float ``x``.
  """
  _check_phi_shapes(x, m, alt, mask_name='m')
  m = jnp.asarray(m)
  return m * jnp.asarray(x) + (1.0 - m) * jnp.asarray(alt)


def _gaussian_blur(x: jax.Array, sigma: float, radius: int) -> jax.Array:
  """Separable Gaussian blur of f32[B,H,W,C], taps normalised to 1, symmetric padding."""
  taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1, dtype=jnp.float32) / sigma) ** 2)
  taps = taps / taps.sum()
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (radius, radius)
    xp = jnp.pad(x, pad, mode='symmetric')
    n = x.shape[axis]
    x = sum(taps[i] * jax.lax.slice_in_dim(xp, i, i + n, axis=axis)
            for i in range(2 * radius + 1))
  return x


def alternative_images(key: PRNGKey, x: jax.typing.ArrayLike, *, blur_prob: float = 0.5,
                       noise_std: float = 0.055, colour_range: float = 0.33,
                       blur_sigma: float | None = None) -> jax.Array:
  """What replaces removed evidence: per image, a blur of it or noise on a random colour.

  With probability ``blur_prob`` an image's alternative is its Gaussian blur, otherwise a
  random colour (uniform per channel in ``0.5 +- colour_range / 2``) plus Gaussian pixel noise
  of std ``noise_std``, clipped to [0, 1]. The reference code's values are for images in
  [-1, 1] (noise std 0.11, colours in +-0.33) and are halved here for pixels in [0, 1]; its
  blur (sigma 11, 55 taps at 224 px) is scaled to the image: sigma ``11 * max(H, W) / 224``
  (1.57 px at 32 px, 1.38 px at 28 px), radius ``round(2.45 sigma)``, symmetric padding.
  The reference also adds noise to the preserved image; that is not done here.

  Args:
    key: typed PRNG key: one (split into one per image) or one per image, shape (B,).
    x: f32[B,H,W,C] images in [0, 1].
    blur_prob: probability in [0, 1] that an image's alternative is its blur.
    noise_std: std of the noise, >= 0.
    colour_range: width in [0, 1] of the random colours' interval around 0.5.
    blur_sigma: blur std in pixels, > 0; default scaled from the reference as above.

  Returns:
    f32[B,H,W,C] in [0, 1]. Image b depends only on ``x[b]`` and its key.

  Raises:
    ValueError: a malformed ``x`` or ``key``, a setting out of range; ``x`` with NaN/inf or
      outside [0, 1] (when concrete).
    TypeError: an untyped key, non-float ``x``.
  """
  _checks.check_images(x)
  _checks.check_pixels(x)
  if not 0.0 <= blur_prob <= 1.0:
    raise ValueError(f'blur_prob must lie in [0, 1], got {blur_prob}.')
  if noise_std < 0:
    raise ValueError(f'noise_std must be >= 0, got {noise_std}.')
  if not 0.0 <= colour_range <= 1.0:
    raise ValueError(f'colour_range must lie in [0, 1], got {colour_range}.')
  if blur_sigma is not None and not blur_sigma > 0:
    raise ValueError(f'blur_sigma must be > 0 (pixels), got {blur_sigma}.')
  x = jnp.asarray(x, jnp.float32)
  b, h, w, c = x.shape
  keys = _gradients.per_example_keys(key, b, 'alternative_images')
  sigma = blur_sigma or _REFERENCE_SIGMA * max(h, w) / _REFERENCE_SIZE
  radius = max(1, round(_RADIUS_IN_SIGMAS * sigma))
  blurred = _gaussian_blur(x, sigma, radius)

  def draw(k):
    k_choice, k_colour, k_noise = jax.random.split(k, 3)
    colour = jax.random.uniform(k_colour, (c,), minval=0.5 - colour_range / 2,
                                maxval=0.5 + colour_range / 2)
    noise = noise_std * jax.random.normal(k_noise, (h, w, c))
    return jax.random.uniform(k_choice) < blur_prob, jnp.clip(colour[None, None] + noise, 0., 1.)

  use_blur, noisy = jax.vmap(draw)(keys)
  return jnp.where(use_blur[:, None, None, None], blurred, noisy)


@dataclasses.dataclass(frozen=True)
class MaskerLoss:
  """The masking objective (hashable: a static argument under ``jax.jit``).

  'paper' (paper 003, Dabkowski & Gal's objective without its total-variation term):
  ``lambda1 * AV(m) - log p_c(Phi(x, m)) + lambda2 * p_c(Phi(x, 1 - m)) ** lambda3``.
  'margin' (the reference code, without its smoothness term), on logits ``z``:
  ``relu(z_c - max_{k!=c} z_k + destroyer_confidence) (on Phi(x, 1 - m))
  + area_weight * mean((m + 5e-4) ** area_power)
  + preserver_weight * relu(max_{k!=c} z_k - z_c + preserver_confidence) (on Phi(x, m))``.

  Attributes:
    form: 'paper' or 'margin'.
    lambda1: weight of the mean mask (area), paper form.
    lambda2: weight of the destroyer term, paper form.
    lambda3: power of the destroyer probability, paper form (< 1 keeps pushing it to 0).
    area_weight: weight of the area term, margin form (reference: 8).
    area_power: power of the mask in the area term, margin form (reference: 0.3).
    preserver_weight: weight of the preserver margin, margin form (reference: 0.3).
    preserver_confidence: margin the preserved image's class must win by (reference: 1).
    destroyer_confidence: margin the destroyed image's class must lose by (reference: 5).
  """
  form: str = 'paper'
  lambda1: float = 2.0
  lambda2: float = 5.0
  lambda3: float = 0.3
  area_weight: float = 8.0
  area_power: float = 0.3
  preserver_weight: float = 0.3
  preserver_confidence: float = 1.0
  destroyer_confidence: float = 5.0

  def __post_init__(self):
    if self.form not in LOSS_FORMS:
      raise ValueError(f'form must be one of {LOSS_FORMS}, got {self.form!r}.')
    for name in ('lambda1', 'lambda2', 'lambda3', 'area_weight', 'area_power',
                 'preserver_weight', 'preserver_confidence', 'destroyer_confidence'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}.')


def _target_and_runner_up(logits: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``z_c`` and ``max_{k != c} z_k`` per example: f32[B] each."""
  one_hot = jax.nn.one_hot(target, logits.shape[-1], dtype=bool)
  z_c = jnp.sum(jnp.where(one_hot, logits, 0.0), axis=-1)
  return z_c, jnp.max(jnp.where(one_hot, -jnp.inf, logits), axis=-1)


def masker_loss(classify: ApplyFn, params: Params, x: jax.Array, mask: jax.Array,
                target: jax.Array, alt: jax.Array, *, loss: MaskerLoss = MaskerLoss()
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The masking objective, averaged over the batch.

  Args:
    classify: ``classify(params, x) -> logits f32[B,K]``, the classifier explained.
    params: its variables.
    x: f32[B,H,W,C] images in [0, 1].
    mask: f32[B,H,W,1] masks in [0, 1].
    target: i32[B] classes in [0, K).
    alt: f32[B,H,W,C] alternative images in [0, 1].
    loss: which objective, and its weights.

  Returns:
    ``(loss f32[], terms)``; ``terms`` holds batch means f32[] of 'area' (``AV(m)``),
    'preserved_prob' and 'destroyed_prob' (softmax probability of the target on
    ``Phi(x, m)`` and ``Phi(x, 1 - m)``) and the objective's own terms ('area_term',
    'preserver', 'destroyer').

  Raises:
    ValueError: ``x`` not a batch of images; ``mask`` or ``alt`` not broadcastable to it;
      ``target`` not of shape [B]; logits that are not [B, K]; when concrete, ``x``,
      ``mask`` or ``alt`` with NaN/inf or outside [0, 1], ``target`` outside [0, K).
    TypeError: non-float ``x``, non-integer ``target``.
  """
  _check_phi_shapes(x, mask, alt, mask_name='mask')
  for name, value in (('x', x), ('mask', mask), ('alt', alt)):
    _checks.check_pixels(value, name=name)
  _checks.check_labels(classify, params, x, target, name='target')
  both = jnp.concatenate([phi(x, mask, alt), phi(x, 1.0 - mask, alt)])
  logits = classify(params, both)
  batch = x.shape[0]
  log_p = jax.nn.log_softmax(logits)
  log_p = jnp.take_along_axis(log_p, jnp.concatenate([target, target])[:, None], 1)[:, 0]
  log_p_keep, log_p_del = log_p[:batch], log_p[batch:]
  area = jnp.mean(mask, axis=(1, 2, 3))
  if loss.form == 'paper':
    area_term = loss.lambda1 * area
    preserver = -log_p_keep
    destroyer = loss.lambda2 * jnp.exp(loss.lambda3 * log_p_del)  # p ** lambda3, finite grad
  else:
    z_c, z_other = _target_and_runner_up(logits, jnp.concatenate([target, target]))
    area_term = loss.area_weight * jnp.mean((mask + _AREA_EPS) ** loss.area_power,
                                            axis=(1, 2, 3))
    preserver = loss.preserver_weight * jax.nn.relu(
        z_other[:batch] - z_c[:batch] + loss.preserver_confidence)
    destroyer = jax.nn.relu(z_c[batch:] - z_other[batch:] + loss.destroyer_confidence)
  total = jnp.mean(area_term + preserver + destroyer)
  terms = {'area': area.mean(), 'preserved_prob': jnp.exp(log_p_keep).mean(),
           'destroyed_prob': jnp.exp(log_p_del).mean(), 'area_term': area_term.mean(),
           'preserver': preserver.mean(), 'destroyer': destroyer.mean()}
  return total, terms


def masker_from_metadata(classifier: nn.Module, metadata: dict) -> Masker:
  """The ``Masker`` described by a masker checkpoint's ``metadata['masker']``.

  Raises:
    ValueError: ``metadata['masker']`` is missing or lacks 'layers', 'width' or
      'mask_downsample'.
  """
  arch = metadata.get('masker') if isinstance(metadata, Mapping) else None
  keys = ('layers', 'width', 'mask_downsample')
  if not isinstance(arch, Mapping) or not all(k in arch for k in keys):
    raise ValueError(f"metadata must hold 'masker': a mapping with {keys} (a masker "
                     f"checkpoint's metadata), got {arch!r}.")
  return Masker(classifier, tuple(arch['layers']), width=arch['width'],
                mask_downsample=arch['mask_downsample'])


def load_masker(name_or_path: str) -> tuple[Masker, Params, dict]:
  """Loads a masker checkpoint and the classifier checkpoint it names.

  Args:
    name_or_path: e.g. ``'masker_cnn_mnist'`` (looked up like ``checkpoints.load``) or a
      directory.

  Returns:
    ``(masker, variables, metadata)``: ``learnt_saliency(masker.apply, variables, x, target)``
    gives masks.

  Raises:
    checkpoints.CheckpointError: missing or malformed metadata, weight files whose SHA-256
      differs from the metadata's (``checkpoints.verify``), not a masker checkpoint, a
      classifier checkpoint that is missing or is no longer the one the masker was trained
      for, or weights that do not restore.
  """
  directory, metadata = checkpoints.verify(name_or_path)
  if metadata.get('kind') != 'masker' or 'masker' not in metadata:
    raise checkpoints.CheckpointError(
        f'{directory} is not a masker checkpoint (its metadata has no kind "masker"); load '
        'classifiers with checkpoints.load.')
  classifier, classifier_vars, classifier_meta = checkpoints.load(metadata['classifier'])
  trained_for = metadata['classifier_checkpoint']
  now = {k: classifier_meta.get(k) for k in trained_for}
  if now != trained_for:
    raise checkpoints.CheckpointError(
        f'{directory} was trained for classifier checkpoint {metadata["classifier"]!r} with '
        f'{trained_for}, but that checkpoint now has {now}; retrain the masker.')
  masker = masker_from_metadata(classifier, metadata)
  x = jnp.zeros((1, *models.get_spec(metadata['model']).input_shape), jnp.float32)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.eval_shape(lambda: decoder_params(
      masker.init(jax.random.key(0), x, jnp.zeros((1,), jnp.int32))))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          abstract)
  try:
    decoder = checkpoints.restore_state(
        checkpoints.manager(directory / checkpoints.ORBAX_SUBDIR),
        abstract, metadata.get('step'))
  except checkpoints.CheckpointError:
    raise
  except Exception as e:  # orbax raises many types; the user needs to know which file.
    raise checkpoints.CheckpointError(
        f'Could not restore the decoder of masker {directory}: truncated or not this '
        f'architecture ({type(e).__name__}: {e}).') from e
  return masker, attach_classifier(decoder, classifier_vars), metadata
