"""Batched training: the state of R runs and the jitted multi-step gradient descent.

The per-run functions below see one network; ``over_runs`` vmaps them outward once. A chunk's
R = S * G runs are laid out as S data groups (one seed each) of G runs: inside a group the
runs share their training set, so the G networks' products with the data become one large
matrix product instead of G small ones.

    L(W) = sum_i w_i softplus(-y_i f(x_i)),   w_i = 1/n for the run's n examples, 0 for padding
    W <- W - eta * (M * grad L(W))              (plain GD; optax momentum / adam likewise)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import masks
from jaxprune.data import GroupData, Samples, group_data, observed_labels
from jaxprune.model import (CLASS_SIGN, Context, Network, example_loss, output,
                            output_from_projections)
from jaxprune.spec import RunParams, Static

__all__ = ["TrainState", "Metrics", "MaskStats", "make_groups", "init_state", "advance",
           "evaluate", "mask_stats", "optimizer", "gradient", "context", "initial_network"]


class TrainState(NamedTuple):
    """The batched state; every leaf but ``step`` has a leading run axis R.

    Attributes:
      net: the networks (pruned entries exactly 0.0).
      opt_state: the optax state of every run (its learning rate included).
      mask: ``(R, 2, m, d)`` bool, True where a weight is kept.
      diverged: ``(R,)`` bool; a diverged run is frozen.
      step: the number of steps taken, a scalar.
    """

    net: Network
    opt_state: Any
    mask: jax.Array
    diverged: jax.Array
    step: jax.Array


class Metrics(NamedTuple):
    """Per-run measurements, each ``(R,)``."""

    train_loss: jax.Array
    train_error: jax.Array
    test_loss: jax.Array
    test_error: jax.Array
    signal_learning_pos: jax.Array
    signal_learning_neg: jax.Array
    noise_memorization: jax.Array


class MaskStats(NamedTuple):
    """What the masks fix at initialization, per run."""

    realized_fraction: jax.Array  # (R,) pruned share of the run's real weights
    signal_filters_pos: jax.Array  # (R,) filters of class +1 that see the signal support
    signal_filters_neg: jax.Array  # (R,) the same for class -1


# ---------------------------------------------------------------------------------------------
# One run.


def optimizer(static: Static, learning_rate) -> optax.GradientTransformation | None:
    """The optax optimizer of a momentum or adam run, with its learning rate held in its state
    (so it can be swept); None for plain GD, whose update the step applies itself."""
    if static.optimizer == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
    if static.optimizer == "momentum":
        return optax.inject_hyperparams(optax.sgd, static_args=("momentum",))(
            learning_rate=learning_rate, momentum=static.momentum)
    return None


def context(p: RunParams, static: Static) -> Context:
    """The run's forward-pass constants; ``a = 1/m`` (mean) or 1 (sum) on real filters only."""
    dtype = static.float_dtype
    scale = 1.0 / p.width.astype(dtype) if static.output_scale == "mean" else 1.0
    weight = jnp.where(jnp.arange(static.width) < p.width, scale, 0.0).astype(dtype)
    return Context(p.signal_norm, p.noise_std, weight)


def sample_weights(count: jax.Array, padded: int, dtype) -> jax.Array:
    """``1/count`` for the first ``count`` examples, 0 for padding."""
    return jnp.where(jnp.arange(padded) < count, 1.0 / count.astype(dtype), 0.0).astype(dtype)


def signal_projection(w: jax.Array, static: Static) -> jax.Array:
    """``<W[j,r], u>`` with ``u = 1_S / sqrt(s)``, computed on the support only: ``(2, m)``."""
    s = static.signal_support
    return jnp.sum(w[..., :s], axis=-1) / jnp.sqrt(jnp.asarray(s, w.dtype))


def outputs(net: Network, ctx: Context, samples: Samples, static: Static) -> jax.Array:
    """``f(x_i)`` for every example of a sample set: ``(N,)``."""
    proj = signal_projection(net.w, static)
    return jax.vmap(lambda c, z: output(net, ctx, proj, c, z, static))(
        samples.clean, samples.noise)


def initial_network(p: RunParams, g: GroupData, mask: jax.Array, static: Static) -> Network:
    """``W(0) = scale * base * M``: N(0, init_std^2) or U(-1/sqrt(d), 1/sqrt(d)) draws."""
    dtype = static.float_dtype
    if static.init == "normal":
        w = p.init_std * g.init_base
    else:
        w = g.init_base / jnp.sqrt(p.d.astype(dtype))
    w = jnp.where(mask, w, 0.0).astype(dtype)
    if not static.bias:
        return Network(w, None)
    real = jnp.arange(static.width) < p.width
    b = g.bias_base / jnp.sqrt(p.d.astype(dtype)) if static.init == "uniform_fan_in" else 0.0
    return Network(w, jnp.where(real, b, 0.0).astype(dtype))


