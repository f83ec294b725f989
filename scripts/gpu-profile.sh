#!/usr/bin/env bash
# Instruction-level profile of the fused kernel on a GPU machine (ncu): one launch of
# profile_case's sine batch (n = 4096, k = 5), with per-SASS-instruction execution counts.
# Writes $OUT/sass.csv (source page, SASS), $OUT/details.csv and the report itself.
#   bash scripts/gpu-build.sh && <device run, carry [".gpu-bin"]> bash scripts/gpu-profile.sh
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-.gpu-bin}
out=${OUT:-/tmp/gpu-profile}
mkdir -p "$out"
# shellcheck source=scripts/gpu-env.sh
source scripts/gpu-env.sh
export REPTILE_REQUIRE_GPU=1
timeout -k 5 150 ncu --clock-control none -k regex:reptile_fused_inner --launch-count 1 --section SourceCounters \
    --section WarpStateStats --section InstructionStats --section SpeedOfLight -f -o "$out/fused" \
    "$bin/cuda_gpu" --ignored profile_case --exact --nocapture 2>&1 | tail -n 5
ncu -i "$out/fused.ncu-rep" --page details --csv >"$out/details.csv" 2>&1
ncu -i "$out/fused.ncu-rep" --page source --print-source sass --csv >"$out/sass.csv" 2>&1
ls -la "$out"
head -c 1500 "$out/sass.csv"
