"""A sweep killed with SIGKILL or stopped by Ctrl-C, again and again, resumes to the same bytes
as an uninterrupted run.

Every run is a real ``jaxprune run`` subprocess (through ``resume_helper.py``, which can inject
a kill at a chosen moment). The compiled programs are shared through JAX's persistent cache so
that each process starts in a few seconds.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_dict
from jaxprune import cli
from jaxprune.config import sweep_from_dict
from jaxprune.lock import read_lock

HELPER = Path(__file__).with_name("resume_helper.py")
# 4 runs, one per chunk; 9 checkpoints per chunk.
SWEEP = tiny_dict(name="killed", train={"steps": 200, "eval_every": 10,
                                          "checkpoint_every": 20})
FILES = ("results.csv", "metrics.npz")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax-cache")
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def start(env, out: Path, sweep_file: Path, *fault: str) -> subprocess.Popen:
    """``jaxprune run`` with the helper's fault ``fault`` (see ``resume_helper.py``)."""
    args = [sys.executable, str(HELPER), *(fault or ("plain",)), "--", "run", str(sweep_file),
            "--out", str(out), "--no-progress", "--chunk-runs", "1"]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def progress(out: Path) -> set[str]:
    """Finished chunk files and checkpoint steps: what a run has made so far."""
    found = {p.name for p in (out / "chunks").glob("chunk-*.npz")}
    found |= {f"{p.parent.name}/{p.name}" for p in (out / "checkpoints").glob("chunk-*/*")
              if p.name.isdigit()}
    return found


def kill_at_random(env, out, sweep_file, rng, sig=signal.SIGKILL) -> tuple[int, str]:
    """Starts a run, waits for it to make progress, sends ``sig`` a random moment later."""
    before = progress(out)
    proc = start(env, out, sweep_file)
    deadline = time.monotonic() + 120
    while proc.poll() is None and progress(out) <= before and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.6))
    if proc.poll() is None:
        proc.send_signal(sig)
    return finish(proc)


def interrupt_while_compiling(env, out, sweep_file, stale_lock: bool) -> tuple[int, str]:
    """Ctrl-C as soon as the run holds its directory (and, taking over a stale lock, has said
    so: the note comes just after the lock): while it plans and compiles."""
    proc = start(env, out, sweep_file)
    deadline = time.monotonic() + 120
    while (proc.poll() is None and (read_lock(out) or {}).get("pid") != proc.pid
           and time.monotonic() < deadline):
        time.sleep(0.005)
    said = ""
    while stale_lock and "took over" not in said:
        line = proc.stderr.readline()  # "" once the run has exited
        if not line:
            break
        said += line
    proc.send_signal(signal.SIGINT)
    rc, err = finish(proc)
    return rc, said + err


def status(out: Path, capsys) -> str:
    capsys.readouterr()
    assert cli.main(["status", str(out)]) == 0
    return capsys.readouterr().out


def test_killed_sweep_resumes_to_identical_files(tmp_path, env, capsys):
    rng = random.Random(20240611)
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text(sweep_from_dict(SWEEP).to_toml())
    ref, out = tmp_path / "reference", tmp_path / "out"

    rc, err = finish(start(env, ref, sweep_file))
    assert rc == 0, err

    # A run that holds the directory: a second writer is refused, status names the owner.
    holder = start(env, out, sweep_file, "pause", "2")
    try:
        assert holder.stdout.readline().strip() == "paused"
        rc, err = finish(start(env, out, sweep_file))
        assert rc == cli.EXIT_FAILURE
        assert f"is in use by pid {holder.pid} on" in err
        text = status(out, capsys)
        assert f"lock: held by pid {holder.pid}" in text
        assert "chunk in flight: 0 (newest checkpoint at step 20 of 200)" in text
    finally:
        holder.send_signal(signal.SIGKILL)
    assert finish(holder)[0] == -signal.SIGKILL
    assert "lock: stale" in status(out, capsys)

    # Killed during a checkpoint write, during a chunk file, results and metrics write, and
    # at random moments, or stopped by Ctrl-C; each run resumes what the one before left.
    faults = [
        ("checkpoint", "3"),
        ("interrupt", "compiling"),
        ("interrupt-in-gc",),
        ("random",),
        ("write", "chunk-", "1"),
        ("interrupt", "random"),
        ("random",),
        ("write", "results.csv", "1"),
        ("write", "metrics.npz", "1"),
    ]
    logs = []
    for fault in faults:
        # Left by a SIGKILL that came before the run released it (not after: drawing the figure)
        stale_lock = (out / ".lock").exists()
        if fault == ("random",):
            rc, err = kill_at_random(env, out, sweep_file, rng)
        elif fault == ("interrupt", "compiling"):
            rc, err = interrupt_while_compiling(env, out, sweep_file, stale_lock)
        elif fault == ("interrupt", "random"):
            rc, err = kill_at_random(env, out, sweep_file, rng, signal.SIGINT)
        else:
            rc, err = finish(start(env, out, sweep_file, *fault))
        assert ("took over the stale lock of pid" in err) == stale_lock, (fault, err)
        if fault[0].startswith("interrupt"):  # one line, the lock released
            assert rc == cli.EXIT_INTERRUPTED, (fault, err)
            assert err.endswith("\njaxprune: interrupted; run the same command again to "
                                "resume\n") and "Traceback" not in err, (fault, err)
            assert not (out / ".lock").exists()
            continue
        assert rc == -signal.SIGKILL, (fault, err)
        if fault[0] == "checkpoint":  # killed with a half-written step on disk
            assert list((out / "checkpoints").glob("chunk-*/*.orbax-checkpoint-tmp*"))
        logs.append(err)
    assert any("resumed from the checkpoint at step" in e for e in logs)
    assert "chunks already done" in logs[-1]

    rc, err = finish(start(env, out, sweep_file))
    assert rc == 0, err
    for name in FILES:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    for chunk in sorted((ref / "chunks").glob("*.npz")):
        assert (out / "chunks" / chunk.name).read_bytes() == chunk.read_bytes(), chunk.name
    assert not list((out / "checkpoints").iterdir())
    assert not (out / ".lock").exists()
    text = status(out, capsys)
    assert "4 of 4 runs done (4 of 4 chunks)" in text
    assert "lock: free" in text and text.rstrip().endswith("finished")
