"""Each fault a sweep directory must survive, in process (so the compiled programs are shared):
damaged checkpoints and chunk files, another sweep, a second writer, a stale lock, a diverging
run, an unwritable directory; and what ``jaxprune status`` prints."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import tiny_dict, tiny_sweep
from jaxprune import checkpoint, cli, engine
from jaxprune import results as res
from jaxprune.checkpoint import FILE_DIGESTS, ChunkCheckpoints, file_digests, saved_steps
from jaxprune.config import load_sweep, sweep_from_dict
from jaxprune.engine import OutOfMemory, OutputError, SweepMismatch, checkpoint_dir, chunk_file
from jaxprune.lock import DirectoryLock, LockedError
from jaxprune.plan import PlanError, size_text
from jaxprune.spec import Static

TRAIN = {"steps": 40, "eval_every": 5, "checkpoint_every": 10}
SWEEP = tiny_sweep(train=TRAIN)  # 4 runs: 2 fractions x 2 seeds
CHUNK_RUNS = 2  # 2 chunks, one per seed
FILES = ("results.csv", "metrics.npz")


class Interrupt(Exception):
    """Stands for a process killed at that moment."""


def run(out, sweep=SWEEP, chunk_runs=CHUNK_RUNS, **kwargs) -> list[str]:
    """Runs ``sweep`` into ``out``; returns the notes it logged."""
    logs = []
    engine.run(sweep, out, max_chunk_runs=chunk_runs, progress=False, log=logs.append,
               **kwargs)
    return logs


def assert_same_files(out, reference):
    for name in FILES:
        assert (Path(out) / name).read_bytes() == (Path(reference) / name).read_bytes(), name


def run_until_checkpoint(out, sweep, chunk_dir: str, at_step: int) -> None:
    """Runs ``sweep`` into ``out`` and stops it, as a kill would, right after the checkpoint of
    ``chunk_dir`` at ``at_step`` is saved."""
    save = ChunkCheckpoints.save

    def save_then_stop(self, step, *args):
        save(self, step, *args)
        if self.directory.name == chunk_dir and step == at_step:
            raise Interrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ChunkCheckpoints, "save", save_then_stop)
        with pytest.raises(Interrupt):
            run(out, sweep)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def status(out, capsys) -> list[str]:
    capsys.readouterr()
    assert cli.main(["status", str(out)]) == 0
    return capsys.readouterr().out.splitlines()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    run(out)
    return out


@pytest.fixture(scope="module")
def interrupted_once(tmp_path_factory, reference):
    """Chunk 0 done; chunk 1 stopped right after its checkpoint at step 30 (20 and 30 kept)."""
    out = tmp_path_factory.mktemp("interrupted") / "out"
    run_until_checkpoint(out, SWEEP, "chunk-00001", 30)
    return out


@pytest.fixture
def interrupted(interrupted_once, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(interrupted_once, out)
    return out


def test_finished_chunks_are_durable_before_the_sweep_ends(interrupted, reference, capsys):
    assert chunk_file(interrupted, 0).read_bytes() == chunk_file(reference, 0).read_bytes()
    manifest = json.loads((interrupted / "manifest.json").read_text())
    assert (manifest["chunks_done"], manifest["runs_done"], manifest["runs"]) == ([0], 2, 4)
    assert list(res.read_csv(interrupted / "results.csv")["run"]) == [0, 2]
    assert saved_steps(checkpoint_dir(interrupted, 1)) == [20, 30]
    assert not (interrupted / "metrics.npz").exists()
    assert status(interrupted, capsys) == [
        f"{interrupted}: 2 of 4 runs done (1 of 2 chunks)",
        "chunk in flight: 1 (newest checkpoint at step 30 of 40)",
        "lock: free",
        "unfinished",
    ]
    logs = run(interrupted)
    assert "chunk 1: resumed from the checkpoint at step 30" in logs
    assert not any("re-planned" in line for line in logs)  # the options of the plan
    assert any(line.startswith("chunk 1 done in ") and line.endswith(
        ": runs done 4/4, chunks done 2/2") for line in logs)  # no bar: a line a chunk
    assert_same_files(interrupted, reference)
    assert status(interrupted, capsys) == [
        f"{interrupted}: 4 of 4 runs done (2 of 2 chunks)", "lock: free", "finished"]


def test_other_options_on_resume_re_plan_the_unfinished_runs(interrupted, reference, capsys):
    """Chunk 1 (runs 1 and 3) is re-planned as two chunks of one run; chunk 0 is kept."""
    finished = chunk_file(interrupted, 0).read_bytes()
    logs = run(interrupted, chunk_runs=1)
    assert "note: dropped the checkpoint of chunk 1 at step 30" in logs
    assert any(line.startswith("note: re-planned the 2 unfinished runs for a memory budget of "
                               ) and line.endswith("at most 1 runs a chunk: 2 chunks instead "
                                                   "of 1") for line in logs)
    plan = json.loads((interrupted / "plan.json").read_text())
    assert [c["index"] for c in plan["chunks"]] == [0, 2, 3] and plan["chunk_runs"] == 1
    assert chunk_file(interrupted, 0).read_bytes() == finished
    assert not chunk_file(interrupted, 1).exists() and not checkpoint_dir(interrupted, 1).exists()
    got, want = (res.read_csv(out / "results.csv") for out in (interrupted, reference))
    assert list(got["run"]) == [0, 1, 2, 3]
    for k in ("test_error", "train_loss", "test_loss", "noise_memorization"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert status(interrupted, capsys)[0] == f"{interrupted}: 4 of 4 runs done (3 of 3 chunks)"
    assert not any("re-planned" in line for line in run(interrupted, chunk_runs=2))  # finished


def test_a_damaged_plan_is_made_again_and_keeps_the_finished_work(interrupted, reference,
                                                                  capsys):
    (interrupted / "plan.json").write_text('{"chunks": [')
    assert status(interrupted, capsys) == [
        f"note: {interrupted / 'plan.json'} is unreadable (JSONDecodeError: Expecting value: "
        "line 1 column 13 (char 12)); the next run plans the sweep again",
        f"{interrupted}: 2 of 4 runs in chunk files, no chunk plan",
        "lock: free",
        "unfinished",
    ]
    finished = chunk_file(interrupted, 0).read_bytes()
    logs = run(interrupted)
    assert any(line.startswith(f"note: {interrupted / 'plan.json'} is unreadable")
               and line.endswith("planned the sweep again (finished chunks of the same runs "
                                 "are kept)") for line in logs)
    assert "resuming " + str(interrupted) + ": 1 of 2 chunks already done" in logs
    assert "chunk 1: resumed from the checkpoint at step 30" in logs
    assert chunk_file(interrupted, 0).read_bytes() == finished
    assert_same_files(interrupted, reference)


def test_a_checkpoint_of_other_runs_is_never_loaded(interrupted, reference):
    """A plan made again differently (here: chunks 0 and 1 swap their runs) meets chunk files
    and checkpoints of other runs: both are run again, not loaded into the wrong runs."""
    plan = json.loads((interrupted / "plan.json").read_text())
    first, second = plan["chunks"]
    first["runs"], second["runs"] = second["runs"], first["runs"]
    (interrupted / "plan.json").write_text(json.dumps(plan))
    logs = run(interrupted)
    assert f"warning: {chunk_file(interrupted, 0)} holds other runs than planned; that " \
           "chunk runs again" in logs
    assert not any("resumed from the checkpoint" in line for line in logs)
    assert any("chunk 1: no usable checkpoint left" in line for line in logs)
    got, want = (res.read_csv(out / "results.csv") for out in (interrupted, reference))
    for k in res.METRIC_COLUMNS:
        assert np.array_equal(got[k], want[k]), k


def test_a_damaged_sweep_toml_is_rewritten_when_the_plan_is_of_this_sweep(interrupted,
                                                                           reference):
    (interrupted / "sweep.toml").write_text("name = ")
    logs = run(interrupted)
    assert any("sweep.toml was unreadable" in line and "rewrote it" in line for line in logs)
    assert "chunk 1: resumed from the checkpoint at step 30" in logs
    assert_same_files(interrupted, reference)

    (interrupted / "sweep.toml").write_text("name = ")
    other = tiny_sweep(train=dict(TRAIN, learning_rate=0.2))
    with pytest.raises(SweepMismatch, match="unreadable .* and its plan.json is not of this"):
        run(interrupted, other)


def test_running_out_of_memory_names_the_budget_and_keeps_finished_chunks(interrupted,
                                                                         monkeypatch):
    def exhausted(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 "
                           "bytes.\nmore detail")

    monkeypatch.setattr(engine.train, "advance", exhausted)
    finished = chunk_file(interrupted, 0).read_bytes()
    budget = json.loads((interrupted / "plan.json").read_text())["memory_budget"]
    with pytest.raises(OutOfMemory) as e:
        run(interrupted)
    assert str(e.value) == (
        "chunk 1 ran out of memory (RESOURCE_EXHAUSTED: Out of memory while trying to "
        "allocate 123 bytes.). Finished chunks are kept; run the same command with a "
        f"--memory-budget below this plan's {size_text(budget)} (or a smaller --chunk-runs) "
        "to re-plan the unfinished runs.")
    assert chunk_file(interrupted, 0).read_bytes() == finished
    assert saved_steps(checkpoint_dir(interrupted, 1)) == [20, 30]


def test_resume_in_the_kernel_formulation_is_exact(tmp_path):
    """Plain GD runs in the kernel formulation here, whose Gram matrices are not checkpointed:
    the resumed chunk builds them again and ends bit for bit where an uninterrupted run ends."""
    sweep = tiny_sweep(train=dict(TRAIN, eval_every=10))
    run(tmp_path / "whole", sweep)
    plan = json.loads((tmp_path / "whole" / "plan.json").read_text())
    assert Static(**plan["chunks"][0]["static"]).kernel_step
    run_until_checkpoint(tmp_path / "cut", sweep, "chunk-00001", 20)
    assert "chunk 1: resumed from the checkpoint at step 20" in run(tmp_path / "cut", sweep)
    assert_same_files(tmp_path / "cut", tmp_path / "whole")


def _data_files(step: Path) -> list[Path]:
    files = sorted((step / "arrays").rglob("d/*"))
    assert files
    return files


def _truncate(step):
    for f in _data_files(step):
        f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])


def _garble(step):
    for f in _data_files(step):
        data = bytearray(f.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 16] = bytes(b ^ 0x5A for b in data[mid:mid + 16])
        f.write_bytes(bytes(data))


def _delete_data(step):
    for f in _data_files(step):
        f.unlink()


def _wrong_digest(step):
    """Files consistent, arrays intact, but not the ones the record vouches for."""
    path = step / "record" / "metadata"
    record = json.loads(path.read_text())
    record["digest"] = "0" * 64
    path.write_text(json.dumps(record))
    (step / FILE_DIGESTS).write_text(json.dumps(file_digests(step)))


def _no_file_list(step):
    """orbax finished the step, the process died before the list of its files was written."""
    (step / FILE_DIGESTS).unlink()


def _garbage_record(step):
    (step / "record" / "metadata").write_text("\x00garbage")


def _remove(step):
    shutil.rmtree(step)


def _garbage_folder(step):
    shutil.rmtree(step)
    step.mkdir()
    (step / "junk").write_bytes(os.urandom(100))


def _garbage_file(step):
    shutil.rmtree(step)
    step.write_bytes(os.urandom(100))


def _no_metadata(step):
    (step / "_CHECKPOINT_METADATA").unlink()


CHANGED = "file(s) missing, changed or added: arrays/"


@pytest.mark.parametrize("damage, steps, reason", [
    (_truncate, [30], CHANGED),
    (_garble, [30], CHANGED),
    (_delete_data, [30], CHANGED),
    (_garbage_record, [30], "file(s) missing, changed or added: record/metadata"),
    (_no_file_list, [30], f"no readable {FILE_DIGESTS}"),
    (_wrong_digest, [30], "do not match their recorded SHA-256"),
    (_garbage_folder, [30], f"no readable {FILE_DIGESTS}"),
    (_garbage_file, [30], None),  # not a folder: orbax does not take it for a step
    (_remove, [30], None),
    (_garble, [30, 20], CHANGED),
    (_remove, [30, 20], None),
    (_no_metadata, [30], "file(s) missing, changed or added: _CHECKPOINT_METADATA"),
    (_no_metadata, [30, 20], "file(s) missing, changed or added: _CHECKPOINT_METADATA"),
])
def test_damaged_checkpoint_falls_back(interrupted, reference, damage, steps, reason, caplog):
    folder = checkpoint_dir(interrupted, 1)
    for step in steps:
        damage(folder / str(step))
    logs = run(interrupted)
    # orbax's own log lines would reach the user beside the warnings above
    assert [r.getMessage() for r in caplog.records if r.name == "absl"] == []
    warned = [line for line in logs if "is unusable" in line]
    if reason is None:  # a step that is not there is not reported
        assert not warned
    else:
        assert [str(folder / str(s)) in w for w, s in zip(warned, steps)] == [True] * len(steps)
        assert all(reason in w for w in warned)
    if steps == [30]:
        assert "chunk 1: resumed from the checkpoint at step 20" in logs
    else:
        assert not any("resumed from the checkpoint" in line for line in logs)
        if reason is not None:
            assert "chunk 1: no usable checkpoint left; running it from step 0" in logs
    assert_same_files(interrupted, reference)
    assert not folder.exists()


def test_damaged_chunk_file_is_run_again(interrupted, reference, capsys):
    path = chunk_file(interrupted, 0)
    path.write_bytes(path.read_bytes()[:100])
    lines = status(interrupted, capsys)
    assert lines[0].startswith(f"warning: {path} is unreadable (") and lines[0].endswith(
        "; that chunk runs again")
    assert lines[1:3] == [f"{interrupted}: 0 of 4 runs done (0 of 2 chunks)",
                          "chunk in flight: 0 (no checkpoint yet)"]
    logs = run(interrupted)
    assert any(f"{path} is unreadable" in line for line in logs)
    assert_same_files(interrupted, reference)


# ---------------------------------------------------------------------------------------------
# Structure: a checkpoint that does not fit the expected state is refused whole.

STATE = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "diverged": np.zeros(2, bool)}
HISTORY = {"step": np.array([0, 5]), "loss": np.array([[1.0, 2.0], [0.5, 0.25]])}


def _saved(tmp_path, identity={"chunk": 0, "sweep": "abc"}) -> Path:
    folder = tmp_path / "ckpt"
    ChunkCheckpoints(folder, identity, warn=print).save(5, STATE, HISTORY)
    return folder


def _abstract(tree):
    return jax.eval_shape(lambda: tree)


def test_checkpoint_round_trip(tmp_path):
    state, history, step = ChunkCheckpoints(
        _saved(tmp_path), {"chunk": 0, "sweep": "abc"}, warn=print).restore_latest(
        _abstract(STATE))
    assert step == 5
    for k in STATE:
        assert state[k].dtype == STATE[k].dtype and np.array_equal(state[k], STATE[k])
    for k in HISTORY:
        assert np.array_equal(history[k], HISTORY[k])


@pytest.mark.parametrize("expected, identity, reason", [
    # The record's layout is checked before orbax reads anything (orbax would cast to the
    # requested dtype, and its own messages change between versions).
    ({"w": np.zeros((3, 2), np.float32), "diverged": np.zeros(2, bool)}, None,
     "state ['w'] is float32(2, 3), expected float32(3, 2)"),
    ({"w": np.zeros((2, 3), np.float64), "diverged": np.zeros(2, bool)}, None,
     "state ['w'] is float32(2, 3), expected float64(2, 3)"),
    ({"w": np.zeros((2, 3), np.float32)}, None, "its state has another structure"),
    ({**STATE, "extra": np.zeros(2, np.float32)}, None, "its state has another structure"),
    (STATE, {"chunk": 1, "sweep": "abc"}, "another chunk"),
    (STATE, {"chunk": 0, "sweep": "xyz"}, "another sweep"),
])
def test_checkpoint_of_another_structure_is_never_loaded(tmp_path, expected, identity, reason):
    folder = _saved(tmp_path)
    warnings = []
    restored = ChunkCheckpoints(folder, identity or {"chunk": 0, "sweep": "abc"},
                                warn=warnings.append).restore_latest(_abstract(expected))
    assert restored is None
    assert len(warnings) == 1 and "is unusable" in warnings[0] and reason in warnings[0]


def test_checkpoint_without_a_state_layout_is_never_loaded(tmp_path, monkeypatch):
    """A checkpoint of a jaxprune from before the record kept the state's layout."""
    monkeypatch.setattr(checkpoint, "_layout", lambda arrays: None)
    folder = _saved(tmp_path)
    monkeypatch.undo()
    warnings = []
    assert ChunkCheckpoints(folder, {"chunk": 0, "sweep": "abc"}, warn=warnings.append
                            ).restore_latest(_abstract(STATE)) is None
    assert len(warnings) == 1 and "no state layout (an older jaxprune" in warnings[0]


