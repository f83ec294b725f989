//! The CUDA back end: the same functions as the CPU path ([`crate::cpu`]), on an NVIDIA GPU.
//!
//! Opt-in: the CPU stays the default, and nothing here runs unless called. CUDA is loaded at
//! run time (cudarc with `dynamic-loading`), so the crate builds and all CPU features work on
//! machines without CUDA. Before any cudarc call this module checks that the library is
//! present and exports what it needs; a missing library, no device or a failed initialization
//! is reported as [`CudaError::Unavailable`] with a reason, never as a panic.
//!
//! - [`kernels`]: the kernel sources (`kernels/*.cu`, embedded), NVRTC compilation per compute
//!   capability, cached per process; a compile failure is a [`CudaError::Nvrtc`] with the log.
//!   The fused kernel is also compiled per shape (network, minibatch sizes and block size as
//!   compile-time constants, [`plan::FusedShape`]), about 1.6× faster on an H200.
//! - [`plan`]: host-side preparation that needs no GPU: the kernels' argument structs, the
//!   shared-memory layout of the fused inner loop, and the per-task minibatch index lists
//!   (generated with the CPU path's random streams, so both back ends see the same minibatches).
//! - [`tiled`]: the tiled path for networks too large for the fused kernel, as a launch
//!   sequence that the GPU and the CPU emulation run alike; it also runs every Adam (β1 = 0)
//!   inner loop, each task's second moments in global memory.
//! - [`sine`]: the device-resident sine training loop (Philox task sampling): for n = 1 one
//!   kernel runs a thousand serial Reptile iterations per launch (`reptile_sine_serial`: the
//!   30,000-iteration demo in 0.88 s on an H200), for any n a five-launch program per
//!   iteration, replayed as a CUDA graph.
//! - [`backend`]: device buffers and launches: one Reptile meta-step on the GPU, picking the
//!   fused or the tiled path from the spec (the tiled one for Adam).
//!
//! ```
//! match reptile::cuda::available() {
//!     Ok(dev) => println!("CUDA device {}: {} (sm_{}{})", dev.ordinal, dev.name, dev.major, dev.minor),
//!     Err(e) => println!("no CUDA: {e}"),
//! }
//! ```

pub mod backend;
pub mod kernels;
pub mod plan;
pub mod sine;
pub mod tiled;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

/// What can go wrong in the CUDA back end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    /// CUDA cannot be used here: no driver or NVRTC library, no device, a driver too old, or
    /// a failed initialization. `reason` says which.
    #[error("CUDA unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// NVRTC rejected a kernel source; `log` is the compiler's log.
    #[error("NVRTC failed to compile {kernel}: {status}\n{log}")]
    Nvrtc {
        /// Kernel family (file name).
        kernel: String,
        /// NVRTC's status.
        status: String,
        /// The compilation log.
        log: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver call {call} failed: {message}")]
    Driver {
        /// What was being done.
        call: String,
        /// The driver's error name and description.
        message: String,
    },
    /// The model, batch or configuration is outside what the CUDA kernels support (e.g. too
    /// many layers, or a minibatch that does not fit in shared memory).
    #[error("not supported by the CUDA back end: {0}")]
    Unsupported(String),
    /// An argument disagrees with the model or with another argument.
    #[error("invalid argument for the CUDA back end: {0}")]
    InvalidArgument(String),
}

/// Result alias of this module.
pub type CudaResult<T> = std::result::Result<T, CudaError>;

/// One CUDA device, as [`available`] and [`device_info`] report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device ordinal (`cuda:N`).
    pub ordinal: usize,
    /// Marketing name, e.g. "NVIDIA H200".
    pub name: String,
    /// Compute capability major version.
    pub major: u32,
    /// Compute capability minor version.
    pub minor: u32,
    /// Streaming multiprocessors.
    pub multiprocessors: u32,
    /// Largest dynamic shared memory one block can opt in to, in bytes.
    pub max_shared_per_block: usize,
    /// Shared memory of one multiprocessor, in bytes (what its resident blocks share).
    pub max_shared_per_sm: usize,
    /// Device memory in bytes.
    pub total_memory: usize,
    /// The driver's CUDA version as `1000·major + 10·minor` (e.g. 13000).
    pub driver_version: i32,
}

/// The CUDA version the bindings are built against (`cuda-13000`).
pub const REQUIRED_DRIVER_VERSION: i32 = 13000;

