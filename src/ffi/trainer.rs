//! `reptile_trainer`: Reptile meta-training, its configuration, adaptation and evaluation.

use super::backend::{Backend, REPTILE_BACKEND_CPU, REPTILE_BACKEND_CUDA, reptile_backend, resolve};
use super::boundary::{
    FfiError, FfiResult, arg_mut, arg_path, arg_ref, arg_slice, arg_slice_mut, boundary, boundary_void, check_disjoint,
    free_handle, into_handle, out_ptr, span,
};
use super::eval::reptile_eval_report;
use super::model::{check_count, predict_into, reptile_model};
use super::status::reptile_status;
use super::tasks::{reptile_tasks, task_batch};
use crate::io::checkpoint;
use crate::meta::{
    AdamMoments, DeltaSum, Device, EvalTasks, InnerOptimizer, OuterRule, ReptileConfig, StepStats, Trainer,
};
use crate::params::Model;
use std::ffi::c_char;

/// The inner-loop optimizer (a `REPTILE_INNER_OPTIMIZER_*` value).
pub type reptile_inner_optimizer = u32;
/// Plain SGD: `θ' ← θ' − α·∇L(θ')` on each minibatch.
pub const REPTILE_INNER_OPTIMIZER_SGD: reptile_inner_optimizer = 0;
/// Adam with β1 = 0, as the Reptile paper uses for classification (TensorFlow's form):
/// `v ← β2·v + (1 − β2)·g²`, `θ' ← θ' − α·√(1 − β2^t)·g / (√v + ε)`; see `adam_beta2`,
/// `adam_eps`, `train_moments` and `eval_moments`.
pub const REPTILE_INNER_OPTIMIZER_ADAM: reptile_inner_optimizer = 1;

/// Where Adam's second moments start for each task (a `REPTILE_ADAM_MOMENTS_*` value).
pub type reptile_adam_moments = u32;
/// From the trainer's running moments, carried over from task to task (the paper's code during
/// meta-training).
pub const REPTILE_ADAM_MOMENTS_CARRY: reptile_adam_moments = 0;
/// From zero for every task (the paper's code at evaluation).
pub const REPTILE_ADAM_MOMENTS_RESET: reptile_adam_moments = 1;

/// The outer update direction (a `REPTILE_OUTER_RULE_*` value).
pub type reptile_outer_rule = u32;
/// Reptile: `θ ← θ + ε·mean_i(θ'_i − θ)`.
pub const REPTILE_OUTER_RULE_REPTILE: reptile_outer_rule = 0;
/// First-order MAML: `θ ← θ + ε·mean_i(θ'_{i,k} − θ'_{i,k−1})` (the last inner step's
/// direction); see `fomaml_tail`.
pub const REPTILE_OUTER_RULE_FOMAML: reptile_outer_rule = 1;

