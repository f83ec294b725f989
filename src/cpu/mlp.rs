//! Fused MLP forward, loss and backward on the CPU, one task at a time.
//!
//! Shapes: a batch of `points` inputs `X` is `[points × in]` row-major; layer `l` keeps its
//! post-activation output `A_l` `[points × out_l]` in the [`Workspace`] for backward (the last
//! layer's `A` is the network output, linear). θ and gradients use the flat layout of
//! [`crate::spec`]. The calling sequence for one training step is
//! [`forward`] → [`loss_grad`] → [`backward`] (or [`backward_sgd`], which applies
//! `θ ← θ − lr·∇` layer by layer while it goes, without a gradient buffer).
//!
//! These are low-level kernels with documented preconditions (shapes agree with the spec);
//! the checked entry points are [`crate::Model`] and [`crate::Trainer`].

use super::aligned::AlignedVec;
use super::gemm;
use super::simd::{Policy, dispatch};
use super::sparse::{self, SparseFirst, Src};
use super::update;
use crate::spec::{Activation, Loss, MlpSpec};

/// Scratch memory for one task's forward/backward, sized once for a spec and a maximum
/// number of points; the kernels never allocate.
#[derive(Clone, Debug)]
pub struct Workspace {
    cap: usize,
    /// Layer `l`'s activations at `act_off[l]·cap .. + points·out_l`.
    acts: AlignedVec,
    act_off: Vec<usize>,
    /// Ping-pong buffers for `dL/dZ`, `[cap × max_width]` each.
    grad_cur: AlignedVec,
    grad_next: AlignedVec,
    /// Gradient tile of the fused Adam backward: a few whole rows of one layer's `dW`
    /// (at most [`ADAM_TILE`] floats, at least one row), kept in L1 between the product and
    /// the update.
    tile: AlignedVec,
    /// Row pieces of a split forward product (see [`split_rows`]), `[cap × max_width]`.
    zsplit: AlignedVec,
}

/// Floats in the fused Adam backward's gradient tile (16 KB, a third of L1).
const ADAM_TILE: usize = 4096;

/// Layers with at least this many weights split their forward product and their fused Adam
/// update into pieces of whole rows (see [`split_rows`]).
const SPLIT_MIN_WEIGHTS: usize = 1 << 16;

/// Smallest piece of a split layer, in weights.
const SPLIT_GRAIN: usize = 1 << 15;

/// Whether a layer's row-parallel work (the forward product `X·Wᵀ` by output rows, the fused
/// weight gradient + Adam update by rows of `W`) is cut into pieces run with `rayon::join`:
/// large layers, minibatches of the small-batch kernels, and only on a thread of a pool with
/// more than one thread. Inside a meta-batch that is the trainer's pool: while both threads
/// run tasks of their own, a thread runs its pieces itself (a join costs a deque push and pop);
/// when one runs out of tasks, it takes pieces of the other's task in flight, so an odd
/// meta-batch (Omniglot's 5 tasks on 2 threads) does not end with one thread idle for a whole
/// task. Each output and parameter is computed by the same code whatever the pieces, so the
/// results are bit-identical to the unsplit pass.
fn split_rows(points: usize, inp: usize, out: usize) -> bool {
    inp > 1
        && inp <= ADAM_TILE
        && out >= 2
        && points <= gemm::SMALL_POINTS
        && out * inp >= SPLIT_MIN_WEIGHTS
        && rayon::current_thread_index().is_some()
        && rayon::current_num_threads() > 1
}

/// Where rows `lo..hi` (of width `inp`) are cut in two, if they are large enough: near the
/// middle, on a multiple of 8 rows (the forward kernel's output block) when there are 16 or more.
fn split_point(lo: usize, hi: usize, inp: usize) -> Option<usize> {
    let n = hi - lo;
    if n < 2 || n * inp < 2 * SPLIT_GRAIN {
        return None;
    }
    let half = n / 2;
    Some(lo + if half >= 8 { half / 8 * 8 } else { half })
}

impl Workspace {
    /// A workspace for `spec` and batches of up to `max_points` points.
    pub fn new(spec: &MlpSpec, max_points: usize) -> Self {
        let mut act_off = Vec::with_capacity(spec.num_layers());
        let mut off = 0;
        for &w in &spec.widths()[1..] {
            act_off.push(off);
            off += w;
        }
        let cap = max_points.max(1);
        Workspace {
            cap,
            acts: AlignedVec::zeros(cap * spec.act_floats_per_point()),
            act_off,
            grad_cur: AlignedVec::zeros(cap * spec.max_width()),
            grad_next: AlignedVec::zeros(cap * spec.max_width()),
            tile: AlignedVec::zeros(ADAM_TILE.max(spec.max_width())),
            zsplit: AlignedVec::zeros(cap * spec.max_width()),
        }
    }

    /// Largest batch this workspace holds.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The network output of the last [`forward`], `[points × out]`.
    pub fn output(&self, spec: &MlpSpec, points: usize) -> &[f32] {
        let l = spec.num_layers() - 1;
        let start = self.act_off[l] * self.cap;
        &self.acts[start..start + points * spec.out_dim()]
    }

    /// The first layer's pre-activation area `Z_0` (`[points × out_0]`, read by
    /// [`forward_continue`]) and a scratch area of the same size.
    pub fn z0_and_scratch(&mut self, spec: &MlpSpec, points: usize) -> (&mut [f32], &mut [f32]) {
        self.check(spec, points);
        let n = points * spec.widths()[1];
        (&mut self.acts[..n], &mut self.zsplit[..n])
    }

    fn check(&self, spec: &MlpSpec, points: usize) {
        assert!(
            points <= self.cap && self.act_off.len() == spec.num_layers(),
            "workspace sized for {} points of another spec, asked for {points}",
            self.cap
        );
    }
}

