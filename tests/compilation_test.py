"""advsal_jax.compilation: per-backend XLA options, accepted by this jaxlib, same results."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import compilation


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def test_only_cpu_gets_options():
  assert compilation.compiler_options('gpu') == {}
  assert compilation.compiler_options('tpu') == {}
  # This jaxlib (the one setup.cfg installs) knows every CPU option.
  assert compilation.compiler_options('cpu') == compilation.CPU_OPTIONS


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU options')
def test_convolutions_leave_the_library_fusion_with_the_same_values():
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (64, 16, 16, 32))  # conv2 of alexnet_cifar at batch 64
  w = jax.random.normal(kw, (3, 3, 32, 64)) / 17.
  grad = jax.grad(lambda x, w: jnp.sum(jnp.tanh(_conv(x, w))), argnums=(0, 1))
  default = jax.jit(grad).lower(x, w).compile()
  ours = jax.jit(grad, compiler_options=compilation.compiler_options()).lower(x, w).compile()
  assert '__ynn_fusion' in default.as_text()  # XLA's default hands convolutions to YNNPACK
  assert '__ynn_fusion' not in ours.as_text()
  assert ours.as_text().count('convolution(') == 3  # forward, input and kernel gradients
  for got, want in zip(compilation.jit(grad)(x, w), default(x, w)):
    # Same sums in another order: float32 rounding of 16,384-term kernel-gradient sums.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_an_option_this_jaxlib_lacks_is_dropped_with_a_warning(monkeypatch, caplog):
  monkeypatch.setattr(compilation, 'CPU_OPTIONS',
                      {**compilation.CPU_OPTIONS, 'xla_cpu_no_such_option': 'x'})
  with caplog.at_level('WARNING'):
    options = compilation.compiler_options('cpu')
  assert 'xla_cpu_no_such_option' not in options
  assert options.items() <= compilation.CPU_OPTIONS.items()
  assert 'xla_cpu_no_such_option' in caplog.text


def test_default_backend_decides_and_callers_options_win(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert compilation.compiler_options() == {}
  monkeypatch.undo()
  if jax.default_backend() != 'cpu':
    pytest.skip('XLA:CPU options')
  x, w = jnp.ones((64, 16, 16, 32)), jnp.ones((3, 3, 32, 64))
  xla_default = {'xla_cpu_experimental_ynn_fusion_type':
                 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'}
  ours = compilation.jit(_conv).lower(x, w).compile().as_text()
  theirs = compilation.jit(_conv, compiler_options=xla_default).lower(x, w).compile().as_text()
  assert '__ynn_fusion' not in ours and '__ynn_fusion' in theirs
