// Kernel family 4: a device-resident sine-wave meta-training loop, so a whole run makes no
// host round-trips per iteration (the host enqueues, or replays a captured CUDA graph).
//
// One iteration is five launches on fixed buffers (sequence built by
// `reptile::cuda::sine::resident_program`):
//   reptile_sine_sample        tasks and minibatch index lists for iteration *iter
//   reptile_fused_inner        (mlp_fused.cu) every task's inner loop → deltas
//   reptile_chunk_sums         (reptile_update.cu) fixed-order reduction, stage 1
//   reptile_interpolate_sched  stage 2 with ε(*iter)/n → candidate θ, *bad on NaN/Inf
//   reptile_commit             θ ← candidate and ++*iter, unless *bad: then θ keeps its last
//                              finite value and *iter the failing iteration, for good.
//
// Random numbers: Philox4x32-10 (Salmon et al. 2011), key = the 64-bit seed, counter =
// (iteration, task, block, 0x53494e45 "SINE"), so every draw is a pure function of
// (seed, iteration, task) — no RNG state on the device. Task t of an iteration: A ~ U[0.1, 5)
// from word 0 of block 0, φ ~ U[0, 2π) from word 1; the 50-point grid linspace(−5, 5, 50);
// the minibatch stream of the CPU path (a shuffled pass over the 50 points, consumed b at a
// time, reshuffled when exhausted) with Fisher–Yates shuffles drawing words from blocks 1, 2, …
// (index j of 0..=i as ⌊u·(i+1) / 2^32⌋). `reptile::cuda::sine` has the same sampler on the
// CPU, which the tests compare against.
//
// Work mapping: sample — one block per task; thread p < 50 writes grid point p and its target,
// thread 0 runs the shuffles (sequential by nature, 49 swaps per pass). interpolate_sched and
// commit — one thread per parameter, as reptile_interpolate.

#include "common.cuh"

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

// x, y: [n × 50] (in = out = 1); idx: [n × steps × b]. Grid n, blockDim ≥ 50.
extern "C" __global__ void reptile_sine_sample(unsigned seed_lo, unsigned seed_hi, const unsigned* __restrict__ iter,
                                               int n, int steps, int b, float* __restrict__ x, float* __restrict__ y,
                                               unsigned* __restrict__ idx) {
    REPTILE_SMEM(unsigned, perm);  // 50 entries
    const unsigned t = blockIdx.x, it = *iter;
    if ((int)t >= n) return;
    unsigned u[4];
    reptile_philox(it, t, 0u, REPTILE_SINE_TAG, seed_lo, seed_hi, u);
    const float amp = 0.1f + 4.9f * reptile_unit(u[0]);
    const float phase = 6.2831855f * reptile_unit(u[1]);
    for (int p = threadIdx.x; p < REPTILE_SINE_POINTS; p += blockDim.x) {
        const float xp = (float)(-5.0 + 10.0 * (double)p / (double)(REPTILE_SINE_POINTS - 1));
        x[(size_t)t * REPTILE_SINE_POINTS + p] = xp;
        y[(size_t)t * REPTILE_SINE_POINTS + p] = amp * sinf(xp + phase);
    }
    if (threadIdx.x == 0) {
        for (int p = 0; p < REPTILE_SINE_POINTS; ++p) perm[p] = (unsigned)p;
        unsigned* out = idx + (size_t)t * steps * b;
        unsigned block = 1, word = 4, w[4];
        int pos = REPTILE_SINE_POINTS;
        for (int e = 0; e < steps * b; ++e) {
            if (pos == REPTILE_SINE_POINTS) {
                for (int i = REPTILE_SINE_POINTS - 1; i > 0; --i) {
                    if (word == 4) {
                        reptile_philox(it, t, block++, REPTILE_SINE_TAG, seed_lo, seed_hi, w);
                        word = 0;
                    }
                    // Select without indexing, so w stays in registers.
                    const unsigned r = word == 0 ? w[0] : word == 1 ? w[1] : word == 2 ? w[2] : w[3];
                    ++word;
                    const unsigned j = reptile_mulhi(r, (unsigned)(i + 1));
                    const unsigned tmp = perm[i];
                    perm[i] = perm[j];
                    perm[j] = tmp;
                }
                pos = 0;
            }
            out[e] = perm[pos++];
        }
    }
}

// Stage 2 of the reduction with the annealed step: ε(t) = ε0 + (ε1 − ε0)·min(t/T, 1) in double,
// rounded to float, scale = ε/n in float (as the CPU trainer), cand = fma(scale, Σδ, θ).
extern "C" __global__ void reptile_interpolate_sched(const float* __restrict__ theta, const float* __restrict__ partial,
                                                     int nc, int num_params, float eps0, float eps1, unsigned planned,
                                                     int n, const unsigned* __restrict__ iter, float* __restrict__ cand,
                                                     unsigned* __restrict__ bad) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= num_params) return;
    double frac = (double)*iter / (double)planned;
    if (frac > 1.0) frac = 1.0;
    const float eps = (float)((double)eps0 + ((double)eps1 - (double)eps0) * frac);
    const float scale = eps / (float)n;
    float s = partial[j];
    for (int c = 1; c < nc; ++c) s += partial[(size_t)c * num_params + j];
    const float v = fmaf(scale, s, theta[j]);
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
