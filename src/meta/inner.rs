//! The inner loop of one task: minibatch SGD from θ, in a reusable per-worker scratch space.

use super::config::{InnerLoop, InnerOptimizer};
use super::tasks::TaskBatch;
use crate::cpu::aligned::AlignedVec;
use crate::cpu::mlp::{self, Tgt, Workspace};
use crate::cpu::sparse::{self, SparseFirst, Src};
use crate::error::{Error, Result};
use crate::params::Model;
use crate::rng::{self, Rng};
use crate::spec::MlpSpec;
use rand::seq::SliceRandom;

/// Scratch for running inner loops of tasks, one per parallel worker: θ', the previous θ'
/// (FOMAML), gathered minibatches and the forward/backward workspace. Sized for a spec and a
/// maximum minibatch; grows (allocates) only when a larger batch shape arrives.
#[derive(Clone, Debug)]
pub(crate) struct TaskWorker {
    pub ws: Workspace,
    pub theta_p: AlignedVec,
    pub prev: AlignedVec,
    xb: AlignedVec,
    yb: Vec<f32>,
    lb: Vec<u32>,
    /// The next minibatch of a run, gathered during the step before it (see
    /// [`mlp::backward_adam_ahead`]); swapped with `xb`/`yb`/`lb` after that step.
    xn: AlignedVec,
    yn: Vec<f32>,
    ln: Vec<u32>,
    /// Points of the minibatch in `xb` whose first-layer product at θ' is already in `ws`.
    z0_ready: Option<usize>,
    batcher: Batcher,
    idx: Vec<u32>,
    idx0: Vec<u32>,
    opt: InnerOptimizer,
    /// Adam's second moments and step count for the task in progress.
    pub adam_v: AlignedVec,
    pub adam_t: u64,
    /// The first layer on the transposed path ([`sparse`]), for a [`Self::run`] given a
    /// transposed source, with the runs of nonzero input columns of the current minibatch.
    sparse: Option<SparseFirst>,
    runs: Vec<(u32, u32)>,
    mask: Vec<u32>,
}

/// Adam's second moments at the start of a [`TaskWorker::run`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum MomentsStart<'a> {
    /// As [`TaskWorker::set_optimizer`] left them (and always for SGD).
    Kept,
    /// Zero: read by the first step without a separate fill pass.
    Zero,
    /// A copy of these (the carried moments): read by the first step without a copy pass.
    From(&'a [f32]),
}

/// The minibatch stream over one task's support set (see [`InnerLoop`]): a permutation of the
/// pool of points, consumed in order and reshuffled with the task's random stream when
/// exhausted; with a tail, the support set is shuffled once and its last `tail` points are kept
/// out of the pool for the final step.
#[derive(Clone, Debug, Default)]
pub(crate) struct Batcher {
    perm: Vec<u32>,
    pos: usize,
    pool: usize,
}

impl Batcher {
    /// Starts a task of `m` support points (the first [`Self::next`] shuffles).
    pub fn begin(&mut self, m: usize, tail: Option<usize>, rng: &mut Rng) {
        self.perm.clear();
        self.perm.extend(0..m as u32);
        match tail {
            Some(t) => {
                self.perm.shuffle(rng);
                self.pool = m - t;
            }
            None => self.pool = m,
        }
        self.pos = self.pool;
    }

    /// Writes the next `out.len()` point indices of the stream.
    pub fn next(&mut self, rng: &mut Rng, out: &mut [u32]) {
        for o in out {
            if self.pos == self.pool {
                self.perm[..self.pool].shuffle(rng);
                self.pos = 0;
            }
            *o = self.perm[self.pos];
            self.pos += 1;
        }
    }

    /// Writes the tail points (all `perm.len() − pool` of them).
    pub fn tail(&self, out: &mut [u32]) {
        out.copy_from_slice(&self.perm[self.pool..]);
    }
}