/// Everything a trainer needs besides the model. Versioned by size: fill it with
/// `reptile_trainer_config_default(sizeof(reptile_trainer_config), &config)`, then change
/// the fields you need. Fields are only ever added at the end, so a host compiled against
/// this header keeps working with later libraries.
///
/// The defaults are the sine-wave setup of the Reptile paper: inner SGD α = 0.02, 5 steps on
/// minibatches of 10, one task per outer step, ε annealed 0.1 → 0 over 30,000 iterations,
/// evaluation with 32 full-batch steps at 0.02, seed 0, the CPU back end on all cores.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct reptile_trainer_config {
    /// Size of this struct in bytes as the host compiled it; set by
    /// `reptile_trainer_config_default`. Do not change it.
    pub struct_size: usize,
    /// Inner SGD step size α during meta-training (finite, ≥ 0).
    pub inner_lr: f32,
    /// Inner-loop optimizer during meta-training and evaluation (`REPTILE_INNER_OPTIMIZER_*`).
    pub inner_optimizer: reptile_inner_optimizer,
    /// Inner steps k per task during meta-training (≥ 1).
    pub inner_steps: usize,
    /// Inner minibatch size b during meta-training (0 = the whole support set).
    pub inner_batch: usize,
    /// SGD step size at test time (adapt, evaluate).
    pub eval_lr: f32,
    /// The outer update direction (`REPTILE_OUTER_RULE_*`).
    pub outer_rule: reptile_outer_rule,
    /// SGD steps at test time (≥ 1): the paper's protocol, saved with checkpoints. The C
    /// functions take their step counts explicitly (`steps` arguments).
    pub eval_steps: usize,
    /// Minibatch size at test time (0 = the whole support set).
    pub eval_batch: usize,
    /// Tasks per outer step n, used by the built-in samplers' step functions (≥ 1; a step on
    /// a caller-given batch accepts any number of tasks).
    pub meta_batch: usize,
    /// Outer step size ε at iteration 0 (finite).
    pub eps_start: f32,
    /// Outer step size ε at iteration `planned_iterations` (linear in between, constant after).
    pub eps_end: f32,
    /// Iterations over which ε anneals (≥ 1).
    pub planned_iterations: u64,
    /// With `REPTILE_OUTER_RULE_FOMAML`: support points held out for the final inner
    /// minibatch (0 = none). Must be 0 with `REPTILE_OUTER_RULE_REPTILE`.
    pub fomaml_tail: usize,
    /// Seed of the minibatch-order random streams.
    pub seed: u64,
    /// Compute back end (`REPTILE_BACKEND_*`).
    pub backend: reptile_backend,
    /// CUDA device ordinal (with `REPTILE_BACKEND_CUDA`).
    pub cuda_device: u32,
    /// Worker threads of the CPU back end (0 = one per available core). Results do not
    /// depend on it.
    pub threads: usize,
    /// With `REPTILE_INNER_OPTIMIZER_ADAM`: decay β2 of the second-moment estimate, in [0, 1)
    /// (default 0.999).
    pub adam_beta2: f32,
    /// With `REPTILE_INNER_OPTIMIZER_ADAM`: ε added to √v, > 0 (default 1e-8).
    pub adam_eps: f32,
    /// With Adam: where each meta-training task's moments start (`REPTILE_ADAM_MOMENTS_*`,
    /// default CARRY).
    pub train_moments: reptile_adam_moments,
    /// With Adam: where moments start at adaptation and evaluation (default RESET).
    pub eval_moments: reptile_adam_moments,
    /// Added in version 2 of this struct (version 1 ends before it): decoupled decay λ of θ in
    /// the outer step, `θ ← (1 − ε·λ)·(θ + ε·mean_i(θ'_i − θ))`; finite, ≥ 0, with
    /// `ε·λ < 1` at both ends of the ε schedule. Default 0 (the paper's update); a host
    /// built against the version-1 header gets 0.
    pub outer_decay: f32,
}

/// Size of version 1 of `reptile_trainer_config`: every field before `outer_decay`.
const CONFIG_V1_SIZE: usize = std::mem::offset_of!(reptile_trainer_config, outer_decay);
// A v1 host's `sizeof` is that offset rounded up to the struct's alignment; they agree only if
// the offset is already aligned (128 bytes on 64-bit targets), so v1 had no tail padding.
const _: () = assert!(CONFIG_V1_SIZE.is_multiple_of(std::mem::align_of::<reptile_trainer_config>()));

/// The config sizes this library accepts: one per header version that added fields (v1,
/// then v2 with `outer_decay`). When fields are added, append the new size here; an older
/// host's prefix is read over the defaults (`read_config`) and only its bytes are written
/// (`reptile_trainer_config_default`).
const CONFIG_SIZES: [usize; 2] = [CONFIG_V1_SIZE, std::mem::size_of::<reptile_trainer_config>()];

fn moments_code(m: AdamMoments) -> reptile_adam_moments {
    match m {
        AdamMoments::Carry => REPTILE_ADAM_MOMENTS_CARRY,
        AdamMoments::Reset => REPTILE_ADAM_MOMENTS_RESET,
    }
}

fn moments_of(code: reptile_adam_moments, field: &str) -> FfiResult<AdamMoments> {
    match code {
        REPTILE_ADAM_MOMENTS_CARRY => Ok(AdamMoments::Carry),
        REPTILE_ADAM_MOMENTS_RESET => Ok(AdamMoments::Reset),
        other => Err(FfiError::invalid(format!(
            "{field} = {other} is not a reptile_adam_moments (REPTILE_ADAM_MOMENTS_CARRY = 0, \
             REPTILE_ADAM_MOMENTS_RESET = 1)"
        ))),
    }
}

