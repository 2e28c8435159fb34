"""One pruned two-layer network: forward pass and loss.

    F_j(x) = a * sum_r pool_k sigma(<W[j,r], x_k> + b[j,r]),    f(x) = F_{+1}(x) - F_{-1}(x)

with ``sigma(z) = max(z, 0)^q``, patches ``x_1 = y~ mu`` and ``x_2 = xi = noise_std * z``, and
``W`` already pruned (zero where the mask is). Because ``mu`` is fixed, ``<W[j,r], y~ mu>`` is
``y~ * signal_norm * <W[j,r], u>`` with ``u = mu / |mu|``: the product with ``u`` is computed
once per network, and only the noise patch costs a matrix product. Pooling is a sum or a mean,
so ``f`` is the sum of the patches' shares: ``signal_share`` and ``patch_logit`` of the noise
patch's ``noise_preactivation``. Class index 0 is ``j = +1`` and index 1 is ``j = -1``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxprune.data import CLEAN_LABELS
from jaxprune.spec import Static

__all__ = ["Network", "Context", "activation", "patch_logit", "noise_preactivation",
           "signal_share", "example_loss", "CLASS_SIGN"]

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


def noise_preactivation(noise_proj: jax.Array, b: jax.Array | None, ctx: Context) -> jax.Array:
    """``sigma_p <W[j,r], z> + b`` from the projections ``(2, m, ...)`` (``b`` broadcast
    against them)."""
    h = ctx.noise_std * noise_proj
    return h if b is None else h + b


def signal_share(signal_proj: jax.Array, b: jax.Array | None, clean: jax.Array, ctx: Context,
                 static: Static) -> jax.Array:
    """The signal patch's share of ``f`` for examples of clean labels ``clean`` ``(N,)``, from
    ``<W[j,r], u>`` ``(2, m)``: its pre-activation ``y~ |mu| <W[j,r], u> + b`` has one value per
    label, so ``patch_logit`` is formed at ``y~ = +1`` and ``-1`` and picked by a one-hot
    product (no ``(2, m, N)`` array)."""
    labels = jnp.asarray(CLEAN_LABELS, signal_proj.dtype)
    h = signal_proj[..., None] * (ctx.signal_norm * labels)  # (2, m, 2)
    if b is not None:
        h = h + b[..., None]
    picks = (clean[:, None] == labels).astype(signal_proj.dtype)  # (N, 2)
    return picks @ patch_logit(h, ctx, static)


def example_loss(margin: jax.Array) -> jax.Array:
    """Logistic loss ``log(1 + exp(-y f))`` of the margin ``y f``, stable for any sign."""
    return jax.nn.softplus(-margin)
