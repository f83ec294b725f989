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
// mirrored by `FusedLayout` in src/cuda/plan.rs): θ' with W rows padded to an odd stride, the
// activations of every layer for the minibatch, two gradient buffers (dL/dZ of the current
// layer and dL/dA of the one below), the gathered minibatch inputs and targets, and 32 floats
// of reduction scratch. Global memory is read for θ at the start, the minibatch points of each
// step and the index lists, and written once at the end.
//
// Work mapping (llm.c style: each phase is a flat loop over its items with stride blockDim,
// the item → (row, column) map chosen so a warp reads shared memory without bank conflicts,
// and __syncthreads between phases). The three products use REPTILE_PT × REPTILE_PT register
// tiles, so each value read from shared memory feeds REPTILE_PT FMAs:
//   forward, layer l:  tile = 4 outputs {ot + r·To} (strided: a warp reads consecutive rows of
//                      W at the odd padded stride, 32 banks) × 4 consecutive points (A reads
//                      are broadcasts). Layers with fewer than 32 tiles split each tile's sum
//                      over S lanes (fused_split) and combine them with warp shuffles.
//   loss (MSE):        item = output element (p, j); loss partial sums reduced by warp shuffles.
//   loss (CE):         item = point p (max, Σexp, gradient over the point's outputs).
//   backward dA:       tile = 4 inputs {it + c·Ti} (consecutive across a warp: contiguous W row
//                      reads) × 4 consecutive points, same split rule.
//   backward dW + SGD: tile = 4 outputs × 4 inputs, it fast; sums over the minibatch's points
//                      and updates its 16 weights in place after dA has read W; biases one
//                      thread per output.
// Requirements: blockDim.x a multiple of 32 (≤ 1024); dynamic shared memory as `FusedLayout`.

#include "common.cuh"

// Pointers into the block's dynamic shared memory. Per-layer sizes and offsets live in a small
// int header at the start of shared memory (written by thread 0), so loops over layers index
// shared memory rather than a local array (which would go to local memory).
struct FusedSmem {
    const int* hdr;  // [widths: 9 | w_off: 8 | b_off: 8 | act_off: 8], REPTILE_FUSED_HDR ints
    float* theta;    // padded θ'
    float* acts;     // layer l's activations at act_off[l]·bmax, [points × out_l]
    float* g0;       // gradient ping-pong buffers, bmax·gmax each
    float* g1;
    float* xb;       // gathered inputs [bmax × in]
    float* yb;       // gathered targets [bmax × out] (labels reinterpret it as unsigned)
    float* red;      // 32 floats of reduction scratch
    __device__ __forceinline__ int width(int l) const { return hdr[l]; }
    __device__ __forceinline__ int w_off(int l) const { return hdr[REPTILE_MAX_LAYERS + 1 + l]; }
    __device__ __forceinline__ int b_off(int l) const { return hdr[2 * REPTILE_MAX_LAYERS + 1 + l]; }
    __device__ __forceinline__ int act_off(int l) const { return hdr[3 * REPTILE_MAX_LAYERS + 1 + l]; }
};

#define REPTILE_FUSED_HDR 36  // ≥ 4·REPTILE_MAX_LAYERS + 1, a multiple of 4 (16-byte alignment)