fn default_config() -> reptile_trainer_config {
    let c = ReptileConfig::sine();
    let InnerOptimizer::Adam { beta2: adam_beta2, eps: adam_eps } = InnerOptimizer::ADAM else {
        unreachable!("InnerOptimizer::ADAM is Adam")
    };
    reptile_trainer_config {
        struct_size: std::mem::size_of::<reptile_trainer_config>(),
        inner_lr: c.train.lr,
        inner_optimizer: REPTILE_INNER_OPTIMIZER_SGD,
        inner_steps: c.train.steps,
        inner_batch: c.train.batch_size,
        eval_lr: c.eval.lr,
        outer_rule: REPTILE_OUTER_RULE_REPTILE,
        eval_steps: c.eval.steps,
        eval_batch: c.eval.batch_size,
        meta_batch: c.meta_batch,
        eps_start: c.eps_start,
        eps_end: c.eps_end,
        planned_iterations: c.planned_iters,
        fomaml_tail: 0,
        seed: c.seed,
        backend: REPTILE_BACKEND_CPU,
        cuda_device: 0,
        threads: c.threads,
        adam_beta2,
        adam_eps,
        train_moments: moments_code(c.train_moments),
        eval_moments: moments_code(c.eval_moments),
        outer_decay: c.outer_decay,
    }
}

fn check_struct_size(size: usize) -> FfiResult<()> {
    if CONFIG_SIZES.contains(&size) {
        return Ok(());
    }
    let newest = CONFIG_SIZES[CONFIG_SIZES.len() - 1];
    Err(FfiError::invalid(if size > newest {
        format!(
            "config struct_size is {size} bytes, more than the {newest} this library knows: \
             the host was built against a newer reptile.h than this library"
        )
    } else {
        format!(
            "config struct_size is {size} bytes, not one this library knows ({CONFIG_SIZES:?}); \
             fill the config with reptile_trainer_config_default(sizeof(reptile_trainer_config), &config)"
        )
    }))
}

/// # Safety
/// `p` must be NULL or point to a host config of (at least) its `struct_size` bytes.
unsafe fn read_config(p: *const reptile_trainer_config) -> FfiResult<reptile_trainer_config> {
    // SAFETY: the caller's contract; the first field is a size_t in every version.
    let size = unsafe { arg_ref(p.cast::<usize>(), "config") }?;
    let size = *size;
    check_struct_size(size)?;
    // The host's first `size` bytes over the defaults: every version's fields are a prefix of
    // this version's layout, so an older host's struct fills the fields it knows.
    let mut c = reptile_trainer_config { struct_size: size, ..default_config() };
    // SAFETY: `p` is non-NULL (checked by `arg_ref`) and points to `size` readable bytes (the
    // caller's contract); `size` ≤ size_of::<reptile_trainer_config>() (one of CONFIG_SIZES),
    // so the copy stays inside `c`, and the bytes are a valid prefix of the struct (plain
    // integers and floats at the same offsets in every version).
    unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), (&raw mut c).cast::<u8>(), size) };
    Ok(c)
}

/// The Rust configuration and back end a C config describes.
fn convert_config(c: &reptile_trainer_config) -> FfiResult<(ReptileConfig, Backend)> {
    let inner_optimizer = match c.inner_optimizer {
        REPTILE_INNER_OPTIMIZER_SGD => InnerOptimizer::Sgd,
        REPTILE_INNER_OPTIMIZER_ADAM => {
            for (name, v) in [("adam_beta2", c.adam_beta2), ("adam_eps", c.adam_eps)] {
                if !v.is_finite() {
                    return Err(FfiError::new(reptile_status::NonFinite, format!("non-finite value: {name} = {v}")));
                }
            }
            InnerOptimizer::Adam { beta2: c.adam_beta2, eps: c.adam_eps }
        }
        other => {
            return Err(FfiError::invalid(format!(
                "inner_optimizer = {other} is not a reptile_inner_optimizer (REPTILE_INNER_OPTIMIZER_SGD = 0, \
                 REPTILE_INNER_OPTIMIZER_ADAM = 1)"
            )));
        }
    };
    let train_moments = moments_of(c.train_moments, "train_moments")?;
    let eval_moments = moments_of(c.eval_moments, "eval_moments")?;
    let outer = match (c.outer_rule, c.fomaml_tail) {
        (REPTILE_OUTER_RULE_REPTILE, 0) => OuterRule::Reptile,
        (REPTILE_OUTER_RULE_REPTILE, t) => {
            return Err(FfiError::invalid(format!(
                "fomaml_tail = {t} needs outer_rule = REPTILE_OUTER_RULE_FOMAML (set it to 0 for Reptile)"
            )));
        }
        (REPTILE_OUTER_RULE_FOMAML, t) => OuterRule::Fomaml { tail: (t > 0).then_some(t) },
        (other, _) => {
            return Err(FfiError::invalid(format!(
                "outer_rule = {other} is not a reptile_outer_rule (REPTILE_OUTER_RULE_REPTILE = 0, \
                 REPTILE_OUTER_RULE_FOMAML = 1)"
            )));
        }
    };
    let backend = resolve(c.backend, c.cuda_device)?;
    // Field by field from the defaults, so that settings the C config does not carry (yet)
    // keep their Rust defaults.
    let mut config = ReptileConfig::sine();
    (config.train.lr, config.train.steps, config.train.batch_size) = (c.inner_lr, c.inner_steps, c.inner_batch);
    (config.eval.lr, config.eval.steps, config.eval.batch_size) = (c.eval_lr, c.eval_steps, c.eval_batch);
    config.meta_batch = c.meta_batch;
    config.eps_start = c.eps_start;
    config.eps_end = c.eps_end;
    config.planned_iters = c.planned_iterations;
    config.outer = outer;
    config.seed = c.seed;
    config.threads = c.threads;
    config.inner_optimizer = inner_optimizer;
    config.train_moments = train_moments;
    config.eval_moments = eval_moments;
    config.outer_decay = c.outer_decay;
    config.validate()?;
    Ok((config, backend))
}

