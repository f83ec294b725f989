//! Host-side preparation of CUDA launches; pure Rust, needs no GPU (and is what the CPU
//! emulation test drives the kernels with).
//!
//! - [`FusedParams`]: the by-value argument struct of `reptile_fused_inner`
//!   (`kernels/common.cuh`), field for field.
//! - [`FusedLayout`]: the dynamic shared memory that kernel needs for a spec and minibatch size,
//!   which decides whether the fused path applies.
//! - [`MinibatchPlan`]: every task's minibatch index lists for one meta-step, drawn from the same
//!   random streams and with the same stream semantics as the CPU inner loop
//!   (`src/meta/inner.rs`): a shuffled pass over the support set consumed in order, reshuffled
//!   when exhausted, so a minibatch may straddle two shuffles; an optional FOMAML tail held out
//!   by one initial shuffle.

use super::{CudaError, CudaResult};
use crate::meta::{InnerLoop, OuterRule};
use crate::rng::{self, Purpose};
use crate::spec::{Activation, Loss, MlpSpec};
use rand::seq::SliceRandom;

/// Most linear layers the CUDA kernels take (`REPTILE_MAX_LAYERS`).
pub const MAX_LAYERS: usize = 8;

/// Output side of the fused kernel's register tiles (`REPTILE_PT`): a thread computes
/// `REPTILE_PT` outputs (or inputs) × [`point_tile`] points of each product.
pub const OUTPUTS_PER_THREAD: usize = 4;

/// Points per register tile of the generic fused build (`REPTILE_PTP` by default).
pub const POINTS_PER_THREAD: usize = 4;

/// Points per register tile of a shape-specialized fused build (`REPTILE_PTP`) for minibatches
/// of up to `bmax` points: the fewest tiles of at most 6 points, spread evenly (10 points → 2
/// tiles of 5, 25 → 5 of 5, 50 → 9 of 6), so few lanes compute padding.
pub fn point_tile(bmax: usize) -> usize {
    let tiles = bmax.max(1).div_ceil(6);
    bmax.max(1).div_ceil(tiles)
}

/// Row stride, in floats, of the fused kernel's W rows and per-point buffers for width `w`
/// (`reptile_ld4`): whole 16-byte vectors, an odd number of them.
pub fn ld4(w: usize) -> usize {
    4 * (w.div_ceil(4) | 1)
}

/// Most warp slices that split one product's reduction in the fused kernel (`REPTILE_SPLIT`);
/// the layout reserves `SPLIT − 1` partial-sum buffers of `bmax × gmax` floats.
pub const SPLIT: usize = 4;

/// Arguments of the fused inner-loop kernel, passed by value; the `#[repr(C)]` mirror of
/// `struct FusedParams` in `kernels/common.cuh` (every field 4 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedParams {
    /// Number of linear layers L.
    pub n_layers: i32,
    /// `[in, h1, ..., out]`, zero past entry L.
    pub widths: [i32; MAX_LAYERS + 1],
    /// 0 = tanh, 1 = relu.
    pub act: i32,
    /// 0 = MSE, 1 = softmax cross-entropy.
    pub loss: i32,
    /// Tasks in the batch (one thread block each).
    pub n_tasks: i32,
    /// Points per task.
    pub m: i32,
    /// Inner steps k.
    pub steps: i32,
    /// Minibatch size of steps `0..k−1`.
    pub b: i32,
    /// Minibatch size of the last step (the FOMAML tail, else `b`).
    pub b_last: i32,
    /// `max(b, b_last)`: stride of one step's index list.
    pub idx_stride: i32,
    /// 1: delta = θ'_k − θ'_{k−1} (FOMAML); 0: θ'_k − θ (Reptile).
    pub fomaml: i32,
    /// Inner SGD step size α.
    pub lr: f32,
    /// Number of parameters P.
    pub num_params: i32,
    /// 1: the kernel copies the task's points and index lists to shared memory once
    /// ([`stage_floats`]); 0: each step gathers its minibatch from global memory.
    pub stage: i32,
    /// 1: products whose tiles fill only part of the block split their reduction over the
    /// lanes of a warp and sum it by shuffles (no partial-sum buffers in shared memory, no
    /// epilogue barrier); 0: over warp slices ([`fused_splits`]). The same function either way,
    /// up to the order in which the partial sums are added.
    pub lanes: i32,
    /// Most warp slices a product splits into, 1 to [`SPLIT`] (the layout then holds
    /// `split − 1` partial-sum buffers: fewer buffers, more blocks per SM, longer products per
    /// slice). The same function for any cap, up to the order of the partial sums.
    pub split: i32,
}

