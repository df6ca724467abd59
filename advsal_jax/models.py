"""Flax image classifiers and their registry.

Every model takes NHWC ``float32`` images in ``[0, 1]`` and normalises them per channel
inside the network, so attack budgets and saliency maps live in pixel space. ReLUs are
``nn.relu`` (so ``guided_backprop`` can rewrite them) and pooling is a reshape-and-max
whose gradient is much cheaper than XLA's select-and-scatter on CPU. Each convolutional
stage is a named submodule whose output is its post-ReLU activation, so "the last conv
layer" is one name (``ModelSpec.last_conv``). Eval mode (``train=False``, the default)
needs no mutable state, so ``model.apply`` is directly an ``apply_fn(variables, x)``.
With ``plain=True`` a model is built from flax's stock layers instead (``nn.Conv`` as is,
``nn.max_pool``): the same function of the same parameters, written as a user would write it.
"""

import dataclasses
import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advsal_jax import rewrites

# Per-channel statistics of the training splits (0-1 scale), see the datasets' READMEs.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def check_images(x: jax.Array, *, height: int, width: int, channels: int, name: str = 'x',
                 unit_range: bool = True):
  """Raises a clear error unless ``x`` is a float batch ``[B, height, width, channels]`` in [0, 1].

  The value-range check runs only on concrete arrays (it is skipped while tracing, where
  attacks and SmoothGrad legitimately evaluate the model on transformed inputs). With
  ``unit_range=False`` (a detector over signed saliency maps) only NaN is refused.

  Raises:
    TypeError: if ``x`` is not floating point.
    ValueError: on a wrong rank or shape, NaN, or values outside [0, 1].
  """
  shape = tuple(np.shape(x))
  if len(shape) != 4:
    raise ValueError(f'{name} must be a batch of images [B,H,W,C]=[B,{height},{width},'
                     f'{channels}], got shape {shape} (rank {len(shape)}).')
  if shape[1:] != (height, width, channels):
    raise ValueError(f'{name} must have per-image shape ({height}, {width}, {channels}) '
                     f'(H, W, C), got {shape[1:]}.')
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f'{name} must be floating point in [0, 1], got dtype {dtype}; '
                    'divide uint8 images by 255.')
  if not isinstance(x, jax.core.Tracer):
    arr = np.asarray(x)
    if np.isnan(arr).any():
      raise ValueError(f'{name} contains NaN.')
    lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
    if unit_range and (lo < -1e-6 or hi > 1 + 1e-6):
      raise ValueError(f'{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}].')


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2/stride-2 max pooling as reshape + max.

  Same values as ``nn.max_pool(x, (2, 2), (2, 2))`` for even H and W; its gradient is a
  cheap elementwise mask instead of XLA's select-and-scatter (ties share the gradient).

  Args:
    x: f32[B, H, W, C] with even H and W.

  Returns:
    f32[B, H/2, W/2, C].
  """
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class DepthwiseConv(nn.Module):
  """3x3 depthwise convolution written as a sum of shifted, per-channel-scaled slices.

  Numerically a ``nn.Conv(C, (k, k), feature_group_count=C, padding='SAME')`` without bias;
  on XLA:CPU its forward and backward passes fuse into elementwise loops, many times
  faster than the grouped convolution (whose gradient XLA lowers poorly on CPU).
  """
  kernel: int = 3
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    k, s = self.kernel, self.strides
    w = self.param('kernel', nn.initializers.lecun_normal(), (k, k, 1, c), x.dtype)
    h, wd = x.shape[1], x.shape[2]
    out_h, out_w = -(-h // s), -(-wd // s)
    pad_h = max((out_h - 1) * s + k - h, 0)
    pad_w = max((out_w - 1) * s + k - wd, 0)
    xp = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                     (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = 0.
    for i in range(k):
      for j in range(k):
        patch = xp[:, i:i + (out_h - 1) * s + 1:s, j:j + (out_w - 1) * s + 1:s, :]
        out = out + patch * w[i, j].reshape(1, 1, 1, c)
    return out


def conv_padding_odd_features(lhs: jax.Array, rhs: jax.Array, *args,
                              dimension_numbers, **kwargs) -> jax.Array:
  """``lax.conv_general_dilated`` with 3, 5 or 7 input features zero-padded to a multiple of 4.

  The ``conv_general_dilated`` of this package's ``nn.Conv`` layers: the same sum, several
  times faster on XLA:CPU for an RGB input (``rewrites.pad_odd_input_features``). The
  parameters keep their shapes.
  """
  dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  lhs, rhs = rewrites.pad_odd_input_features(lhs, rhs, {'dimension_numbers': dn})
  return jax.lax.conv_general_dilated(lhs, rhs, *args, dimension_numbers=dn, **kwargs)


class ConvBlock(nn.Module):
  """Conv (+ BatchNorm) + ReLU; the module's output is the post-ReLU activation.

  ``plain=True`` keeps ``nn.Conv``'s own ``conv_general_dilated`` (no input-feature padding).
  """
  features: int
  kernel: int = 3
  strides: int = 1
  groups: int = 1
  batch_norm: bool = True
  relu: bool = True
  plain: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.groups == 1:
      x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.strides,
                  padding='SAME', use_bias=not self.batch_norm, name='conv',
                  conv_general_dilated=(jax.lax.conv_general_dilated if self.plain
                                        else conv_padding_odd_features))(x)
    elif self.groups == x.shape[-1] == self.features:
      x = DepthwiseConv(self.kernel, self.strides, name='conv')(x)
    else:
      raise ValueError('ConvBlock supports dense (groups=1) or depthwise '
                       f'(groups=features=C) convolutions, got groups={self.groups}.')
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn')(x)
    return nn.relu(x) if self.relu else x


class _Classifier(nn.Module):
  """Base: input check and per-channel normalisation shared by every model.

  ``plain``: build from flax's stock layers (``nn.Conv`` as is, ``nn.max_pool``) instead of
  this package's faster equivalents; same parameters, same function (to float rounding).
  ``unit_range``: inputs are images in [0, 1] (checked when concrete); False for networks
  over other inputs, e.g. ``detection``'s detectors over signed saliency maps.
  """
  num_classes: int = 10
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD
  input_hw: tuple[int, int] = (32, 32)
  plain: bool = False
  unit_range: bool = True

  def pool(self, x: jax.Array) -> jax.Array:
    """2x2/stride-2 max pooling: ``nn.max_pool`` if ``plain``, else ``max_pool_2x2``."""
    return nn.max_pool(x, (2, 2), (2, 2)) if self.plain else max_pool_2x2(x)

  def normalize(self, x: jax.Array) -> jax.Array:
    check_images(x, height=self.input_hw[0], width=self.input_hw[1], channels=len(self.mean),
                 unit_range=self.unit_range)
    mean = jnp.asarray(self.mean, x.dtype).reshape(1, 1, 1, -1)
    std = jnp.asarray(self.std, x.dtype).reshape(1, 1, 1, -1)
    return (x - mean) / std


class AlexNetCifar(_Classifier):
  """AlexNet-style CIFAR-10 net: five 3x3 conv blocks with max pooling, then two dense layers.

  conv1(w0)-pool-conv2(w1)-pool-conv3(w2)-conv4(w3)-conv5(w3)-pool-dense(hidden)-logits.
  Layers: ``conv1`` ... ``conv5`` (post-ReLU), ``fc1``, ``logits``.
  """
  widths: Sequence[int] = (32, 64, 128, 128, 128)
  hidden: int = 256

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps f32[B,32,32,3] in [0,1] to logits f32[B,num_classes]."""
    x = self.normalize(x)
    for i, w in enumerate(self.widths):
      x = ConvBlock(w, plain=self.plain, name=f'conv{i + 1}')(x, train)
      if i in (0, 1, 4):
        x = self.pool(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, name='fc1')(x))
    return nn.Dense(self.num_classes, name='logits')(x)


