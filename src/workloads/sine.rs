//! The sine-wave regression of the Reptile paper and OpenAI's demo.
//!
//! A task is `y = A·sin(x + φ)` with `A ~ U[0.1, 5]`, `φ ~ U[0, 2π]`. Training tasks use all 50
//! points of the grid `linspace(−5, 5, 50)`; evaluation tasks adapt on `k` grid points drawn
//! without replacement and are scored by MSE on the whole grid.

use crate::error::Result;
use crate::meta::{EvalTasks, Targets, TaskBatch};
use crate::rng::{self, Purpose, Rng};
use crate::spec::MlpSpec;
use rand::Rng as _;
use rand::seq::index;
use std::borrow::Cow;

/// Points of the training grid.
pub const GRID_POINTS: usize = 50;

/// `linspace(−5, 5, 50)`.
pub fn grid() -> [f32; GRID_POINTS] {
    std::array::from_fn(|i| (-5.0 + 10.0 * i as f64 / (GRID_POINTS - 1) as f64) as f32)
}

/// One sine task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SineTask {
    /// Amplitude A.
    pub amplitude: f32,
    /// Phase φ.
    pub phase: f32,
}

impl SineTask {
    /// `A·sin(x + φ)`.
    pub fn eval(&self, x: f32) -> f32 {
        self.amplitude * (x + self.phase).sin()
    }
}

/// A seeded stream of sine tasks (ChaCha8, portable).
#[derive(Clone, Debug)]
pub struct SineTasks {
    rng: Rng,
}

impl SineTasks {
    /// Tasks from the stream `(seed, Tasks, 0)`.
    pub fn new(seed: u64) -> Self {
        SineTasks { rng: rng::stream(seed, Purpose::Tasks, 0) }
    }

    /// Draws `A ~ U[0.1, 5]`, `φ ~ U[0, 2π]`.
    pub fn sample(&mut self) -> SineTask {
        let amplitude = self.rng.random_range(0.1f32..5.0);
        let phase = self.rng.random_range(0.0f32..std::f32::consts::TAU);
        SineTask { amplitude, phase }
    }

    /// `n` training tasks on the 50-point grid: `x`, `y` `[n × 50 × 1]`.
    pub fn train_batch(&mut self, spec: &MlpSpec, n: usize) -> Result<TaskBatch<'static>> {
        let g = grid();
        let mut x = Vec::with_capacity(n * GRID_POINTS);
        let mut y = Vec::with_capacity(n * GRID_POINTS);
        for _ in 0..n {
            let t = self.sample();
            x.extend_from_slice(&g);
            y.extend(g.iter().map(|&v| t.eval(v)));
        }
        TaskBatch::new(spec, n, GRID_POINTS, x, Targets::Values(Cow::Owned(y)))
    }

    /// `n` evaluation tasks: support = `shots` grid points drawn without replacement, query =
    /// the whole grid. Also returns the tasks themselves (for plotting).
    pub fn eval_tasks_with_params(
        &mut self,
        spec: &MlpSpec,
        n: usize,
        shots: usize,
    ) -> Result<(EvalTasks<'static>, Vec<SineTask>)> {
        if shots == 0 || shots > GRID_POINTS {
            return Err(crate::Error::InvalidArgument(format!(
                "sine evaluation shots must be in 1..={GRID_POINTS}, got {shots}"
            )));
        }
        let g = grid();
        let (mut xs, mut ys, mut xq, mut yq, mut tasks) = (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            let t = self.sample();
            for i in index::sample(&mut self.rng, GRID_POINTS, shots).into_iter() {
                xs.push(g[i]);
                ys.push(t.eval(g[i]));
            }
            xq.extend_from_slice(&g);
            yq.extend(g.iter().map(|&v| t.eval(v)));
            tasks.push(t);
        }
        let support = TaskBatch::new(spec, n, shots, xs, Targets::Values(Cow::Owned(ys)))?;
        let query = TaskBatch::new(spec, n, GRID_POINTS, xq, Targets::Values(Cow::Owned(yq)))?;
        Ok((EvalTasks::new(support, query)?, tasks))
    }

    /// [`Self::eval_tasks_with_params`] without the task parameters.
    pub fn eval_tasks(&mut self, spec: &MlpSpec, n: usize, shots: usize) -> Result<EvalTasks<'static>> {
        Ok(self.eval_tasks_with_params(spec, n, shots)?.0)
    }
}