def _init_run(p: RunParams, g: GroupData, static: Static):
    mask = masks.prune_mask(g.mask_scores, p.seed, p.fraction, p.d, p.width, static)
    net = initial_network(p, g, mask, static)
    opt = optimizer(static, p.learning_rate)
    return net, (opt.init(net) if opt else ()), mask


def _loss_factors(net: Network, p: RunParams, g: GroupData, static: Static):
    """The loss and its derivatives in the network's two linear maps.

    With ``P = W Z^T`` (every filter's projection on every example's standardized noise) and
    ``c = <W, u>``, the loss is a function of ``(c, P, b)``: autodiff gives ``dL/dc``,
    ``dL/dP`` and ``dL/db``, and ``grad_W L = (dL/dP) Z + (dL/dc) u^T`` (see ``gradient``).
    Written this way, the runs of a group share one product with their data forward and one
    backward.

    Returns:
      ``(loss, dL/dc, dL/dP, dL/db)``; ``dL/dP`` is ``(2, m, n)``, ``dL/db`` None without bias.
    """
    ctx = context(p, static)
    labels = observed_labels(g.train, p.label_flip)
    weights = sample_weights(p.n, static.n, static.float_dtype)

    def loss_of(signal_proj, noise_proj, b):
        f = jax.vmap(lambda c, h: output_from_projections(signal_proj, h, b, c, ctx, static),
                     in_axes=(0, 2))(g.train.clean, noise_proj)
        return jnp.sum(weights * example_loss(labels * f))

    noise_proj = jnp.einsum("jmd,nd->jmn", net.w, g.train.noise)
    loss, grads = jax.value_and_grad(loss_of, argnums=(0, 1, 2))(
        signal_projection(net.w, static), noise_proj, net.b)
    return (loss, *grads)


def _support_gradient(d_signal: jax.Array, static: Static) -> jax.Array:
    """``dL/dW`` on the signal support: ``dL/dc / sqrt(s)`` on each of the first s columns."""
    return d_signal[..., None] / jnp.sqrt(jnp.asarray(static.signal_support, d_signal.dtype))


def gradient(net: Network, p: RunParams, g: GroupData, static: Static):
    """``(L(W), grad L(W))`` of one run, before masking."""
    loss, d_signal, d_noise, d_b = _loss_factors(net, p, g, static)
    s = static.signal_support
    grad_w = jnp.einsum("jmn,nd->jmd", d_noise, g.train.noise)
    return loss, Network(grad_w.at[..., :s].add(_support_gradient(d_signal, static)), d_b)


def _step_run(net, opt_state, mask, diverged, p: RunParams, g: GroupData, static: Static):
    """One step of one run; a run whose loss is not finite is frozen and marked diverged.

    For GD the learning rate is folded into the small ``(2, m, n)`` factor ``dL/dP`` before
    the product with the data, making ``W <- M * (W - (eta dL/dP) Z - ...)`` one pass over W.
    """
    opt = optimizer(static, 0.0)  # momentum / adam read the learning rate from opt_state
    if opt is None:
        loss, d_signal, d_noise, d_b = _loss_factors(net, p, g, static)
        moving = jnp.isfinite(loss) & ~diverged
        eta = p.learning_rate
        # A frozen run's factors are exact zeros (a select, so that NaN cannot leak through).
        step_noise = jnp.where(moving, eta * d_noise, 0.0)
        step_support = jnp.where(moving, eta * _support_gradient(d_signal, static), 0.0)
        on_support = jnp.arange(static.d) < static.signal_support
        # One fusion: W is read and written once per step besides the product above.
        w = jnp.where(mask, net.w - jnp.einsum("jmn,nd->jmd", step_noise, g.train.noise)
                      - jnp.where(on_support, step_support, 0.0), 0.0)
        b = None if net.b is None else net.b - jnp.where(moving, eta * d_b, 0.0)
        return Network(w, b), opt_state, diverged | ~jnp.isfinite(loss)

    loss, grads = gradient(net, p, g, static)
    grads = grads._replace(w=jnp.where(mask, grads.w, 0.0))
    updates, new_opt_state = opt.update(grads, opt_state, net)
    new_net = optax.apply_updates(net, updates)
    moving = jnp.isfinite(loss) & ~diverged

    def keep(new, old):
        return jax.tree.map(lambda a, b: jnp.where(moving, a, b), new, old)

    return keep(new_net, net), keep(new_opt_state, opt_state), diverged | ~jnp.isfinite(loss)


