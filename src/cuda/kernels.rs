//! The kernel sources and their NVRTC compilation.
//!
//! Each kernel family is one file of `kernels/` (embedded with `include_str!`), sharing the
//! device helpers of `kernels/common.cuh`, which is spliced in place of the
//! `#include "common.cuh"` line (so NVRTC needs no include path). Sources are compiled to PTX
//! for the device's compute capability at first use and cached per process.

use super::{CudaError, CudaResult, nvrtc_version};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::{Arc, Mutex, OnceLock};

/// `kernels/common.cuh`: shared device helpers and the argument structs.
pub const COMMON_HEADER: &str = include_str!("../../kernels/common.cuh");

/// One kernel family: a `.cu` file and the `extern "C"` kernels it defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFamily {
    /// File name under `kernels/`.
    pub file: &'static str,
    /// The file's text.
    pub source: &'static str,
    /// Kernel entry points it defines.
    pub entry_points: &'static [&'static str],
}

/// The fused inner loop (kernel 1) and serial Reptile on the sine family built on it (kernel 5).
pub const MLP_FUSED: KernelFamily = KernelFamily {
    file: "mlp_fused.cu",
    source: include_str!("../../kernels/mlp_fused.cu"),
    entry_points: &["reptile_fused_inner", "reptile_sine_serial"],
};

/// The deterministic task reduction and Reptile interpolation (kernel 2).
pub const REPTILE_UPDATE: KernelFamily = KernelFamily {
    file: "reptile_update.cu",
    source: include_str!("../../kernels/reptile_update.cu"),
    entry_points: &["reptile_chunk_sums", "reptile_interpolate"],
};

/// The tiled inner loop for large networks (kernel 3): batched products with fused epilogues.
pub const MLP_TILED: KernelFamily = KernelFamily {
    file: "mlp_tiled.cu",
    source: include_str!("../../kernels/mlp_tiled.cu"),
    entry_points: &[
        "reptile_tiled_forward",
        "reptile_tiled_input_grad",
        "reptile_tiled_weight_sgd",
        "reptile_tiled_weight_adam",
        "reptile_tiled_gather",
        "reptile_tiled_loss",
        "reptile_tiled_copy",
        "reptile_tiled_diff",
    ],
};

/// The device-resident sine loop (kernel 4): task sampling with Philox, annealed
/// interpolation, commit.
pub const SINE_DEVICE: KernelFamily = KernelFamily {
    file: "sine_device.cu",
    source: include_str!("../../kernels/sine_device.cu"),
    entry_points: &["reptile_sine_sample", "reptile_interpolate_sched", "reptile_commit"],
};

/// Every kernel family, for compile checks.
pub const FAMILIES: &[KernelFamily] = &[MLP_FUSED, REPTILE_UPDATE, MLP_TILED, SINE_DEVICE];

const INCLUDE_LINE: &str = "#include \"common.cuh\"";

/// Development aid: when set to a folder, kernels are compiled from `<folder>/<file>` and
/// `<folder>/common.cuh` instead of the embedded copies, so a kernel variant can be tried on a
/// GPU machine without rebuilding the crate (the host code must still match its interface).
pub const KERNELS_DIR_ENV: &str = "REPTILE_KERNELS_DIR";

impl KernelFamily {
    /// The self-contained source NVRTC compiles: the file with `common.cuh` spliced in.
    pub fn full_source(&self) -> String {
        self.source.replacen(INCLUDE_LINE, COMMON_HEADER, 1)
    }

    /// [`Self::full_source`], or the same built from the folder named by
    /// [`KERNELS_DIR_ENV`] when that is set (an unreadable file is an error naming it).
    pub fn source_for_compile(&self) -> CudaResult<String> {
        let Some(dir) = std::env::var_os(KERNELS_DIR_ENV) else { return Ok(self.full_source()) };
        let read = |name: &str| {
            let path = std::path::Path::new(&dir).join(name);
            std::fs::read_to_string(&path).map_err(|e| {
                CudaError::InvalidArgument(format!("{KERNELS_DIR_ENV}: cannot read {}: {e}", path.display()))
            })
        };
        Ok(read(self.file)?.replacen(INCLUDE_LINE, &read("common.cuh")?, 1))
    }
}

/// NVRTC options for a virtual architecture such as `compute_90`.
pub fn nvrtc_options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".into(), "-lineinfo".into()]
}

/// Compiles `family` to PTX for the virtual architecture `arch` (e.g. `"compute_80"`) with
/// NVRTC. Needs the NVRTC library, not a GPU. A rejected source is a [`CudaError::Nvrtc`]
/// carrying the compiler log.
pub fn compile_ptx(family: &KernelFamily, arch: &str) -> CudaResult<String> {
    compile_ptx_with(family, arch, &[])
}

/// [`compile_ptx`] with extra NVRTC options, e.g. the `-D` definitions of a shape-specialized
/// build ([`super::plan::FusedShape::defines`]).
pub fn compile_ptx_with(family: &KernelFamily, arch: &str, extra: &[String]) -> CudaResult<String> {
    nvrtc_version()?;
    let src = CString::new(family.source_for_compile()?)
        .map_err(|_| CudaError::InvalidArgument(format!("{} contains a NUL byte", family.file)))?;
    let name = CString::new(family.file).map_err(|_| CudaError::InvalidArgument("kernel file name".into()))?;
    super::no_panic("running NVRTC", || {
        use cudarc::nvrtc::result;
        let nv = |e: result::NvrtcError, log: String| CudaError::Nvrtc {
            kernel: family.file.into(),
            status: format!("{:?}", e.0),
            log,
        };
        let prog = result::create_program(&src, Some(&name)).map_err(|e| nv(e, String::new()))?;
        let mut opts = nvrtc_options(arch);
        opts.extend(extra.iter().cloned());
        // SAFETY: `prog` was created above and is destroyed once, below; `src` and `name` outlive it.
        let compiled = unsafe { result::compile_program(prog, &opts) };
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(prog) }.map(|l| c_text(&l)).unwrap_or_default();
        let ptx = match compiled {
            // SAFETY: as above; the program compiled.
            Ok(()) => unsafe { result::get_ptx(prog) }.map(|p| c_text(&p)).map_err(|e| nv(e, log.clone())),
            Err(e) => Err(nv(e, log)),
        };
        // SAFETY: `prog` is valid and not used after this.
        let _ = unsafe { result::destroy_program(prog) };
        ptx
    })
}

/// Text of a NUL-terminated C buffer (lossy).
fn c_text(buf: &[std::ffi::c_char]) -> String {
    // SAFETY: c_char and u8 have the same size and alignment; the slice stays borrowed.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len()) };
    match CStr::from_bytes_until_nul(bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// [`compile_ptx`] for compute capability `major.minor`, cached per process (each family is
/// compiled once per architecture).
pub fn ptx_for(family: &KernelFamily, major: u32, minor: u32) -> CudaResult<Arc<String>> {
    ptx_for_with(family, major, minor, &[])
}

/// [`ptx_for`] with extra NVRTC options; the cache key includes them.
pub fn ptx_for_with(family: &KernelFamily, major: u32, minor: u32, extra: &[String]) -> CudaResult<Arc<String>> {
    type Cache = Mutex<HashMap<(&'static str, u32, u32, String), Arc<String>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (family.file, major, minor, extra.join(" "));
    if let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    let ptx = Arc::new(compile_ptx_with(family, &format!("compute_{major}{minor}"), extra)?);
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, ptx.clone());
    Ok(ptx)
}
