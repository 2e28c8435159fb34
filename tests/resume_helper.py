"""Runs the ``jaxprune`` command with a fault injected, for ``test_resume.py``.

    python tests/resume_helper.py MODE [ARGS] -- run SWEEP.toml --out DIR ...

Modes:
  plain                  no fault.
  pause K                at the K-th checkpoint save, prints "paused" and sleeps (a run that
                         holds its directory, for the concurrent-writer and status checks).
  checkpoint K           SIGKILLs this process in the middle of its K-th checkpoint save: as
                         soon as orbax's temporary step folder appears.
  write PREFIX K         at the K-th durable write of a file whose name starts with PREFIX,
                         writes half of its temporary file, then SIGKILLs this process.
  interrupt-in-gc        sends itself SIGINT (Ctrl-C) from inside a garbage-collector
                         callback, once it holds its directory: where a KeyboardInterrupt
                         would be swallowed ("Exception ignored in ...") and the run go on.
"""

import gc
import os
import signal
import sys
import threading
import time
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _die_mid_write(directory: Path) -> None:
    while not any(".orbax-checkpoint-tmp" in p.name for p in directory.glob("*")):
        time.sleep(0.0005)
    _die()


def main(argv: list[str]) -> int:
    # Ctrl-C reaches the run even where the tests run with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    split = argv.index("--")
    mode, opts, cli_args = argv[0], argv[1:split], argv[split + 1:]
    from jaxprune import checkpoint, cli, results
    from jaxprune.lock import read_lock

    calls = [0]
    if mode in ("pause", "checkpoint"):
        save = checkpoint.ChunkCheckpoints.save

        def faulty_save(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == int(opts[0]):
                if mode == "pause":
                    print("paused", flush=True)
                    time.sleep(600)
                threading.Thread(target=_die_mid_write, args=(self.directory,)).start()
            return save(self, *args, **kwargs)

        checkpoint.ChunkCheckpoints.save = faulty_save
    elif mode == "write":
        write = results.atomic_write

        def faulty_write(path, data):
            path = Path(path)
            if path.name.startswith(opts[0]):
                calls[0] += 1
                if calls[0] == int(opts[1]):
                    path.with_name(path.name + ".tmp").write_bytes(data[:len(data) // 2])
                    _die()
            return write(path, data)

        results.atomic_write = faulty_write
    elif mode == "interrupt-in-gc":
        out = Path(cli_args[cli_args.index("--out") + 1])

        def interrupt(phase, info):
            if not calls[0] and (read_lock(out) or {}).get("pid") == os.getpid():
                calls[0] += 1
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # the handler runs here, inside the callback

        gc.callbacks.append(interrupt)
    elif mode != "plain":
        raise SystemExit(f"unknown mode {mode!r}")
    return cli.main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
