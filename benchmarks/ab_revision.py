"""A/B of the training step: ``jaxprune/train.py`` of a git revision against the working tree.

    .venv/bin/python benchmarks/ab_revision.py REV SIZE LAYOUT RUNS STEPS [REPEATS]
    .venv/bin/python benchmarks/ab_revision.py a39ed9a paper-d1000 seeds 256 6

Loads the revision's ``train.py`` beside the working tree's (the rest of the package is the
working tree's, so the two must share its interfaces), compiles both ``train_steps`` for one
bench case (``jaxprune.bench.SIZE_SETS``, layout ``shared`` or ``seeds``), then times calls of
STEPS steps in alternation (``bench._interleaved``), after one warm-up call each.
Prints XLA's temporary bytes of each program, the median run-steps per second, the per-repeat
speed ratio new / old, and how far apart the final weights are.
"""

import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jaxprune import bench, train  # noqa: E402


def train_at(rev: str):
    """The module ``jaxprune/train.py`` as it is at ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:jaxprune/train.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "train_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("train_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(rev, size, layout, runs, steps, repeats=12):
    runs, steps, repeats = int(runs), int(steps), int(repeats)
    d, n, m = bench.SIZE_SETS[size]
    static = bench.case_static(bench.Case(size, d, n, m, runs, layout))
    params, seeds = bench.case_inputs(static)
    groups = train.make_groups(seeds, static)
    programs = {}
    for name, module in (("old", train_at(rev)), ("new", train)):
        state = train.init_state(params, groups, static)
        gram = train.build_gram(state.mask, groups, static)
        compiled = module.train_steps.lower(state, params, groups, jnp.int32(0), static=static,
                                            gram=gram).compile()
        print(f"{name}: temp {compiled.memory_analysis().temp_size_in_bytes / 1e6:.1f} MB",
              flush=True)
        programs[name] = (compiled, [state], gram)

    def runner(name):
        compiled, holder, gram = programs[name]

        def run():
            holder[0] = jax.block_until_ready(compiled(holder[0], params, groups,
                                                       jnp.int32(steps), gram=gram))
        return run

    runs_of = {name: runner(name) for name in programs}
    for run in runs_of.values():
        run()  # warm-up
    times = bench._interleaved(runs_of, repeats)
    for name in programs:
        per_step = statistics.median(times[name]) / steps
        print(f"{size} {layout} R={runs} kernel={static.kernel_step} [{name}] "
              f"{runs / per_step:,.0f} run-steps/s "
              f"{bench.step_flops(static) * runs / per_step / 1e9:.1f} GFLOP/s")
    ratio = sorted(a / b for a, b in zip(times["old"], times["new"]))
    print(f"  new/old speed per repeat: median {statistics.median(ratio):.3f}, "
          f"range {ratio[0]:.3f}-{ratio[-1]:.3f}")
    w_old, w_new = programs["old"][1][0].net.w, programs["new"][1][0].net.w
    print(f"  max |w_old - w_new| / max |w_old| = "
          f"{float(jnp.max(jnp.abs(w_old - w_new)) / jnp.max(jnp.abs(w_old))):.2e}")


if __name__ == "__main__":
    main(*sys.argv[1:])