/// Fills `*config` with the defaults (see `reptile_trainer_config`). Pass
/// `struct_size = sizeof(reptile_trainer_config)`: the library writes that many bytes, so a
/// host built against an older header gets the fields it knows.
///
/// # Safety
/// `config` must point to `struct_size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_config_default(
    struct_size: usize,
    config: *mut reptile_trainer_config,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { out_ptr(config, "config") }?;
        check_struct_size(struct_size)?;
        let c = reptile_trainer_config { struct_size, ..default_config() };
        // SAFETY: `config` points to `struct_size` writable bytes (the caller's contract), and
        // `struct_size` ≤ size_of::<reptile_trainer_config>() (one of CONFIG_SIZES), so only
        // the fields of the host's version are written.
        unsafe { out.write_prefix(&c, struct_size) };
        Ok(())
    })
}

/// What one outer step did.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct reptile_step_stats {
    /// The iteration this step was (0-based); the trainer's count is now one more.
    pub iteration: u64,
    /// Tasks in the meta-batch.
    pub tasks: u64,
    /// ε used.
    pub epsilon: f32,
    /// Mean over tasks of the first inner minibatch's loss at θ (before adaptation).
    pub loss_before: f32,
    /// Mean over tasks of the same minibatch's loss at θ'_i (after adaptation).
    pub loss_after: f32,
}

impl From<StepStats> for reptile_step_stats {
    fn from(s: StepStats) -> Self {
        reptile_step_stats {
            iteration: s.iteration,
            tasks: s.tasks,
            epsilon: s.epsilon,
            loss_before: s.loss_before,
            loss_after: s.loss_after,
        }
    }
}

/// The scalar part of a split step's delta sum (`reptile_trainer_task_deltas`), to add up
/// across processes along with the float sums.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct reptile_delta_stats {
    /// Number of tasks summed.
    pub tasks: u64,
    /// Sum over tasks of the first-minibatch loss at θ.
    pub loss_before_sum: f64,
    /// Sum over tasks of the same minibatch's loss at θ'.
    pub loss_after_sum: f64,
}

/// Meta-trains a model with Reptile (or first-order MAML) on task batches, adapts it to new
/// tasks and evaluates it.
///
/// Thread safety: a trainer is not thread-safe. Call functions on one trainer from one
/// thread at a time (it may move between threads); distinct trainers are independent. It
/// runs its own pool of `threads` worker threads inside each call; results do not depend on
/// the thread count.
pub struct reptile_trainer {
    trainer: Trainer,
}

/// # Safety
/// `p` must be NULL or a live trainer handle.
pub(crate) unsafe fn trainer_ref<'a>(p: *const reptile_trainer) -> FfiResult<&'a Trainer> {
    // SAFETY: the caller's contract.
    Ok(&unsafe { arg_ref(p, "trainer") }?.trainer)
}

/// # Safety
/// `p` must be NULL or a live trainer handle not used elsewhere during the call.
pub(crate) unsafe fn trainer_mut<'a>(p: *mut reptile_trainer) -> FfiResult<&'a mut Trainer> {
    // SAFETY: the caller's contract.
    Ok(&mut unsafe { arg_mut(p, "trainer") }?.trainer)
}

/// A trainer on the back end the config asks for.
fn build_trainer(model: Model, config: &reptile_trainer_config) -> FfiResult<Trainer> {
    let (config, backend) = convert_config(config)?;
    let mut trainer = Trainer::new(model, config)?;
    if backend != Backend::Cpu {
        trainer.set_device(backend.device())?;
    }
    Ok(trainer)
}

