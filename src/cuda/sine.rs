//! The device-resident sine-wave training loop (`kernels/sine_device.cu`): tasks sampled on the
//! GPU with a counter-based RNG (Philox4x32-10), θ kept on the device, no host round-trip per
//! iteration. Two forms: [`resident_program`], five launches per iteration for any number of
//! tasks, and [`serial_program`], serial Reptile (n = 1) with many iterations in one launch of
//! `reptile_sine_serial` (`kernels/mlp_fused.cu`). Both draw the same tasks and compute the
//! same updates.
//!
//! Its tasks and minibatch orders come from Philox, not from the CPU path's ChaCha streams, so
//! a resident run is statistically equivalent to `reptile sine`, not bit-identical. This
//! module holds the same sampler on the CPU ([`sample_tasks`]) and a CPU run of the whole loop
//! ([`reference_run`]), which the tests compare the kernels against.

use super::plan::{self, MinibatchPlan, reduction_chunks};
use super::tiled::{Arg, Buf, Launch, TiledProgram};
use super::{CudaError, CudaResult};
use crate::cpu::mlp::Tgt;
use crate::meta::{InnerLoop, OuterRule, ReptileConfig};
use crate::spec::{Loss, MlpSpec};
use crate::workloads::sine::{GRID_POINTS, grid};

/// The counter's last word, "SINE".
pub const SINE_TAG: u32 = 0x5349_4e45;

/// Philox4x32-10 (Salmon, Moraes, Dror & Shaw 2011): the block of four words for `counter`
/// under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for _ in 0..10 {
        let p0 = 0xD251_1F53u64 * c0 as u64;
        let p1 = 0xCD9E_8D57u64 * c2 as u64;
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
        k0 = k0.wrapping_add(0x9E37_79B9);
        k1 = k1.wrapping_add(0xBB67_AE85);
    }
    [c0, c1, c2, c3]
}

