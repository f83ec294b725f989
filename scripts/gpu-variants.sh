#!/usr/bin/env bash
# Builds kernel variant folders under .gpu-bin/variants/ for REPTILE_KERNELS_DIR experiments:
# each is a full copy of kernels/ with one change. Run on the GPU machine with
#   for v in .gpu-bin/variants/*; do REPTILE_KERNELS_DIR=$v .gpu-bin/cuda_gpu --ignored bench_fused --exact --nocapture; done
set -euo pipefail
cd "$(dirname "$0")/.."
root=.gpu-bin/variants
rm -rf "$root"
mk() { mkdir -p "$root/$1" && cp kernels/*.cu kernels/*.cuh "$root/$1/"; }
mk base
# fast-tanh: tanh through one exponential instead of the library's tanhf.
mk fast-tanh
sed -i 's|return act == REPTILE_ACT_TANH ? tanhf(z) : fmaxf(z, 0.0f);|return act == REPTILE_ACT_TANH ? 1.0f - 2.0f / (__expf(2.0f * z) + 1.0f) : fmaxf(z, 0.0f);|' "$root/fast-tanh/common.cuh"
grep -q '__expf(2.0f' "$root/fast-tanh/common.cuh"
# no-split: products never split over warp slices.
mk no-split
sed -i 's|#define REPTILE_SPLIT 4|#define REPTILE_SPLIT 1|' "$root/no-split/common.cuh"
grep -q 'REPTILE_SPLIT 1' "$root/no-split/common.cuh"
# old: the session-start kernel (one output × 4 points per thread), for a same-machine baseline.
mk old
git show f6ad682:kernels/mlp_fused.cu >"$root/old/mlp_fused.cu"
git show f6ad682:kernels/common.cuh >"$root/old/common.cuh"
ls "$root"
