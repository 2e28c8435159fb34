"""Which form of the batched step is PyTorch's fastest on this machine?

    .venv/bin/python benchmarks/torch_forms.py SIZE LAYOUT RUNS [STEPS [REPEATS]]
    .venv/bin/python benchmarks/torch_forms.py paper-d1000 shared 256

For one bench case, from the same initial state, times in rotation (medians of REPEATS calls
of STEPS steps, default 10 and 5, each from a settled process, 2 threads):

- ``bmm``: ``benchmarks/torch_step.py``, what ``jaxprune bench`` compares with: the gradient
  in closed form, each seed group's products one ``bmm`` / ``baddbmm``;
- ``vmap``: ``torch.func.vmap`` over groups and runs of ``torch.func.grad`` of one run's
  loss (autodiff), then ``W <- M * (W - lr grad)``;
- ``compiled``: the ``bmm`` step as a pure function under ``torch.compile`` (inductor),
  ``TorchStep.compiled``;
- ``advance``: jaxprune's step as a sweep runs it, for scale: calls of one segment,
  ``eval_every`` steps (about half of a 10-step call of the kernel formulation is its set-up).

Before timing, checks that each PyTorch form gives ``bmm``'s weights after STEPS steps
(float32 rounding) and prints the largest difference. Needs ``pip install -e '.[bench]'``.
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxprune import bench  # noqa: E402

USAGE = f"""usage: benchmarks/torch_forms.py SIZE LAYOUT RUNS [STEPS [REPEATS]]
  SIZE: {", ".join(bench.SIZE_SETS)}; LAYOUT: shared or seeds; RUNS, STEPS (default 10) and
  REPEATS (default 5): positive integers
example: .venv/bin/python benchmarks/torch_forms.py paper-d1000 shared 256"""


def vmap_step(base):
    """``W <- M * (W - lr dL/dW)`` for every run, ``dL/dW`` by ``torch.func.grad`` of one
    run's loss under two ``vmap``s (groups, then the runs sharing a group's data). No
    divergence check: every run of the benchmark stays finite."""
    import torch
    from torch.func import grad, vmap

    S, G, m, n, d, s = base.S, base.G, base.m, base.n, base.d, base.s

    def loss(w, z, y, clean, weight, coef, noise_std, signal):  # one run: w (2, m, d)
        hn = noise_std * (w @ z.T)  # (2, m, n)
        hs = (signal * base.inv_sqrt_s) * w[..., :s].sum(-1, keepdim=True) * clean
        f = ((base._act(hn) + base._act(hs)) * coef).sum((0, 1))
        return (weight * torch.nn.functional.softplus(-y * f)).sum()

    runs = vmap(grad(loss), in_dims=(0, None, 0, None, 0, 0, 0, 0))
    groups = vmap(runs)
    w = base.w.view(S, G, 2, m, d)
    mask = ~base.pruned.view(S, G, 2, m, d)
    args = (base.z, base.y, base.clean.view(S, n), base.weight, base.coef,
            base.noise_std.view(S, G), base.signal.view(S, G))
    lr = base.lr

    def step():
        with torch.no_grad():
            g = groups(w, *args)
            w.sub_(lr * g).mul_(mask)
    return step


def main(size, layout, runs, steps=10, repeats=5):
    runs, steps, repeats = int(runs), int(steps), int(repeats)
    torch_step, why = bench.load_torch_step()
    if torch_step is None:
        sys.exit(why)
    d, n, m = bench.SIZE_SETS[size]
    static = bench.case_static(bench.Case(size, d, n, m, runs, layout))
    params, seeds = bench.case_inputs(static)
    advance = bench.AdvanceRunner(static, params, seeds)
    state0, groups = advance.initial()
    forms = {name: bench.TorchRunner(torch_step, static, params, state0, groups).impl
             for name in ("bmm", "vmap", "compiled")}
    calls = {"bmm": forms["bmm"].step, "vmap": vmap_step(forms["vmap"]),
             "compiled": forms["compiled"].compiled()}
    for name, call in calls.items():  # the same weights as bmm after STEPS steps
        for _ in range(steps):
            call()
    scale = abs(forms["bmm"].weights()).max()
    for name in ("vmap", "compiled"):
        diff = abs(forms[name].weights() - forms["bmm"].weights()).max() / scale
        print(f"{name}: weights after {steps} steps within {diff:.1e} of bmm's (of the largest)")

    def repeat(call):
        return lambda: [call() for _ in range(steps)]
    segments = {name: repeat(call) for name, call in calls.items()}
    segments["advance"] = lambda: advance.run_steps(static.eval_every)
    times = bench._interleaved(segments, repeats)
    print(f"{size} {layout} R={runs}, calls of {steps} steps ({static.eval_every} for advance), "
          f"medians of {repeats}:")
    for name, t in times.items():
        rate = runs * (static.eval_every if name == "advance" else steps) / statistics.median(t)
        print(f"  {name:9s} {rate:12,.0f} run-steps/s  (calls {min(t):.3f}-{max(t):.3f} s)")


if __name__ == "__main__":
    main(*bench.script_args(USAGE, lambda a: (
        3 <= len(a) <= 5 and a[0] in bench.SIZE_SETS and a[1] in bench.LAYOUTS
        and bench.positive_ints(a[2:]))))
