//! `reptile_sine_sampler`: the sine-wave regression tasks of the Reptile paper, for C hosts.

use super::boundary::{
    FfiError, FfiResult, arg_mut, arg_slice_mut, boundary, boundary_void, check_disjoint, free_handle, into_handle,
    out_ptr, span,
};
use super::eval::reptile_eval_report;
use super::model::check_count;
use super::status::reptile_status;
use super::trainer::{reptile_step_stats, reptile_trainer, trainer_mut, trainer_ref};
use crate::meta::{Targets, TaskBatch};
use crate::spec::{Activation, Loss, MlpSpec};
use crate::workloads::sine::{self, SineTasks};

/// Points of the sine grid `linspace(−5, 5, 50)`: every training task and every evaluation
/// query set has this many points.
pub const REPTILE_SINE_GRID_POINTS: usize = 50;
const _: () = assert!(REPTILE_SINE_GRID_POINTS == sine::GRID_POINTS);

/// A seeded stream of sine tasks `y = A·sin(x + φ)`, `A ~ U[0.1, 5]`, `φ ~ U[0, 2π]`
/// (portable: a seed gives the same tasks on every platform). Training tasks use all
/// `REPTILE_SINE_GRID_POINTS` grid points; evaluation tasks adapt on `shots` grid points
/// drawn without replacement and are scored on the whole grid. Models for it have one input,
/// one output and MSE loss (the paper's is 1-64-64-1, tanh).
///
/// Thread safety: not thread-safe (every draw advances the stream): one thread at a time.
/// Distinct samplers are independent.
pub struct reptile_sine_sampler {
    tasks: SineTasks,
}

/// The 1-in, 1-out MSE spec the sampler's batches are built for.
fn sine_spec() -> MlpSpec {
    MlpSpec::new(&[1, 1], Activation::Tanh, Loss::Mse).expect("the 1-1 spec is valid")
}

fn check_sine_model(spec: &MlpSpec) -> FfiResult<()> {
    if spec.in_dim() != 1 || spec.out_dim() != 1 || spec.loss() != Loss::Mse {
        return Err(FfiError::shape(format!(
            "the sine workload needs a model with 1 input, 1 output and MSE loss; this one has widths {:?} and {:?}",
            spec.widths(),
            spec.loss()
        )));
    }
    Ok(())
}

fn values<'a>(b: &'a TaskBatch<'_>) -> &'a [f32] {
    match b.y() {
        Targets::Values(v) => v,
        Targets::Labels(_) => unreachable!("sine batches are regression batches"),
    }
}

/// # Safety
/// `p` must be NULL or a live sampler handle not used elsewhere during the call.
unsafe fn sampler_mut<'a>(p: *mut reptile_sine_sampler) -> FfiResult<&'a mut SineTasks> {
    // SAFETY: the caller's contract.
    Ok(&mut unsafe { arg_mut(p, "sampler") }?.tasks)
}

/// Creates a sampler drawing tasks from the portable random stream of `seed`.
///
/// # Safety
/// `out` must point to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_sine_sampler_new(seed: u64, out: *mut *mut reptile_sine_sampler) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { out_ptr(out, "out") }?;
        out.write(into_handle(reptile_sine_sampler { tasks: SineTasks::new(seed) }));
        Ok(())
    })
}

/// Releases a sampler. NULL is a no-op.
///
/// # Safety
/// `sampler` must be NULL or a live sampler handle, not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_sine_sampler_free(sampler: *mut reptile_sine_sampler) {
    // SAFETY: the caller's contract.
    boundary_void(|| unsafe { free_handle(sampler) })
}

/// Copies the grid `linspace(−5, 5, 50)` to `x` (`n_x = REPTILE_SINE_GRID_POINTS`).
///
/// # Safety
/// `x` must point to `n_x` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_sine_grid(x: *mut f32, n_x: usize) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let x = unsafe { arg_slice_mut(x, n_x, "x") }?;
        check_count("x", x.len(), REPTILE_SINE_GRID_POINTS, "the sine grid")?;
        x.copy_from_slice(&sine::grid());
        Ok(())
    })
}

/// Draws one task's parameters: `*amplitude` = A, `*phase` = φ (`y = A·sin(x + φ)`).
///
/// # Safety
/// `sampler` must be a live sampler handle; `amplitude` and `phase` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_sine_sampler_sample(
    sampler: *mut reptile_sine_sampler,
    amplitude: *mut f32,
    phase: *mut f32,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (s, a, p) = unsafe { (sampler_mut(sampler)?, out_ptr(amplitude, "amplitude")?, out_ptr(phase, "phase")?) };
        let t = s.sample();
        a.write(t.amplitude);
        p.write(t.phase);
        Ok(())
    })
}

