"""A/B of the training step, or of the evaluation: ``jaxprune/train.py`` of a git revision
against the working tree.

    .venv/bin/python benchmarks/ab_revision.py REV SIZE LAYOUT RUNS STEPS [REPEATS [FORMULATION]]
    .venv/bin/python benchmarks/ab_revision.py a39ed9a paper-d1000 seeds 256 6
    .venv/bin/python benchmarks/ab_revision.py a39ed9a paper-d1000 seeds 256 eval
    .venv/bin/python benchmarks/ab_revision.py a39ed9a paper-d1000 seeds 256 gram

Loads the revision's ``train.py``, ``model.py`` and ``cpu_update.py`` (with its own build of the
revision's ``cpu_update.cc``) beside the working tree's (the rest of the package is the working
tree's, so the two must share its interfaces), compiles both ``train_steps`` for one
bench case (``jaxprune.bench.SIZE_SETS``, layout ``shared`` or ``seeds``; plain GD's
formulation ``auto``, the engine's choice, unless FORMULATION is ``direct`` or ``kernel``),
then times calls of STEPS steps in alternation (``bench._interleaved``), after one warm-up
call each.
Prints XLA's temporary bytes of each program, the median run-steps per second, the per-repeat
speed ratio new / old, and how far apart the final weights are. With STEPS ``eval`` it times
``evaluate`` instead, with the sweep files' default number of test examples (the bench's
cases keep 100), after 50 steps, and prints how far apart the metrics are; with ``gram``,
``build_gram`` (the kernel formulation's Gram matrices, once per chunk), and how far apart
they are.
"""

import importlib.util
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jaxprune import bench, model, train  # noqa: E402
from jaxprune.config import FIELDS  # noqa: E402
from jaxprune.spec import FORMULATIONS  # noqa: E402

USAGE = f"""usage: benchmarks/ab_revision.py REV SIZE LAYOUT RUNS STEPS [REPEATS [FORMULATION]]
  REV: a git revision; SIZE: {", ".join(bench.SIZE_SETS)}; LAYOUT: shared or seeds;
  RUNS, STEPS, REPEATS (default 12): positive integers, STEPS also "eval" (the evaluation)
  or "gram" (the Gram matrices' build);
  FORMULATION: {", ".join(FORMULATIONS)}
example: .venv/bin/python benchmarks/ab_revision.py a39ed9a paper-d1000 seeds 256 6"""


