//! Task batches: contiguous row-major arrays `[n_tasks × n_points × dim]`, checked once at
//! construction against a spec.

use crate::cpu::mlp::Tgt;
use crate::error::{Error, Result, check_finite};
use crate::spec::{Loss, MlpSpec};
use std::borrow::Cow;

/// Targets of a task batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets<'a> {
    /// Regression targets `[n_tasks × n_points × out]` (MSE).
    Values(Cow<'a, [f32]>),
    /// Class labels `[n_tasks × n_points]`, each `< out` (softmax cross-entropy).
    Labels(Cow<'a, [u32]>),
}

/// `n_tasks` tasks of `n_points` points each: inputs `x` `[n_tasks × n_points × in]` row-major
/// and their targets. Borrows or owns its data (`Cow`).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskBatch<'a> {
    n_tasks: usize,
    points: usize,
    in_dim: usize,
    out_dim: usize,
    x: Cow<'a, [f32]>,
    y: Targets<'a>,
}

/// Most tasks in one batch (keeps per-task random streams distinct).
pub const MAX_TASKS: usize = 1 << 24;

impl<'a> TaskBatch<'a> {
    /// Checks shapes against `spec` (lengths, target kind for its loss, labels in range) and
    /// that every value is finite.
    pub fn new(
        spec: &MlpSpec,
        n_tasks: usize,
        n_points: usize,
        x: impl Into<Cow<'a, [f32]>>,
        y: Targets<'a>,
    ) -> Result<Self> {
        let x = x.into();
        if n_tasks == 0 || n_points == 0 {
            return Err(Error::InvalidArgument(format!(
                "a task batch needs at least one task and one point (got {n_tasks} tasks × {n_points} points)"
            )));
        }
        if n_tasks > MAX_TASKS {
            return Err(Error::InvalidArgument(format!("{n_tasks} tasks > {MAX_TASKS}")));
        }
        let (d_in, d_out) = (spec.in_dim(), spec.out_dim());
        let rows = n_tasks.checked_mul(n_points).ok_or_else(|| Error::InvalidArgument("batch too large".into()))?;
        if Some(x.len()) != rows.checked_mul(d_in) {
            return Err(Error::ShapeMismatch(format!(
                "x has {} values, expected n_tasks·n_points·in = {n_tasks}·{n_points}·{d_in}",
                x.len()
            )));
        }
        check_finite(&x, "x")?;
        match (&y, spec.loss()) {
            (Targets::Values(v), Loss::Mse) => {
                if Some(v.len()) != rows.checked_mul(d_out) {
                    return Err(Error::ShapeMismatch(format!(
                        "y has {} values, expected n_tasks·n_points·out = {n_tasks}·{n_points}·{d_out}",
                        v.len()
                    )));
                }
                check_finite(v, "y")?;
            }
            (Targets::Labels(l), Loss::SoftmaxCrossEntropy) => {
                if l.len() != rows {
                    return Err(Error::ShapeMismatch(format!(
                        "{} labels, expected n_tasks·n_points = {n_tasks}·{n_points}",
                        l.len()
                    )));
                }
                if let Some(i) = l.iter().position(|&c| c as usize >= d_out) {
                    return Err(Error::InvalidArgument(format!("label[{i}] = {} is not a class in 0..{d_out}", l[i])));
                }
            }
            (Targets::Values(_), loss) | (Targets::Labels(_), loss) => {
                return Err(Error::InvalidArgument(format!(
                    "loss {loss:?} needs {} targets",
                    if loss == Loss::Mse { "real-valued" } else { "integer label" }
                )));
            }
        }
        Ok(TaskBatch { n_tasks, points: n_points, in_dim: d_in, out_dim: d_out, x, y })
    }

    /// Number of tasks.
    pub fn n_tasks(&self) -> usize {
        self.n_tasks
    }
    /// Points per task.
    pub fn n_points(&self) -> usize {
        self.points
    }
    /// All inputs, `[n_tasks × n_points × in]`.
    pub fn x(&self) -> &[f32] {
        &self.x
    }
    /// All targets.
    pub fn y(&self) -> &Targets<'a> {
        &self.y
    }
    /// Task `i` as a one-task batch borrowing this one's data. `None` when out of range.
    pub fn task(&self, i: usize) -> Option<TaskBatch<'_>> {
        (i < self.n_tasks).then(|| {
            let (x, y) = self.task_slices(i);
            let y = match y {
                Tgt::Values(v) => Targets::Values(Cow::Borrowed(v)),
                Tgt::Labels(l) => Targets::Labels(Cow::Borrowed(l)),
            };
            TaskBatch {
                n_tasks: 1,
                points: self.points,
                in_dim: self.in_dim,
                out_dim: self.out_dim,
                x: Cow::Borrowed(x),
                y,
            }
        })
    }
    /// A batch owning its data.
    pub fn into_owned(self) -> TaskBatch<'static> {
        TaskBatch {
            x: Cow::Owned(self.x.into_owned()),
            y: match self.y {
                Targets::Values(v) => Targets::Values(Cow::Owned(v.into_owned())),
                Targets::Labels(l) => Targets::Labels(Cow::Owned(l.into_owned())),
            },
            ..self
        }
    }

    /// Inputs and targets of task `i` (caller checked `i < n_tasks`).
    pub(crate) fn task_slices(&self, i: usize) -> (&[f32], Tgt<'_>) {
        let m = self.points;
        let x = &self.x[i * m * self.in_dim..][..m * self.in_dim];
        let y = match &self.y {
            Targets::Values(v) => Tgt::Values(&v[i * m * self.out_dim..][..m * self.out_dim]),
            Targets::Labels(l) => Tgt::Labels(&l[i * m..][..m]),
        };
        (x, y)
    }

    /// Checks that this batch was built for a spec with the same input/output widths and loss.
    pub(crate) fn check_spec(&self, spec: &MlpSpec) -> Result<()> {
        let kind_ok = matches!(
            (&self.y, spec.loss()),
            (Targets::Values(_), Loss::Mse) | (Targets::Labels(_), Loss::SoftmaxCrossEntropy)
        );
        if self.in_dim != spec.in_dim() || self.out_dim != spec.out_dim() || !kind_ok {
            return Err(Error::ShapeMismatch(format!(
                "task batch built for in={} out={}, model has in={} out={} loss {:?}",
                self.in_dim,
                self.out_dim,
                spec.in_dim(),
                spec.out_dim(),
                spec.loss()
            )));
        }
        Ok(())
    }
}

