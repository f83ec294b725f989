// Ceiling of the sine net's hidden-layer product on this machine, for issue 6's "what bounds
// it": the fastest form of one 10 × 64 × 64 product we know, written without any of the
// constraints the real kernels carry, and timed on data that stays in L1.
//
//   gcc -O3 -march=icelake-server -pthread benches/peak/product.c -o target/product && target/product
//
// C[p][j] += Σ_k A[p][k]·B[k][j] for p < 10 points, j < 64 outputs, k < 64 inputs, in the
// "axpy" form (the form of our input-gradient kernel `dz_w`, the fastest of the three): each
// FMA multiplies one 16-float piece of a B row by A[p][k] broadcast straight from memory
// (an embedded broadcast, no shuffle), into accumulators that stay in zmm registers for the
// whole k loop. No horizontal sums, no tails (64 = 4 vectors), no bias, no activation, no
// update, compile-time strides, 64-byte aligned rows. Register blocks: RP points × RV
// vectors of outputs (RP·RV accumulators), the k loop innermost. Each shape is timed on one
// thread, then on two at once (each thread its own buffers), best of five repetitions; the
// last line is the FMA-only peak of `peak.c` (registers only) measured in the same minute.
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#define P 10
#define N 64
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

typedef struct { float a[P * N] __attribute__((aligned(64))), b[N * N], c[P * N], sink[16]; } Buf;
static Buf bufs[2];
static long REPS = 400000;

// One RP × RV block at (p0, v0): C[p0+r][16(v0+c) ..] += Σ_k A[p0+r][k]·B[k][16(v0+c) ..].
#define BLOCK(RP, RV)                                                                                  \
  static void block_##RP##x##RV(const float *a, const float *b, float *c, int p0, int v0) {            \
    __m512 acc[RP][RV];                                                                                \
    for (int r = 0; r < RP; r++)                                                                       \
      for (int q = 0; q < RV; q++) acc[r][q] = _mm512_load_ps(c + (p0 + r) * N + 16 * (v0 + q));      \
    for (int k = 0; k < N; k++) {                                                                      \
      __m512 bv[RV];                                                                                   \
      for (int q = 0; q < RV; q++) bv[q] = _mm512_load_ps(b + k * N + 16 * (v0 + q));                 \
      for (int r = 0; r < RP; r++) {                                                                   \
        __m512 av = _mm512_set1_ps(a[(p0 + r) * N + k]);                                               \
        for (int q = 0; q < RV; q++) acc[r][q] = _mm512_fmadd_ps(av, bv[q], acc[r][q]);                \
      }                                                                                                \
    }                                                                                                  \
    for (int r = 0; r < RP; r++)                                                                       \
      for (int q = 0; q < RV; q++) _mm512_store_ps(c + (p0 + r) * N + 16 * (v0 + q), acc[r][q]);     \
  }                                                                                                    \
  static void product_##RP##x##RV(Buf *m) {                                                           \
    for (int p0 = 0; p0 + RP <= P; p0 += RP)                                                           \
      for (int v0 = 0; v0 + RV <= N / 16; v0 += RV) block_##RP##x##RV(m->a, m->b, m->c, p0, v0);       \
  }

BLOCK(10, 2)
BLOCK(5, 4)
BLOCK(5, 2)
BLOCK(2, 4)

typedef void (*Product)(Buf *);
typedef struct { Product f; Buf *m; double secs; } Job;

static void *run(void *arg) {
  Job *j = arg;
  double best = 1e30;
  for (int rep = 0; rep < 5; rep++) {
    double t0 = now();
    for (long i = 0; i < REPS; i++) {
      j->f(j->m);
      // Keep C bounded (and the loop honest): halve one of its values after each product.
      j->m->c[(i * 16) % (P * N)] *= 0.5f;
    }
    double t = now() - t0;
    if (t < best) best = t;
  }
  j->secs = best;
  j->m->sink[0] = j->m->c[0];
  return 0;
}

static void *fma_peak(void *arg) {
  __m512 acc[12];
  for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps(i);
  __m512 m = _mm512_set1_ps(0.9999f), c = _mm512_set1_ps(1e-6f);
  for (long n = 0; n < 100000000 / 12; n++)
    for (int i = 0; i < 12; i++) acc[i] = _mm512_fmadd_ps(acc[i], m, c);
  float s = 0;
  for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(acc[i]);
  *(float *)arg = s;
  return 0;
}

int main(void) {
  for (int t = 0; t < 2; t++) {
    for (int i = 0; i < P * N; i++) bufs[t].a[i] = 1e-3f * (float)((i * 7919) % 1000) - 0.5f;
    for (int i = 0; i < N * N; i++) bufs[t].b[i] = 1e-3f * (float)((i * 104729) % 1000) - 0.5f;
    for (int i = 0; i < P * N; i++) bufs[t].c[i] = 0.0f;
  }
  Product fs[] = {product_10x2, product_5x4, product_5x2, product_2x4};
  const char *names[] = {"10 x 2", "5 x 4", "5 x 2", "2 x 4"};
  double flop = 2.0 * P * N * N * REPS;
  for (int f = 0; f < 4; f++) {
    Job one = {fs[f], &bufs[0], 0};
    run(&one);
    Job two[2] = {{fs[f], &bufs[0], 0}, {fs[f], &bufs[1], 0}};
    pthread_t th;
    pthread_create(&th, 0, run, &two[1]);
    run(&two[0]);
    pthread_join(th, 0);
    double g2 = flop / two[0].secs / 1e9 + flop / two[1].secs / 1e9;
    printf("product 10x64x64, block %s: 1 thread %.1f GFLOP/s (%.3f us per product), 2 threads %.1f GFLOP/s\n",
           names[f], flop / one.secs / 1e9, one.secs / REPS * 1e6, g2);
  }
  float r[2];
  pthread_t th;
  double t0 = now();
  fma_peak(r);
  double g1 = 2.0 * 100000000 * 16 / (now() - t0) / 1e9;
  t0 = now();
  pthread_create(&th, 0, fma_peak, r + 1);
  fma_peak(r);
  pthread_join(th, 0);
  double g2 = 2 * 2.0 * 100000000 * 16 / (now() - t0) / 1e9;
  printf("fma peak (registers only): 1 thread %.1f GFLOP/s, 2 threads %.1f GFLOP/s\n", g1, g2);
  return 0;
}
