// Shared device helpers of the reptile CUDA kernels.
//
// This header is compiled three ways: by NVRTC (the crate inlines it in place of the
// `#include "common.cuh"` line of each kernel file), by nvcc/ptxas checks in CI, and as plain
// C++ on the CPU with kernels/emu/cuda_emu.h force-included (the emulation test). So the
// kernels use only what the emulation models: blockIdx/threadIdx/blockDim/gridDim,
// __syncthreads, __shfl_xor_sync over full warps, atomicOr, dynamic shared memory declared
// with REPTILE_SMEM, float4 loads and stores of 16-byte aligned shared memory, and the float
// math functions tanhf/expf/logf/sinf/fmaf/fmaxf.
#pragma once

#ifndef REPTILE_EMU
#define REPTILE_SMEM(type, name) extern __shared__ type name[]
#define REPTILE_UNROLL _Pragma("unroll")
#define REPTILE_PRAGMA(x) _Pragma(#x)
#define REPTILE_UNROLL_N(n) REPTILE_PRAGMA(unroll n)
#define REPTILE_LAUNCH_BOUNDS_MIN(threads, blocks) __launch_bounds__(threads, blocks)
#endif

// Largest number of linear layers the kernels accept (widths has one more entry).
#define REPTILE_MAX_LAYERS 8

// Output side of the fused kernel's register tiles: a thread computes REPTILE_PT outputs (or
// inputs) × REPTILE_PTP points, reading shared memory in 16-byte vectors along the reduction,
// so each value read feeds REPTILE_PT or REPTILE_PTP multiply-adds.
#define REPTILE_PT 4

// Points per register tile. The generic build uses 4; a shape-specialized build gets the
// value that divides its minibatch most evenly (plan::point_tile, e.g. 5 for 10 points).
#ifndef REPTILE_PTP
#define REPTILE_PTP 4
#endif

// Unrolling of the fused products' loops over 16-byte quads of the reduction: 1 keeps one
// quad's operands live. Unrolled by 2 (the `kunroll2` variant of scripts/gpu-variants.sh) the
// sine meta-step ran at the same speed on an H200 (16.6% against 16.5% of peak, 2026-11-30).
#ifndef REPTILE_KUNROLL
#define REPTILE_KUNROLL 1
#endif

// Most slices that split one product's reduction in the fused kernel (see fused_slices): warp
// slices, for which the layout reserves FusedParams::split − 1 ≤ REPTILE_SPLIT − 1 partial-sum
// buffers, or lanes of a warp (FusedParams::lanes; 2 or 4 of them, summed by shuffles).
#define REPTILE_SPLIT 4

// Activation and loss codes (match src/cuda/plan.rs).
#define REPTILE_ACT_TANH 0
#define REPTILE_ACT_RELU 1
#define REPTILE_LOSS_MSE 0
#define REPTILE_LOSS_CE 1

// Arguments of the fused inner-loop kernel, passed by value. Every field is 4 bytes, so the
// layout is the same in C and in the #[repr(C)] mirror `reptile::cuda::plan::FusedParams`.
struct FusedParams {
    int n_layers;                        // L
    int widths[REPTILE_MAX_LAYERS + 1];  // [in, h1, ..., out]; entries past L are 0
    int act;                             // REPTILE_ACT_*
    int loss;                            // REPTILE_LOSS_*
    int n_tasks;                         // tasks in the batch (one block each)
    int m;                               // points per task (support set size)
    int steps;                           // inner SGD steps k
    int b;                               // minibatch size of steps 0..k-2
    int b_last;                          // minibatch size of step k-1 (FOMAML tail), else b
    int idx_stride;                      // max(b, b_last): stride of one step's index list
    int fomaml;                          // 1: delta = θ'_k − θ'_{k−1}; 0: θ'_k − θ
    float lr;                            // inner SGD step size α
    int num_params;                      // P = Σ_l (in_l + 1)·out_l
    int stage;                           // 1: the task's points and index lists are copied to
                                         // shared memory once (plan::stage_floats), so the
                                         // per-step gathers wait on no global load
    int lanes;                           // 1: products split over the lanes of a warp and summed
                                         // by shuffles (no partial-sum buffers, no epilogue
                                         // barrier); 0: over warp slices (fused_slices)
    int split;                           // most warp slices a product splits into, 1 to
                                         // REPTILE_SPLIT (the layout holds split − 1 partial-sum
                                         // buffers; fewer buffers, more blocks per SM)
};

