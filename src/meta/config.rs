//! Hyperparameters of the inner loop and of the Reptile outer loop.

use crate::error::{Error, Result, check_finite_scalar};
use serde::{Deserialize, Serialize};

/// An inner optimization: `steps` steps of SGD with step size `lr` on minibatches of
/// `batch_size` points (`0` = the whole support set, i.e. full-batch gradient descent).
///
/// Minibatches: the support set's points are shuffled with the task's own random stream and
/// consumed in order, `batch_size` at a time; when they run out the set is reshuffled and
/// consumption continues, so a minibatch may straddle two shuffles (as in OpenAI's reference
/// code). With `batch_size = m` every step sees the whole set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InnerLoop {
    /// SGD step size α.
    pub lr: f32,
    /// Number of SGD steps k.
    pub steps: usize,
    /// Minibatch size b; 0 means the whole support set.
    pub batch_size: usize,
}

impl InnerLoop {
    pub(crate) fn validate(&self, what: &str) -> Result<()> {
        check_finite_scalar(self.lr, &format!("{what}.lr"))?;
        if self.lr < 0.0 {
            return Err(Error::InvalidArgument(format!("{what}.lr = {} must be ≥ 0", self.lr)));
        }
        if self.steps == 0 {
            return Err(Error::InvalidArgument(format!("{what}.steps must be ≥ 1")));
        }
        Ok(())
    }
    /// The minibatch size for a support set of `m` points.
    /// The minibatch size for a support set of `m` points (`batch_size`, or `m` when 0).
    pub fn batch_for(&self, m: usize) -> usize {
        if self.batch_size == 0 { m } else { self.batch_size }
    }
}

/// The outer update direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OuterRule {
    /// Reptile: `θ ← θ + ε·mean_i(θ'_i − θ)`.
    Reptile,
    /// First-order MAML (the paper's `--foml`): `θ ← θ + ε·mean_i(θ'_{i,k} − θ'_{i,k−1})`, i.e.
    /// the (negated, α-scaled) gradient of the last inner minibatch. With `tail = Some(t)`,
    /// the last minibatch is `t` support points held out from the first `k − 1` steps: the
    /// support set is shuffled once, the last `t` points form the tail, and the earlier steps
    /// draw minibatches from the other `m − t` points.
    Fomaml {
        /// Size of the held-out final minibatch.
        tail: Option<usize>,
    },
}

/// The optimizer of the inner loop.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InnerOptimizer {
    /// Plain SGD: `θ ← θ − α·g`.
    #[default]
    Sgd,
    /// Adam with β1 = 0, as the Reptile paper uses for classification, in TensorFlow's form:
    /// `v ← β2·v + (1 − β2)·g²`, `θ ← θ − α·√(1 − β2^t)·g / (√v + ε)`, `t` counting Adam steps.
    Adam {
        /// Decay of the second-moment estimate (0.999 in the paper's code).
        beta2: f32,
        /// Added to √v (1e-8, TensorFlow's default).
        eps: f32,
    },
}

impl InnerOptimizer {
    /// Adam with β1 = 0 and the paper's β2 = 0.999, ε = 1e-8.
    pub const ADAM: InnerOptimizer = InnerOptimizer::Adam { beta2: 0.999, eps: 1e-8 };
}

/// What Adam's second moments `v` (and step count `t`) start from for each task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdamMoments {
    /// From the trainer's running moments, which carry over from task to task. The paper's code
    /// runs a meta-batch's tasks one after another, each continuing the previous task's moments;
    /// here the tasks of a meta-batch run in parallel, so each starts from the moments left by
    /// the previous outer step, and afterwards the running moments become the mean (in task
    /// order) of the tasks' final moments, with `t` advanced by the inner steps.
    Carry,
    /// From zero for every task.
    Reset,
}

fn carry() -> AdamMoments {
    AdamMoments::Carry
}
fn reset() -> AdamMoments {
    AdamMoments::Reset
}

