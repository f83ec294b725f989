//! # reptile
//!
//! Hand-optimized kernels for Reptile meta-learning (Nichol, Achiam & Schulman, "On
//! First-Order Meta-Learning Algorithms", 2018).
//!
//! Reptile: from parameters θ, run `k` steps of SGD on each of `n` sampled tasks to get θ'_i,
//! then move θ toward them: `θ ← θ + ε·(1/n)·Σ_i(θ'_i − θ)`, with ε annealed linearly. At
//! test time, adapt to a new task in a few steps and predict.
//!
//! The modules follow the data flow:
//!
//! | module | what |
//! |---|---|
//! | [`spec`] | [`MlpSpec`]: widths, activation, loss, and the flat θ layout |
//! | [`params`] | θ initialization and [`Model`] |
//! | [`cpu`] | CPU kernels: products, fused forward/backward + loss, update kernels |
//! | [`meta`] | [`Trainer`]: inner loop, outer step, split step, adaptation, evaluation |
//! | [`workloads`] | task samplers: the sine-wave regression |
//! | [`io`] | safetensors checkpoints, PNG figures |
//!
//! ```
//! use reptile::{Activation, Loss, MlpSpec, Model, ReptileConfig, Trainer};
//! use reptile::workloads::sine::SineTasks;
//!
//! let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse)?;
//! let mut trainer = Trainer::new(Model::new(spec.clone(), 42), ReptileConfig::sine())?;
//! let mut tasks = SineTasks::new(42);
//! for _ in 0..200 {
//!     trainer.step(&tasks.train_batch(&spec, 1)?)?;
//! }
//! // Test time: adapt to a new task from 10 points, then predict on the grid.
//! let eval = tasks.eval_tasks(&spec, 1, 10)?;
//! let adapted = trainer.adapt(&eval.support().task(0).unwrap(), 32)?;
//! let y = adapted.predict(eval.query().x())?;
//! assert_eq!(y.len(), 50);
//! # Ok::<(), reptile::Error>(())
//! ```

#![warn(missing_docs)]

pub mod cpu;
pub mod cuda;
pub mod error;
pub mod ffi;
pub mod io;
pub mod meta;
pub mod params;
pub mod rng;
pub mod spec;
pub mod workloads;

pub use error::{Error, Result};
pub use meta::{
    AdamMoments, DeltaSum, Device, EvalReport, EvalTasks, InnerLoop, InnerOptimizer, OuterRule, ReptileConfig,
    StepStats, TailMean, Targets, TaskBatch, Trainer,
};
pub use params::Model;
pub use spec::{Activation, Loss, MlpSpec};

/// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