// Row strides of the fused kernel's shared memory, W_l rows (reptile_ldw(in)) and per-point
// buffers (reptile_lda(w): activations, gradients, gathered inputs and targets, [points × w]):
// whole 16-byte vectors, an odd number of them. Rows are read as float4 along the reduction,
// and an odd count of 4-bank groups puts 8 consecutive rows (or rows p and p + 5) on
// different banks. Padding columns are zero (the kernel clears its shared memory), so a
// product may run over whole vectors.
__device__ __forceinline__ constexpr int reptile_ld4(int w) { return 4 * (((w + 3) >> 2) | 1); }
__device__ __forceinline__ constexpr int reptile_ldw(int in) { return reptile_ld4(in); }
__device__ __forceinline__ constexpr int reptile_lda(int w) { return reptile_ld4(w); }
// A bias vector's room in the padded θ': whole vectors, so the next W stays 16-byte aligned.
__device__ __forceinline__ constexpr int reptile_pad4(int w) { return (w + 3) & ~3; }

// 16-byte shared-memory vectors (float4; the emulation header defines an aligned struct).
__device__ __forceinline__ float4 reptile_ld4v(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void reptile_st4v(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
// Component c of v (c a constant after unrolling, so no local-memory indexing).
__device__ __forceinline__ float reptile_comp(const float4& v, int c) {
    return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
}

// Bits of a float (for the finiteness test; isfinite is not portable to every compile path).
__device__ __forceinline__ bool reptile_is_finite(float v) {
    return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}

// The outer decay's factor keep = 1 − ε·λ, as ReptileConfig::keep on the CPU: the product and
// the difference each rounded once (the _rn intrinsics forbid contracting them into an fma).
__device__ __forceinline__ float reptile_keep(float eps, float decay) { return __fsub_rn(1.0f, __fmul_rn(eps, decay)); }

__device__ __forceinline__ float reptile_act(int act, float z) {
    return act == REPTILE_ACT_TANH ? tanhf(z) : fmaxf(z, 0.0f);
}

// act'(z) expressed through a = act(z): tanh' = 1 − a², relu' = [a > 0].
__device__ __forceinline__ float reptile_act_grad(int act, float a) {
    return act == REPTILE_ACT_TANH ? 1.0f - a * a : (a > 0.0f ? 1.0f : 0.0f);
}

// Sum of v over the 32 lanes of a full warp (every lane gets the total). The block size must
// be a multiple of 32.
__device__ __forceinline__ float reptile_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum of v over each aligned group of g lanes of a full warp (g a power of two ≤ 32; every
// lane of a group gets its group's total): the last log2(g) rounds of reptile_warp_sum, so
// where lanes outside a lane's group of g would add zeros the result has the same bits.
// (Written out, not as a loop: with g a constant, NVVM leaves a loop over it as a run-time
// loop.)
__device__ __forceinline__ float reptile_group_sum(float v, int g) {
    if (g > 16) v += __shfl_xor_sync(0xffffffffu, v, 16);
    if (g > 8) v += __shfl_xor_sync(0xffffffffu, v, 8);
    if (g > 4) v += __shfl_xor_sync(0xffffffffu, v, 4);
    if (g > 2) v += __shfl_xor_sync(0xffffffffu, v, 2);
    if (g > 1) v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v;
}

// Block-wide sum of each thread's v: warps reduce by shuffles, then thread 0 adds the warp
// sums in warp order (fixed order ⇒ reproducible). `scratch` is ≥ blockDim.x/32 floats of
// shared memory. Returns the total in thread 0 only; all threads must call it.
__device__ __forceinline__ double reptile_block_sum(float v, float* scratch) {
    v = reptile_warp_sum(v);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double total = 0.0;
    if (threadIdx.x == 0) {
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) total += (double)scratch[w];
    }
    __syncthreads();
    return total;
}

// The sine-wave task family on the device (kernels 4 and 5): Philox4x32-10 draws, see
// sine_device.cu for the counter layout.
#define REPTILE_SINE_POINTS 50
#define REPTILE_SINE_TAG 0x53494e45u

__device__ __forceinline__ unsigned reptile_mulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * b) >> 32);
}

