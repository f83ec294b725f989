// Kernel family 1: the fused Reptile inner loop, one thread block per task.
//
// Computes, for task t = blockIdx.x, exactly what the CPU path (src/meta/inner.rs with
// src/cpu/mlp.rs) computes: θ' ← θ, then k SGD steps θ' ← θ' − α·∇L(θ'; minibatch s), where
// minibatch s is the index list idx[t][s][0..b_s] (generated on the host with the CPU path's
// random streams, so the minibatch order is the same), then one more forward pass on the first
// minibatch for the loss after adaptation. It writes delta[t] = θ'_k − θ (Reptile) or
// θ'_k − θ'_{k−1} (FOMAML) in the flat θ layout of src/spec.rs, and losses[t] = (loss of the
// first minibatch at θ, loss of the same minibatch at θ'_k).
//
// Everything a task touches lives in dynamic shared memory for the whole launch (layout below,
// mirrored by `FusedLayout` in src/cuda/plan.rs): θ' with W rows padded to an odd number of
// 16-byte vectors (reptile_ldw) and biases to whole vectors, the activations of every layer
// for the minibatch (the loss gradient overwrites the output's), two gradient buffers for the
// hidden layers' dL/dZ (fused_dz), the gathered minibatch inputs and targets (all these per-point buffers with rows at
// the same kind of stride, reptile_lda), 32 floats of reduction scratch, the staged task when
// P.stage is set (its points and index lists, copied once), and the partial sums of products
// split over warp slices. Padding is cleared at the start and never written. Global memory is
// read for θ at the start, the task's points and index lists (once if staged, else per step),
// and written once at the end.
//
// Work mapping (llm.c style: each phase is a flat loop over its items with stride blockDim,
// the item → (row, column) map chosen so a warp reads shared memory without bank conflicts,
// and __syncthreads between phases). Shared memory is read in 16-byte vectors along each
// product's reduction; the products use register tiles of 4 outputs (or inputs) ×
// REPTILE_PTP points:
//   forward, layer l:  tile = 4 outputs {ot + r·To} (strided: a warp reads 8 consecutive rows
//                      of W per 16-byte phase at the odd-vector stride) × REPTILE_PTP
//                      consecutive points (A reads are broadcasts). When the tiles fill only
//                      part of the block, the reduction is split (fused_slices) over up to
//                      REPTILE_SPLIT warp slices, whose partial sums an epilogue phase adds in
//                      slice order (under a one-output head, in specialized builds, the
//                      head's lanes add them as they read each row: fused_finish_quad), or
//                      (FusedParams::lanes) over 2 or 4 lanes of each warp,
//                      summed by shuffles (fused_scatter) with no epilogue phase and no
//                      partial-sum buffers. A layer with ≤ 4 inputs: one thread per output element;
//                      with ≤ 4 outputs: a group of up to 32 lanes per output element, lanes
//                      over the reduction (as few as give every element a group in one pass).
//   loss (MSE):        item = output element (p, j); loss partial sums reduced by warp shuffles.
//                      In training steps an output layer on the lane-group path (≤ 4 outputs)
//                      computes it instead, in the lane that writes the element (fused_forward).
//   loss (CE):         item = point p (max, Σexp, gradient over the point's outputs).
//   backward dA:       tile = 4 consecutive inputs × REPTILE_PTP points, same split rule
//                      (in specialized builds, layer 1's warp-slice sums are finished by layer
//                      0's update where that is their only reader: fused_dz0_split). A
//                      layer with ≤ 4 outputs: one thread per input element; a one-output
//                      MSE head in a training step: in the forward pass, each lane of the
//                      element's group over its quads of the inputs (fused_forward).
//   backward dW + SGD: tile = 4 consecutive outputs × 4 consecutive inputs, it fast (× 8
//                      inputs, two quads Ti/2 apart, where that still gives every thread a
//                      tile: fused_dw_tiles); sums over the minibatch's points and updates its
//                      weights in place a phase after dA has read W (beside the next layer's
//                      dA where the buffers allow: fused_backward_sgd); before its tiles, each
//                      thread from the block's end sums one output's bias gradient. A layer
//                      with out·(in + 1) ≤ 2·blockDim: one thread per weight or bias.
// Requirements: blockDim.x a multiple of 32, at most 512 (see the launch bounds below);
// dynamic shared memory as `plan::fused_launch_bytes` for the launch's block size and split.

#include "common.cuh"

// Shape specialization. Built plainly, the kernel reads every shape at run time (FusedParams,
// the shared-memory header, blockDim). Built with REPTILE_SPEC defined (the host passes the
// network, minibatch sizes and block size as -D options and compiles one module per shape),
// the same code sees them as compile-time constants: layer loops unroll, divisions by widths
// become multiplications, and the products' trip counts are fixed.
#ifdef REPTILE_SPEC
#define FS_L(P) REPTILE_SPEC_L
#define FS_ACT(P) REPTILE_SPEC_ACT
#define FS_LOSS(P) REPTILE_SPEC_LOSS
#define FS_B(P) REPTILE_SPEC_B
#define FS_BLAST(P) REPTILE_SPEC_BLAST
#define FS_STRIDE(P) (REPTILE_SPEC_B > REPTILE_SPEC_BLAST ? REPTILE_SPEC_B : REPTILE_SPEC_BLAST)
#define FS_BLOCK REPTILE_SPEC_BLOCK
#define FS_STAGE(P) REPTILE_SPEC_STAGE
#define FS_LANES(P) REPTILE_SPEC_LANES
#define FS_SPLIT(P) REPTILE_SPEC_SPLIT
#define FS_LAYER_UNROLL REPTILE_UNROLL  // loops over shapes (layers, a lane's quads): unrolled here only
#define FS_WIDTH(P, l) fs_width(l)
#define FS_DEFER 1
__device__ __forceinline__ constexpr int fs_width(int l) {
    return l == 0 ? REPTILE_SPEC_W0 : l == 1 ? REPTILE_SPEC_W1 : l == 2 ? REPTILE_SPEC_W2 : l == 3 ? REPTILE_SPEC_W3
         : l == 4 ? REPTILE_SPEC_W4 : l == 5 ? REPTILE_SPEC_W5 : l == 6 ? REPTILE_SPEC_W6 : l == 7 ? REPTILE_SPEC_W7
         : l == 8 ? REPTILE_SPEC_W8 : 0;
}
// Offsets as sums of per-layer terms with no loop in them. NVVM folds these to constants where
// l is one (the unrolled layer loops), but it leaves a loop `for (j < l)` as a run-time loop
// even then (ptxas made it a jump table on fs_width: 13 of them in the sine build, inside
// every step's forward and backward passes, before session 19).
#define FS_PREFIX8(T, l)                                                                              \
    (((l) > 0 ? T(0) : 0) + ((l) > 1 ? T(1) : 0) + ((l) > 2 ? T(2) : 0) + ((l) > 3 ? T(3) : 0) + \
     ((l) > 4 ? T(4) : 0) + ((l) > 5 ? T(5) : 0) + ((l) > 6 ? T(6) : 0) + ((l) > 7 ? T(7) : 0))
