#!/usr/bin/env bash
# The GPU checks in one go: what JAX sees, the GPU-marked tests, the router and online tests with
# the GPU as JAX's default device, the router benchmark and the long temporal online stream.
# Usage: bash scripts/gpu_check.sh OUTDIR BANK [PLAN]   (PLAN: a main job's WORKDIR/plan)
# Every step has a time limit, so the script ends and OUTDIR/gpu_check.log says what finished.
set -u
out=${1:?usage: gpu_check.sh OUTDIR BANK [PLAN]}
bank=${2:?usage: gpu_check.sh OUTDIR BANK [PLAN]}
plan=${3:-}
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"

step() {  # step NAME SECONDS COMMAND...: runs COMMAND under a time limit, logging its output
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s) ===" | tee -a "$log"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start))s ===" | tee -a "$log"
}

step devices 45 bash -c "nvidia-smi -L; $python -c 'import jax, flax, optax, orbax.checkpoint
print(\"jax\", jax.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__)
print(jax.devices())'"
step gpu_tests 120 "$python" -m pytest -q -m gpu tests/test_gpu.py
plan_flag=()
[ -n "$plan" ] && plan_flag=(--plan "$plan")
step bench_router 200 "$python" scripts/bench_router.py --bank "$bank" "${plan_flag[@]}" \
    --out "$out/bench_router_gpu.json"
if [ -n "$plan" ]; then
    # The long temporal stream needs the main job's plan beside it (its WORKDIR, one level up).
    work="$out/online_temporal"
    mkdir -p "$work"
    cp -r "$plan" "$work/plan"
    for f in plan.json profile.json; do cp "$(dirname "$plan")/$f" "$work/" 2>/dev/null; done
    step online_temporal 150 "$python" scripts/benchmark.py --config configs/online_long.py \
        --config.planner.confirm_rounds=1 --workdir "$work" --bank "$bank"
fi
step router_and_online_tests_on_gpu 90 "$python" -m pytest -q tests/test_router.py \
    tests/test_online.py
echo "gpu_check done: $log" | tee -a "$log"