/// Targets of one batch: real values `[points × out]` for MSE, class indices `[points]` for
/// cross-entropy.
#[derive(Clone, Copy, Debug)]
pub enum Tgt<'a> {
    /// Regression targets, `[points × out]`.
    Values(&'a [f32]),
    /// Class labels in `0..out`, `[points]`.
    Labels(&'a [u32]),
}

/// Forward pass: for each layer `A_l = act(A_{l−1}·W_lᵀ + b_l)` (no activation on the last),
/// bias broadcast into the output rows before the product accumulates onto them, activation
/// applied in place. Returns the output `[points × out]`.
///
/// Preconditions: `theta.len() == spec.num_params()`, `x.len() == points·in`,
/// `points <= ws.capacity()` (panics otherwise).
pub fn forward<'w>(spec: &MlpSpec, theta: &[f32], x: &[f32], points: usize, ws: &'w mut Workspace) -> &'w [f32] {
    ws.check(spec, points);
    assert_eq!(theta.len(), spec.num_params(), "θ length");
    assert_eq!(x.len(), points * spec.in_dim(), "x length");
    forward_d(spec, theta, x, points, ws);
    ws.output(spec, points)
}

dispatch! { fn forward_d(spec: &MlpSpec, theta: &[f32], x: &[f32], points: usize, ws: &mut Workspace) => forward_body }

#[inline(always)]
fn forward_body<P: Policy>(spec: &MlpSpec, theta: &[f32], x: &[f32], points: usize, ws: &mut Workspace) {
    forward_layers::<P>(spec, theta, x, points, ws, 0);
}

/// [`forward`] when the first layer's pre-activation `Z_0 = X·W_0ᵀ + b_0` of these `points`
/// inputs is already in the workspace, computed at the current θ by the fused Adam backward of
/// the step before ([`backward_adam_ahead`]): applies the activation to it and runs the other
/// layers. Returns the output `[points × out]`.
///
/// Preconditions: as [`forward`], and `Z_0` of the same `points` inputs at this θ in `ws`.
pub fn forward_continue<'w>(spec: &MlpSpec, theta: &[f32], points: usize, ws: &'w mut Workspace) -> &'w [f32] {
    ws.check(spec, points);
    assert_eq!(theta.len(), spec.num_params(), "θ length");
    forward_continue_d(spec, theta, points, ws);
    ws.output(spec, points)
}

dispatch! { fn forward_continue_d(spec: &MlpSpec, theta: &[f32], points: usize, ws: &mut Workspace) => forward_continue_body }

#[inline(always)]
fn forward_continue_body<P: Policy>(spec: &MlpSpec, theta: &[f32], points: usize, ws: &mut Workspace) {
    if spec.num_layers() > 1 {
        activate::<P>(spec.activation(), &mut ws.acts[..points * spec.widths()[1]]);
    }
    forward_layers::<P>(spec, theta, &[], points, ws, 1);
}

/// Layers `first..` of the forward pass (`x` is read only when `first == 0`).
#[inline(always)]
fn forward_layers<P: Policy>(
    spec: &MlpSpec,
    theta: &[f32],
    x: &[f32],
    points: usize,
    ws: &mut Workspace,
    first: usize,
) {
    let cap = ws.cap;
    let widths = spec.widths();
    let nl = spec.num_layers();
    for l in first..nl {
        let (inp, out) = (widths[l], widths[l + 1]);
        let w = &theta[spec.weight_offset(l)..][..inp * out];
        let b = &theta[spec.bias_offset(l)..][..out];
        let (before, rest) = ws.acts.split_at_mut(ws.act_off[l] * cap);
        let z = &mut rest[..points * out];
        let a_prev: &[f32] = if l == 0 { x } else { &before[ws.act_off[l - 1] * cap..][..points * inp] };
        if split_rows(points, inp, out) {
            // Pieces of output rows: piece `lo..hi` writes `[points × (hi − lo)]` at
            // `zsplit[points·lo..]`, then the pieces are copied into their columns of Z.
            let zs = &mut ws.zsplit[..points * out];
            xwt_rows::<P>(points, inp, 0, out, a_prev, w, b, zs);
            scatter_rows(points, inp, out, 0, out, zs, z);
        } else {
            gemm::xwt_p::<P>(points, inp, out, a_prev, w, b, z);
        }
        if l + 1 < nl {
            activate::<P>(spec.activation(), z);
        }
    }
}

/// Forward product of output rows `lo..hi` of a layer into `zs` (`[points × (hi − lo)]`),
/// cut in two at [`split_point`] and run with `rayon::join` until the pieces are small.
#[allow(clippy::too_many_arguments)]
fn xwt_rows<P: Policy>(
    points: usize,
    inp: usize,
    lo: usize,
    hi: usize,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    zs: &mut [f32],
) {
    match split_point(lo, hi, inp) {
        Some(mid) => {
            let (a, b) = zs.split_at_mut(points * (mid - lo));
            rayon::join(
                || xwt_rows::<P>(points, inp, lo, mid, x, w, bias, a),
                || xwt_rows::<P>(points, inp, mid, hi, x, w, bias, b),
            );
        }
        // Entered for the instruction set: this recursion is compiled for the baseline target
        // (see `Policy::enter`).
        None => P::enter(|| gemm::xwt_p::<P>(points, inp, hi - lo, x, &w[lo * inp..hi * inp], &bias[lo..hi], zs)),
    }
}

