#!/usr/bin/env bash
# Builds kernel variant folders under .gpu-bin/variants/ for REPTILE_KERNELS_DIR experiments:
# each is a full copy of kernels/ with one change. Run on the GPU machine with
#   for v in .gpu-bin/variants/*; do REPTILE_KERNELS_DIR=$v .gpu-bin/cuda_gpu --ignored bench_fused_default --exact --nocapture; done
# (scripts/gpu-check.sh does this in its kernel-variants step; scripts/gpu-build.sh calls this script).
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
# kunroll2: the products' quad loops unrolled by 2 (more loads in flight, more registers; as of
# session 19 the n = 4096 sine build spills under its 5-block bound: 132 B stored, 172 B loaded).
mk kunroll2
sed -i 's|#define REPTILE_KUNROLL 1|#define REPTILE_KUNROLL 2|' "$root/kunroll2/common.cuh"
grep -q 'REPTILE_KUNROLL 2' "$root/kunroll2/common.cuh"
# clamp: session 10's point clamp in every tile (before fused_in_batch let full tiles skip it),
# to time session 11's change against it.
mk clamp
sed -i 's/return bs % REPTILE_PTP == 0 || p < bs;/return p < bs;/' "$root/clamp/mlp_fused.cu"
grep -q 'return p < bs;' "$root/clamp/mlp_fused.cu"
# loss-every-step: every inner step reduces its loss value over the block, as before session
# 18 (since then only the first step's value is kept, so the others skip that reduction).
mk loss-every-step
sed -i 's/, true, s == 0, head.loss, part)/, true, true, head.loss, part)/' "$root/loss-every-step/mlp_fused.cu"
[[ $(grep -c ', true, true, head.loss, part)' "$root/loss-every-step/mlp_fused.cu") -eq 2 ]]
# from NAME REV: the kernels as of commit REV (skipped outside a git checkout), with today's host
# code (the kernels read the prefix of the FusedParams they are passed).
from() {
    git cat-file -e "$2" 2>/dev/null || return 0
    mk "$1"
    for f in common.cuh mlp_fused.cu mlp_tiled.cu reptile_update.cu sine_device.cu; do
        git show "$2:kernels/$f" >"$root/$1/$f"
    done
}
# session-start: the kernels as session 18 found them (a5f2322), to time that session's kernel
# changes as a whole against session-18. It knows no lane split, and the host sizes a lane-split
# launch's shared memory without the partial-sum buffers these kernels would write, so the folder
# holds a `slices-only` marker that bench_fused_default honours.
from session-start a5f2322
[[ ! -d $root/session-start ]] || touch "$root/session-start/slices-only"
# Session 19's kernel changes as a chain of commits, each variant the one before the next change,
# so that neighbours in `order` differ by one or two changes: session-18 (36ae8c6, as session 18 left
# them) -> dw-bias-in-tiles (+ layer offsets without loops) -> warp-per-head (+ the bias gradient
# out of the dW tiles) -> element-division (+ lane groups for layers of <= 4 outputs, small
# layers' weights before biases) -> divided-stores (+ fused_each, constant shared-memory offsets)
# -> session-19 (+ tile and lane-split stores at constant offsets, one thread per element for a
# small layer's input gradient) -> dw-4x4 (session 20: + the head's input gradient in its
# lanes) -> epilogue-phase (+ 4 x 8 dW tiles) -> dz0-epilogue (+ the head finishes the split
# sums below it) -> base (+ layer 0's update finishes dZ_0).
from session-18 36ae8c6
# dw-bias-in-tiles (bf4dbbf): dW tiles that sum the bias gradient in every tile (for the it = 0
# tiles' use), point loop unrolled by 2.
from dw-bias-in-tiles bf4dbbf
# warp-per-head (bd3d940): a layer of at most 4 outputs takes a whole warp per output element
# (the sine net's 64 -> 1: 16 of the 32 lanes add zeros).
from warp-per-head bd3d940
# element-division (a2fc916): element loops divide every element's index by the width, and a
# specialized build carves shared memory from P.widths (offsets recomputed inside loops).
from element-division a2fc916
# divided-stores (bcd61a2): tiles store by index from the buffer's base, lane slices divide each
# value's index by the point tile, a small layer's input gradient runs on one warp of tiles.
from divided-stores bcd61a2
# session-19 (e5ce4cd, as session 19 left them): the sine head's input gradient in a backward
# phase of its own (one thread per element), and the head's lane groups at 16 lanes for 10
# points at 128 threads (two passes on one warp); session 20 moved it into the head's lanes.
from session-19 e5ce4cd
# dz0-epilogue (96ab3ca): before session 20's last kernel change, layer 1's warp-split input
# gradient adds its slices in an epilogue phase (base: layer 0's update finishes dZ_0 itself).
from dz0-epilogue 96ab3ca
# epilogue-phase (efb3ba0): before the change before that, the warp-split 64 -> 64
# layer under the sine head adds its slices in an epilogue phase of its own (base: the head's
# lanes do it as they read the rows).
from epilogue-phase efb3ba0
# dw-4x4 (e3dbd39): session 20's head change alone; the 64 x 64 dW tiles still 4 x 4, two per
# thread at 128 threads (base: 4 x 8, one per thread).
from dw-4x4 e3dbd39
# The order gpu-check.sh times them in (the comparisons that decide defaults first, in case its
# step runs out of time).
order="base dz0-epilogue epilogue-phase dw-4x4 session-19 divided-stores element-division warp-per-head dw-bias-in-tiles session-18 session-start loss-every-step fast-tanh no-split clamp kunroll2"
for v in "$root"/*/; do
    [[ " $order " == *" $(basename "$v") "* ]] || { echo "gpu-variants.sh: $(basename "$v") missing from order" >&2; exit 1; }
done
for v in $order; do if [[ -d $root/$v ]]; then echo "$v"; fi; done >"$root/order"
cat "$root/order"