impl TaskWorker {
    pub fn new(spec: &MlpSpec, cap: usize) -> Self {
        let cap = cap.max(1);
        TaskWorker {
            ws: Workspace::new(spec, cap),
            theta_p: AlignedVec::zeros(spec.num_params()),
            prev: AlignedVec::new(),
            xb: AlignedVec::zeros(cap * spec.in_dim()),
            yb: vec![0.0; cap * spec.out_dim()],
            lb: vec![0; cap],
            xn: AlignedVec::zeros(cap * spec.in_dim()),
            yn: vec![0.0; cap * spec.out_dim()],
            ln: vec![0; cap],
            z0_ready: None,
            batcher: Batcher::default(),
            idx: vec![0; cap],
            idx0: Vec::with_capacity(cap),
            opt: InnerOptimizer::Sgd,
            adam_v: AlignedVec::new(),
            adam_t: 0,
            sparse: None,
            runs: Vec::new(),
            mask: Vec::new(),
        }
    }

    /// Sets the optimizer for the next task; with Adam, its moments start from `moments`
    /// (`v`, `t`) or from zero.
    pub fn set_optimizer(&mut self, opt: InnerOptimizer, moments: Option<(&[f32], u64)>) {
        self.opt = opt;
        if let InnerOptimizer::Adam { .. } = opt {
            let p = self.theta_p.len();
            match moments {
                Some((v, t)) => {
                    self.adam_v.clear();
                    self.adam_v.extend_from_slice(v);
                    self.adam_t = t;
                }
                None => {
                    self.adam_v.clear();
                    self.adam_v.resize(p, 0.0);
                    self.adam_t = 0;
                }
            }
        }
    }

    /// The transposed first layer of the last [`Self::run`] given a transposed source.
    pub fn sparse_state(&self) -> Option<&SparseFirst> {
        self.sparse.as_ref()
    }

    /// Grows to hold minibatches of `cap` points.
    pub fn ensure(&mut self, spec: &MlpSpec, cap: usize) {
        if self.ws.capacity() < cap {
            *self = TaskWorker::new(spec, cap);
        }
    }

    /// Sets the optimizer and step count for a [`Self::run`] whose moments come in its
    /// [`MomentsStart`] (no pass over `v` here).
    pub fn set_optimizer_deferred(&mut self, opt: InnerOptimizer, t: u64) {
        self.opt = opt;
        if let InnerOptimizer::Adam { .. } = opt {
            self.adam_v.resize(self.theta_p.len(), 0.0);
            self.adam_t = t;
        }
    }

    /// Starts a task: θ' ← θ, fresh minibatch stream over `m` support points.
    pub fn begin(&mut self, theta: &[f32], m: usize, tail: Option<usize>, rng: &mut Rng) {
        self.theta_p.copy_from_slice(theta);
        self.batcher.begin(m, tail, rng);
    }

    /// Next `b` point indices of the stream into `idx`.
    fn next_batch(&mut self, b: usize, rng: &mut Rng) {
        self.batcher.next(rng, &mut self.idx[..b]);
    }

    /// Uses the `t` tail points as the next minibatch.
    fn tail_batch(&mut self, t: usize) {
        self.batcher.tail(&mut self.idx[..t]);
    }

    /// Gathers the points `idx[..b]` of the task into the minibatch buffers.
    fn gather(&mut self, spec: &MlpSpec, x: &[f32], y: Tgt<'_>, b: usize) -> (usize, bool) {
        self.z0_ready = None;
        gather_into(spec, x, y, &self.idx[..b], &mut self.xb, &mut self.yb, &mut self.lb);
        (b, matches!(y, Tgt::Labels(_)))
    }

    /// Gathers the points `idx[..b]` into the next-minibatch buffers.
    fn gather_next(&mut self, spec: &MlpSpec, x: &[f32], y: Tgt<'_>, b: usize) {
        gather_into(spec, x, y, &self.idx[..b], &mut self.xn, &mut self.yn, &mut self.ln);
    }

    /// The next minibatch becomes the current one (with its first-layer product, if the step
    /// computed it).
    fn swap_next(&mut self) {
        std::mem::swap(&mut self.xb, &mut self.xn);
        std::mem::swap(&mut self.yb, &mut self.yn);
        std::mem::swap(&mut self.lb, &mut self.ln);
    }