/// Copies the pieces [`xwt_rows`] left in `zs` into their columns of `z` `[points × out]`.
fn scatter_rows(points: usize, inp: usize, out: usize, lo: usize, hi: usize, zs: &[f32], z: &mut [f32]) {
    match split_point(lo, hi, inp) {
        Some(mid) => {
            scatter_rows(points, inp, out, lo, mid, zs, z);
            scatter_rows(points, inp, out, mid, hi, zs, z);
        }
        None => {
            let n = hi - lo;
            for (p, piece) in zs[points * lo..points * hi].chunks_exact(n).enumerate() {
                z[p * out + lo..p * out + hi].copy_from_slice(piece);
            }
        }
    }
}

/// Applies the hidden activation in place.
#[inline(always)]
fn activate<P: Policy>(act: Activation, z: &mut [f32]) {
    match act {
        Activation::Tanh => P::tanh_slice(z),
        Activation::Relu => z.iter_mut().for_each(|v| *v = v.max(0.0)),
    }
}

/// Loss of the last [`forward`] output against `targets`, and its gradient `dL/dY` written
/// into the workspace for [`backward`]. MSE: `mean((y − t)²)` over points and outputs;
/// softmax cross-entropy: `mean(logsumexp(y) − y[label])` over points, computed stably, with
/// gradient `(softmax(y) − onehot)/points`. The loss is accumulated in f64.
///
/// Preconditions: targets sized `[points × out]` (values) or `[points]` (labels `< out`).
pub fn loss_grad(spec: &MlpSpec, targets: Tgt<'_>, points: usize, ws: &mut Workspace) -> f32 {
    ws.check(spec, points);
    let out = spec.out_dim();
    let l = spec.num_layers() - 1;
    let y = &ws.acts[ws.act_off[l] * ws.cap..][..points * out];
    let dy = &mut ws.grad_cur[..points * out];
    match (spec.loss(), targets) {
        (Loss::Mse, Tgt::Values(t)) => {
            assert_eq!(t.len(), points * out, "target length");
            let scale = 2.0 / (points * out) as f32;
            let mut sum = 0.0f64;
            for ((g, &y), &t) in dy.iter_mut().zip(y).zip(t) {
                let d = y - t;
                sum += (d * d) as f64;
                *g = scale * d;
            }
            (sum / (points * out) as f64) as f32
        }
        (Loss::SoftmaxCrossEntropy, Tgt::Labels(lab)) => {
            assert_eq!(lab.len(), points, "label count");
            let inv = 1.0 / points as f32;
            let mut sum = 0.0f64;
            for ((yrow, grow), &c) in y.chunks_exact(out).zip(dy.chunks_exact_mut(out)).zip(lab) {
                let c = c as usize;
                assert!(c < out, "label {c} out of range 0..{out}");
                let m = yrow.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut s = 0.0f32;
                for (g, &v) in grow.iter_mut().zip(yrow) {
                    let e = (v - m).exp();
                    *g = e;
                    s += e;
                }
                sum += (m + s.ln() - yrow[c]) as f64;
                let k = inv / s;
                grow.iter_mut().for_each(|g| *g *= k);
                grow[c] -= inv;
            }
            (sum / points as f64) as f32
        }
        (loss, _) => panic!("targets do not match the loss {loss:?}"),
    }
}

/// Loss only (no gradient), for evaluation; same definitions as [`loss_grad`]. Also returns
/// the number of correctly classified points for cross-entropy (argmax, first index on ties).
pub fn loss_eval(spec: &MlpSpec, targets: Tgt<'_>, points: usize, ws: &mut Workspace) -> (f32, usize) {
    let loss = loss_grad(spec, targets, points, ws);
    let correct = match targets {
        Tgt::Labels(lab) => {
            let out = spec.out_dim();
            ws.output(spec, points).chunks_exact(out).zip(lab).filter(|(row, c)| argmax(row) == **c as usize).count()
        }
        Tgt::Values(_) => 0,
    };
    (loss, correct)
}

/// [`loss_eval`] of `points = views·q` outputs holding `views` view-major blocks of the same
/// `q` points (see [`crate::meta::EvalTasks::with_query_views`]), each point scored by its mean
/// prediction over the views: for cross-entropy the mean of the softmax probabilities `p̄`
/// (loss `−ln p̄[label]`, correct when `argmax p̄` is the label), for MSE the mean output.
/// Accumulated in f64; the targets are those of the first block (`q` rows). Returns the mean
/// loss over the `q` points and the correct count.
pub fn loss_eval_views(spec: &MlpSpec, targets: Tgt<'_>, points: usize, views: usize, ws: &Workspace) -> (f32, usize) {
    ws.check(spec, points);
    assert!(views > 0 && points.is_multiple_of(views), "views must divide the points");
    let (out, q) = (spec.out_dim(), points / views);
    let l = spec.num_layers() - 1;
    let y = &ws.acts[ws.act_off[l] * ws.cap..][..points * out];
    let mut mean = vec![0.0f64; out];
    let (mut sum, mut correct) = (0.0f64, 0usize);
    for i in 0..q {
        mean.fill(0.0);
        for v in 0..views {
            let row = &y[(v * q + i) * out..][..out];
            match spec.loss() {
                Loss::SoftmaxCrossEntropy => {
                    let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
                    let s: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
                    mean.iter_mut().zip(row).for_each(|(p, &x)| *p += (x as f64 - m).exp() / s);
                }
                Loss::Mse => mean.iter_mut().zip(row).for_each(|(p, &x)| *p += x as f64),
            }
        }
        mean.iter_mut().for_each(|p| *p /= views as f64);
        match (spec.loss(), targets) {
            (Loss::SoftmaxCrossEntropy, Tgt::Labels(lab)) => {
                let c = lab[i] as usize;
                assert!(c < out, "label {c} out of range 0..{out}");
                sum -= mean[c].ln();
                correct += usize::from(argmax(&mean) == c);
            }
            (Loss::Mse, Tgt::Values(t)) => {
                sum += mean.iter().zip(&t[i * out..][..out]).map(|(p, &t)| (p - t as f64).powi(2)).sum::<f64>()
                    / out as f64;
            }
            (loss, _) => panic!("targets do not match the loss {loss:?}"),
        }
    }
    ((sum / q as f64) as f32, correct)
}