// Floats of layer j's padded W and bias, and of one point's row of its activations.
__device__ __forceinline__ constexpr int fs_w_size(int j) {
    return fs_width(j + 1) * reptile_ldw(fs_width(j)) + reptile_pad4(fs_width(j + 1));
}
__device__ __forceinline__ constexpr int fs_act_size(int j) { return reptile_lda(fs_width(j + 1)); }
__device__ __forceinline__ constexpr int fs_w_off(int l) { return FS_PREFIX8(fs_w_size, l); }
__device__ __forceinline__ constexpr int fs_act_off(int l) { return FS_PREFIX8(fs_act_size, l); }
__device__ __forceinline__ constexpr int fs_max(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ constexpr int fs_gmax() {
    return fs_max(fs_max(fs_max(1, fs_width(1)), fs_max(fs_width(2), fs_width(3))),
                  fs_max(fs_max(fs_width(4), fs_width(5)), fs_max(fs_max(fs_width(6), fs_width(7)), fs_width(8))));
}
#else
#define FS_L(P) (P).n_layers
#define FS_ACT(P) (P).act
#define FS_LOSS(P) (P).loss
#define FS_B(P) (P).b
#define FS_BLAST(P) (P).b_last
#define FS_STRIDE(P) (P).idx_stride
#define FS_BLOCK ((int)blockDim.x)
#define FS_STAGE(P) (P).stage
#define FS_LANES(P) (P).lanes
#define FS_SPLIT(P) (P).split
#define FS_LAYER_UNROLL
#define FS_WIDTH(P, l) (P).widths[l]
// Specialized builds only: a warp-split product leaves its epilogue to its only reader (the
// layer under a one-output head to the head, fused_forward; dZ_0 to layer 0's update,
// fused_dz0_split). In the generic build the head's finishing code pushed the serial kernel
// (at its 128-register cap on sm_80) into 60 B of spills.
#define FS_DEFER 0
#endif

// Pointers into the block's dynamic shared memory. Per-layer sizes and offsets live in a small
// int header at the start of shared memory (written by thread 0), so loops over layers index
// shared memory rather than a local array (which would go to local memory).
struct FusedSmem {
    const int* hdr;  // [widths: 9 | w_off: 8 | b_off: 8 | act_off: 8], REPTILE_FUSED_HDR ints
    float* theta;    // padded θ'
    float* acts;     // layer l's activations at act_off[l]·bmax, [points × out_l], row stride lda(out_l)
    float* g0;       // gradient ping-pong buffers, bmax·lda(gmax) each
    float* g1;
    float* xb;       // gathered inputs [bmax × in], row stride lda(in)
    float* yb;       // gathered targets [bmax × out], row stride lda(out) (labels: unsigned [bmax])
    float* xb2;      // the next minibatch's, gathered during the last backward phase
    float* yb2;      //   (fused_swap_batch exchanges them with xb, yb)
    float* red;      // 32 floats of reduction scratch
    float* task;     // staged task (P.stage): x [m × in], y [m × out] or labels [m], idx [steps × stride]
    float* scr;      // (FusedParams::split − 1) partial-sum buffers, bmax·lda(gmax) each
    int gm;          // gmax: the widest layer output
#ifdef REPTILE_SPEC
    __device__ __forceinline__ int gmax() const { return fs_gmax(); }
    __device__ __forceinline__ int width(int l) const { return fs_width(l); }
    __device__ __forceinline__ int w_off(int l) const { return fs_w_off(l); }
    __device__ __forceinline__ int b_off(int l) const { return fs_w_off(l) + fs_width(l + 1) * reptile_ldw(fs_width(l)); }
    __device__ __forceinline__ int act_off(int l) const { return fs_act_off(l); }
#else
    __device__ __forceinline__ int gmax() const { return gm; }
    __device__ __forceinline__ int width(int l) const { return hdr[l]; }
    __device__ __forceinline__ int w_off(int l) const { return hdr[REPTILE_MAX_LAYERS + 1 + l]; }
    __device__ __forceinline__ int b_off(int l) const { return hdr[2 * REPTILE_MAX_LAYERS + 1 + l]; }
    __device__ __forceinline__ int act_off(int l) const { return hdr[3 * REPTILE_MAX_LAYERS + 1 + l]; }
#endif
};

#define REPTILE_FUSED_HDR 36  // ≥ 4·REPTILE_MAX_LAYERS + 1, a multiple of 4 (16-byte alignment)

// The staged task's layout (plan::stage_floats): x [m × in] at 0, then y [m × out] or the
// labels [m] at nx, then the index lists [steps × stride] at nx + ny; `floats` rounds the total
// up to whole 16-byte vectors. The one description of it the kernels use.
struct FusedStage {
    int nx, ny, floats;
};

__device__ __forceinline__ FusedStage fused_stage(const FusedParams& P, int din, int dout) {
    FusedStage g;
    g.nx = P.m * din;
    g.ny = FS_LOSS(P) == REPTILE_LOSS_MSE ? P.m * dout : P.m;
    g.floats = reptile_pad4(g.nx + g.ny + P.steps * FS_STRIDE(P));
    return g;
}

// Carves shared memory (layout mirrored by FusedLayout in src/cuda/plan.rs). The loop over
// layers is unrolled to constant indices, so P.widths stays in registers / parameter space; a
// specialized build reads the widths as constants (FS_WIDTH), so the buffers sit at constant
// offsets (from P.widths, ptxas recomputed them inside the step's loops). Thread 0 writes the
// header; the caller synchronizes before reading it.
__device__ __forceinline__ void fused_carve(const FusedParams& P, float* smem, FusedSmem& S) {
    const int L = FS_L(P), bmax = FS_STRIDE(P);
    int* hdr = (int*)smem;
    const bool writer = threadIdx.x == 0;
    int off = 0, aoff = 0, gmax = 1;
    REPTILE_UNROLL
    for (int l = 0; l < REPTILE_MAX_LAYERS; ++l) {
        if (l < L) {
            const int in = FS_WIDTH(P, l), out = FS_WIDTH(P, l + 1);
            if (writer) {
                hdr[REPTILE_MAX_LAYERS + 1 + l] = off;
                hdr[2 * REPTILE_MAX_LAYERS + 1 + l] = off + out * reptile_ldw(in);
                hdr[3 * REPTILE_MAX_LAYERS + 1 + l] = aoff;
            }
            off += out * reptile_ldw(in) + reptile_pad4(out);
            aoff += reptile_lda(out);
            if (out > gmax) gmax = out;
        }
    }
    REPTILE_UNROLL
    for (int l = 0; l <= REPTILE_MAX_LAYERS; ++l)
        if (writer) hdr[l] = P.widths[l];
    S.hdr = hdr;
    S.theta = smem + REPTILE_FUSED_HDR;
    S.acts = S.theta + off;
    S.g0 = S.acts + aoff * bmax;
    S.g1 = S.g0 + reptile_lda(gmax) * bmax;
    S.xb = S.g1 + reptile_lda(gmax) * bmax;
    S.yb = S.xb + reptile_lda(FS_WIDTH(P, 0)) * bmax;
    int dout = 0;
    REPTILE_UNROLL
    for (int l = 1; l <= REPTILE_MAX_LAYERS; ++l)
        if (l == L) dout = FS_WIDTH(P, l);
    S.xb2 = S.yb + reptile_lda(dout) * bmax;
    S.yb2 = S.xb2 + reptile_lda(FS_WIDTH(P, 0)) * bmax;
    S.red = S.yb2 + reptile_lda(dout) * bmax;
    S.task = S.red + 32;
    S.scr = S.task + (FS_STAGE(P) ? fused_stage(P, FS_WIDTH(P, 0), dout).floats : 0);
    S.gm = gmax;
}

// Copies between the flat θ layout (global) and the padded one (shared). dir = 0: θ' ← θ;
// dir = 1: dst[j] = θ'[j] − base[j] (base may alias dst: each element is read then written by
// the same thread).
__device__ __forceinline__ void fused_load_theta(const FusedParams& P, const FusedSmem& S, const float* __restrict__ theta) {
    int flat = 0;
    FS_LAYER_UNROLL
    for (int l = 0; l < FS_L(P); ++l) {
        const int in = S.width(l), out = S.width(l + 1), ldw = reptile_ldw(in);
        for (int e = threadIdx.x; e < out * in; e += FS_BLOCK) {
            const int o = e / in, i = e - o * in;
            S.theta[S.w_off(l) + o * ldw + i] = theta[flat + e];
        }
        flat += out * in;
        for (int o = threadIdx.x; o < out; o += FS_BLOCK) S.theta[S.b_off(l) + o] = theta[flat + o];
        flat += out;
    }
}

__device__ __forceinline__ void fused_store_diff(const FusedParams& P, const FusedSmem& S, const float* base, float* dst) {
    int flat = 0;
    FS_LAYER_UNROLL
    for (int l = 0; l < FS_L(P); ++l) {
        const int in = S.width(l), out = S.width(l + 1), ldw = reptile_ldw(in);
        for (int e = threadIdx.x; e < out * in; e += FS_BLOCK) {
            const int o = e / in, i = e - o * in;
            dst[flat + e] = S.theta[S.w_off(l) + o * ldw + i] - base[flat + e];
        }
        flat += out * in;
        for (int o = threadIdx.x; o < out; o += FS_BLOCK) dst[flat + o] = S.theta[S.b_off(l) + o] - base[flat + o];
        flat += out;
    }
}

// Same layout change without subtracting: dst ← src (flat), src a padded θ (θ' by default).
__device__ __forceinline__ void fused_store_theta(const FusedParams& P, const FusedSmem& S, float* dst,
                                                  const float* src = nullptr) {
    if (src == nullptr) src = S.theta;
    int flat = 0;
    FS_LAYER_UNROLL
    for (int l = 0; l < FS_L(P); ++l) {
        const int in = S.width(l), out = S.width(l + 1), ldw = reptile_ldw(in);
        for (int e = threadIdx.x; e < out * in; e += FS_BLOCK) {
            const int o = e / in, i = e - o * in;
            dst[flat + e] = src[S.w_off(l) + o * ldw + i];
        }
        flat += out * in;
        for (int o = threadIdx.x; o < out; o += FS_BLOCK) dst[flat + o] = src[S.b_off(l) + o];
        flat += out;
    }
}

// One minibatch to gather: the `bs` points idx[0..bs] of a task's x / y (values) or labels.
// idx == nullptr: none.
struct FusedBatch {
    const float* x;
    const float* y;
    const unsigned* labels;
    const unsigned* idx;
    int bs;
};

// Gathers minibatch `m` into xb / yb, or with `next` into xb2 / yb2 (the next step's, while
// this step's are still being read).
__device__ __forceinline__ void fused_gather(const FusedParams& P, const FusedSmem& S, const FusedBatch& m,
                                             bool next = false) {
    const int din = S.width(0), dout = S.width(FS_L(P)), bs = m.bs;
    float* xb = next ? S.xb2 : S.xb;
    float* yb = next ? S.yb2 : S.yb;
    for (int e = threadIdx.x; e < bs * din; e += FS_BLOCK) {
        const int p = e / din, i = e - p * din;
        xb[p * reptile_lda(din) + i] = m.x[(size_t)m.idx[p] * din + i];
    }
    if (FS_LOSS(P) == REPTILE_LOSS_MSE) {
        for (int e = threadIdx.x; e < bs * dout; e += FS_BLOCK) {
            const int p = e / dout, j = e - p * dout;
            yb[p * reptile_lda(dout) + j] = m.y[(size_t)m.idx[p] * dout + j];
        }
    } else {
        unsigned* lb = (unsigned*)yb;
        for (int p = threadIdx.x; p < bs; p += FS_BLOCK) lb[p] = m.labels[m.idx[p]];
    }
}

// After a barrier that completed a `next` gather: the next minibatch becomes the current one.
// Every thread swaps its own copy of the pointers the same way.
__device__ __forceinline__ void fused_swap_batch(FusedSmem& S) {
    float* t = S.xb;
    S.xb = S.xb2;
    S.xb2 = t;
    t = S.yb;
    S.yb = S.yb2;
    S.yb2 = t;
}

// Clears the block's shared memory from θ' up to the reduction scratch, so every padding
// column of θ' and of the per-point buffers is zero for the whole launch (the products read
// whole 16-byte vectors; only real columns are ever written afterwards). Caller synchronizes.
__device__ __forceinline__ void fused_clear(const FusedSmem& S) {
    const int n4 = (int)(S.red - S.theta) >> 2;
    const float4 z = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int e = threadIdx.x; e < n4; e += FS_BLOCK) reptile_st4v(S.theta + 4 * e, z);
}

