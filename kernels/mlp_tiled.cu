// Kernel family 3: the tiled inner loop, for networks whose θ does not fit in one block's
// shared memory (e.g. the Omniglot MLP 784-256-128-64-64-5, ~250k parameters).
//
// Computes the same function as the fused kernel (mlp_fused.cu): every task's k SGD steps on
// its minibatches, then the loss after adaptation and delta = θ'_k − θ (or θ'_k − θ'_{k−1}).
// Each task's θ', activations and gradients live in global memory, [n_tasks × ...], and the host
// issues one launch per phase per layer, in stream order (the sequence is built by
// `reptile::cuda::tiled::program`): gather → forward per layer → loss → for each layer from
// the last, input gradient then weight update. Every launch is batched over tasks with
// task = blockIdx.z; `*_ts` arguments are the per-task strides (in floats) of each buffer.
//
// Work mapping of the three products (256 threads = a 16 × 16 tile of C, one element per
// thread, thread (ty, tx) = (tid / 16, tid % 16); blockIdx.x/y pick the tile; K is walked in
// steps of 16 through two 16 × 17 shared tiles, padded so the column reads of the left tile
// are conflict-free):
//   forward       Z[p, o]  = act(b[o] + Σ_i A[p, i]·W[o, i])          bias + activation fused
//   input grad    dA[p, i] = (Σ_o dZ[p, o]·W[o, i]) · act'(A_prev[p, i]) derivative fused
//   weight + SGD  W[o, i] −= α·Σ_p dZ[p, o]·A[p, i], column i = in is the bias (A ≡ 1)
//   weight + Adam the same gradient g, then the Adam (β1 = 0) update of that element with its
//                 task's second moment v in V [n_tasks × P] (the CPU path's arithmetic)
// Loss: one block per task (MSE over elements, CE one thread per point), block-reduced.

#include "common.cuh"

#define REPTILE_TILE 16

// C(row, col) = Σ_k L(row, k)·R(k, col) for this thread's element of the block's tile, with
// L(r, k) = Lp[r·lrs + k·lks] (rows < M, k < K) and R(k, c) = Rp[k·rks + c·rcs] (c < N; the
// column `ones_col`, if ≥ 0, reads as 1). Out-of-range entries read as 0. All threads of the
// block must call it (it synchronizes).
__device__ __forceinline__ float tiled_dot(int M, int N, int K, const float* __restrict__ Lp, int lrs, int lks,
                                           const float* __restrict__ Rp, int rks, int rcs, int ones_col, float* sL,
                                           float* sR) {
    const int ty = threadIdx.x / REPTILE_TILE, tx = threadIdx.x % REPTILE_TILE;
    const int lrow = blockIdx.y * REPTILE_TILE + ty;  // row of L this thread loads
    const int rcol = blockIdx.x * REPTILE_TILE + tx;  // column of R this thread loads
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += REPTILE_TILE) {
        const int lk = k0 + tx, rk = k0 + ty;
        sL[ty * (REPTILE_TILE + 1) + tx] = (lrow < M && lk < K) ? Lp[(size_t)lrow * lrs + (size_t)lk * lks] : 0.0f;
        float r = 0.0f;
        if (rk < K && rcol < N) r = rcol == ones_col ? 1.0f : Rp[(size_t)rk * rks + (size_t)rcol * rcs];
        sR[ty * (REPTILE_TILE + 1) + tx] = r;
        __syncthreads();
        for (int k = 0; k < REPTILE_TILE; ++k)
            acc = fmaf(sL[ty * (REPTILE_TILE + 1) + k], sR[k * (REPTILE_TILE + 1) + tx], acc);
        __syncthreads();
    }
    return acc;
}

// Z[t] (bs × out) = act(A[t] (bs × in) · W[t]ᵀ + b[t]); act < 0: linear. Grid (⌈out/16⌉, ⌈bs/16⌉, n).
extern "C" __global__ void reptile_tiled_forward(int bs, int in, int out, int act, const float* __restrict__ A,
                                                 int a_ts, const float* __restrict__ theta, int theta_ts, int w_off,
                                                 int b_off, float* __restrict__ Z, int z_ts) {
    REPTILE_SMEM(float, smem);
    const size_t t = blockIdx.z;
    const float* W = theta + t * theta_ts + w_off;
    const float v = tiled_dot(bs, out, in, A + t * a_ts, in, 1, W, 1, in, -1, smem,
                              smem + REPTILE_TILE * (REPTILE_TILE + 1));
    const int p = blockIdx.y * REPTILE_TILE + threadIdx.x / REPTILE_TILE;
    const int o = blockIdx.x * REPTILE_TILE + threadIdx.x % REPTILE_TILE;
    if (p < bs && o < out) {
        const float z = theta[t * theta_ts + b_off + o] + v;
        Z[t * z_ts + (size_t)p * out + o] = act < 0 ? z : reptile_act(act, z);
    }
}

