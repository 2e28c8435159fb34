"""The direct GD step against its own two products, on the default backend:

    .venv/bin/python benchmarks/step_products.py [--runs 1024 4096] [--layouts shared seeds]
        [--hlo DIR]

For each case (n = 100, d = 1000, width = 50) it times, interleaved (medians of 5):

    projection  P' <- W Z'^T                       (S, F, d) x (S, n + 1, d) -> (S, F, n + 1)
    update      W <- where(M, W - [Dn, ds] Z', 0)   (S, F, n + 1) x (S, n + 1, d) -> (S, F, d)
    step        ``train.train_steps`` of the case, per step (both products, the loss
                factors, the bookkeeping)

as ``train._unblocked_step`` forms them (Z' = [Z; 1_S], ``train._support_noise``), with
F = 2 m G rows per group, each product about 2 F n d FLOP a group. The products alone bound
what the step can reach; the gap between their sum and the step is the rest of the step.
With ``--hlo`` the step's optimized HLO is written there (to read which kernels it became).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxprune import bench, train  # noqa: E402


def measure(runs: int, layout: str, steps: int, hlo: Path | None) -> None:
    case = bench.Case("paper-d1000", 1000, 100, 50, runs, layout)
    static = bench.case_static(case)
    S, G, m, n, d = static.groups, static.group_size, static.width, static.n, static.d
    F = G * 2 * m
    adv = bench.AdvanceRunner(static, *bench.case_inputs(static))
    w = adv.state.net.w.reshape(S, F, d)
    mask = adv.state.mask.reshape(S, F, d)
    z = train._support_noise(adv.groups.train.noise, static)
    factors = jnp.full((S, F, n + 1), 1e-6, w.dtype)

    def projection(w, z):
        return jnp.einsum("sfd,skd->sfk", w, z)

    def update(w, factors, mask, z):
        return jnp.where(mask, w - jnp.einsum("sfk,skd->sfd", factors, z), 0.0)

    with jax.default_matmul_precision("float32"):
        project = jax.jit(projection).lower(w, z).compile()
        update = jax.jit(update, donate_argnums=0).lower(w, factors, mask, z).compile()
    if hlo:
        hlo.mkdir(parents=True, exist_ok=True)
        (hlo / f"step_{layout}_R{runs}.txt").write_text(adv.steps_only.as_text())
        (hlo / f"update_{layout}_R{runs}.txt").write_text(update.as_text())

    state = {"w": w.copy()}

    def run_update():
        state["w"] = update(state["w"], factors, mask, z)
        state["w"].block_until_ready()

    parts = {"projection": lambda: project(w, z).block_until_ready(),
             "update": run_update,
             "step": lambda: adv.run_steps(steps)}
    seconds = {k: bench._median_seconds(f, repeats=5) for k, f in parts.items()}
    seconds["step"] /= steps
    flop = 2 * S * F * n * d
    print(f"{layout} R={runs}: S={S} F={F}")
    for k, s in seconds.items():
        work = 2 * flop if k == "step" else flop
        print(f"  {k:<10} {s * 1e3:8.3f} ms  {work / s / 1e12:6.2f} TFLOP/s")
    print(f"  step - (projection + update) = "
          f"{(seconds['step'] - seconds['projection'] - seconds['update']) * 1e3:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n")[0],
        epilog="example: .venv/bin/python benchmarks/step_products.py --runs 1024 "
               "--layouts shared")
    parser.add_argument("--runs", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--layouts", nargs="+", default=["shared", "seeds"],
                        choices=bench.LAYOUTS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hlo", type=Path)
    args = parser.parse_args()
    print(jax.devices()[0].device_kind, jax.__version__)
    for layout in args.layouts:
        for runs in args.runs:
            measure(runs, layout, args.steps, args.hlo)


if __name__ == "__main__":
    main()