def _module_at(rev: str, path: str, name: str, folder: Path, edit=lambda source: source):
    """The module of ``path`` (in the package) as it is at ``rev``, with ``edit`` applied to
    its source, loaded as ``name`` from a copy in ``folder``."""
    source = edit(subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout)
    copy = folder / Path(path).name
    copy.write_text(source)
    spec = importlib.util.spec_from_file_location(name, copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_at(rev: str):
    """The module ``jaxprune/train.py`` as it is at ``rev``, with the revision's network
    (``model.py``) and native CPU products (``cpu_update.py`` and its ``.cc``, built into their
    own library)."""
    folder = Path(tempfile.mkdtemp())
    (folder / "cpu_update.cc").write_text(subprocess.run(
        ["git", "show", f"{rev}:jaxprune/cpu_update.cc"], cwd=ROOT, check=True,
        capture_output=True, text=True).stdout)
    sys.modules["model_at_rev"] = _module_at(rev, "jaxprune/model.py", "model_at_rev", folder)
    module = _module_at(rev, "jaxprune/train.py", "train_at_rev", folder,
                        lambda source: source.replace("from jaxprune.model import",
                                                      "from model_at_rev import"))
    for name, value in vars(model).items():  # the state's types stay the working tree's
        if isinstance(value, type) and hasattr(module, name):
            setattr(module, name, value)

    def rename(source):  # the revision's custom calls get their own names, "..._at_rev"
        # (XLA's registry is global: under their own names the working tree's would run)
        return re.sub(r'(register_ffi_target\(target|(?:ffi_call|ffi_lowering)\('
                      r'(?:"jaxprune_\w+"|target|TARGETS\[\d\]))', r'\1 + "_at_rev"', source)

    module.cpu_update = _module_at(rev, "jaxprune/cpu_update.py", "cpu_update_at_rev", folder,
                                   rename)
    return module


def _alternate(calls: dict, repeats: int):
    """Runs each of ``calls`` once (warm-up), then times them in alternation
    (``bench._interleaved``); returns the times and each call's last result."""
    results = {}

    def runner(name, call):
        def run():
            results[name] = jax.block_until_ready(call())
        return run

    runs_of = {name: runner(name, call) for name, call in calls.items()}
    for run in runs_of.values():
        run()
    return bench._interleaved(runs_of, repeats), results


def _ratios(times) -> str:
    ratio = sorted(a / b for a, b in zip(times["old"], times["new"]))
    return (f"  new/old speed per repeat: median {statistics.median(ratio):.3f}, "
            f"range {ratio[0]:.3f}-{ratio[-1]:.3f}")


def compare_steps(old, static, params, groups, steps, repeats):
    """Times ``train_steps`` of STEPS steps of both modules."""
    programs = {}
    for name, module in (("old", old), ("new", train)):
        state = train.init_state(params, groups, static)
        gram = module.build_gram(state.mask, groups, static)
        compiled = module.train_steps.lower(state, params, groups, jnp.int32(0), static=static,
                                            gram=gram).compile()
        print(f"{name}: temp {compiled.memory_analysis().temp_size_in_bytes / 1e6:.1f} MB",
              flush=True)
        programs[name] = (compiled, [state], gram)

    def call(name):
        compiled, holder, gram = programs[name]

        def run():
            holder[0] = compiled(holder[0], params, groups, jnp.int32(steps), gram=gram)
            return holder[0]
        return run

    times, final = _alternate({name: call(name) for name in programs}, repeats)
    runs = static.groups * static.group_size
    for name in programs:
        per_step = statistics.median(times[name]) / steps
        print(f"{static.d=} {static.n=} S={static.groups} R={runs} kernel={static.kernel_step} "
              f"[{name}] {runs / per_step:,.0f} run-steps/s "
              f"{bench.step_flops(static) * runs / per_step / 1e9:.1f} GFLOP/s")
    print(_ratios(times))
    w_old, w_new = final["old"].net.w, final["new"].net.w
    print(f"  max |w_old - w_new| / max |w_old| = "
          f"{float(jnp.max(jnp.abs(w_old - w_new)) / jnp.max(jnp.abs(w_old))):.2e}")


def compare_evaluations(old, static, params, groups, repeats):
    """Times ``evaluate`` of both modules on the state after 50 steps."""
    state = train.train_steps(train.init_state(params, groups, static), params, groups,
                              jnp.int32(50), static=static)
    programs = {name: module.evaluate.lower(state, params, groups, static=static).compile()
                for name, module in (("old", old), ("new", train))}
    times, metrics = _alternate(
        {name: lambda c=c: c(state, params, groups) for name, c in programs.items()}, repeats)
    runs = static.groups * static.group_size
    test_flop = 2 * runs * 2 * static.width * static.d * static.n_test
    for name in programs:
        seconds = statistics.median(times[name])
        print(f"{static.d=} {static.n=} {static.n_test=} S={static.groups} R={runs} [{name}] "
              f"evaluation {seconds * 1e3:.1f} ms (test products {test_flop / seconds / 1e9:.0f}"
              f" GFLOP/s over it)")
    print(_ratios(times))
    far = {k: float(jnp.max(jnp.abs(a - b))) for k, a, b in
           zip(metrics["new"]._fields, metrics["old"], metrics["new"])}
    print("  max |old - new| per metric: " + ", ".join(f"{k} {v:.1e}" for k, v in far.items()))


def compare_gram_builds(old, static, params, groups, repeats):
    """Times ``build_gram`` of both modules."""
    mask = train.init_state(params, groups, static).mask
    programs = {name: module.build_gram.lower(mask, groups, static=static).compile()
                for name, module in (("old", old), ("new", train))}
    times, built = _alternate(
        {name: lambda c=c: c(mask, groups).matrices for name, c in programs.items()}, repeats)
    pairs = (static.n + 1) * (static.n + 2) // 2  # upper triangles of [Z; 1_S]'s products
    flop = 2 * static.groups * static.group_size * 2 * static.width * static.d * pairs
    for name in programs:
        seconds = statistics.median(times[name])
        print(f"{static.d=} {static.n=} S={static.groups} G={static.group_size} [{name}] "
              f"Gram build {seconds:.3f} s ({flop / seconds / 1e9:.0f} GFLOP/s of triangles)")
    print(_ratios(times))
    far = jnp.max(jnp.abs(built["old"] - built["new"])) / jnp.max(jnp.abs(built["old"]))
    print(f"  max |old - new| / max |old| = {float(far):.2e}")


def main(rev, size, layout, runs, steps, repeats=12, formulation="auto"):
    d, n, m = bench.SIZE_SETS[size]
    n_test = FIELDS["n_test"].default if steps == "eval" else bench.Case.n_test
    static = bench.case_static(bench.Case(size, d, n, m, int(runs), layout, n_test=n_test,
                                          formulation=formulation))
    params, seeds = bench.case_inputs(static)
    groups = train.make_groups(seeds, static)
    if steps == "eval":
        compare_evaluations(train_at(rev), static, params, groups, int(repeats))
    elif steps == "gram":
        if not static.kernel_step:
            sys.exit(f"{size} {layout} R={runs} runs the direct formulation: no Gram matrices")
        compare_gram_builds(train_at(rev), static, params, groups, int(repeats))
    else:
        compare_steps(train_at(rev), static, params, groups, int(steps), int(repeats))


if __name__ == "__main__":
    main(*bench.script_args(USAGE, lambda a: (
        5 <= len(a) <= 7 and a[1] in bench.SIZE_SETS and a[2] in bench.LAYOUTS
        and all(bench.positive_ints([x]) or i == 4 and x in ("eval", "gram")
                for i, x in enumerate(a[3:6], 3))
        and all(x in FORMULATIONS for x in a[6:])
        and subprocess.run(["git", "rev-parse", "--verify", "-q", f"{a[0]}^{{commit}}"],
                           cwd=ROOT, capture_output=True).returncode == 0)))