/// Index of the largest value (first on ties; NaN never wins).
pub fn argmax<T: PartialOrd + Copy>(row: &[T]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Where backward's parameter gradient goes.
enum Sink<'a> {
    /// `grad ← ∇θ` (overwritten).
    Grad { theta: &'a [f32], grad: &'a mut [f32] },
    /// `θ ← θ − lr·∇θ`, applied per layer after that layer's input gradient is computed.
    Sgd { theta: &'a mut [f32], lr: f32 },
    /// One Adam step with β1 = 0 (see [`crate::cpu::update::adam_b1zero`]), applied per tile
    /// of gradient rows straight from the product, without a gradient buffer.
    Adam {
        theta: &'a mut [f32],
        v: &'a mut [f32],
        step: AdamStep,
        from: Option<AdamFrom<'a>>,
        acc: Option<Accumulate<'a>>,
        /// The next forward's inputs, whose first-layer product is computed from each tile of
        /// updated rows of `W_0` (see [`backward_adam_ahead`]), if [`ahead_fits`].
        ahead: Option<&'a [f32]>,
        /// `W_0` on the transposed path instead ([`backward_adam_sparse`]).
        sparse0: Option<Sparse0<'a>>,
    },
}

/// The first layer of a fused Adam step on the transposed path ([`super::sparse`]): the
/// task's state, the meta-iteration's transposed source and the runs of nonzero columns of
/// this step's inputs ([`super::sparse::nonzero_runs`]). The dense code then leaves `W_0`'s
/// part of θ', `v` and the sources alone, and the sums of `W_0` receive the layer in the
/// transposed layout; the bias `b_0` stays on the dense path.
#[derive(Debug)]
pub struct Sparse0<'a> {
    /// The task's transposed first layer.
    pub state: &'a mut SparseFirst,
    /// The transposed `W_0` (and moments) the task starts from.
    pub src: Src<'a>,
    /// Runs of nonzero columns of the step's inputs.
    pub runs: &'a [(u32, u32)],
}

/// Where a fused Adam backward reads θ and `v` when the destination buffers are not
/// initialised yet (the first inner step of a task): each tile of `θ'`/`v` is first filled
/// from here (`v: None` = zeros), while it is hot in L1, then updated. The input gradients
/// read `W` from `theta` too. Every parameter of `θ'` and `v` is written.
#[derive(Clone, Copy, Debug)]
pub struct AdamFrom<'a> {
    /// θ to start from.
    pub theta: &'a [f32],
    /// Starting second moments, or `None` for zeros.
    pub v: Option<&'a [f32]>,
}

/// Running sums that a task's last fused Adam step adds its result to, tile by tile while the
/// tile is in L1 (instead of a later pass over the whole parameter vector): `delta ← θ' − base`
/// (`first`) or `delta ← delta + (θ' − base)`, and likewise `moments ← v` or `moments + v`.
/// The arithmetic of [`crate::cpu::update::delta`] / `accumulate_delta` / `add_assign`, so the
/// sums are bit-identical to the separate passes.
#[derive(Debug)]
pub struct Accumulate<'a> {
    /// θ the delta is taken against.
    pub base: &'a [f32],
    /// The delta sum.
    pub delta: &'a mut [f32],
    /// The moments sum, when moments are carried.
    pub moments: Option<&'a mut [f32]>,
    /// Overwrite (the first task of a sum) instead of adding.
    pub first: bool,
}

impl<'a> AdamFrom<'a> {
    /// The sources of parameters `r` of the flat vector.
    fn range(self, r: std::ops::Range<usize>) -> AdamFrom<'a> {
        AdamFrom { theta: &self.theta[r.clone()], v: self.v.map(|v| &v[r]) }
    }
}

impl<'a> Accumulate<'a> {
    /// The sums of parameters `r` only (indices rebased to `r.start`).
    pub(crate) fn reborrow(&mut self, r: std::ops::Range<usize>) -> Accumulate<'_> {
        Accumulate {
            base: &self.base[r.clone()],
            delta: &mut self.delta[r.clone()],
            moments: self.moments.as_deref_mut().map(|m| &mut m[r]),
            first: self.first,
        }
    }

    /// Cuts the sums at parameter `k`: `[..k]` and `[k..]`.
    pub(crate) fn split_at(self, k: usize) -> (Accumulate<'a>, Accumulate<'a>) {
        let (b1, b2) = self.base.split_at(k);
        let (d1, d2) = self.delta.split_at_mut(k);
        let (m1, m2) = match self.moments {
            Some(m) => {
                let (m1, m2) = m.split_at_mut(k);
                (Some(m1), Some(m2))
            }
            None => (None, None),
        };
        let first = self.first;
        (Accumulate { base: b1, delta: d1, moments: m1, first }, Accumulate { base: b2, delta: d2, moments: m2, first })
    }

    /// Panics unless the sums cover `p` parameters.
    pub(crate) fn check(&self, p: usize) {
        assert!(self.base.len() == p && self.delta.len() == p, "delta sum length");
        assert!(self.moments.as_ref().is_none_or(|m| m.len() == p), "moments sum length");
    }

    /// Adds `θ'[span] − base[span]` (and `v[span]`) to the sums, or writes them when `first`.
    #[inline(always)]
    fn add_span<P: Policy>(&mut self, span: std::ops::Range<usize>, theta: &[f32], v: &[f32]) {
        let (t, base, d) = (&theta[span.clone()], &self.base[span.clone()], &mut self.delta[span.clone()]);
        if self.first {
            update::delta_body::<P>(d, t, base);
        } else {
            update::accumulate_body::<P>(d, t, base);
        }
        if let Some(m) = self.moments.as_mut() {
            if self.first {
                m[span.clone()].copy_from_slice(&v[span]);
            } else {
                update::add_assign_body::<P>(&mut m[span.clone()], &v[span]);
            }
        }
    }
}