// SAFETY: `FusedParams` is `#[repr(C)]`, `Copy`, made of i32/f32 only (no padding, no
// pointers), and matches the kernel's struct field for field, so its bytes are a valid
// by-value kernel argument.
unsafe impl cudarc::driver::DeviceRepr for FusedParams {}

/// Packs a spec into the kernel's description, checking the limits the kernels have.
pub fn spec_fields(spec: &MlpSpec) -> CudaResult<(i32, [i32; MAX_LAYERS + 1], i32, i32)> {
    let nl = spec.num_layers();
    if nl > MAX_LAYERS {
        return Err(CudaError::Unsupported(format!("{nl} layers (the CUDA kernels take at most {MAX_LAYERS})")));
    }
    let mut widths = [0i32; MAX_LAYERS + 1];
    for (w, &v) in widths.iter_mut().zip(spec.widths()) {
        *w = i32::try_from(v).map_err(|_| CudaError::Unsupported(format!("width {v}")))?;
    }
    let act = match spec.activation() {
        Activation::Tanh => 0,
        Activation::Relu => 1,
    };
    let loss = match spec.loss() {
        Loss::Mse => 0,
        Loss::SoftmaxCrossEntropy => 1,
    };
    Ok((nl as i32, widths, act, loss))
}

/// Ints of per-layer sizes and offsets at the start of the fused kernel's shared memory
/// (`REPTILE_FUSED_HDR`).
pub const FUSED_HEADER: usize = 36;

/// Dynamic shared memory of the fused kernel for one task (the kernel's `fused_carve`): a
/// header of [`FUSED_HEADER`] ints (widths and per-layer offsets), θ' with every `W_l` row
/// padded to [`ld4`]`(in_l)` floats and each bias to whole 16-byte vectors, then per-point
/// buffers whose rows are padded to [`ld4`]`(w)`: the activations of all layers for `bmax`
/// points, two gradient buffers of `bmax × max(out_l)`, the gathered inputs and targets
/// (`bmax × in`, `bmax × out`) twice (one step's and the next's, gathered during the backward
/// pass); 32 floats of reduction scratch; and up to `SPLIT − 1`
/// partial-sum buffers of `bmax × max(out_l)` for products split over warp slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusedLayout {
    /// Floats of the padded θ'.
    pub theta_floats: usize,
    /// Total floats.
    pub floats: usize,
}

/// Warp slices the fused kernel splits its products into (the largest `fused_slices` split over
/// every forward and input-gradient product) for minibatches of `b` and `b_last` points and
/// blocks of `block` threads, with at most `cap` slices ([`FusedParams::split`], clamped to
/// 1..=[`SPLIT`]), for either point tile (the generic build's and the specialized one's): the
/// number of partial-sum buffers the layout needs, plus one.
pub fn fused_splits(spec: &MlpSpec, b: usize, b_last: usize, block: u32, cap: usize) -> usize {
    let w = spec.widths();
    let nw = (block as usize / 32).max(1);
    let cap = cap.clamp(1, SPLIT);
    let split = |items: usize, quads: usize| (nw / items.div_ceil(32).max(1)).min(cap).min(quads).max(1);
    let mut s = 1;
    for ptp in [POINTS_PER_THREAD, point_tile(b.max(b_last))] {
        for bs in [b, b_last] {
            let tp = bs.div_ceil(ptp);
            for l in 0..spec.num_layers() {
                let (inp, out) = (w[l], w[l + 1]);
                // Layers of at most 4 outputs take a group of lanes per output element, unsplit.
                if out > OUTPUTS_PER_THREAD {
                    s = s.max(split(out.div_ceil(OUTPUTS_PER_THREAD) * tp, inp.div_ceil(4)));
                }
                if l > 0 {
                    s = s.max(split(inp.div_ceil(4) * tp, out.div_ceil(4)));
                }
            }
        }
    }
    s
}

