//! `reptile_eval_report`: the result of an evaluation.

use super::boundary::{FfiError, FfiResult, arg_ref, arg_slice_mut, boundary, boundary_void, free_handle, out_ptr};
use super::model::check_count;
use super::status::reptile_status;
use crate::meta::EvalReport;

/// Per-task query losses (and accuracies, for classification) after each requested number of
/// adaptation steps ("checkpoints", indexed `0..n_checkpoints` in the order of the `steps`
/// given to the evaluation).
///
/// Thread safety: a report is immutable; any number of threads may read it at once.
/// `reptile_eval_report_free` needs exclusive access.
pub struct reptile_eval_report {
    pub(crate) report: EvalReport,
}

/// # Safety
/// `p` must be NULL or a live report handle.
unsafe fn report_ref<'a>(p: *const reptile_eval_report) -> FfiResult<&'a EvalReport> {
    // SAFETY: the caller's contract.
    Ok(&unsafe { arg_ref(p, "report") }?.report)
}

fn check_checkpoint(r: &EvalReport, checkpoint: usize) -> FfiResult<()> {
    if checkpoint >= r.steps.len() {
        return Err(FfiError::invalid(format!(
            "checkpoint {checkpoint} is out of range: the report has {} (steps {:?})",
            r.steps.len(),
            r.steps
        )));
    }
    Ok(())
}

fn report_accuracies(r: &EvalReport) -> FfiResult<&[f32]> {
    r.accuracies.as_deref().ok_or_else(|| {
        FfiError::state(
            "this report has no accuracies: it comes from a regression (MSE) model; accuracy is for cross-entropy",
        )
    })
}

/// Releases a report. NULL is a no-op.
///
/// # Safety
/// `report` must be NULL or a live report handle, not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_eval_report_free(report: *mut reptile_eval_report) {
    // SAFETY: the caller's contract.
    boundary_void(|| unsafe { free_handle(report) })
}

/// Writes the number of evaluated tasks to `*out`.
///
/// # Safety
/// `report` must be a live report handle; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_eval_report_n_tasks(
    report: *const reptile_eval_report,
    out: *mut usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (r, out) = unsafe { (report_ref(report)?, out_ptr(out, "out")?) };
        out.write(r.n_tasks);
        Ok(())
    })
}

/// Writes the number of checkpoints (step counts scored) to `*out`.
///
/// # Safety
/// `report` must be a live report handle; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_eval_report_n_checkpoints(
    report: *const reptile_eval_report,
    out: *mut usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (r, out) = unsafe { (report_ref(report)?, out_ptr(out, "out")?) };
        out.write(r.steps.len());
        Ok(())
    })
}

/// Copies the step count of every checkpoint to `steps` (`n_steps` = the number of
/// checkpoints).
///
/// # Safety
/// `report` must be a live report handle; `steps` must point to `n_steps` writable values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_eval_report_steps(
    report: *const reptile_eval_report,
    steps: *mut usize,
    n_steps: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (r, dst) = unsafe { (report_ref(report)?, arg_slice_mut(steps, n_steps, "steps")?) };
        check_count("steps", dst.len(), r.steps.len(), "the report's checkpoint count")?;
        dst.copy_from_slice(&r.steps);
        Ok(())
    })
}

/// Writes the mean query loss over tasks at checkpoint `checkpoint` to `*out`.
///
/// # Safety
/// `report` must be a live report handle; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_eval_report_mean_loss(
    report: *const reptile_eval_report,
    checkpoint: usize,
    out: *mut f32,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (r, out) = unsafe { (report_ref(report)?, out_ptr(out, "out")?) };
        check_checkpoint(r, checkpoint)?;
        out.write(r.mean_loss(checkpoint));
        Ok(())
    })
}

/// Writes the median query loss over tasks at checkpoint `checkpoint` to `*out`.
///
/// # Safety
/// `report` must be a live report handle; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_eval_report_median_loss(
    report: *const reptile_eval_report,
    checkpoint: usize,
    out: *mut f32,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (r, out) = unsafe { (report_ref(report)?, out_ptr(out, "out")?) };
        check_checkpoint(r, checkpoint)?;
        out.write(r.median_loss(checkpoint));
        Ok(())
    })
}

/// Writes the mean query accuracy (fraction of points classified correctly) at checkpoint
/// `checkpoint` to `*out`. Fails with `REPTILE_STATUS_INVALID_STATE` for a regression report.
///
/// # Safety
/// `report` must be a live report handle; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_eval_report_mean_accuracy(
    report: *const reptile_eval_report,
    checkpoint: usize,
    out: *mut f32,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (r, out) = unsafe { (report_ref(report)?, out_ptr(out, "out")?) };
        check_checkpoint(r, checkpoint)?;
        report_accuracies(r)?;
        out.write(r.mean_accuracy(checkpoint).unwrap_or(f32::NAN));
        Ok(())
    })
}

/// Writes the half-width of the 95% confidence interval of the mean accuracy
/// (`1.96·sd/√n`) at checkpoint `checkpoint` to `*out`. Fails with
/// `REPTILE_STATUS_INVALID_STATE` for a regression report.
///
/// # Safety
/// `report` must be a live report handle; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_eval_report_accuracy_ci95(
    report: *const reptile_eval_report,
    checkpoint: usize,
    out: *mut f32,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (r, out) = unsafe { (report_ref(report)?, out_ptr(out, "out")?) };
        check_checkpoint(r, checkpoint)?;
        report_accuracies(r)?;
        out.write(r.accuracy_ci95(checkpoint).unwrap_or(f32::NAN));
        Ok(())
    })
}

/// Copies every task's query loss at checkpoint `checkpoint` to `losses` (`n_losses` = the
/// number of tasks), in task order.
///
/// # Safety
/// `report` must be a live report handle; `losses` must point to `n_losses` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_eval_report_losses(
    report: *const reptile_eval_report,
    checkpoint: usize,
    losses: *mut f32,
    n_losses: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (r, dst) = unsafe { (report_ref(report)?, arg_slice_mut(losses, n_losses, "losses")?) };
        check_checkpoint(r, checkpoint)?;
        check_count("losses", dst.len(), r.n_tasks, "the report's task count")?;
        dst.copy_from_slice(&r.losses_at(checkpoint));
        Ok(())
    })
}

/// Copies every task's query accuracy at checkpoint `checkpoint` to `accuracies`
/// (`n_accuracies` = the number of tasks). Fails with `REPTILE_STATUS_INVALID_STATE` for a
/// regression report.
///
/// # Safety
/// `report` must be a live report handle; `accuracies` must point to `n_accuracies` writable
/// floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_eval_report_accuracies(
    report: *const reptile_eval_report,
    checkpoint: usize,
    accuracies: *mut f32,
    n_accuracies: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (r, dst) = unsafe { (report_ref(report)?, arg_slice_mut(accuracies, n_accuracies, "accuracies")?) };
        check_checkpoint(r, checkpoint)?;
        let acc = report_accuracies(r)?;
        check_count("accuracies", dst.len(), r.n_tasks, "the report's task count")?;
        let s = r.steps.len();
        for (d, v) in dst.iter_mut().zip(acc.iter().skip(checkpoint).step_by(s)) {
            *d = *v;
        }
        Ok(())
    })
}