// Carves shared memory (layout mirrored by FusedLayout in src/cuda/plan.rs). The loop over
// layers is unrolled to constant indices, so P.widths stays in registers / parameter space.
// Thread 0 writes the header; the caller synchronizes before reading it.
__device__ __forceinline__ void fused_carve(const FusedParams& P, float* smem, FusedSmem& S) {
    const int L = P.n_layers, bmax = P.idx_stride;
    int* hdr = (int*)smem;
    const bool writer = threadIdx.x == 0;
    int off = 0, aoff = 0, gmax = 1;
    REPTILE_UNROLL
    for (int l = 0; l < REPTILE_MAX_LAYERS; ++l) {
        if (l < L) {
            const int in = P.widths[l], out = P.widths[l + 1];
            if (writer) {
                hdr[REPTILE_MAX_LAYERS + 1 + l] = off;
                hdr[2 * REPTILE_MAX_LAYERS + 1 + l] = off + out * reptile_ldw(in);
                hdr[3 * REPTILE_MAX_LAYERS + 1 + l] = aoff;
            }
            off += out * (reptile_ldw(in) + 1);
            aoff += out;
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
    S.g1 = S.g0 + gmax * bmax;
    S.xb = S.g1 + gmax * bmax;
    S.yb = S.xb + P.widths[0] * bmax;
    int dout = 0;
    REPTILE_UNROLL
    for (int l = 1; l <= REPTILE_MAX_LAYERS; ++l)
        if (l == L) dout = P.widths[l];
    S.red = S.yb + dout * bmax;
}

// Copies between the flat θ layout (global) and the padded one (shared). dir = 0: θ' ← θ;
// dir = 1: dst[j] = θ'[j] − base[j] (base may alias dst: each element is read then written by
// the same thread).
__device__ __forceinline__ void fused_load_theta(const FusedParams& P, const FusedSmem& S, const float* __restrict__ theta) {
    int flat = 0;
    for (int l = 0; l < P.n_layers; ++l) {
        const int in = S.width(l), out = S.width(l + 1), ldw = reptile_ldw(in);
        for (int e = threadIdx.x; e < out * in; e += blockDim.x) {
            const int o = e / in, i = e - o * in;
            S.theta[S.w_off(l) + o * ldw + i] = theta[flat + e];
        }
        flat += out * in;
        for (int o = threadIdx.x; o < out; o += blockDim.x) S.theta[S.b_off(l) + o] = theta[flat + o];
        flat += out;
    }
}

__device__ __forceinline__ void fused_store_diff(const FusedParams& P, const FusedSmem& S, const float* base, float* dst) {
    int flat = 0;
    for (int l = 0; l < P.n_layers; ++l) {
        const int in = S.width(l), out = S.width(l + 1), ldw = reptile_ldw(in);
        for (int e = threadIdx.x; e < out * in; e += blockDim.x) {
            const int o = e / in, i = e - o * in;
            dst[flat + e] = S.theta[S.w_off(l) + o * ldw + i] - base[flat + e];
        }
        flat += out * in;
        for (int o = threadIdx.x; o < out; o += blockDim.x) dst[flat + o] = S.theta[S.b_off(l) + o] - base[flat + o];
        flat += out;
    }
}

// Same layout change without subtracting: dst ← θ' (flat).
__device__ __forceinline__ void fused_store_theta(const FusedParams& P, const FusedSmem& S, float* dst) {
    int flat = 0;
    for (int l = 0; l < P.n_layers; ++l) {
        const int in = S.width(l), out = S.width(l + 1), ldw = reptile_ldw(in);
        for (int e = threadIdx.x; e < out * in; e += blockDim.x) {
            const int o = e / in, i = e - o * in;
            dst[flat + e] = S.theta[S.w_off(l) + o * ldw + i];
        }
        flat += out * in;
        for (int o = threadIdx.x; o < out; o += blockDim.x) dst[flat + o] = S.theta[S.b_off(l) + o];
        flat += out;
    }
}

// Gathers the `bs` points idx[0..bs] of the task into xb / yb.
__device__ __forceinline__ void fused_gather(const FusedParams& P, const FusedSmem& S, const float* __restrict__ x,
                                             const float* __restrict__ y, const unsigned* __restrict__ labels,
                                             const unsigned* __restrict__ idx, int bs) {
    const int din = S.width(0), dout = S.width(P.n_layers);
    for (int e = threadIdx.x; e < bs * din; e += blockDim.x) {
        const int p = e / din, i = e - p * din;
        S.xb[e] = x[(size_t)idx[p] * din + i];
    }
    if (P.loss == REPTILE_LOSS_MSE) {
        for (int e = threadIdx.x; e < bs * dout; e += blockDim.x) {
            const int p = e / dout, j = e - p * dout;
            S.yb[e] = y[(size_t)idx[p] * dout + j];
        }
    } else {
        unsigned* lb = (unsigned*)S.yb;
        for (int p = threadIdx.x; p < bs; p += blockDim.x) lb[p] = labels[idx[p]];
    }
}

// Lanes that share one output tile (split over the reduction dimension K): 1 when the tiles
// fill at least a warp, else the largest power of two ≤ 32 with items·S ≤ blockDim and S ≤ K.
// Uniform across the block (depends on shapes and blockDim only).
__device__ __forceinline__ int fused_split(int items, int K) {
    if (items >= 32) return 1;
    int S = 1;
    while (S < 32 && items * S * 2 <= (int)blockDim.x && S * 2 <= K) S *= 2;
    return S;
}

// Sums each of the 16 accumulators over the S lanes of its group (S a power of two ≤ 32,
// groups aligned in the warp). Every lane of the warp must call it.
__device__ __forceinline__ void fused_group_sum(float acc[REPTILE_PT][REPTILE_PT], int S) {
    for (int off = S >> 1; off > 0; off >>= 1) {
        REPTILE_UNROLL
        for (int r = 0; r < REPTILE_PT; ++r) {
            REPTILE_UNROLL
            for (int q = 0; q < REPTILE_PT; ++q) acc[r][q] += __shfl_xor_sync(0xffffffffu, acc[r][q], off);
        }
    }
}

// The REPTILE_PT × REPTILE_PT register tile shared by the forward and input-gradient products:
// acc[r][q] += Σ_{k = s, s+S, … < K} M[moff[r] + k·mk] · X[xoff[q] + k], in increasing k
// (fmaf(X, M, acc), the CPU path's order when S = 1). Each M and X read feeds REPTILE_PT FMAs.
__device__ __forceinline__ void fused_tile(const float* M, const int moff[REPTILE_PT], int mk, const float* X, const int xoff[REPTILE_PT],
                                           int K, int s, int S, float acc[REPTILE_PT][REPTILE_PT]) {
    for (int k = s; k < K; k += S) {
        float m[REPTILE_PT], xv[REPTILE_PT];
        REPTILE_UNROLL
        for (int r = 0; r < REPTILE_PT; ++r) m[r] = M[moff[r] + k * mk];
        REPTILE_UNROLL
        for (int q = 0; q < REPTILE_PT; ++q) xv[q] = X[xoff[q] + k];
        REPTILE_UNROLL
        for (int r = 0; r < REPTILE_PT; ++r) {
            REPTILE_UNROLL
            for (int q = 0; q < REPTILE_PT; ++q) acc[r][q] = fmaf(xv[q], m[r], acc[r][q]);
        }
    }
}

// Forward pass over the gathered minibatch: A_l = act(A_{l−1}·W_lᵀ + b_l), last layer linear.
// Work map: a thread owns a tile of 4 outputs {ot + r·To} (strided, so a warp's W reads hit
// consecutive rows at the odd stride: no bank conflicts) × 4 consecutive points (A reads are
// warp broadcasts); item = chunk·To + ot. Layers with fewer than 32 tiles (e.g. a 1-output
// head) split each tile's reduction over S lanes and combine them with shuffles.
__device__ __forceinline__ void fused_forward(const FusedParams& P, const FusedSmem& S, int bs) {
    const int L = P.n_layers, Tp = (bs + REPTILE_PT - 1) / REPTILE_PT;
    for (int l = 0; l < L; ++l) {
        const int in = S.width(l), out = S.width(l + 1), ldw = reptile_ldw(in);
        const float* a_prev = l == 0 ? S.xb : S.acts + S.act_off(l - 1) * P.idx_stride;
        float* z = S.acts + S.act_off(l) * P.idx_stride;
        const float* W = S.theta + S.w_off(l);
        const float* bias = S.theta + S.b_off(l);
        const bool hidden = l + 1 < L;
        const int To = (out + REPTILE_PT - 1) / REPTILE_PT, items = To * Tp;
        const int split = fused_split(items, in);
        int sh = 0;
        while ((1 << sh) < split) ++sh;
        const int total = items << sh;
        for (int base = 0; base < total; base += blockDim.x) {
            const int e = base + threadIdx.x;
            const bool active = e < total;
            const int item = active ? e >> sh : 0, sl = e & (split - 1);
            const int ot = item % To, p0 = (item / To) * REPTILE_PT;
            int woff[REPTILE_PT], xoff[REPTILE_PT];
            REPTILE_UNROLL
            for (int r = 0; r < REPTILE_PT; ++r) {
                const int o = ot + r * To;
                woff[r] = (o < out ? o : ot) * ldw;  // out-of-range rows re-read row ot, never stored
            }
            REPTILE_UNROLL
            for (int q = 0; q < REPTILE_PT; ++q) {
                const int p = p0 + q;
                xoff[q] = (p < bs ? p : p0) * in;
            }
            float acc[REPTILE_PT][REPTILE_PT];
            REPTILE_UNROLL
            for (int r = 0; r < REPTILE_PT; ++r) {
                REPTILE_UNROLL
                for (int q = 0; q < REPTILE_PT; ++q) acc[r][q] = 0.0f;
            }
            if (active) fused_tile(W, woff, 1, a_prev, xoff, in, sl, split, acc);
            if (split > 1) fused_group_sum(acc, split);
            if (active && sl == 0) {
                REPTILE_UNROLL
                for (int r = 0; r < REPTILE_PT; ++r) {
                    const int o = ot + r * To;
                    REPTILE_UNROLL
                    for (int q = 0; q < REPTILE_PT; ++q) {
                        const int p = p0 + q;
                        if (o < out && p < bs) {
                            const float v = bias[o] + acc[r][q];
                            z[p * out + o] = hidden ? reptile_act(P.act, v) : v;
                        }
                    }
                }
            }
        }
        __syncthreads();
    }
}

// Loss of the last forward output against the gathered targets; with `grad`, dL/dY into g0.
// Returns the loss in thread 0 (other threads: unspecified). All threads must call it.
__device__ __forceinline__ float fused_loss(const FusedParams& P, const FusedSmem& S, int bs, bool grad) {
    const int L = P.n_layers, out = S.width(L);
    const float* yhat = S.acts + S.act_off(L - 1) * P.idx_stride;
    float part = 0.0f;
    double denom;
    if (P.loss == REPTILE_LOSS_MSE) {
        const float scale = 2.0f / (float)(bs * out);
        for (int e = threadIdx.x; e < bs * out; e += blockDim.x) {
            const float d = yhat[e] - S.yb[e];
            part = fmaf(d, d, part);
            if (grad) S.g0[e] = scale * d;
        }
        denom = (double)(bs * out);
    } else {
        const unsigned* lb = (const unsigned*)S.yb;
        const float inv = 1.0f / (float)bs;
        for (int p = threadIdx.x; p < bs; p += blockDim.x) {
            const float* row = yhat + p * out;
            float mx = row[0];
            for (int j = 1; j < out; ++j) mx = fmaxf(mx, row[j]);
            float s = 0.0f;
            for (int j = 0; j < out; ++j) s += expf(row[j] - mx);
            const int c = (int)lb[p];
            part += mx + logf(s) - row[c];
            if (grad) {
                float* g = S.g0 + p * out;
                const float k = inv / s;
                for (int j = 0; j < out; ++j) g[j] = expf(row[j] - mx) * k;
                g[c] -= inv;
            }
        }
        denom = (double)bs;
    }
    const double total = reptile_block_sum(part, S.red);  // synchronizes: g0 is complete
    return (float)(total / denom);
}

// Backward pass fused with SGD: per layer from the last, dA_{l−1} = (dZ_l·W_l) ⊙ act'(A_{l−1})
// from W_l before the update, then W_l −= α·dZ_lᵀ·A_{l−1}, b_l −= α·Σ_p dZ_l.
// Work map: dA: a thread owns 4 inputs {it + c·Ti} (consecutive across the warp: W row reads
// without bank conflicts) × 4 consecutive points, with the same split rule as the forward
// pass; dW + SGD: a thread owns 4 outputs {ot + r·To} × 4 inputs {it + c·Ti}, it fast, sums over
// the minibatch's points and updates its 16 weights in place; biases: one thread per output.
__device__ __forceinline__ void fused_backward_sgd(const FusedParams& P, const FusedSmem& S, int bs) {
    const int Tp = (bs + REPTILE_PT - 1) / REPTILE_PT;
    float* gcur = S.g0;
    float* gnext = S.g1;
    for (int l = P.n_layers - 1; l >= 0; --l) {
        const int in = S.width(l), out = S.width(l + 1), ldw = reptile_ldw(in);
        const float* a_prev = l == 0 ? S.xb : S.acts + S.act_off(l - 1) * P.idx_stride;
        float* W = S.theta + S.w_off(l);
        float* bias = S.theta + S.b_off(l);
        const int Ti = (in + REPTILE_PT - 1) / REPTILE_PT, To = (out + REPTILE_PT - 1) / REPTILE_PT;
        if (l > 0) {
            const int items = Ti * Tp;
            const int split = fused_split(items, out);
            int sh = 0;
            while ((1 << sh) < split) ++sh;
            const int total = items << sh;
            for (int base = 0; base < total; base += blockDim.x) {
                const int e = base + threadIdx.x;
                const bool active = e < total;
                const int item = active ? e >> sh : 0, sl = e & (split - 1);
                const int it = item % Ti, p0 = (item / Ti) * REPTILE_PT;
                int woff[REPTILE_PT], xoff[REPTILE_PT];
                REPTILE_UNROLL
                for (int c = 0; c < REPTILE_PT; ++c) {
                    const int i = it + c * Ti;
                    woff[c] = i < in ? i : it;
                }
                REPTILE_UNROLL
                for (int q = 0; q < REPTILE_PT; ++q) {
                    const int p = p0 + q;
                    xoff[q] = (p < bs ? p : p0) * out;
                }
                float acc[REPTILE_PT][REPTILE_PT];
                REPTILE_UNROLL
                for (int c = 0; c < REPTILE_PT; ++c) {
                    REPTILE_UNROLL
                    for (int q = 0; q < REPTILE_PT; ++q) acc[c][q] = 0.0f;
                }
                if (active) fused_tile(W, woff, ldw, gcur, xoff, out, sl, split, acc);
                if (split > 1) fused_group_sum(acc, split);
                if (active && sl == 0) {
                    REPTILE_UNROLL
                    for (int c = 0; c < REPTILE_PT; ++c) {
                        const int i = it + c * Ti;
                        REPTILE_UNROLL
                        for (int q = 0; q < REPTILE_PT; ++q) {
                            const int p = p0 + q;
                            if (i < in && p < bs) gnext[p * in + i] = acc[c][q] * reptile_act_grad(P.act, a_prev[p * in + i]);
                        }
                    }
                }
            }
            __syncthreads();  // every dA read W_l before any thread updates it
        }
        const float nlr = -P.lr;
        for (int e = threadIdx.x; e < To * Ti; e += blockDim.x) {
            const int ot = e / Ti, it = e - ot * Ti;
            int goff[REPTILE_PT], aoff[REPTILE_PT];
            REPTILE_UNROLL
            for (int r = 0; r < REPTILE_PT; ++r) {
                const int o = ot + r * To;
                goff[r] = o < out ? o : ot;
            }
            REPTILE_UNROLL
            for (int c = 0; c < REPTILE_PT; ++c) {
                const int i = it + c * Ti;
                aoff[c] = i < in ? i : it;
            }
            float acc[REPTILE_PT][REPTILE_PT];
            REPTILE_UNROLL
            for (int r = 0; r < REPTILE_PT; ++r) {
                REPTILE_UNROLL
                for (int c = 0; c < REPTILE_PT; ++c) acc[r][c] = 0.0f;
            }
            for (int p = 0; p < bs; ++p) {
                float g[REPTILE_PT], a[REPTILE_PT];
                REPTILE_UNROLL
                for (int r = 0; r < REPTILE_PT; ++r) g[r] = gcur[p * out + goff[r]];
                REPTILE_UNROLL
                for (int c = 0; c < REPTILE_PT; ++c) a[c] = a_prev[p * in + aoff[c]];
                REPTILE_UNROLL
                for (int r = 0; r < REPTILE_PT; ++r) {
                    REPTILE_UNROLL
                    for (int c = 0; c < REPTILE_PT; ++c) acc[r][c] = fmaf(g[r], a[c], acc[r][c]);
                }
            }
            REPTILE_UNROLL
            for (int r = 0; r < REPTILE_PT; ++r) {
                const int o = ot + r * To;
                REPTILE_UNROLL
                for (int c = 0; c < REPTILE_PT; ++c) {
                    const int i = it + c * Ti;
                    if (o < out && i < in) W[o * ldw + i] += nlr * acc[r][c];
                }
            }
        }
        for (int o = threadIdx.x; o < out; o += blockDim.x) {
            float g = 0.0f;
            for (int p = 0; p < bs; ++p) g += gcur[p * out + o];
            bias[o] += nlr * g;
        }
        __syncthreads();  // θ' of layer l final, gcur free for reuse
        float* t = gcur;
        gcur = gnext;
        gnext = t;
    }
}

// delta: [n_tasks × P] output (poisoning it before the launch is harmless: every element is
// written). losses: [n_tasks × 2]. idx: [n_tasks × steps × idx_stride].
extern "C" __global__ void reptile_fused_inner(FusedParams P, const float* __restrict__ theta, const float* __restrict__ x,
                                               const float* __restrict__ y, const unsigned* __restrict__ labels,
                                               const unsigned* __restrict__ idx, float* __restrict__ delta,
                                               float* __restrict__ losses) {
    REPTILE_SMEM(float, reptile_smem);
    const int t = blockIdx.x;
    if (t >= P.n_tasks) return;  // uniform per block
    FusedSmem S;
    fused_carve(P, reptile_smem, S);
    __syncthreads();  // header written
    const int din = S.width(0), dout = S.width(P.n_layers);
    const float* xt = x + (size_t)t * P.m * din;
    const float* yt = P.loss == REPTILE_LOSS_MSE ? y + (size_t)t * P.m * dout : y;
    const unsigned* lt = P.loss == REPTILE_LOSS_CE ? labels + (size_t)t * P.m : labels;
    const unsigned* it = idx + (size_t)t * P.steps * P.idx_stride;
    float* dt = delta + (size_t)t * P.num_params;

    fused_load_theta(P, S, theta);
    float loss_before = 0.0f;
    for (int s = 0; s < P.steps; ++s) {
        const bool last = s + 1 == P.steps;
        const int bs = last ? P.b_last : P.b;
        if (last && P.fomaml) fused_store_theta(P, S, dt);  // θ'_{k−1}, read back by the same threads
        fused_gather(P, S, xt, yt, lt, it + (size_t)s * P.idx_stride, bs);
        __syncthreads();
        fused_forward(P, S, bs);
        const float l = fused_loss(P, S, bs, true);
        if (s == 0) loss_before = l;
        fused_backward_sgd(P, S, bs);
    }
    // Loss after adaptation, on the first minibatch.
    const int b0 = P.steps == 1 ? P.b_last : P.b;
    fused_gather(P, S, xt, yt, lt, it, b0);
    __syncthreads();
    fused_forward(P, S, b0);
    const float loss_after = fused_loss(P, S, b0, false);
    if (threadIdx.x == 0) {
        losses[2 * t] = loss_before;
        losses[2 * t + 1] = loss_after;
    }
    fused_store_diff(P, S, P.fomaml ? dt : theta, dt);
}
