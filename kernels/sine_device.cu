// Kernel family 4: a device-resident sine-wave meta-training loop, so a whole run makes no
// host round-trips per iteration (the host enqueues, or replays a captured CUDA graph).
//
// One iteration is five launches on fixed buffers (sequence built by
// `reptile::cuda::sine::resident_program`):
//   reptile_sine_sample        tasks and minibatch index lists for iteration *iter
//   reptile_fused_inner        (mlp_fused.cu) every task's inner loop → deltas
//   reptile_chunk_sums         (reptile_update.cu) fixed-order reduction, stage 1
//   reptile_interpolate_sched  stage 2 with ε(*iter)/n and the outer decay → candidate θ, *bad
//                              on NaN/Inf
//   reptile_commit             θ ← candidate and ++*iter, unless *bad: then θ keeps its last
//                              finite value and *iter the failing iteration, for good.
//
// Random numbers: Philox4x32-10 (Salmon et al. 2011), key = the 64-bit seed, counter =
// (iteration, task, block, 0x53494e45 "SINE"), so every draw is a pure function of
// (seed, iteration, task) — no RNG state on the device. Task t of an iteration: A ~ U[0.1, 5)
// from word 0 of block 0, φ ~ U[0, 2π) from word 1; the 50-point grid linspace(−5, 5, 50);
// the minibatch stream of the CPU path (a shuffled pass over the 50 points, consumed b at a
// time, reshuffled when exhausted), each pass's shuffle drawn in parallel: point p of pass k
// gets the key word p mod 4 of block 1 + 13k + p/4, and the pass visits the points in
// increasing (key, p) order (a uniform permutation; ties, at odds of 2^-32 per pair, go to
// the lower index). `reptile::cuda::sine` has the same sampler on the
// CPU, which the tests compare against.
//
// Work mapping: sample — one block per task; thread p < 50 writes grid point p and its target
// and ranks point p in each pass (reptile_sine_draw in common.cuh). interpolate_sched and
// commit — one thread per parameter, as reptile_interpolate.

#include "common.cuh"

// x, y: [n × 50] (in = out = 1); idx: [n × steps × b]. Grid n, blockDim ≥ 50 (a multiple of 32).
extern "C" __global__ void reptile_sine_sample(unsigned seed_lo, unsigned seed_hi, const unsigned* __restrict__ iter,
                                               int n, int steps, int b, float* __restrict__ x, float* __restrict__ y,
                                               unsigned* __restrict__ idx) {
    REPTILE_SMEM(unsigned, keys);  // 50 entries: the draws' keys
    const unsigned t = blockIdx.x;
    if ((int)t >= n) return;
    reptile_sine_draw(seed_lo, seed_hi, *iter, t, steps, b, x + (size_t)t * REPTILE_SINE_POINTS,
                      y + (size_t)t * REPTILE_SINE_POINTS, idx + (size_t)t * steps * b, keys);
}

// Stage 2 of the reduction with the annealed step: ε(t) = ε0 + (ε1 − ε0)·min(t/T, 1) in double,
// rounded to float, scale = ε/n in float (as the CPU trainer), cand = fma(scale, Σδ, θ)·keep with
// keep = 1 − ε·decay (reptile_keep; exactly 1 without a decay).
extern "C" __global__ void reptile_interpolate_sched(const float* __restrict__ theta, const float* __restrict__ partial,
                                                     int nc, int num_params, float eps0, float eps1, float decay,
                                                     unsigned planned, int n, const unsigned* __restrict__ iter,
                                                     float* __restrict__ cand, unsigned* __restrict__ bad) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= num_params) return;
    double frac = (double)*iter / (double)planned;
    if (frac > 1.0) frac = 1.0;
    const float eps = (float)((double)eps0 + ((double)eps1 - (double)eps0) * frac);
    const float scale = eps / (float)n;
    const float keep = reptile_keep(eps, decay);
    float s = partial[j];
    for (int c = 1; c < nc; ++c) s += partial[(size_t)c * num_params + j];
    const float v = fmaf(scale, s, theta[j]) * keep;
    cand[j] = v;
    if (!reptile_is_finite(v)) atomicOr(bad, 1u);
}

// θ ← cand and ++*iter, unless *bad (then nothing changes, ever after).
extern "C" __global__ void reptile_commit(const float* __restrict__ cand, float* __restrict__ theta, int num_params,
                                          const unsigned* __restrict__ bad, unsigned* __restrict__ iter) {
    if (*bad) return;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < num_params) theta[j] = cand[j];
    if (j == 0) *iter += 1u;
}
