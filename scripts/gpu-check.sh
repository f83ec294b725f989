#!/usr/bin/env bash
# The GPU checks, as one prepared call on a machine with an NVIDIA GPU and the CUDA toolkit
# (compute-sanitizer, ptxas, NVRTC, ncu). Runs the binaries that scripts/gpu-build.sh put in
# .gpu-bin/ (or $1), each step under its own time limit, and prints a short table last:
#   1. the CUDA tests with REPTILE_REQUIRE_GPU=1 (CPU vs GPU agreement, every kernel);
#   2. the GPU benchmarks (sine meta-step at three block sizes, interpolation vs D2D copy,
#      the whole device-resident meta-step at n = 4096 and 16384, the Omniglot MLP on the
#      tiled path, the sine demo);
#   3. the CLI's sine demo on the GPU (`reptile sine --device cuda:0`, and with --resident), timed,
#      and the C host's (examples/c/sine.c with device `cuda`: reptile_trainer_train_sine_resident);
#   3b. the fused sine meta-step under each launch choice of the back end (gpu_variants:
#      occupancy bound, lane split, staging) and with each kernel variant folder that
#      scripts/gpu-variants.sh made under $1/variants (bench_fused_default);
#   4. NVRTC + ptxas on the real toolkit (REPTILE_REQUIRE_NVRTC=1);
#   5. compute-sanitizer memcheck and racecheck on a small case;
#   6. ncu on one launch of the fused kernel and of the tiled forward kernel.
# Logs go to $OUT/logs.tgz and the table to $OUT/summary.txt, both refreshed after every step,
# so a run cut short still returns what it did.
# The device tool kills a command at 600 s, and the steps' own limits add up to more than that:
# the whole script keeps to $DEADLINE_S seconds (default 540). A step gets at most what is left
# of it less a 20 s reserve for the table, and a step with under 30 s left is skipped
# ("SKIPPED" in the table), so the table always comes back. The order of the steps is their
# priority.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-.gpu-bin}
out=${OUT:-/tmp/gpu-check}
logs=$(mktemp -d)
mkdir -p "$out"
export REPTILE_REQUIRE_GPU=1
deadline_s=${DEADLINE_S:-540}
start_s=$SECONDS

# shellcheck source=scripts/gpu-env.sh
source scripts/gpu-env.sh
{
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu --format=csv
} 2>&1 | tee "$logs/nvidia-smi.log"

declare -a rows
summary() { # the table and the figures, from the logs written so far
    {
        echo
        echo "=== summary ($(date -u +%F), $((SECONDS - start_s)) s of ${deadline_s} s)"
        printf '%s\n' "${rows[@]}"
        grep -hE '^(device|fused inner loop|  with uploads|tiled inner loop|interpolation|resident meta-step|sine demo)' "$logs/benchmarks.log" 2>/dev/null
        grep -hE '^inner loops' "$logs/gpu-tests.log" 2>/dev/null
        grep -hE '^variant ' "$logs/variants.log" 2>/dev/null
        grep -hE '^kernels |failed$' "$logs/kernel-variants.log" 2>/dev/null
        for f in cli-sine cli-resident; do
            grep -hE '^reptile sine|^trained|^ +(0|8|32) ' "$logs/$f.log" 2>/dev/null | head -9
        done
        grep -hE '^trained in|^post_adaptation_mse' "$logs/c-host-cuda.log" 2>/dev/null | sed 's/^/C host (cuda): /'
        grep -hE '^\| reptile_' "$logs/nvrtc-ptxas.log" 2>/dev/null
        grep -hE 'ERROR SUMMARY|RACECHECK SUMMARY' "$logs/memcheck.log" "$logs/racecheck.log" 2>/dev/null
    } >"$out/summary.txt"
    tar -czf "$out/logs.tgz" -C "$logs" . 2>/dev/null
}
step() { # name, seconds allowed, command...
    local name=$1 limit=$2
    shift 2
    local left=$((deadline_s - (SECONDS - start_s) - 20))
    if ((left < 30)); then
        echo "=== $name: skipped, ${left}s left before the deadline"
        rows+=("$(printf '%-14s %-8s' "$name" "SKIPPED")")
        summary
        return
    fi
    ((limit > left)) && limit=$left
    local t0 rc=0
    t0=$(date +%s.%N)
    echo "=== $name (limit ${limit}s): $*"
    timeout -k 5 "$limit" "$@" >"$logs/$name.log" 2>&1 || rc=$?
    local dt
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    tail -n 12 "$logs/$name.log"
    local verdict=ok
    [[ $rc -eq 0 ]] || verdict="FAIL:$rc"
    [[ $rc -eq 124 || $rc -eq 137 ]] && verdict="TIMEOUT"
    rows+=("$(printf '%-14s %-8s %7.2fs' "$name" "$verdict" "$dt")")
    summary
}

step probe 30 "$bin/cuda_probe" --nocapture
step gpu-tests 240 "$bin/cuda_gpu" --test-threads=1 --nocapture
step benchmarks 120 "$bin/cuda_gpu" --ignored gpu_benchmarks --exact --nocapture
if [[ -x $bin/reptile ]]; then
    step cli-sine 90 "$bin/reptile" sine --device cuda:0 --quiet --out "$logs/sine-cuda"
    step cli-resident 90 "$bin/reptile" sine --device cuda:0 --resident --quiet --out "$logs/sine-resident"
fi
if [[ -x $bin/sine_c ]]; then
    step c-host-cuda 90 "$bin/sine_c" 30000 1000 0 0 cuda
fi
step variants 240 "$bin/cuda_gpu" --ignored gpu_variants --exact --nocapture
if compgen -G "$bin/variants/*/" >/dev/null; then
    # In the order of variants/order (gpu-variants.sh), else alphabetical.
    # shellcheck disable=SC2016 # expanded by the inner shell
    step kernel-variants 240 bash -c 'if [[ -f $0/variants/order ]]; then list=$(sed "s|^|$0/variants/|" "$0/variants/order"); else list=$(ls -d "$0"/variants/*/); fi
        for v in $list; do
            REPTILE_KERNELS_DIR="$PWD/$v" "$0/cuda_gpu" --ignored bench_fused_default --exact --nocapture || echo "variant $v failed"
        done' "$bin"
fi
step nvrtc-ptxas 60 env REPTILE_REQUIRE_NVRTC=1 REPTILE_PTXAS="$(command -v ptxas || echo ptxas)" "$bin/cuda_nvrtc" --nocapture
if command -v compute-sanitizer >/dev/null; then
    step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 1 "$bin/cuda_gpu" sanitizer_small_case --exact
    step racecheck 120 compute-sanitizer --tool racecheck --error-exitcode 1 "$bin/cuda_gpu" sanitizer_small_case --exact
else
    rows+=("compute-sanitizer MISSING")
fi
if command -v ncu >/dev/null; then
    step ncu 90 ncu --clock-control none -k 'regex:reptile_fused_inner|reptile_tiled_forward' --launch-count 2 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis \
        --section MemoryWorkloadAnalysis --section WarpStateStats \
        "$bin/cuda_gpu" --ignored profile_case --exact --nocapture
else
    rows+=("ncu            MISSING")
fi

summary
cat "$out/summary.txt"
