#!/usr/bin/env bash
# The GPU checks, as one prepared call on a machine with an NVIDIA GPU and the CUDA toolkit
# (compute-sanitizer, ptxas, NVRTC). Runs the test binaries that scripts/gpu-build.sh put in
# .gpu-bin/ (or $1), and prints a short table last:
#   1. the CUDA tests with REPTILE_REQUIRE_GPU=1 (CPU vs GPU agreement, every kernel);
#   2. NVRTC + ptxas on the real toolkit (REPTILE_REQUIRE_NVRTC=1);
#   3. compute-sanitizer memcheck and racecheck on a small case;
#   4. the GPU benchmarks (sine meta-step, interpolation vs D2D copy, the sine demo).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-.gpu-bin}
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
export REPTILE_REQUIRE_GPU=1

# NVRTC: the toolkit's, else a pip wheel's (nvidia-cuda-nvrtc).
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.13'; then
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
        $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
        if [[ -e $d/libnvrtc.so.13 ]]; then
            export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            break
        fi
    done
fi
export PATH="$PATH:/usr/local/cuda/bin"
nvidia-smi -L || true

declare -a rows
step() { # name, command...
    local name=$1
    shift
    local t0=$SECONDS rc=0
    echo "=== $name: $*"
    "$@" >"$out/$name.log" 2>&1 || rc=$?
    tail -n 40 "$out/$name.log"
    rows+=("$(printf '%-28s %-6s %4ss' "$name" "$([[ $rc -eq 0 ]] && echo ok || echo FAIL:$rc)" $((SECONDS - t0)))")
}

step probe "$bin/cuda_probe" --nocapture
step gpu-tests "$bin/cuda_gpu" --test-threads=1
step nvrtc-ptxas env REPTILE_REQUIRE_NVRTC=1 REPTILE_PTXAS="$(command -v ptxas || echo ptxas)" "$bin/cuda_nvrtc" --nocapture
if command -v compute-sanitizer >/dev/null; then
    step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$bin/cuda_gpu" sanitizer_small_case --exact
    step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$bin/cuda_gpu" sanitizer_small_case --exact
else
    rows+=("compute-sanitizer            MISSING")
fi
step benchmarks "$bin/cuda_gpu" --ignored gpu_benchmarks --exact --nocapture

echo
echo "=== summary ($(date -u +%F))"
printf '%s\n' "${rows[@]}"
grep -hE '^(device|fused inner loop|  with uploads|tiled inner loop|interpolation|sine demo)' "$out/benchmarks.log" 2>/dev/null
grep -hE '^\| reptile_' "$out/nvrtc-ptxas.log" 2>/dev/null
