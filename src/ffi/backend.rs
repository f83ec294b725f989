//! Compute back ends: the CPU, and CUDA (`crate::cuda`, loaded at run time).

use super::boundary::{FfiError, FfiResult};

/// A compute back end (a `REPTILE_BACKEND_*` value), chosen per trainer in
/// `reptile_trainer_config.backend`.
pub type reptile_backend = u32;

/// The CPU back end: hand-written SIMD kernels on `threads` worker threads (0 = one per core).
pub const REPTILE_BACKEND_CPU: reptile_backend = 0;
/// The CUDA back end on device `cuda_device`: the inner loops and the reduction of every
/// meta-training step run on the GPU; adaptation and evaluation stay on the CPU (on `threads`
/// threads). Where CUDA cannot be used (no driver, no device, ...), creating the trainer fails
/// with `REPTILE_STATUS_CUDA_UNAVAILABLE` and a message giving the reason.
pub const REPTILE_BACKEND_CUDA: reptile_backend = 1;

/// The back end a configuration resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The CPU kernels only.
    Cpu,
    /// Meta-training inner loops on CUDA device `n`.
    Cuda(usize),
}

impl Backend {
    /// The trainer device this back end selects.
    pub fn device(self) -> crate::meta::Device {
        match self {
            Backend::Cpu => crate::meta::Device::Cpu,
            Backend::Cuda(n) => crate::meta::Device::Cuda(n),
        }
    }
}

/// Resolves a configuration's back end fields.
pub(crate) fn resolve(backend: reptile_backend, cuda_device: u32) -> FfiResult<Backend> {
    match backend {
        REPTILE_BACKEND_CPU => Ok(Backend::Cpu),
        REPTILE_BACKEND_CUDA => Ok(Backend::Cuda(cuda_device as usize)),
        other => Err(FfiError::invalid(format!(
            "backend = {other} is not a reptile_backend (REPTILE_BACKEND_CPU = {REPTILE_BACKEND_CPU}, \
             REPTILE_BACKEND_CUDA = {REPTILE_BACKEND_CUDA})"
        ))),
    }
}

/// Whether the CUDA back end can be used: the driver library loads at run time, is new enough,
/// and at least one device is visible. Never aborts and never fails, whatever the machine has
/// (no driver, no device, a broken installation): it then returns false. Nothing CUDA is linked
/// into the library; the driver is looked for on the first call.
#[unsafe(no_mangle)]
pub extern "C" fn reptile_cuda_available() -> bool {
    std::panic::catch_unwind(|| crate::cuda::available().is_ok()).unwrap_or(false)
}
