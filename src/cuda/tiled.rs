//! The tiled path (`kernels/mlp_tiled.cu`) for networks too large for the fused kernel's
//! shared memory: one meta-step's inner loops as a sequence of batched launches. The launch
//! description ([`Launch`], [`Arg`], [`Buf`]) is shared with the device-resident sine loop
//! ([`super::sine`]).
//!
//! [`program`] turns a spec and a [`MinibatchPlan`] into a [`TiledProgram`]: the launches in
//! stream order, each naming its kernel, launch shape and arguments, with buffers referred to
//! symbolically ([`Buf`] plus an element offset). The CUDA back end binds the buffers to device
//! memory and launches them; the CPU emulation test binds them to host memory and runs the same
//! list, so the sequencing itself is tested without a GPU. The result is the same as the fused
//! kernel's: deltas `[n × P]` in [`Buf::Delta`], losses `[n × 2]` in [`Buf::Losses`].

use super::plan::{MinibatchPlan, spec_fields};
use super::{CudaError, CudaResult};
use crate::spec::MlpSpec;

/// Threads per block of every tiled kernel (a 16 × 16 tile for the products).
pub const TILED_BLOCK: u32 = 256;
/// Tile edge of the products (`REPTILE_TILE`).
pub const TILE: usize = 16;
/// Dynamic shared memory of a product kernel: two 16 × 17 float tiles.
pub const GEMM_SMEM: u32 = (2 * TILE * (TILE + 1) * 4) as u32;
/// Dynamic shared memory of the loss kernel: 32 floats of reduction scratch.
pub const LOSS_SMEM: u32 = 32 * 4;

/// A buffer of the tiled program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buf {
    /// θ `[P]` (input).
    Theta,
    /// Task inputs `[n × m × in]` (input).
    X,
    /// Regression targets `[n × m × out]` (input; unused for cross-entropy).
    Y,
    /// Class labels `[n × m]` (input; unused for MSE).
    Labels,
    /// Minibatch index lists `[n × k × stride]` (input).
    Idx,
    /// Per-task θ' `[n × P]`.
    ThetaP,
    /// Per-task activations of every layer `[n × stride × Σ out_l]`.
    Acts,
    /// Gradient buffer `[n × stride × max out_l]`.
    G0,
    /// Second gradient buffer, same size.
    G1,
    /// Gathered minibatch inputs `[n × stride × in]`.
    Xb,
    /// Gathered minibatch targets `[n × stride × out]`.
    Yb,
    /// Output deltas `[n × P]`.
    Delta,
    /// Output losses `[n × 2]`.
    Losses,
    /// Chunk partial sums of the reduction `[nc × P]`.
    Partial,
    /// Candidate θ `[P]`.
    Cand,
    /// Divergence flag (u32).
    Bad,
    /// Iteration counter (u32) of the device-resident loop.
    Iter,
    /// Adam's starting second moments `[P]` (input: the trainer's carried moments, or zeros).
    MomentsIn,
    /// Adam's per-task second moments `[n × P]` (output: each task's final `v`).
    Moments,
}

impl Buf {
    /// Every buffer.
    pub const ALL: [Buf; 19] = [
        Buf::Theta,
        Buf::X,
        Buf::Y,
        Buf::Labels,
        Buf::Idx,
        Buf::ThetaP,
        Buf::Acts,
        Buf::G0,
        Buf::G1,
        Buf::Xb,
        Buf::Yb,
        Buf::Delta,
        Buf::Losses,
        Buf::Partial,
        Buf::Cand,
        Buf::Bad,
        Buf::Iter,
        Buf::MomentsIn,
        Buf::Moments,
    ];
    /// Whether the buffer holds u32 (else f32).
    pub fn is_u32(self) -> bool {
        matches!(self, Buf::Labels | Buf::Idx | Buf::Bad | Buf::Iter)
    }
}

/// A kernel argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// Pointer to element `offset` of a buffer.
    Ptr(Buf, usize),
    /// An `int`.
    I32(i32),
    /// A `float`.
    F32(f32),
    /// The fused kernel's argument struct, by value.
    Fused(super::plan::FusedParams),
}

/// One kernel launch.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    /// Entry point in `kernels/mlp_tiled.cu`.
    pub kernel: &'static str,
    /// Grid `[x, y, z]` (z = tasks).
    pub grid: [u32; 3],
    /// Threads per block.
    pub block: u32,
    /// Dynamic shared memory in bytes.
    pub smem: u32,
    /// Arguments in order.
    pub args: Vec<Arg>,
}