// dA[t] (bs × in) = (dZ[t] (bs × out) · W[t]) ⊙ act'(A_prev[t]). Grid (⌈in/16⌉, ⌈bs/16⌉, n).
extern "C" __global__ void reptile_tiled_input_grad(int bs, int in, int out, int act, const float* __restrict__ dZ,
                                                    int dz_ts, const float* __restrict__ theta, int theta_ts, int w_off,
                                                    const float* __restrict__ A_prev, int a_ts, float* __restrict__ dA,
                                                    int da_ts) {
    REPTILE_SMEM(float, smem);
    const size_t t = blockIdx.z;
    const float* W = theta + t * theta_ts + w_off;
    const float v = tiled_dot(bs, in, out, dZ + t * dz_ts, out, 1, W, in, 1, -1, smem,
                              smem + REPTILE_TILE * (REPTILE_TILE + 1));
    const int p = blockIdx.y * REPTILE_TILE + threadIdx.x / REPTILE_TILE;
    const int i = blockIdx.x * REPTILE_TILE + threadIdx.x % REPTILE_TILE;
    if (p < bs && i < in) {
        const size_t e = (size_t)p * in + i;
        dA[t * da_ts + e] = v * reptile_act_grad(act, A_prev[t * a_ts + e]);
    }
}

// The weight-gradient product shared by the two update kernels: g = Σ_p dZ[t][p, o]·A[t][p, i]
// for this thread's element (o, i) of W[t] (i = in: the bias, A ≡ 1), and in *e its offset in
// the per-task buffers of θ's layout (stride theta_ts); *e = −1 outside the layer. All threads
// of the block must call it (it synchronizes).
__device__ __forceinline__ float tiled_weight_grad(int bs, int in, int out, const float* __restrict__ dZ, int dz_ts,
                                                   const float* __restrict__ A, int a_ts, int theta_ts, int w_off,
                                                   int b_off, float* smem, long long* e) {
    const size_t t = blockIdx.z;
    const float g = tiled_dot(out, in + 1, bs, dZ + t * dz_ts, 1, out, A + t * a_ts, in, 1, in, smem,
                              smem + REPTILE_TILE * (REPTILE_TILE + 1));
    const int o = blockIdx.y * REPTILE_TILE + threadIdx.x / REPTILE_TILE;
    const int i = blockIdx.x * REPTILE_TILE + threadIdx.x % REPTILE_TILE;
    *e = (o < out && i <= in) ? (long long)(t * theta_ts + (i < in ? w_off + (size_t)o * in + i : b_off + o)) : -1;
    return g;
}

// W[t] −= lr·dZ[t]ᵀ·A[t], b[t] −= lr·Σ_p dZ[t] (column in of the product). Grid
// (⌈(in+1)/16⌉, ⌈out/16⌉, n). Launched after the layer's input gradient has read W.
extern "C" __global__ void reptile_tiled_weight_sgd(int bs, int in, int out, float lr, const float* __restrict__ dZ,
                                                    int dz_ts, const float* __restrict__ A, int a_ts,
                                                    float* __restrict__ theta, int theta_ts, int w_off, int b_off) {
    REPTILE_SMEM(float, smem);
    long long e;
    const float g = tiled_weight_grad(bs, in, out, dZ, dz_ts, A, a_ts, theta_ts, w_off, b_off, smem, &e);
    if (e >= 0) theta[e] += -lr * g;
}

// The Adam (β1 = 0) inner step in place of reptile_tiled_weight_sgd, one element of W[t] or
// b[t] per thread: g as there, then v ← β2·v + (1 − β2)·g² (g's share left out where
// |g| < gmin, where it would be subnormal; a subnormal v stored as 0) and
// θ −= lr_t·g/(√v + ε), lr_t = α·√(1 − β2^t) folded in by the host per step. V has θ's layout
// per task (stride theta_ts). The same arithmetic as the CPU path (cpu::update::adam_b1zero).
// Grid (⌈(in+1)/16⌉, ⌈out/16⌉, n).
extern "C" __global__ void reptile_tiled_weight_adam(int bs, int in, int out, float lr_t, float beta2, float eps,
                                                     float gmin, const float* __restrict__ dZ, int dz_ts,
                                                     const float* __restrict__ A, int a_ts, float* __restrict__ theta,
                                                     float* __restrict__ V, int theta_ts, int w_off, int b_off) {
    REPTILE_SMEM(float, smem);
    long long e;
    const float g = tiled_weight_grad(bs, in, out, dZ, dz_ts, A, a_ts, theta_ts, w_off, b_off, smem, &e);
    if (e >= 0) {
        const float gq = fabsf(g) >= gmin ? g : 0.0f;
        float v = fmaf(beta2, V[e], (1.0f - beta2) * gq * gq);
        if (v < 1.17549435e-38f) v = 0.0f;  // FLT_MIN; NaN compares false and is kept
        V[e] = v;
        theta[e] -= lr_t * g / (sqrtf(v) + eps);
    }
}