# ---------------------------------------------------------------------------------------------
# Another sweep in the same directory.


def test_another_sweep_is_refused_with_the_differences(interrupted, tmp_path, capsys):
    other = tiny_sweep(train=dict(TRAIN, learning_rate=0.2), sweep={"seeds": 3})
    before = snapshot(interrupted)
    with pytest.raises(SweepMismatch) as e:
        run(interrupted, other)
    message = str(e.value)
    assert "learning_rate: 0.1 there, 0.2 here" in message
    assert "seeds: [0, 1] there, [0, 1, 2] here" in message
    assert "new --out directory" in message and "--restart" in message
    assert "\n" not in message
    assert snapshot(interrupted) == before

    # Past six fields, the others are named without their values.
    many = tiny_sweep(data={"d": 41, "n": 9, "n_test": 65, "signal_norm": 2.0},
                      model={"width": 5, "activation_power": 2.0, "init_std": 0.02})
    with pytest.raises(SweepMismatch, match=r"; activation_power: 3.0 there, 2.0 here; and "
                                            r"init_std, steps\)"):
        run(interrupted, many)

    sweep_file = tmp_path / "other.toml"
    sweep_file.write_text(other.to_toml())
    capsys.readouterr()
    rc = cli.main(["run", str(sweep_file), "--out", str(interrupted), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_USAGE
    assert err.startswith("jaxprune: error: ") and "learning_rate" in err
    assert "Traceback" not in err
    assert snapshot(interrupted) == before


def test_restart_discards_the_other_sweep(interrupted, tmp_path):
    other = tiny_sweep(train=dict(TRAIN, learning_rate=0.2))
    run(tmp_path / "fresh", other)
    (interrupted / "figures").mkdir()
    (interrupted / "figures" / "error_curves.png").write_bytes(b"the old sweep's figure")
    run(interrupted, other, restart=True)
    assert_same_files(interrupted, tmp_path / "fresh")
    assert set(res.read_csv(interrupted / "results.csv")["learning_rate"]) == {0.2}
    assert not (interrupted / "figures").exists()

    # Files jaxprune did not write are the user's: a restart leaves them.
    (interrupted / "figures").mkdir()
    (interrupted / "figures" / "paper_fig1.pdf").write_bytes(b"precious")
    (interrupted / "figures" / "error_curves.png").write_bytes(b"the old sweep's figure")
    run(interrupted, other, restart=True)
    assert [p.name for p in (interrupted / "figures").iterdir()] == ["paper_fig1.pdf"]


def test_writing_a_preset_s_values_out_keeps_the_checkpoints(tmp_path, reference):
    """The same values with or without the preset line are the same sweep: same fingerprint
    (which the checkpoints carry), no differences."""
    with_preset = sweep_from_dict(dict(tiny_dict(train=TRAIN), preset="cao2022"))
    text = "\n".join(line for line in with_preset.to_toml().splitlines()
                     if not line.startswith("preset"))
    (tmp_path / "s.toml").write_text(text)
    written_out = load_sweep(tmp_path / "s.toml")
    assert written_out.preset is None and written_out.differences(with_preset) == []
    assert engine.sweep_fingerprint(written_out) == engine.sweep_fingerprint(with_preset)
    assert engine.sweep_fingerprint(written_out) != engine.sweep_fingerprint(SWEEP)


def test_a_step_without_its_digests_is_not_a_saved_checkpoint(tmp_path):
    for name, digests in (("10", True), ("20", False), ("30.orbax-checkpoint-tmp-1", True)):
        (tmp_path / name).mkdir()
        if digests:
            (tmp_path / name / FILE_DIGESTS).write_text("{}")
    assert saved_steps(tmp_path) == [10]


# ---------------------------------------------------------------------------------------------
# One writer per directory.

HOLD = """import sys, time
sys.path.insert(0, sys.argv[1])
from lock import DirectoryLock
DirectoryLock(sys.argv[2]).__enter__()
print("held", flush=True)
time.sleep(120)
"""


def test_second_writer_refused_then_stale_lock_taken_over(tmp_path, reference, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.toml").write_text(SWEEP.to_toml())
    # The lock module alone (without jax), so the holder starts in a blink.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(Path(engine.__file__).parent), str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        host = socket.gethostname()
        with pytest.raises(LockedError, match=f"in use by pid {holder.pid} on {host}"):
            run(out)
        assert f"lock: held by pid {holder.pid} on {host}" in status(out, capsys)[-2]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert status(out, capsys)[-2].startswith(f"lock: stale (pid {holder.pid} on {host} is gone")
    logs = run(out)
    assert logs[0] == f"note: took over the stale lock of pid {holder.pid} on {host}, which is gone"
    assert_same_files(out, reference)
    assert not (out / ".lock").exists()


def test_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    with DirectoryLock(tmp_path) as lock:
        assert lock.took_over is None
        with pytest.raises(LockedError, match=f"in use by pid {os.getpid()}"):
            DirectoryLock(tmp_path).__enter__()
    assert not (tmp_path / ".lock").exists()


def test_lock_file_without_a_holder(tmp_path):
    """Of this host: taken over. Of another host: refused (it cannot be checked from here)."""
    lock_file = tmp_path / ".lock"
    lock_file.write_text(f'{{"pid": 999999999, "host": "{socket.gethostname()}"}}')
    with DirectoryLock(tmp_path) as lock:
        assert lock.took_over["pid"] == 999999999
    lock_file.write_text("garbage")
    with DirectoryLock(tmp_path) as lock:
        assert lock.took_over is None
    lock_file.write_text('{"pid": 12, "host": "elsewhere", "since": "then"}')
    with pytest.raises(LockedError, match=f"pid 12 on elsewhere .* remove {lock_file}"):
        DirectoryLock(tmp_path).__enter__()
    assert json.loads(lock_file.read_text())["host"] == "elsewhere"


# ---------------------------------------------------------------------------------------------
# Divergence.


@pytest.mark.parametrize("eval_every, kernel", [(1, False), (5, True)])
def test_diverging_runs_are_frozen_and_flagged_alone(tmp_path, eval_every, kernel):
    """The runs with a huge learning rate overflow; their batch mates are untouched: equal, bit
    for bit, to the same runs in a batch of the same layout where nothing diverges. (Plain GD
    runs in the kernel formulation unless segments are of one step.)"""
    train = dict(TRAIN, eval_every=eval_every)
    wild = tiny_sweep(train=dict(train, learning_rate=[0.05, 1e30]))
    tame = tiny_sweep(train=dict(train, learning_rate=[0.05, 0.1]))
    logs = run(tmp_path / "wild", wild, chunk_runs=None)
    run(tmp_path / "tame", tame, chunk_runs=None)
    plan = json.loads((tmp_path / "wild" / "plan.json").read_text())
    assert plan["chunks"][0]["runs"] == \
        json.loads((tmp_path / "tame" / "plan.json").read_text())["chunks"][0]["runs"]
    assert Static(**plan["chunks"][0]["static"]).kernel_step == kernel
    assert "warning: chunk 0: 4 run(s) diverged (non-finite loss); they were frozen and are " \
           "marked diverged in results.csv" in logs

    a, b = (res.read_csv(tmp_path / name / "results.csv") for name in ("wild", "tame"))
    wild_runs = a["learning_rate"] == 1e30
    assert wild_runs.sum() == 4 and np.array_equal(a["diverged"], wild_runs)
    assert not b["diverged"].any()
    assert not np.isfinite(a["train_loss"][wild_runs]).any()
    same = ~wild_runs
    for k in res.METRIC_COLUMNS:
        assert np.array_equal(a[k][same], b[k][same]), k

    ma, mb = (res.read_npz(tmp_path / name / "metrics.npz") for name in ("wild", "tame"))
    rows = np.isin(ma["run"], a["run"][same])
    assert np.array_equal(ma["run"], mb["run"])
    for k in ma:
        assert np.array_equal(ma[k][rows], mb[k][rows]), k


def test_a_run_that_overflows_at_its_last_step_is_flagged(tmp_path):
    """With one step, the wild runs' loss is finite before it and non-finite after: the final
    evaluation marks them diverged, and counts every example an error (exactly 1, though
    1/30 and 1/6 are inexact in float32)."""
    sweep = tiny_sweep(data={"n": 6, "n_test": 30},
                       train=dict(TRAIN, steps=1, eval_every=1, learning_rate=[0.05, 1e30]))
    logs = run(tmp_path, sweep, chunk_runs=None)
    a = res.read_csv(tmp_path / "results.csv")
    wild_runs = a["learning_rate"] == 1e30
    assert wild_runs.sum() == 4 and np.array_equal(a["diverged"], wild_runs)
    assert not np.isfinite(a["train_loss"][wild_runs]).any()
    assert np.isfinite(a["train_loss"][~wild_runs]).all()
    for k in ("train_error", "test_error"):
        assert np.all(a[k][wild_runs] == 1.0), k
    assert any("4 run(s) diverged" in line for line in logs)


# ---------------------------------------------------------------------------------------------
# An output directory that cannot be written.


def test_a_sweep_that_could_not_be_planned_leaves_a_directory_for_the_next(tmp_path):
    """A start that stops before any work leaves only sweep.toml: the corrected sweep runs."""
    with pytest.raises(PlanError):
        run(tmp_path, memory_budget=1024)
    assert [p.name for p in tmp_path.iterdir() if p.name != ".lock"] == ["sweep.toml"]
    fixed = tiny_sweep(train=dict(TRAIN, steps=10))
    run(tmp_path, fixed)
    assert load_sweep(tmp_path / "sweep.toml") == fixed
    assert len(res.read_csv(tmp_path / "results.csv")["run"]) == 4


def test_output_under_a_file_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match=f"cannot write to {blocker / 'out'}"):
        run(blocker / "out")
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text(SWEEP.to_toml())
    capsys.readouterr()
    rc = cli.main(["run", str(sweep_file), "--out", str(blocker / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_FAILURE
    assert err.startswith("jaxprune: error: cannot write to") and "Traceback" not in err
    assert "Finished chunks" not in err  # there are none
    assert err.rstrip().endswith(": Not a directory. Fix the problem and run the same command "
                                 "to resume.")

    with pytest.raises(OutputError, match=f"^{blocker} is a file, not a directory; give "):
        run(blocker)


def test_disk_full_keeps_finished_results(tmp_path, reference, monkeypatch):
    out = tmp_path / "out"
    write = res.atomic_write

    def full_disk(path, data):
        if Path(path).name == "chunk-00001.npz":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, data)

    monkeypatch.setattr(res, "atomic_write", full_disk)
    with pytest.raises(OutputError) as e:
        run(out)
    assert str(e.value).startswith(
        f"cannot write to {chunk_file(out, 1)}: No space left on device. Finished chunks are "
        f"kept in {out / 'chunks'}; fix the problem and run the same command to resume.")
    assert chunk_file(out, 0).read_bytes() == chunk_file(reference, 0).read_bytes()
    assert list(res.read_csv(out / "results.csv")["run"]) == [0, 2]
    assert not (out / ".lock").exists()
    monkeypatch.undo()
    run(out)
    assert_same_files(out, reference)


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, reference):
    out = tmp_path / "out"
    (out / "results.csv").mkdir(parents=True)  # os.replace onto it fails
    with pytest.raises(OutputError, match="results.csv"):
        run(out)
    assert chunk_file(out, 0).read_bytes() == chunk_file(reference, 0).read_bytes()
    assert not list(out.rglob("*.tmp"))
    (out / "results.csv").rmdir()
    run(out)
    assert_same_files(out, reference)


def test_checkpoint_that_cannot_be_written_is_a_clear_error(tmp_path, reference):
    out = tmp_path / "out"
    checkpoint_dir(out, 0).parent.mkdir(parents=True)
    checkpoint_dir(out, 0).write_text("")  # not a directory
    with pytest.raises(OutputError, match=f"cannot write to {checkpoint_dir(out, 0)}"):
        run(out)
    checkpoint_dir(out, 0).unlink()
    run(out)
    assert_same_files(out, reference)


def test_status_of_a_directory_that_is_not_a_sweep(tmp_path, capsys):
    assert cli.main(["status", str(tmp_path)]) == cli.EXIT_USAGE
    assert "not a sweep directory" in capsys.readouterr().err
