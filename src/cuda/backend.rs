//! Device buffers and launches: the Reptile meta-step on a GPU.
//!
//! [`CudaBackend`] owns a context on one device, the compiled kernels and device buffers that
//! grow on demand. One meta-step ([`CudaBackend::task_deltas`]) uploads θ, the task batch and
//! the minibatch index lists ([`super::plan::MinibatchPlan`], the CPU path's random streams),
//! runs the fused inner loop (one block per task), reduces the task deltas in the CPU trainer's
//! fixed chunk order, and downloads `Σ_i δ_i` and the losses as a [`DeltaSum`], which
//! [`Trainer::apply_delta`] applies; [`CudaBackend::step`] does both. So a trainer runs on the
//! GPU without any change to [`Trainer`], and its results agree with the CPU path up to f32
//! rounding.
//!
//! The inner loops run on one of two paths ([`Path`]), picked from the spec: the fused kernel
//! (one block per task, everything in shared memory) when its working set fits in one block's
//! shared memory, else the tiled path ([`super::tiled`], e.g. for the Omniglot MLP). Adam's
//! inner steps always take the tiled path; carried moments come back summed over the tasks
//! (reduced in the same fixed order as the deltas) for [`Trainer::apply_delta`].

use super::kernels::{self, MLP_FUSED, MLP_TILED, REPTILE_UPDATE, SINE_DEVICE};
use super::plan::{self, FusedLayout, MinibatchPlan};
use super::tiled::{self, Arg, Buf, TiledProgram};
use super::{CudaError, CudaResult, DeviceInfo, device_info, driver_err, no_panic, nvrtc_version};
use crate::cpu::mlp::Tgt;
use crate::meta::{DeltaSum, OuterRule, ReptileConfig, StepStats, Targets, TaskBatch, Trainer};
use crate::spec::MlpSpec;
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Threads per block of the fused kernel (a multiple of 32).
pub const FUSED_BLOCK: u32 = 256;
/// Dynamic shared memory a kernel may use without opting in (`cuFuncSetAttribute`).
const DEFAULT_SMEM_LIMIT: usize = 48 * 1024;
/// Threads per block of the update kernels.
pub const UPDATE_BLOCK: u32 = 256;

/// Device buffers, grown on demand, never shrunk.
#[derive(Default)]
struct Buffers {
    theta: Option<CudaSlice<f32>>,
    x: Option<CudaSlice<f32>>,
    y: Option<CudaSlice<f32>>,
    labels: Option<CudaSlice<u32>>,
    idx: Option<CudaSlice<u32>>,
    delta: Option<CudaSlice<f32>>,
    losses: Option<CudaSlice<f32>>,
    partial: Option<CudaSlice<f32>>,
    out: Option<CudaSlice<f32>>,
    sum: Option<CudaSlice<f32>>,
    bad: Option<CudaSlice<u32>>,
    thetap: Option<CudaSlice<f32>>,
    acts: Option<CudaSlice<f32>>,
    g0: Option<CudaSlice<f32>>,
    g1: Option<CudaSlice<f32>>,
    xb: Option<CudaSlice<f32>>,
    yb: Option<CudaSlice<f32>>,
    iter: Option<CudaSlice<u32>>,
    moments_in: Option<CudaSlice<f32>>,
    moments: Option<CudaSlice<f32>>,
}

/// Which implementation of the inner loops runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// `reptile_fused_inner`: one block per task, θ' and activations in shared memory, all k
    /// steps in one launch.
    Fused,
    /// `kernels/mlp_tiled.cu`: batched tiled products over tasks, one launch per phase.
    Tiled,
}

/// A CUDA device with the reptile kernels loaded.
pub struct CudaBackend {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    chunk_sums: CudaFunction,
    interpolate: CudaFunction,
    by_name: HashMap<&'static str, CudaFunction>,
    path_override: Option<Path>,
    fused_block: Option<u32>,
    /// Dynamic shared-memory limit set on each generic kernel of `mlp_fused.cu`.
    smem_attr: HashMap<&'static str, usize>,
    specialize: bool,
    spec_fused: HashMap<(plan::FusedShape, &'static str), (CudaFunction, usize)>,
    /// The `mlp_fused.cu` kernel a program's launches of that name use (specialized or not).
    program_fused: Option<(&'static str, CudaFunction)>,
    serial: bool,
    /// How the fused kernel splits a product's reduction ([`Self::set_lane_split`]).
    lanes: bool,
    /// Most warp slices per product ([`Self::set_warp_slices`]).
    split: usize,
    /// Whether specialized fused builds bound their registers by occupancy
    /// ([`Self::set_occupancy_bound`]).
    occupancy: bool,
    /// Task staging: None decides per launch ([`Self::set_staging`]).
    staging: Option<bool>,
    poison: bool,
    bufs: Buffers,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend").field("device", &self.info).finish_non_exhaustive()
    }
}

impl Buffers {
    /// The f32 buffer behind a program buffer (None for the u32 ones).
    fn f32_slot(&mut self, b: Buf) -> Option<&mut Option<CudaSlice<f32>>> {
        Some(match b {
            Buf::Theta => &mut self.theta,
            Buf::X => &mut self.x,
            Buf::Y => &mut self.y,
            Buf::ThetaP => &mut self.thetap,
            Buf::Acts => &mut self.acts,
            Buf::G0 => &mut self.g0,
            Buf::G1 => &mut self.g1,
            Buf::Xb => &mut self.xb,
            Buf::Yb => &mut self.yb,
            Buf::Delta => &mut self.delta,
            Buf::Losses => &mut self.losses,
            Buf::Partial => &mut self.partial,
            Buf::Cand => &mut self.out,
            Buf::MomentsIn => &mut self.moments_in,
            Buf::Moments => &mut self.moments,
            Buf::Labels | Buf::Idx | Buf::Bad | Buf::Iter => return None,
        })
    }
    /// The u32 buffer behind a program buffer (None for the f32 ones).
    fn u32_slot(&mut self, b: Buf) -> Option<&mut Option<CudaSlice<u32>>> {
        Some(match b {
            Buf::Labels => &mut self.labels,
            Buf::Idx => &mut self.idx,
            Buf::Bad => &mut self.bad,
            Buf::Iter => &mut self.iter,
            _ => return None,
        })
    }
}

/// Grows `slot` to at least `len` elements (zero-filled when new).
fn ensure<'a, T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<T>>,
    len: usize,
) -> CudaResult<&'a mut CudaSlice<T>> {
    let len = len.max(1);
    if slot.as_ref().is_none_or(|s| s.len() < len) {
        *slot = None; // free the old one first
        *slot = Some(stream.alloc_zeros::<T>(len).map_err(|e| driver_err("cuMemAlloc", e))?);
    }
    Ok(slot.as_mut().expect("just allocated"))
}

