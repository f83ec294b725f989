//! Reptile meta-training on top of the kernels: task batches, configuration, the per-task
//! inner loop, and the [`Trainer`] with its outer step, split step, adaptation and evaluation.

mod average;
mod config;
mod eval;
mod inner;
mod kept;
mod lanes;
mod tasks;
mod trainer;

pub use average::TailMean;
pub use config::{AdamMoments, InnerLoop, InnerOptimizer, OuterRule, ReptileConfig};
pub use eval::EvalReport;
pub use inner::{adapt, adapt_with};
pub use tasks::{EvalTasks, Targets, TaskBatch};
pub(crate) use trainer::bad_moment;
pub use trainer::{DeltaSum, Device, StepStats, Trainer};