// Step s's minibatch of the task (bs points): from the staged copy in shared memory (P.stage),
// else from global memory (xt, yt, lt: the task's points; it: its index lists).
__device__ __forceinline__ FusedBatch fused_task_batch(const FusedParams& P, const FusedSmem& S, const float* xt,
                                                       const float* yt, const unsigned* lt, const unsigned* it,
                                                       int s, int bs) {
    if (FS_STAGE(P)) {
        const FusedStage g = fused_stage(P, S.width(0), S.width(FS_L(P)));
        const unsigned* su = (const unsigned*)S.task;
        return FusedBatch{S.task, S.task + g.nx, su + g.nx, su + g.nx + g.ny + s * FS_STRIDE(P), bs};
    }
    return FusedBatch{xt, yt, lt, it + (size_t)s * FS_STRIDE(P), bs};
}

// Slices that split a product's reduction (nq 16-byte quads of the reduced dimension) when its
// tiles fill only part of the block: slice s of S sums quads [s·Qc, (s+1)·Qc), Qc = ⌈nq/S⌉.
// S is uniform across the block. Two ways to split, chosen by FusedParams::lanes:
//  - warp slices (lanes = 0): every warp of a slice on the same quads (so W reads stay
//    conflict-free and point reads stay broadcasts); slices write partial sums that an
//    epilogue phase adds in slice order, after a barrier. S = min(REPTILE_SPLIT, cap, warps
//    per block / warps the tiles need, nq), at least 1, with cap = FusedParams::split (mirrored
//    on the host by `plan::fused_splits`, which sizes the partial-sum buffers).
//  - lanes (lanes = 1): the S lanes lane ^ (32/S)·j of a warp share a tile, lane slice
//    lane / (32/S), so the 8 lanes of each 16-byte phase hold 8 consecutive tiles of one slice
//    (the same conflict-free W reads and broadcast point reads); fused_scatter sums them by
//    shuffles and leaves each lane N/S of the tile's totals to store. S = 4 or 2 where
//    items·S ≤ blockDim and S ≤ min(REPTILE_SPLIT, nq), else 1. The warps cover the tiles in
//    one pass; lanes past the last tile in a warp that has tiles (`live` false) compute a copy
//    of tile 0 for the shuffles and store nothing.
// The item loop runs `for (item = first; sl < split && item < end; item += step)`.
struct FusedSlices {
    int split;   // S
    int sl;      // this thread's slice (idle when ≥ split)
    int first;   // its first tile
    int step;    // tile stride
    int end;     // loop bound: items, or (lanes) items rounded up to whole warps' tiles
    int q0, q1;  // its range of quads
    bool lanes;  // split over lanes: the loop body calls fused_scatter (warp-uniform trip count)
};

__device__ __forceinline__ FusedSlices fused_slices(int items, int nq, int lanes, int cap) {
    FusedSlices f;
    int S;
    if (lanes) {
        S = 1;
        if (2 <= REPTILE_SPLIT && 2 <= nq && items * 2 <= FS_BLOCK) S = 2;
        if (4 <= REPTILE_SPLIT && 4 <= nq && items * 4 <= FS_BLOCK) S = 4;
    } else {
        const int need = (items + 31) >> 5;
        S = (FS_BLOCK >> 5) / need;
        if (S > REPTILE_SPLIT) S = REPTILE_SPLIT;
        if (S > cap) S = cap;  // FusedParams::split
        if (S > nq) S = nq;
        if (S < 1) S = 1;
    }
    f.split = S;
    f.lanes = lanes && S > 1;
    f.end = items;
    if (S == 1) {
        f.sl = 0;
        f.first = threadIdx.x;
        f.step = FS_BLOCK;
        f.q0 = 0;
        f.q1 = nq;
        return f;
    }
    const int qc = (nq + S - 1) / S;
    if (f.lanes) {
        const int tw = 32 / S, lane = (int)(threadIdx.x & 31);
        f.sl = lane / tw;
        f.first = (int)(threadIdx.x >> 5) * tw + (lane - f.sl * tw);
        f.step = FS_BLOCK / S;
        f.end = (items + tw - 1) / tw * tw;
    } else {
        const int need = (items + 31) >> 5, w = threadIdx.x >> 5;
        f.sl = w / need;
        f.first = (w - f.sl * need) * 32 + (int)(threadIdx.x & 31);
        f.step = items;
    }
    f.q0 = f.sl * qc;
    f.q1 = f.q0 + qc < nq ? f.q0 + qc : nq;
    return f;
}

// One round of the lane split's reduction: lanes lane and lane ^ bit hold partial sums
// v[0..2H) of the same values; the lane without `bit` keeps v[0..H), the other v[H..2H), each
// adding its partner's half, so on return v[0..H) holds the pair's sums of its half.
template <int H, int N>
__device__ __forceinline__ void fused_halve(float (&v)[N], unsigned bit) {
    const bool hi = (threadIdx.x & bit) != 0;
    REPTILE_UNROLL
    for (int i = 0; i < H; ++i) {
        const float send = hi ? v[i] : v[i + H];
        const float keep = hi ? v[i + H] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, (int)bit);
    }
}

// The lane split's reduction (FusedSlices::lanes): the S = split lanes lane ^ (32/S)·j of a
// warp hold partial sums acc of one tile, N = REPTILE_PT·REPTILE_PTP values v[r·REPTILE_PTP + q]
// = acc[r][q]; afterwards lane slice sl holds the totals of the tile's values
// [sl·N/S, (sl+1)·N/S) in v[0..N/S). Each round halves the values a lane keeps
// and adds its partner's half, so every total is (s0 + s2) + (s1 + s3) (S = 4) or s0 + s1
// (S = 2), the same bits whichever lane computes it. Returns N/S. All 32 lanes must call it.
// Lane slice sl's values are whole rows sl·PT/S.. of the tile (S = 2 or 4 divides REPTILE_PT).
static_assert(REPTILE_PT % 4 == 0, "a lane slice holds whole rows of a tile");
__device__ __forceinline__ int fused_scatter(const float acc[REPTILE_PT][REPTILE_PTP], int split,
                                             float (&v)[REPTILE_PT * REPTILE_PTP]) {
    constexpr int N = REPTILE_PT * REPTILE_PTP;
    REPTILE_UNROLL
    for (int r = 0; r < REPTILE_PT; ++r) {
        REPTILE_UNROLL
        for (int q = 0; q < REPTILE_PTP; ++q) v[r * REPTILE_PTP + q] = acc[r][q];
    }
    if (split >= 2) fused_halve<N / 2>(v, 16u);
    if (split >= 4) fused_halve<N / 4>(v, 8u);
    return N / split;
}

// Whether point p = p0 + q of a tile (p0 a multiple of REPTILE_PTP below bs) is in the
// minibatch. When bs is a multiple of REPTILE_PTP every tile is full: for a compile-time bs
// (specialized builds) the test folds away, so the tile's point rows sit at constant offsets
// from one base (no per-point clamp and address arithmetic in the product loops).
__device__ __forceinline__ bool fused_in_batch(int p, int bs) { return bs % REPTILE_PTP == 0 || p < bs; }

// Clears a register tile (constant indices: it stays in registers).
__device__ __forceinline__ void fused_zero(float acc[REPTILE_PT][REPTILE_PTP]) {
    REPTILE_UNROLL
    for (int r = 0; r < REPTILE_PT; ++r) {
        REPTILE_UNROLL
        for (int q = 0; q < REPTILE_PTP; ++q) acc[r][q] = 0.0f;
    }
}

// Calls f(p, c) for the elements of a [rows × cols] grid, element e = p·cols + c to thread
// e mod blockDim, each thread's in increasing e. Where blockDim is a multiple of cols (constants
// in specialized builds: the sine net's 64 columns at 128 threads) a thread keeps its column
// and steps its row, with no division per element.
template <class F>
__device__ __forceinline__ void fused_each(int rows, int cols, F f) {
    if (FS_BLOCK % cols == 0) {
        const int c = (int)threadIdx.x % cols, step = FS_BLOCK / cols;
        for (int p = (int)threadIdx.x / cols; p < rows; p += step) f(p, c);
    } else {
        for (int e = threadIdx.x; e < rows * cols; e += FS_BLOCK) {
            const int p = e / cols;
            f(p, e - p * cols);
        }
    }
}

// Forward tile, reduction along rows of both operands:
// acc[r][q] += Σ_{4·q0 ≤ k < 4·q1} X[xoff[q] + k] · M[moff[r] + k], in increasing k
// (fmaf(X, M, acc), the CPU path's order within the range). Per quad: REPTILE_PT + REPTILE_PTP
// 16-byte loads feed 4·REPTILE_PT·REPTILE_PTP FMAs. Rows are 16-byte aligned, zero-padded.
__device__ __forceinline__ void fused_tile_rows(const float* M, const int moff[REPTILE_PT], const float* X,
                                                const int xoff[REPTILE_PTP], int q0, int q1,
                                                float acc[REPTILE_PT][REPTILE_PTP]) {
    REPTILE_UNROLL_N(REPTILE_KUNROLL)
    for (int kq = q0; kq < q1; ++kq) {
        const int k = 4 * kq;
        float4 m[REPTILE_PT], xv[REPTILE_PTP];
        REPTILE_UNROLL
        for (int r = 0; r < REPTILE_PT; ++r) m[r] = reptile_ld4v(M + moff[r] + k);
        REPTILE_UNROLL
        for (int q = 0; q < REPTILE_PTP; ++q) xv[q] = reptile_ld4v(X + xoff[q] + k);
        REPTILE_UNROLL
        for (int u = 0; u < 4; ++u) {
            REPTILE_UNROLL
            for (int r = 0; r < REPTILE_PT; ++r) {
                REPTILE_UNROLL
                for (int q = 0; q < REPTILE_PTP; ++q)
                    acc[r][q] = fmaf(reptile_comp(xv[q], u), reptile_comp(m[r], u), acc[r][q]);
            }
        }
    }
}

