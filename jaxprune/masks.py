"""Pruning masks at initialization: bernoulli or exact, nested within a seed.

Nested masks draw one score ``u ~ U(0, 1)`` per weight and seed and keep the weights whose
score clears the fraction: ``u >= p`` (bernoulli, kept with probability ``1 - p``) or the
``round((1 - p) d)`` highest scores of each filter (exact). A mask at a larger ``p`` is then a
subset of the mask at a smaller ``p``. Non-nested masks draw fresh scores for every fraction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxprune.data import filter_rows, stream_key, uniform
from jaxprune.spec import Static

__all__ = ["valid_weights", "prune_mask", "kept_count", "signal_filters"]


def valid_weights(d: jax.Array, width: jax.Array, static: Static) -> jax.Array:
    """``(2, m, d)`` bool: the entries that exist for a run of true size ``d`` and ``width``."""
    coords = jnp.arange(static.d) < d
    filters = jnp.arange(static.width) < width
    return jnp.broadcast_to(filters[:, None] & coords[None, :], (2, static.width, static.d))


def kept_count(fraction: jax.Array, d: jax.Array) -> jax.Array:
    """Entries an exact mask keeps per filter: ``round((1 - p) d)``, halves rounded up.

    A decimal fraction that lands on a half (p = 0.9, d = 15) lands up to about ``eps d`` to
    either side of it in floating point (p's rounding, then the product's); a slack of twice
    that rounds it up in float32 and float64 alike, and moves nothing further from a half."""
    kept = (1.0 - fraction) * d
    slack = 2 * jnp.finfo(kept.dtype).eps * (d + 1)
    return jnp.floor(kept + 0.5 + slack).astype(jnp.int32)


def prune_mask(scores: jax.Array, seed: jax.Array, fraction: jax.Array, d: jax.Array,
               width: jax.Array, static: Static) -> jax.Array:
    """The ``(2, m, d)`` boolean mask of one run (True = kept).

    Args:
      scores: the seed's shared ``U(0, 1)`` scores (used when ``static.nested``).
      seed, fraction, d, width: the run's values.
    """
    if not static.nested:
        # Fresh scores per fraction: fold the fraction's bits into the seed's mask stream.
        bits = jax.lax.bitcast_convert_type(fraction.astype(jnp.float32), jnp.uint32)
        key = jax.random.fold_in(stream_key(seed, "mask"), bits)
        scores = filter_rows(key, static, lambda k, shape: uniform(k, shape, scores.dtype))
    valid = valid_weights(d, width, static)
    if static.mask == "bernoulli":
        return valid & (scores >= fraction)
    # Exact: rank the valid scores of each filter in decreasing order, keep the top k.
    order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1)
    return valid & (rank < kept_count(fraction, d))


def signal_filters(mask: jax.Array, static: Static) -> jax.Array:
    """Per class, the filters that keep at least one coordinate of the support of mu: ``(2,)``."""
    return jnp.sum(jnp.any(mask[..., : static.signal_support], axis=-1), axis=-1)