/// A meta-step's inner loops as launches, and the sizes (in elements) of every buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct TiledProgram {
    /// The launches, in stream order.
    pub launches: Vec<Launch>,
    /// Elements each buffer must hold (inputs included).
    pub sizes: Vec<(Buf, usize)>,
}

impl TiledProgram {
    /// Elements buffer `b` must hold.
    pub fn size(&self, b: Buf) -> usize {
        self.sizes.iter().find(|(x, _)| *x == b).map_or(0, |(_, s)| *s)
    }
}

fn int(v: usize, what: &str) -> CudaResult<i32> {
    i32::try_from(v).map_err(|_| CudaError::Unsupported(format!("{what} = {v} exceeds the kernels' i32 range")))
}

fn blocks(count: usize, per: usize) -> CudaResult<u32> {
    u32::try_from(count.div_ceil(per).max(1)).map_err(|_| CudaError::Unsupported(format!("{count} elements")))
}

/// Adam (β1 = 0) as the tiled path's inner optimizer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TiledAdam {
    /// Decay of the second moments.
    pub beta2: f32,
    /// Added to `√v`.
    pub eps: f32,
    /// Adam steps already taken by the starting moments ([`Buf::MomentsIn`]); step `s` of the
    /// inner loop is Adam step `t0 + s + 1`, with the step size
    /// [`crate::cpu::update::adam_lr_t`] of that step.
    pub t0: u64,
}