def _metrics_run(net: Network, mask, p: RunParams, g: GroupData, static: Static):
    dtype = static.float_dtype
    ctx = context(p, static)
    real_filter = jnp.arange(static.width) < p.width

    def loss_and_error(samples, count, padded):
        labels = observed_labels(samples, p.label_flip)
        weights = sample_weights(count, padded, dtype)
        margin = labels * outputs(net, ctx, samples, static)
        # A non-finite margin counts as an error.
        error = jnp.sum(weights * jnp.where(margin > 0, 0.0, 1.0))
        return jnp.sum(weights * example_loss(margin)), error, labels, weights

    train_loss, train_error, labels, weights = loss_and_error(g.train, p.n, static.n)
    test_loss, test_error, _, _ = loss_and_error(g.test, p.n_test, static.n_test)

    dw = net.w - initial_network(p, g, mask, static).w
    # Signal learning: max_r j <dW[j,r], mu> per class j.
    learned = jnp.asarray(CLASS_SIGN, dtype)[:, None] * p.signal_norm * signal_projection(
        dw, static)
    learned = jnp.max(jnp.where(real_filter, learned, -jnp.inf), axis=-1)
    # Noise memorization: mean_i max_r <dW[y_i,r], xi_i>.
    # Written as the forward pass writes it (one example at a time), so a run's value does not
    # depend on how many runs share its batch.
    proj = p.noise_std * jax.vmap(lambda z: dw @ z)(g.train.noise)
    own = jnp.where(labels[:, None] > 0, proj[:, 0, :], proj[:, 1, :])
    memorized = jnp.sum(weights * jnp.max(jnp.where(real_filter, own, -jnp.inf), axis=-1))
    return Metrics(train_loss, train_error, test_loss, test_error, learned[0], learned[1],
                   memorized)


def _mask_stats_run(mask, p: RunParams, static: Static):
    dtype = static.float_dtype
    total = (2 * p.width * p.d).astype(dtype)
    kept = jnp.sum(mask, dtype=jnp.int32).astype(dtype)
    per_class = masks.signal_filters(mask, static)
    return MaskStats(1.0 - kept / total, per_class[0], per_class[1])


# ---------------------------------------------------------------------------------------------
# R runs: S data groups of G runs.


def over_runs(fn, static: Static):
    """Maps ``fn(*run_args, group)`` over R = S * G runs; run args have a leading R axis,
    ``group`` a leading S axis, results a leading R axis."""
    S, G = static.groups, static.group_size

    def batched(*args):
        *run_args, group = args
        split = jax.tree.map(lambda a: a.reshape((S, G) + a.shape[1:]), run_args)
        inner = jax.vmap(lambda *a: fn(*a[:-1], group=a[-1]),
                         in_axes=(0,) * len(run_args) + (None,))
        out = jax.vmap(inner)(*split, group)
        return jax.tree.map(lambda a: a.reshape((S * G,) + a.shape[2:]), out)

    return batched


@functools.partial(jax.jit, static_argnames="static")
def make_groups(seeds: jax.Array, static: Static) -> GroupData:
    """The data and draws of each of the S seeds, ``(S, ...)``."""
    return jax.vmap(lambda s: group_data(s, static))(seeds)


@functools.partial(jax.jit, static_argnames="static")
def init_state(params: RunParams, groups: GroupData, static: Static) -> TrainState:
    """Masks, initial networks and optimizer states of the R runs."""
    init = over_runs(lambda p, group: _init_run(p, group, static), static)
    net, opt_state, mask = init(params, groups)
    return TrainState(net, opt_state, mask, jnp.zeros(static.runs, bool),
                      jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnames="static")
def evaluate(state: TrainState, params: RunParams, groups: GroupData,
             static: Static) -> Metrics:
    """Every run's metrics at the current step."""
    metrics = over_runs(lambda net, m, p, group: _metrics_run(net, m, p, group, static), static)
    return metrics(state.net, state.mask, params, groups)


@functools.partial(jax.jit, static_argnames="static")
def mask_stats(state: TrainState, params: RunParams, static: Static) -> MaskStats:
    """Realized pruning fraction and signal-carrying filters of every run."""
    return jax.vmap(lambda m, p: _mask_stats_run(m, p, static))(state.mask, params)


@functools.partial(jax.jit, static_argnames="static", donate_argnums=0)
def advance(state: TrainState, params: RunParams, groups: GroupData, num_steps: jax.Array,
            static: Static) -> tuple[TrainState, Metrics]:
    """``num_steps`` GD steps of every run (one ``fori_loop``), then the metrics.

    ``num_steps`` is traced, so segments of any length share one program.
    """
    step = over_runs(lambda net, o, m, dv, p, group: _step_run(net, o, m, dv, p, group, static),
                     static)

    # Only what changes is carried; the mask and data are loop constants.
    def body(_, carry):
        return step(*carry[:2], state.mask, carry[2], params, groups)

    net, opt_state, diverged = jax.lax.fori_loop(
        0, num_steps, body, (state.net, state.opt_state, state.diverged))
    state = state._replace(net=net, opt_state=opt_state, diverged=diverged,
                           step=state.step + num_steps)
    return state, evaluate(state, params, groups, static)