// Input-gradient tile, reduction down the columns of W: for the 4 consecutive inputs
// i0..i0+3 and REPTILE_PTP points, acc[c][q] += Σ_{o0 ≤ o < o1} G[goff[q] + o] · W[o·ldw + i0 + c],
// in increasing o. Whole quads of o read G as vectors; a ragged end (o1 − o0 not a multiple
// of 4, only at the end of the product) reads G one float at a time.
__device__ __forceinline__ void fused_tile_cols(const float* W, int ldw, int i0, const float* G,
                                                const int goff[REPTILE_PTP], int o0, int o1,
                                                float acc[REPTILE_PT][REPTILE_PTP]) {
    int o = o0;
    REPTILE_UNROLL_N(REPTILE_KUNROLL)
    for (; o + 4 <= o1; o += 4) {
        float4 g[REPTILE_PTP], w[4];
        REPTILE_UNROLL
        for (int q = 0; q < REPTILE_PTP; ++q) g[q] = reptile_ld4v(G + goff[q] + o);
        REPTILE_UNROLL
        for (int u = 0; u < 4; ++u) w[u] = reptile_ld4v(W + (o + u) * ldw + i0);
        REPTILE_UNROLL
        for (int u = 0; u < 4; ++u) {
            REPTILE_UNROLL
            for (int c = 0; c < REPTILE_PT; ++c) {
                REPTILE_UNROLL
                for (int q = 0; q < REPTILE_PTP; ++q)
                    acc[c][q] = fmaf(reptile_comp(g[q], u), reptile_comp(w[u], c), acc[c][q]);
            }
        }
    }
    for (; o < o1; ++o) {
        const float4 w = reptile_ld4v(W + o * ldw + i0);
        float g[REPTILE_PTP];
        REPTILE_UNROLL
        for (int q = 0; q < REPTILE_PTP; ++q) g[q] = G[goff[q] + o];
        REPTILE_UNROLL
        for (int c = 0; c < REPTILE_PT; ++c) {
            REPTILE_UNROLL
            for (int q = 0; q < REPTILE_PTP; ++q) acc[c][q] = fmaf(g[q], reptile_comp(w, c), acc[c][q]);
        }
    }
}

// Partial-sum buffer of slice s ≥ 1 ([points × width], FusedParams::split − 1 of them).
__device__ __forceinline__ float* fused_part(const FusedParams& P, const FusedSmem& S, int s) {
    return S.scr + (s - 1) * FS_STRIDE(P) * reptile_lda(S.gmax());
}

// A split product's epilogue sum of element a: v (slice 0's, in the output) plus the partial
// sums of slices 1..split−1, in slice order.
__device__ __forceinline__ float fused_add_parts(const FusedParams& P, const FusedSmem& S, int split, int a, float v) {
    for (int t = 1; t < split; ++t) v += fused_part(P, S, t)[a];
    return v;
}

// A split input gradient's element a, finished: (G[a] + the other slices' sums, in slice
// order)·act'(A[a]). The epilogue of fused_input_grad, and layer 0's update where it takes
// that epilogue over (fused_dz0_split).
__device__ __forceinline__ float fused_finish_dz(const FusedParams& P, const FusedSmem& S, int split, const float* G,
                                                 const float* A, int a) {
    return fused_add_parts(P, S, split, a, G[a]) * reptile_act_grad(FS_ACT(P), A[a]);
}

// Stores the columns c0.. of quad v that lie below `width` at dst (dst = row + c0, 16-byte
// aligned): one vector store for a whole quad, else the real columns one by one (a row's
// padding columns keep their value).
__device__ __forceinline__ void fused_st4_real(float* dst, float4 v, int c0, int width) {
    if (c0 + 4 <= width) {
        reptile_st4v(dst, v);
    } else {
        REPTILE_UNROLL
        for (int c = 0; c < 4; ++c)
            if (c0 + c < width) dst[c] = reptile_comp(v, c);
    }
}

// dL/dZ_l, [points × out_l] at row stride lda(out_l): the last layer's in place of its output
// (fused_loss writes it over Ŷ, which nothing reads afterwards), the hidden layers' in g0 and
// g1 alternately from the top (dZ_{L−2} in g0, dZ_{L−3} in g1, ...).
__device__ __forceinline__ float* fused_dz(const FusedParams& P, const FusedSmem& S, int l) {
    const int L = FS_L(P);
    if (l == L - 1) return S.acts + S.act_off(L - 1) * FS_STRIDE(P);
    return ((L - 2 - l) & 1) ? S.g1 : S.g0;
}

// Largest power of two ≤ x, between 1 and 32 (written out: NVVM leaves a loop over a constant
// as a run-time loop).
__device__ __forceinline__ int fused_pow2_floor(int x) {
    return x >= 32 ? 32 : x >= 16 ? 16 : x >= 8 ? 8 : x >= 4 ? 4 : x >= 2 ? 2 : 1;
}

// v + a·w over one quad, in component order (fmaf).
__device__ __forceinline__ float fused_dot4(float4 a, float4 w, float v) {
    v = fmaf(a.x, w.x, v);
    v = fmaf(a.y, w.y, v);
    v = fmaf(a.z, w.z, v);
    return fmaf(a.w, w.w, v);
}

// Finishes one quad of a split product's row for its reader (the head below which fused_forward
// deferred the epilogue): columns c0..c0+3 of element index a0 (c0 = a0's column) of A =
// act(bias + Σ slices) with the epilogue's arithmetic (slice 0's raw sums in A itself plus the
// others in slice order, then bias, then act), stored back to A when `store` (real columns
// only) and returned with columns past `width` zero (the partial sums' padding is never
// cleared).
__device__ __forceinline__ float4 fused_finish_quad(const FusedParams& P, const FusedSmem& S, int split, float* A,
                                                    int a0, const float* bias, int c0, int width, bool store) {
    float4 v = reptile_ld4v(A + a0);
    for (int t = 1; t < split; ++t) {
        const float4 q = reptile_ld4v(fused_part(P, S, t) + a0);
        v.x += q.x;
        v.y += q.y;
        v.z += q.z;
        v.w += q.w;
    }
    const float4 b = reptile_ld4v(bias + c0);
    float4 r;
    r.x = c0 + 0 < width ? reptile_act(FS_ACT(P), b.x + v.x) : 0.0f;
    r.y = c0 + 1 < width ? reptile_act(FS_ACT(P), b.y + v.y) : 0.0f;
    r.z = c0 + 2 < width ? reptile_act(FS_ACT(P), b.z + v.z) : 0.0f;
    r.w = c0 + 3 < width ? reptile_act(FS_ACT(P), b.w + v.w) : 0.0f;
    if (store) fused_st4_real(A + a0, r, c0, width);
    return r;
}

// Forward pass over the gathered minibatch: A_l = act(A_{l−1}·W_lᵀ + b_l), last layer linear.
// Work map, layers with more than 4 outputs: a thread owns a tile of 4 outputs {ot + r·To}
// (strided, so a warp reads 8 consecutive rows of W per 16-byte phase without bank conflicts)
// × REPTILE_PTP consecutive points (A reads are broadcasts shared by lane pairs); item =
// chunk·To + ot. With S > 1 warp slices (fused_slices), slice 0 writes its raw sums into A_l,
// the others into scratch, and an epilogue phase (one thread per element) adds them in slice
// order, then bias and activation; or, for the layer under a one-output head (specialized
// builds, FS_DEFER), the head's lanes do so for the rows they read (`pending`,
// fused_finish_quad), with no phase of its own. Layers with at most 4 outputs (a regression
// head): a group of g lanes per output element (g a power of two ≤ 32, at most the
// reduction's quads rounded up and small enough for one pass over the elements), lanes over
// quads of the reduction, summed by shuffles.
//
// With `loss` (a training step), an MSE network whose last layer takes that lane-group path
// also finishes the loss there: the writing lane stores dL/dŶ = 2(Ŷ − Y)/(bs·out) in place
// of Ŷ (as fused_loss would) and adds (Ŷ − Y)² to *loss; the result's `loss` is then set and
// fused_loss is told so (no phase of its own). If that head also has one output and a hidden
// layer below it (the sine net's 64 → 1), its lanes go on to write that layer's gradient
// dZ_{L−2} (`dz` set), so the backward pass starts one layer down. Otherwise both are false
// and *loss is unchanged.
struct FusedHead {
    bool loss;  // dL/dŶ written, this thread's part of the loss summed
    bool dz;    // dZ_{L−2} written too (fused_backward_sgd skips the last layer's input gradient)
};