/// Driver entry points checked before the first call, so a stripped or foreign `libcuda`
/// yields an error instead of cudarc's panic on a missing symbol.
const DRIVER_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDeviceTotalMem_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxSetCurrent",
    "cuCtxGetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamSynchronize",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuFuncSetAttribute",
    "cuLaunchKernel",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemsetD8Async",
    "cuEventCreate",
    "cuEventRecord",
    "cuGetErrorName",
    "cuGetErrorString",
];

/// NVRTC entry points checked before the first call.
const NVRTC_SYMBOLS: &[&str] = &[
    "nvrtcVersion",
    "nvrtcCreateProgram",
    "nvrtcCompileProgram",
    "nvrtcGetProgramLogSize",
    "nvrtcGetProgramLog",
    "nvrtcGetPTXSize",
    "nvrtcGetPTX",
    "nvrtcDestroyProgram",
    "nvrtcGetErrorString",
];

fn unavailable(reason: impl Into<String>) -> CudaError {
    CudaError::Unavailable { reason: reason.into() }
}

/// Runs `f`, turning a panic inside cudarc (its dynamic loader panics on a missing library or
/// symbol) into [`CudaError::Unavailable`]. A backstop only: the probes below check library
/// and symbols first, so this should never trigger.
pub(crate) fn no_panic<T>(what: &str, f: impl FnOnce() -> CudaResult<T>) -> CudaResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(unavailable(format!("{what}: {msg}")))
    })
}

/// Formats a driver error with its name and description.
pub(crate) fn driver_err(call: &str, e: cudarc::driver::DriverError) -> CudaError {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    let desc = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    CudaError::Driver { call: call.into(), message: format!("{name}: {desc}") }
}

/// Loads and initializes the driver once per process: library present, symbols exported,
/// driver new enough, `cuInit` succeeds. The outcome (success or reason) is cached.
pub(crate) fn ensure_driver() -> CudaResult<i32> {
    static DRIVER: OnceLock<CudaResult<i32>> = OnceLock::new();
    DRIVER.get_or_init(|| no_panic("loading the CUDA driver", init_driver)).clone()
}

fn init_driver() -> CudaResult<i32> {
    use cudarc::driver::sys;
    // SAFETY: `is_culib_present` only tries to dlopen the candidate library names.
    if !unsafe { sys::is_culib_present() } {
        return Err(unavailable(
            "the CUDA driver library (libcuda.so) was not found; install an NVIDIA driver or add its directory to \
             LD_LIBRARY_PATH",
        ));
    }
    // SAFETY: the library is present (checked above), so `culib` loads it instead of panicking;
    // `get` only looks a symbol up, the pointer is never called here.
    let lib = unsafe { sys::culib() };
    for name in DRIVER_SYMBOLS {
        // SAFETY: as above; the symbol's type is irrelevant for a presence check.
        if unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err() {
            return Err(unavailable(format!("the CUDA driver library does not export {name} (driver too old?)")));
        }
    }
    let mut version = 0i32;
    // SAFETY: the symbol exists (checked above) and writes one int through a valid pointer.
    let r = unsafe { sys::cuDriverGetVersion(&mut version) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(unavailable(format!("cuDriverGetVersion failed: {r:?}")));
    }
    if version < REQUIRED_DRIVER_VERSION {
        return Err(unavailable(format!(
            "the driver supports CUDA {}.{}, this build needs {}.{} or newer",
            version / 1000,
            version % 1000 / 10,
            REQUIRED_DRIVER_VERSION / 1000,
            REQUIRED_DRIVER_VERSION % 1000 / 10
        )));
    }
    cudarc::driver::result::init().map_err(|e| {
        let no_device = e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE;
        let detail = driver_err("cuInit", e);
        if no_device {
            unavailable("no CUDA device found (cuInit: CUDA_ERROR_NO_DEVICE)")
        } else {
            unavailable(format!("driver initialization failed: {detail}"))
        }
    })?;
    Ok(version)
}

/// Loads NVRTC once per process (library present, symbols exported) and returns its version
/// `(major, minor)`. NVRTC is found like any shared library: a system CUDA install, or the
/// `nvidia-cuda-nvrtc` wheel's `nvidia/cu13/lib` on `LD_LIBRARY_PATH`. Needs no GPU.
pub fn nvrtc_version() -> CudaResult<(i32, i32)> {
    static NVRTC: OnceLock<CudaResult<(i32, i32)>> = OnceLock::new();
    NVRTC.get_or_init(|| no_panic("loading NVRTC", init_nvrtc)).clone()
}

