//! The CPU back end: plain-Rust kernels, parallel across tasks with rayon.
//!
//! - [`gemm`]: the one internal interface for matrix products (`matrixmultiply` today; the
//!   hand-written micro-kernels of the CPU-performance work slot in behind it).
//! - [`mlp`]: fused forward (bias + activation), loss (MSE, softmax cross-entropy) fused with the
//!   output gradient, backward into a gradient buffer or fused with the SGD update.
//! - [`sparse`]: the first layer transposed for sparse inputs (Omniglot): blank input columns
//!   skipped in the products and the Adam update.
//! - [`update`]: the elementwise parameter kernels: task deltas and Reptile interpolation.
//! - [`math`]: a fast, vectorizable `tanh`.
//! - [`aligned`]: 64-byte aligned buffers for the kernels' operands.

pub mod aligned;
pub mod gemm;
pub mod lanes;
pub mod math;
pub mod mlp;
pub mod simd;
pub mod sparse;
pub mod update;
pub mod x86;
