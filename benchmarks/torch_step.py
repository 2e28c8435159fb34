"""A PyTorch implementation of the batched training step, for comparison in ``jaxprune bench``.

The gradient is written in closed form (no autograd graph), and each seed group's products
with its shared data are one batched matrix product, ``torch.bmm`` over the S groups of
``(G*2m x d) @ (d x n)`` and ``(G*2m x n) @ (n x d)``. The learning rate is folded into the
small ``(G*2m x n)`` factor so that the update ``W - lr * dH @ Z`` is one fused ``baddbmm``,
and the mask is applied after it (pruned weights are 0 before and after, so this equals
updating only the kept entries). ``benchmarks/torch_forms.py`` times it against
``torch.func.vmap`` of autodiff (always slower on the CPU here) and against
``TorchStep.compiled``, the same step under ``torch.compile`` (on the CPU faster at times at
R <= 64, slower from R = 256); ``jaxprune bench`` compares with the faster of the two.

For one run with ``W (2, m, d)``, per-example noise ``z_i``, clean label ``c_i``, label ``y_i``
and weight ``w_i`` (``1/n`` for real examples, 0 for padding)::

    hn[j,r,i] = sigma_p <W[j,r], z_i>,     hs[j,r,i] = c_i |mu| <W[j,r], u>
    f_i       = sum_j s_j sum_r a_r pool (act(hs) + act(hn)),   s = (+1, -1)
    L         = sum_i w_i softplus(-y_i f_i)
    g_i       = dL/df_i = -w_i y_i sigmoid(-y_i f_i)
    grad W[j,r] = sigma_p sum_i g_i s_j a_r pool act'(hn[j,r,i]) z_i
                  + u |mu| sum_i g_i s_j a_r pool act'(hs[j,r,i]) c_i
    W <- W - lr * M * grad W          (runs whose loss is not finite are frozen, as in jax)

Supported: plain gradient descent, any integer ``activation_power``, ``output_scale`` and
``patch_pool`` either way, no bias; anything else raises ``NotImplementedError``. PyTorch is an
optional extra (``pip install jaxprune[bench]``); this module imports it at import time.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["TorchStep"]


class TorchStep:
    """R = S * G runs as S groups of G runs that share their training data.

    Args:
      w: ``(R, 2, m, d)`` initial (already pruned) weights.
      mask: ``(R, 2, m, d)`` bool, True where kept.
      params: a ``RunParams``-like object of ``(R,)`` arrays (numpy or jax).
      noise: ``(S, n, d)`` standardized training noise ``z`` of each group.
      clean: ``(S, n)`` clean labels; ``flip_draw``: ``(S, n)`` label-flip draws.
      static: the ``Static`` of the chunk (sizes, options, ``groups`` and ``group_size``).
      threads: ``torch.set_num_threads`` value (None: leave PyTorch's default).
      device: where the tensors live and the step runs ("cpu" or "cuda").
      tf32: let CUDA's float32 products use TF32 (PyTorch's default is full float32).
    """

    def __init__(self, w, mask, params, noise, clean, flip_draw, static, threads: int | None = 2,
                 device: str = "cpu", tf32: bool = False):
        if static.optimizer != "gd" or static.bias:
            raise NotImplementedError("the torch step implements plain gd without bias only")
        if not float(static.activation_power).is_integer():
            raise NotImplementedError("the torch step implements integer activation powers")
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[static.dtype]
        S, G, m, d, n = static.groups, static.group_size, static.width, static.d, static.n
        self.S, self.G, self.m, self.d, self.n = S, G, m, d, n
        self.q = int(static.activation_power)
        self.s = static.signal_support
        self.pool = 0.5 if static.patch_pool == "mean" else 1.0
        t = lambda a, dt=self.dtype: torch.as_tensor(np.array(a, copy=True)).to(  # noqa: E731
            self.device, dt)

        self.w = t(w).reshape(S, G * 2 * m, d).contiguous()
        self.pruned = ~t(mask, torch.bool).reshape(S, G * 2 * m, d).contiguous()
        self.z = t(noise).reshape(S, n, d).contiguous()
        clean = t(clean).reshape(S, 1, n)
        self.clean = clean
        flip = t(flip_draw).reshape(S, 1, n) < t(params.label_flip).reshape(S, G, 1)
        self.y = torch.where(flip, -clean, clean)  # (S, G, n)
        count = t(params.n, torch.int64).reshape(S, G, 1)
        self.weight = torch.where(torch.arange(n, device=self.device).reshape(1, 1, n) < count,
                                  1.0 / count.to(self.dtype), 0.0).to(self.dtype)
        width = t(params.width, torch.int64).reshape(S, G, 1, 1)
        a = (1.0 / width.to(self.dtype)) if static.output_scale == "mean" else torch.ones_like(
            width, dtype=self.dtype)
        a = torch.where(torch.arange(m, device=self.device).reshape(1, 1, m, 1) < width, a,
                        0.0).to(self.dtype)
        sign = t([1.0, -1.0]).reshape(1, 1, 2, 1, 1)
        # d f / d pooled for every (run, class, filter): (S, G, 2, m, 1).
        self.coef = (sign * a.unsqueeze(2) * self.pool).contiguous()
        self.noise_std = t(params.noise_std).reshape(S, G, 1, 1, 1)
        self.signal = t(params.signal_norm).reshape(S, G, 1, 1, 1)
        self.lr = t(params.learning_rate).reshape(S, G, 1, 1, 1)
        self.diverged = torch.zeros(S, G, dtype=torch.bool, device=self.device)
        self.inv_sqrt_s = 1.0 / float(np.sqrt(self.s))

    def _forward(self):
        S, G, m, n = self.S, self.G, self.m, self.n
        hn = torch.bmm(self.w, self.z.transpose(1, 2)).view(S, G, 2, m, n)
        hn.mul_(self.noise_std)
        proj = self.w.view(S, G, 2, m, self.d)[..., : self.s].sum(-1, keepdim=True)
        hs = (self.signal * self.inv_sqrt_s) * proj * self.clean.view(S, 1, 1, 1, n)
        return hn, hs

    def _act(self, h):
        r = torch.relu(h)
        return r if self.q == 1 else r.pow(self.q)

    def _dact(self, h):
        if self.q == 1:
            return (h > 0).to(h.dtype)
        r = torch.relu(h)
        return self.q * (r if self.q == 2 else r.pow(self.q - 1))

    def _margin(self, hn, hs):
        pooled = self._act(hn) + self._act(hs)
        f = (pooled * self.coef).sum(dim=(2, 3))  # (S, G, n)
        return self.y * f

    def loss(self) -> np.ndarray:
        """The training loss of every run at the current weights, ``(R,)``."""
        with torch.no_grad():
            hn, hs = self._forward()
            loss = (self.weight * torch.nn.functional.softplus(-self._margin(hn, hs))).sum(-1)
        return loss.reshape(-1).cpu().numpy()

    def step(self) -> None:
        """One gradient-descent step of every run."""
        with torch.no_grad():
            S, G, m, n, d = self.S, self.G, self.m, self.n, self.d
            hn, hs = self._forward()
            margin = self._margin(hn, hs)
            loss = (self.weight * torch.nn.functional.softplus(-margin)).sum(-1)  # (S, G)
            g = -self.weight * self.y * torch.sigmoid(-margin)  # dL/df: (S, G, n)
            dpool = self.coef * g.view(S, G, 1, 1, n)  # (S, G, 2, m, n)
            moving = torch.isfinite(loss) & ~self.diverged
            self.diverged |= ~torch.isfinite(loss)
            step = self.lr * moving.view(S, G, 1, 1, 1).to(self.dtype)
            # Noise part: W -= (lr sigma_p dpool act'(hn)) @ Z, one fused baddbmm.
            dn = dpool * self._dact(hn) * (step * self.noise_std)
            # Signal part (support coordinates only): lr |mu| u sum_i dpool act'(hs) c_i.
            ds = (dpool * self._dact(hs) * self.clean.view(S, 1, 1, 1, n)).sum(-1, keepdim=True)
            ds = ds * (step * self.signal * self.inv_sqrt_s)
            # On the CPU, skip the masking when every run moves; on a GPU asking would wait
            # for the device every step.
            if self.device.type != "cpu" or not bool(moving.all()):
                frozen = ~moving.view(S, G, 1, 1, 1)
                dn = torch.where(frozen, 0.0, dn)
                ds = torch.where(frozen, 0.0, ds)
            self.w.baddbmm_(dn.view(S, G * 2 * m, n), self.z, alpha=-1.0)
            self.w.view(S, G, 2, m, d)[..., : self.s] -= ds
            self.w.masked_fill_(self.pruned, 0.0)

    def compiled(self):
        """``step`` as one pure function of the weights under ``torch.compile`` (inductor),
        divergence handled the same way; returns the call of one step. On the CPU faster than
        ``step`` at times at R <= 64, slower from R = 256 (``benchmarks/torch_forms.py``)."""
        S, G, m, n, d, s, q = self.S, self.G, self.m, self.n, self.d, self.s, self.q
        inv_sqrt_s, clean = self.inv_sqrt_s, self.clean.view(S, 1, 1, 1, n)

        def act(h):  # ``_act`` and ``_dact``, as closures: dynamo cannot import this module
            return torch.relu(h) ** q

        def dact(h):
            return (h > 0).to(h.dtype) if q == 1 else q * torch.relu(h) ** (q - 1)

        def step(w, diverged, z, pruned, y, weight, coef, noise_std, signal, lr):
            hn = torch.bmm(w, z.transpose(1, 2)).view(S, G, 2, m, n) * noise_std
            w5 = w.view(S, G, 2, m, d)
            hs = (signal * inv_sqrt_s) * w5[..., :s].sum(-1, keepdim=True) * clean
            margin = y * ((act(hn) + act(hs)) * coef).sum(dim=(2, 3))
            loss = (weight * torch.nn.functional.softplus(-margin)).sum(-1)
            dpool = coef * (-weight * y * torch.sigmoid(-margin)).view(S, G, 1, 1, n)
            moving = torch.isfinite(loss) & ~diverged
            rate = lr * moving.view(S, G, 1, 1, 1).to(w.dtype)
            dn = dpool * dact(hn) * (rate * noise_std)
            ds = (dpool * dact(hs) * clean).sum(-1, keepdim=True) * (rate * signal * inv_sqrt_s)
            w = torch.baddbmm(w, dn.view(S, G * 2 * m, n), z, alpha=-1.0).view(S, G, 2, m, d)
            w = torch.cat([w[..., :s] - ds, w[..., s:]], dim=-1).view(S, G * 2 * m, d)
            return w.masked_fill(pruned, 0.0), diverged | ~torch.isfinite(loss)

        # Static shapes, compiled afresh: one process compiles this step for every bench case,
        # which would otherwise turn shape-generic after the first and eager after dynamo's
        # recompile limit (8).
        torch._dynamo.reset()
        fn = torch.compile(step, dynamic=False)
        data = (self.z, self.pruned, self.y, self.weight, self.coef, self.noise_std, self.signal,
                self.lr)

        def one_step():
            with torch.no_grad():
                self.w, self.diverged = fn(self.w, self.diverged, *data)
        return one_step

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def weights(self) -> np.ndarray:
        """``(R, 2, m, d)``."""
        return self.w.reshape(self.S * self.G, 2, self.m, self.d).cpu().numpy().copy()