/// Adds a whole task's θ' (and, with a moments sum, its `v`) to the sums of `acc` in one pass:
/// what a fused last step does tile by tile ([`backward_adam_acc`]), for runs that cannot fuse
/// it (SGD, FOMAML, no steps).
pub fn accumulate(acc: &mut Accumulate<'_>, theta: &[f32], v: &[f32]) {
    acc.check(theta.len());
    assert!(acc.moments.is_none() || v.len() == theta.len(), "moments length");
    accumulate_d(acc, theta, v);
}

dispatch! { fn accumulate_d(acc: &mut Accumulate<'_>, theta: &[f32], v: &[f32]) => accumulate_body }

#[inline(always)]
fn accumulate_body<P: Policy>(acc: &mut Accumulate<'_>, theta: &[f32], v: &[f32]) {
    acc.add_span::<P>(0..theta.len(), theta, v);
}

/// Backward pass after [`forward`] and [`loss_grad`] on the same batch: writes `∇θ` of the
/// loss into `grad` (flat layout). Per layer, from the last: `dW_l = dZ_lᵀ·A_{l−1}`,
/// `db_l = Σ_points dZ_l`, then `dZ_{l−1} = (dZ_l·W_l) ⊙ act'(A_{l−1})`.
pub fn backward(spec: &MlpSpec, theta: &[f32], x: &[f32], points: usize, ws: &mut Workspace, grad: &mut [f32]) {
    assert_eq!(grad.len(), spec.num_params(), "gradient length");
    assert_eq!(theta.len(), spec.num_params(), "θ length");
    backward_d(spec, theta, x, points, ws, grad);
}

dispatch! { fn backward_d(spec: &MlpSpec, theta: &[f32], x: &[f32], points: usize, ws: &mut Workspace, grad: &mut [f32]) => backward_grad_body }
dispatch! { fn backward_sgd_d(spec: &MlpSpec, theta: &mut [f32], x: &[f32], points: usize, ws: &mut Workspace, lr: f32) => backward_sgd_body }
dispatch! { fn backward_adam_d(spec: &MlpSpec, theta: &mut [f32], x: &[f32], points: usize, ws: &mut Workspace, v: &mut [f32], hyper: AdamStep, from: Option<AdamFrom<'_>>, acc: Option<Accumulate<'_>>, ahead: Option<&[f32]>, sparse0: Option<Sparse0<'_>>) => backward_adam_body }

/// The scalars of one Adam step with β1 = 0: `lr_t = α·√(1 − β2^t)` (bias correction folded
/// in), `β2`, `ε`.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    /// Step size with the bias correction folded in.
    pub lr_t: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator guard.
    pub eps: f32,
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_adam_body<P: Policy>(
    spec: &MlpSpec,
    theta: &mut [f32],
    x: &[f32],
    points: usize,
    ws: &mut Workspace,
    v: &mut [f32],
    h: AdamStep,
    from: Option<AdamFrom<'_>>,
    acc: Option<Accumulate<'_>>,
    ahead: Option<&[f32]>,
    sparse0: Option<Sparse0<'_>>,
) {
    backward_impl::<P>(spec, Sink::Adam { theta, v, step: h, from, acc, ahead, sparse0 }, x, points, ws);
}

/// Backward fused with one Adam step (β1 = 0): for each layer, after its input gradient,
/// `dW` is computed a tile of whole rows at a time into an L1-sized buffer and immediately
/// applied as `v ← β2·v + (1 − β2)·g²`, `θ ← θ − lr_t·g/(√v + ε)`, the same arithmetic as
/// [`backward`] followed by [`crate::cpu::update::adam_b1zero`], without the gradient buffer
/// and its two passes over memory. With `from`, `theta` and `v` are outputs only (see
/// [`AdamFrom`]); the preceding [`forward`] must have read `from.theta`.
#[allow(clippy::too_many_arguments)]
pub fn backward_adam(
    spec: &MlpSpec,
    theta: &mut [f32],
    x: &[f32],
    points: usize,
    ws: &mut Workspace,
    v: &mut [f32],
    step: AdamStep,
    from: Option<AdamFrom<'_>>,
) {
    backward_adam_acc(spec, theta, x, points, ws, v, step, from, None);
}

/// [`backward_adam`] that also adds the updated θ' and `v` to running sums ([`Accumulate`]),
/// for the last inner step of a task.
#[allow(clippy::too_many_arguments)]
pub fn backward_adam_acc(
    spec: &MlpSpec,
    theta: &mut [f32],
    x: &[f32],
    points: usize,
    ws: &mut Workspace,
    v: &mut [f32],
    step: AdamStep,
    from: Option<AdamFrom<'_>>,
    acc: Option<Accumulate<'_>>,
) {
    check_adam_args(spec, theta, v, from.as_ref(), acc.as_ref());
    backward_adam_d(spec, theta, x, points, ws, v, step, from, acc, None, None);
}

/// [`backward_adam_acc`] with `W_0` on the transposed path: the layer's weight gradient and
/// Adam update over the runs of nonzero input columns only ([`super::sparse`]), and with
/// `acc` its share of the sums added from the transposed state, in the transposed layout
/// (`acc`'s `W_0` range holds `[in × out]`). `W_0`'s part of `theta`, `v` and `from` is
/// neither read nor written (the state and its source hold it). The preceding forward must be
/// [`SparseFirst::forward`] then [`forward_continue`].
#[allow(clippy::too_many_arguments)]
pub fn backward_adam_sparse(
    spec: &MlpSpec,
    theta: &mut [f32],
    x: &[f32],
    points: usize,
    ws: &mut Workspace,
    v: &mut [f32],
    step: AdamStep,
    from: Option<AdamFrom<'_>>,
    acc: Option<Accumulate<'_>>,
    sparse0: Sparse0<'_>,
) {
    check_adam_args(spec, theta, v, from.as_ref(), acc.as_ref());
    assert_eq!(sparse0.state.shape(), (spec.widths()[0], spec.widths()[1]), "transposed layer shape");
    backward_adam_d(spec, theta, x, points, ws, v, step, from, acc, None, Some(sparse0));
}

/// Panics unless θ, `v`, the sources and the sums all cover the spec's parameters.
fn check_adam_args(
    spec: &MlpSpec,
    theta: &[f32],
    v: &[f32],
    from: Option<&AdamFrom<'_>>,
    acc: Option<&Accumulate<'_>>,
) {
    let p = spec.num_params();
    assert_eq!(theta.len(), p, "θ length");
    assert_eq!(v.len(), p, "Adam moments length");
    if let Some(f) = &from {
        assert_eq!(f.theta.len(), p, "source θ length");
        assert!(f.v.is_none_or(|v| v.len() == p), "source moments length");
    }
    if let Some(a) = &acc {
        a.check(p);
    }
}

/// Whether [`backward_adam_ahead`] can compute the first-layer product of a next batch of
/// `next_points` inputs: a layer-0 gradient tile holds `r = ADAM_TILE / in` rows (at least
/// one) and the product of a tile, `[next_points × r]`, must fit in a tile too.
pub fn ahead_fits(spec: &MlpSpec, next_points: usize, ws: &Workspace) -> bool {
    let (inp, out) = (spec.widths()[0], spec.widths()[1]);
    let rows = tile_rows(inp, out, true);
    next_points >= 1 && next_points <= ws.cap && next_points * rows <= ADAM_TILE
}

/// Rows of `W` (`n` rows of width `inp`) per gradient tile of the fused Adam pass: as many
/// as fit in [`ADAM_TILE`] floats, at least one. With a fused next forward (`ahead`), a
/// multiple of 4 when there are 4 or more: the forward kernel's large-`W` block is 4 rows
/// (`XWT_RO` in `cpu::x86`), so no tile ends in a slow one-row remainder. The tile size
/// changes no result (every element is updated on its own).
fn tile_rows(inp: usize, n: usize, ahead: bool) -> usize {
    let rows = (ADAM_TILE / inp).clamp(1, n);
    if ahead && rows >= 4 { rows / 4 * 4 } else { rows }
}

/// [`backward_adam_acc`] that also starts the next step's forward: as each tile of rows of
/// `W_0` is updated (bias `b_0` first), the first-layer pre-activation `Z_0 = X'·W_0ᵀ + b_0` of
/// the next batch `next_x` (`[next_points × in]`) is computed from it while it is in L1, into
/// the workspace, so the next [`forward_continue`] does not read `W_0` again. Each output is
/// computed by the same forward kernel code as in [`forward`], so the result is bit-identical
/// to `forward` after the update. Returns whether it did ([`ahead_fits`]); if not, this is
/// [`backward_adam_acc`] and the next forward must be a full [`forward`].
///
/// The workspace's activations of this step are overwritten (backward is done with them).
#[allow(clippy::too_many_arguments)]
pub fn backward_adam_ahead(
    spec: &MlpSpec,
    theta: &mut [f32],
    x: &[f32],
    points: usize,
    ws: &mut Workspace,
    v: &mut [f32],
    step: AdamStep,
    from: Option<AdamFrom<'_>>,
    acc: Option<Accumulate<'_>>,
    next_x: &[f32],
) -> bool {
    check_adam_args(spec, theta, v, from.as_ref(), acc.as_ref());
    let inp = spec.in_dim();
    assert!(next_x.len().is_multiple_of(inp), "next inputs length");
    let fits = ahead_fits(spec, next_x.len() / inp, ws);
    backward_adam_d(spec, theta, x, points, ws, v, step, from, acc, fits.then_some(next_x), None);
    fits
}

#[inline(always)]
fn backward_grad_body<P: Policy>(
    spec: &MlpSpec,
    theta: &[f32],
    x: &[f32],
    points: usize,
    ws: &mut Workspace,
    grad: &mut [f32],
) {
    backward_impl::<P>(spec, Sink::Grad { theta, grad }, x, points, ws);
}

#[inline(always)]
fn backward_sgd_body<P: Policy>(
    spec: &MlpSpec,
    theta: &mut [f32],
    x: &[f32],
    points: usize,
    ws: &mut Workspace,
    lr: f32,
) {
    backward_impl::<P>(spec, Sink::Sgd { theta, lr }, x, points, ws);
}

/// Backward fused with SGD: `θ ← θ − lr·∇θ` without a gradient buffer. Each layer's input
/// gradient is computed from `W_l` before `W_l` is updated in place by the weight-gradient
/// product (`α = −lr`, `β = 1`).
pub fn backward_sgd(spec: &MlpSpec, theta: &mut [f32], x: &[f32], points: usize, ws: &mut Workspace, lr: f32) {
    assert_eq!(theta.len(), spec.num_params(), "θ length");
    backward_sgd_d(spec, theta, x, points, ws, lr);
}

#[inline(always)]
fn backward_impl<P: Policy>(spec: &MlpSpec, mut sink: Sink<'_>, x: &[f32], points: usize, ws: &mut Workspace) {
    ws.check(spec, points);
    assert_eq!(x.len(), points * spec.in_dim(), "x length");
    let cap = ws.cap;
    let widths = spec.widths();
    for l in (0..spec.num_layers()).rev() {
        let (inp, out) = (widths[l], widths[l + 1]);
        let (wo, bo) = (spec.weight_offset(l), spec.bias_offset(l));
        // Layer 0's activations are free for a fused next forward (see `ahead`) once layer 1
        // has read them: split them off, so `a_prev` of layer l > 0 borrows the rest.
        let (z0_area, acts) = ws.acts.split_at_mut(if l == 0 { cap * out } else { 0 });
        let a_prev: &[f32] = if l == 0 { x } else { &acts[ws.act_off[l - 1] * cap..][..points * inp] };
        let dz = &ws.grad_cur[..points * out];
        // Input gradient first: it must read W_l before the fused update overwrites it.
        if l > 0 {
            let theta: &[f32] = match &sink {
                Sink::Grad { theta, .. } => theta,
                Sink::Sgd { theta, .. } => theta,
                Sink::Adam { from: Some(f), .. } => f.theta,
                Sink::Adam { theta, .. } => theta,
            };
            let dx = &mut ws.grad_next[..points * inp];
            // dZ_{l−1} = (dZ_l·W_l) ⊙ act'(A_{l−1}), the derivative fused into the product.
            let tanh = matches!(spec.activation(), Activation::Tanh);
            gemm::dzw_act_p::<P>(points, out, inp, dz, &theta[wo..wo + inp * out], dx, tanh, a_prev);
        }
        if let Sink::Adam { theta, v, step, from, acc, ahead, sparse0 } = &mut sink {
            // First step (`from`): each span of θ' and v is read from the source and written
            // updated, out of place (no copy pass). Last step (`acc`): each span is added to
            // the running sums while it is in L1. The bias goes first (the updates are
            // independent, element by element), so a fused next forward (`ahead`, layer 0)
            // reads the updated bias.
            let h = *step;
            let from: Option<AdamFrom<'_>> = *from;
            let br = bo..bo + out;
            let gb = &mut ws.tile[..out];
            bias_grad::<P>(dz, out, 1.0, 0.0, gb);
            let (fb, mut ab) = (from.map(|f| f.range(br.clone())), acc.as_mut().map(|a| a.reborrow(br.clone())));
            adam_span::<P>(&mut theta[br.clone()], &mut v[br], gb, 0..out, fb, ab.as_mut(), h);
            let wr = wo..wo + out * inp;
            if l == 0
                && let Some(sp) = sparse0.as_mut()
            {
                let aw = acc.as_mut().map(|a| a.reborrow(wr.clone()));
                sparse::adam_p::<P>(sp.state, sp.src, x, points, sp.runs, dz, h, aw);
                std::mem::swap(&mut ws.grad_cur, &mut ws.grad_next);
                continue;
            }
            let (tw, tb) = theta[wo..bo + out].split_at_mut(out * inp);
            let vw = &mut v[wr.clone()];
            let (fw, aw) = (from.map(|f| f.range(wr.clone())), acc.as_mut().map(|a| a.reborrow(wr.clone())));
            let next = if l == 0 { *ahead } else { None };
            let np = next.map_or(0, |nx| nx.len() / inp);
            let job = RowsJob {
                out,
                inp,
                points,
                dz,
                a_prev,
                h,
                ahead: next.map(|nx| Ahead { x: nx, points: np, bias: tb }),
            };
            // The next batch's Z_0 overwrites this step's A_0 (layer 1 has read it by now).
            let z0 = &mut z0_area[..np * out];
            if split_rows(points, inp, out) {
                let zs = &mut ws.zsplit[..np * out];
                adam_rows_par::<P>(job, 0, out, tw, vw, fw, aw, zs);
                if next.is_some() {
                    scatter_rows(np, inp, out, 0, out, zs, z0);
                }
            } else {
                let dest = ZDest { z: z0, stride: out, col0: 0 };
                adam_rows::<P>(job, 0, out, tw, vw, fw, aw, &mut ws.tile, dest);
            }
            std::mem::swap(&mut ws.grad_cur, &mut ws.grad_next);
            continue;
        }
        let (g, alpha, beta) = match &mut sink {
            Sink::Grad { grad, .. } => (&mut grad[wo..bo + out], 1.0, 0.0),
            Sink::Sgd { theta, lr } => (&mut theta[wo..bo + out], -*lr, 1.0),
            Sink::Adam { .. } => unreachable!("handled above"),
        };
        let (gw, gb) = g.split_at_mut(inp * out);
        gemm::dztx_p::<P>(out, inp, points, alpha, dz, a_prev, beta, gw);
        bias_grad::<P>(dz, out, alpha, beta, gb);
        std::mem::swap(&mut ws.grad_cur, &mut ws.grad_next);
    }
}

/// One Adam step (β1 = 0) on `theta[span]`/`v[span]` with gradient `g` (`span.len()` values):
/// out of place from `from` when given, then the span added to the sums of `acc`.
#[inline(always)]
fn adam_span<P: Policy>(
    theta: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    span: std::ops::Range<usize>,
    from: Option<AdamFrom<'_>>,
    acc: Option<&mut Accumulate<'_>>,
    h: AdamStep,
) {
    match from {
        Some(f) => P::adam_slice_from(
            &mut theta[span.clone()],
            &f.theta[span.clone()],
            g,
            &mut v[span.clone()],
            f.v.map(|src| &src[span.clone()]),
            1.0,
            h.lr_t,
            h.beta2,
            h.eps,
        ),
        None => update::adam_body::<P>(&mut theta[span.clone()], g, &mut v[span.clone()], h.lr_t, h.beta2, h.eps),
    }
    if let Some(a) = acc {
        a.add_span::<P>(span, theta, v);
    }
}

/// What every row piece of one layer's fused weight-gradient + Adam pass shares: the layer's
/// shape, its output gradient `dz` `[points × out]`, its input `a_prev` `[points × inp]` and
/// the step's scalars.
#[derive(Clone, Copy)]
struct RowsJob<'a> {
    out: usize,
    inp: usize,
    points: usize,
    dz: &'a [f32],
    a_prev: &'a [f32],
    h: AdamStep,
    ahead: Option<Ahead<'a>>,
}

/// The next forward's first-layer product, computed from each tile of updated rows:
/// inputs `x` `[points × inp]` and the layer's (already updated) bias.
#[derive(Clone, Copy)]
struct Ahead<'a> {
    x: &'a [f32],
    points: usize,
    bias: &'a [f32],
}

/// Where a row piece writes the next batch's `Z_0` columns: `z[p·stride + (r − col0)]` for
/// point `p` and output row `r` of the piece.
struct ZDest<'a> {
    z: &'a mut [f32],
    stride: usize,
    col0: usize,
}

/// Fused weight gradient + Adam step for rows `lo..hi` of a layer's `W` (`[out × inp]`):
/// `theta`, `v`, `from` and `acc` hold exactly those rows. A tile of whole rows at a time,
/// `dW = dZ[:, rows]ᵀ·A_prev` into `tile` (kept in L1), then [`adam_span`] on it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn adam_rows<P: Policy>(
    job: RowsJob<'_>,
    lo: usize,
    hi: usize,
    theta: &mut [f32],
    v: &mut [f32],
    from: Option<AdamFrom<'_>>,
    mut acc: Option<Accumulate<'_>>,
    tile: &mut [f32],
    dest: ZDest<'_>,
) {
    let RowsJob { out, inp, points, dz, a_prev, h, ahead } = job;
    let rows = tile_rows(inp, hi - lo, ahead.is_some());
    let mut r0 = lo;
    while r0 < hi {
        let rr = rows.min(hi - r0);
        let g = &mut tile[..rr * inp];
        gemm::dztx_rows_p::<P>(rr, out, inp, points, 1.0, &dz[r0..], a_prev, 0.0, g);
        let span = (r0 - lo) * inp..(r0 - lo + rr) * inp;
        adam_span::<P>(theta, v, g, span.clone(), from, acc.as_mut(), h);
        if let Some(a) = ahead {
            // The next batch through the updated rows while they are hot; the gradient tile
            // is spent, so it holds the `[points × rr]` product (`ahead_fits`).
            let zt = &mut tile[..a.points * rr];
            gemm::xwt_p::<P>(a.points, inp, rr, a.x, &theta[span], &a.bias[r0..r0 + rr], zt);
            for (p, zrow) in zt.chunks_exact(rr).enumerate() {
                dest.z[p * dest.stride + r0 - dest.col0..][..rr].copy_from_slice(zrow);
            }
        }
        r0 += rr;
    }
}

