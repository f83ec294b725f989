//! The Reptile trainer: θ, configuration, per-worker scratch, and the outer step.
//!
//! # Determinism
//! A meta-batch of `n` tasks is cut into `min(n, 64)` fixed chunks of consecutive tasks,
//! independent of the thread count. Each chunk sums its tasks' deltas in task order; the chunk
//! sums are then added along a fixed binary tree over the chunks (`Tree`). Each task's
//! minibatch order comes from its own random stream keyed by (seed, iteration, task). So θ is
//! bit-identical for any number of threads. (Meta-batches of at most 16 tasks on the
//! transposed first layer sum their tasks in task order instead, after all have run, see
//! `meta::kept`; also set by `n` alone.)
//! (Two things vary with the threads without changing any bit: a one-task chunk may add its
//! task straight into its finished left neighbour's sum instead of a buffer added afterwards,
//! see `Tree::node_fused`; and large layers cut their products into row pieces that an idle
//! thread may take, see `cpu::mlp`.)

use super::config::{AdamMoments, InnerOptimizer, OuterRule, ReptileConfig};
use super::inner::{MomentsStart, TaskWorker};
use super::kept;
use super::lanes::LaneWorker;
use super::tasks::TaskBatch;
use crate::cpu::aligned::AlignedVec;
use crate::cpu::lanes::{self, LANES};
use crate::cpu::mlp;
use crate::cpu::sparse::{self, Src};
use crate::cpu::update;
use crate::error::{Error, Result};
use crate::params::Model;
use crate::rng::{self, Purpose};
use crate::spec::Loss;
use crate::spec::MlpSpec;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, TryLockError};

/// Most chunks a meta-batch is cut into (the unit of parallel work).
pub(crate) const MAX_CHUNKS: usize = 64;

/// Task range `[start, end)` of chunk `c` of `nc` over `n` tasks.
pub(crate) fn chunk_range(n: usize, nc: usize, c: usize) -> (usize, usize) {
    (c * n / nc, (c + 1) * n / nc)
}

/// The fixed reduction tree of [`Trainer::compute_deltas`] over chunks of a meta-batch.
struct Tree<'a, F> {
    /// Runs chunk `c` into the two slices (its delta sum, and its moments sum or an empty
    /// slice): writing them, or adding to them when the last argument is true; returns its
    /// loss sums before/after adaptation.
    run_chunk: &'a F,
    /// Parameters per delta.
    p: usize,
    /// Whether buffers also hold moments (`[deltas | moments]`, 2p wide).
    carry: bool,
    /// Run the two halves with `rayon::join` (inside the trainer's pool) or one after the other.
    par: bool,
    /// Every chunk is one task: a right leaf whose left sibling has finished may add its task
    /// straight into the left's sums (see [`Tree::node_fused`]).
    single: bool,
}

impl<F: Fn(usize, &mut [f32], &mut [f32], bool) -> (f64, f64) + Sync> Tree<'_, F> {
    /// Sums chunks `lo..hi` into `(out_d, out_v)`; `parts[j]` is the buffer of chunk `lo + 1 + j`.
    fn node(&self, lo: usize, hi: usize, out_d: &mut [f32], out_v: &mut [f32], parts: &mut [AlignedVec]) -> (f64, f64) {
        if hi - lo == 1 {
            return (self.run_chunk)(lo, out_d, out_v, false);
        }
        let mid = lo + (hi - lo) / 2;
        let (left, right) = parts.split_at_mut(mid - lo - 1);
        let (first, rest) = right.split_first_mut().expect("a right half has a first chunk");
        let (rd, rv) = first.split_at_mut(self.p);
        let rv = if self.carry { rv } else { &mut rv[..0] };
        if self.single && hi - mid == 1 {
            return self.node_fused(lo, mid, out_d, out_v, left, rd, rv);
        }
        let (a, b) = if self.par {
            rayon::join(|| self.node(lo, mid, out_d, out_v, left), || self.node(mid, hi, rd, rv, rest))
        } else {
            (self.node(lo, mid, out_d, out_v, left), self.node(mid, hi, rd, rv, rest))
        };
        self.add(out_d, rd);
        if self.carry {
            self.add(out_v, rv);
        }
        (a.0 + b.0, a.1 + b.1)
    }

    /// `acc += x`, in parallel halves on the pool when large (the root's add runs while the
    /// other thread has nothing left to do; element-wise, so the same result either way).
    fn add(&self, acc: &mut [f32], x: &[f32]) {
        if self.par {
            add_par(acc, x);
        } else {
            update::add_assign(acc, x);
        }
    }

    /// [`Self::node`] whose right half is the single one-task chunk `mid`. The node's sum is
    /// `left + (θ' − θ)` either way; when the left half has finished by the time the right
    /// task starts (always when run one after the other, or when the pool ran both on one
    /// thread), the task adds its delta and moments straight into the left's sums in its last
    /// step (`a + (θ' − θ)` element by element, the same arithmetic as writing `θ' − θ` to
    /// its own buffer and adding that), which saves two passes over 2 × p floats. Otherwise it
    /// writes `(rd, rv)`, added afterwards.
    #[allow(clippy::too_many_arguments)]
    fn node_fused(
        &self,
        lo: usize,
        mid: usize,
        out_d: &mut [f32],
        out_v: &mut [f32],
        left: &mut [AlignedVec],
        rd: &mut [f32],
        rv: &mut [f32],
    ) -> (f64, f64) {
        if !self.par {
            let a = self.node(lo, mid, out_d, out_v, left);
            let b = (self.run_chunk)(mid, out_d, out_v, true);
            return (a.0 + b.0, a.1 + b.1);
        }
        let done = AtomicBool::new(false);
        let (pd, nd, pv, nv) = (out_d.as_mut_ptr(), out_d.len(), out_v.as_mut_ptr(), out_v.len());
        let (pd, pv) = (SendPtr(pd), SendPtr(pv));
        let ((a, b), fused) = {
            let (left_job, right_job) = (
                || {
                    // SAFETY: the right job touches these slices only after `done` is set,
                    // which happens after this job's last use of them.
                    let (d, v) = unsafe { (pd.slice(nd), pv.slice(nv)) };
                    let r = self.node(lo, mid, d, v, left);
                    done.store(true, Ordering::Release);
                    r
                },
                || {
                    if done.load(Ordering::Acquire) {
                        // SAFETY: the left job has finished with the slices (Acquire pairs with
                        // its Release), and nothing else refers to them until `join` returns.
                        let (d, v) = unsafe { (pd.slice(nd), pv.slice(nv)) };
                        ((self.run_chunk)(mid, d, v, true), true)
                    } else {
                        ((self.run_chunk)(mid, &mut *rd, &mut *rv, false), false)
                    }
                },
            );
            let (a, (b, fused)) = rayon::join(left_job, right_job);
            ((a, b), fused)
        };
        if !fused {
            self.add(out_d, rd);
            if self.carry {
                self.add(out_v, rv);
            }
        }
        (a.0 + b.0, a.1 + b.1)
    }
}

