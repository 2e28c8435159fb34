#!/usr/bin/env bash
# Records the full benchmark for benchmarks/RESULTS.md: waits (up to WAIT_TRIES x 60 s) for
# the 1-minute load average to fall below MAX_LOAD, then runs `jaxprune bench` (the step as a
# sweep runs it) and, unless a --formulation is given, `jaxprune bench --formulation direct
# --no-memory --no-compiles` (the direct step, whose FLOPs are counted, where a sweep would run
# the kernel formulation), writing JSON and markdown tables to benchmarks/results/ (the second
# pass's files end in -direct). Usage (from the repository root):
#
#     bash benchmarks/run_bench.sh            # full mode (about 25-35 minutes)
#     bash benchmarks/run_bench.sh --quick    # quick mode (about three minutes)
#
# Extra arguments go to both passes of `jaxprune bench`. PYTHON overrides the interpreter.
set -euo pipefail
for arg in "$@"; do
  case $arg in -h | --help)
    echo "usage: bash benchmarks/run_bench.sh [--quick] [JAXPRUNE-BENCH-ARGS...]
  no arguments: every size set and R, then the direct step's pass (25-35 minutes); the
  others: see jaxprune bench --help
example: bash benchmarks/run_bench.sh --sizes paper-d1000 --runs 256 1024 --no-compiles"
    exit 0 ;;
  esac
done
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MAX_LOAD=${MAX_LOAD:-0.5}
WAIT_TRIES=${WAIT_TRIES:-20}
out=benchmarks/results
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)

wait_quiet() {
  for _ in $(seq "$WAIT_TRIES"); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$load" -v m="$MAX_LOAD" 'BEGIN { exit !(l < m) }'; then
      echo "load average $load < $MAX_LOAD: measuring" >&2
      return 0
    fi
    echo "load average $load >= $MAX_LOAD: waiting 60 s" >&2
    sleep 60
  done
  echo "WARNING: the machine never got quiet; recording under load (see the load column)" >&2
}

wait_quiet
"$PYTHON" -m jaxprune.cli bench "$@" --json "$out/$stamp.json" --markdown "$out/$stamp.md"
echo "tables: $out/$stamp.md" >&2
case " $* " in *" --formulation"*) exit 0 ;; esac
"$PYTHON" -m jaxprune.cli bench "$@" --formulation direct --no-memory --no-compiles \
  --json "$out/$stamp-direct.json" --markdown "$out/$stamp-direct.md"
echo "tables of the direct step: $out/$stamp-direct.md" >&2
