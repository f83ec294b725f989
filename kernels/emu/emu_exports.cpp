// C entry points of the CPU emulation library (built by tests/cuda_emu.rs).
//
// emu_launch mirrors cuLaunchKernel: a kernel named like its CUDA entry point, the launch shape,
// and `params`, an array of pointers to the argument values. The typed emu_* wrappers below
// are shortcuts for the tests of kernels 1 and 2.
#include "../common.cuh"

#include <cstring>
#include <utility>

extern "C" void reptile_fused_inner(FusedParams P, const float* theta, const float* x, const float* y,
                                    const unsigned* labels, const unsigned* idx, float* delta, float* losses);
extern "C" void reptile_chunk_sums(const float* delta, int n, int num_params, int nc, float* partial);
extern "C" void reptile_interpolate(const float* theta, const float* partial, int nc, int num_params, float scale,
                                    float keep, float* out, float* sum, unsigned* bad);
extern "C" void reptile_tiled_forward(int, int, int, int, const float*, int, const float*, int, int, int, float*, int);
extern "C" void reptile_tiled_input_grad(int, int, int, int, const float*, int, const float*, int, int, const float*,
                                         int, float*, int);
extern "C" void reptile_tiled_weight_sgd(int, int, int, float, const float*, int, const float*, int, float*, int, int,
                                         int);
extern "C" void reptile_tiled_weight_adam(int, int, int, float, float, float, float, const float*, int, const float*,
                                          int, float*, float*, int, int, int);
extern "C" void reptile_tiled_gather(int, int, int, int, int, const float*, const float*, const unsigned*,
                                     const unsigned*, int, float*, int, float*, int);
extern "C" void reptile_tiled_loss(int, int, int, const float*, int, const float*, int, float*, int, int, float*, int);
extern "C" void reptile_tiled_copy(const float*, int, int, float*);
extern "C" void reptile_tiled_diff(const float*, const float*, int, int, float*);
extern "C" void reptile_sine_sample(unsigned, unsigned, const unsigned*, int, int, int, float*, float*, unsigned*);
extern "C" void reptile_interpolate_sched(const float*, const float*, int, int, float, float, float, unsigned, int,
                                          const unsigned*, float*, unsigned*);
extern "C" void reptile_commit(const float*, float*, int, const unsigned*, unsigned*);
extern "C" void reptile_sine_serial(FusedParams, unsigned, unsigned, float, float, float, unsigned, int, float*, unsigned*,
                                    unsigned*, float*);

namespace {
template <class... P, std::size_t... I>
int unpack(dim3 g, dim3 b, std::size_t smem, void (*k)(P...), void** a, std::index_sequence<I...>) {
    return emu::launch(g, b, smem, k, *static_cast<P*>(a[I])...);
}
template <class... P>
int call(dim3 g, dim3 b, std::size_t smem, void (*k)(P...), void** a) {
    return unpack(g, b, smem, k, a, std::index_sequence_for<P...>{});
}
}  // namespace

// Returns emu::launch's status, or 3 for an unknown kernel name.
extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned block, std::size_t smem,
                          void** params) {
    const dim3 g(gx, gy, gz), b(block);
#define REPTILE_EMU_KERNEL(k) \
    if (std::strcmp(name, #k) == 0) return call(g, b, smem, k, params);
    REPTILE_EMU_KERNEL(reptile_fused_inner)
    REPTILE_EMU_KERNEL(reptile_chunk_sums)
    REPTILE_EMU_KERNEL(reptile_interpolate)
    REPTILE_EMU_KERNEL(reptile_tiled_forward)
    REPTILE_EMU_KERNEL(reptile_tiled_input_grad)
    REPTILE_EMU_KERNEL(reptile_tiled_weight_sgd)
    REPTILE_EMU_KERNEL(reptile_tiled_weight_adam)
    REPTILE_EMU_KERNEL(reptile_tiled_gather)
    REPTILE_EMU_KERNEL(reptile_tiled_loss)
    REPTILE_EMU_KERNEL(reptile_tiled_copy)
    REPTILE_EMU_KERNEL(reptile_tiled_diff)
    REPTILE_EMU_KERNEL(reptile_sine_sample)
    REPTILE_EMU_KERNEL(reptile_interpolate_sched)
    REPTILE_EMU_KERNEL(reptile_commit)
#if !defined(REPTILE_SPEC)  // a specialized build holds reptile_fused_inner alone
    REPTILE_EMU_KERNEL(reptile_sine_serial)
#endif
#undef REPTILE_EMU_KERNEL
    return 3;
}

extern "C" int emu_fused_inner(unsigned grid, unsigned block, std::size_t smem, const FusedParams* P,
                               const float* theta, const float* x, const float* y, const unsigned* labels,
                               const unsigned* idx, float* delta, float* losses) {
    return emu::launch(dim3(grid), dim3(block), smem, reptile_fused_inner, *P, theta, x, y, labels, idx, delta, losses);
}

extern "C" int emu_chunk_sums(unsigned grid_x, unsigned grid_y, unsigned block, const float* delta, int n,
                              int num_params, int nc, float* partial) {
    return emu::launch(dim3(grid_x, grid_y), dim3(block), 0, reptile_chunk_sums, delta, n, num_params, nc, partial);
}

extern "C" int emu_interpolate(unsigned grid, unsigned block, const float* theta, const float* partial, int nc,
                               int num_params, float scale, float keep, float* out, float* sum, unsigned* bad) {
    return emu::launch(dim3(grid), dim3(block), 0, reptile_interpolate, theta, partial, nc, num_params, scale, keep,
                       out, sum, bad);
}