__device__ __forceinline__ FusedHead fused_forward(const FusedParams& P, const FusedSmem& S, int bs,
                                                   float* loss = nullptr) {
    const int L = FS_L(P), Tp = (bs + REPTILE_PTP - 1) / REPTILE_PTP;
    FusedHead head = {false, false};
    int pending = 0;  // > 1: the last layer's input is raw slice-0 sums, `pending` slices (defer)
    FS_LAYER_UNROLL
    for (int l = 0; l < L; ++l) {
        const int in = S.width(l), out = S.width(l + 1), ldw = reptile_ldw(in);
        const int lda_in = reptile_lda(in), lda_out = reptile_lda(out), nq = (in + 3) >> 2;
        const float* a_prev = l == 0 ? S.xb : S.acts + S.act_off(l - 1) * FS_STRIDE(P);
        float* z = S.acts + S.act_off(l) * FS_STRIDE(P);
        const float* W = S.theta + S.w_off(l);
        const float* bias = S.theta + S.b_off(l);
        const bool hidden = l + 1 < L;
        if (in <= 4) {
            // A layer fed by at most 4 inputs (the sine net's first): one thread per output
            // element, so the whole block shares the activations instead of one warp of tiles.
            fused_each(bs, out, [&](int p, int o) {
                float v = 0.0f;
                for (int k = 0; k < in; ++k) v = fmaf(a_prev[p * lda_in + k], W[o * ldw + k], v);
                v = bias[o] + v;
                z[p * lda_out + o] = hidden ? reptile_act(FS_ACT(P), v) : v;
            });
            __syncthreads();
            continue;
        }
        if (out <= 4) {
            // A group of g lanes per output element, lanes over quads of the reduction. g is
            // the quads rounded up to a power of two, at most 32, so no lane only adds zeros,
            // and at most what lets every element have a group in one pass of the block (the
            // sine net's 64 inputs: 16 lanes at 256 threads, 8 at 128 for 10 points, each lane
            // summing 2 quads), so no warp runs a second pass while the others wait.
            const int gq = nq <= 2 ? 2 : nq <= 4 ? 4 : nq <= 8 ? 8 : nq <= 16 ? 16 : 32;
            const int total = bs * out, gfit = fused_pow2_floor(FS_BLOCK / total);
            const int g = gq < gfit ? gq : gfit, trips = (nq + g - 1) / g;
            const int lane = threadIdx.x & 31, per = 32 / g, nw = FS_BLOCK >> 5;
            const int sub = lane / g, gl = lane - sub * g;
            const bool head_loss = !hidden && loss != nullptr && FS_LOSS(P) == REPTILE_LOSS_MSE;
            // The input gradient of a one-output MSE head, dZ_{L−2}[p][i] = dL/dŶ[p]·W[i]·
            // act'(A_{L−2}[p][i]), here rather than in a backward phase of its own: every lane of
            // the group holds the sum (reptile_group_sum), so each takes its own quads.
            const bool head_dz = head_loss && out == 1 && l > 0;
            for (int e0 = (int)(threadIdx.x >> 5) * per; e0 < total; e0 += nw * per) {  // warp-uniform
                const bool live = e0 + sub < total;  // false only for a last group past the elements
                const int e = live ? e0 + sub : e0;
                const int p = e / out, o = e - p * out;
                float v = 0.0f;
                // Quads gl + j·g, j < trips: a fixed trip count where shapes are constants, so
                // the loop unrolls (from gl, NVVM kept a run-time loop). Two loops, so that the
                // plain one stays as small as it was where `pending` folds to 0 (with both
                // reads in one loop, the lane-split build's loop no longer unrolled).
                if (pending > 1) {  // (one output: this group's row is no other group's)
                    const int lp = l > 0 ? l - 1 : 0;  // (pending > 1 only where l > 0)
                    float* a_fin = S.acts + S.act_off(lp) * FS_STRIDE(P);
                    FS_LAYER_UNROLL
                    for (int j = 0; j < trips; ++j) {
                        const int kq = gl + j * g;
                        if (kq < nq) {
                            const float4 a = fused_finish_quad(P, S, pending, a_fin, p * lda_in + 4 * kq,
                                                               S.theta + S.b_off(lp), 4 * kq, in, live);
                            v = fused_dot4(a, reptile_ld4v(W + o * ldw + 4 * kq), v);
                        }
                    }
                } else {
                    FS_LAYER_UNROLL
                    for (int j = 0; j < trips; ++j) {
                        const int kq = gl + j * g;
                        if (kq < nq)
                            v = fused_dot4(reptile_ld4v(a_prev + p * lda_in + 4 * kq), reptile_ld4v(W + o * ldw + 4 * kq), v);
                    }
                }
                v = bias[o] + reptile_group_sum(v, g);
                if (head_loss) {
                    const float d = v - S.yb[p * lda_out + o];
                    if (gl == 0 && live) *loss = fmaf(d, d, *loss);
                    v = 2.0f / (float)(bs * out) * d;
                }
                if (gl == 0 && live) z[p * lda_out + o] = hidden ? reptile_act(FS_ACT(P), v) : v;
                if (head_dz && live) {
                    // fused_input_grad's arithmetic for one output: (dL/dŶ·W[i])·act'(a).
                    float* dz = fused_dz(P, S, l - 1);
                    FS_LAYER_UNROLL
                    for (int j = 0; j < trips; ++j) {
                        const int kq = gl + j * g;
                        if (kq < nq) {
                            const float4 a = reptile_ld4v(a_prev + p * lda_in + 4 * kq);
                            const float4 w = reptile_ld4v(W + 4 * kq);
                            float4 gv;
                            gv.x = v * w.x * reptile_act_grad(FS_ACT(P), a.x);
                            gv.y = v * w.y * reptile_act_grad(FS_ACT(P), a.y);
                            gv.z = v * w.z * reptile_act_grad(FS_ACT(P), a.z);
                            gv.w = v * w.w * reptile_act_grad(FS_ACT(P), a.w);
                            fused_st4_real(dz + p * lda_in + 4 * kq, gv, 4 * kq, in);
                        }
                    }
                }
            }
            head.loss = head_loss;
            head.dz = head_dz;
            __syncthreads();
            continue;
        }
        const int To = (out + REPTILE_PT - 1) / REPTILE_PT, items = To * Tp;
        const FusedSlices f = fused_slices(items, nq, FS_LANES(P), FS_SPLIT(P));
        const int split = f.split, sl = f.sl;
        for (int item0 = f.first; sl < split && item0 < f.end; item0 += f.step) {
            const bool live = item0 < items;  // false only for a lane split's spare lanes
            const int item = live ? item0 : 0;
            const int ot = item % To, p0 = (item / To) * REPTILE_PTP;
            int woff[REPTILE_PT], xoff[REPTILE_PTP];
            REPTILE_UNROLL
            for (int r = 0; r < REPTILE_PT; ++r) {
                const int o = ot + r * To;
                woff[r] = (o < out ? o : ot) * ldw;  // out-of-range rows re-read row ot, never stored
            }
            REPTILE_UNROLL
            for (int q = 0; q < REPTILE_PTP; ++q) {
                const int p = p0 + q;
                xoff[q] = (fused_in_batch(p, bs) ? p : p0) * lda_in;
            }
            float acc[REPTILE_PT][REPTILE_PTP];
            fused_zero(acc);
            fused_tile_rows(W, woff, a_prev, xoff, f.q0, f.q1, acc);
            if (f.lanes) {
                float v[REPTILE_PT * REPTILE_PTP];
                const int cnt = fused_scatter(acc, split, v);
                // Lane slice sl holds the tile's values sl·cnt + i, i.e. whole rows r0.. (cnt
                // a multiple of REPTILE_PTP, see fused_scatter): value i at constant offsets from
                // the slice's first element.
                const int r0 = sl * (cnt / REPTILE_PTP);
                float* zt = z + p0 * lda_out + ot + r0 * To;
                const float* bt = bias + ot + r0 * To;
                REPTILE_UNROLL
                for (int i = 0; i < REPTILE_PT * REPTILE_PTP / 2; ++i) {
                    const int r = i / REPTILE_PTP, q = i - r * REPTILE_PTP;
                    const int o = ot + (r0 + r) * To, p = p0 + q;
                    if (i < cnt && live && o < out && fused_in_batch(p, bs)) {
                        const float val = bt[r * To] + v[i];
                        zt[q * lda_out + r * To] = hidden ? reptile_act(FS_ACT(P), val) : val;
                    }
                }
                continue;
            }
            // The tile's elements at (q·lda_out + r·To) from its first: constant offsets in a
            // specialized build (indexed from dst itself, ptxas computed each address apart).
            float* dst = (sl == 0 ? z : fused_part(P, S, sl)) + p0 * lda_out + ot;
            REPTILE_UNROLL
            for (int r = 0; r < REPTILE_PT; ++r) {
                const int o = ot + r * To;
                REPTILE_UNROLL
                for (int q = 0; q < REPTILE_PTP; ++q) {
                    const int p = p0 + q;
                    if (o < out && fused_in_batch(p, bs)) {
                        if (split == 1) {
                            const float v = bias[o] + acc[r][q];
                            dst[q * lda_out + r * To] = hidden ? reptile_act(FS_ACT(P), v) : v;
                        } else {
                            dst[q * lda_out + r * To] = acc[r][q];
                        }
                    }
                }
            }
        }
        // Below a one-output head (the sine net's 64 → 64 under its 64 → 1) the head's lanes
        // finish these sums row by row as they read them (fused_finish_quad): no epilogue
        // phase and no barrier of its own.
        const bool defer = FS_DEFER && split > 1 && !f.lanes && l + 2 == L && S.width(L) == 1;
        if (split > 1 && !f.lanes && !defer) {
            __syncthreads();  // every slice's partial sums written
            fused_each(bs, out, [&](int p, int o) {
                const int a = p * lda_out + o;
                const float v = bias[o] + fused_add_parts(P, S, split, a, z[a]);
                z[a] = hidden ? reptile_act(FS_ACT(P), v) : v;
            });
        }
        pending = defer ? split : 0;
        __syncthreads();
    }
    return head;
}

