// Kernel family 2: the batched Reptile interpolation θ ← θ + ε·(1/n)·Σ_i (θ'_i − θ).
//
// Deterministic reduction order, the same as the CPU trainer (src/meta/trainer.rs): the n tasks
// are cut into nc = min(n, 64) fixed chunks of consecutive tasks, chunk c = [c·n/nc, (c+1)·n/nc);
// each chunk's deltas are summed in task order starting from 0, then the chunk sums are added
// in chunk order. The order depends on n alone, never on the launch shape, so θ is
// reproducible run to run.
//
// Two launches, both memory-bound and coalesced:
//   reptile_chunk_sums   grid (⌈P/blockDim⌉, nc): thread j of block column c sums column j of
//                        the chunk's rows of delta [n × P]; a warp reads 32 consecutive floats
//                        of each row, so every row is streamed once, fully coalesced.
//   reptile_interpolate  grid ⌈P/blockDim⌉: thread j adds the nc chunk sums of column j in
//                        order, writes sum[j] (optional, for split steps) and
//                        out[j] = fma(scale, sum, θ[j]) with scale = ε/n, and raises *bad when a
//                        result is not finite (the host then keeps θ and reports divergence).

#include "common.cuh"

extern "C" __global__ void reptile_chunk_sums(const float* __restrict__ delta, int n, int num_params, int nc,
                                              float* __restrict__ partial) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int c = blockIdx.y;
    if (j >= num_params || c >= nc) return;
    const int start = (int)((long long)c * n / nc), end = (int)((long long)(c + 1) * n / nc);
    float acc = 0.0f;
    for (int i = start; i < end; ++i) acc += delta[(size_t)i * num_params + j];
    partial[(size_t)c * num_params + j] = acc;
}

extern "C" __global__ void reptile_interpolate(const float* __restrict__ theta, const float* __restrict__ partial, int nc,
                                               int num_params, float scale, float* __restrict__ out,
                                               float* __restrict__ sum, unsigned* __restrict__ bad) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= num_params) return;
    float s = partial[j];
    for (int c = 1; c < nc; ++c) s += partial[(size_t)c * num_params + j];
    if (sum) sum[j] = s;
    const float v = fmaf(scale, s, theta[j]);
    out[j] = v;
    if (!reptile_is_finite(v)) atomicOr(bad, 1u);
}
