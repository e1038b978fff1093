#!/usr/bin/env bash
# The GPU checks in one go: what JAX sees, the GPU-marked tests, the router and online tests with
# the GPU as JAX's default device, the router and lookup benchmarks and the long temporal
# online stream.
# Usage: bash scripts/gpu_check.sh OUTDIR BANK [PLAN]   (PLAN: a main job's WORKDIR/plan)
# Every step has a time limit, so the script ends and OUTDIR/gpu_check.log says what finished.
# GPU_CHECK_STEPS (names separated by spaces, e.g. "devices bench_router") runs only those.
# On one H200 the steps took about 10 minutes in all (replanning for the online stream alone
# about 2): give a shorter lease a shorter outer time limit and read the log.
set -u
out=${1:?usage: gpu_check.sh OUTDIR BANK [PLAN]}
bank=${2:?usage: gpu_check.sh OUTDIR BANK [PLAN]}
plan=${3:-}
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"

step() {  # step NAME SECONDS COMMAND...: runs COMMAND under a time limit, logging its output
    local name=$1 limit=$2
    shift 2
    if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then
        echo "=== $name: skipped (not in GPU_CHECK_STEPS) ===" | tee -a "$log"
        return
    fi
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
step bench_router 160 "$python" scripts/bench_router.py --bank "$bank" "${plan_flag[@]}" \
    --out "$out/bench_router_gpu.json"
# The lookups' pooling on the GPU: slices (as served) against pooling matrices, side by side.
step bench_lookup 150 "$python" scripts/bench_lookup.py --bank "$bank" "${plan_flag[@]}" \
    --out "$out/bench_lookup_gpu.json"
# The router's fixed charge on the GPU (0.054 ms on an H200, 0.006-0.019 ms on a CPU) may be one
# host synchronisation per lax.cond; XLA can keep conditionals on the device as CUDA-graph
# conditional nodes when its command buffers cover them. The same benchmark with that on:
step bench_router_device_conditionals 120 env XLA_FLAGS="${XLA_FLAGS:-} \
    --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE" \
    "$python" scripts/bench_router.py --bank "$bank" "${plan_flag[@]}" --repeats 100 \
    --stream 100 --out "$out/bench_router_gpu_conditionals.json"
# The same, with command buffers formed around even the smallest run of commands (XLA's default
# leaves runs of fewer than a few kernels, as between two conds, outside any graph).
step bench_router_device_conditionals_small_graphs 120 env XLA_FLAGS="${XLA_FLAGS:-} \
    --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE \
    --xla_gpu_graph_min_graph_size=1" \
    "$python" scripts/bench_router.py --bank "$bank" "${plan_flag[@]}" --repeats 100 \
    --stream 100 --out "$out/bench_router_gpu_small_graphs.json"
if [ -n "$plan" ] && { [ -z "${GPU_CHECK_STEPS:-}" ] || [[ " $GPU_CHECK_STEPS " == *" online_temporal "* ]]; }; then
    # The long temporal stream needs the main job's plan beside it (its WORKDIR, one level up).
    work="$out/online_temporal"
    mkdir -p "$work"
    cp -r "$plan" "$work/plan"
    for f in plan.json profile.json; do cp "$(dirname "$plan")/$f" "$work/" 2>/dev/null; done
    step online_temporal 200 "$python" scripts/benchmark.py --config configs/online_long.py \
        --config.planner.confirm_rounds=1 --workdir "$work" --bank "$bank"
fi
step router_and_online_tests_on_gpu 150 "$python" -m pytest -q tests/test_router.py \
    tests/test_online.py
echo "gpu_check done: $log" | tee -a "$log"
