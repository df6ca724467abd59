"""SmoothGrad: zero-noise limit, noise statistics on a quadratic model, chunking, keys."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import saliency

B, H, W, C = 2, 4, 4, 3


class Small(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name='conv')(x))
    return nn.Dense(3, name='logits')(x.reshape(x.shape[0], -1))


@pytest.fixture(scope='module')
def small():
  model = Small()
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, H, W, C)))
  x = jax.random.uniform(jax.random.key(1), (B, H, W, C))
  return model.apply, variables, x, jnp.array([2, 0], jnp.int32)


def _quadratic(p, x):
  """Logit 0 = sum(a * x^2), logit 1 = 0: gradient 2 a x."""
  s = (p['a'][None] * x * x).sum(axis=(1, 2, 3))
  return jnp.stack([s, jnp.zeros_like(s)], axis=1)


def test_zero_noise_equals_base(small):
  apply_fn, variables, x, target = small

  @jax.jit
  def run(v, xx, t, k):
    sg = saliency.smoothgrad(apply_fn, v, xx, t, key=k, num_samples=4, noise_level=0.0)
    guided_sg = saliency.smoothgrad(apply_fn, v, xx, t, key=k, num_samples=3,
                                    noise_level=0.0, base=saliency.guided_backprop)
    noisy_guided_sg = saliency.smoothgrad(apply_fn, v, xx, t, key=k, num_samples=3,
                                          noise_level=0.3, base=saliency.guided_backprop)
    return (sg, saliency.gradient(apply_fn, v, xx, t), guided_sg,
            saliency.guided_backprop(apply_fn, v, xx, t), noisy_guided_sg)

  sg, grad, guided_sg, guided, noisy = run(variables, x, target, jax.random.key(0))
  np.testing.assert_allclose(sg, grad, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(guided_sg, guided, rtol=1e-5, atol=1e-7)
  assert np.isfinite(np.asarray(noisy)).all()
  assert np.abs(np.asarray(noisy) - np.asarray(guided)).max() > 1e-6


def test_noise_std_is_fraction_of_image_range():
  # E[2a(x+g)] = 2ax and E[(2a(x+g))^2] = 4a^2 (x^2 + sigma^2), sigma = level * (max - min).
  rng = np.random.default_rng(0)
  x = rng.uniform(0.2, 0.6, size=(2, 2, 2, 1)).astype(np.float32)
  x[0, 0, 0, 0], x[0, 1, 1, 0] = 0.2, 0.6   # image 0 spans 0.4
  x[1, 0, 0, 0], x[1, 1, 1, 0] = 0.3, 0.4   # image 1 spans 0.1
  params = {'a': jnp.full((2, 2, 1), 0.5)}
  target = np.zeros(2, np.int32)
  level, n = 0.5, 4000
  sigma = np.array([0.2, 0.05])[:, None, None, None]
  run = jax.jit(lambda xx, sq: saliency.smoothgrad(
      _quadratic, params, xx, target, key=jax.random.key(3), num_samples=n,
      noise_level=level, squared=sq, batch_size=1000), static_argnums=1)
  mean = run(x, False)
  np.testing.assert_allclose(mean, x, atol=5 * sigma.max() / np.sqrt(n))
  second = run(x, True)
  # Var of (x+g)^2 is 4x^2 s^2 + 2 s^4; 5 standard errors.
  tol = 5 * np.sqrt(4 * 0.6**2 * 0.2**2 + 2 * 0.2**4) / np.sqrt(n)
  np.testing.assert_allclose(second, x**2 + sigma**2, atol=tol)


def test_chunked_equals_unchunked(small):
  apply_fn, variables, x, target = small
  run = jax.jit(lambda: [saliency.smoothgrad(apply_fn, variables, x, target,
                                             key=jax.random.key(5), num_samples=7,
                                             batch_size=bs) for bs in (3, None)])
  chunked, unchunked = run()
  np.testing.assert_allclose(chunked, unchunked, rtol=1e-5, atol=1e-7)


def test_key_errors(small):
  apply_fn, variables, x, target = small
  with pytest.raises(ValueError, match='key=jax.random.key'):
    saliency.smoothgrad(apply_fn, variables, x, target)
  with pytest.raises(TypeError, match='key must be a typed PRNG key'):
    saliency.smoothgrad(apply_fn, variables, x, target, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r'key must be a single key .*shape \(2,\)'):
    saliency.smoothgrad(apply_fn, variables, x, target, key=jax.random.split(jax.random.key(0), 3))
  with pytest.raises(ValueError, match='num_samples'):
    saliency.smoothgrad(apply_fn, variables, x, target, key=jax.random.key(0), num_samples=0)