/// Evaluation tasks: per task a support set to adapt on and a query set to score on.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalTasks<'a> {
    support: TaskBatch<'a>,
    query: TaskBatch<'a>,
    views: usize,
}

impl<'a> EvalTasks<'a> {
    /// Pairs support and query batches; both must hold the same number of tasks.
    pub fn new(support: TaskBatch<'a>, query: TaskBatch<'a>) -> Result<Self> {
        if support.n_tasks != query.n_tasks
            || support.in_dim != query.in_dim
            || support.out_dim != query.out_dim
            || std::mem::discriminant(&support.y) != std::mem::discriminant(&query.y)
        {
            return Err(Error::ShapeMismatch(format!(
                "support ({} tasks, in {}, out {}) and query ({} tasks, in {}, out {}) disagree",
                support.n_tasks, support.in_dim, support.out_dim, query.n_tasks, query.in_dim, query.out_dim
            )));
        }
        Ok(EvalTasks { support, query, views: 1 })
    }

    /// Scores every query point as the mean prediction over `views` versions of it (test-time
    /// augmentation of the query, one point at a time: no transduction). Each task's query set
    /// must hold `views` blocks of `q = n_points / views` points, view-major: point `i` of
    /// block `v` is view `v` of query `i`, with the same target as in block 0. Classification
    /// averages the softmax probabilities (loss `−ln p̄[label]`, prediction `argmax p̄`);
    /// regression averages the outputs. `views = 1` is plain scoring.
    ///
    /// ```
    /// use reptile::{Activation, EvalTasks, Loss, MlpSpec, Model, ReptileConfig, Targets, TaskBatch, Trainer};
    ///
    /// // One 3-way task on 2-feature points: 3 support points, 2 query points in 2 views
    /// // each (block 0 the points, block 1 their perturbed copies, same labels).
    /// let spec = MlpSpec::new(&[2, 16, 3], Activation::Relu, Loss::SoftmaxCrossEntropy)?;
    /// let support = TaskBatch::new(&spec, 1, 3, vec![0.0, 1.0, 1.0, 0.0, -1.0, -1.0], Targets::Labels(vec![0, 1, 2].into()))?;
    /// let query_x = vec![0.1, 0.9, 0.9, 0.1, /* views: */ 0.0, 1.1, 1.1, 0.0];
    /// let query = TaskBatch::new(&spec, 1, 4, query_x, Targets::Labels(vec![0, 1, 0, 1].into()))?;
    /// let tasks = EvalTasks::new(support, query)?.with_query_views(2)?;
    /// let trainer = Trainer::new(Model::new(spec.clone(), 0), ReptileConfig::sine())?;
    /// let report = trainer.evaluate(&tasks)?;
    /// let acc = report.mean_accuracy(0).unwrap();
    /// assert!([0.0, 0.5, 1.0].contains(&acc), "scored over the 2 query points, not 4 rows");
    /// // A view with another label than its point is an error.
    /// let bad = TaskBatch::new(&spec, 1, 4, vec![0.0; 8], Targets::Labels(vec![0, 1, 1, 1].into()))?;
    /// let support = TaskBatch::new(&spec, 1, 3, vec![0.0; 6], Targets::Labels(vec![0, 1, 2].into()))?;
    /// assert!(EvalTasks::new(support, bad)?.with_query_views(2).is_err());
    /// # Ok::<(), reptile::Error>(())
    /// ```
    pub fn with_query_views(mut self, views: usize) -> Result<Self> {
        let m = self.query.points;
        if views == 0 || !m.is_multiple_of(views) {
            return Err(Error::ShapeMismatch(format!(
                "{views} query views do not divide the {m} query points of a task"
            )));
        }
        let q = m / views;
        let same = |t: usize, v: usize, i: usize| match &self.query.y {
            Targets::Labels(l) => l[t * m + v * q + i] == l[t * m + i],
            Targets::Values(y) => {
                let d = self.query.out_dim;
                y[(t * m + v * q + i) * d..][..d] == y[(t * m + i) * d..][..d]
            }
        };
        for t in 0..self.query.n_tasks {
            for v in 1..views {
                if let Some(i) = (0..q).find(|&i| !same(t, v, i)) {
                    return Err(Error::InvalidArgument(format!(
                        "task {t}: view {v} of query point {i} has another target than the point itself"
                    )));
                }
            }
        }
        self.views = views;
        Ok(self)
    }
    /// Views per query point (see [`EvalTasks::with_query_views`]; 1 = plain).
    pub fn query_views(&self) -> usize {
        self.views
    }
    /// Support sets.
    pub fn support(&self) -> &TaskBatch<'a> {
        &self.support
    }
    /// Query sets.
    pub fn query(&self) -> &TaskBatch<'a> {
        &self.query
    }
    /// Number of tasks.
    pub fn n_tasks(&self) -> usize {
        self.support.n_tasks
    }
}