/// The warp-slice cap of `params` ([`FusedParams::split`]) within 1..=[`SPLIT`], as the
/// kernel applies it.
pub fn split_cap(params: &FusedParams) -> usize {
    (params.split.max(1) as usize).min(SPLIT)
}

/// Most shared memory a fused launch spends on staging its task ([`FusedParams::stage`]): the
/// sine task (50 points, 5 lists of 10) takes 600 B; larger tasks gather from global memory.
pub const STAGE_BYTES: usize = 8192;

/// Floats of a staged task (the kernel's `fused_stage_floats`): `m × in` inputs, `m × out`
/// targets or `m` labels, `steps × idx_stride` indices, rounded up to whole 16-byte vectors.
pub fn stage_floats(p: &FusedParams) -> usize {
    let (m, din) = (p.m.max(0) as usize, p.widths[0].max(0) as usize);
    let dout = p.widths[p.n_layers.clamp(0, MAX_LAYERS as i32) as usize].max(0) as usize;
    let ny = if p.loss == 0 { m * dout } else { m }; // 0: MSE (spec_fields)
    (m * din + ny + p.steps.max(0) as usize * p.idx_stride.max(0) as usize).next_multiple_of(4)
}

/// Dynamic shared memory, in bytes, of one fused launch of `params` with `block` threads:
/// [`FusedLayout::with_splits`] with the warp slices [`fused_splits`] says that block uses
/// (none when the products split over lanes, [`FusedParams::lanes`]), plus the staged task
/// when `params.stage` is set.
pub fn fused_launch_bytes(spec: &MlpSpec, params: &FusedParams, block: u32) -> usize {
    let (b, b_last) = (params.b.max(0) as usize, params.b_last.max(0) as usize);
    let staged = if params.stage != 0 { 4 * stage_floats(params) } else { 0 };
    let splits = if params.lanes != 0 { 1 } else { fused_splits(spec, b, b_last, block, split_cap(params)) };
    FusedLayout::with_splits(spec, b.max(b_last), splits).bytes() + staged
}

/// Registers per thread an SM holds (64K on every architecture the kernels target).
pub const SM_REGISTERS: usize = 65536;

/// Shared memory the driver reserves per resident block on sm_80 and later, in bytes.
pub const BLOCK_RESERVED_SHARED: usize = 1024;

/// Resident blocks per SM to bound a specialized fused build's registers for
/// (`REPTILE_MIN_BLOCKS`, the second launch bound), or 0 to leave the build's default bound
/// (128 registers per thread). Left alone, ptxas gives a build up to 128 registers, and the
/// registers can then hold fewer blocks per SM than shared memory does (the sine net at 128
/// threads: 128 registers allow 4 blocks, its 39 KB of shared memory 5). This returns the
/// blocks the launch can use, at most: those its tasks fill (`⌈n_tasks / sms⌉`), those shared
/// memory holds (`smem_per_sm` over `launch_bytes` plus the driver's reserve), the SM's 2048
/// threads, and the blocks that still leave 64 registers per thread (fewer spill). It is 0
/// where that is no more than the default bound allows.
pub fn occupancy_blocks(launch_bytes: usize, block: u32, n_tasks: usize, sms: usize, smem_per_sm: usize) -> u32 {
    let block = block.max(32) as usize;
    let default = (SM_REGISTERS / (block * 128)).max(1);
    let by_smem = smem_per_sm / (launch_bytes + BLOCK_RESERVED_SHARED);
    let want = n_tasks.div_ceil(sms.max(1)).min(by_smem).min(2048 / block).min(SM_REGISTERS / (block * 64));
    if want > default { want as u32 } else { 0 }
}

/// Dynamic shared memory, in bytes, of `reptile_sine_serial` for `params` (staged, Reptile):
/// the fused layout with every partial-sum buffer ([`FusedLayout::new`]) and the staged task,
/// then θ in the padded layout and 64 words: the draws' key scratch and the divergence flag.
pub fn serial_bytes(spec: &MlpSpec, params: &FusedParams) -> usize {
    let (b, b_last) = (params.b.max(0) as usize, params.b_last.max(0) as usize);
    let layout = FusedLayout::new(spec, b.max(b_last));
    layout.bytes() + 4 * (stage_floats(params) + layout.theta_floats + 64)
}