/// The span of a batch's targets, for `check_disjoint`.
fn targets_span<'a>(batch: &crate::meta::TaskBatch<'_>, name: &'a str) -> (usize, usize, &'a str) {
    match batch.y() {
        crate::meta::Targets::Values(v) => span(v.as_ptr(), v.len(), name),
        crate::meta::Targets::Labels(l) => span(l.as_ptr(), l.len(), name),
    }
}

/// Creates a trainer at iteration 0 that meta-trains a copy of `model` (the model handle
/// stays the caller's). With `REPTILE_BACKEND_CUDA` it opens the device and compiles the
/// kernels now, and fails with `REPTILE_STATUS_CUDA_UNAVAILABLE` (the message says why) where
/// CUDA cannot be used, or `REPTILE_STATUS_CUDA` when the model is outside what the CUDA
/// kernels support.
///
/// # Safety
/// `model` must be a live model handle, `config` a config filled by
/// `reptile_trainer_config_default`, `out` writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_new(
    model: *const reptile_model,
    config: *const reptile_trainer_config,
    out: *mut *mut reptile_trainer,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (model, config, out) = unsafe { (arg_ref(model, "model")?, read_config(config)?, out_ptr(out, "out")?) };
        let trainer = build_trainer(model.model.clone(), &config)?;
        out.write(into_handle(reptile_trainer { trainer }));
        Ok(())
    })
}

/// Resumes a run: creates a trainer from the checkpoint at `path` (θ and the iteration count,
/// so ε continues its schedule) with the configuration `config`.
///
/// # Safety
/// `path` must be a NUL-terminated string, `config` a config filled by
/// `reptile_trainer_config_default`, `out` writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_load(
    path: *const c_char,
    config: *const reptile_trainer_config,
    out: *mut *mut reptile_trainer,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (path, config, out) = unsafe { (arg_path(path, "path")?, read_config(config)?, out_ptr(out, "out")?) };
        let c = checkpoint::load(&path)?;
        let mut trainer = build_trainer(c.model, &config)?;
        trainer.set_iteration(c.iteration);
        out.write(into_handle(reptile_trainer { trainer }));
        Ok(())
    })
}

/// Releases a trainer and its worker threads. NULL is a no-op. The handle must not be used
/// afterwards (set your pointer to NULL).
///
/// # Safety
/// `trainer` must be NULL or a live trainer handle, not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_free(trainer: *mut reptile_trainer) {
    // SAFETY: the caller's contract.
    boundary_void(|| unsafe { free_handle(trainer) })
}

/// Saves θ, the configuration and the iteration count to a safetensors checkpoint at `path`
/// (readable by `reptile_trainer_load`, `reptile_model_load` and PyTorch).
///
/// # Safety
/// `trainer` must be a live trainer handle; `path` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_save(trainer: *const reptile_trainer, path: *const c_char) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, path) = unsafe { (trainer_ref(trainer)?, arg_path(path, "path")?) };
        checkpoint::save(&path, t.model(), Some(t.config()), t.iteration())?;
        Ok(())
    })
}

/// One outer iteration on `batch` (any number of tasks): every task adapts from θ with the
/// training inner loop, then `θ ← θ + ε_t·(1/n)·Σ_i(θ'_i − θ)`. `*stats` receives what the
/// step did. On `REPTILE_STATUS_DIVERGED` θ and the iteration count are unchanged.
///
/// # Safety
/// `trainer` must be a live trainer handle; `batch` a valid `reptile_tasks` view; `stats`
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_step(
    trainer: *mut reptile_trainer,
    batch: *const reptile_tasks,
    stats: *mut reptile_step_stats,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, stats) = unsafe { (trainer_mut(trainer)?, out_ptr(stats, "stats")?) };
        // SAFETY: the caller's contract.
        let batch = unsafe { task_batch(t.spec(), batch, "batch") }?;
        stats.write(t.step(&batch)?.into());
        Ok(())
    })
}

