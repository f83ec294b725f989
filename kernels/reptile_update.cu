// Kernel family 2: the batched Reptile interpolation θ ← keep·(θ + ε·(1/n)·Σ_i (θ'_i − θ)), with
// keep = 1 − ε·λ for an outer decay λ (1 without one).
//
// Deterministic reduction order, the same as the CPU trainer (src/meta/trainer.rs): the n tasks
// are cut into nc = min(n, 64) fixed chunks of consecutive tasks, chunk c = [c·n/nc, (c+1)·n/nc);
// each chunk's deltas are summed in task order starting from 0, then the chunk sums are added
// in chunk order. The order depends on n alone, never on the launch shape, so θ is
// reproducible run to run.
//
// Two launches, both memory-bound and coalesced:
//   reptile_chunk_sums   grid (⌈P/2/blockDim⌉, nc): thread j of block column c sums columns j
//                        and j + ⌈P/2⌉ of the chunk's rows of delta [n × P]; a warp reads 32
//                        consecutive floats of each row twice over, so every row is streamed
//                        once, fully coalesced.
//   reptile_interpolate  grid ⌈P/blockDim⌉: thread j adds the nc chunk sums of column j in
//                        order, writes sum[j] (optional, for split steps) and
//                        out[j] = fma(scale, sum, θ[j])·keep with scale = ε/n (the product
//                        rounded once more, so keep = 1 gives the undecayed bits, as the CPU
//                        trainer's update::interpolate), and raises *bad when a result is
//                        not finite (the host then keeps θ and reports divergence).

#include "common.cuh"

extern "C" __global__ void reptile_chunk_sums(const float* __restrict__ delta, int n, int num_params, int nc,
                                              float* __restrict__ partial) {
    // Each thread owns two columns, j and j + half (half = ⌈P/2⌉), over a grid-stride loop, so
    // any grid works; the host launches ⌈half/blockDim⌉ column blocks, which keeps the whole
    // grid (half·nc threads) resident in one wave on large GPUs. Rows are loaded UNR at a time
    // (2·UNR independent loads in flight) and then added in task order, so the sum is
    // bit-identical to a plain sequential loop.
    const int c = blockIdx.y;
    if (c >= nc) return;
    const int half = (num_params + 1) / 2;
    const int start = (int)((long long)c * n / nc), end = (int)((long long)(c + 1) * n / nc);
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < half; j += gridDim.x * blockDim.x) {
        const int j1 = j + half < num_params ? j + half : j;  // a duplicate read when P is odd
        const float* d0 = delta + j;
        const float* d1 = delta + j1;
        float a0 = 0.0f, a1 = 0.0f;
        int i = start;
        const int UNR = 8;
        for (; i + UNR <= end; i += UNR) {
            float v0[UNR], v1[UNR];
            REPTILE_UNROLL
            for (int u = 0; u < UNR; ++u) {
                v0[u] = d0[(size_t)(i + u) * num_params];
                v1[u] = d1[(size_t)(i + u) * num_params];
            }
            REPTILE_UNROLL
            for (int u = 0; u < UNR; ++u) {
                a0 += v0[u];
                a1 += v1[u];
            }
        }
        for (; i < end; ++i) {
            a0 += d0[(size_t)i * num_params];
            a1 += d1[(size_t)i * num_params];
        }
        partial[(size_t)c * num_params + j] = a0;
        if (j + half < num_params) partial[(size_t)c * num_params + j + half] = a1;
    }
}

extern "C" __global__ void reptile_interpolate(const float* __restrict__ theta, const float* __restrict__ partial, int nc,
                                               int num_params, float scale, float keep, float* __restrict__ out,
                                               float* __restrict__ sum, unsigned* __restrict__ bad) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= num_params) return;
    float s = partial[j];
    for (int c = 1; c < nc; ++c) s += partial[(size_t)c * num_params + j];
    if (sum) sum[j] = s;
    const float v = fmaf(scale, s, theta[j]) * keep;
    out[j] = v;
    if (!reptile_is_finite(v)) atomicOr(bad, 1u);
}