impl FusedLayout {
    /// The layout for `spec` and minibatches of up to `bmax` points, with room for the most
    /// warp slices any block size uses ([`SPLIT`]).
    pub fn new(spec: &MlpSpec, bmax: usize) -> Self {
        Self::with_splits(spec, bmax, SPLIT)
    }

    /// The layout with `splits − 1` partial-sum buffers ([`fused_splits`] for the launch).
    pub fn with_splits(spec: &MlpSpec, bmax: usize, splits: usize) -> Self {
        let w = spec.widths();
        let theta_floats: usize =
            (0..spec.num_layers()).map(|l| w[l + 1] * ld4(w[l]) + w[l + 1].next_multiple_of(4)).sum();
        let acts: usize = w[1..].iter().map(|&o| ld4(o)).sum();
        let gmax = ld4(w[1..].iter().copied().max().unwrap_or(1).max(1));
        let floats = FUSED_HEADER
            + theta_floats
            + bmax * (acts + 2 * gmax + 2 * (ld4(spec.in_dim()) + ld4(spec.out_dim())))
            + 32
            + (splits.clamp(1, SPLIT) - 1) * bmax * gmax;
        FusedLayout { theta_floats, floats }
    }
    /// Bytes of dynamic shared memory per block.
    pub fn bytes(&self) -> usize {
        4 * self.floats
    }
}

/// Every task's minibatch index lists for one meta-step: `idx[t][s][0..b_s]` at
/// `(t·steps + s)·stride`, padded with zeros past `b_s`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinibatchPlan {
    /// The lists, `[n_tasks × steps × stride]`.
    pub idx: Vec<u32>,
    /// Tasks.
    pub n_tasks: usize,
    /// Inner steps k.
    pub steps: usize,
    /// Minibatch size of steps `0..k−1`.
    pub b: usize,
    /// Minibatch size of the last step.
    pub b_last: usize,
    /// `max(b, b_last)`.
    pub stride: usize,
}

impl MinibatchPlan {
    /// The lists the CPU trainer would use for `n_tasks` tasks of `m` points at outer
    /// iteration `iteration`, with `task_index_offset` as in `Trainer::task_deltas` (task `i`
    /// uses the stream `(seed, InnerShuffle, iteration·2^24 + offset + i)`).
    pub fn training(
        n_tasks: usize,
        m: usize,
        inner: &InnerLoop,
        outer: OuterRule,
        seed: u64,
        iteration: u64,
        task_index_offset: u64,
    ) -> CudaResult<Self> {
        let tail = match outer {
            OuterRule::Reptile => None,
            OuterRule::Fomaml { tail } => tail,
        };
        Self::build(n_tasks, m, inner, tail, |i| {
            let index = (iteration << 24).wrapping_add(task_index_offset).wrapping_add(i as u64);
            rng::stream(seed, Purpose::InnerShuffle, index)
        })
    }

    /// Lists drawn from caller-given streams (`stream(i)` for task `i`), e.g. for tests.
    pub fn build(
        n_tasks: usize,
        m: usize,
        inner: &InnerLoop,
        tail: Option<usize>,
        mut stream: impl FnMut(usize) -> rng::Rng,
    ) -> CudaResult<Self> {
        let k = inner.steps;
        if k == 0 || m == 0 || n_tasks == 0 {
            return Err(CudaError::InvalidArgument(format!("{n_tasks} tasks, {m} points, {k} steps")));
        }
        if let Some(t) = tail
            && (t == 0 || t >= m)
        {
            return Err(CudaError::InvalidArgument(format!("FOMAML tail of {t} points with {m} support points")));
        }
        let b = inner.batch_for(m);
        let b_last = tail.unwrap_or(b);
        let stride = b.max(b_last);
        let mut idx = vec![0u32; n_tasks * k * stride];
        let mut perm: Vec<u32> = Vec::with_capacity(m);
        for (t, lists) in idx.chunks_exact_mut(k * stride).enumerate() {
            let mut rng = stream(t);
            perm.clear();
            perm.extend(0..m as u32);
            let pool = match tail {
                Some(tl) => {
                    perm.shuffle(&mut rng);
                    m - tl
                }
                None => m,
            };
            let mut pos = pool;
            for (s, list) in lists.chunks_exact_mut(stride).enumerate() {
                if tail.is_some() && s + 1 == k {
                    list[..b_last].copy_from_slice(&perm[pool..]);
                    continue;
                }
                for o in &mut list[..b] {
                    if pos == pool {
                        perm[..pool].shuffle(&mut rng);
                        pos = 0;
                    }
                    *o = perm[pos];
                    pos += 1;
                }
            }
        }
        Ok(MinibatchPlan { idx, n_tasks, steps: k, b, b_last, stride })
    }