/// [`adam_rows`] cut into pieces at [`split_point`], run with `rayon::join`; each piece has a
/// gradient tile of its own on its stack.
#[allow(clippy::too_many_arguments)]
fn adam_rows_par<P: Policy>(
    job: RowsJob<'_>,
    lo: usize,
    hi: usize,
    theta: &mut [f32],
    v: &mut [f32],
    from: Option<AdamFrom<'_>>,
    acc: Option<Accumulate<'_>>,
    zs: &mut [f32],
) {
    let np = job.ahead.map_or(0, |a| a.points);
    match split_point(lo, hi, job.inp) {
        Some(mid) => {
            let k = (mid - lo) * job.inp;
            let (t1, t2) = theta.split_at_mut(k);
            let (v1, v2) = v.split_at_mut(k);
            let (z1, z2) = zs.split_at_mut(np * (mid - lo));
            let (f1, f2) = (from.map(|f| f.range(0..k)), from.map(|f| f.range(k..f.theta.len())));
            let (a1, a2) = match acc {
                Some(a) => {
                    let (a1, a2) = a.split_at(k);
                    (Some(a1), Some(a2))
                }
                None => (None, None),
            };
            rayon::join(
                || adam_rows_par::<P>(job, lo, mid, t1, v1, f1, a1, z1),
                || adam_rows_par::<P>(job, mid, hi, t2, v2, f2, a2, z2),
            );
        }
        None => {
            let mut tile = [0.0f32; ADAM_TILE];
            // This piece's Z_0 columns, `[points × (hi − lo)]` (see `scatter_rows`).
            let dest = ZDest { z: zs, stride: hi - lo, col0: lo };
            // Entered for the instruction set: this recursion is compiled for the baseline
            // target (see `Policy::enter`).
            P::enter(|| adam_rows::<P>(job, lo, hi, theta, v, from, acc, &mut tile, dest));
        }
    }
}

/// `gb ← α·Σ_rows dz + β·gb` for `dz` `[points × out]` (column sums, see
/// [`gemm::col_sums_p`]).
#[inline(always)]
fn bias_grad<P: Policy>(dz: &[f32], out: usize, alpha: f32, beta: f32, gb: &mut [f32]) {
    gemm::col_sums_p::<P>(out, out, dz.len() / out, alpha, dz, None, beta, gb);
}