/// Draws `n_tasks` training tasks on the grid and writes their inputs to `x` and targets to
/// `y`, `[n_tasks × 50 × 1]` each (`n_x = n_y = n_tasks · REPTILE_SINE_GRID_POINTS`): a batch
/// for `reptile_trainer_step` with `n_points = REPTILE_SINE_GRID_POINTS`.
///
/// # Safety
/// `sampler` must be a live sampler handle; `x` and `y` must point to `n_x` and `n_y`
/// writable floats and not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_sine_sampler_train_batch(
    sampler: *mut reptile_sine_sampler,
    n_tasks: usize,
    x: *mut f32,
    n_x: usize,
    y: *mut f32,
    n_y: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { sampler_mut(sampler) }?;
        check_disjoint(&[span(x, n_x, "x"), span(y, n_y, "y")], &[])?;
        // SAFETY: the caller's contract; disjoint (checked).
        let (x, y) = unsafe { (arg_slice_mut(x, n_x, "x")?, arg_slice_mut(y, n_y, "y")?) };
        if n_tasks == 0 {
            return Err(FfiError::invalid("n_tasks must be at least 1"));
        }
        let want = n_tasks
            .checked_mul(REPTILE_SINE_GRID_POINTS)
            .ok_or_else(|| FfiError::invalid(format!("n_tasks = {n_tasks} is too large")))?;
        let what = format!("{n_tasks} tasks × {REPTILE_SINE_GRID_POINTS} points");
        check_count("x", x.len(), want, &what)?;
        check_count("y", y.len(), want, &what)?;
        let batch = s.train_batch(&sine_spec(), n_tasks)?;
        x.copy_from_slice(batch.x());
        y.copy_from_slice(values(&batch));
        Ok(())
    })
}

/// Draws `n_tasks` evaluation tasks. Support sets: `shots` grid points per task drawn without
/// replacement (`1 ≤ shots ≤ 50`), written to `support_x`/`support_y`
/// (`n_tasks · shots` floats each). Query sets: the whole grid, written to
/// `query_x`/`query_y` (`n_tasks · REPTILE_SINE_GRID_POINTS` floats each). Pass them to
/// `reptile_trainer_evaluate` with `n_points = shots` and `REPTILE_SINE_GRID_POINTS`.
///
/// # Safety
/// `sampler` must be a live sampler handle; each buffer must point to its count of writable
/// floats, and no two may overlap.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn reptile_sine_sampler_eval_tasks(
    sampler: *mut reptile_sine_sampler,
    n_tasks: usize,
    shots: usize,
    support_x: *mut f32,
    n_support_x: usize,
    support_y: *mut f32,
    n_support_y: usize,
    query_x: *mut f32,
    n_query_x: usize,
    query_y: *mut f32,
    n_query_y: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { sampler_mut(sampler) }?;
        check_disjoint(
            &[
                span(support_x, n_support_x, "support_x"),
                span(support_y, n_support_y, "support_y"),
                span(query_x, n_query_x, "query_x"),
                span(query_y, n_query_y, "query_y"),
            ],
            &[],
        )?;
        // SAFETY: the caller's contract; pairwise disjoint (checked).
        let (sx, sy, qx, qy) = unsafe {
            (
                arg_slice_mut(support_x, n_support_x, "support_x")?,
                arg_slice_mut(support_y, n_support_y, "support_y")?,
                arg_slice_mut(query_x, n_query_x, "query_x")?,
                arg_slice_mut(query_y, n_query_y, "query_y")?,
            )
        };
        if n_tasks == 0 {
            return Err(FfiError::invalid("n_tasks must be at least 1"));
        }
        if shots == 0 || shots > REPTILE_SINE_GRID_POINTS {
            return Err(FfiError::invalid(format!(
                "shots = {shots} must be in 1..={REPTILE_SINE_GRID_POINTS} (support points are drawn from the grid)"
            )));
        }
        let too_large = || FfiError::invalid(format!("n_tasks = {n_tasks} is too large"));
        let ws = n_tasks.checked_mul(shots).ok_or_else(too_large)?;
        let wq = n_tasks.checked_mul(REPTILE_SINE_GRID_POINTS).ok_or_else(too_large)?;
        let (what_s, what_q) = (
            format!("{n_tasks} tasks × {shots} shots"),
            format!("{n_tasks} tasks × {REPTILE_SINE_GRID_POINTS} points"),
        );
        check_count("support_x", sx.len(), ws, &what_s)?;
        check_count("support_y", sy.len(), ws, &what_s)?;
        check_count("query_x", qx.len(), wq, &what_q)?;
        check_count("query_y", qy.len(), wq, &what_q)?;
        let tasks = s.eval_tasks(&sine_spec(), n_tasks, shots)?;
        sx.copy_from_slice(tasks.support().x());
        sy.copy_from_slice(values(tasks.support()));
        qx.copy_from_slice(tasks.query().x());
        qy.copy_from_slice(values(tasks.query()));
        Ok(())
    })
}