    /// Indices of task `t`'s step `s`.
    pub fn list(&self, t: usize, s: usize) -> &[u32] {
        let bs = if s + 1 == self.steps { self.b_last } else { self.b };
        &self.idx[(t * self.steps + s) * self.stride..][..bs]
    }

    /// The kernel arguments for this plan on `spec` with `m` points per task.
    pub fn fused_params(&self, spec: &MlpSpec, m: usize, lr: f32, fomaml: bool) -> CudaResult<FusedParams> {
        let (n_layers, widths, act, loss) = spec_fields(spec)?;
        let int = |v: usize, what: &str| {
            i32::try_from(v).map_err(|_| CudaError::Unsupported(format!("{what} = {v} exceeds i32")))
        };
        let mut p = FusedParams {
            n_layers,
            widths,
            act,
            loss,
            n_tasks: int(self.n_tasks, "tasks")?,
            m: int(m, "points")?,
            steps: int(self.steps, "steps")?,
            b: int(self.b, "minibatch")?,
            b_last: int(self.b_last, "tail")?,
            idx_stride: int(self.stride, "minibatch")?,
            fomaml: fomaml as i32,
            lr,
            num_params: int(spec.num_params(), "parameters")?,
            stage: 0,
            lanes: 0,
            split: SPLIT as i32,
        };
        p.stage = (4 * stage_floats(&p) <= STAGE_BYTES) as i32;
        Ok(p)
    }
}

/// The compile-time shape of a specialized build of the fused kernel (`REPTILE_SPEC`): the
/// network, the minibatch sizes, the block size and whether the task is staged. One module is
/// compiled per distinct shape, so launches that differ only in `n_tasks`, `m`, `steps`, `lr`
/// or `fomaml` share it; the back end caches modules by this key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FusedShape {
    n_layers: i32,
    widths: [i32; MAX_LAYERS + 1],
    act: i32,
    loss: i32,
    b: i32,
    b_last: i32,
    block: u32,
    stage: i32,
    lanes: i32,
    split: i32,
    min_blocks: u32,
}

impl FusedShape {
    /// The shape of a launch of `params` with `block` threads, with the build's default
    /// register bound ([`Self::with_min_blocks`] sets another).
    pub fn new(params: &FusedParams, block: u32) -> Self {
        FusedShape {
            n_layers: params.n_layers,
            widths: params.widths,
            act: params.act,
            loss: params.loss,
            b: params.b,
            b_last: params.b_last,
            block,
            stage: params.stage,
            lanes: params.lanes,
            split: split_cap(params) as i32,
            min_blocks: 0,
        }
    }

    /// The same shape built for `blocks` resident blocks per SM ([`occupancy_blocks`]; 0: the
    /// default bound): ptxas keeps the registers per thread within what that many blocks allow.
    pub fn with_min_blocks(self, blocks: u32) -> Self {
        FusedShape { min_blocks: blocks, ..self }
    }

    /// The NVRTC `-D` options of the specialized build.
    pub fn defines(&self) -> Vec<String> {
        let mut d = vec![
            "-DREPTILE_SPEC=1".to_string(),
            format!("-DREPTILE_SPEC_L={}", self.n_layers),
            format!("-DREPTILE_SPEC_ACT={}", self.act),
            format!("-DREPTILE_SPEC_LOSS={}", self.loss),
            format!("-DREPTILE_SPEC_B={}", self.b),
            format!("-DREPTILE_SPEC_BLAST={}", self.b_last),
            format!("-DREPTILE_SPEC_BLOCK={}", self.block),
            format!("-DREPTILE_SPEC_STAGE={}", (self.stage != 0) as i32),
            format!("-DREPTILE_SPEC_LANES={}", (self.lanes != 0) as i32),
            format!("-DREPTILE_SPEC_SPLIT={}", self.split),
            format!("-DREPTILE_PTP={}", point_tile(self.b.max(self.b_last).max(1) as usize)),
        ];
        d.extend(self.widths.iter().enumerate().map(|(l, w)| format!("-DREPTILE_SPEC_W{l}={w}")));
        if self.min_blocks > 0 {
            d.push(format!("-DREPTILE_MIN_BLOCKS={}", self.min_blocks));
        }
        d
    }
}