    /// Draws the indices of a step's minibatch into `idx`: the tail on the last step of a run
    /// with one, the next `b` of the stream otherwise. Returns its size.
    fn draw(&mut self, last: bool, tail: Option<usize>, b: usize, rng: &mut Rng) -> usize {
        match tail {
            Some(t) if last => {
                self.tail_batch(t);
                t
            }
            _ => {
                self.next_batch(b, rng);
                b
            }
        }
    }

    /// One optimizer step on θ' with the gathered minibatch of `b` points (SGD fused into
    /// the backward pass, or Adam fused the same way); returns the
    /// minibatch loss before the update.
    ///
    /// With `from`, θ' (and Adam's `v`) are not initialised yet: this step reads θ and the
    /// starting moments from `from` and writes every parameter of θ' and `v` (Adam only).
    #[allow(clippy::too_many_arguments)]
    fn sgd_on_gathered(
        &mut self,
        spec: &MlpSpec,
        b: usize,
        labels: bool,
        lr: f32,
        from: Option<mlp::AdamFrom<'_>>,
        acc: Option<mlp::Accumulate<'_>>,
        next: Option<usize>,
        src0: Option<Src<'_>>,
    ) -> f32 {
        if let Some(src) = src0 {
            return self.sparse_step(spec, src, b, labels, lr, from, acc);
        }
        let xb = &self.xb[..b * spec.in_dim()];
        match &from {
            Some(f) => mlp::forward(spec, f.theta, xb, b, &mut self.ws),
            None if self.z0_ready == Some(b) => mlp::forward_continue(spec, &self.theta_p, b, &mut self.ws),
            None => mlp::forward(spec, &self.theta_p, xb, b, &mut self.ws),
        };
        self.z0_ready = None;
        let tgt = if labels { Tgt::Labels(&self.lb[..b]) } else { Tgt::Values(&self.yb[..b * spec.out_dim()]) };
        let loss = mlp::loss_grad(spec, tgt, b, &mut self.ws);
        match self.opt {
            InnerOptimizer::Sgd => {
                debug_assert!(from.is_none(), "SGD starts from a copied θ'");
                debug_assert!(acc.is_none(), "SGD steps do not accumulate");
                mlp::backward_sgd(spec, &mut self.theta_p, xb, b, &mut self.ws, lr)
            }
            InnerOptimizer::Adam { beta2, eps } => {
                self.adam_t += 1;
                let lr_t = crate::cpu::update::adam_lr_t(lr, beta2, self.adam_t);
                let step = mlp::AdamStep { lr_t, beta2, eps };
                let (theta, ws, v) = (&mut self.theta_p, &mut self.ws, &mut self.adam_v);
                match next {
                    Some(nb) => {
                        let xn = &self.xn[..nb * spec.in_dim()];
                        if mlp::backward_adam_ahead(spec, theta, xb, b, ws, v, step, from, acc, xn) {
                            self.z0_ready = Some(nb);
                        }
                    }
                    None => mlp::backward_adam_acc(spec, theta, xb, b, ws, v, step, from, acc),
                }
            }
        }
        loss
    }

    /// [`Self::sgd_on_gathered`] with the first layer on the transposed path (Adam only):
    /// `Z_0` from the runs of nonzero input columns, the rest of the forward and the backward
    /// dense except `W_0` ([`mlp::backward_adam_sparse`]).
    #[allow(clippy::too_many_arguments)]
    fn sparse_step(
        &mut self,
        spec: &MlpSpec,
        src: Src<'_>,
        b: usize,
        labels: bool,
        lr: f32,
        from: Option<mlp::AdamFrom<'_>>,
        acc: Option<mlp::Accumulate<'_>>,
    ) -> f32 {
        let InnerOptimizer::Adam { beta2, eps } = self.opt else { unreachable!("the transposed path is Adam's") };
        match &from {
            Some(f) => self.sparse_forward(spec, src, f.theta, b),
            None => self.sparse_forward_at_theta_p(spec, src, b),
        }
        self.z0_ready = None;
        let tgt = if labels { Tgt::Labels(&self.lb[..b]) } else { Tgt::Values(&self.yb[..b * spec.out_dim()]) };
        let loss = mlp::loss_grad(spec, tgt, b, &mut self.ws);
        self.adam_t += 1;
        let lr_t = crate::cpu::update::adam_lr_t(lr, beta2, self.adam_t);
        let step = mlp::AdamStep { lr_t, beta2, eps };
        let state = self.sparse.as_mut().expect("transposed layer loaded by run");
        let sp = mlp::Sparse0 { state, src, runs: &self.runs };
        let xb = &self.xb[..b * spec.in_dim()];
        mlp::backward_adam_sparse(spec, &mut self.theta_p, xb, b, &mut self.ws, &mut self.adam_v, step, from, acc, sp);
        loss
    }