/// One outer step of `trainer` on `meta_batch` (from its config) fresh training tasks drawn
/// from `sampler`, without copying them through the host. The trainer's model must have one
/// input, one output and MSE loss.
///
/// # Safety
/// `trainer` and `sampler` must be live handles; `stats` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_step_sine(
    trainer: *mut reptile_trainer,
    sampler: *mut reptile_sine_sampler,
    stats: *mut reptile_step_stats,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, s, stats) = unsafe { (trainer_mut(trainer)?, sampler_mut(sampler)?, out_ptr(stats, "stats")?) };
        check_sine_model(t.spec())?;
        let batch = s.train_batch(t.spec(), t.config().meta_batch)?;
        stats.write(t.step(&batch)?.into());
        Ok(())
    })
}

/// Runs `iterations` (≥ 1) iterations of sine-wave meta-training kept on the trainer's CUDA
/// device: each iteration draws `meta_batch` tasks on the GPU (Philox keyed by `seed`, not
/// a `reptile_sine_sampler`'s stream), runs their inner loops and the outer step there, with
/// no host round-trip per iteration; serial Reptile (`meta_batch` 1) runs a thousand
/// iterations per kernel launch. It continues from the trainer's θ and iteration count with
/// its config (ε schedule, outer rule, outer decay) and is statistically equivalent to as
/// many `reptile_trainer_step_sine` calls, not identical to them. This is the fast way to
/// meta-train the sine workload on a GPU (timings in the project's BENCHMARKS.md); call it in
/// chunks of iterations to report progress.
///
/// Writes the last iteration's losses to `losses` (`n_losses` = 2·`meta_batch`): for each
/// task, the loss before and after its adaptation.
///
/// Needs a model with 1 input, 1 output and MSE loss (else `REPTILE_STATUS_SHAPE_MISMATCH`),
/// SGD inner steps, no FOMAML tail and inner minibatches of 1–50 points (else
/// `REPTILE_STATUS_INVALID_ARGUMENT`), and the CUDA back end (`config.backend` or
/// `reptile_trainer_set_backend`; on the CPU back end `REPTILE_STATUS_INVALID_ARGUMENT`). These
/// are checked before anything runs, and on any of these errors θ and the iteration count
/// are unchanged. On `REPTILE_STATUS_DIVERGED` (a non-finite update) θ keeps its last finite
/// value and the iteration count stops at the failing iteration, unlike
/// `reptile_trainer_step`, which then changes neither; `losses` is not written.
///
/// # Safety
/// `trainer` must be a live trainer handle; `losses` must point to `n_losses` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_train_sine_resident(
    trainer: *mut reptile_trainer,
    iterations: u32,
    seed: u64,
    losses: *mut f32,
    n_losses: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, dst) = unsafe { (trainer_mut(trainer)?, arg_slice_mut(losses, n_losses, "losses")?) };
        check_sine_model(t.spec())?;
        let n = t.config().meta_batch;
        check_count("losses", dst.len(), n.saturating_mul(2), "2 × the config's meta_batch")?;
        // The iteration count, the config and the back end are checked by the trainer, in that
        // order, before anything runs.
        let got = t.train_sine_resident(iterations, seed)?;
        check_count("losses", got.len(), dst.len(), "2 × the config's meta_batch")?;
        dst.copy_from_slice(&got);
        Ok(())
    })
}

/// Evaluates `trainer` with the paper's sine protocol: draws `n_tasks` evaluation tasks from
/// `sampler` (`shots` support points each, scored on the whole grid) and scores them after
/// each step count in `steps` (strictly ascending), as `reptile_trainer_evaluate` does.
///
/// # Safety
/// `trainer` and `sampler` must be live handles; `steps` must point to `n_steps` values;
/// `out` writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_trainer_evaluate_sine(
    trainer: *const reptile_trainer,
    sampler: *mut reptile_sine_sampler,
    n_tasks: usize,
    shots: usize,
    steps: *const usize,
    n_steps: usize,
    out: *mut *mut reptile_eval_report,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (t, s, steps, out) = unsafe {
            (
                trainer_ref(trainer)?,
                sampler_mut(sampler)?,
                super::boundary::arg_slice(steps, n_steps, "steps")?,
                out_ptr(out, "out")?,
            )
        };
        check_sine_model(t.spec())?;
        if n_tasks == 0 {
            return Err(FfiError::invalid("n_tasks must be at least 1"));
        }
        let tasks = s.eval_tasks(t.spec(), n_tasks, shots)?;
        let report = t.evaluate_at(&tasks, steps)?;
        out.write(into_handle(reptile_eval_report { report }));
        Ok(())
    })
}