/// First half of a split step, for hosts that spread a meta-batch over processes: runs the
/// inner loops of `batch` and writes the sum of its task deltas to `delta_sum`
/// (`n_delta_sum` = the parameter count) and the scalar sums to `*stats`. θ is unchanged.
/// `task_index_offset` is the global index of the batch's first task (0 in one process).
/// Add the sums of all processes, then apply them with `reptile_trainer_apply_delta`.
///
/// # Safety
/// `trainer` must be a live trainer handle; `batch` a valid `reptile_tasks` view;
/// `delta_sum` must point to `n_delta_sum` writable floats, not overlapping the batch;
/// `stats` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_task_deltas(
    trainer: *mut reptile_trainer,
    batch: *const reptile_tasks,
    task_index_offset: u64,
    delta_sum: *mut f32,
    n_delta_sum: usize,
    stats: *mut reptile_delta_stats,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, stats) = unsafe { (trainer_mut(trainer)?, out_ptr(stats, "stats")?) };
        // SAFETY: the caller's contract.
        let batch = unsafe { task_batch(t.spec(), batch, "batch") }?;
        check_disjoint(
            &[span(delta_sum, n_delta_sum, "delta_sum")],
            &[span(batch.x().as_ptr(), batch.x().len(), "batch->x"), targets_span(&batch, "batch")],
        )?;
        // SAFETY: the caller's contract; disjoint from the inputs (checked).
        let dst = unsafe { arg_slice_mut(delta_sum, n_delta_sum, "delta_sum") }?;
        check_count("delta_sum", dst.len(), t.spec().num_params(), "the model's parameter count")?;
        let d = t.task_deltas(&batch, task_index_offset)?;
        dst.copy_from_slice(&d.sum);
        stats.write(reptile_delta_stats {
            tasks: d.tasks,
            loss_before_sum: d.loss_before_sum,
            loss_after_sum: d.loss_after_sum,
        });
        Ok(())
    })
}

/// Second half of a split step: `θ ← θ + ε_t·delta_sum/tasks` with an externally reduced sum
/// (`n_delta_sum` = the parameter count), then the iteration count advances.
/// `reptile_trainer_step` equals `reptile_trainer_task_deltas` + this.
///
/// # Safety
/// `trainer` must be a live trainer handle; `delta_sum` must point to `n_delta_sum` floats;
/// `delta_stats` must point to a `reptile_delta_stats`; `stats` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_apply_delta(
    trainer: *mut reptile_trainer,
    delta_sum: *const f32,
    n_delta_sum: usize,
    delta_stats: *const reptile_delta_stats,
    stats: *mut reptile_step_stats,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, sum, ds, stats) = unsafe {
            (
                trainer_mut(trainer)?,
                arg_slice(delta_sum, n_delta_sum, "delta_sum")?,
                arg_ref(delta_stats, "delta_stats")?,
                out_ptr(stats, "stats")?,
            )
        };
        check_count("delta_sum", sum.len(), t.spec().num_params(), "the model's parameter count")?;
        let delta = DeltaSum {
            sum: sum.to_vec(),
            tasks: ds.tasks,
            loss_before_sum: ds.loss_before_sum,
            loss_after_sum: ds.loss_after_sum,
            moments_sum: Vec::new(),
        };
        stats.write(t.apply_delta(&delta)?.into());
        Ok(())
    })
}

/// Adapts the current θ to one task (`support` holds exactly one task) with `steps` steps of
/// the evaluation inner loop (`eval_lr`, `eval_batch`). `*out` receives the adapted model;
/// predict with `reptile_model_predict` and free it with `reptile_model_free`.
///
/// # Safety
/// `trainer` must be a live trainer handle; `support` a valid `reptile_tasks` view; `out`
/// writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_adapt(
    trainer: *const reptile_trainer,
    support: *const reptile_tasks,
    steps: usize,
    out: *mut *mut reptile_model,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, out) = unsafe { (trainer_ref(trainer)?, out_ptr(out, "out")?) };
        // SAFETY: the caller's contract.
        let support = unsafe { task_batch(t.spec(), support, "support") }?;
        let model = t.adapt(&support, steps)?;
        out.write(into_handle(reptile_model { model }));
        Ok(())
    })
}

/// Adapts the current θ to one task like `reptile_trainer_adapt`, then predicts for `x`
/// (`[points × in]`) into `y` (`[points × out]`), without a model handle. `y` must not
/// overlap `x` or the support set.
///
/// # Safety
/// `trainer` must be a live trainer handle; `support` a valid `reptile_tasks` view; `x` must
/// point to `n_x` floats and `y` to `n_y` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_adapt_predict(
    trainer: *const reptile_trainer,
    support: *const reptile_tasks,
    steps: usize,
    x: *const f32,
    n_x: usize,
    y: *mut f32,
    n_y: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let t = unsafe { trainer_ref(trainer) }?;
        // SAFETY: the caller's contract.
        let support = unsafe { task_batch(t.spec(), support, "support") }?;
        check_disjoint(
            &[span(y, n_y, "y")],
            &[
                span(x, n_x, "x"),
                span(support.x().as_ptr(), support.x().len(), "support->x"),
                targets_span(&support, "support"),
            ],
        )?;
        // SAFETY: the caller's contract; `y` is disjoint from every input (checked).
        let (x, y) = unsafe { (arg_slice(x, n_x, "x")?, arg_slice_mut(y, n_y, "y")?) };
        // Check the prediction shapes before spending the adaptation.
        let (d_in, d_out) = (t.spec().in_dim(), t.spec().out_dim());
        if !x.is_empty() && x.len().is_multiple_of(d_in) {
            check_count("y", y.len(), x.len() / d_in * d_out, "the points of x × outputs")?;
        }
        let model = t.adapt(&support, steps)?;
        predict_into(&model, x, y)
    })
}

