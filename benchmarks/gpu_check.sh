#!/usr/bin/env bash
# The GPU checks of benchmarks/RESULTS.md, as one short command for a lent accelerator:
#
#     bash benchmarks/gpu_check.sh OUTDIR [SECONDS [STEP...]]
#
# In order of importance, each step capped so that all of them end within SECONDS (default
# 540); with STEP names, only those: machine (the machine and its packages); f32-1024 and
# f32-4096 (the float32 step at paper sizes d = 1000 against the device's float32
# matrix-product peak and PyTorch on the same GPU); memory (device memory against state and
# data); d1000-f32 (benchmarks/precision_d1000.toml end to end: the direct step's results, to
# compare with the CPU's by benchmarks/compare_results.py); tests (the step against the
# float64 reference, PyTorch's step on CUDA); kernel-d1000 (the kernel formulation at paper
# sizes, which the GPU does not choose there yet, against the f32 steps' direct step);
# tf32-d1000 (TF32 throughput); forms
# (benchmarks/update_forms.py: the step's formulations as loops of their two products) and
# products (benchmarks/step_products.py: the step against its own products), with their
# optimized HLO; loop (the plain loop, slow on a GPU: only small R); f32-other (d = 2000 and
# the quick sweep's sizes); quick-f32 and quick-tf32 (the quick sweep end to end);
# torch-compiled (PyTorch's step under torch.compile beside its plain one, never timed on a
# GPU yet). A bench case took 30-50 s on an H200 (2026-12-04).
# Logs, JSON, tables and each sweep's results.csv and metrics.npz are packed into
# OUTDIR/gpu_check.tar.gz.
set -uo pipefail
steps=(machine f32-1024 f32-4096 memory d1000-f32 tests kernel-d1000 tf32-d1000 forms products
  loop f32-other quick-f32 quick-tf32 torch-compiled)
usage="usage: bash benchmarks/gpu_check.sh OUTDIR [SECONDS [STEP...]]
  OUTDIR: where gpu_check.tar.gz goes; SECONDS: time for all steps (default 540);
  STEP: only these (default all): ${steps[*]}
example: bash benchmarks/gpu_check.sh /tmp/gpu 280 machine f32-4096 tests"
case ${1-} in
  -h | --help) echo "$usage"; exit 0 ;;
  "" | -*) echo "$usage" >&2; exit 2 ;;
esac
[[ ${2:-540} =~ ^[0-9]+$ ]] || { echo "$usage" >&2; exit 2; }
for name in "${@:3}"; do
  if [[ " ${steps[*]} " != *" $name "* ]]; then
    echo "unknown step $name" >&2; echo "$usage" >&2; exit 2
  fi
done
cd "$(dirname "$0")/.."
out=$1
deadline=$((SECONDS + ${2:-540} - 10))
work=$(mktemp -d)
mkdir -p "$work/hlo"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and PyTorch share the GPU
py=${PYTHON:-python3}
only=" ${*:3} "

step() {  # NAME CAP_SECONDS COMMAND...: runs COMMAND for at most CAP (and the time left)
  local name=$1 cap=$2 left=$((deadline - SECONDS))
  shift 2
  [[ $only == "  " || $only == *" $name "* ]] || return 0
  ((left < cap)) && cap=$left
  if ((cap < 5)); then echo "== $name: skipped, no time left"; return; fi
  echo "== $name (at most $cap s, $(date -u +%T))"
  local start=$SECONDS
  timeout "$cap" "$@" >"$work/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - start)) s"
  tail -n 25 "$work/$name.log"
}

bench() {  # NAME CAP BENCH-ARGS...
  local name=$1 cap=$2
  shift 2
  step "$name" "$cap" "$py" -m jaxprune.cli bench --no-compiles --memory-cap-gb 40 --repeats 3 \
    --target-seconds 0.2 --json "$work/$name.json" --markdown "$work/$name.md" "$@"
}

sweep() {  # NAME CAP SWEEP-FILE [PRECISION]: the sweep, its TOML given matmul_precision
  local name=$1 cap=$2 file=$3 precision=${4:-float32}
  sed "s/^\[train\]$/[train]\nmatmul_precision = \"$precision\"/" "$file" >"$work/$name.toml"
  step "$name" "$cap" "$py" -m jaxprune.cli run "$work/$name.toml" --out "$work/$name" \
    --no-progress
}

step machine 30 bash -c "nvidia-smi -L; nvidia-smi --query-gpu=clocks.max.sm,power.limit \
  --format=csv; $py -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda|optax|orbax|numpy|torch|matplotlib|tqdm) '; \
  $py -c 'import jax; print(jax.devices(), jax.devices()[0].device_kind)'"
bench f32-1024 80 --sizes paper-d1000 --runs 1024 --impls advance torch --no-memory
bench f32-4096 90 --sizes paper-d1000 --runs 4096 --impls advance torch --no-memory
bench memory 90 --sizes paper-d1000 --runs 16 --impls advance --memory-runs 1024 4096 \
  --layouts seeds
sweep d1000-f32 60 benchmarks/precision_d1000.toml
step tests 90 "$py" -m pytest -q -x -p no:cacheprovider tests/test_train.py tests/test_bench.py \
  -k "reference_runs or torch_step or accelerator"
bench kernel-d1000 80 --sizes paper-d1000 --runs 1024 4096 --impls advance --no-memory \
  --formulation kernel
bench tf32-d1000 80 --sizes paper-d1000 --runs 4096 --impls advance torch --no-memory \
  --matmul-precision tensorfloat32
step forms 60 "$py" benchmarks/update_forms.py --hlo "$work/hlo"
step products 60 "$py" benchmarks/step_products.py --hlo "$work/hlo"
bench loop 60 --sizes paper-d1000 --runs 16 256 --layouts shared --impls advance loop --no-memory
bench f32-other 100 --sizes paper-d2000 quickstart --runs 4096 --impls advance torch --no-memory
sweep quick-f32 40 sweeps/quickstart.toml
sweep quick-tf32 40 sweeps/quickstart.toml tensorfloat32
bench torch-compiled 120 --sizes paper-d1000 --runs 1024 --layouts shared \
  --impls advance torch torch-compiled --no-memory
for dir in "$work"/*/; do
  [[ -f $dir/results.csv ]] || continue  # hlo/
  name=$(basename "$dir")
  cp "$dir/results.csv" "$work/$name.csv" && cp "$dir/metrics.npz" "$work/$name.npz"
done
(cd "$work" && shopt -s nullglob && tar -czf "$out/gpu_check.tar.gz" -- *.log *.json *.md *.toml *.csv *.npz hlo)
ls -la "$out"
