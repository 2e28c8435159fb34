"""An independent, literal implementation of one run, for checking the batched engine.

It shares only the random draws with jaxprune (``data.group_data`` at the run's own,
unpadded sizes). Everything else is written from ``paper.md`` directly: the full two-patch
inputs ``x_i = (y~_i mu, xi_i)``, the forward pass ``F_j = a sum_r pool_k sigma(<W~, x_k> + b)``
with ``W~ = W * M``, the mean logistic loss, ``jax.grad`` and a plain update loop, in float64.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune.data import group_data
from jaxprune.spec import Static, static_from_row


def run_static(row: dict) -> Static:
    """The run's own (unpadded) static description, in float64."""
    sizes = {k: row[k] for k in ("d", "n", "n_test", "width")}
    return dataclasses.replace(static_from_row(row, sizes, 1, 1), dtype="float64")


def reference_mask(scores: np.ndarray, fraction: float, kind: str) -> np.ndarray:
    """Bernoulli: keep ``u >= p``; exact: keep the ``round((1-p) d)`` largest scores per filter."""
    if kind == "bernoulli":
        return scores >= fraction
    d = scores.shape[-1]
    k = int(np.floor((1 - fraction) * d + 0.5))
    order = np.argsort(-scores, axis=-1, kind="stable")
    mask = np.zeros_like(scores, dtype=bool)
    np.put_along_axis(mask, order[..., :k], True, axis=-1)
    return mask


class Reference:
    """One run of the sweep row ``row``, trained for ``steps`` steps."""

    def __init__(self, row: dict):
        self.row = row
        static = run_static(row)
        g = jax.device_get(group_data(jnp.asarray(row["seed"], jnp.uint32), static))
        d, s = row["d"], row["signal_support"]
        self.mu = row["signal_norm"] / np.sqrt(s) * (np.arange(d) < s)
        self.mask = reference_mask(np.asarray(g.mask_scores), row["fraction"], row["mask"])
        if row["init"] == "normal":
            self.w0 = row["init_std"] * np.asarray(g.init_base) * self.mask
            b0 = np.zeros((2, row["width"]))
        else:
            self.w0 = np.asarray(g.init_base) / np.sqrt(d) * self.mask
            b0 = np.asarray(g.bias_base) / np.sqrt(d)
        self.b0 = b0 if row["bias"] else None
        self.train = self._inputs(g.train)
        self.test = self._inputs(g.test)

    def _inputs(self, samples):
        clean = np.asarray(samples.clean)
        y = np.where(np.asarray(samples.flip_draw) < self.row["label_flip"], -clean, clean)
        xi = self.row["noise_std"] * np.asarray(samples.noise)
        x = np.stack([clean[:, None] * self.mu[None, :], xi], axis=1)  # (N, 2 patches, d)
        return jnp.asarray(x), jnp.asarray(y), jnp.asarray(xi)

    def output(self, w, b, x):
        """``f(x) = F_{+1}(x) - F_{-1}(x)`` for inputs ``x`` of shape ``(N, 2, d)``."""
        row = self.row
        h = jnp.einsum("jrd,nkd->njrk", w * self.mask, x)
        if b is not None:
            h = h + b[None, :, :, None]
        act = jnp.maximum(h, 0.0) ** row["activation_power"]
        pooled = act.sum(-1) if row["patch_pool"] == "sum" else act.mean(-1)
        a = 1.0 / row["width"] if row["output_scale"] == "mean" else 1.0
        F = a * pooled.sum(-1)
        return F[:, 0] - F[:, 1]

    def loss(self, params, data):
        x, y, _ = data
        return jnp.mean(jnp.logaddexp(0.0, -y * self.output(params["w"], params.get("b"), x)))

    def params0(self):
        p = {"w": jnp.asarray(self.w0)}
        if self.b0 is not None:
            p["b"] = jnp.asarray(self.b0)
        return p

    def fit(self, steps: int):
        """Trains with the row's optimizer; returns the final parameters."""
        row = self.row
        lr = row["learning_rate"]
        opt = {"gd": optax.sgd(lr), "momentum": optax.sgd(lr, momentum=row["momentum"]),
               "adam": optax.adam(lr)}[row["optimizer"]]
        params = self.params0()
        state = opt.init(params)
        grad = jax.jit(jax.grad(lambda p: self.loss(p, self.train)))
        for _ in range(steps):
            updates, state = opt.update(grad(params), state, params)
            params = optax.apply_updates(params, updates)
        return params

    def metrics(self, params) -> dict[str, float]:
        out = {}
        for name, data in (("train", self.train), ("test", self.test)):
            x, y, _ = data
            margin = y * self.output(params["w"], params.get("b"), x)
            out[f"{name}_loss"] = float(jnp.mean(jnp.logaddexp(0.0, -margin)))
            out[f"{name}_error"] = float(jnp.mean((margin <= 0).astype(jnp.float64)))
        dw = (np.asarray(params["w"]) - self.w0) * self.mask
        signal = dw @ self.mu  # (2, m)
        out["signal_learning_pos"] = float(np.max(signal[0]))
        out["signal_learning_neg"] = float(np.max(-signal[1]))
        _, y, xi = self.train
        own = np.where(np.asarray(y)[:, None] > 0, 0, 1)  # class index of y_i
        proj = np.einsum("jrd,nd->njr", dw, np.asarray(xi))
        out["noise_memorization"] = float(np.mean(
            np.max(np.take_along_axis(proj, own[:, :, None], axis=1)[:, 0, :], axis=-1)))
        return out