// Philox4x32-10: ten rounds of the Philox S-box with the Weyl key schedule.
__device__ __forceinline__ void reptile_philox(unsigned c0, unsigned c1, unsigned c2, unsigned c3, unsigned k0,
                                               unsigned k1, unsigned out[4]) {
    for (int r = 0; r < 10; ++r) {
        const unsigned hi0 = reptile_mulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        const unsigned hi1 = reptile_mulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        const unsigned n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

// Uniform in [0, 1) from the top 24 bits.
__device__ __forceinline__ float reptile_unit(unsigned u) { return (float)(u >> 8) * (1.0f / 16777216.0f); }

// One task of the sine family for (iteration it, task t), drawn by one block: x, y [50] and the
// minibatch lists idx [steps × b]; keys: 64 unsigned of shared scratch. The lists are
// consecutive passes over the 50 points, each pass a random permutation: point p of pass k
// gets the 32-bit key word p mod 4 of Philox block 1 + 13k + p/4, and the pass visits the
// points in increasing (key, p) order. Work mapping: thread p < 50 writes grid point p and
// its target, and per pass draws its key and counts the keys below it (its rank) — no thread
// runs a sequential shuffle. All threads of the block must call it; it synchronizes, and the
// caller synchronizes again before reading the lists. Used by reptile_sine_sample
// (sine_device.cu) and reptile_sine_serial (mlp_fused.cu).
__device__ __forceinline__ void reptile_sine_draw(unsigned seed_lo, unsigned seed_hi, unsigned it, unsigned t, int steps,
                                                  int b, float* x, float* y, unsigned* idx, unsigned* keys) {
    const int total = steps * b;
    unsigned u[4];
    reptile_philox(it, t, 0u, REPTILE_SINE_TAG, seed_lo, seed_hi, u);
    const float amp = 0.1f + 4.9f * reptile_unit(u[0]);
    const float phase = 6.2831855f * reptile_unit(u[1]);
    for (int p = threadIdx.x; p < REPTILE_SINE_POINTS; p += blockDim.x) {
        const float xp = (float)(-5.0 + 10.0 * (double)p / (double)(REPTILE_SINE_POINTS - 1));
        x[p] = xp;
        y[p] = amp * sinf(xp + phase);
    }
    for (int base = 0, pass = 0; base < total; base += REPTILE_SINE_POINTS, ++pass) {
        for (int p = threadIdx.x; p < REPTILE_SINE_POINTS; p += blockDim.x) {
            unsigned w[4];
            reptile_philox(it, t, 1u + 13u * (unsigned)pass + (unsigned)(p >> 2), REPTILE_SINE_TAG, seed_lo, seed_hi, w);
            const int c = p & 3;
            keys[p] = c == 0 ? w[0] : c == 1 ? w[1] : c == 2 ? w[2] : w[3];
        }
        __syncthreads();  // every key of the pass written
        for (int p = threadIdx.x; p < REPTILE_SINE_POINTS; p += blockDim.x) {
            const unsigned key = keys[p];
            int rank = 0;
            for (int q = 0; q < REPTILE_SINE_POINTS; ++q) {
                const unsigned kq = keys[q];
                rank += (kq < key || (kq == key && q < p)) ? 1 : 0;
            }
            if (base + rank < total) idx[base + rank] = (unsigned)p;
        }
        __syncthreads();  // every rank read the keys before the next pass overwrites them
    }
}
