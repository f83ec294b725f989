#!/usr/bin/env bash
# Instruction-level profile of the fused kernels on a GPU machine (ncu): one launch of
# profile_case's sine batch (n = 4096, k = 5), or with `serial` as $2 one launch of the serial
# sine kernel (profile_serial: n = 1, 200 iterations), with per-SASS-instruction execution
# counts and stall samples. Writes $OUT/sass.csv (source page, SASS), $OUT/details.csv and the
# report itself.
#   bash scripts/gpu-build.sh && <device run, carry [".gpu-bin"]> bash scripts/gpu-profile.sh [.gpu-bin] [serial]
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-.gpu-bin}
out=${OUT:-/tmp/gpu-profile}
mkdir -p "$out"
# shellcheck source=scripts/gpu-env.sh
source scripts/gpu-env.sh
export REPTILE_REQUIRE_GPU=1
kernel=reptile_fused_inner case=profile_case
if [[ ${2:-} == serial ]]; then
    kernel=reptile_sine_serial case=profile_serial
fi
timeout -k 5 150 ncu --clock-control none -k "regex:$kernel" --launch-count 1 --section SourceCounters \
    --section WarpStateStats --section InstructionStats --section SpeedOfLight -f -o "$out/fused" \
    "$bin/cuda_gpu" --ignored "$case" --exact --nocapture 2>&1 | tail -n 5
ncu -i "$out/fused.ncu-rep" --page details --csv >"$out/details.csv" 2>&1
ncu -i "$out/fused.ncu-rep" --page source --print-source sass --csv >"$out/sass.csv" 2>&1
ls -la "$out"
head -c 1500 "$out/sass.csv"