/// The launches of one meta-step on the tiled path: `plan.steps` SGD steps per task (Adam
/// steps with `adam`: every task's moments start from [`Buf::MomentsIn`] and end in
/// [`Buf::Moments`]) with `plan`'s minibatches over `m` points per task, step size `lr`, then
/// the loss after adaptation on the first minibatch and the deltas (FOMAML: θ'_k − θ'_{k−1}).
pub fn program(
    spec: &MlpSpec,
    plan: &MinibatchPlan,
    m: usize,
    lr: f32,
    fomaml: bool,
    adam: Option<TiledAdam>,
) -> CudaResult<TiledProgram> {
    spec_fields(spec)?;
    let n = plan.n_tasks;
    let nz = u32::try_from(n).map_err(|_| CudaError::Unsupported(format!("{n} tasks")))?;
    let (w, nl, p) = (spec.widths(), spec.num_layers(), spec.num_params());
    let (din, dout, bmax) = (spec.in_dim(), spec.out_dim(), plan.stride);
    let mut act_off = Vec::with_capacity(nl);
    let mut acc = 0;
    for &o in &w[1..] {
        act_off.push(acc);
        acc += o;
    }
    let gmax = w[1..].iter().copied().max().unwrap_or(1);
    let act_ts = bmax * acc;
    let g_ts = bmax * gmax;
    let (xb_ts, yb_ts) = (bmax * din, bmax * dout);
    let act = match spec.activation() {
        crate::Activation::Tanh => 0,
        crate::Activation::Relu => 1,
    };
    let loss = match spec.loss() {
        crate::Loss::Mse => 0,
        crate::Loss::SoftmaxCrossEntropy => 1,
    };
    let i = |v: usize, what: &str| int(v, what);
    let (pi, act_tsi, g_tsi, xb_tsi, yb_tsi) = (
        i(p, "parameters")?,
        i(act_ts, "activations")?,
        i(g_ts, "gradients")?,
        i(xb_ts, "inputs")?,
        i(yb_ts, "targets")?,
    );
    let w_off: Vec<i32> = (0..nl).map(|l| i(spec.weight_offset(l), "offset")).collect::<CudaResult<_>>()?;
    let b_off: Vec<i32> = (0..nl).map(|l| i(spec.bias_offset(l), "offset")).collect::<CudaResult<_>>()?;
    let widths: Vec<i32> = w.iter().map(|&v| i(v, "width")).collect::<CudaResult<_>>()?;
    let pblocks = blocks(p, TILED_BLOCK as usize)?;
    // CUDA caps gridDim.y and gridDim.z at 65,535 (tasks ride on z, row tiles on y).
    let widest_rows = (*w.iter().max().unwrap_or(&1)).max(bmax).div_ceil(TILE);
    if n > 65_535 || widest_rows > 65_535 {
        return Err(CudaError::Unsupported(format!(
            "{n} tasks or {} rows exceed the tiled path's 65,535-block grid dimensions",
            widest_rows * TILE
        )));
    }

    let mut ls = Vec::new();
    let launch = |kernel, grid, smem, args| Launch { kernel, grid, block: TILED_BLOCK, smem, args };
    // Activation buffer of layer l (l = −1: the gathered inputs) and its per-task stride.
    let a_in = |l: usize| -> (Arg, i32) {
        if l == 0 { (Arg::Ptr(Buf::Xb, 0), xb_tsi) } else { (Arg::Ptr(Buf::Acts, act_off[l - 1] * bmax), act_tsi) }
    };
    let gather = |s: usize, bs: usize| -> CudaResult<Launch> {
        Ok(launch(
            "reptile_tiled_gather",
            [1, 1, nz],
            0,
            vec![
                Arg::I32(i(bs, "minibatch")?),
                Arg::I32(i(m, "points")?),
                Arg::I32(widths[0]),
                Arg::I32(widths[nl]),
                Arg::I32(loss),
                Arg::Ptr(Buf::X, 0),
                Arg::Ptr(Buf::Y, 0),
                Arg::Ptr(Buf::Labels, 0),
                Arg::Ptr(Buf::Idx, s * plan.stride),
                Arg::I32(i(plan.steps * plan.stride, "index lists")?),
                Arg::Ptr(Buf::Xb, 0),
                Arg::I32(xb_tsi),
                Arg::Ptr(Buf::Yb, 0),
                Arg::I32(yb_tsi),
            ],
        ))
    };
    let forward = |bs: usize, ls: &mut Vec<Launch>| -> CudaResult<()> {
        for l in 0..nl {
            let (a, a_ts) = a_in(l);
            ls.push(launch(
                "reptile_tiled_forward",
                [blocks(w[l + 1], TILE)?, blocks(bs, TILE)?, nz],
                GEMM_SMEM,
                vec![
                    Arg::I32(i(bs, "minibatch")?),
                    Arg::I32(widths[l]),
                    Arg::I32(widths[l + 1]),
                    Arg::I32(if l + 1 < nl { act } else { -1 }),
                    a,
                    Arg::I32(a_ts),
                    Arg::Ptr(Buf::ThetaP, 0),
                    Arg::I32(pi),
                    Arg::I32(w_off[l]),
                    Arg::I32(b_off[l]),
                    Arg::Ptr(Buf::Acts, act_off[l] * bmax),
                    Arg::I32(act_tsi),
                ],
            ));
        }
        Ok(())
    };
    let loss_launch = |bs: usize, grad: bool, slot: i32| -> CudaResult<Launch> {
        Ok(launch(
            "reptile_tiled_loss",
            [1, 1, nz],
            LOSS_SMEM,
            vec![
                Arg::I32(i(bs, "minibatch")?),
                Arg::I32(widths[nl]),
                Arg::I32(loss),
                Arg::Ptr(Buf::Acts, act_off[nl - 1] * bmax),
                Arg::I32(act_tsi),
                Arg::Ptr(Buf::Yb, 0),
                Arg::I32(yb_tsi),
                Arg::Ptr(Buf::G0, 0),
                Arg::I32(g_tsi),
                Arg::I32(grad as i32),
                Arg::Ptr(Buf::Losses, 0),
                Arg::I32(slot),
            ],
        ))
    };

    ls.push(launch(
        "reptile_tiled_copy",
        [pblocks, 1, nz],
        0,
        vec![Arg::Ptr(Buf::Theta, 0), Arg::I32(0), Arg::I32(pi), Arg::Ptr(Buf::ThetaP, 0)],
    ));
    if adam.is_some() {
        ls.push(launch(
            "reptile_tiled_copy",
            [pblocks, 1, nz],
            0,
            vec![Arg::Ptr(Buf::MomentsIn, 0), Arg::I32(0), Arg::I32(pi), Arg::Ptr(Buf::Moments, 0)],
        ));
    }
    for s in 0..plan.steps {
        let last = s + 1 == plan.steps;
        let bs = if last { plan.b_last } else { plan.b };
        if last && fomaml {
            ls.push(launch(
                "reptile_tiled_copy",
                [pblocks, 1, nz],
                0,
                vec![Arg::Ptr(Buf::ThetaP, 0), Arg::I32(pi), Arg::I32(pi), Arg::Ptr(Buf::Delta, 0)],
            ));
        }
        ls.push(gather(s, bs)?);
        forward(bs, &mut ls)?;
        ls.push(loss_launch(bs, true, if s == 0 { 0 } else { -1 })?);
        let (mut gcur, mut gnext) = (Buf::G0, Buf::G1);
        for l in (0..nl).rev() {
            let (a, a_ts) = a_in(l);
            if l > 0 {
                ls.push(launch(
                    "reptile_tiled_input_grad",
                    [blocks(w[l], TILE)?, blocks(bs, TILE)?, nz],
                    GEMM_SMEM,
                    vec![
                        Arg::I32(i(bs, "minibatch")?),
                        Arg::I32(widths[l]),
                        Arg::I32(widths[l + 1]),
                        Arg::I32(act),
                        Arg::Ptr(gcur, 0),
                        Arg::I32(g_tsi),
                        Arg::Ptr(Buf::ThetaP, 0),
                        Arg::I32(pi),
                        Arg::I32(w_off[l]),
                        a,
                        Arg::I32(a_ts),
                        Arg::Ptr(gnext, 0),
                        Arg::I32(g_tsi),
                    ],
                ));
            }
            // The two update kernels differ in their step scalars and Adam's moments buffer.
            let (kernel, step) = match adam {
                None => ("reptile_tiled_weight_sgd", vec![Arg::F32(lr)]),
                Some(ad) => (
                    "reptile_tiled_weight_adam",
                    vec![
                        Arg::F32(crate::cpu::update::adam_lr_t(lr, ad.beta2, ad.t0 + s as u64 + 1)),
                        Arg::F32(ad.beta2),
                        Arg::F32(ad.eps),
                        Arg::F32(crate::cpu::update::adam_g_min(ad.beta2)),
                    ],
                ),
            };
            let mut args = vec![Arg::I32(i(bs, "minibatch")?), Arg::I32(widths[l]), Arg::I32(widths[l + 1])];
            args.extend(step);
            args.extend([Arg::Ptr(gcur, 0), Arg::I32(g_tsi), a, Arg::I32(a_ts), Arg::Ptr(Buf::ThetaP, 0)]);
            if adam.is_some() {
                args.push(Arg::Ptr(Buf::Moments, 0));
            }
            args.extend([Arg::I32(pi), Arg::I32(w_off[l]), Arg::I32(b_off[l])]);
            ls.push(launch(kernel, [blocks(w[l] + 1, TILE)?, blocks(w[l + 1], TILE)?, nz], GEMM_SMEM, args));
            std::mem::swap(&mut gcur, &mut gnext);
        }
    }
    let b0 = if plan.steps == 1 { plan.b_last } else { plan.b };
    ls.push(gather(0, b0)?);
    forward(b0, &mut ls)?;
    ls.push(loss_launch(b0, false, 1)?);
    let (base, base_ts) = if fomaml { (Buf::Delta, pi) } else { (Buf::Theta, 0) };
    ls.push(launch(
        "reptile_tiled_diff",
        [pblocks, 1, nz],
        0,
        vec![Arg::Ptr(Buf::ThetaP, 0), Arg::Ptr(base, 0), Arg::I32(base_ts), Arg::I32(pi), Arg::Ptr(Buf::Delta, 0)],
    ));
    let labels = spec.loss() == crate::Loss::SoftmaxCrossEntropy;
    let mut sizes = vec![
        (Buf::Theta, p),
        (Buf::X, n * m * din),
        (Buf::Y, if labels { 1 } else { n * m * dout }),
        (Buf::Labels, if labels { n * m } else { 1 }),
        (Buf::Idx, plan.idx.len()),
        (Buf::ThetaP, n * p),
        (Buf::Acts, n * act_ts),
        (Buf::G0, n * g_ts),
        (Buf::G1, n * g_ts),
        (Buf::Xb, n * xb_ts),
        (Buf::Yb, n * yb_ts),
        (Buf::Delta, n * p),
        (Buf::Losses, 2 * n),
    ];
    if adam.is_some() {
        sizes.extend([(Buf::MomentsIn, p), (Buf::Moments, n * p)]);
    }
    Ok(TiledProgram { launches: ls, sizes })
}
