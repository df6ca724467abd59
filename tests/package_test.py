"""Import smoke test: the public API of every package is importable and listed in __all__."""

import importlib
import subprocess
import sys

import pytest

PACKAGES = ['advsal_jax', 'advsal_jax.attacks', 'advsal_jax.detection', 'advsal_jax.metrics',
            'advsal_jax.saliency']


@pytest.mark.parametrize('name', PACKAGES)
def test_public_api_is_importable(name):
  module = importlib.import_module(name)
  assert module.__all__, name
  for attr in module.__all__:
    assert hasattr(module, attr), f'{name}.{attr} is in __all__ but missing'


def test_the_library_does_not_import_the_benchmarks():
  code = ('import sys, advsal_jax; '
          'print(sorted(m for m in sys.modules if m.startswith("advsal_jax.benchmarks")))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]'