// Loss of the last forward output against the gathered targets; with `grad`, dL/dY into g0.
// With `total`, returns the loss in thread 0 (other threads: unspecified); without, skips the
// loss value and its block reduction (a barrier and thread 0's serial sum: the inner steps
// after the first need only the gradient) and returns 0. `done`: the forward pass already
// wrote the gradient and summed this thread's part of the loss (fused_forward's `loss`), so
// only the reduction is left. All threads must call it; it ends with the block synchronized
// (dL/dŶ complete).
__device__ __forceinline__ float fused_loss(const FusedParams& P, const FusedSmem& S, int bs, bool grad,
                                            bool total = true, bool done = false, float done_part = 0.0f) {
    const int L = FS_L(P), out = S.width(L), lda_out = reptile_lda(out);
    float* yhat = S.acts + S.act_off(L - 1) * FS_STRIDE(P);  // with `grad`, overwritten by dL/dŶ
    float part = 0.0f;
    double denom;
    if (done) {
        if (!total) return 0.0f;  // fused_forward ended with a barrier
        part = done_part;
        denom = (double)(bs * out);
    } else if (FS_LOSS(P) == REPTILE_LOSS_MSE) {
        const float scale = 2.0f / (float)(bs * out);
        fused_each(bs, out, [&](int p, int j) {
            const int a = p * lda_out + j;
            const float d = yhat[a] - S.yb[a];
            if (total) part = fmaf(d, d, part);
            if (grad) yhat[a] = scale * d;  // in place: this thread's element, read above
        });
        denom = (double)(bs * out);
    } else {
        const unsigned* lb = (const unsigned*)S.yb;
        const float inv = 1.0f / (float)bs;
        for (int p = threadIdx.x; p < bs; p += FS_BLOCK) {
            const float* row = yhat + p * lda_out;
            float mx = row[0];
            for (int j = 1; j < out; ++j) mx = fmaxf(mx, row[j]);
            float s = 0.0f;
            for (int j = 0; j < out; ++j) s += expf(row[j] - mx);
            const int c = (int)lb[p];
            if (total) part += mx + logf(s) - row[c];
            if (grad) {
                float* g = yhat + p * lda_out;  // in place: row was read above, each g[j] after row[j]
                const float k = inv / s;
                for (int j = 0; j < out; ++j) g[j] = expf(row[j] - mx) * k;
                g[c] -= inv;
            }
        }
        denom = (double)bs;
    }
    if (!total) {  // here !done
        __syncthreads();  // dL/dŶ complete
        return 0.0f;
    }
    const double sum = reptile_block_sum(part, S.red);  // synchronizes: dL/dŶ is complete
    return (float)(sum / denom);
}

// Whether dZ_0, the input gradient of layer 1, is left as raw warp-slice sums for layer 0's
// update to finish (the sine net's 64 ← 64 under its 1 → 64 first layer), and over how many
// slices: specialized builds (FS_DEFER), layer 1 on the tile path split over warp slices, and
// layer 0 with at most 4 inputs on the small update path, its only reader. Returns the split,
// or 0. Uniform over the block.
__device__ __forceinline__ int fused_dz0_split(const FusedParams& P, const FusedSmem& S, int bs) {
    if (!FS_DEFER || FS_L(P) < 2) return 0;
    const int in0 = S.width(0), out0 = S.width(1), out1 = S.width(2);
    if (in0 > 4 || out0 * (in0 + 1) > 2 * FS_BLOCK || out1 <= 4) return 0;
    const int Tp = (bs + REPTILE_PTP - 1) / REPTILE_PTP;
    const FusedSlices f = fused_slices(((out0 + 3) >> 2) * Tp, (out1 + 3) >> 2, FS_LANES(P), FS_SPLIT(P));
    return f.split > 1 && !f.lanes ? f.split : 0;
}

// Input gradient of layer l > 0: dZ_{l−1} = (dZ_l·W_l) ⊙ act'(A_{l−1}) from W_l before its
// update. Work map: a thread owns 4 consecutive inputs 4·it.. (a warp reads one contiguous run
// of a W row per 16-byte load) × REPTILE_PTP consecutive points, with the forward pass's split
// over quads of outputs (warp slices: slice 0 writes raw sums into dZ_{l−1}, an epilogue after
// a barrier adds the others and applies act', or for l = 1 layer 0's update does where
// fused_dz0_split says so; lanes: fused_scatter, no epilogue). A layer with at most 4 outputs:
// one thread per input element. Ends without a barrier.
__device__ __forceinline__ void fused_input_grad(const FusedParams& P, const FusedSmem& S, int l, int bs) {
    const int Tp = (bs + REPTILE_PTP - 1) / REPTILE_PTP;
    const int in = S.width(l), out = S.width(l + 1), ldw = reptile_ldw(in);
    const int lda_in = reptile_lda(in), lda_out = reptile_lda(out);
    const float* a_prev = S.acts + S.act_off(l - 1) * FS_STRIDE(P);
    const float* W = S.theta + S.w_off(l);
    const float* gcur = fused_dz(P, S, l);
    float* gnext = fused_dz(P, S, l - 1);
    if (out <= 4) {
        // A layer with at most 4 outputs (the sine net's last): one thread per input element,
        // so the whole block shares its few products instead of one warp of tiles (the tiles'
        // sums in the same order: fmaf over increasing o from 0, unsplit).
        fused_each(bs, in, [&](int p, int i) {
            float acc = 0.0f;
            for (int o = 0; o < out; ++o) acc = fmaf(gcur[p * lda_out + o], W[o * ldw + i], acc);
            const int a = p * lda_in + i;
            gnext[a] = acc * reptile_act_grad(FS_ACT(P), a_prev[a]);
        });
        return;
    }
    const int Ti = (in + 3) >> 2, To = (out + 3) >> 2;
    const int items = Ti * Tp;
    const FusedSlices f = fused_slices(items, To, FS_LANES(P), FS_SPLIT(P));
    const int split = f.split, sl = f.sl;
    for (int item0 = f.first; sl < split && item0 < f.end; item0 += f.step) {
        const bool live = item0 < items;  // false only for a lane split's spare lanes
        const int item = live ? item0 : 0;
        const int it = item % Ti, p0 = (item / Ti) * REPTILE_PTP, i0 = 4 * it;
        int goff[REPTILE_PTP];
        REPTILE_UNROLL
        for (int q = 0; q < REPTILE_PTP; ++q) {
            const int p = p0 + q;
            goff[q] = (fused_in_batch(p, bs) ? p : p0) * lda_out;
        }
        float acc[REPTILE_PT][REPTILE_PTP];
        fused_zero(acc);
        const int o1 = 4 * f.q1 < out ? 4 * f.q1 : out;
        fused_tile_cols(W, ldw, i0, gcur, goff, 4 * f.q0, o1, acc);
        if (f.lanes) {
            float v[REPTILE_PT * REPTILE_PTP];
            const int cnt = fused_scatter(acc, split, v);
            // As in fused_forward: whole rows c0.. of the tile, at constant offsets from the
            // slice's first element.
            const int c0 = sl * (cnt / REPTILE_PTP);
            float* gt = gnext + p0 * lda_in + i0 + c0;
            const float* at = a_prev + p0 * lda_in + i0 + c0;
            REPTILE_UNROLL
            for (int u = 0; u < REPTILE_PT * REPTILE_PTP / 2; ++u) {
                const int c = u / REPTILE_PTP, q = u - c * REPTILE_PTP;
                const int i = i0 + c0 + c, p = p0 + q, a = q * lda_in + c;
                if (u < cnt && live && i < in && fused_in_batch(p, bs))
                    gt[a] = v[u] * reptile_act_grad(FS_ACT(P), at[a]);
            }
            continue;
        }
        // The tile's elements at (q·lda_in + c) from its first (constant offsets, as forward).
        float* dst = (sl == 0 ? gnext : fused_part(P, S, sl)) + p0 * lda_in + i0;
        const float* arow = a_prev + p0 * lda_in + i0;
        REPTILE_UNROLL
        for (int q = 0; q < REPTILE_PTP; ++q) {
            const int p = p0 + q;
            if (fused_in_batch(p, bs)) {
                REPTILE_UNROLL
                for (int c = 0; c < REPTILE_PT; ++c) {
                    const int a = q * lda_in + c;
                    if (i0 + c < in) dst[a] = split == 1 ? acc[c][q] * reptile_act_grad(FS_ACT(P), arow[a]) : acc[c][q];
                }
            }
        }
    }
    // (dZ_0 left to layer 0's update where fused_dz0_split says so: no epilogue, no barrier.)
    if (split > 1 && !f.lanes && !(l == 1 && fused_dz0_split(P, S, bs) > 1)) {
        __syncthreads();  // every slice's partial sums written
        fused_each(bs, in, [&](int p, int i) {
            const int a = p * lda_in + i;
            gnext[a] = fused_finish_dz(P, S, split, gnext, a_prev, a);
        });
    }
}

// The weight tiles of fused_weight_sgd: W[o][i] += nlr·Σ_p G[p][o]·A[p][i] over the
// minibatch's points in order. A tile is 4 consecutive outputs 4·ot.. × NQ quads of inputs,
// quads it + j·Tc (Tc = ⌈Ti/NQ⌉ tile columns, it fast), so the 8 lanes of each 16-byte phase
// read 8 consecutive quads of an A row or a W row (no bank conflicts) and share the G quad
// (a broadcast). Per point: one 16-byte load of G and NQ of A feed 16·NQ FMAs; then the tile
// updates its weights in place. A second quad past the row (Ti odd) re-reads the first and is
// never stored.
template <int NQ>
__device__ __forceinline__ void fused_dw_tiles(const float* gcur, int lda_out, const float* a_prev, int lda_in,
                                               float* W, int ldw, int in, int out, int bs, float nlr) {
    const int Ti = (in + 3) >> 2, To = (out + 3) >> 2, Tc = (Ti + NQ - 1) / NQ;
    for (int e = threadIdx.x; e < To * Tc; e += FS_BLOCK) {
        const int ot = e / Tc, it = e - ot * Tc, o0 = 4 * ot;
        int i0[NQ];
        bool real[NQ];
        REPTILE_UNROLL
        for (int j = 0; j < NQ; ++j) {
            real[j] = Ti % NQ == 0 || it + j * Tc < Ti;  // (folds where Ti is a constant)
            i0[j] = 4 * (real[j] ? it + j * Tc : it);
        }
        float acc[4][4 * NQ];
        REPTILE_UNROLL
        for (int r = 0; r < 4; ++r) {
            REPTILE_UNROLL
            for (int c = 0; c < 4 * NQ; ++c) acc[r][c] = 0.0f;
        }
        REPTILE_UNROLL_N(NQ == 1 ? 5 : 2)
        for (int p = 0; p < bs; ++p) {
            // Columns past out / in hold zeros or stale finite-or-not values; the sums they
            // feed are never stored.
            const float4 g = reptile_ld4v(gcur + p * lda_out + o0);
            float4 a[NQ];
            REPTILE_UNROLL
            for (int j = 0; j < NQ; ++j) a[j] = reptile_ld4v(a_prev + p * lda_in + i0[j]);
            REPTILE_UNROLL
            for (int r = 0; r < 4; ++r) {
                REPTILE_UNROLL
                for (int j = 0; j < NQ; ++j) {
                    REPTILE_UNROLL
                    for (int c = 0; c < 4; ++c)
                        acc[r][4 * j + c] = fmaf(reptile_comp(g, r), reptile_comp(a[j], c), acc[r][4 * j + c]);
                }
            }
        }
        REPTILE_UNROLL
        for (int r = 0; r < 4; ++r) {
            if (o0 + r < out) {
                REPTILE_UNROLL
                for (int j = 0; j < NQ; ++j) {
                    if (!real[j]) continue;
                    float* row = W + (o0 + r) * ldw + i0[j];
                    if (in % 4 == 0 || i0[j] + 4 <= in) {
                        float4 w = reptile_ld4v(row);
                        w.x += nlr * acc[r][4 * j];
                        w.y += nlr * acc[r][4 * j + 1];
                        w.z += nlr * acc[r][4 * j + 2];
                        w.w += nlr * acc[r][4 * j + 3];
                        reptile_st4v(row, w);
                    } else {
                        REPTILE_UNROLL
                        for (int c = 0; c < 4; ++c)
                            if (i0[j] + c < in) row[c] += nlr * acc[r][4 * j + c];
                    }
                }
            }
        }
    }
}

