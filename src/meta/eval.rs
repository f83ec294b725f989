//! Test-time adaptation and evaluation: adapt θ to each task's support set, score the query set.

use super::config::InnerLoop;
use super::inner::TaskWorker;
use super::tasks::{EvalTasks, TaskBatch};
use super::trainer::{MAX_CHUNKS, Trainer, chunk_range};
use crate::error::{Error, Result};
use crate::params::Model;
use crate::rng::{self, Purpose};
use rayon::prelude::*;

/// Per-task query losses (and accuracies for classification) after each requested number
/// of adaptation steps.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// The step counts at which the query set was scored, ascending.
    pub steps: Vec<usize>,
    /// Number of tasks.
    pub n_tasks: usize,
    /// `losses[t·steps.len() + j]`: task `t`'s query loss after `steps[j]` steps.
    pub losses: Vec<f32>,
    /// Same layout, fraction of query points classified correctly (cross-entropy only).
    pub accuracies: Option<Vec<f32>>,
}

impl EvalReport {
    fn column<'a>(&self, v: &'a [f32], j: usize) -> impl Iterator<Item = f32> + 'a {
        let s = self.steps.len();
        v.iter().skip(j).step_by(s).copied()
    }
    /// Query losses of all tasks after `steps[j]` steps.
    pub fn losses_at(&self, j: usize) -> Vec<f32> {
        self.column(&self.losses, j).collect()
    }
    /// Mean query loss after `steps[j]` steps.
    pub fn mean_loss(&self, j: usize) -> f32 {
        mean(self.column(&self.losses, j))
    }
    /// Median query loss after `steps[j]` steps.
    pub fn median_loss(&self, j: usize) -> f32 {
        let mut v = self.losses_at(j);
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
    }
    /// Mean query accuracy after `steps[j]` steps (classification only).
    pub fn mean_accuracy(&self, j: usize) -> Option<f32> {
        self.accuracies.as_ref().map(|a| mean(self.column(a, j)))
    }
    /// Half-width of the 95% confidence interval of the mean accuracy (1.96·sd/√n).
    pub fn accuracy_ci95(&self, j: usize) -> Option<f32> {
        self.accuracies.as_ref().map(|a| {
            let v: Vec<f64> = self.column(a, j).map(f64::from).collect();
            let n = v.len() as f64;
            let m = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
            (1.96 * (var / n).sqrt()) as f32
        })
    }
    /// Index of the last checkpoint (the full adaptation).
    pub fn last(&self) -> usize {
        self.steps.len() - 1
    }
}

fn mean(it: impl Iterator<Item = f32>) -> f32 {
    let (s, n) = it.fold((0.0f64, 0usize), |(s, n), v| (s + v as f64, n + 1));
    (s / n.max(1) as f64) as f32
}

impl Trainer {
    /// Adapts the current θ to one task (a one-task `support` batch) with `steps` steps of the
    /// evaluation inner loop (its `lr` and `batch_size`). Predict with the returned model.
    pub fn adapt(&self, support: &TaskBatch<'_>, steps: usize) -> Result<Model> {
        let inner = InnerLoop { steps, ..self.config().eval };
        let c = self.config();
        super::inner::adapt_with(self.model(), support, &inner, c.inner_optimizer, self.eval_moments(), c.seed)
    }

    /// Where evaluation-time Adam moments start: the running moments, or `None` for zero.
    fn eval_moments(&self) -> Option<(&[f32], u64)> {
        (self.config().eval_moments == super::AdamMoments::Carry).then(|| self.adam_moments())
    }

    /// Mean post-adaptation query loss (and accuracy) with the evaluation inner loop:
    /// a report with the single checkpoint `config.eval.steps`.
    pub fn evaluate(&self, tasks: &EvalTasks<'_>) -> Result<EvalReport> {
        self.evaluate_at(tasks, &[self.config().eval.steps])
    }

    /// Adapts θ to every task's support set with the evaluation inner loop (`lr`,
    /// `batch_size`) and scores its query set after each step count in `steps` (ascending;
    /// 0 scores θ itself). Task `t` uses the minibatch stream `(seed, EvalShuffle, t)`.
    /// Tasks run in parallel; the result does not depend on the thread count. A diverging
    /// adaptation shows as NaN/Inf in the report.
    pub fn evaluate_at(&self, tasks: &EvalTasks<'_>, steps: &[usize]) -> Result<EvalReport> {
        let spec = self.spec();
        tasks.support().check_spec(spec)?;
        if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(format!(
                "evaluation steps must be ascending and non-empty, got {steps:?}"
            )));
        }
        let inner = self.config().eval;
        let (sup, qry) = (tasks.support(), tasks.query());
        let (ms, mq, views) = (sup.n_points(), qry.n_points(), tasks.query_views());
        let b = inner.batch_for(ms);
        let cap = b.max(mq);
        let n = tasks.n_tasks();
        let nc = n.min(MAX_CHUNKS);
        let theta = self.params();
        let seed = self.config().seed;
        let classify = matches!(sup.y(), super::Targets::Labels(_));
        let (opt, moments) = (self.config().inner_optimizer, self.eval_moments());
        let run_chunk = |c: usize| -> Vec<(f32, f32)> {
            let mut w = TaskWorker::new(spec, cap);
            let mut out = Vec::new();
            let (start, end) = chunk_range(n, nc, c);
            for t in start..end {
                let mut rng = rng::stream(seed, Purpose::EvalShuffle, t as u64);
                let (xs, ys) = sup.task_slices(t);
                let (xq, yq) = qry.task_slices(t);
                w.set_optimizer(opt, moments);
                w.begin(theta, ms, None, &mut rng);
                let mut done = 0;
                for &s in steps {
                    w.more_steps(spec, xs, ys, b, s - done, inner.lr, &mut rng);
                    done = s;
                    let (loss, correct) = w.score_views(spec, xq, yq, mq, views);
                    out.push((loss, correct as f32 / (mq / views) as f32));
                }
            }
            out
        };
        let chunks: Vec<Vec<(f32, f32)>> = match self.pool() {
            Some(pool) => pool.install(|| (0..nc).into_par_iter().map(run_chunk).collect()),
            None => (0..nc).map(run_chunk).collect(),
        };
        let flat: Vec<(f32, f32)> = chunks.into_iter().flatten().collect();
        Ok(EvalReport {
            steps: steps.to_vec(),
            n_tasks: n,
            losses: flat.iter().map(|r| r.0).collect(),
            accuracies: classify.then(|| flat.iter().map(|r| r.1).collect()),
        })
    }
}