/// Uploads `host` into the front of `slot` (grown as needed).
fn upload<'a, T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<T>>,
    host: &[T],
) -> CudaResult<&'a mut CudaSlice<T>> {
    let dev = ensure(stream, slot, host.len())?;
    if !host.is_empty() {
        let mut view = dev.slice_mut(..host.len());
        stream.memcpy_htod(host, &mut view).map_err(|e| driver_err("cuMemcpyHtoD", e))?;
    }
    Ok(dev)
}

/// Fills the first `len` elements of `dev` with 0xFF bytes (NaN for floats), so a kernel that
/// fails to write an output is caught by the comparison.
fn poison<T>(stream: &Arc<CudaStream>, dev: &mut CudaSlice<T>, len: usize) -> CudaResult<()> {
    let bytes = len.min(dev.len()) * std::mem::size_of::<T>();
    let (ptr, _sync) = dev.device_ptr_mut(stream);
    // SAFETY: `ptr` is the start of `dev`'s allocation, which holds at least `bytes` bytes; the
    // memset is ordered on `stream` like every other use of the buffer.
    unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, stream.cu_stream()) }
        .map_err(|e| driver_err("cuMemsetD8Async", e))
}

/// A checked `usize → i32` for kernel arguments.
fn int(v: usize, what: &str) -> CudaResult<i32> {
    i32::try_from(v).map_err(|_| CudaError::Unsupported(format!("{what} = {v} exceeds the kernels' i32 range")))
}

