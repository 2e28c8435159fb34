"""One pruned two-layer network on one example: forward pass, loss and metrics.

    F_j(x) = a * sum_r pool_k sigma(<W[j,r], x_k> + b[j,r]),    f(x) = F_{+1}(x) - F_{-1}(x)

with ``sigma(z) = max(z, 0)^q``, patches ``x_1 = y~ mu`` and ``x_2 = xi = noise_std * z``, and
``W`` already pruned (zero where the mask is). Because ``mu`` is fixed, ``<W[j,r], y~ mu>`` is
``y~ * signal_norm * <W[j,r], u>`` with ``u = mu / |mu|``: under ``vmap`` over examples the
product with ``u`` is computed once per network, and only the noise patch costs a matrix
product. Class index 0 is ``j = +1`` and index 1 is ``j = -1``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxprune.spec import Static

__all__ = ["Network", "Context", "activation", "preactivations", "patch_logit",
           "output_from_preactivations", "output", "example_loss", "CLASS_SIGN"]

#: ``j`` for class index 0 and 1.
CLASS_SIGN = (1.0, -1.0)


class Network(NamedTuple):
    """Trainable parameters of one network: ``w`` ``(2, m, d)`` and ``b`` ``(2, m)`` or None."""

    w: jax.Array
    b: jax.Array | None


class Context(NamedTuple):
    """Per-run constants of the forward pass.

    Attributes:
      signal_norm: ``|mu|``.
      noise_std: ``sigma_p``.
      filter_weight: ``(m,)``: ``a`` for the run's real filters, 0 for padding.
    """

    signal_norm: jax.Array
    noise_std: jax.Array
    filter_weight: jax.Array


def activation(z: jax.Array, q: float) -> jax.Array:
    """``sigma(z) = max(z, 0)^q``; integer powers are exact products."""
    relu = jnp.maximum(z, 0.0)
    if float(q).is_integer():
        return relu if q == 1 else jax.lax.integer_pow(relu, int(q))
    return relu**q


def patch_logit(h: jax.Array, ctx: Context, static: Static) -> jax.Array:
    """One patch's share of ``f``: ``a * sum_{j,r} j * sigma(h[j,r])`` (halved for mean
    pooling) from its pre-activations ``(2, m, ...)``, keeping the trailing axes."""
    pooled = activation(h, static.activation_power)
    if static.patch_pool == "mean":
        pooled = 0.5 * pooled
    weight = ctx.filter_weight.reshape(ctx.filter_weight.shape + (1,) * (pooled.ndim - 2))
    # A multiply-and-sum over the filters: written as a product with the weights, XLA:CPU
    # first transposes the (2, m, n) pre-activations of every run (the loss head then ran
    # 1.5x slower, benchmarks/RESULTS.md).
    logits = jnp.sum(pooled * weight, axis=1)
    return logits[0] - logits[1]


def output_from_preactivations(h_signal: jax.Array, h_noise: jax.Array, ctx: Context,
                               static: Static) -> jax.Array:
    """``f(x) = a * sum_{j,r} j * pool(sigma(h_signal[j,r]), sigma(h_noise[j,r]))`` from the
    pre-activations on the two patches, each ``(2, m, ...)``: pooling is a sum or a mean, so
    ``f`` is the sum of the patches' ``patch_logit``."""
    return patch_logit(h_signal, ctx, static) + patch_logit(h_noise, ctx, static)


def preactivations(signal_proj: jax.Array, noise_proj: jax.Array, b: jax.Array | None,
                   clean: jax.Array, ctx: Context) -> tuple[jax.Array, jax.Array]:
    """``(y~ |mu| <W[j,r], u> + b, sigma_p <W[j,r], z> + b)`` from the two projections."""
    h_signal = clean * ctx.signal_norm * signal_proj
    h_noise = ctx.noise_std * noise_proj
    if b is not None:
        h_signal, h_noise = h_signal + b, h_noise + b
    return h_signal, h_noise


def output(signal_proj: jax.Array, noise_proj: jax.Array, b: jax.Array | None,
           clean: jax.Array, ctx: Context, static: Static) -> jax.Array:
    """``f(x) = F_{+1}(x) - F_{-1}(x)`` for one example from its projections
    ``<W[j,r], u>`` and ``<W[j,r], z>`` (``z`` its standardized noise patch), each ``(2, m)``."""
    h_signal, h_noise = preactivations(signal_proj, noise_proj, b, clean, ctx)
    return output_from_preactivations(h_signal, h_noise, ctx, static)


def example_loss(margin: jax.Array) -> jax.Array:
    """Logistic loss ``log(1 + exp(-y f))`` of the margin ``y f``, stable for any sign."""
    return jax.nn.softplus(-margin)