    /// Forward pass of the `b` points in `xb` with the first layer on the transposed path
    /// (`theta` for the bias `b_0` and the other layers); sets the runs of nonzero columns.
    fn sparse_forward(&mut self, spec: &MlpSpec, src: Src<'_>, theta: &[f32], b: usize) {
        let (inp, out0) = (spec.in_dim(), spec.widths()[1]);
        let xb = &self.xb[..b * inp];
        sparse::nonzero_runs(xb, b, inp, &mut self.mask, &mut self.runs);
        let bias = &theta[spec.bias_offset(0)..][..out0];
        let (z0, zs) = self.ws.z0_and_scratch(spec, b);
        let state = self.sparse.as_ref().expect("transposed layer set up by run");
        state.forward(src, xb, b, &self.runs, bias, z0, zs);
        mlp::forward_continue(spec, theta, b, &mut self.ws);
    }

    /// [`Self::sparse_forward`] at θ'.
    fn sparse_forward_at_theta_p(&mut self, spec: &MlpSpec, src: Src<'_>, b: usize) {
        let theta_p = std::mem::replace(&mut self.theta_p, AlignedVec::new());
        self.sparse_forward(spec, src, &theta_p, b);
        self.theta_p = theta_p;
    }

    /// Runs `inner.steps` steps on task `(x, y)` of `m` points, θ' ← θ first.
    /// Returns (loss of the first minibatch at θ, loss of that same minibatch at θ').
    /// With `keep_prev`, `prev` holds θ' before the last step (for FOMAML).
    ///
    /// With `acc`, θ' − `acc.base` (and the final moments, for Adam with a moments sum) are
    /// added to the running sums: fused into the last Adam step tile by tile, or in a pass at
    /// the end (SGD, or no steps).
    ///
    /// With Adam and moments [`MomentsStart::Zero`] or [`MomentsStart::From`], the first step
    /// reads θ and the moments where they are and writes θ' and `v` tile by tile, instead of
    /// two copy passes over the whole parameter vector first (for large nets such as
    /// Omniglot's 247k parameters these copies cost as much as a step's update).
    ///
    /// With `src0` (θ's `W_0` and those moments transposed, [`sparse::Src`]) and all of: such
    /// a first step, no FOMAML copy, and a first layer that [`sparse::suits`] the transposed
    /// path, `W_0` runs on that path ([`crate::cpu::sparse`]): `acc`'s `W_0` range, if any,
    /// then receives the task's sums in the transposed layout `[in × out]`, and θ' and `v`
    /// hold no `W_0` afterwards (the task's `W_0ᵀ` is in [`Self::sparse_state`]).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        spec: &MlpSpec,
        theta: &[f32],
        x: &[f32],
        y: Tgt<'_>,
        m: usize,
        inner: &InnerLoop,
        tail: Option<usize>,
        keep_prev: bool,
        moments: MomentsStart<'_>,
        rng: &mut Rng,
        mut acc: Option<mlp::Accumulate<'_>>,
        src0: Option<Src<'_>>,
    ) -> (f32, f32) {
        let b = inner.batch_for(m);
        let adam = matches!(self.opt, InnerOptimizer::Adam { .. });
        // The first step can initialise θ' itself unless θ' is needed before any step runs.
        let lazy = adam && inner.steps > 0 && !(keep_prev && inner.steps == 1);
        let mut from = match moments {
            MomentsStart::Zero if lazy => Some(mlp::AdamFrom { theta, v: None }),
            MomentsStart::From(v) if lazy => Some(mlp::AdamFrom { theta, v: Some(v) }),
            _ => None,
        };
        // The first layer on the transposed path: with the caller's transposed source, for an
        // Adam run that starts from sources, without FOMAML's copy of θ' before the last step;
        // sums fused into the last step come back transposed for W_0, and without sums the
        // task's final state stays here ([`Self::sparse_state`], `theta_p` and `adam_v` past
        // W_0) for the caller to sum.
        assert!(
            src0.is_none() || (from.is_some() && !keep_prev && sparse::suits(spec)),
            "the transposed first layer needs an Adam run from sources"
        );
        if let Some(src) = &src0 {
            let (inp, out) = (spec.in_dim(), spec.widths()[1]);
            let state = self.sparse.get_or_insert_with(|| SparseFirst::new(inp, out));
            if state.shape() != (inp, out) {
                *state = SparseFirst::new(inp, out);
            }
            state.check_src(src);
            state.begin();
        }
        if from.is_some() {
            self.batcher.begin(m, tail, rng);
        } else {
            self.begin(theta, m, tail, rng);
            if adam {
                match moments {
                    MomentsStart::Kept => {}
                    MomentsStart::Zero => self.adam_v.fill(0.0),
                    MomentsStart::From(v) => self.adam_v.copy_from_slice(v),
                }
            }
        }
        let steps = inner.steps;
        // Each step's minibatch is drawn and gathered during the step before it (the stream
        // is consumed in the same order), so an Adam step can run the next forward's first
        // layer from its updated rows; after the last step the next batch is the first one
        // again, for the loss after adaptation.
        let (mut bs, labels) = if steps > 0 {
            let n = self.draw(steps == 1, tail, b, rng);
            self.gather(spec, x, y, n)
        } else {
            (0, matches!(y, Tgt::Labels(_)))
        };
        self.idx0.clear();
        self.idx0.extend_from_slice(&self.idx[..bs]);
        let b0 = bs;
        let mut before = 0.0;
        for s in 0..steps {
            let last = s + 1 == steps;
            let nb = if last {
                self.idx[..b0].copy_from_slice(&self.idx0);
                b0
            } else {
                self.draw(s + 2 == steps, tail, b, rng)
            };
            self.gather_next(spec, x, y, nb);
            if last && keep_prev {
                self.prev.resize(self.theta_p.len(), 0.0);
                self.prev.copy_from_slice(&self.theta_p);
            }
            let fuse = if last && adam { acc.take() } else { None };
            let loss = self.sgd_on_gathered(spec, bs, labels, inner.lr, from.take(), fuse, Some(nb), src0);
            if s == 0 {
                before = loss;
            }
            self.swap_next();
            bs = nb;
        }
        if let Some(mut a) = acc {
            // Not fused (SGD, or no steps): one pass over θ' (and v).
            mlp::accumulate(&mut a, &self.theta_p, &self.adam_v);
        }

        // Loss after adaptation on the first minibatch (now in `xb`): one more forward at θ',
        // its first layer already computed by a fused last step.
        if steps == 0 {
            self.gather(spec, x, y, 0);
        }
        if let Some(src) = src0 {
            self.sparse_forward_at_theta_p(spec, src, b0);
        } else if self.z0_ready == Some(b0) {
            mlp::forward_continue(spec, &self.theta_p, b0, &mut self.ws);
        } else {
            mlp::forward(spec, &self.theta_p, &self.xb[..b0 * spec.in_dim()], b0, &mut self.ws);
        }
        self.z0_ready = None;
        let tgt = if labels { Tgt::Labels(&self.lb[..b0]) } else { Tgt::Values(&self.yb[..b0 * spec.out_dim()]) };
        let (after, _) = mlp::loss_eval(spec, tgt, b0, &mut self.ws);
        (before, after)
    }

    /// Loss (and correct count) of θ' on a whole set of `m` points, e.g. a query set, held as
    /// `views` view-major blocks of `q = m / views` points: each point is scored by its mean
    /// prediction over its views ([`mlp::loss_eval_views`]; `views = 1` is plain scoring).
    /// The worker's capacity must cover `m`.
    pub fn score_views(&mut self, spec: &MlpSpec, x: &[f32], y: Tgt<'_>, m: usize, views: usize) -> (f32, usize) {
        mlp::forward(spec, &self.theta_p, x, m, &mut self.ws);
        if views == 1 {
            return mlp::loss_eval(spec, y, m, &mut self.ws);
        }
        mlp::loss_eval_views(spec, y, m, views, &self.ws)
    }

    /// Continues the current task's inner loop for `steps` more SGD steps (no tail).
    #[allow(clippy::too_many_arguments)]
    pub fn more_steps(
        &mut self,
        spec: &MlpSpec,
        x: &[f32],
        y: Tgt<'_>,
        b: usize,
        steps: usize,
        lr: f32,
        rng: &mut Rng,
    ) {
        for _ in 0..steps {
            self.next_batch(b, rng);
            let (bs, labels) = self.gather(spec, x, y, b);
            self.sgd_on_gathered(spec, bs, labels, lr, None, None, None, None);
        }
    }
}

