"""CAM family: CAM == HW * Grad-CAM on GAP+dense models, locality, layer lookup errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import models
from advsal_jax import saliency


def _init(name):
  """Random-init registered model, initialised under jit (eager init is slow on CPU)."""
  model = models.create(name)
  x = jnp.zeros((1, *models.get_spec(name).input_shape), jnp.float32)
  return model, jax.jit(model.init)(jax.random.key(0), x)


@pytest.fixture(scope='module')
def mobilenet():
  model, variables = _init('mobilenet_v1_cifar')
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  return model, variables, x, jnp.array([3, 7], jnp.int32)


def test_cam_equals_grad_cam_times_area_on_gap_dense_model(mobilenet):
  model, variables, x, target = mobilenet
  layer = models.get_spec('mobilenet_v1_cifar').last_conv

  @jax.jit
  def run(v, xx, t):
    return (saliency.cam(model.apply, v, xx, t, layer=layer),
            saliency.grad_cam(model.apply, v, xx, t, layer=layer),
            saliency.guided_grad_cam(model.apply, v, xx, t, layer=layer),
            saliency.guided_backprop(model.apply, v, xx, t))

  cam, grad_cam, guided_grad_cam, guided = run(variables, x, target)
  # Logits = dense(mean_ij A_ij): dS/dA_ij = w / (h*w), so alpha = w / 16 on the 4x4 layer.
  np.testing.assert_allclose(cam, 16.0 * np.asarray(grad_cam), rtol=1e-4, atol=1e-7)
  assert np.asarray(cam).max() > 0
  np.testing.assert_allclose(guided_grad_cam, np.asarray(guided) * np.asarray(grad_cam),
                             rtol=1e-6, atol=1e-9)


class Masked(nn.Module):
  """Zeroes the activation outside the top-left 2x2 cells: the model sees only that region."""

  @nn.compact
  def __call__(self, h):
    mask = np.zeros((1, 4, 4, 1), np.float32)
    mask[:, :2, :2] = 1.0
    return h * mask


class RegionNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(8, (4, 4), strides=4, name='features')(x))  # 16x16 -> 4x4
    h = Masked(name='masked')(h)
    return nn.Dense(5, use_bias=False, name='logits')(h.mean(axis=(1, 2)))


def test_grad_cam_on_a_model_that_uses_one_region():
  model = RegionNet()
  x = jax.random.uniform(jax.random.key(2), (3, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  target = jnp.argmax(model.apply(variables, x), axis=1).astype(jnp.int32)
  cam = np.asarray(jax.jit(lambda v: saliency.grad_cam(model.apply, v, x, target,
                                                       layer='masked'))(variables))[..., 0]
  # Cells 2, 3 are zero; bilinear upsampling (x4, half-pixel centres) only mixes cells 1
  # and 2 at pixels 8, 9, so pixels >= 10 in either axis are exactly zero.
  assert (cam[:, 10:, :] == 0).all() and (cam[:, :, 10:] == 0).all()
  assert (cam[:, :8, :8].max(axis=(1, 2)) > 0).all()


def test_layer_lookup(mobilenet):
  model, variables, x, target = mobilenet
  with pytest.raises(ValueError, match=r"'conv9' is not a layer.*'block6'.*'stem'"):
    saliency.grad_cam(model.apply, variables, x, target, layer='conv9')
  v2_model = models.create('mobilenet_v2_cifar')
  v2_vars = jax.eval_shape(v2_model.init, jax.random.key(0), x)  # shapes suffice here
  with pytest.raises(ValueError, match=r"'dw' is ambiguous.*'ir3/dw'"):
    saliency.grad_cam(v2_model.apply, v2_vars, x, target, layer='dw')
  with pytest.raises(ValueError, match='flax.linen apply_fn'):
    saliency.grad_cam(lambda p, xx: xx.reshape(2, -1)[:, :10], None, x, target, layer='x')
  with pytest.raises(ValueError, match="dense layer 'head'"):
    saliency.cam(model.apply, variables, x, target, layer='block6', dense='head')
  with pytest.raises(TypeError, match='layer'):
    saliency.grad_cam(model.apply, variables, x, target, layer=3)