/// Everything the [`crate::Trainer`] needs besides the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReptileConfig {
    /// Inner loop during meta-training.
    pub train: InnerLoop,
    /// Inner loop at test time ([`crate::Trainer::adapt`], [`crate::Trainer::evaluate`]).
    pub eval: InnerLoop,
    /// Tasks per outer step n, for samplers and the CLI (a step accepts any batch size).
    pub meta_batch: usize,
    /// Outer step size ε at iteration 0.
    pub eps_start: f32,
    /// Outer step size ε at iteration `planned_iters` (linear in between, constant after).
    pub eps_end: f32,
    /// Iterations over which ε anneals.
    pub planned_iters: u64,
    /// Reptile or FOMAML.
    pub outer: OuterRule,
    /// Seed of the minibatch order streams.
    pub seed: u64,
    /// Worker threads (0 = one per available core). Results do not depend on it.
    pub threads: usize,
    /// Inner-loop optimizer for meta-training and adaptation (SGD by default).
    #[serde(default)]
    pub inner_optimizer: InnerOptimizer,
    /// With Adam: moments during meta-training (default: carried over, as in the paper's code).
    #[serde(default = "carry")]
    pub train_moments: AdamMoments,
    /// With Adam: moments at adaptation and evaluation (default: reset for every task, as in the
    /// paper's code).
    #[serde(default = "reset")]
    pub eval_moments: AdamMoments,
    /// Decoupled decay λ of θ in the outer step: `θ ← (1 − ε_t·λ)·(θ + ε_t·(1/n)·Σ_i δ_i)`
    /// (every parameter, biases included). 0, the paper's update, by default; Omniglot's CLI
    /// uses 4e-5 (+0.8 / +0.2 points at 5-way 1-/5-shot, a significant gain over nine
    /// training-seed pairs: see BENCHMARKS.md). Needs `λ ≥ 0` and `ε·λ < 1` at both ends of
    /// the ε schedule.
    #[serde(default)]
    pub outer_decay: f32,
}

impl ReptileConfig {
    /// The sine-wave demo of the Reptile paper / OpenAI blog: inner SGD α = 0.02, minibatch 10
    /// of the 50 grid points for 5 steps (one epoch), n = 1, ε 0.1 → 0 over 30,000 iterations;
    /// evaluation with 32 full-batch steps at 0.02.
    pub fn sine() -> Self {
        ReptileConfig {
            train: InnerLoop { lr: 0.02, steps: 5, batch_size: 10 },
            eval: InnerLoop { lr: 0.02, steps: 32, batch_size: 0 },
            meta_batch: 1,
            eps_start: 0.1,
            eps_end: 0.0,
            planned_iters: 30_000,
            outer: OuterRule::Reptile,
            seed: 0,
            threads: 0,
            inner_optimizer: InnerOptimizer::Sgd,
            train_moments: AdamMoments::Carry,
            eval_moments: AdamMoments::Reset,
            outer_decay: 0.0,
        }
    }

    /// Checks ranges and finiteness.
    pub fn validate(&self) -> Result<()> {
        self.train.validate("train")?;
        self.eval.validate("eval")?;
        check_finite_scalar(self.eps_start, "eps_start")?;
        check_finite_scalar(self.eps_end, "eps_end")?;
        if self.meta_batch == 0 {
            return Err(Error::InvalidArgument("meta_batch must be ≥ 1".into()));
        }
        if self.planned_iters == 0 {
            return Err(Error::InvalidArgument("planned_iters must be ≥ 1".into()));
        }
        if let InnerOptimizer::Adam { beta2, eps } = self.inner_optimizer
            && !((0.0..1.0).contains(&beta2) && eps.is_finite() && eps > 0.0)
        {
            return Err(Error::InvalidArgument(format!(
                "Adam needs 0 ≤ β2 < 1 and ε > 0, got β2 = {beta2}, ε = {eps}"
            )));
        }
        check_finite_scalar(self.outer_decay, "outer_decay")?;
        let eps_max = self.eps_start.max(self.eps_end);
        if self.outer_decay < 0.0 || eps_max * self.outer_decay >= 1.0 {
            return Err(Error::InvalidArgument(format!(
                "outer_decay = {} must be ≥ 0 with ε·outer_decay < 1 (largest ε of the schedule: {eps_max})",
                self.outer_decay
            )));
        }
        if let OuterRule::Fomaml { tail: Some(0) } = self.outer {
            return Err(Error::InvalidArgument("FOMAML tail must hold at least one point".into()));
        }
        Ok(())
    }

    /// The factor `1 − ε·λ` that multiplies θ after an outer step of size `ε`
    /// ([`Self::outer_decay`] λ; exactly 1 without decay).
    pub fn keep(&self, eps: f32) -> f32 {
        1.0 - eps * self.outer_decay
    }

    /// ε at outer iteration `t`: `ε₀ + (ε_final − ε₀)·min(t/T, 1)`.
    pub fn epsilon(&self, t: u64) -> f32 {
        let frac = (t as f64 / self.planned_iters as f64).min(1.0);
        (self.eps_start as f64 + (self.eps_end as f64 - self.eps_start as f64) * frac) as f32
    }
}

impl Default for ReptileConfig {
    fn default() -> Self {
        Self::sine()
    }
}