fn init_nvrtc() -> CudaResult<(i32, i32)> {
    use cudarc::nvrtc::sys;
    // SAFETY: only tries to dlopen the candidate library names.
    if !unsafe { sys::is_culib_present() } {
        return Err(unavailable(
            "the NVRTC library (libnvrtc.so) was not found; install the CUDA toolkit or the nvidia-cuda-nvrtc wheel \
             and add its lib directory to LD_LIBRARY_PATH",
        ));
    }
    // SAFETY: present (checked above), so `culib` does not panic; lookups only.
    let lib = unsafe { sys::culib() };
    for name in NVRTC_SYMBOLS {
        // SAFETY: presence check only.
        if unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err() {
            return Err(unavailable(format!("the NVRTC library does not export {name}")));
        }
    }
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: the symbol exists and writes two ints through valid pointers.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(unavailable(format!("nvrtcVersion failed: {r:?}")));
    }
    if major < 12 {
        return Err(unavailable(format!("NVRTC {major}.{minor} is too old (12.0 or newer needed)")));
    }
    Ok((major, minor))
}

/// Number of CUDA devices; an error when the driver cannot be loaded or initialized.
pub fn device_count() -> CudaResult<usize> {
    ensure_driver()?;
    no_panic("counting CUDA devices", || {
        let n = cudarc::driver::result::device::get_count().map_err(|e| driver_err("cuDeviceGetCount", e))?;
        Ok(n.max(0) as usize)
    })
}

/// Describes device `ordinal`; [`CudaError::Unavailable`] when there is no such device or no
/// usable CUDA at all. Creates no context.
pub fn device_info(ordinal: usize) -> CudaResult<DeviceInfo> {
    let driver_version = ensure_driver()?;
    let count = device_count()?;
    if count == 0 {
        return Err(unavailable("no CUDA device found"));
    }
    if ordinal >= count {
        return Err(unavailable(format!("no CUDA device {ordinal} ({count} found)")));
    }
    no_panic("querying the CUDA device", || {
        use cudarc::driver::result::device;
        use cudarc::driver::sys::CUdevice_attribute as A;
        let dev = device::get(ordinal as i32).map_err(|e| driver_err("cuDeviceGet", e))?;
        let attr = |a: A, what: &str| -> CudaResult<i32> {
            // SAFETY: `dev` is a valid device handle from cuDeviceGet; the attribute is a plain query.
            unsafe { device::get_attribute(dev, a) }.map_err(|e| driver_err(what, e))
        };
        let name = device::get_name(dev).map_err(|e| driver_err("cuDeviceGetName", e))?;
        let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "compute capability")?;
        let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "compute capability")?;
        let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "multiprocessor count")?;
        let smem = attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, "shared memory per block")?;
        let smem_sm = attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, "shared memory per SM")?;
        // SAFETY: valid device handle; plain query.
        let total = unsafe { device::total_mem(dev) }.map_err(|e| driver_err("cuDeviceTotalMem", e))?;
        Ok(DeviceInfo {
            ordinal,
            name,
            major: major.max(0) as u32,
            minor: minor.max(0) as u32,
            multiprocessors: sms.max(0) as u32,
            max_shared_per_block: smem.max(0) as usize,
            max_shared_per_sm: smem_sm.max(0) as usize,
            total_memory: total,
            driver_version,
        })
    })
}

/// Device 0, if CUDA can be used on this machine: the library loads, the driver is new enough,
/// and a device exists. Otherwise [`CudaError::Unavailable`] with the reason. Never panics.
pub fn available() -> CudaResult<DeviceInfo> {
    device_info(0)
}

/// Parses a device string as the CLI and C ABI take it: `cuda`, `cuda:N` (→ `Some(N)`), or
/// `cpu` (→ `None`).
pub fn parse_device(s: &str) -> CudaResult<Option<usize>> {
    match s.trim() {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        t => match t.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Some(n)),
            _ => Err(CudaError::InvalidArgument(format!("device {s:?} is not cpu, cuda or cuda:N"))),
        },
    }
}

/// Converts a [`CudaError`] into the crate's error ([`crate::Error::Cuda`]).
pub fn into_crate_error(e: CudaError) -> crate::Error {
    crate::Error::Cuda(e)
}
