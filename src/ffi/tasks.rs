//! The borrowed task-batch view that steps, adaptation and evaluation take.

use super::boundary::{FfiError, FfiResult, arg_ref, arg_slice};
use crate::meta::{Targets, TaskBatch};
use crate::spec::MlpSpec;
use std::borrow::Cow;

/// A batch of `n_tasks` tasks with `n_points` points each, borrowed from the host (nothing is
/// copied; the arrays must stay valid and unchanged for the duration of the call that takes
/// the view, and not longer). All arrays are contiguous, row-major, task by task:
///
/// - `x`: inputs, `n_x = n_tasks · n_points · in` floats (`in` = the model's first width);
/// - for MSE models, `y`: targets, `n_y = n_tasks · n_points · out` floats, and `labels` NULL;
/// - for cross-entropy models, `labels`: classes in `0..out`, `n_labels = n_tasks · n_points`,
///   and `y` NULL.
///
/// Counts are checked exactly against the model, every value must be finite.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct reptile_tasks {
    /// Number of tasks (at least 1).
    pub n_tasks: usize,
    /// Points per task (at least 1).
    pub n_points: usize,
    /// Inputs `[n_tasks × n_points × in]`.
    pub x: *const f32,
    /// Number of floats in `x`.
    pub n_x: usize,
    /// Regression targets `[n_tasks × n_points × out]`, or NULL for a classification batch.
    pub y: *const f32,
    /// Number of floats in `y` (0 when `y` is NULL).
    pub n_y: usize,
    /// Class labels `[n_tasks × n_points]`, or NULL for a regression batch.
    pub labels: *const u32,
    /// Number of labels (0 when `labels` is NULL).
    pub n_labels: usize,
}

/// Builds a borrowed, checked [`TaskBatch`] from the host's view at `p` (`name` names it in
/// messages).
///
/// # Safety
/// `p` must be NULL or point to a `reptile_tasks` whose non-NULL arrays hold the counts it
/// states, valid and unchanged for `'a`.
pub(crate) unsafe fn task_batch<'a>(spec: &MlpSpec, p: *const reptile_tasks, name: &str) -> FfiResult<TaskBatch<'a>> {
    // SAFETY: the caller's contract for `p`.
    let t = unsafe { arg_ref(p, name) }?;
    // SAFETY: the caller's contract for the arrays of the view.
    let x = unsafe { arg_slice(t.x, t.n_x, &format!("{name}->x")) }?;
    let targets = match (t.y.is_null(), t.labels.is_null()) {
        (false, true) => {
            // SAFETY: as above.
            Targets::Values(Cow::Borrowed(unsafe { arg_slice(t.y, t.n_y, &format!("{name}->y")) }?))
        }
        (true, false) => {
            // SAFETY: as above.
            Targets::Labels(Cow::Borrowed(unsafe { arg_slice(t.labels, t.n_labels, &format!("{name}->labels")) }?))
        }
        (true, true) => {
            return Err(FfiError::new(
                super::status::reptile_status::NullArgument,
                format!(
                    "null argument: {name}->y and {name}->labels are both NULL \
                     (give real-valued targets for MSE or class labels for cross-entropy)"
                ),
            ));
        }
        (false, false) => {
            return Err(FfiError::invalid(format!(
                "{name}->y and {name}->labels are both set; a batch has targets or labels, not both"
            )));
        }
    };
    Ok(TaskBatch::new(spec, t.n_tasks, t.n_points, Cow::Borrowed(x), targets)?)
}
