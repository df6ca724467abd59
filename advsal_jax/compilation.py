"""XLA compiler options chosen per backend, and a ``jit`` that compiles with them.

On XLA:CPU (jaxlib 0.10) convolutions are by default handed to the YNNPACK library. On the
2-core x86 machines this package is benchmarked on, that is slower than XLA's own (Eigen)
convolution for the small convolutions of CIFAR nets, forward and both gradients (the README
gives the timings). ``CPU_OPTIONS`` keeps YNNPACK for dot products only
(``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``), so convolutions take XLA's own path. The default
also sends reductions to YNNPACK; keeping that (``..._REDUCE``) slowed the model workloads,
so it is off too. Values are the same sums; the order in which they are added may differ
(float rounding). GPU and TPU get no options.

The options are for programs that run a conv net. A program of reductions and small matrix
products alone, such as study 000's three metrics, runs faster with XLA's defaults, which is
how ``advsal_jax.benchmarks`` compiles its metrics workload. Study 000's step computes
saliency, attacks and metrics in one program and compiles with the options: the model's share
of its time is far larger.

The binaries compile through ``jit`` (or pass ``compiler_options()`` to ``.compile``). A user
jitting this package's functions in their own code gets the same speed with
``jax.jit(fn, compiler_options=compilation.compiler_options())``.
"""

import functools
from typing import Any, Callable

from absl import logging
import jax
import numpy as np

CPU_OPTIONS: dict[str, str] = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}
"""XLA:CPU debug options (``DebugOptions`` field -> value) this package compiles with."""


@functools.cache
def _supported(name: str, value: str) -> bool:
  """Whether this jaxlib's CPU compiler accepts the option (experimental options come and go)."""
  try:
    x = jax.device_put(np.float32(0), jax.devices('cpu')[0])
    jax.jit(lambda x: x + 1).lower(x).compile(compiler_options={name: value})
  except (jax.errors.JaxRuntimeError, RuntimeError) as err:  # unknown option, or no CPU
    logging.warning('XLA:CPU option %s=%s is not available (%s); compiling without it.',
                    name, value, err)
    return False
  return True


def compiler_options(backend: str | None = None) -> dict[str, str]:
  """The compiler options for ``backend``.

  Args:
    backend: 'cpu', 'gpu', 'tpu', ...; default ``jax.default_backend()``.

  Returns:
    ``CPU_OPTIONS`` (those this jaxlib knows) on CPU, else ``{}``.
  """
  if (backend or jax.default_backend()) != 'cpu':
    return {}
  return {name: value for name, value in CPU_OPTIONS.items() if _supported(name, value)}


def jit(fn: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
  """``jax.jit(fn, **kwargs)`` compiled with ``compiler_options()`` of the default backend.

  Args:
    fn: any function ``jax.jit`` accepts.
    **kwargs: ``jax.jit``'s keywords; a ``compiler_options`` dict is merged over the
      package's (the caller's values win).

  Returns:
    The jitted ``fn``.
  """
  options = {**compiler_options(), **(kwargs.pop('compiler_options', None) or {})}
  return jax.jit(fn, compiler_options=options, **kwargs)