// SGD step of layer l: W_l −= α·dZ_lᵀ·A_{l−1}, b_l −= α·Σ_p dZ_l. Work map: a thread owns 4
// consecutive outputs × 1 or 2 quads of inputs (fused_dw_tiles), sums over the minibatch's
// points with one 16-byte load of dZ and one of A per quad and point, and updates its weights
// in place; the bias gradient first, one thread per output (below). Small layers (out·(in + 1)
// ≤ 2·blockDim): one thread per weight or bias. Ends without a barrier.
__device__ __forceinline__ void fused_weight_sgd(const FusedParams& P, const FusedSmem& S, int l, int bs) {
    const int in = S.width(l), out = S.width(l + 1), ldw = reptile_ldw(in);
    const int lda_in = reptile_lda(in), lda_out = reptile_lda(out);
    const float* a_prev = l == 0 ? S.xb : S.acts + S.act_off(l - 1) * FS_STRIDE(P);
    float* W = S.theta + S.w_off(l);
    float* bias = S.theta + S.b_off(l);
    const float* gcur = fused_dz(P, S, l);
    const float nlr = -P.lr;
    const int dsplit = l == 0 ? fused_dz0_split(P, S, bs) : 0;
    if (dsplit > 1) {
        // dZ_0 is still raw slice sums (fused_dz0_split): one thread per output finishes its
        // column, dZ_0[p][o] = (Σ slices)·act'(A_0[p][o]) as the epilogue would, and sums the
        // gradients of its weights (at most 4) and bias with it, in the orders below.
        const float* a0 = S.acts + S.act_off(0) * FS_STRIDE(P);  // A_0: dZ_0's layout
        for (int o = threadIdx.x; o < out; o += FS_BLOCK) {
            float aw[4] = {0.0f, 0.0f, 0.0f, 0.0f}, ab = 0.0f;
            for (int p = 0; p < bs; ++p) {
                const int a = p * lda_out + o;
                const float g = fused_finish_dz(P, S, dsplit, gcur, a0, a);
                REPTILE_UNROLL
                for (int k = 0; k < 4; ++k)
                    if (k < in) aw[k] = fmaf(g, a_prev[p * lda_in + k], aw[k]);
                ab += g;
            }
            REPTILE_UNROLL
            for (int k = 0; k < 4; ++k)
                if (k < in) W[o * ldw + k] += nlr * aw[k];
            bias[o] += nlr * ab;
        }
        return;
    }
    if (out * (in + 1) <= 2 * FS_BLOCK) {
        // A small layer (the sine net's first and last): one thread per weight or bias, so
        // its few products spread over the block instead of a few 4 × 4 tiles. Weights first,
        // then biases, so a warp takes one branch (interleaved per output, the sine net's
        // first layer ran both in every warp).
        const int nw = out * in;
        for (int e = threadIdx.x; e < nw + out; e += FS_BLOCK) {
            float acc = 0.0f;
            if (e < nw) {
                const int o = e / in, i = e - o * in;
                for (int p = 0; p < bs; ++p) acc = fmaf(gcur[p * lda_out + o], a_prev[p * lda_in + i], acc);
                W[o * ldw + i] += nlr * acc;
            } else {
                const int o = e - nw;
                for (int p = 0; p < bs; ++p) acc += gcur[p * lda_out + o];
                bias[o] += nlr * acc;
            }
        }
        return;
    }
    // The bias gradient, one thread per output from the block's last thread down (the last
    // warps hold the fewest tiles when the tiles do not divide evenly), over the points in
    // order as the tiles summed it before. Inside the tiles it cost every tile 4 adds per
    // point, for the it = 0 tiles' use.
    for (int o = FS_BLOCK - 1 - (int)threadIdx.x; o < out; o += FS_BLOCK) {
        float acc = 0.0f;
        for (int p = 0; p < bs; ++p) acc += gcur[p * lda_out + o];
        bias[o] += nlr * acc;
    }
    // Tiles of 4 outputs × 8 inputs where they still give every thread one (the sine net's
    // 64 × 64 at 128 threads: 128 tiles, 3 loads per 32 FMAs per point, where 256 tiles of
    // 4 × 4 took two per thread at 2 loads per 16 FMAs), else 4 × 4.
    const int Ti = (in + 3) >> 2, To = (out + 3) >> 2;
    if (Ti >= 2 && To * ((Ti + 1) >> 1) >= FS_BLOCK) {
        fused_dw_tiles<2>(gcur, lda_out, a_prev, lda_in, W, ldw, in, out, bs, nlr);
    } else {
        fused_dw_tiles<1>(gcur, lda_out, a_prev, lda_in, W, ldw, in, out, bs, nlr);
    }
}

// Backward pass fused with SGD, per layer from the last: the input gradient of layer l
// (fused_input_grad) reads W_l before its update, so W_l's update (fused_weight_sgd) runs a
// phase later, beside layer l − 1's input gradient, where their buffers do not collide (dZ_{l+1}
// is read there while dZ_{l−1} is written: different buffers when dZ_{l+1} is the last layer's
// or there is no dZ_{l−1}, i.e. l = L − 2 or l = 0, see fused_dz); elsewhere it takes a phase
// of its own before. With `head.dz` the forward pass already wrote dZ_{L−2} (fused_forward)
// and ended with a barrier, so the last layer has nothing left before its update: the sine net
// (L = 3) takes two phases, dA_1 + dW_2 | dW_1 + dW_0 (three without: dA_2 first).
// The last phase also gathers `next` (if any) into xb2 / yb2: nothing reads them before its
// barrier, and the caller then swaps them in (fused_swap_batch), so the next step starts
// without a gather phase of its own.
__device__ __forceinline__ void fused_backward_sgd(const FusedParams& P, const FusedSmem& S, int bs,
                                                   const FusedBatch& next, FusedHead head) {
    const int L = FS_L(P);
    FS_LAYER_UNROLL
    for (int l = L - 1; l >= 0; --l) {
        if (l == L - 1 && head.dz) continue;  // L ≥ 2: no update and no gather at this layer
        const bool merge = l == 0 || l == L - 2;
        if (l + 1 < L && !merge) {
            fused_weight_sgd(P, S, l + 1, bs);
            __syncthreads();  // dZ_{l+1} read: its buffer takes dZ_{l−1}
        }
        if (l > 0) fused_input_grad(P, S, l, bs);
        if (l + 1 < L && merge) fused_weight_sgd(P, S, l + 1, bs);
        if (l == 0) {
            fused_weight_sgd(P, S, 0, bs);
            if (next.idx != nullptr) fused_gather(P, S, next, true);
        }
        __syncthreads();  // dZ_{l−1} complete, W_l read by this phase's input gradient
    }
}

// delta: [n_tasks × P] output (poisoning it before the launch is harmless: every element is
// written). losses: [n_tasks × 2]. idx: [n_tasks × steps × idx_stride].
// Launch bounds. The kernel takes blocks of up to 512 threads, so it must use at most 128
// registers (tests/cuda_nvrtc.rs checks the generic build's count). The generic build states
// 512 threads and one block per SM, which caps it at 128 (with `.maxntid` alone ptxas 13 capped
// it at 64 and spilled; with no bound at all, once the minibatch was double-buffered, ptxas
// gave the generic serial kernel 151 registers on sm_80; bounded, 121 and no spills). A specialized build
// states its block and the blocks per SM that 128 registers per thread allow (64K registers:
// 4 blocks of 128 threads, 2 of 256): left alone, ptxas gives the sine build 148 registers
// and 3 blocks per SM (tests/cuda_nvrtc.rs checks it does not spill under the cap). Under that
// cap the sine build at 128 threads takes 110–128 registers (4 blocks per SM) although its
// shared memory holds 5, so for launches of many tasks the host passes REPTILE_MIN_BLOCKS,
// the blocks shared memory and tasks allow (plan::occupancy_blocks): 5 (80–96 registers), or 7
// with the lane split (72), with no spills (checked by tests/cuda_nvrtc.rs).
#if defined(REPTILE_SPEC) && defined(REPTILE_MIN_BLOCKS)
#define FS_BOUNDS REPTILE_LAUNCH_BOUNDS_MIN(REPTILE_SPEC_BLOCK, REPTILE_MIN_BLOCKS)
#elif defined(REPTILE_SPEC)
#define FS_BOUNDS \
    REPTILE_LAUNCH_BOUNDS_MIN(REPTILE_SPEC_BLOCK, (65536 / (REPTILE_SPEC_BLOCK * 128)) > 0 ? 65536 / (REPTILE_SPEC_BLOCK * 128) : 1)