fn unit(u: u32) -> f32 {
    (u >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// The tasks of one iteration, as `reptile_sine_sample` draws them: `x`, `y` `[n × 50]` and the
/// minibatch lists of `steps` steps of `b` points (`b ≤ 50`).
pub fn sample_tasks(
    seed: u64,
    iteration: u32,
    n: usize,
    steps: usize,
    b: usize,
) -> (Vec<f32>, Vec<f32>, MinibatchPlan) {
    let key = [seed as u32, (seed >> 32) as u32];
    let g = grid();
    let (mut x, mut y) = (Vec::with_capacity(n * GRID_POINTS), Vec::with_capacity(n * GRID_POINTS));
    let mut idx = Vec::with_capacity(n * steps * b);
    for t in 0..n as u32 {
        let u = philox4x32_10([iteration, t, 0, SINE_TAG], key);
        let amp = 0.1f32 + 4.9f32 * unit(u[0]);
        let phase = 6.283_185_5f32 * unit(u[1]);
        x.extend_from_slice(&g);
        y.extend(g.iter().map(|&v| amp * (v + phase).sin()));
        // Pass k: point p's key is word p mod 4 of Philox block 1 + 13k + p/4; the pass visits
        // the points in increasing (key, p) order.
        let total = steps * b;
        for (pass, base) in (0..total).step_by(GRID_POINTS).enumerate() {
            let mut order: Vec<(u32, u32)> = (0..GRID_POINTS as u32)
                .map(|p| {
                    let w = philox4x32_10([iteration, t, 1 + 13 * pass as u32 + p / 4, SINE_TAG], key);
                    (w[(p % 4) as usize], p)
                })
                .collect();
            order.sort_unstable();
            idx.extend(order.iter().take(total - base).map(|&(_, p)| p));
        }
    }
    let plan = MinibatchPlan { idx, n_tasks: n, steps, b, b_last: b, stride: b };
    (x, y, plan)
}

/// Checks that `spec`/`config` suit the resident sine loop: a 1-in 1-out MSE network, SGD,
/// Reptile or FOMAML without a tail, minibatches of 1..=50 points, at most 2^32 − 1 planned
/// iterations. Returns (b, fomaml).
pub fn check(spec: &MlpSpec, config: &ReptileConfig) -> CudaResult<(usize, bool)> {
    if spec.in_dim() != 1 || spec.out_dim() != 1 || spec.loss() != Loss::Mse {
        return Err(CudaError::Unsupported(format!(
            "the sine loop needs a 1-in 1-out MSE network, got {:?}",
            spec.widths()
        )));
    }
    if config.inner_optimizer != crate::meta::InnerOptimizer::Sgd {
        return Err(CudaError::Unsupported(format!(
            "the sine loop's inner loop is SGD, the config asks for {:?}",
            config.inner_optimizer
        )));
    }
    let fomaml = match config.outer {
        OuterRule::Reptile => false,
        OuterRule::Fomaml { tail: None } => true,
        OuterRule::Fomaml { tail: Some(_) } => {
            return Err(CudaError::Unsupported("the sine loop has no FOMAML tail".into()));
        }
    };
    let b = config.train.batch_for(GRID_POINTS);
    if b == 0 || b > GRID_POINTS {
        return Err(CudaError::Unsupported(format!("sine minibatches of {b} points (1..=50)")));
    }
    if config.planned_iters > u32::MAX as u64 {
        return Err(CudaError::Unsupported("more than 2^32 − 1 planned iterations".into()));
    }
    Ok((b, fomaml))
}

/// The five launches of one resident iteration for `n` tasks (see `kernels/sine_device.cu`):
/// sample → fused inner loop → chunk sums → annealed interpolation → commit.
pub fn resident_program(spec: &MlpSpec, config: &ReptileConfig, n: usize, seed: u64) -> CudaResult<TiledProgram> {
    let (b, fomaml) = check(spec, config)?;
    let steps = config.train.steps;
    let p = spec.num_params();
    let int = |v: usize, what: &str| {
        i32::try_from(v).map_err(|_| CudaError::Unsupported(format!("{what} = {v} exceeds the kernels' i32 range")))
    };
    let layout_plan = MinibatchPlan { idx: vec![], n_tasks: n, steps, b, b_last: b, stride: b };
    let params = layout_plan.fused_params(spec, GRID_POINTS, config.train.lr, fomaml)?;
    let smem = u32::try_from(plan::fused_launch_bytes(spec, &params, super::backend::FUSED_BLOCK))
        .map_err(|_| CudaError::Unsupported("layout".into()))?;
    let nc = reduction_chunks(n);
    let (n32, p32, nc32) = (int(n, "tasks")?, int(p, "parameters")?, int(nc, "chunks")?);
    let pb = p.div_ceil(256) as u32;
    let launches = vec![
        Launch {
            kernel: "reptile_sine_sample",
            grid: [n as u32, 1, 1],
            block: 64,
            smem: (GRID_POINTS * 4) as u32,
            args: vec![
                Arg::I32(seed as u32 as i32),
                Arg::I32((seed >> 32) as u32 as i32),
                Arg::Ptr(Buf::Iter, 0),
                Arg::I32(n32),
                Arg::I32(int(steps, "steps")?),
                Arg::I32(int(b, "minibatch")?),
                Arg::Ptr(Buf::X, 0),
                Arg::Ptr(Buf::Y, 0),
                Arg::Ptr(Buf::Idx, 0),
            ],
        },
        Launch {
            kernel: "reptile_fused_inner",
            grid: [n as u32, 1, 1],
            block: super::backend::FUSED_BLOCK,
            smem,
            args: vec![
                Arg::Fused(params),
                Arg::Ptr(Buf::Theta, 0),
                Arg::Ptr(Buf::X, 0),
                Arg::Ptr(Buf::Y, 0),
                Arg::Ptr(Buf::Labels, 0),
                Arg::Ptr(Buf::Idx, 0),
                Arg::Ptr(Buf::Delta, 0),
                Arg::Ptr(Buf::Losses, 0),
            ],
        },
        Launch {
            kernel: "reptile_chunk_sums",
            grid: [super::plan::chunk_sums_blocks(p, 256), nc as u32, 1],
            block: 256,
            smem: 0,
            args: vec![
                Arg::Ptr(Buf::Delta, 0),
                Arg::I32(n32),
                Arg::I32(p32),
                Arg::I32(nc32),
                Arg::Ptr(Buf::Partial, 0),
            ],
        },
        Launch {
            kernel: "reptile_interpolate_sched",
            grid: [pb, 1, 1],
            block: 256,
            smem: 0,
            args: vec![
                Arg::Ptr(Buf::Theta, 0),
                Arg::Ptr(Buf::Partial, 0),
                Arg::I32(nc32),
                Arg::I32(p32),
                Arg::F32(config.eps_start),
                Arg::F32(config.eps_end),
                Arg::F32(config.outer_decay),
                Arg::I32(config.planned_iters as u32 as i32),
                Arg::I32(n32),
                Arg::Ptr(Buf::Iter, 0),
                Arg::Ptr(Buf::Cand, 0),
                Arg::Ptr(Buf::Bad, 0),
            ],
        },
        Launch {
            kernel: "reptile_commit",
            grid: [pb, 1, 1],
            block: 256,
            smem: 0,
            args: vec![
                Arg::Ptr(Buf::Cand, 0),
                Arg::Ptr(Buf::Theta, 0),
                Arg::I32(p32),
                Arg::Ptr(Buf::Bad, 0),
                Arg::Ptr(Buf::Iter, 0),
            ],
        },
    ];
    let sizes = vec![
        (Buf::Theta, p),
        (Buf::X, n * GRID_POINTS),
        (Buf::Y, n * GRID_POINTS),
        (Buf::Labels, 1),
        (Buf::Idx, n * steps * b),
        (Buf::Delta, n * p),
        (Buf::Losses, 2 * n),
        (Buf::Partial, nc * p),
        (Buf::Cand, p),
        (Buf::Bad, 1),
        (Buf::Iter, 1),
    ];
    Ok(TiledProgram { launches, sizes })
}

/// Serial Reptile (n = 1, Reptile outer rule) on the sine family as one launch of
/// `reptile_sine_serial` (`kernels/mlp_fused.cu`): `count` iterations in one block of `block`
/// threads, tasks drawn on the device exactly as [`resident_program`] draws task 0, θ and the
/// iteration counter in the same buffers. Set the count per launch with [`set_serial_count`].
pub fn serial_program(spec: &MlpSpec, config: &ReptileConfig, seed: u64, block: u32) -> CudaResult<TiledProgram> {
    let (b, fomaml) = check(spec, config)?;
    if fomaml {
        return Err(CudaError::Unsupported("the serial sine kernel runs Reptile, not FOMAML".into()));
    }
    let steps = config.train.steps;
    let layout_plan = MinibatchPlan { idx: vec![], n_tasks: 1, steps, b, b_last: b, stride: b };
    let mut params = layout_plan.fused_params(spec, GRID_POINTS, config.train.lr, false)?;
    params.stage = 1;
    let smem = u32::try_from(plan::serial_bytes(spec, &params)).map_err(|_| CudaError::Unsupported("layout".into()))?;
    let launches = vec![Launch {
        kernel: "reptile_sine_serial",
        grid: [1, 1, 1],
        block,
        smem,
        args: vec![
            Arg::Fused(params),
            Arg::I32(seed as u32 as i32),
            Arg::I32((seed >> 32) as u32 as i32),
            Arg::F32(config.eps_start),
            Arg::F32(config.eps_end),
            Arg::F32(config.outer_decay),
            Arg::I32(config.planned_iters as u32 as i32),
            Arg::I32(1), // SERIAL_COUNT_ARG
            Arg::Ptr(Buf::Theta, 0),
            Arg::Ptr(Buf::Iter, 0),
            Arg::Ptr(Buf::Bad, 0),
            Arg::Ptr(Buf::Losses, 0),
        ],
    }];
    debug_assert!(matches!(launches[0].args[SERIAL_COUNT_ARG], Arg::I32(1)));
    let sizes = vec![(Buf::Theta, spec.num_params()), (Buf::Losses, 2), (Buf::Bad, 1), (Buf::Iter, 1)];
    Ok(TiledProgram { launches, sizes })
}

/// Position of `count` among `reptile_sine_serial`'s arguments.
const SERIAL_COUNT_ARG: usize = 7;

/// Sets how many iterations each launch of a [`serial_program`] runs.
pub fn set_serial_count(prog: &mut TiledProgram, count: u32) {
    for l in prog.launches.iter_mut().filter(|l| l.kernel == "reptile_sine_serial") {
        l.args[SERIAL_COUNT_ARG] = Arg::I32(count.min(i32::MAX as u32) as i32);
    }
}

/// What a resident run ended with.
#[derive(Clone, Debug, PartialEq)]
pub struct ResidentRun {
    /// θ after the last committed iteration (the last finite one if the run diverged).
    pub theta: Vec<f32>,
    /// The iteration counter at the end: start + committed iterations.
    pub iteration: u64,
    /// Whether an update came out non-finite (the run stopped committing there).
    pub diverged: bool,
    /// The last launched iteration's per-task losses `[n × 2]` (before, after adaptation).
    pub losses: Vec<f32>,
}

/// The resident loop on the CPU: `iterations` iterations from `start` with [`sample_tasks`],
/// [`plan::cpu_deltas`], the fixed-order chunked sum and the same ε schedule, outer decay
/// ([`ReptileConfig::keep`]) and rounding as the kernels.
pub fn reference_run(
    spec: &MlpSpec,
    theta: &[f32],
    config: &ReptileConfig,
    n: usize,
    seed: u64,
    start: u32,
    iterations: u32,
) -> CudaResult<ResidentRun> {
    let (b, fomaml) = check(spec, config)?;
    let p = spec.num_params();
    let mut th = theta.to_vec();
    let mut it = start;
    let mut losses = vec![0.0; 2 * n];
    let inner = InnerLoop { batch_size: b, ..config.train };
    for _ in 0..iterations {
        let (x, y, plan) = sample_tasks(seed, it, n, inner.steps, b);
        let (d, l) = plan::cpu_deltas(spec, &th, &x, Tgt::Values(&y), GRID_POINTS, &plan, inner.lr, fomaml);
        losses = l;
        let nc = reduction_chunks(n);
        let frac = (it as f64 / config.planned_iters as f64).min(1.0);
        let eps = (config.eps_start as f64 + (config.eps_end as f64 - config.eps_start as f64) * frac) as f32;
        let scale = eps / n as f32;
        let keep = config.keep(eps);
        let mut cand = vec![0.0f32; p];
        for (j, c) in cand.iter_mut().enumerate() {
            let mut s = 0.0f32;
            for k in 0..nc {
                let cs = (k * n / nc..(k + 1) * n / nc).fold(0.0f32, |a, i| a + d[i * p + j]);
                s = if k == 0 { cs } else { s + cs };
            }
            *c = scale.mul_add(s, th[j]) * keep;
        }
        if cand.iter().any(|v| !v.is_finite()) {
            return Ok(ResidentRun { theta: th, iteration: it as u64, diverged: true, losses });
        }
        th = cand;
        it += 1;
    }
    Ok(ResidentRun { theta: th, iteration: it as u64, diverged: false, losses })
}
