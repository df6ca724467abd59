"""Type aliases shared across advsal_jax."""

from typing import Any, Callable

import jax

Params = Any
"""A pytree of model variables, e.g. a flax variables dict ``{'params': ..., 'batch_stats': ...}``."""

PRNGKey = jax.Array
"""A typed PRNG key from ``jax.random.key``."""

ApplyFn = Callable[[Params, jax.Array], jax.Array]
"""``apply_fn(params, x f32[B,H,W,C] in [0,1]) -> logits f32[B,K]`` (e.g. flax ``model.apply``)."""