// Gathers task t's minibatch: xb[t][p] = x[t][idx[p]], yb likewise (labels as unsigned bits).
// idx points at step s's list of task 0; idx_ts is the stride between tasks' lists. Grid (1, 1, n).
extern "C" __global__ void reptile_tiled_gather(int bs, int m, int din, int dout, int loss, const float* __restrict__ x,
                                                const float* __restrict__ y, const unsigned* __restrict__ labels,
                                                const unsigned* __restrict__ idx, int idx_ts, float* __restrict__ xb,
                                                int xb_ts, float* __restrict__ yb, int yb_ts) {
    const size_t t = blockIdx.z;
    const unsigned* it = idx + t * idx_ts;
    for (int e = threadIdx.x; e < bs * din; e += blockDim.x) {
        const int p = e / din, i = e - p * din;
        xb[t * xb_ts + e] = x[(t * m + it[p]) * din + i];
    }
    if (loss == REPTILE_LOSS_MSE) {
        for (int e = threadIdx.x; e < bs * dout; e += blockDim.x) {
            const int p = e / dout, j = e - p * dout;
            yb[t * yb_ts + e] = y[(t * m + it[p]) * dout + j];
        }
    } else {
        unsigned* lb = (unsigned*)(yb + t * yb_ts);
        for (int p = threadIdx.x; p < bs; p += blockDim.x) lb[p] = labels[t * m + it[p]];
    }
}

// Loss of task t's output Y (bs × out) against its gathered targets; with grad, dY into dy.
// The loss goes to losses[2t + slot] when slot ≥ 0. Grid (1, 1, n), blockDim a multiple of 32.
extern "C" __global__ void reptile_tiled_loss(int bs, int out, int loss, const float* __restrict__ Y, int y_ts,
                                              const float* __restrict__ yb, int yb_ts, float* __restrict__ dy, int dy_ts,
                                              int grad, float* __restrict__ losses, int slot) {
    REPTILE_SMEM(float, red);
    const size_t t = blockIdx.z;
    const float* yhat = Y + t * y_ts;
    const float* tv = yb + t * yb_ts;
    float* g0 = dy + t * dy_ts;
    float part = 0.0f;
    double denom;
    if (loss == REPTILE_LOSS_MSE) {
        const float scale = 2.0f / (float)(bs * out);
        for (int e = threadIdx.x; e < bs * out; e += blockDim.x) {
            const float d = yhat[e] - tv[e];
            part = fmaf(d, d, part);
            if (grad) g0[e] = scale * d;
        }
        denom = (double)(bs * out);
    } else {
        const unsigned* lb = (const unsigned*)tv;
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
                float* g = g0 + p * out;
                const float k = inv / s;
                for (int j = 0; j < out; ++j) g[j] = expf(row[j] - mx) * k;
                g[c] -= inv;
            }
        }
        denom = (double)bs;
    }
    const double total = reptile_block_sum(part, red);
    if (threadIdx.x == 0 && slot >= 0) losses[2 * t + slot] = (float)(total / denom);
}

// dst[t] = src[t·src_ts] (src_ts = 0 broadcasts θ to every task's θ'). Grid (⌈P/blockDim⌉, 1, n).
extern "C" __global__ void reptile_tiled_copy(const float* __restrict__ src, int src_ts, int count,
                                              float* __restrict__ dst) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const size_t t = blockIdx.z;
    if (j < count) dst[t * count + j] = src[t * src_ts + j];
}

// out[t] = a[t] − b[t·b_ts] (b_ts = 0: the same b for every task). out may alias b. Grid
// (⌈P/blockDim⌉, 1, n).
extern "C" __global__ void reptile_tiled_diff(const float* __restrict__ a, const float* b, int b_ts, int count, float* out) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const size_t t = blockIdx.z;
    if (j < count) out[t * count + j] = a[t * count + j] - b[t * b_ts + j];
}