/// Copies the points `idx` of a task (`x` `[m × in]`, targets `y`) into minibatch buffers.
fn gather_into(spec: &MlpSpec, x: &[f32], y: Tgt<'_>, idx: &[u32], xb: &mut [f32], yb: &mut [f32], lb: &mut [u32]) {
    let (di, dout) = (spec.in_dim(), spec.out_dim());
    for (j, &p) in idx.iter().enumerate() {
        let p = p as usize;
        xb[j * di..][..di].copy_from_slice(&x[p * di..][..di]);
        match y {
            Tgt::Values(v) => yb[j * dout..][..dout].copy_from_slice(&v[p * dout..][..dout]),
            Tgt::Labels(l) => lb[j] = l[p],
        }
    }
}

/// Adapts `model` to one task: `inner.steps` SGD steps on `support` (a one-task batch),
/// minibatch order from the stream `(seed, EvalShuffle, 0)`. Returns θ' as a new model.
pub fn adapt(model: &Model, support: &TaskBatch<'_>, inner: &InnerLoop, seed: u64) -> Result<Model> {
    adapt_with(model, support, inner, InnerOptimizer::Sgd, None, seed)
}

/// [`adapt`] with another optimizer; Adam's moments start from `moments` (`v`, `t`) or zero.
pub fn adapt_with(
    model: &Model,
    support: &TaskBatch<'_>,
    inner: &InnerLoop,
    opt: InnerOptimizer,
    moments: Option<(&[f32], u64)>,
    seed: u64,
) -> Result<Model> {
    inner.validate("inner")?;
    support.check_spec(model.spec())?;
    if support.n_tasks() != 1 {
        return Err(Error::InvalidArgument(format!(
            "adapt takes one task, got a batch of {} (use TaskBatch::task(i))",
            support.n_tasks()
        )));
    }
    let spec = model.spec();
    let m = support.n_points();
    let mut w = TaskWorker::new(spec, inner.batch_for(m).max(m));
    let mut rng = rng::stream(seed, rng::Purpose::EvalShuffle, 0);
    let (x, y) = support.task_slices(0);
    if let Some((v, _)) = moments
        && v.len() != spec.num_params()
    {
        return Err(Error::ShapeMismatch(format!("Adam moments have {} values, θ has {}", v.len(), spec.num_params())));
    }
    w.set_optimizer(opt, moments);
    w.run(spec, model.params(), x, y, m, inner, None, false, MomentsStart::Kept, &mut rng, None, None);
    crate::error::check_finite(&w.theta_p, "adapted θ'").map_err(|e| Error::Diverged {
        iteration: 0,
        reason: format!("adaptation produced a non-finite parameter ({e})"),
    })?;
    Model::from_slice(spec.clone(), &w.theta_p)
}
