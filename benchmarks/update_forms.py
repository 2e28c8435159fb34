"""Formulations of the unblocked direct step (an accelerator's), timed as loops of its two
products on the default backend:

    python benchmarks/update_forms.py [--runs 1024 4096] [--layouts shared seeds] [--hlo DIR]

Each form runs ``--steps`` steps of ``projection -> factors -> update`` in one jitted loop, on
the shapes of n = 100, d = 1000, width = 50 (W ``(S, F, d)``, F = 2 m G, Z ``(S, n, d)``), the
factors a cheap stand-in (``1e-9 P``: the loss head is small beside the products, and the
stand-in keeps each step depending on the last):

    blocked   ``train._direct_step`` at one block: P = W Z^T, <W, 1_S> apart, then
              where(M, W - Dn Z - ds 1_S^T, 0)  (the step before 2026-12-04 17:55 UTC)
    support   ``train._unblocked_step``: P' = W Z'^T with Z' = [Z; 1_S], then
              where(M, W - [Dn, ds] Z', 0)
    add       as ``support``, the update written W + (-[Dn, ds]) Z' (a bias-add GEMM)
    unmasked  V, unmasked, carries the steps (W = M * V): P' = where(M, V, 0) Z'^T, then
              V <- V - [Dn, ds] Z' (the mask moves from the update to the projection)

Every form does ``8 m n d`` FLOP a run-step (both products; the support row adds 1 %). The
fastest bounds what the step can reach on the device; with ``--hlo`` each form's optimized HLO
is written there.
"""

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxprune import bench, train  # noqa: E402


def _factors(proj):
    return 1e-9 * proj  # stands in for the loss head: (S, F, n + 1)


def blocked(w, mask, z, static):
    def step(_, w):
        proj = train._xla_projections(w, z)
        support = train._support_sum(w, static)[..., None]
        f = _factors(jnp.concatenate([proj, support], axis=-1))
        return train._blocked_update(w, f[..., :-1], f[..., -1:], mask, z, static,
                                     train.UNBLOCKED)
    return step


def support(w, mask, z, static, add=False):
    z1 = train._support_noise(z, static)

    def step(_, w):
        f = _factors(jnp.einsum("sfd,skd->sfk", w, z1))
        if add:
            return jnp.where(mask, w + jnp.einsum("sfk,skd->sfd", -f, z1), 0.0)
        return jnp.where(mask, w - jnp.einsum("sfk,skd->sfd", f, z1), 0.0)
    return step


def unmasked(w, mask, z, static):
    z1 = train._support_noise(z, static)

    def step(_, v):
        f = _factors(jnp.einsum("sfd,skd->sfk", jnp.where(mask, v, 0.0), z1))
        return v - jnp.einsum("sfk,skd->sfd", f, z1)
    return step


FORMS = {"blocked": blocked, "support": support,
         "add": functools.partial(support, add=True), "unmasked": unmasked}


def measure(runs: int, layout: str, steps: int, forms, hlo: Path | None) -> None:
    case = bench.Case("paper-d1000", 1000, 100, 50, runs, layout)
    static = bench.case_static(case)
    S, F, n, d = static.groups, static.group_size * 2 * static.width, static.n, static.d
    keys = jax.random.split(jax.random.key(0), 3)
    w0 = jax.random.normal(keys[0], (S, F, d), jnp.float32) * 1e-3
    mask = jax.random.uniform(keys[1], (S, F, d)) < 0.5
    w0 = jnp.where(mask, w0, 0.0)
    z = jax.random.normal(keys[2], (S, n, d), jnp.float32)
    flop = 4 * S * F * n * d  # a step: two products
    print(f"{layout} R={runs}: S={S} F={F}", flush=True)
    for name in forms:
        def loop(w, mask, z, name=name):
            with jax.default_matmul_precision("float32"):
                step = FORMS[name](w, mask, z, static)
                return jax.lax.fori_loop(0, steps, step, w)
        try:
            t = time.perf_counter()
            compiled = jax.jit(loop).lower(w0, mask, z).compile()
            compile_s = time.perf_counter() - t
            if hlo:
                hlo.mkdir(parents=True, exist_ok=True)
                (hlo / f"form_{name}_{layout}_R{runs}.txt").write_text(compiled.as_text())
            compiled(w0, mask, z).block_until_ready()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                compiled(w0, mask, z).block_until_ready()
                times.append((time.perf_counter() - t) / steps)
            s = statistics.median(times)
            print(f"  {name:<9} {s * 1e3:8.3f} ms/step  {flop / s / 1e12:6.2f} TFLOP/s  "
                  f"(compile {compile_s:.1f} s)", flush=True)
        except Exception as e:  # noqa: BLE001  (a form the backend cannot run: say so, go on)
            print(f"  {name:<9} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n")[0],
        epilog="example: .venv/bin/python benchmarks/update_forms.py --runs 1024 "
               "--layouts shared")
    parser.add_argument("--runs", type=int, nargs="+", default=[4096])
    parser.add_argument("--layouts", nargs="+", default=["shared", "seeds"],
                        choices=bench.LAYOUTS)
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--hlo", type=Path)
    args = parser.parse_args()
    print(jax.devices()[0].device_kind, jax.__version__, flush=True)
    for layout in args.layouts:
        for runs in args.runs:
            measure(runs, layout, args.steps, args.forms, args.hlo)


if __name__ == "__main__":
    main()
