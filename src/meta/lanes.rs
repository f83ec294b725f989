//! The inner loop for a group of up to 16 tasks run together, one per AVX-512 lane
//! ([`crate::cpu::lanes`]). Same semantics as the per-task loop in `inner.rs`: each task has
//! its own minibatch stream ([`Batcher`]) and random stream; only the arithmetic is shared.

use super::config::InnerLoop;
use super::inner::Batcher;
use super::tasks::TaskBatch;
use crate::cpu::lanes::{self, LANES, LaneWorkspace, row};
use crate::cpu::mlp::Tgt;
use crate::rng::Rng;
use crate::spec::MlpSpec;

/// Scratch for one lane group: lane-interleaved θ' (and θ' before the last step, for FOMAML),
/// gathered minibatches, per-task minibatch streams, and the lane workspace.
#[derive(Clone, Debug)]
pub(crate) struct LaneWorker {
    ws: LaneWorkspace,
    pub theta_p: Vec<f32>,
    pub prev: Vec<f32>,
    xb: Vec<f32>,
    yb: Vec<f32>,
    batchers: Vec<Batcher>,
    idx: Vec<u32>,
    idx0: Vec<u32>,
}

impl LaneWorker {
    pub fn new(spec: &MlpSpec, cap: usize) -> Self {
        let cap = cap.max(1);
        LaneWorker {
            ws: LaneWorkspace::new(spec, cap),
            theta_p: vec![0.0; LANES * spec.num_params()],
            prev: Vec::new(),
            xb: vec![0.0; LANES * cap * row(spec.in_dim())],
            yb: vec![0.0; LANES * cap * row(spec.out_dim())],
            batchers: vec![Batcher::default(); LANES],
            idx: vec![0; LANES * cap],
            idx0: vec![0; LANES * cap],
        }
    }

    /// Grows to hold minibatches of `cap` points.
    pub fn ensure(&mut self, spec: &MlpSpec, cap: usize) {
        if self.ws.capacity() < cap || self.theta_p.len() != LANES * spec.num_params() {
            *self = LaneWorker::new(spec, cap);
        }
    }

    /// Gathers minibatch `idx[l][..b]` of task `tasks[l]` into lane `l` of `xb`/`yb`.
    fn gather(&mut self, spec: &MlpSpec, batch: &TaskBatch<'_>, tasks: &[usize], b: usize) {
        let (di, dout) = (spec.in_dim(), spec.out_dim());
        let (ri, ro) = (row(di), row(dout));
        let cap = self.ws.capacity();
        for l in 0..LANES {
            let (x, y) = batch.task_slices(tasks[l.min(tasks.len() - 1)]);
            let Tgt::Values(y) = y else { unreachable!("lane path runs MSE tasks only") };
            for p in 0..b {
                let q = self.idx[l * cap + p] as usize;
                for i in 0..di {
                    self.xb[LANES * (p * ri + i) + l] = x[q * di + i];
                }
                for o in 0..dout {
                    self.yb[LANES * (p * ro + o) + l] = y[q * dout + o];
                }
            }
        }
    }

    fn sgd_on_gathered(&mut self, spec: &MlpSpec, b: usize, lr: f32) -> [f32; LANES] {
        let xb = &self.xb[..LANES * b * row(spec.in_dim())];
        lanes::forward(spec, &self.theta_p, xb, b, &mut self.ws);
        let loss = lanes::mse_grad(spec, &self.yb[..LANES * b * row(spec.out_dim())], b, &mut self.ws);
        lanes::backward_sgd(spec, &mut self.theta_p, xb, b, &mut self.ws, lr);
        loss
    }

    /// Runs `inner.steps` SGD steps on each task of `tasks` (up to 16, each `m` points) from θ,
    /// task `tasks[l]` in lane `l` with random stream `rngs[l]`; lanes past `tasks.len()`
    /// repeat the last task and are ignored by the caller. Returns per-lane (loss of the first
    /// minibatch at θ, loss of that minibatch at θ'). With `keep_prev`, `prev` holds θ' before
    /// the last step.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        spec: &MlpSpec,
        theta: &[f32],
        batch: &TaskBatch<'_>,
        tasks: &[usize],
        inner: &InnerLoop,
        tail: Option<usize>,
        keep_prev: bool,
        rngs: &mut [Rng],
    ) -> ([f32; LANES], [f32; LANES]) {
        let m = batch.n_points();
        let b = inner.batch_for(m);
        let cap = self.ws.capacity();
        lanes::broadcast_params(theta, &mut self.theta_p);
        for (bt, rng) in self.batchers.iter_mut().zip(rngs.iter_mut()) {
            bt.begin(m, tail, rng);
        }
        let mut first = ([0.0; LANES], 0usize);
        for s in 0..inner.steps {
            let last = s + 1 == inner.steps;
            let bs = match tail {
                Some(t) if last => t,
                _ => b,
            };
            for (l, (bt, rng)) in self.batchers.iter_mut().zip(rngs.iter_mut()).enumerate() {
                let idx = &mut self.idx[l * cap..][..bs];
                if tail.is_some() && last { bt.tail(idx) } else { bt.next(rng, idx) }
            }
            if last && keep_prev {
                self.prev.resize(self.theta_p.len(), 0.0);
                self.prev.copy_from_slice(&self.theta_p);
            }
            self.gather(spec, batch, tasks, bs);
            let loss = self.sgd_on_gathered(spec, bs, inner.lr);
            if s == 0 {
                first = (loss, bs);
                self.idx0.copy_from_slice(&self.idx);
            }
        }
        // Loss after adaptation on the first minibatch: one more forward at θ'.
        let (before, b0) = first;
        self.idx.copy_from_slice(&self.idx0);
        self.gather(spec, batch, tasks, b0);
        lanes::forward(spec, &self.theta_p, &self.xb[..LANES * b0 * row(spec.in_dim())], b0, &mut self.ws);
        let after = lanes::mse_grad(spec, &self.yb[..LANES * b0 * row(spec.out_dim())], b0, &mut self.ws);
        (before, after)
    }
}
