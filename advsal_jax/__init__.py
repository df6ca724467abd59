"""advsal_jax: saliency maps under adversarial attack, in JAX/Flax."""

__version__ = '0.1.0'

from advsal_jax import attacks
from advsal_jax import checkpoints
from advsal_jax import compilation
from advsal_jax import data
from advsal_jax import detection
from advsal_jax import metrics
from advsal_jax import models
from advsal_jax import parallel
from advsal_jax import perturbation
from advsal_jax import rewrites
from advsal_jax import saliency
from advsal_jax import training
from advsal_jax.types import ApplyFn, Params, PRNGKey

__all__ = [
    'ApplyFn',
    'Params',
    'PRNGKey',
    '__version__',
    'attacks',
    'checkpoints',
    'compilation',
    'data',
    'detection',
    'metrics',
    'models',
    'parallel',
    'perturbation',
    'rewrites',
    'saliency',
    'training',
]