/// Fixed chunks of the deterministic task reduction: `min(n, 64)`, as the CPU trainer.
pub fn reduction_chunks(n_tasks: usize) -> usize {
    n_tasks.clamp(1, 64)
}

/// Column blocks of `reptile_chunk_sums` for `p` parameters and `block` threads: each thread
/// sums two columns, so `⌈⌈p/2⌉/block⌉` blocks cover θ (any grid computes the same sums).
pub fn chunk_sums_blocks(p: usize, block: u32) -> u32 {
    p.div_ceil(2).div_ceil(block as usize).max(1) as u32
}

/// What the fused kernel computes, on the CPU with [`crate::cpu::mlp`]: for each task `t` of
/// `x` `[n × m × in]` / `y` (values `[n × m × out]` or labels `[n × m]`), `plan.steps` SGD steps
/// from θ on the plan's minibatches, then the loss of the first minibatch at θ'. Returns the
/// deltas `[n × P]` (θ'_k − θ, or θ'_k − θ'_{k−1} with `fomaml`) and losses `[n × 2]` (before,
/// after). The reference the CUDA kernels are tested against, and a fallback for hosts that
/// want the CUDA path's exact minibatch semantics without a GPU.
#[allow(clippy::too_many_arguments)]
pub fn cpu_deltas(
    spec: &MlpSpec,
    theta: &[f32],
    x: &[f32],
    y: crate::cpu::mlp::Tgt<'_>,
    m: usize,
    plan: &MinibatchPlan,
    lr: f32,
    fomaml: bool,
) -> (Vec<f32>, Vec<f32>) {
    use crate::cpu::mlp::{self, Tgt, Workspace};
    let (p, di, dout) = (spec.num_params(), spec.in_dim(), spec.out_dim());
    let mut ws = Workspace::new(spec, plan.stride);
    let (mut deltas, mut losses) = (vec![0.0f32; plan.n_tasks * p], vec![0.0f32; plan.n_tasks * 2]);
    let (mut xb, mut yb, mut lb) = (vec![], vec![], vec![]);
    let mut tp = vec![0.0f32; p];
    let mut prev = vec![0.0f32; p];
    for t in 0..plan.n_tasks {
        let gather = |list: &[u32], xb: &mut Vec<f32>, yb: &mut Vec<f32>, lb: &mut Vec<u32>| {
            xb.clear();
            yb.clear();
            lb.clear();
            for &i in list {
                let r = t * m + i as usize;
                xb.extend_from_slice(&x[r * di..][..di]);
                match y {
                    Tgt::Values(v) => yb.extend_from_slice(&v[r * dout..][..dout]),
                    Tgt::Labels(l) => lb.push(l[r]),
                }
            }
        };
        tp.copy_from_slice(theta);
        for s in 0..plan.steps {
            let list = plan.list(t, s);
            if fomaml && s + 1 == plan.steps {
                prev.copy_from_slice(&tp);
            }
            gather(list, &mut xb, &mut yb, &mut lb);
            mlp::forward(spec, &tp, &xb, list.len(), &mut ws);
            let l = mlp::loss_grad(spec, tgt_like(y, &yb, &lb), list.len(), &mut ws);
            if s == 0 {
                losses[2 * t] = l;
            }
            mlp::backward_sgd(spec, &mut tp, &xb, list.len(), &mut ws, lr);
        }
        let list = plan.list(t, 0);
        gather(list, &mut xb, &mut yb, &mut lb);
        mlp::forward(spec, &tp, &xb, list.len(), &mut ws);
        losses[2 * t + 1] = mlp::loss_eval(spec, tgt_like(y, &yb, &lb), list.len(), &mut ws).0;
        let base = if fomaml { &prev } else { theta };
        for ((d, &a), &b) in deltas[t * p..][..p].iter_mut().zip(&tp).zip(base) {
            *d = a - b;
        }
    }
    (deltas, losses)
}

