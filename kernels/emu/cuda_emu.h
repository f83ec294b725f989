// A tiny CPU emulation of the CUDA features the reptile kernels use, so kernels/*.cu compile as
// C++ (g++ -std=c++20 -x c++ -include kernels/emu/cuda_emu.h) and run in CI without a GPU.
//
// Model: a launch runs its blocks one after another; each block's threads are OS threads.
//  - blockIdx/threadIdx/blockDim/gridDim: thread_local variables set before the kernel runs.
//  - __syncthreads: a std::barrier over the block's threads. A thread that returns from the
//    kernel drops out of the barrier (as an exited thread does on the GPU).
//  - __shfl_xor_sync: lanes exchange through a per-warp slot array between two warp barriers;
//    blockDim.x must be a multiple of 32 and all 32 lanes must take part (full mask).
//  - dynamic shared memory only (REPTILE_SMEM): one 16-byte aligned buffer per block, filled with NaN bytes
//    before the block runs and followed by a guard zone checked afterwards (an overrun makes
//    the launch return an error).
//  - atomicOr: a GCC atomic builtin. __float_as_uint: memcpy.
// Kernels must not rely on anything else (no static __shared__, no warp-synchronous code
// without __shfl/__syncthreads, 1-D blocks).
#pragma once
#define REPTILE_EMU 1

#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) float4 {
    float x, y, z, w;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define REPTILE_SMEM(type, name) type* name = reinterpret_cast<type*>(emu::tl_smem)
#define REPTILE_UNROLL
#define REPTILE_UNROLL_N(n)
#define REPTILE_LAUNCH_BOUNDS_MIN(threads, blocks)

namespace emu {
struct Warp {
    std::barrier<> bar{32};
    float slots[32];
};
struct Block {
    explicit Block(unsigned threads) : bar(threads), warps(threads / 32) {
        for (auto& w : warps) w = std::make_unique<Warp>();
    }
    std::barrier<> bar;
    std::vector<std::unique_ptr<Warp>> warps;
};
inline thread_local Block* tl_block = nullptr;
inline thread_local unsigned char* tl_smem = nullptr;
constexpr std::size_t GUARD = 256;
constexpr unsigned char GUARD_BYTE = 0xA5;

// Runs kernel<<<grid, block, smem>>>(args...) on the CPU. Returns 0, or 1 if the launch shape
// is not supported, 2 if a block wrote past its dynamic shared memory.
template <class... P, class... A>
int launch(dim3 grid, dim3 block, std::size_t smem, void (*kernel)(P...), A... args) {
    if (block.x == 0 || block.x % 32 != 0 || block.x > 1024 || block.y != 1 || block.z != 1) return 1;
    // 16-byte aligned, as the GPU's dynamic shared memory (the kernels read float4 vectors).
    std::vector<float4> store((smem + GUARD + 15) / 16);
    unsigned char* const mem = reinterpret_cast<unsigned char*>(store.data());
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::memset(mem, 0xFF, smem);  // NaN in every float
                std::memset(mem + smem, GUARD_BYTE, GUARD);
                Block b(block.x);
                std::vector<std::thread> threads;
                threads.reserve(block.x);
                for (unsigned t = 0; t < block.x; ++t) {
                    threads.emplace_back([&, t] {
                        threadIdx = dim3(t);
                        blockIdx = dim3(bx, by, bz);
                        blockDim = block;
                        gridDim = grid;
                        tl_block = &b;
                        tl_smem = mem;
                        kernel(args...);
                        b.warps[t / 32]->bar.arrive_and_drop();
                        b.bar.arrive_and_drop();
                    });
                }
                for (auto& th : threads) th.join();
                for (std::size_t i = 0; i < GUARD; ++i)
                    if (mem[smem + i] != GUARD_BYTE) return 2;
            }
    return 0;
}
}  // namespace emu

inline void __syncthreads() { emu::tl_block->bar.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned /*mask: full warps only*/, float v, int lane_mask) {
    emu::Warp& w = *emu::tl_block->warps[threadIdx.x / 32];
    const unsigned lane = threadIdx.x % 32;
    w.slots[lane] = v;
    w.bar.arrive_and_wait();
    const float r = w.slots[(lane ^ (unsigned)lane_mask) & 31u];
    w.bar.arrive_and_wait();
    return r;
}

inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// Round-to-nearest arithmetic intrinsics: plain float operations (ISO C++ mode contracts nothing).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }

inline unsigned atomicOr(unsigned* p, unsigned v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