/// A raw pointer that may cross to the pool's threads (see [`Tree::node_fused`] for the
/// protocol that makes its uses exclusive).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: only dereferenced under the `done` protocol of `Tree::node_fused`.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// # Safety
    /// `n` floats from the pointer are valid, and no other reference to them is live.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice<'a>(self, n: usize) -> &'a mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0, n) }
    }
}

/// [`update::add_assign`] cut into halves run with `rayon::join` while they hold at least
/// [`APPLY_GRAIN`] floats.
fn add_par(acc: &mut [f32], x: &[f32]) {
    let n = acc.len();
    if n < 2 * APPLY_GRAIN {
        return update::add_assign(acc, x);
    }
    let k = n / 2 / 64 * 64;
    let (a1, a2) = acc.split_at_mut(k);
    rayon::join(|| add_par(a1, &x[..k]), || add_par(a2, &x[k..]));
}

/// Smallest half of [`apply_par`]'s parallel split, in parameters.
const APPLY_GRAIN: usize = 1 << 15;

/// [`update::interpolate`] (`out ← keep·(θ + scale·Σδ)`, returns whether all finite) and, with
/// `moments = (out_v, sum_v, inv)`, `out_v ← inv·sum_v`, cut into halves run with `rayon::join`
/// while they hold at least [`APPLY_GRAIN`] parameters (element-wise: the same results).
fn apply_par(
    out: &mut [f32],
    theta: &[f32],
    sum: &[f32],
    scale: f32,
    keep: f32,
    moments: Option<(&mut [f32], &[f32], f32)>,
) -> bool {
    let n = out.len();
    if n < 2 * APPLY_GRAIN {
        if let Some((ov, sv, inv)) = moments {
            ov.iter_mut().zip(sv).for_each(|(v, &s)| *v = s * inv);
        }
        return update::interpolate(out, theta, sum, scale, keep);
    }
    let k = n / 2 / 64 * 64;
    let (o1, o2) = out.split_at_mut(k);
    let (m1, m2) = match moments {
        Some((ov, sv, inv)) => {
            let (ov1, ov2) = ov.split_at_mut(k);
            (Some((ov1, &sv[..k], inv)), Some((ov2, &sv[k..], inv)))
        }
        None => (None, None),
    };
    let (a, b) = rayon::join(
        || apply_par(o1, &theta[..k], &sum[..k], scale, keep, m1),
        || apply_par(o2, &theta[k..], &sum[k..], scale, keep, m2),
    );
    a && b
}

/// The sum of task deltas of (part of) a meta-batch, for hosts that spread a meta-batch over
/// processes: each runs [`Trainer::task_deltas`] on its share, the sums are added
/// ([`DeltaSum::add`], or any all-reduce over `sum`, `tasks` and the loss sums), and every
/// process applies the total with [`Trainer::apply_delta`].
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaSum {
    /// `Σ_i (θ'_i − θ)` (Reptile) or `Σ_i (θ'_{i,k} − θ'_{i,k−1})` (FOMAML), flat layout.
    pub sum: Vec<f32>,
    /// Number of tasks summed.
    pub tasks: u64,
    /// Sum over tasks of the first-minibatch loss at θ.
    pub loss_before_sum: f64,
    /// Sum over tasks of the same minibatch's loss at θ'.
    pub loss_after_sum: f64,
    /// With Adam and carried moments: the sum over tasks of their final second moments `v`
    /// (empty otherwise). [`Trainer::apply_delta`] sets the running moments to its mean.
    pub moments_sum: Vec<f32>,
}

impl DeltaSum {
    /// An empty sum for `num_params` parameters.
    pub fn zeros(num_params: usize) -> Self {
        DeltaSum {
            sum: vec![0.0; num_params],
            tasks: 0,
            loss_before_sum: 0.0,
            loss_after_sum: 0.0,
            moments_sum: Vec::new(),
        }
    }
    /// Adds another partial sum (element by element, in the caller's order).
    pub fn add(&mut self, other: &DeltaSum) -> Result<()> {
        if other.sum.len() != self.sum.len() {
            return Err(Error::ShapeMismatch(format!(
                "delta sums of {} and {} parameters",
                self.sum.len(),
                other.sum.len()
            )));
        }
        update::add_assign(&mut self.sum, &other.sum);
        match (self.moments_sum.is_empty(), other.moments_sum.is_empty()) {
            (_, true) => {}
            (true, false) if self.tasks == 0 => self.moments_sum = other.moments_sum.clone(),
            (false, false) if self.moments_sum.len() == other.moments_sum.len() => {
                update::add_assign(&mut self.moments_sum, &other.moments_sum)
            }
            _ => return Err(Error::ShapeMismatch("delta sums disagree on Adam moments".into())),
        }
        self.tasks += other.tasks;
        self.loss_before_sum += other.loss_before_sum;
        self.loss_after_sum += other.loss_after_sum;
        Ok(())
    }
}