class MobileNetV1Cifar(_Classifier):
  """MobileNet-v1-style net: depthwise-separable blocks, global average pooling, one dense layer.

  Layers: ``stem``, then ``block{i}_dw`` / ``block{i}`` (the pointwise output), ``logits``.
  The last conv layer is the last ``block{i}``; logits are linear in its pooled output, so CAM
  is exact.
  """
  stem: int = 32
  blocks: Sequence[tuple[int, int]] = ((64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps f32[B,32,32,3] in [0,1] to logits f32[B,num_classes]."""
    x = self.normalize(x)
    x = ConvBlock(self.stem, plain=self.plain, name='stem')(x, train)
    for i, (w, s) in enumerate(self.blocks):
      x = ConvBlock(x.shape[-1], strides=s, groups=x.shape[-1], name=f'block{i + 1}_dw')(x, train)
      x = ConvBlock(w, kernel=1, name=f'block{i + 1}')(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name='logits')(x)


class InvertedResidual(nn.Module):
  """MobileNet-v2 block: 1x1 expand, 3x3 depthwise, linear 1x1 project, residual if shapes match."""
  features: int
  expansion: int
  strides: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c = x.shape[-1]
    h = x
    if self.expansion != 1:
      h = ConvBlock(c * self.expansion, kernel=1, name='expand')(h, train)
    h = ConvBlock(h.shape[-1], strides=self.strides, groups=h.shape[-1], name='dw')(h, train)
    h = ConvBlock(self.features, kernel=1, relu=False, name='project')(h, train)
    if self.strides == 1 and c == self.features:
      h = h + x
    return h


class MobileNetV2Cifar(_Classifier):
  """MobileNet-v2-style net: inverted residuals, a 1x1 ``last_conv``, global average pooling, dense.

  Layers: ``stem``, ``ir{i}`` blocks, ``last_conv`` (post-ReLU, the CAM layer), ``logits``.
  """
  stem: int = 32
  # (expansion, features, repeats, first stride)
  stages: Sequence[tuple[int, int, int, int]] = (
      (1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2), (4, 96, 1, 1))
  last: int = 256

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps f32[B,32,32,3] in [0,1] to logits f32[B,num_classes]."""
    x = self.normalize(x)
    x = ConvBlock(self.stem, plain=self.plain, name='stem')(x, train)
    k = 0
    for t, c, n, s in self.stages:
      for r in range(n):
        k += 1
        x = InvertedResidual(c, t, s if r == 0 else 1, name=f'ir{k}')(x, train)
    x = ConvBlock(self.last, kernel=1, name='last_conv')(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name='logits')(x)


class CnnMnist(_Classifier):
  """Small MNIST convnet: conv1(32)-conv2(32)-pool-conv3(64)-conv4(64)-pool-fc1(128)-logits."""
  mean: Sequence[float] = MNIST_MEAN
  std: Sequence[float] = MNIST_STD
  input_hw: tuple[int, int] = (28, 28)
  widths: Sequence[int] = (32, 32, 64, 64)
  hidden: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps f32[B,28,28,1] in [0,1] to logits f32[B,num_classes]."""
    x = self.normalize(x)
    for i, w in enumerate(self.widths):
      x = ConvBlock(w, batch_norm=False, plain=self.plain, name=f'conv{i + 1}')(x, train)
      if i in (1, 3):
        x = self.pool(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, name='fc1')(x))
    return nn.Dense(self.num_classes, name='logits')(x)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered model.

  Attributes:
    build: returns the flax module.
    dataset: the dataset it is trained on (a name in ``data.DATASETS``).
    input_shape: (H, W, C) of one image.
    last_conv: name of the last convolutional layer (Grad-CAM / CAM target).
    description: one line for humans.
    num_classes: K, the number of logits (the dataset's classes).
  """
  build: Callable[[], nn.Module]
  dataset: str
  input_shape: tuple[int, int, int]
  last_conv: str
  description: str
  num_classes: int = 10


MODELS: dict[str, ModelSpec] = {
    'alexnet_cifar': ModelSpec(
        AlexNetCifar, 'cifar10', (32, 32, 3), 'conv5',
        'AlexNet-style: 5 conv(3x3)+BN+ReLU blocks, 3 max-pools, dense 256, dense 10'),
    'alexnet_catdog': ModelSpec(
        functools.partial(AlexNetCifar, num_classes=2), 'cifar10_catdog', (32, 32, 3), 'conv5',
        'AlexNet-style cat-vs-dog net (alexnet_cifar with 2 classes): 5 conv(3x3)+BN+ReLU '
        'blocks, 3 max-pools, dense 256, dense 2', num_classes=2),
    'mobilenet_v1_cifar': ModelSpec(
        MobileNetV1Cifar, 'cifar10', (32, 32, 3), 'block6',
        'MobileNet-v1-style: depthwise-separable blocks, global average pool, one dense layer'),
    'mobilenet_v2_cifar': ModelSpec(
        MobileNetV2Cifar, 'cifar10', (32, 32, 3), 'last_conv',
        'MobileNet-v2-style: inverted residual blocks, global average pool, one dense layer'),
    'cnn_mnist': ModelSpec(
        CnnMnist, 'mnist', (28, 28, 1), 'conv4',
        'small MNIST convnet: 4 conv(3x3)+ReLU, 2 max-pools, dense 128, dense 10'),
}


def get_spec(name: str) -> ModelSpec:
  """Returns the registered ``ModelSpec`` called ``name``.

  Raises:
    ValueError: for an unknown name, listing the registered ones.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; registered models: {sorted(MODELS)}.')
  return MODELS[name]


def cam_layer(metadata: dict) -> str:
  """The Grad-CAM/CAM layer of a checkpoint: its metadata's ``last_conv``, else its model's.

  Args:
    metadata: a checkpoint's metadata (``checkpoints.load(...)[2]``), with ``model``.
  """
  return metadata.get('last_conv') or get_spec(metadata['model']).last_conv


def create(name: str) -> nn.Module:
  """Builds the registered flax module called ``name``."""
  return get_spec(name).build()


def init(name: str, key: jax.Array) -> tuple[nn.Module, dict]:
  """Builds model ``name`` and initialises its variables with ``key``.

  Returns:
    ``(model, variables)`` where ``variables`` holds ``params`` (and ``batch_stats`` for
    BatchNorm models).
  """
  model = create(name)
  x = jnp.zeros((1, *get_spec(name).input_shape), jnp.float32)
  return model, model.init(key, x)


def param_count(variables: dict) -> int:
  """Number of trainable parameters (the ``params`` collection)."""
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))


def forward_flops(name: str) -> float:
  """Forward FLOPs per image of model ``name``, from XLA's cost analysis at batch 1."""
  model, variables = init(name, jax.random.key(0))
  x = jax.ShapeDtypeStruct((1, *get_spec(name).input_shape), jnp.float32)
  compiled = jax.jit(model.apply).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])