#else
#define FS_BOUNDS REPTILE_LAUNCH_BOUNDS_MIN(512, 1)
#endif
// A specialized build holds one entry point: reptile_sine_serial with REPTILE_SPEC_SERIAL
// defined, else reptile_fused_inner (half the NVRTC time per shape).
#if !defined(REPTILE_SPEC) || !defined(REPTILE_SPEC_SERIAL)
extern "C" __global__ void FS_BOUNDS reptile_fused_inner(FusedParams P, const float* __restrict__ theta, const float* __restrict__ x,
                                               const float* __restrict__ y, const unsigned* __restrict__ labels,
                                               const unsigned* __restrict__ idx, float* __restrict__ delta,
                                               float* __restrict__ losses) {
    REPTILE_SMEM(float, reptile_smem);
    const int t = blockIdx.x;
    if (t >= P.n_tasks) return;  // uniform per block
    FusedSmem S;
    fused_carve(P, reptile_smem, S);
    fused_clear(S);
    __syncthreads();  // header written, padding cleared
    const int din = S.width(0), dout = S.width(FS_L(P));
    const float* xt = x + (size_t)t * P.m * din;
    const float* yt = FS_LOSS(P) == REPTILE_LOSS_MSE ? y + (size_t)t * P.m * dout : y;
    const unsigned* lt = FS_LOSS(P) == REPTILE_LOSS_CE ? labels + (size_t)t * P.m : labels;
    const unsigned* it = idx + (size_t)t * P.steps * FS_STRIDE(P);
    float* dt = delta + (size_t)t * P.num_params;

    fused_load_theta(P, S, theta);
    if (FS_STAGE(P)) {
        // One pass of coalesced copies; the gathers then read shared memory.
        const FusedStage g = fused_stage(P, din, dout);
        const int ni = P.steps * FS_STRIDE(P);
        float* st = S.task;
        unsigned* su = (unsigned*)S.task;
        for (int e = threadIdx.x; e < g.nx; e += FS_BLOCK) st[e] = xt[e];
        if (FS_LOSS(P) == REPTILE_LOSS_MSE) {
            for (int e = threadIdx.x; e < g.ny; e += FS_BLOCK) st[g.nx + e] = yt[e];
        } else {
            for (int e = threadIdx.x; e < g.ny; e += FS_BLOCK) su[g.nx + e] = lt[e];
        }
        for (int e = threadIdx.x; e < ni; e += FS_BLOCK) su[g.nx + g.ny + e] = it[e];
        __syncthreads();  // staged task complete
    }
    float loss_before = 0.0f;
    // Step s's minibatch size; the first is also the one of the loss after adaptation.
    const int b0 = P.steps == 1 ? FS_BLAST(P) : FS_B(P);
    fused_gather(P, S, fused_task_batch(P, S, xt, yt, lt, it, 0, b0));
    __syncthreads();
    for (int s = 0; s < P.steps; ++s) {
        const bool last = s + 1 == P.steps;
        const int bs = last ? FS_BLAST(P) : FS_B(P);
        if (last && P.fomaml) fused_store_theta(P, S, dt);  // θ'_{k−1}, read back by the same threads
        float part = 0.0f;
        const FusedHead head = fused_forward(P, S, bs, &part);
        const float l = fused_loss(P, S, bs, true, s == 0, head.loss, part);
        if (s == 0) loss_before = l;
        // The next minibatch, gathered during the backward pass: step s + 1's, or after the
        // last step the first one again (the loss after adaptation).
        const int ns = last ? 0 : s + 1;
        const int nbs = ns + 1 == P.steps ? FS_BLAST(P) : FS_B(P);
        fused_backward_sgd(P, S, bs, fused_task_batch(P, S, xt, yt, lt, it, ns, nbs), head);
        fused_swap_batch(S);
    }
    // Loss after adaptation, on the first minibatch (gathered by the last backward pass).
    fused_forward(P, S, b0);
    const float loss_after = fused_loss(P, S, b0, false);
    if (threadIdx.x == 0) {
        losses[2 * t] = loss_before;
        losses[2 * t + 1] = loss_after;
    }
    fused_store_diff(P, S, P.fomaml ? dt : theta, dt);
}

#endif

#if !defined(REPTILE_SPEC) || defined(REPTILE_SPEC_SERIAL)
// Kernel 5: serial Reptile (n = 1) on the sine family, `count` iterations in one launch of one
// block, with no host round-trip and no launch between iterations. Iteration `it` draws its
// task on the device (reptile_sine_draw: the Philox counters of reptile_sine_sample, so the
// same tasks as the resident program), runs the inner loop above on it, and interpolates
// θ ← fmaf(ε(it), θ' − θ, θ)·keep: the resident program's arithmetic for n = 1, with ε(t) =
// ε0 + (ε1 − ε0)·min(t/T, 1) in double, rounded to float, and keep = 1 − ε·decay. A non-finite
// candidate sets *bad and ends the run: θ keeps its last finite value and *iter the failing
// iteration (as reptile_commit); a launch that finds *bad set does nothing. losses = (loss
// before, loss after adaptation) of the last iteration, or (before, NaN) of the failing one.
// Shared memory: the fused layout with the task staged (P: Reptile, P.stage = 1, m = 50,
// in = out = 1, REPTILE_SPLIT − 1 partial-sum buffers), then θ in the padded layout
// (plan::serial_bytes), then 64 unsigned: the draws' key scratch and the divergence flag.
// Work mapping: the inner loop as reptile_fused_inner; the interpolation and the θ copies one
// thread per padded element.
extern "C" __global__ void FS_BOUNDS reptile_sine_serial(FusedParams P, unsigned seed_lo, unsigned seed_hi, float eps0,
                                                        float eps1, float decay, unsigned planned, int count,
                                                        float* __restrict__ theta, unsigned* __restrict__ iter,
                                                        unsigned* __restrict__ bad, float* __restrict__ losses) {
    REPTILE_SMEM(float, reptile_smem);
    FusedSmem S;
    fused_carve(P, reptile_smem, S);
    fused_clear(S);
    const int nt = (int)(S.acts - S.theta);  // floats of the padded θ (a multiple of 4)
    float* th = S.scr + (REPTILE_SPLIT - 1) * FS_STRIDE(P) * reptile_lda(S.gmax());
    unsigned* keys = (unsigned*)(th + nt);  // 50 draw keys, then the flag
    unsigned* flag = keys + 60;
    if (threadIdx.x == 0) *flag = 0u;
    __syncthreads();  // header written, padding cleared
    if (*bad) return;  // uniform: every thread reads the same word
    fused_load_theta(P, S, theta);
    __syncthreads();
    for (int e = threadIdx.x; e < nt; e += FS_BLOCK) th[e] = S.theta[e];
    const int b = FS_B(P), stride = FS_STRIDE(P);
    const FusedStage g = fused_stage(P, 1, 1);  // m = 50 points, in = out = 1
    float* xs = S.task;
    float* ys = S.task + g.nx;
    unsigned* is = (unsigned*)(S.task + g.nx + g.ny);
    unsigned it = *iter;
    float loss_before = 0.0f, loss_after = 0.0f;
    bool diverged = false;
    for (int c = 0; c < count; ++c) {
        reptile_sine_draw(seed_lo, seed_hi, it, 0u, P.steps, b, xs, ys, is, keys);
        __syncthreads();  // task drawn; every thread has read the last iteration's flag
        if (threadIdx.x == 0) *flag = 0u;
        fused_gather(P, S, FusedBatch{xs, ys, nullptr, is, b});
        __syncthreads();
        for (int s = 0; s < P.steps; ++s) {
            float part = 0.0f;
            const FusedHead head = fused_forward(P, S, b, &part);
            const float l = fused_loss(P, S, b, true, s == 0, head.loss, part);
            if (s == 0) loss_before = l;
            // The next minibatch during the backward pass: step s + 1's, or after the last
            // step of the launch's last iteration the first one again (the loss after
            // adaptation); the next iteration gathers from its own task.
            const bool more = s + 1 < P.steps || c + 1 == count;
            const int ns = s + 1 < P.steps ? s + 1 : 0;
            fused_backward_sgd(P, S, b, more ? FusedBatch{xs, ys, nullptr, is + ns * stride, b} : FusedBatch{}, head);
            if (more) fused_swap_batch(S);
        }
        if (c + 1 == count) {
            fused_forward(P, S, b);
            loss_after = fused_loss(P, S, b, false);
        }
        double frac = (double)it / (double)planned;
        if (frac > 1.0) frac = 1.0;
        const float eps = (float)((double)eps0 + ((double)eps1 - (double)eps0) * frac);
        const float keep = reptile_keep(eps, decay);
        bool finite = true;
        for (int e = threadIdx.x; e < nt; e += FS_BLOCK) {
            const float v = fmaf(eps, S.theta[e] - th[e], th[e]) * keep;
            S.theta[e] = v;
            finite = finite && reptile_is_finite(v);
        }
        if (!finite) atomicOr(flag, 1u);
        __syncthreads();  // candidate complete, flag final
        if (*flag) {
            diverged = true;
            break;
        }
        for (int e = threadIdx.x; e < nt; e += FS_BLOCK) th[e] = S.theta[e];  // commit; θ' ← θ as well
        ++it;
    }
    __syncthreads();  // the last commit's copy complete (the store maps elements to threads differently)
    fused_store_theta(P, S, theta, th);
    if (threadIdx.x == 0) {
        *iter = it;
        if (diverged) *bad = 1u;
        losses[0] = loss_before;
        losses[1] = diverged ? nanf("") : loss_after;
    }
}
#endif