/// Where meta-training's inner loops run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU kernels (the default).
    #[default]
    Cpu,
    /// The CUDA back end on device `n` ([`crate::cuda`]): the inner loops and the reduction
    /// of every step run on the GPU; adaptation and evaluation stay on the CPU.
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match crate::cuda::parse_device(s)? {
            None => Device::Cpu,
            Some(n) => Device::Cuda(n),
        })
    }
}

/// What one outer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The iteration this step was (0-based); the trainer's count is now one more.
    pub iteration: u64,
    /// ε used.
    pub epsilon: f32,
    /// Tasks in the meta-batch.
    pub tasks: u64,
    /// Mean over tasks of the first inner minibatch's loss at θ (before adaptation).
    pub loss_before: f32,
    /// Mean over tasks of the same minibatch's loss at θ'_i (after adaptation).
    pub loss_after: f32,
}

/// Meta-trains a [`Model`] with Reptile (or FOMAML) on caller-given task batches.
///
/// ```
/// use reptile::{Activation, Loss, MlpSpec, Model, ReptileConfig, Trainer};
/// use reptile::workloads::sine::SineTasks;
///
/// let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse)?;
/// let mut trainer = Trainer::new(Model::new(spec.clone(), 0), ReptileConfig::sine())?;
/// let mut tasks = SineTasks::new(0);
/// for _ in 0..100 {
///     let batch = tasks.train_batch(&spec, 1)?;
///     let stats = trainer.step(&batch)?;
///     assert!(stats.loss_before.is_finite());
/// }
/// let eval = tasks.eval_tasks(&spec, 10, 10)?;
/// let report = trainer.evaluate(&eval)?;
/// println!("post-adaptation MSE {:.3}", report.mean_loss(0));
/// # Ok::<(), reptile::Error>(())
/// ```
pub struct Trainer {
    model: Model,
    config: ReptileConfig,
    iteration: u64,
    pool: Option<rayon::ThreadPool>,
    threads: usize,
    /// One scratch space per pool thread (index `rayon::current_thread_index()`), so a
    /// thread's scratch stays in its cache from task to task; a thread that picks up a chunk
    /// while it waits inside a task's split kernels takes any free one (or a fresh one).
    workers: Vec<Mutex<TaskWorker>>,
    /// Same, for 16-task lane groups.
    lane_workers: Vec<Mutex<LaneWorker>>,
    lane_batching: bool,
    /// Adam's running second moments and step count (with carried moments).
    adam_v: AlignedVec,
    adam_t: u64,
    /// The CUDA back end, when selected ([`Trainer::set_device`]).
    cuda: Option<(usize, Box<crate::cuda::backend::CudaBackend>)>,
    partials: Vec<AlignedVec>,
    sum: DeltaSum,
    candidate: AlignedVec,
    /// The carried moments' next value, swapped in when the step is accepted.
    candidate_v: AlignedVec,
    /// The transposed first layer ([`sparse`]): θ's `W_0` and the carried moments of `W_0`
    /// transposed, `[in × out]` (valid when `t_valid`), their next values, and a scratch.
    /// While training on that path they are the state itself: [`Self::step`] updates them
    /// (the same arithmetic as on θ's layout) and leaves `model`'s and `adam_v`'s `W_0` stale
    /// (`std_stale`); the accessors then build the layout users see on first access, once per
    /// step (`model_cache`, `v_cache`), and `&mut` paths write it back ([`Self::materialize`]).
    w0t: AlignedVec,
    v0t: AlignedVec,
    w0t_next: AlignedVec,
    v0t_next: AlignedVec,
    t_scratch: AlignedVec,
    t_valid: bool,
    std_stale: bool,
    model_cache: OnceLock<Model>,
    v_cache: OnceLock<AlignedVec>,
    last: Option<StepStats>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("spec", self.model.spec())
            .field("config", &self.config)
            .field("iteration", &self.iteration)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// Why Adam second moments `v` cannot be used (a value that is not finite or is negative), or
/// `None`: the check shared by [`Trainer::set_adam_moments`] and the checkpoint loader.
pub(crate) fn bad_moment(v: &[f32]) -> Option<String> {
    let i = v.iter().position(|x| !(x.is_finite() && *x >= 0.0))?;
    Some(format!("Adam moment {i} is {}, expected finite and ≥ 0", v[i]))
}

impl Trainer {
    /// A trainer at iteration 0. Fails on an invalid config, non-finite θ, or when the thread
    /// pool cannot be built.
    pub fn new(model: Model, config: ReptileConfig) -> Result<Self> {
        config.validate()?;
        crate::error::check_finite(model.params(), "θ")?;
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            config.threads
        };
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("reptile-{i}"))
                    .build()
                    .map_err(|e| Error::InvalidArgument(format!("cannot start {threads} threads: {e}")))?,
            )
        } else {
            None
        };
        let p = model.spec().num_params();
        Ok(Trainer {
            model,
            config,
            iteration: 0,
            pool,
            threads,
            workers: Vec::new(),
            lane_workers: Vec::new(),
            lane_batching: false,
            adam_v: AlignedVec::zeros(p),
            adam_t: 0,
            cuda: None,
            partials: Vec::new(),
            sum: DeltaSum::zeros(p),
            candidate: AlignedVec::zeros(p),
            candidate_v: AlignedVec::new(),
            w0t: AlignedVec::new(),
            v0t: AlignedVec::new(),
            w0t_next: AlignedVec::new(),
            v0t_next: AlignedVec::new(),
            t_scratch: AlignedVec::new(),
            t_valid: false,
            std_stale: false,
            model_cache: OnceLock::new(),
            v_cache: OnceLock::new(),
            last: None,
        })
    }

    /// The model (spec and current θ). When meta-training runs on the transposed first layer
    /// ([`sparse`]), the first call after a step builds θ's `W_0` from the transposed state
    /// (one transpose, about 0.1–0.3 ms for Omniglot's 784 × 256); later calls are free.
    pub fn model(&self) -> &Model {
        if !self.std_stale {
            return &self.model;
        }
        // Training on the transposed first layer: θ's W_0 is built from the transposed state
        // on the first access after a step.
        self.model_cache.get_or_init(|| {
            let mut m = self.model.clone();
            let (inp, out) = (self.model.spec().in_dim(), self.model.spec().widths()[1]);
            sparse::transpose(inp, out, &self.w0t, &mut m.params_mut()[..inp * out]);
            m
        })
    }
    /// The spec.
    pub fn spec(&self) -> &MlpSpec {
        self.model.spec()
    }
    /// Current θ.
    pub fn params(&self) -> &[f32] {
        self.model().params()
    }
    /// Adds θ (in θ's layout) to `sum` element by element in f64, without building θ's layout
    /// when training runs on the transposed first layer (no copy of the model, unlike
    /// [`Self::params`]): what [`crate::TailMean`] needs on every iteration of its window.
    pub fn accumulate_params(&self, sum: &mut [f64]) -> Result<()> {
        let theta = self.model.params();
        if sum.len() != theta.len() {
            return Err(Error::InvalidArgument(format!(
                "a sum of {} values for θ of {} parameters",
                sum.len(),
                theta.len()
            )));
        }
        let w0 = if self.std_stale {
            // θ's W_0 [out × inp] is stale; its current values are w0t [inp × out].
            let (inp, out) = (self.model.spec().in_dim(), self.model.spec().widths()[1]);
            for (o, row) in sum[..inp * out].chunks_exact_mut(inp).enumerate() {
                for (i, s) in row.iter_mut().enumerate() {
                    *s += self.w0t[i * out + o] as f64;
                }
            }
            inp * out
        } else {
            0
        };
        for (s, &p) in sum[w0..].iter_mut().zip(&theta[w0..]) {
            *s += p as f64;
        }
        Ok(())
    }
    /// Replaces θ (same length, finite).
    pub fn set_params(&mut self, theta: &[f32]) -> Result<()> {
        let m = Model::from_slice(self.model.spec().clone(), theta)?;
        self.materialize();
        self.model = m;
        self.t_valid = false;
        Ok(())
    }

    /// Replaces Adam's carried second moments `v` (θ's layout, finite, ≥ 0) and step count
    /// `t`, e.g. from a checkpoint, so that meta-training continues from them and evaluation
    /// with [`AdamMoments::Carry`] starts from them.
    pub fn set_adam_moments(&mut self, v: &[f32], t: u64) -> Result<()> {
        if v.len() != self.adam_v.len() {
            return Err(Error::InvalidArgument(format!(
                "Adam moments hold {} values, the model {} parameters",
                v.len(),
                self.adam_v.len()
            )));
        }
        if let Some(why) = bad_moment(v) {
            return Err(Error::InvalidArgument(why));
        }
        self.materialize();
        self.adam_v.copy_from_slice(v);
        self.adam_t = t;
        self.t_valid = false;
        Ok(())
    }

    /// Writes the transposed first layer's state back into θ's layout (`model`, `adam_v`)
    /// when it is ahead of them (see the `w0t` field).
    fn materialize(&mut self) {
        if !self.std_stale {
            return;
        }
        let (inp, out) = (self.model.spec().in_dim(), self.model.spec().widths()[1]);
        sparse::transpose(inp, out, &self.w0t, &mut self.model.params_mut()[..inp * out]);
        if self.carries_moments() {
            sparse::transpose(inp, out, &self.v0t, &mut self.adam_v[..inp * out]);
        }
        self.std_stale = false;
        self.model_cache = OnceLock::new();
        self.v_cache = OnceLock::new();
    }
    /// The configuration.
    pub fn config(&self) -> &ReptileConfig {
        &self.config
    }
    /// Completed outer iterations.
    pub fn iteration(&self) -> u64 {
        self.iteration
    }
    /// Sets the iteration count (to resume a run: ε continues its schedule from there).
    pub fn set_iteration(&mut self, iteration: u64) {
        self.iteration = iteration;
    }
    /// Worker threads in use.
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// Statistics of the last successful step.
    pub fn last_stats(&self) -> Option<StepStats> {
        self.last
    }
    /// Opt-in (default off): run meta-batches of 16 or more regression tasks 16 at a time in
    /// the AVX-512 lane kernels ([`crate::cpu::lanes`]) instead of one task at a time. Both
    /// compute the same update up to f32 rounding, and either way the result does not depend
    /// on the thread count. On the development machine the lane path is not faster yet for the
    /// sine shape (16 tasks' parameters overflow L1; see BENCHMARKS.md), hence off by default.
    pub fn set_lane_batching(&mut self, on: bool) {
        self.lane_batching = on;
    }

    /// Whether a batch of `n` tasks would run in the lane kernels.
    pub fn uses_lanes(&self, n_tasks: usize) -> bool {
        self.lane_batching
            && lanes::available()
            && self.spec().loss() == Loss::Mse
            && self.config.inner_optimizer == InnerOptimizer::Sgd
            && n_tasks >= LANES
    }

    /// Adam's running second moments `v` and step count `t` (zero until Adam steps with
    /// carried moments have run). Built like [`Self::model`] on the transposed first layer.
    pub fn adam_moments(&self) -> (&[f32], u64) {
        if !(self.std_stale && self.carries_moments()) {
            return (&self.adam_v, self.adam_t);
        }
        let v = self.v_cache.get_or_init(|| {
            let mut v = self.adam_v.clone();
            let (inp, out) = (self.model.spec().in_dim(), self.model.spec().widths()[1]);
            sparse::transpose(inp, out, &self.v0t, &mut v[..inp * out]);
            v
        });
        (v, self.adam_t)
    }

    /// Whether a meta-batch of `n_tasks` trains on the transposed first layer ([`sparse`]):
    /// Reptile with Adam on the CPU task path, a first layer that suits it, and the path on.
    fn uses_transposed(&self, n_tasks: usize) -> bool {
        !self.uses_lanes(n_tasks)
            && self.config.outer == OuterRule::Reptile
            && self.config.train.steps > 0
            && matches!(self.config.inner_optimizer, InnerOptimizer::Adam { .. })
            && sparse::enabled()
            && sparse::suits(self.model.spec())
    }

    /// Whether meta-training tasks start from (and update) the running Adam moments: Adam
    /// with [`AdamMoments::Carry`] for training.
    pub fn carries_moments(&self) -> bool {
        matches!(self.config.inner_optimizer, InnerOptimizer::Adam { .. })
            && self.config.train_moments == AdamMoments::Carry
    }

    /// Runs the inner loops of meta-training on `device`. Selecting CUDA opens the device and
    /// compiles the kernels now; where CUDA cannot be used this returns [`Error::Cuda`] with the
    /// reason (never a panic) and the trainer stays on its current device. On CUDA, SGD inner
    /// loops run in the fused kernel where the network fits one block's shared memory and on
    /// the tiled path otherwise; Adam inner loops always take the tiled path.
    pub fn set_device(&mut self, device: Device) -> Result<()> {
        match device {
            Device::Cpu => self.cuda = None,
            Device::Cuda(n) => {
                let backend = crate::cuda::backend::CudaBackend::new(n)?;
                self.cuda = Some((n, Box::new(backend)));
            }
        }
        Ok(())
    }

    /// `iterations` iterations of sine-wave meta-training kept on the GPU from this trainer's θ
    /// and iteration count, with its config ([`crate::cuda::sine`]: tasks drawn on the device
    /// with Philox keyed by `seed`, no host round-trip; serial Reptile runs a thousand
    /// iterations per launch). Its tasks are the sine family's but not the ones
    /// [`crate::workloads::sine::SineTasks`] draws, so the run is statistically equivalent to
    /// [`Self::step`] over those, not identical; the outer step applies the config's
    /// [`ReptileConfig::outer_decay`] as [`Self::step`] does. Returns the last iteration's
    /// per-task losses `[n × 2]` (before, after adaptation).
    ///
    /// Before anything runs it checks, in this order, that `iterations` is at least 1, that the
    /// iteration counter stays within 2^32 − 1, that the net and config suit the loop (1-in
    /// 1-out MSE net, SGD inner steps, no FOMAML tail, minibatches of 1–50 points) and that
    /// the trainer is on [`Device::Cuda`]; each failure is [`Error::InvalidArgument`] with θ and
    /// the count unchanged. A failure on the GPU is [`Error::Cuda`]. On a non-finite update θ
    /// keeps its last finite value, the iteration count stops at the failing iteration, and
    /// the result is [`Error::Diverged`].
    pub fn train_sine_resident(&mut self, iterations: u32, seed: u64) -> Result<Vec<f32>> {
        // Everything checkable without the device first, so a CPU-only host learns of a bad
        // argument or config before it learns it needs a GPU.
        if iterations == 0 {
            return Err(Error::InvalidArgument("device-resident training needs at least 1 iteration".into()));
        }
        let start = u32::try_from(self.iteration)
            .ok()
            .filter(|s| *s as u64 + iterations as u64 <= u32::MAX as u64)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the device-resident loop counts iterations in 32 bits: iteration {} + {iterations} passes \
                     2^32 − 1",
                    self.iteration
                ))
            })?;
        crate::cuda::sine::check(self.model.spec(), &self.config).map_err(|e| {
            Error::InvalidArgument(format!("the device-resident sine loop cannot run this config: {e}"))
        })?;
        if self.cuda.is_none() {
            return Err(Error::InvalidArgument(
                "device-resident training needs the CUDA back end; this trainer is on the CPU".into(),
            ));
        }
        let theta = self.params().to_vec();
        let (spec, config) = (self.model.spec().clone(), self.config.clone());
        let (_, gpu) = self.cuda.as_mut().expect("checked above");
        let run = gpu.train_sine_resident(&spec, &theta, &config, config.meta_batch, seed, start, iterations, true)?;
        self.set_params(&run.theta)?;
        self.iteration = run.iteration;
        if run.diverged {
            return Err(Error::Diverged { iteration: run.iteration, reason: "a non-finite update on the GPU".into() });
        }
        Ok(run.losses)
    }

    /// Where the inner loops of meta-training run.
    pub fn device(&self) -> Device {
        self.cuda.as_ref().map_or(Device::Cpu, |(n, _)| Device::Cuda(*n))
    }

    /// Gives up the trainer, returning the model.
    pub fn into_model(mut self) -> Model {
        self.materialize();
        self.model
    }

    /// One outer iteration on `batch`: every task adapts from θ with the training inner loop,
    /// then `θ ← θ + ε_t·(1/n)·Σ_i δ_i`, times `1 − ε_t·λ` with an
    /// [`ReptileConfig::outer_decay`] λ. On NaN/Inf anywhere, returns [`Error::Diverged`] and
    /// leaves θ and the iteration count unchanged.
    pub fn step(&mut self, batch: &TaskBatch<'_>) -> Result<StepStats> {
        if self.cuda.is_some() {
            let sum = self.task_deltas(batch, 0)?;
            return self.apply_delta(&sum);
        }
        let mut sum = std::mem::replace(&mut self.sum, DeltaSum::zeros(0));
        // On the transposed first layer the sums of W_0 stay transposed and update the
        // transposed state directly (`apply`).
        let r = self.compute_deltas(batch, 0, &mut sum, true).and_then(|t| self.apply(&sum, t));
        self.sum = sum;
        r
    }

    /// First half of a split step: runs the inner loops of `batch` and returns the sum of its
    /// task deltas. `task_index_offset` is the global index of this batch's first task (so
    /// tasks spread over processes get distinct random streams; use 0 in a single process).
    pub fn task_deltas(&mut self, batch: &TaskBatch<'_>, task_index_offset: u64) -> Result<DeltaSum> {
        if let Some((n, mut backend)) = self.cuda.take() {
            let r = backend.task_deltas(self, batch, task_index_offset);
            self.cuda = Some((n, backend));
            return Ok(r?);
        }
        let mut out = DeltaSum::zeros(self.model.spec().num_params());
        self.compute_deltas(batch, task_index_offset, &mut out, false)?;
        Ok(out)
    }

    /// Second half of a split step: `θ ← θ + ε_t·sum/tasks` with an externally reduced sum,
    /// then the iteration count advances. `step` is exactly `task_deltas` + `apply_delta`.
    pub fn apply_delta(&mut self, delta: &DeltaSum) -> Result<StepStats> {
        self.materialize();
        self.apply(delta, false)
    }

    /// [`Self::apply_delta`]; with `w0_transposed`, the sums of `W_0` are in the transposed
    /// layout and update the transposed state (`w0t`, `v0t`) instead of θ's `W_0`, which is
    /// left stale (see the `w0t` field). Otherwise θ's layout must be current.
    fn apply(&mut self, delta: &DeltaSum, w0_transposed: bool) -> Result<StepStats> {
        debug_assert!(w0_transposed || !self.std_stale, "θ's layout must be current");
        let p = self.model.spec().num_params();
        if delta.sum.len() != p {
            return Err(Error::ShapeMismatch(format!("delta has {} values, θ has {p}", delta.sum.len())));
        }
        if delta.tasks == 0 {
            return Err(Error::InvalidArgument("delta sums zero tasks".into()));
        }
        let it = self.iteration;
        let diverged = |reason: String| Error::Diverged { iteration: it, reason };
        let (lb, la) =
            ((delta.loss_before_sum / delta.tasks as f64) as f32, (delta.loss_after_sum / delta.tasks as f64) as f32);
        if !lb.is_finite() || !la.is_finite() {
            return Err(diverged(format!("inner-loop loss is {lb} before / {la} after adaptation")));
        }
        let eps = self.config.epsilon(it);
        let scale = eps / delta.tasks as f32;
        let keep = self.config.keep(eps);
        let carry = self.carries_moments();
        if carry && delta.moments_sum.len() != p {
            return Err(Error::ShapeMismatch(format!(
                "Adam moments carried over, but the delta sum holds {} moment values for {p} parameters",
                delta.moments_sum.len()
            )));
        }
        // θ + scale·Σδ into the candidate (and, with carried moments, their mean into a
        // second candidate), in parallel halves on the pool for large nets.
        let inv = 1.0 / delta.tasks as f32;
        let moments = if carry {
            self.candidate_v.resize(p, 0.0);
            Some((&mut self.candidate_v[..], &delta.moments_sum[..], inv))
        } else {
            None
        };
        let (cand, theta, sum) = (&mut self.candidate[..], self.model.params(), &delta.sum[..]);
        // With the sums of W_0 transposed: the transposed state, element by element as θ's
        // layout would be, then the other parameters (W_0 comes first in θ).
        let n0 = if w0_transposed { self.model.spec().in_dim() * self.model.spec().widths()[1] } else { 0 };
        let (w0t_next, v0t_next, w0t) = (&mut self.w0t_next, &mut self.v0t_next, &self.w0t);
        let go = || {
            let (tail_m, w0_m) = match moments {
                Some((cv, ms, inv)) if n0 > 0 => {
                    v0t_next.resize(n0, 0.0);
                    (Some((&mut cv[n0..], &ms[n0..], inv)), Some((&mut v0t_next[..], &ms[..n0], inv)))
                }
                m => (m, None),
            };
            let mut ok = true;
            if n0 > 0 {
                w0t_next.resize(n0, 0.0);
                ok &= apply_par(w0t_next, w0t, &sum[..n0], scale, keep, w0_m);
            }
            ok & apply_par(&mut cand[n0..], &theta[n0..], &sum[n0..], scale, keep, tail_m)
        };
        let finite = match &self.pool {
            Some(pool) if p >= 2 * APPLY_GRAIN => pool.install(go),
            _ => go(),
        };
        if !finite {
            // The candidate's W_0 is in `w0t_next` when the sums of W_0 are transposed.
            let updated: &[f32] = if n0 > 0 { &self.w0t_next } else { &[] };
            let reason = match delta.sum.iter().position(|v| !v.is_finite()) {
                Some(i) => format!("task delta [{i}] is {}", delta.sum[i]),
                None => match updated.iter().position(|v| !v.is_finite()) {
                    Some(i) => format!("updated W_0ᵀ[{i}] is {}", updated[i]),
                    None => {
                        let i = self.candidate[n0..].iter().position(|v| !v.is_finite()).unwrap_or(0) + n0;
                        format!("updated θ[{i}] is {}", self.candidate[i])
                    }
                },
            };
            return Err(diverged(reason));
        }
        if carry {
            std::mem::swap(&mut self.adam_v, &mut self.candidate_v);
            self.adam_t += self.config.train.steps as u64;
        }
        std::mem::swap(&mut self.candidate, self.model.params_vec_mut());
        if w0_transposed {
            std::mem::swap(&mut self.w0t, &mut self.w0t_next);
            if carry {
                std::mem::swap(&mut self.v0t, &mut self.v0t_next);
            }
            self.std_stale = true;
            self.model_cache = OnceLock::new();
            self.v_cache = OnceLock::new();
        } else {
            self.t_valid = false;
        }
        self.iteration += 1;
        let stats = StepStats { iteration: it, epsilon: eps, tasks: delta.tasks, loss_before: lb, loss_after: la };
        self.last = Some(stats);
        Ok(stats)
    }

    /// Runs the inner loops of `batch` into `out`. Returns whether the sums of `W_0` were left
    /// in the transposed layout (the transposed first layer with `keep_transposed`; otherwise
    /// they are turned back into θ's layout).
    fn compute_deltas(
        &mut self,
        batch: &TaskBatch<'_>,
        offset: u64,
        out: &mut DeltaSum,
        keep_transposed: bool,
    ) -> Result<bool> {
        let transposed = self.uses_transposed(batch.n_tasks());
        if !transposed {
            self.materialize();
        }
        let spec = self.model.spec();
        batch.check_spec(spec)?;
        let m = batch.n_points();
        let inner = self.config.train;
        let (tail, fomaml) = match self.config.outer {
            OuterRule::Reptile => (None, false),
            OuterRule::Fomaml { tail } => (tail, true),
        };
        if let Some(t) = tail
            && t >= m
        {
            return Err(Error::InvalidArgument(format!(
                "FOMAML tail of {t} points leaves none of the {m} support points for the other steps"
            )));
        }
        let b = inner.batch_for(m);
        let cap = b.max(tail.unwrap_or(0)).max(m.min(b));
        let n = batch.n_tasks();
        let use_lanes = self.uses_lanes(n);
        // On the transposed first layer with few tasks, every task keeps its final state in a
        // worker of its own and the tasks are summed afterwards (`kept`).
        let kept_states = transposed && n <= kept::MAX_TASKS;
        // Work units: single tasks, or groups of 16 consecutive tasks on the lane path; a
        // chunk is a fixed run of consecutive units, set by n alone.
        let units = if use_lanes { n.div_ceil(LANES) } else { n };
        let nc = units.min(MAX_CHUNKS);
        let nw = self.threads.max(1);
        if use_lanes {
            if self.lane_workers.len() < nw {
                self.lane_workers.resize_with(nw, || Mutex::new(LaneWorker::new(spec, cap)));
            }
            for w in &mut self.lane_workers {
                w.get_mut().unwrap_or_else(|e| e.into_inner()).ensure(spec, cap);
            }
        } else {
            // One worker per thread, or one per task for `kept_states`.
            let nw = if kept_states { nw.max(n) } else { nw };
            if self.workers.len() < nw {
                self.workers.resize_with(nw, || Mutex::new(TaskWorker::new(spec, cap)));
            }
            for w in &mut self.workers {
                w.get_mut().unwrap_or_else(|e| e.into_inner()).ensure(spec, cap);
            }
        }
        let p = spec.num_params();
        out.sum.resize(p, 0.0);
        // With carried Adam moments, each chunk also sums its tasks' final moments: chunk
        // buffers are [deltas | moments], 2P wide, and reduce like the deltas.
        let carry = self.carries_moments();
        let width = if carry { 2 * p } else { p };
        let opt = self.config.inner_optimizer;
        let (adam_v, adam_t) = (&self.adam_v, self.adam_t);
        out.moments_sum.clear();
        if carry {
            out.moments_sum.resize(p, 0.0);
        }

        // The transposed first layer (`cpu::sparse`): θ's W_0 (and its carried moments)
        // transposed for all tasks unless the transposed state is already current (it is after
        // a step that kept it); the tasks' sums of W_0 come back transposed and are turned back
        // below unless the caller keeps them so.
        let (inp, out0) = (spec.in_dim(), spec.widths()[1]);
        let w0 = spec.weight_offset(0)..spec.weight_offset(0) + inp * out0;
        if transposed && !self.t_valid {
            debug_assert!(!self.std_stale, "a stale θ layout implies a valid transposed state");
            let (theta, w0t, v0t, adam_v) = (self.model.params(), &mut self.w0t, &mut self.v0t, &self.adam_v);
            let mut go = || {
                w0t.resize(inp * out0, 0.0);
                sparse::transpose(out0, inp, &theta[w0.clone()], w0t);
                if carry {
                    v0t.resize(inp * out0, 0.0);
                    sparse::transpose(out0, inp, &adam_v[w0.clone()], v0t);
                }
            };
            match &self.pool {
                Some(pool) => pool.install(go),
                None => go(),
            }
            self.t_valid = true;
        }
        let src0 = transposed.then(|| Src { w0t: &self.w0t[..], v0t: carry.then(|| &self.v0t[..]) });
        let theta = self.model.params();
        let (seed, it) = (self.config.seed, self.iteration);
        let stream = |i: usize| {
            let index = (it << 24).wrapping_add(offset).wrapping_add(i as u64);
            rng::stream(seed, Purpose::InnerShuffle, index)
        };
        let (workers, lane_workers) = (&self.workers, &self.lane_workers);
        // A task's optimizer state on its worker, and where its moments start.
        let start_task = |w: &mut TaskWorker| {
            w.set_optimizer_deferred(opt, if carry { adam_t } else { 0 });
            if carry { MomentsStart::From(&adam_v[..]) } else { MomentsStart::Zero }
        };
        // A chunk sums its tasks' deltas into `acc` and, with carried moments, their final `v`
        // into `acc_v` (empty otherwise).
        let run_chunk = |c: usize, acc: &mut [f32], acc_v: &mut [f32], add: bool| -> (f64, f64) {
            // Each pool thread starts from its own worker (see the lane and task branches).
            let slot = rayon::current_thread_index().unwrap_or(0) % nw;
            let (mut lb, mut la) = (0.0f64, 0.0f64);
            let (start, end) = chunk_range(units, nc, c);
            if use_lanes {
                let mut w = lane_workers[slot].lock().unwrap_or_else(|e| e.into_inner());
                for g in start..end {
                    // Fixed-size, on the stack: no allocation per group.
                    let count = ((g + 1) * LANES).min(n) - g * LANES;
                    let all: [usize; LANES] = std::array::from_fn(|l| g * LANES + l.min(count - 1));
                    let tasks = &all[..count];
                    let mut rngs: [_; LANES] = std::array::from_fn(|l| stream(all[l]));
                    let (b0, a0) = w.run(spec, theta, batch, tasks, &inner, tail, fomaml, &mut rngs);
                    for l in 0..tasks.len() {
                        lb += b0[l] as f64;
                        la += a0[l] as f64;
                    }
                    debug_assert!(!add, "lane chunks hold 16 tasks: never fused");
                    if g == start {
                        acc.fill(0.0);
                    }
                    let base = if fomaml { Some(&w.prev[..]) } else { None };
                    lanes::accumulate_lane_deltas(acc, &w.theta_p, theta, base, tasks.len());
                }
            } else {
                // This thread's worker, or another free one: a thread waiting inside a task's
                // split kernels (`rayon::join` in `cpu::mlp`) may pick up another chunk while
                // it still holds its own worker. A fresh worker if all are taken (every task
                // starts from θ and its own stream, so which worker runs it does not matter).
                let mut guard = (0..nw).find_map(|k| match workers[(slot + k) % nw].try_lock() {
                    Ok(g) => Some(g),
                    Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                    Err(TryLockError::WouldBlock) => None,
                });
                let mut spare;
                let w: &mut TaskWorker = match guard.as_deref_mut() {
                    Some(w) => w,
                    None => {
                        spare = TaskWorker::new(spec, cap);
                        &mut spare
                    }
                };
                for i in start..end {
                    let mut rng = stream(i);
                    let (x, y) = batch.task_slices(i);
                    let moments = start_task(w);
                    // The chunk's first task writes its delta (and moments); the others add
                    // theirs. Reptile hands the sums to the run (fused into the last Adam
                    // step); FOMAML's base is the worker's own θ' before its last step, known
                    // only afterwards, so its sums are one pass here.
                    let first = i == start && !add;
                    let moments_sum = if carry { Some(&mut *acc_v) } else { None };
                    let (b0, a0) = if fomaml {
                        let r = w.run(spec, theta, x, y, m, &inner, tail, fomaml, moments, &mut rng, None, None);
                        let mut sums = mlp::Accumulate { base: &w.prev, delta: &mut *acc, moments: moments_sum, first };
                        mlp::accumulate(&mut sums, &w.theta_p, &w.adam_v);
                        r
                    } else {
                        let sums = mlp::Accumulate { base: theta, delta: &mut *acc, moments: moments_sum, first };
                        w.run(spec, theta, x, y, m, &inner, tail, fomaml, moments, &mut rng, Some(sums), src0)
                    };
                    lb += b0 as f64;
                    la += a0 as f64;
                }
            }
            (lb, la)
        };

        // Chunks run as the leaves of a fixed binary tree over 0..nc (split at the midpoint):
        // each internal node adds its right half's sum into its left half's buffer, so the
        // order of every addition depends on n alone (bit-identical results for any thread
        // count), the adds run in parallel as soon as both halves are done, and each partial
        // is mostly summed on the core that wrote it. The leftmost leaf writes straight into
        // the output; chunk c > 0 of a right subtree starts in `partials[c]`.
        //
        // With `kept_states`, the tasks keep their final states instead and are summed
        // afterwards in task order (`kept`).
        let par = self.pool.is_some();
        let (lb, la) = if let Some(src) = src0.filter(|_| kept_states) {
            let run_task = |i: usize| -> (f64, f64) {
                let mut w = workers[i].lock().unwrap_or_else(|e| e.into_inner());
                let mut rng = stream(i);
                let (x, y) = batch.task_slices(i);
                let moments = start_task(&mut w);
                let (b0, a0) = w.run(spec, theta, x, y, m, &inner, None, false, moments, &mut rng, None, Some(src));
                (b0 as f64, a0 as f64)
            };
            let mut go = || {
                use rayon::prelude::*;
                let losses: Vec<(f64, f64)> =
                    if par { (0..n).into_par_iter().map(run_task).collect() } else { (0..n).map(run_task).collect() };
                let guards: Vec<_> = workers[..n].iter().map(|w| w.lock().unwrap_or_else(|e| e.into_inner())).collect();
                let states: Vec<&TaskWorker> = guards.iter().map(|g| &**g).collect();
                let beta2 = match opt {
                    InnerOptimizer::Adam { beta2, .. } => beta2,
                    InnerOptimizer::Sgd => unreachable!("the transposed path is Adam's"),
                };
                let msum = carry.then_some(&mut out.moments_sum[..]);
                kept::reduce(theta, src, inp * out0, out0, beta2, &states, &mut out.sum, msum, par);
                losses.iter().fold((0.0, 0.0), |(b, a), l| (b + l.0, a + l.1))
            };
            match &self.pool {
                Some(pool) => pool.install(go),
                None => go(),
            }
        } else {
            if self.partials.len() < nc {
                self.partials.resize_with(nc, AlignedVec::new);
            }
            self.partials[1..nc].iter_mut().for_each(|v| v.resize(width, 0.0));
            let tree = Tree { run_chunk: &run_chunk, p, carry, par, single: !use_lanes && units == nc };
            let parts = &mut self.partials[1..nc];
            match &self.pool {
                // One chunk (serial Reptile) runs on the calling thread: handing it to the pool
                // would cost a cross-thread wake-up per step.
                Some(pool) if nc > 1 => pool.install(|| tree.node(0, nc, &mut out.sum, &mut out.moments_sum, parts)),
                _ => tree.node(0, nc, &mut out.sum, &mut out.moments_sum, parts),
            }
        };
        if transposed && !keep_transposed {
            // The sums of W_0 back into θ's layout.
            let (sum, msum, scratch) = (&mut out.sum, &mut out.moments_sum, &mut self.t_scratch);
            let go = || {
                scratch.resize(inp * out0, 0.0);
                for s in [Some(sum), carry.then_some(msum)].into_iter().flatten() {
                    sparse::transpose(inp, out0, &s[w0.clone()], scratch);
                    s[w0.clone()].copy_from_slice(scratch);
                }
            };
            match &self.pool {
                Some(pool) => pool.install(go),
                None => go(),
            }
        }
        out.tasks = n as u64;
        out.loss_before_sum = lb;
        out.loss_after_sum = la;
        Ok(transposed && keep_transposed)
    }

    /// The thread pool, if more than one thread.
    pub(crate) fn pool(&self) -> Option<&rayon::ThreadPool> {
        self.pool.as_ref()
    }
}