/// Targets of a gathered minibatch, of the same kind as `like`.
fn tgt_like<'a>(like: crate::cpu::mlp::Tgt<'_>, yb: &'a [f32], lb: &'a [u32]) -> crate::cpu::mlp::Tgt<'a> {
    use crate::cpu::mlp::Tgt;
    match like {
        Tgt::Values(_) => Tgt::Values(yb),
        Tgt::Labels(_) => Tgt::Labels(lb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_blocks_follow_shared_memory_tasks_and_the_register_floor() {
        const H200_SM: usize = 228 * 1024;
        // The sine net at 128 threads, n = 4096 on 132 SMs: 39,344 B per task (warp slices)
        // hold 5 blocks, 31,184 B (lanes) 7; the default bound (128 registers) allows 4.
        assert_eq!(occupancy_blocks(39_344, 128, 4096, 132, H200_SM), 5);
        assert_eq!(occupancy_blocks(31_184, 128, 4096, 132, H200_SM), 7);
        // Too few tasks to fill more blocks than the default bound allows: no bound.
        assert_eq!(occupancy_blocks(39_344, 128, 4 * 132, 132, H200_SM), 0);
        assert_eq!(occupancy_blocks(39_344, 128, 4 * 132 + 1, 132, H200_SM), 5);
        // A tiny task: at most 64 registers per thread (8 blocks of 128), never beyond the
        // SM's 2048 threads.
        assert_eq!(occupancy_blocks(2_000, 128, 1 << 20, 132, H200_SM), 8);
        assert_eq!(occupancy_blocks(2_000, 512, 1 << 20, 132, H200_SM), 2);
        // 256 threads: the default bound allows 2 blocks; shared memory for 3 raises it.
        assert_eq!(occupancy_blocks(70_000, 256, 4096, 132, H200_SM), 3);
        assert_eq!(occupancy_blocks(90_000, 256, 4096, 132, H200_SM), 0);
    }

    #[test]
    fn warp_slice_cap_sizes_the_partial_sums() {
        // The sine net at 128 threads with the specialized build's tiles of 5 points (b = 10):
        // each 64-wide product has 32 tiles, one warp's worth, so 4 warps make 4 slices unless
        // FusedParams::split caps them; each slice past the first takes a buffer of 10 rows of
        // 68 floats (2,720 B).
        let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
        let inner = InnerLoop { lr: 0.02, steps: 5, batch_size: 10 };
        let plan =
            MinibatchPlan::build(4096, 50, &inner, None, |i| rng::stream(1, Purpose::InnerShuffle, i as u64)).unwrap();
        let params = FusedParams { stage: 0, ..plan.fused_params(&spec, 50, 0.02, false).unwrap() };
        assert_eq!(params.split, SPLIT as i32);
        for (cap, splits) in [(4, 4), (3, 3), (2, 2), (1, 1), (0, 1), (9, 4)] {
            assert_eq!(fused_splits(&spec, 10, 10, 128, cap), splits, "cap {cap}");
        }
        let mut bytes = [0usize; 5];
        for (split, b) in bytes.iter_mut().enumerate().skip(1) {
            let mut p = params;
            p.split = split as i32;
            *b = fused_launch_bytes(&spec, &p, 128);
        }
        assert_eq!(bytes[4], 39_344);
        assert_eq!(bytes[3], 39_344 - 2_720);
        assert_eq!(bytes[1], 39_344 - 3 * 2_720);
        // On an H200 (228 KB per SM): 3 slices fit 6 blocks per SM where 4 fit 5.
        assert_eq!(occupancy_blocks(bytes[4], 128, 4096, 132, 228 * 1024), 5);
        assert_eq!(occupancy_blocks(bytes[3], 128, 4096, 132, 228 * 1024), 6);
        // Lanes use no warp slices, whatever the cap.
        let mut lanes = params;
        (lanes.lanes, lanes.split) = (1, 2);
        assert_eq!(fused_launch_bytes(&spec, &lanes, 128), 31_184);
    }
}