/// Adapts θ to every task's support set with the evaluation inner loop and scores its query
/// set after each step count in `steps` (`n_steps ≥ 1`, strictly ascending; 0 scores θ
/// itself). `support` and `query` hold the same number of tasks (task `i` of each belongs
/// together; point counts may differ). `*out` receives a report to read with
/// `reptile_eval_report_*` and free with `reptile_eval_report_free`. A diverging adaptation
/// shows as NaN/Inf in the report. θ is unchanged.
///
/// # Safety
/// `trainer` must be a live trainer handle; `support`/`query` valid `reptile_tasks` views;
/// `steps` must point to `n_steps` values; `out` writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_evaluate(
    trainer: *const reptile_trainer,
    support: *const reptile_tasks,
    query: *const reptile_tasks,
    steps: *const usize,
    n_steps: usize,
    out: *mut *mut reptile_eval_report,
) -> reptile_status {
    // SAFETY: the caller's contract, which is that of `reptile_trainer_evaluate_views`; one
    // view per query point is plain scoring.
    unsafe { reptile_trainer_evaluate_views(trainer, support, query, 1, steps, n_steps, out) }
}

/// [`reptile_trainer_evaluate`] with test-time query views: each task's query set holds
/// `query_views ≥ 1` blocks of `q = points / query_views` points, block `v` holding view `v`
/// of each of the `q` query points (block 0 the points themselves; every view with its point's
/// target). Each query point is scored by the adapted net's mean prediction over its views (the
/// mean of the softmax probabilities for classification, the mean output for regression), on
/// its own: no transduction. Accuracies count the `q` points. `query_views = 1` is
/// `reptile_trainer_evaluate`. A view count that does not divide the query points, or a view
/// with another target than its point, is `REPTILE_STATUS_SHAPE_MISMATCH` /
/// `REPTILE_STATUS_INVALID_ARGUMENT`.
///
/// # Safety
/// As [`reptile_trainer_evaluate`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_evaluate_views(
    trainer: *const reptile_trainer,
    support: *const reptile_tasks,
    query: *const reptile_tasks,
    query_views: usize,
    steps: *const usize,
    n_steps: usize,
    out: *mut *mut reptile_eval_report,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, steps, out) =
            unsafe { (trainer_ref(trainer)?, arg_slice(steps, n_steps, "steps")?, out_ptr(out, "out")?) };
        // SAFETY: the caller's contract.
        let (support, query) =
            unsafe { (task_batch(t.spec(), support, "support")?, task_batch(t.spec(), query, "query")?) };
        let tasks = EvalTasks::new(support, query)?.with_query_views(query_views)?;
        let report = t.evaluate_at(&tasks, steps)?;
        out.write(into_handle(reptile_eval_report { report }));
        Ok(())
    })
}

/// Writes the number of completed outer iterations to `*out`.
///
/// # Safety
/// `trainer` must be a live trainer handle; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_iteration(trainer: *const reptile_trainer, out: *mut u64) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, out) = unsafe { (trainer_ref(trainer)?, out_ptr(out, "out")?) };
        out.write(t.iteration());
        Ok(())
    })
}

/// Sets the iteration count (to resume a run: ε continues its schedule from there).
///
/// # Safety
/// `trainer` must be a live trainer handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_set_iteration(
    trainer: *mut reptile_trainer,
    iteration: u64,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        unsafe { trainer_mut(trainer) }?.set_iteration(iteration);
        Ok(())
    })
}

/// Writes the statistics of the last successful step (its losses, ε, iteration) to `*out`;
/// fails with `REPTILE_STATUS_INVALID_STATE` before the first step.
///
/// # Safety
/// `trainer` must be a live trainer handle; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_last_stats(
    trainer: *const reptile_trainer,
    out: *mut reptile_step_stats,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, out) = unsafe { (trainer_ref(trainer)?, out_ptr(out, "out")?) };
        let s = t.last_stats().ok_or_else(|| FfiError::state("no outer step has completed on this trainer yet"))?;
        out.write(s.into());
        Ok(())
    })
}