impl CudaBackend {
    /// Opens device `ordinal`: checks the driver and NVRTC, creates the context, compiles the
    /// kernels for the device's compute capability (cached per process) and loads them.
    pub fn new(ordinal: usize) -> CudaResult<Self> {
        let info = device_info(ordinal)?;
        nvrtc_version()?;
        let fused_ptx = kernels::ptx_for(&MLP_FUSED, info.major, info.minor)?;
        let update_ptx = kernels::ptx_for(&REPTILE_UPDATE, info.major, info.minor)?;
        let tiled_ptx = kernels::ptx_for(&MLP_TILED, info.major, info.minor)?;
        let sine_ptx = kernels::ptx_for(&SINE_DEVICE, info.major, info.minor)?;
        no_panic("opening the CUDA device", || {
            let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("creating the context", e))?;
            let stream = ctx.new_stream().map_err(|e| driver_err("cuStreamCreate", e))?;
            // SAFETY: this back end runs all its work on the one stream created above, so
            // nothing needs cudarc's cross-stream event tracking: stream order alone orders
            // every allocation, copy, launch and (stream-ordered) free. Without tracking, no
            // event operations interfere with CUDA graph capture.
            unsafe { ctx.disable_event_tracking() };
            let mut by_name = HashMap::new();
            for (fam, ptx) in [
                (&MLP_FUSED, &fused_ptx),
                (&REPTILE_UPDATE, &update_ptx),
                (&MLP_TILED, &tiled_ptx),
                (&SINE_DEVICE, &sine_ptx),
            ] {
                let module = ctx
                    .load_module(cudarc::nvrtc::Ptx::from_src(ptx.as_str()))
                    .map_err(|e| driver_err(&format!("cuModuleLoadData({})", fam.file), e))?;
                for name in fam.entry_points {
                    let f = module
                        .load_function(name)
                        .map_err(|e| driver_err(&format!("cuModuleGetFunction({name})"), e))?;
                    by_name.insert(*name, f);
                }
            }
            let chunk_sums = by_name["reptile_chunk_sums"].clone();
            let interpolate = by_name["reptile_interpolate"].clone();
            Ok(CudaBackend {
                info,
                ctx,
                stream,
                chunk_sums,
                interpolate,
                by_name,
                path_override: None,
                fused_block: None,
                smem_attr: HashMap::new(),
                specialize: true,
                spec_fused: HashMap::new(),
                program_fused: None,
                serial: true,
                lanes: false,
                split: plan::SPLIT,
                occupancy: true,
                staging: None,
                poison: false,
                bufs: Buffers::default(),
            })
        })
    }

    /// The device.
    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// Test aid: with `on`, every output buffer is filled with NaN bytes before each launch,
    /// so an element a kernel fails to write cannot pass a comparison by luck.
    pub fn set_poison_outputs(&mut self, on: bool) {
        self.poison = on;
    }

    /// Dynamic shared memory the fused kernel needs for `spec` and minibatches of `bmax`
    /// points, or [`CudaError::Unsupported`] when it exceeds this device's per-block limit
    /// (such networks take the tiled path).
    pub fn fused_shared_memory(&self, spec: &MlpSpec, bmax: usize) -> CudaResult<usize> {
        plan::spec_fields(spec)?;
        let bytes = FusedLayout::new(spec, bmax).bytes();
        if bytes > self.info.max_shared_per_block {
            return Err(CudaError::Unsupported(format!(
                "{:?} with minibatches of {bmax} needs {bytes} B of shared memory per task, the device allows {} B \
                 (the tiled path handles such networks)",
                spec.widths(),
                self.info.max_shared_per_block
            )));
        }
        Ok(bytes)
    }

    /// The path [`Self::task_deltas`] takes for `spec` with minibatches of up to `bmax`
    /// points: fused when its shared memory fits the device, else tiled (or the override). An
    /// Adam inner loop always takes the tiled path, whatever this says.
    pub fn path_for(&self, spec: &MlpSpec, bmax: usize) -> CudaResult<Path> {
        plan::spec_fields(spec)?;
        Ok(match self.path_override {
            Some(p) => p,
            None if self.fused_shared_memory(spec, bmax).is_ok() => Path::Fused,
            None => Path::Tiled,
        })
    }

    /// Forces a path (`None`: pick from the spec), e.g. to test or time both.
    pub fn set_path_override(&mut self, path: Option<Path>) {
        self.path_override = path;
    }

    /// Threads per block of the fused kernel in [`Self::task_deltas`], [`Self::inner_deltas`]
    /// and [`Self::train_sine_resident`]: `Some(t)` with `t` a multiple of 32, at most 512, or
    /// `None` (the default) for [`Self::fused_block_for`]'s choice. The results do not depend on
    /// it beyond rounding (the products' warp slices follow the block size); the speed does,
    /// through how many blocks share a multiprocessor.
    pub fn set_fused_block(&mut self, threads: Option<u32>) -> CudaResult<()> {
        if let Some(t) = threads
            && (t == 0 || t % 32 != 0 || t > 512)
        {
            return Err(CudaError::InvalidArgument(format!(
                "fused block of {t} threads: must be a positive multiple of 32, at most 512"
            )));
        }
        self.fused_block = threads;
        Ok(())
    }

    /// The fused kernel's block size for a launch of `n_tasks` tasks: the one set with
    /// [`Self::set_fused_block`], else 128 threads when there are at least two tasks per
    /// multiprocessor (more blocks share one: the fastest on an H200 for n ≥ 1024, measured)
    /// and [`FUSED_BLOCK`] otherwise (fewer, larger blocks: shorter latency per task).
    pub fn fused_block_for(&self, n_tasks: usize) -> u32 {
        self.fused_block.unwrap_or(if n_tasks >= 2 * self.info.multiprocessors as usize { 128 } else { FUSED_BLOCK })
    }

    /// With `on` (the default), the fused kernel runs as a build specialized to the shapes at
    /// hand (network, minibatch sizes, block size as compile-time constants; compiled with
    /// NVRTC on first use of each shape, about a second, and cached); off, the generic build
    /// that reads every shape at run time. Both compute the same function.
    pub fn set_specialize(&mut self, on: bool) {
        self.specialize = on;
    }

    /// With `on`, fused launches split a product's reduction over the lanes of a warp, summed
    /// by shuffles ([`plan::FusedParams::lanes`]: no partial-sum buffers, so less shared memory
    /// per task, and no epilogue barrier); off (the default), over warp slices. Both compute
    /// the same function up to the order of the partial sums; which is faster is measured by
    /// `gpu_variants` in `tests/cuda_gpu.rs`.
    pub fn set_lane_split(&mut self, on: bool) {
        self.lanes = on;
    }

    /// The most warp slices a fused launch splits a product's reduction into (1 to
    /// [`plan::SPLIT`], the default): the layout holds one partial-sum buffer per slice past
    /// the first, so fewer slices take less shared memory per task and may fit more blocks per
    /// SM (the sine net at 128 threads on an H200: 3 slices, 36,624 B, 6 blocks; 4 slices,
    /// 39,344 B, 5 blocks), each slice then reducing a longer range. Both compute the same
    /// function up to the order of the slices' sums; `gpu_variants` in `tests/cuda_gpu.rs`
    /// times them. Launches with [`Self::set_lane_split`] on use no warp slices.
    pub fn set_warp_slices(&mut self, max: usize) -> CudaResult<()> {
        if !(1..=plan::SPLIT).contains(&max) {
            return Err(CudaError::InvalidArgument(format!("warp slices: {max}, must be 1 to {}", plan::SPLIT)));
        }
        self.split = max;
        Ok(())
    }

    /// With `on` (the default), a specialized fused build for a launch of many tasks bounds its
    /// registers so that as many blocks fit an SM as its shared memory and tasks allow
    /// ([`plan::occupancy_blocks`]); off, every build takes the default bound of 128 registers
    /// per thread.
    pub fn set_occupancy_bound(&mut self, on: bool) {
        self.occupancy = on;
    }

    /// Task staging in fused launches ([`plan::FusedParams::stage`]): `None` (the default)
    /// stages where it pays (see `fit_launch`), `Some(on)` forces it on (where the task is
    /// small enough to stage and the launch fits) or off.
    pub fn set_staging(&mut self, staging: Option<bool>) {
        self.staging = staging;
    }

    /// `params` as this back end launches them with `block` threads: the split of
    /// [`Self::set_lane_split`] and [`Self::set_warp_slices`], and task staging (unless
    /// [`Self::set_staging`] says otherwise) only where it pays: for fewer than two tasks per
    /// multiprocessor, where the per-step gathers' global latency is the launch's latency (with
    /// more, other blocks hide it; and before specialized builds were bounded to 128 registers,
    /// staging raised the sine build from 128 to 152 registers). Staging is dropped where the
    /// staged launch would not fit this device's shared memory per block (the layout without it
    /// was checked by [`Self::fused_shared_memory`]).
    fn fit_launch(&self, spec: &MlpSpec, mut params: plan::FusedParams, block: u32) -> plan::FusedParams {
        params.lanes = self.lanes as i32;
        params.split = self.split as i32;
        let many = params.n_tasks.max(0) as usize >= 2 * self.info.multiprocessors as usize;
        if params.stage != 0 && !self.staging.unwrap_or(!many) {
            params.stage = 0;
        }
        if plan::fused_launch_bytes(spec, &params, block) > self.info.max_shared_per_block {
            params.stage = 0;
        }
        params
    }

    /// The fused kernel for `params` launched with `block` threads (the specialized build
    /// unless [`Self::set_specialize`] turned it off), with its dynamic shared-memory limit
    /// raised to `smem` bytes where needed.
    fn fused_kernel(&mut self, params: &plan::FusedParams, block: u32, smem: usize) -> CudaResult<CudaFunction> {
        self.fused_family_kernel("reptile_fused_inner", params, block, smem)
    }

    /// Kernel `name` of `mlp_fused.cu` for `params` and `block` threads, as [`Self::fused_kernel`].
    fn fused_family_kernel(
        &mut self,
        name: &'static str,
        params: &plan::FusedParams,
        block: u32,
        smem: usize,
    ) -> CudaResult<CudaFunction> {
        let set_limit = |f: &CudaFunction, have: &mut usize| -> CudaResult<()> {
            if smem > *have {
                f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
                    .map_err(|e| driver_err("cuFuncSetAttribute(max dynamic shared memory)", e))?;
                *have = smem;
            }
            Ok(())
        };
        if !self.specialize {
            let f = self.by_name.get(name).ok_or_else(|| CudaError::Driver {
                call: "fused kernel".into(),
                message: format!("kernel {name} not loaded"),
            })?;
            set_limit(f, self.smem_attr.entry(name).or_insert(DEFAULT_SMEM_LIMIT))?;
            return Ok(f.clone());
        }
        let mut shape = plan::FusedShape::new(params, block);
        if self.occupancy && name == "reptile_fused_inner" {
            let (n, sms) = (params.n_tasks.max(0) as usize, self.info.multiprocessors as usize);
            shape = shape.with_min_blocks(plan::occupancy_blocks(smem, block, n, sms, self.info.max_shared_per_sm));
        }
        if !self.spec_fused.contains_key(&(shape, name)) {
            let mut defines = shape.defines();
            if name == "reptile_sine_serial" {
                defines.push("-DREPTILE_SPEC_SERIAL=1".into());
            }
            let ptx = kernels::ptx_for_with(&MLP_FUSED, self.info.major, self.info.minor, &defines)?;
            let ctx = self.ctx.clone();
            let f = no_panic("loading a specialized fused kernel", || {
                let module = ctx
                    .load_module(cudarc::nvrtc::Ptx::from_src(ptx.as_str()))
                    .map_err(|e| driver_err("cuModuleLoadData(mlp_fused.cu, specialized)", e))?;
                module
                    .load_function(name)
                    .map_err(|e| driver_err(&format!("cuModuleGetFunction({name}, specialized)"), e))
            })?;
            self.spec_fused.insert((shape, name), (f, DEFAULT_SMEM_LIMIT));
        }
        let (f, have) = self.spec_fused.get_mut(&(shape, name)).expect("inserted above");
        set_limit(f, have)?;
        Ok(f.clone())
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> CudaResult<()> {
        self.stream.synchronize().map_err(|e| driver_err("cuStreamSynchronize", e))
    }

    /// The inner loops alone on `path`, the device twin of [`plan::cpu_deltas`]: runs every
    /// task's inner loop with `plan`'s minibatches and returns the deltas `[n × P]` and losses
    /// `[n × 2]`.
    #[allow(clippy::too_many_arguments)]
    pub fn inner_deltas(
        &mut self,
        path: Path,
        spec: &MlpSpec,
        theta: &[f32],
        x: &[f32],
        y: Tgt<'_>,
        m: usize,
        plan: &MinibatchPlan,
        lr: f32,
        fomaml: bool,
    ) -> CudaResult<(Vec<f32>, Vec<f32>)> {
        self.launch_inner(path, spec, theta, x, y, m, plan, lr, fomaml)?;
        let (n, p) = (plan.n_tasks, spec.num_params());
        let mut delta = vec![0.0f32; n * p];
        let mut losses = vec![0.0f32; 2 * n];
        let s = &self.stream;
        let d = self.bufs.delta.as_ref().expect("allocated by launch_fused");
        s.memcpy_dtoh(&d.slice(..n * p), &mut delta[..]).map_err(|e| driver_err("cuMemcpyDtoH", e))?;
        let l = self.bufs.losses.as_ref().expect("allocated by launch_fused");
        s.memcpy_dtoh(&l.slice(..2 * n), &mut losses[..]).map_err(|e| driver_err("cuMemcpyDtoH", e))?;
        self.synchronize()?;
        Ok((delta, losses))
    }

    /// Kernel 2 alone: `keep·(θ + scale·Σ_i δ_i)` over `n` deltas `[n × P]`, reduced in the
    /// fixed chunk order, as [`crate::cpu::update::interpolate`] (`keep = 1 − ε·λ` for an
    /// outer decay λ, see [`ReptileConfig::keep`]; 1 without one). Returns (the interpolated θ,
    /// Σδ, whether every result is finite).
    pub fn interpolate(
        &mut self,
        theta: &[f32],
        deltas: &[f32],
        n: usize,
        scale: f32,
        keep: f32,
    ) -> CudaResult<(Vec<f32>, Vec<f32>, bool)> {
        let p = theta.len();
        if n == 0 || deltas.len() != n * p {
            return Err(CudaError::InvalidArgument(format!("{} deltas for {n} tasks of {p} parameters", deltas.len())));
        }
        upload(&self.stream, &mut self.bufs.theta, theta)?;
        upload(&self.stream, &mut self.bufs.delta, deltas)?;
        self.launch_update(Buf::Delta, n, p, scale, keep)?;
        self.download_update(p)
    }

    /// One meta-step's task deltas on the GPU, for `trainer`'s θ, configuration and
    /// iteration: the same minibatches as [`Trainer::task_deltas`] (task `i` uses the stream
    /// of global task index `task_index_offset + i`), the same fixed-order reduction. Apply
    /// the result with [`Trainer::apply_delta`].
    pub fn task_deltas(
        &mut self,
        trainer: &Trainer,
        batch: &TaskBatch<'_>,
        task_index_offset: u64,
    ) -> CudaResult<DeltaSum> {
        let spec = trainer.spec();
        let config: &ReptileConfig = trainer.config();
        let (n, m) = (batch.n_tasks(), batch.n_points());
        let y = match (batch.y(), spec.loss()) {
            (Targets::Values(v), crate::Loss::Mse) if v.len() == n * m * spec.out_dim() => Tgt::Values(v),
            (Targets::Labels(l), crate::Loss::SoftmaxCrossEntropy) if l.len() == n * m => Tgt::Labels(l),
            _ => return Err(CudaError::InvalidArgument("task batch targets do not match the model's loss".into())),
        };
        if batch.x().len() != n * m * spec.in_dim() {
            return Err(CudaError::InvalidArgument("task batch inputs do not match the model's input width".into()));
        }
        let plan = MinibatchPlan::training(
            n,
            m,
            &config.train,
            config.outer,
            config.seed,
            trainer.iteration(),
            task_index_offset,
        )?;
        let fomaml = config.outer != OuterRule::Reptile;
        let p = spec.num_params();
        let carry = trainer.carries_moments();
        match config.inner_optimizer {
            crate::meta::InnerOptimizer::Sgd => {
                let path = self.path_for(spec, plan.stride)?;
                self.launch_inner(path, spec, trainer.params(), batch.x(), y, m, &plan, config.train.lr, fomaml)?;
            }
            // Adam runs on the tiled path (each task's moments in global memory), from the
            // trainer's carried moments or from zero, as the CPU path starts them.
            crate::meta::InnerOptimizer::Adam { beta2, eps } => {
                let (v0, t0) = match trainer.adam_moments() {
                    (v, t) if carry => (Some(v), t),
                    _ => (None, 0),
                };
                let adam = tiled::TiledAdam { beta2, eps, t0 };
                let (theta, lr) = (trainer.params(), config.train.lr);
                self.launch_tiled(spec, theta, batch.x(), y, m, &plan, lr, fomaml, Some((adam, v0)))?;
            }
        }
        let eps = config.epsilon(trainer.iteration());
        // Only Σδ comes back: the host applies the step (Trainer::apply_delta).
        self.launch_update(Buf::Delta, n, p, eps / n as f32, config.keep(eps))?;
        let (_, sum, _) = self.download_update(p)?;
        // Carried moments: their sum over the tasks, reduced the same way (the trainer keeps
        // the mean; the interpolated θ that comes with it is not used).
        let moments_sum = if carry {
            self.launch_update(Buf::Moments, n, p, 0.0, 1.0)?;
            self.download_update(p)?.1
        } else {
            Vec::new()
        };
        let mut losses = vec![0.0f32; 2 * n];
        let l = self.bufs.losses.as_ref().expect("allocated by launch_fused");
        self.stream.memcpy_dtoh(&l.slice(..2 * n), &mut losses[..]).map_err(|e| driver_err("cuMemcpyDtoH", e))?;
        self.synchronize()?;
        Ok(DeltaSum {
            sum,
            tasks: n as u64,
            loss_before_sum: losses.iter().step_by(2).map(|&v| v as f64).sum(),
            loss_after_sum: losses.iter().skip(1).step_by(2).map(|&v| v as f64).sum(),
            moments_sum,
        })
    }

    /// One outer iteration of `trainer` with the inner loops on the GPU: [`Self::task_deltas`]
    /// then [`Trainer::apply_delta`] (divergence handling as [`Trainer::step`]).
    pub fn step(&mut self, trainer: &mut Trainer, batch: &TaskBatch<'_>) -> crate::Result<StepStats> {
        let sum = self.task_deltas(trainer, batch, 0).map_err(super::into_crate_error)?;
        trainer.apply_delta(&sum)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_inner(
        &mut self,
        path: Path,
        spec: &MlpSpec,
        theta: &[f32],
        x: &[f32],
        y: Tgt<'_>,
        m: usize,
        plan: &MinibatchPlan,
        lr: f32,
        fomaml: bool,
    ) -> CudaResult<()> {
        match path {
            Path::Fused => self.launch_fused(spec, theta, x, y, m, plan, lr, fomaml),
            Path::Tiled => self.launch_tiled(spec, theta, x, y, m, plan, lr, fomaml, None),
        }
    }

    /// Runs the tiled program: binds its buffers to device memory, then launches it in order.
    /// With `adam`, the inner steps are Adam's, every task's moments starting from the given
    /// `[P]` values (`None`: zeros, set on the device); the final moments stay in
    /// `bufs.moments` `[n × P]`.
    #[allow(clippy::too_many_arguments)]
    fn launch_tiled(
        &mut self,
        spec: &MlpSpec,
        theta: &[f32],
        x: &[f32],
        y: Tgt<'_>,
        m: usize,
        plan: &MinibatchPlan,
        lr: f32,
        fomaml: bool,
        adam: Option<(tiled::TiledAdam, Option<&[f32]>)>,
    ) -> CudaResult<()> {
        let n = plan.n_tasks;
        if theta.len() != spec.num_params() || x.len() != n * m * spec.in_dim() {
            return Err(CudaError::InvalidArgument(format!("θ has {} values, x {}", theta.len(), x.len())));
        }
        if adam.is_some_and(|(_, v)| v.is_some_and(|v| v.len() != theta.len())) {
            return Err(CudaError::InvalidArgument("Adam moments do not match θ".into()));
        }
        let prog = tiled::program(spec, plan, m, lr, fomaml, adam.map(|(a, _)| a))?;
        let s = self.stream.clone();
        let b = &mut self.bufs;
        upload(&s, &mut b.theta, theta)?;
        upload(&s, &mut b.x, x)?;
        match y {
            Tgt::Values(v) => {
                upload(&s, &mut b.y, v)?;
                ensure(&s, &mut b.labels, 1)?;
            }
            Tgt::Labels(l) => {
                upload(&s, &mut b.labels, l)?;
                ensure(&s, &mut b.y, 1)?;
            }
        }
        upload(&s, &mut b.idx, &plan.idx)?;
        match adam {
            Some((_, Some(v))) => {
                upload(&s, &mut b.moments_in, v)?;
            }
            Some((_, None)) => {
                let v = ensure(&s, &mut b.moments_in, theta.len())?;
                s.memset_zeros(v).map_err(|e| driver_err("cuMemsetD8Async", e))?;
            }
            None => {}
        }
        let scratch = [Buf::ThetaP, Buf::Acts, Buf::G0, Buf::G1, Buf::Xb, Buf::Yb, Buf::Delta, Buf::Losses];
        let moments = [Buf::Moments];
        for &buf in scratch.iter().chain(if adam.is_some() { &moments[..] } else { &[] }) {
            let len = prog.size(buf);
            let dev = ensure(&s, b.f32_slot(buf).expect("f32 buffer"), len)?;
            if self.poison {
                poison(&s, dev, len)?;
            }
        }
        self.run_program(&prog)
    }

    /// Launches `prog` in order on this stream, with every buffer it names grown to its size
    /// (contents are the caller's business: inputs uploaded, outputs poisoned if wanted).
    fn run_program(&mut self, prog: &TiledProgram) -> CudaResult<()> {
        let s = self.stream.clone();
        // Raw device addresses of every buffer (all work is on this one stream, so nothing
        // needs cudarc's cross-stream event tracking).
        let mut addr: HashMap<Buf, u64> = HashMap::new();
        for &(buf, len) in &prog.sizes {
            let a = if let Some(slot) = self.bufs.f32_slot(buf) {
                ensure(&s, slot, len)?.device_ptr(&s).0
            } else if let Some(slot) = self.bufs.u32_slot(buf) {
                ensure(&s, slot, len)?.device_ptr(&s).0
            } else {
                unreachable!("every buffer is f32 or u32")
            };
            addr.insert(buf, a);
        }
        for launch in &prog.launches {
            let func = match &self.program_fused {
                Some((name, f)) if *name == launch.kernel => f,
                _ => self.by_name.get(launch.kernel).ok_or_else(|| CudaError::Driver {
                    call: "program launch".into(),
                    message: format!("kernel {} not loaded", launch.kernel),
                })?,
            };
            // Argument values, stored before the builder takes references to them.
            let (mut ptrs, mut ints, mut floats, mut structs) = (vec![], vec![], vec![], vec![]);
            for a in &launch.args {
                match *a {
                    Arg::Ptr(buf, off) => {
                        let base = addr.get(&buf).ok_or_else(|| {
                            CudaError::InvalidArgument(format!("{} uses {buf:?}, which has no size", launch.kernel))
                        })?;
                        // f32 and u32 elements are both 4 bytes.
                        ptrs.push(base + 4 * off as u64);
                    }
                    Arg::I32(v) => ints.push(v),
                    Arg::F32(v) => floats.push(v),
                    Arg::Fused(p) => structs.push(p),
                }
            }
            let mut l = s.launch_builder(func);
            let (mut pi, mut ii, mut fi, mut si) = (0, 0, 0, 0);
            for a in &launch.args {
                match a {
                    Arg::Ptr(..) => {
                        l.arg(&ptrs[pi]);
                        pi += 1;
                    }
                    Arg::I32(_) => {
                        l.arg(&ints[ii]);
                        ii += 1;
                    }
                    Arg::F32(_) => {
                        l.arg(&floats[fi]);
                        fi += 1;
                    }
                    Arg::Fused(_) => {
                        l.arg(&structs[si]);
                        si += 1;
                    }
                }
            }
            let cfg = LaunchConfig {
                grid_dim: (launch.grid[0], launch.grid[1], launch.grid[2]),
                block_dim: (launch.block, 1, 1),
                shared_mem_bytes: launch.smem,
            };
            // SAFETY: the program builders (`tiled::program`, `sine::resident_program`) list each
            // kernel's arguments in the order and with the types of its definition in kernels/
            // (pointers as 64-bit device addresses, ints, floats, FusedParams by value); every
            // buffer was grown to the program's size above and every offset lies inside its
            // buffer; the tests run the same lists in the CPU emulation.
            unsafe { l.launch(cfg) }.map_err(|e| driver_err(&format!("launching {}", launch.kernel), e))?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_fused(
        &mut self,
        spec: &MlpSpec,
        theta: &[f32],
        x: &[f32],
        y: Tgt<'_>,
        m: usize,
        plan: &MinibatchPlan,
        lr: f32,
        fomaml: bool,
    ) -> CudaResult<()> {
        let (n, p) = (plan.n_tasks, spec.num_params());
        if theta.len() != p || x.len() != n * m * spec.in_dim() {
            return Err(CudaError::InvalidArgument(format!("θ has {} values, x {}", theta.len(), x.len())));
        }
        let params = plan.fused_params(spec, m, lr, fomaml)?;
        self.fused_shared_memory(spec, plan.stride)?;
        let s = self.stream.clone();
        let b = &mut self.bufs;
        upload(&s, &mut b.theta, theta)?;
        upload(&s, &mut b.x, x)?;
        match y {
            Tgt::Values(v) => {
                upload(&s, &mut b.y, v)?;
                ensure(&s, &mut b.labels, 1)?;
            }
            Tgt::Labels(l) => {
                upload(&s, &mut b.labels, l)?;
                ensure(&s, &mut b.y, 1)?;
            }
        }
        upload(&s, &mut b.idx, &plan.idx)?;
        ensure(&s, &mut b.delta, n * p)?;
        ensure(&s, &mut b.losses, 2 * n)?;
        if self.poison {
            poison(&s, b.delta.as_mut().expect("ensured"), n * p)?;
            poison(&s, b.losses.as_mut().expect("ensured"), 2 * n)?;
        }
        self.run_fused_kernel(spec, &params)
    }

    /// Launches the fused kernel on the buffers [`Self::launch_fused`] filled.
    fn run_fused_kernel(&mut self, spec: &MlpSpec, params: &plan::FusedParams) -> CudaResult<()> {
        let block = self.fused_block_for(params.n_tasks.max(0) as usize);
        let params = &self.fit_launch(spec, *params, block);
        let smem = plan::fused_launch_bytes(spec, params, block);
        let func = self.fused_kernel(params, block, smem)?;
        let s = self.stream.clone();
        let b = &mut self.bufs;
        let cfg = LaunchConfig {
            grid_dim: (params.n_tasks as u32, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let mut l = s.launch_builder(&func);
        l.arg(params)
            .arg(b.theta.as_ref().expect("uploaded"))
            .arg(b.x.as_ref().expect("uploaded"))
            .arg(b.y.as_ref().expect("ensured"))
            .arg(b.labels.as_ref().expect("ensured"))
            .arg(b.idx.as_ref().expect("uploaded"))
            .arg(b.delta.as_mut().expect("ensured"))
            .arg(b.losses.as_mut().expect("ensured"));
        // SAFETY: the argument list matches `reptile_fused_inner` (FusedParams by value, then
        // seven pointers); `launch_fused` sized every buffer for `params` (θ: P, x: n·m·in,
        // y: n·m·out or labels n·m, idx: n·k·stride, delta: n·P, losses: 2n; the unused target
        // buffer is never read) and allowed `smem` bytes of dynamic shared memory.
        unsafe { l.launch(cfg) }.map_err(|e| driver_err("launching reptile_fused_inner", e))?;
        Ok(())
    }

    /// Benchmark aid: seconds per launch of the fused kernel alone (inputs uploaded once,
    /// then `reps` back-to-back launches timed between two synchronizations).
    #[allow(clippy::too_many_arguments)]
    pub fn time_fused_kernel(
        &mut self,
        spec: &MlpSpec,
        theta: &[f32],
        x: &[f32],
        y: Tgt<'_>,
        m: usize,
        plan: &MinibatchPlan,
        lr: f32,
        reps: usize,
    ) -> CudaResult<f64> {
        self.launch_fused(spec, theta, x, y, m, plan, lr, false)?;
        let params = plan.fused_params(spec, m, lr, false)?;
        self.synchronize()?;
        let t = std::time::Instant::now();
        for _ in 0..reps.max(1) {
            self.run_fused_kernel(spec, &params)?;
        }
        self.synchronize()?;
        Ok(t.elapsed().as_secs_f64() / reps.max(1) as f64)
    }

    /// Benchmark aid: seconds per call of the inner loops on `path`, uploads of θ, the batch and
    /// the index lists included (`reps` calls between two synchronizations).
    #[allow(clippy::too_many_arguments)]
    pub fn time_inner(
        &mut self,
        path: Path,
        spec: &MlpSpec,
        theta: &[f32],
        x: &[f32],
        y: Tgt<'_>,
        m: usize,
        plan: &MinibatchPlan,
        lr: f32,
        reps: usize,
    ) -> CudaResult<f64> {
        self.launch_inner(path, spec, theta, x, y, m, plan, lr, false)?;
        self.synchronize()?;
        let t = std::time::Instant::now();
        for _ in 0..reps.max(1) {
            self.launch_inner(path, spec, theta, x, y, m, plan, lr, false)?;
        }
        self.synchronize()?;
        Ok(t.elapsed().as_secs_f64() / reps.max(1) as f64)
    }

    /// Benchmark aid: seconds per run of the two update kernels on `n` deltas of `p`
    /// parameters already on the device (after [`Self::interpolate`] with the same sizes).
    pub fn time_update_kernels(&mut self, n: usize, p: usize, reps: usize) -> CudaResult<f64> {
        let have = self.bufs.delta.as_ref().map_or(0, |d| d.len());
        if have < n * p || self.bufs.theta.as_ref().map_or(0, |t| t.len()) < p {
            return Err(CudaError::InvalidArgument("run interpolate with these sizes first".into()));
        }
        self.synchronize()?;
        let t = std::time::Instant::now();
        for _ in 0..reps.max(1) {
            self.launch_update(Buf::Delta, n, p, 0.5, 0.999)?;
        }
        self.synchronize()?;
        Ok(t.elapsed().as_secs_f64() / reps.max(1) as f64)
    }

    /// Kernel 2 on the `n × p` rows already in `src` (the deltas, [`Buf::Delta`], or Adam's
    /// per-task moments, [`Buf::Moments`]) and θ in `bufs.theta`.
    fn launch_update(&mut self, src: Buf, n: usize, p: usize, scale: f32, keep: f32) -> CudaResult<()> {
        let s = self.stream.clone();
        let nc = plan::reduction_chunks(n);
        let b = &mut self.bufs;
        let rows = match src {
            Buf::Delta => b.delta.as_ref(),
            Buf::Moments => b.moments.as_ref(),
            other => return Err(CudaError::InvalidArgument(format!("no reduction over {other:?}"))),
        };
        let rows = rows.ok_or_else(|| CudaError::InvalidArgument(format!("{src:?} was never filled")))?;
        ensure(&s, &mut b.partial, nc * p)?;
        ensure(&s, &mut b.out, p)?;
        ensure(&s, &mut b.sum, p)?;
        ensure(&s, &mut b.bad, 1)?;
        if self.poison {
            poison(&s, b.partial.as_mut().expect("ensured"), nc * p)?;
            poison(&s, b.out.as_mut().expect("ensured"), p)?;
            poison(&s, b.sum.as_mut().expect("ensured"), p)?;
        }
        s.memset_zeros(b.bad.as_mut().expect("ensured")).map_err(|e| driver_err("cuMemsetD8Async", e))?;
        let (n32, p32, nc32) = (int(n, "tasks")?, int(p, "parameters")?, int(nc, "chunks")?);
        let gx = p.div_ceil(UPDATE_BLOCK as usize) as u32;
        let gx_sums = plan::chunk_sums_blocks(p, UPDATE_BLOCK);
        let mut l = s.launch_builder(&self.chunk_sums);
        l.arg(rows).arg(&n32).arg(&p32).arg(&nc32).arg(b.partial.as_mut().expect("ensured"));
        let cfg =
            LaunchConfig { grid_dim: (gx_sums, nc as u32, 1), block_dim: (UPDATE_BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches `reptile_chunk_sums(const float*, int, int, int, float*)`; the rows
        // hold n·P floats (grown by the launch that filled them), partial nc·P.
        unsafe { l.launch(cfg) }.map_err(|e| driver_err("launching reptile_chunk_sums", e))?;
        let mut l = s.launch_builder(&self.interpolate);
        l.arg(b.theta.as_ref().expect("uploaded"))
            .arg(b.partial.as_ref().expect("ensured"))
            .arg(&nc32)
            .arg(&p32)
            .arg(&scale)
            .arg(&keep)
            .arg(b.out.as_mut().expect("ensured"))
            .arg(b.sum.as_mut().expect("ensured"))
            .arg(b.bad.as_mut().expect("ensured"));
        let cfg = LaunchConfig { grid_dim: (gx, 1, 1), block_dim: (UPDATE_BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches `reptile_interpolate(const float*, const float*, int, int, float,
        // float, float*, float*, unsigned*)`; θ, out and sum hold P floats, partial nc·P, bad
        // one u32.
        unsafe { l.launch(cfg) }.map_err(|e| driver_err("launching reptile_interpolate", e))?;
        Ok(())
    }

    fn download_update(&mut self, p: usize) -> CudaResult<(Vec<f32>, Vec<f32>, bool)> {
        let s = &self.stream;
        let (mut out, mut sum, mut bad) = (vec![0.0f32; p], vec![0.0f32; p], [0u32]);
        let b = &self.bufs;
        s.memcpy_dtoh(&b.out.as_ref().expect("ensured").slice(..p), &mut out[..])
            .map_err(|e| driver_err("cuMemcpyDtoH", e))?;
        s.memcpy_dtoh(&b.sum.as_ref().expect("ensured").slice(..p), &mut sum[..])
            .map_err(|e| driver_err("cuMemcpyDtoH", e))?;
        s.memcpy_dtoh(b.bad.as_ref().expect("ensured"), &mut bad[..]).map_err(|e| driver_err("cuMemcpyDtoH", e))?;
        s.synchronize().map_err(|e| driver_err("cuStreamSynchronize", e))?;
        Ok((out, sum, bad[0] == 0))
    }

    /// Runs `iterations` (≥ 1) iterations of the device-resident sine loop ([`super::sine`]) for `n`
    /// tasks per iteration from θ = `theta` and iteration `start`, with `config`'s inner loop,
    /// ε schedule and outer rule: tasks sampled on the device (Philox, keyed by `seed`), no
    /// host round-trip until the end. With `graph`, one chunk of iterations is captured as a
    /// CUDA graph once and replayed; otherwise the launches are enqueued directly. On a
    /// non-finite update the loop stops committing: θ stays at its last finite value and the
    /// returned iteration is the failing one.
    #[allow(clippy::too_many_arguments)]
    pub fn train_sine_resident(
        &mut self,
        spec: &MlpSpec,
        theta: &[f32],
        config: &ReptileConfig,
        n: usize,
        seed: u64,
        start: u32,
        iterations: u32,
        graph: bool,
    ) -> CudaResult<super::sine::ResidentRun> {
        if theta.len() != spec.num_params() || n == 0 || iterations == 0 {
            return Err(CudaError::InvalidArgument(format!(
                "θ of {} values, {n} tasks, {iterations} iterations",
                theta.len()
            )));
        }
        if start as u64 + iterations as u64 > u32::MAX as u64 {
            return Err(CudaError::Unsupported("iteration counter past 2^32 − 1".into()));
        }
        let (b, fomaml) = super::sine::check(spec, config)?;
        self.fused_shared_memory(spec, b)?;
        if n == 1 && !fomaml && self.serial {
            return self.train_sine_serial(spec, theta, config, seed, start, iterations);
        }
        let mut prog = super::sine::resident_program(spec, config, n, seed)?;
        // The fused kernel at this back end's block size, with the shared memory that size needs.
        let block = self.fused_block_for(n);
        let mut fused_params = None;
        for l in prog.launches.iter_mut().filter(|l| l.kernel == "reptile_fused_inner") {
            let p = l.args.iter().find_map(|a| if let Arg::Fused(p) = a { Some(*p) } else { None });
            let p = p.ok_or_else(|| CudaError::InvalidArgument("fused launch without its parameters".into()))?;
            let p = self.fit_launch(spec, p, block);
            for a in l.args.iter_mut() {
                if let Arg::Fused(q) = a {
                    *q = p;
                }
            }
            l.block = block;
            l.smem = plan::fused_launch_bytes(spec, &p, block) as u32;
            fused_params = Some((p, l.smem as usize));
        }
        let (fused_params, smem) = fused_params
            .ok_or_else(|| CudaError::InvalidArgument("the resident program has no fused launch".into()))?;
        self.program_fused = Some(("reptile_fused_inner", self.fused_kernel(&fused_params, block, smem)?));
        let result = self.run_resident(&prog, spec, theta, n, start, iterations, graph);
        self.program_fused = None;
        result
    }

    /// With `on` (the default), [`Self::train_sine_resident`] runs serial Reptile (n = 1, the
    /// Reptile outer rule) as `reptile_sine_serial`: a thousand iterations per launch of one
    /// block, no launch between iterations; off, as the five-launch resident program like any
    /// n. Both draw the same tasks and compute the same updates.
    pub fn set_serial_sine(&mut self, on: bool) {
        self.serial = on;
    }

    /// [`Self::train_sine_resident`] for n = 1 with the serial kernel, after its checks.
    fn train_sine_serial(
        &mut self,
        spec: &MlpSpec,
        theta: &[f32],
        config: &ReptileConfig,
        seed: u64,
        start: u32,
        iterations: u32,
    ) -> CudaResult<super::sine::ResidentRun> {
        let block = self.fused_block.unwrap_or(FUSED_BLOCK);
        let mut prog = super::sine::serial_program(spec, config, seed, block)?;
        let (params, smem) = match prog.launches.first().map(|l| (l.args.first(), l.smem)) {
            Some((Some(Arg::Fused(p)), smem)) => (*p, smem as usize),
            _ => return Err(CudaError::InvalidArgument("the serial program has no fused parameters".into())),
        };
        if smem > self.info.max_shared_per_block {
            return Err(CudaError::Unsupported(format!(
                "the serial sine kernel needs {smem} B of shared memory, the device allows {} B",
                self.info.max_shared_per_block
            )));
        }
        let params = plan::FusedParams { lanes: self.lanes as i32, ..params };
        for a in prog.launches.iter_mut().flat_map(|l| l.args.iter_mut()) {
            if let Arg::Fused(p) = a {
                *p = params;
            }
        }
        let f = self.fused_family_kernel("reptile_sine_serial", &params, block, smem)?;
        self.program_fused = Some(("reptile_sine_serial", f));
        let result = (|| {
            self.resident_upload(theta, start, 1)?;
            // Launches of at most a thousand iterations (about 30 ms on an H200): a launch is
            // never long enough to trip a display watchdog.
            const CHUNK: u32 = 1000;
            let mut done = 0u32;
            while done < iterations {
                let c = (iterations - done).min(CHUNK);
                super::sine::set_serial_count(&mut prog, c);
                self.run_program(&prog)?;
                done += c;
            }
            self.resident_result(spec, 1)
        })();
        self.program_fused = None;
        result
    }

    /// The launch loop of [`Self::train_sine_resident`], after its checks and setup.
    #[allow(clippy::too_many_arguments)]
    fn run_resident(
        &mut self,
        prog: &TiledProgram,
        spec: &MlpSpec,
        theta: &[f32],
        n: usize,
        start: u32,
        iterations: u32,
        graph: bool,
    ) -> CudaResult<super::sine::ResidentRun> {
        let s = self.stream.clone();
        self.resident_upload(theta, start, n)?;
        ensure(&s, &mut self.bufs.labels, 1)?;
        const CHUNK: u32 = 50;
        let mut done = 0u32;
        if graph && iterations >= CHUNK {
            self.run_program(prog)?; // allocates every buffer before the capture
            done += 1;
            s.begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| driver_err("cuStreamBeginCapture", e))?;
            let captured = (0..CHUNK).try_for_each(|_| self.run_program(prog));
            let g = s.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
            captured?;
            let g = g
                .map_err(|e| driver_err("cuStreamEndCapture/cuGraphInstantiate", e))?
                .ok_or_else(|| CudaError::Driver { call: "graph capture".into(), message: "empty graph".into() })?;
            while iterations - done >= CHUNK {
                g.launch().map_err(|e| driver_err("cuGraphLaunch", e))?;
                done += CHUNK;
            }
        }
        while done < iterations {
            self.run_program(prog)?;
            done += 1;
        }
        self.resident_result(spec, n)
    }

    /// The start of a resident run: θ, the iteration counter at `start`, the divergence flag
    /// clear, and (as a test aid, [`Self::set_poison_outputs`]) the `[n × 2]` losses poisoned.
    fn resident_upload(&mut self, theta: &[f32], start: u32, n: usize) -> CudaResult<()> {
        let s = self.stream.clone();
        upload(&s, &mut self.bufs.theta, theta)?;
        upload(&s, &mut self.bufs.iter, &[start])?;
        upload(&s, &mut self.bufs.bad, &[0u32])?;
        if self.poison {
            poison(&s, ensure(&s, &mut self.bufs.losses, 2 * n)?, 2 * n)?;
        }
        Ok(())
    }

    /// θ, the iteration counter, the divergence flag and the `[n × 2]` losses of a resident run.
    fn resident_result(&mut self, spec: &MlpSpec, n: usize) -> CudaResult<super::sine::ResidentRun> {
        let s = self.stream.clone();
        ensure(&s, &mut self.bufs.losses, 2 * n)?;
        let p = spec.num_params();
        let (mut th, mut it, mut bad, mut losses) = (vec![0.0f32; p], [0u32], [0u32], vec![0.0f32; 2 * n]);
        let b = &self.bufs;
        let dtoh = |e| driver_err("cuMemcpyDtoH", e);
        s.memcpy_dtoh(&b.theta.as_ref().expect("uploaded").slice(..p), &mut th[..]).map_err(dtoh)?;
        s.memcpy_dtoh(&b.iter.as_ref().expect("uploaded").slice(..1), &mut it[..]).map_err(dtoh)?;
        s.memcpy_dtoh(&b.bad.as_ref().expect("uploaded").slice(..1), &mut bad[..]).map_err(dtoh)?;
        s.memcpy_dtoh(&b.losses.as_ref().expect("allocated").slice(..2 * n), &mut losses[..]).map_err(dtoh)?;
        self.synchronize()?;
        Ok(super::sine::ResidentRun { theta: th, iteration: it[0] as u64, diverged: bad[0] != 0, losses })
    }

    /// Measured device-to-device copy bandwidth in GB/s (10⁹ B/s, read + write counted once
    /// each) over `bytes`-byte buffers: one warm-up copy, then `reps` copies back to back between
    /// two synchronizations, the same way [`Self::time_update_kernels`] times the interpolation
    /// it is the yardstick for.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> CudaResult<f64> {
        let n = bytes / 4;
        let s = &self.stream;
        let src = s.alloc_zeros::<f32>(n).map_err(|e| driver_err("cuMemAlloc", e))?;
        let mut dst = s.alloc_zeros::<f32>(n).map_err(|e| driver_err("cuMemAlloc", e))?;
        s.memcpy_dtod(&src, &mut dst).map_err(|e| driver_err("cuMemcpyDtoD", e))?;
        self.synchronize()?;
        let t = std::time::Instant::now();
        for _ in 0..reps.max(1) {
            s.memcpy_dtod(&src, &mut dst).map_err(|e| driver_err("cuMemcpyDtoD", e))?;
        }
        self.synchronize()?;
        let secs = t.elapsed().as_secs_f64() / reps.max(1) as f64;
        Ok(2.0 * (n * 4) as f64 / secs / 1e9)
    }

    /// The CUDA context (for callers that time work with events).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}