/// Writes ε at outer iteration `iteration` (`ε₀ + (ε_final − ε₀)·min(iteration/T, 1)`) to
/// `*out`.
///
/// # Safety
/// `trainer` must be a live trainer handle; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_epsilon(
    trainer: *const reptile_trainer,
    iteration: u64,
    out: *mut f32,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, out) = unsafe { (trainer_ref(trainer)?, out_ptr(out, "out")?) };
        out.write(t.config().epsilon(iteration));
        Ok(())
    })
}

/// Writes the back end the trainer's meta-training steps run on to `*backend`
/// (`REPTILE_BACKEND_*`) and its CUDA device ordinal to `*cuda_device` (0 for the CPU).
///
/// # Safety
/// `trainer` must be a live trainer handle; `backend` and `cuda_device` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_backend(
    trainer: *const reptile_trainer,
    backend: *mut reptile_backend,
    cuda_device: *mut u32,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, b, d) =
            unsafe { (trainer_ref(trainer)?, out_ptr(backend, "backend")?, out_ptr(cuda_device, "cuda_device")?) };
        let (code, n) = match t.device() {
            Device::Cpu => (REPTILE_BACKEND_CPU, 0),
            Device::Cuda(n) => (REPTILE_BACKEND_CUDA, n),
        };
        let n = u32::try_from(n).map_err(|_| FfiError::invalid(format!("CUDA device {n} does not fit a uint32_t")))?;
        b.write(code);
        d.write(n);
        Ok(())
    })
}

/// Moves the trainer's meta-training steps to another back end (`REPTILE_BACKEND_*`; with
/// `REPTILE_BACKEND_CUDA`, device `cuda_device`). θ and the iteration count are kept. On
/// failure (`REPTILE_STATUS_CUDA_UNAVAILABLE` where CUDA cannot be used) the trainer stays on
/// its current back end.
///
/// # Safety
/// `trainer` must be a live trainer handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_set_backend(
    trainer: *mut reptile_trainer,
    backend: reptile_backend,
    cuda_device: u32,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let t = unsafe { trainer_mut(trainer) }?;
        t.set_device(resolve(backend, cuda_device)?.device())?;
        Ok(())
    })
}

/// Writes the number of worker threads in use to `*out`.
///
/// # Safety
/// `trainer` must be a live trainer handle; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_threads(trainer: *const reptile_trainer, out: *mut usize) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, out) = unsafe { (trainer_ref(trainer)?, out_ptr(out, "out")?) };
        out.write(t.threads());
        Ok(())
    })
}

/// Writes the parameter count of the trained model to `*out`.
///
/// # Safety
/// `trainer` must be a live trainer handle; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_num_params(
    trainer: *const reptile_trainer,
    out: *mut usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, out) = unsafe { (trainer_ref(trainer)?, out_ptr(out, "out")?) };
        out.write(t.spec().num_params());
        Ok(())
    })
}

/// Copies the current θ to `params` (`n_params` = the parameter count).
///
/// # Safety
/// `trainer` must be a live trainer handle; `params` must point to `n_params` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_get_params(
    trainer: *const reptile_trainer,
    params: *mut f32,
    n_params: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, dst) = unsafe { (trainer_ref(trainer)?, arg_slice_mut(params, n_params, "params")?) };
        check_count("params", dst.len(), t.spec().num_params(), "the model's parameter count")?;
        dst.copy_from_slice(t.params());
        Ok(())
    })
}

/// Replaces θ (`n_params` = the parameter count, every value finite); the iteration count
/// is kept. On failure θ is unchanged.
///
/// # Safety
/// `trainer` must be a live trainer handle; `params` must point to `n_params` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_set_params(
    trainer: *mut reptile_trainer,
    params: *const f32,
    n_params: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, src) = unsafe { (trainer_mut(trainer)?, arg_slice(params, n_params, "params")?) };
        check_count("params", src.len(), t.spec().num_params(), "the model's parameter count")?;
        t.set_params(src)?;
        Ok(())
    })
}

/// Writes a copy of the current model (spec and θ) to `*out`, a new model handle.
///
/// # Safety
/// `trainer` must be a live trainer handle; `out` writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_model(
    trainer: *const reptile_trainer,
    out: *mut *mut reptile_model,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, out) = unsafe { (trainer_ref(trainer)?, out_ptr(out, "out")?) };
        out.write(into_handle(reptile_model { model: t.model().clone() }));
        Ok(())
    })
}
