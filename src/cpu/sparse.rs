//! The first layer for sparse inputs: `W_0` and its Adam moments held transposed,
//! `[in × out]`, so that input columns that are zero in every point of a minibatch cost
//! neither FLOPs nor memory traffic. Omniglot's images are mostly blank: about 54% of the 784
//! pixels are zero in all 10 points of a training minibatch, and `W_0` is 81% of the MLP's
//! parameters.
//!
//! - The trainer holds `W_0` and its carried moments transposed ([`Src`], shared read-only by
//!   all tasks of a meta-iteration) and gets each task's contribution to the sums of `W_0` back
//!   in the transposed layout; it updates the transposed copies with the same element-wise
//!   arithmetic as θ, and builds θ's layout ([`transpose`], exact) only when θ is looked at.
//! - A task's rows of `W_0ᵀ` enter its own state ("materialized") in the first update that
//!   touches them, which reads them from the source; untouched rows are read from the source
//!   and never copied.
//! - Forward: `Z_0 = b_0 + Σ_runs X[:, run]·Wᵀ[run, :]`, one product per run of nonzero
//!   columns ([`nonzero_runs`]) and per stretch of rows that live in the same place.
//! - Backward fused with Adam (β1 = 0): a zero column's gradient is exactly zero, so its
//!   weights do not move and its `v` only decays by β2. The decay is deferred: `pend[i]`
//!   counts the steps column `i` was skipped, and the stored row of `v` times `β2^pend[i]` is
//!   the true `v`, applied (one rounding, subnormals flushed as in
//!   [`super::update::adam_b1zero`]) when the column is next touched or added to the sums.
//!   Touched columns get the dense path's update ([`super::simd::Policy::adam_slice`]).
//!
//! The same function as the dense path of [`super::mlp`] to rounding (sums in another order,
//! `β2^d·v` for `d` separate roundings). Work maps to threads like the dense row split: on a
//! pool of more than one thread each pass runs as two halves with `rayon::join` (columns of
//! `Z_0` for the forward, input columns elsewhere), so a thread that has run out of tasks takes
//! half of a task in flight; every output is computed by the same code whatever the split.

use super::aligned::AlignedVec;
use super::mlp::{Accumulate, AdamStep};
use super::simd::{Policy, dispatch};
use super::update;
use crate::spec::MlpSpec;

/// Runs of nonzero columns separated by at most this many zero columns are merged (fewer,
/// longer products; a merged zero column is updated like the dense path does: `v ← β2·v`).
const GAP: usize = 2;

/// Floats of one gradient tile (16 KB on the stack, as the dense path's `ADAM_TILE`).
const TILE: usize = 4096;

/// Smallest first layer (weights) that takes the transposed path.
const MIN_WEIGHTS: usize = 1 << 16;

static ENABLED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);

/// Whether the trainer runs Adam inner loops on the transposed first layer where it [`suits`]
/// the spec: on by default; `REPTILE_SPARSE_FIRST=0` in the environment or [`set_enabled`]
/// turns it off (for comparisons).
pub fn enabled() -> bool {
    use std::sync::atomic::Ordering;
    match ENABLED.load(Ordering::Relaxed) {
        2 => {
            let on = std::env::var("REPTILE_SPARSE_FIRST").map_or(true, |v| v != "0");
            ENABLED.store(on as u8, Ordering::Relaxed);
            on
        }
        v => v == 1,
    }
}

/// Turns the transposed first layer on or off for the whole process (see [`enabled`]).
pub fn set_enabled(on: bool) {
    ENABLED.store(on as u8, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `spec`'s first layer is large enough for the transposed path (at least 65,536
/// weights and 64 inputs, like Omniglot's 784 × 256).
pub fn suits(spec: &MlpSpec) -> bool {
    let (inp, out) = (spec.widths()[0], spec.widths()[1]);
    inp >= 64 && inp * out >= MIN_WEIGHTS && out <= TILE
}

/// Runs `[start, end)` of the columns of `x` (`[points × inp]`) that are nonzero in at least
/// one point, in order, merged across gaps of at most 2 zero columns. `mask` is scratch.
pub fn nonzero_runs(x: &[f32], points: usize, inp: usize, mask: &mut Vec<u32>, runs: &mut Vec<(u32, u32)>) {
    assert!(x.len() >= points * inp, "x length");
    mask.clear();
    mask.resize(inp, 0);
    for row in x[..points * inp].chunks_exact(inp) {
        mask.iter_mut().zip(row).for_each(|(m, v)| *m |= v.to_bits() & 0x7fff_ffff);
    }
    runs.clear();
    let mut i = 0;
    while i < inp {
        if mask[i] == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < inp && mask[i] != 0 {
            i += 1;
        }
        match runs.last_mut() {
            Some(last) if start - last.1 as usize <= GAP => last.1 = i as u32,
            _ => runs.push((start as u32, i as u32)),
        }
    }
}

/// The shared source of a meta-iteration's tasks: θ's `W_0` transposed (`[in × out]`) and,
/// when moments are carried, the carried `v` of `W_0` transposed (`None`: zeros).
#[derive(Clone, Copy, Debug)]
pub struct Src<'a> {
    /// `W_0ᵀ`, `[in × out]`.
    pub w0t: &'a [f32],
    /// Starting moments of `W_0`, transposed, or `None` for zeros.
    pub v0t: Option<&'a [f32]>,
}

/// A task's first layer in the transposed layout: its materialized rows of `θ'_0ᵀ` and of the
/// stored moments, and the deferred decay counts (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct SparseFirst {
    inp: usize,
    out: usize,
    /// `θ'_0ᵀ`, `[inp × out]`; row `i` valid when `mat[i]`.
    wt: AlignedVec,
    /// Stored second moments, `[inp × out]`; the true `v` of row `i` is this (or the source's
    /// row, when not `mat[i]`) times `β2^pend[i]`.
    vt: AlignedVec,
    /// Steps of deferred decay per input column.
    pend: Vec<u32>,
    /// Whether the task has its own copy of row `i`.
    mat: Vec<bool>,
}

/// Whether the passes split in two halves on this thread (see the module docs).
fn par() -> bool {
    rayon::current_thread_index().is_some() && rayon::current_num_threads() > 1
}

/// Where `0..n` is cut in two: the middle, rounded down to a multiple of 8, or `None` when
/// too small to be worth a join.
fn half(n: usize) -> Option<usize> {
    let mid = n / 2 / 8 * 8;
    (mid >= 8 && n - mid >= 8).then_some(mid)
}

/// `β2^d`, the factor of `d` deferred decays.
#[inline(always)]
fn factor(beta2: f32, d: u32) -> f32 {
    beta2.powi(d as i32)
}

/// `v ← β2^d·v` with subnormal results stored as zero (`d = 0` leaves `v` as it is).
#[inline(always)]
fn decay(v: &mut [f32], beta2: f32, d: u32) {
    if d == 0 {
        return;
    }
    let f = factor(beta2, d);
    v.iter_mut().for_each(|x| *x = update::decayed(*x, f));
}

/// `m ← β2^d·v` (`first`) or `m ← m + β2^d·v`, the product rounded and flushed exactly as
/// [`decay`] does (`d ≥ 1`).
#[inline(always)]
fn decay_into(m: &mut [f32], v: &[f32], beta2: f32, d: u32, first: bool) {
    let f = factor(beta2, d);
    if first {
        m.iter_mut().zip(v).for_each(|(m, &x)| *m = update::decayed(x, f));
    } else {
        m.iter_mut().zip(v).for_each(|(m, &x)| *m += update::decayed(x, f));
    }
}

impl SparseFirst {
    /// State for a first layer of `inp` inputs and `out` outputs (allocates).
    pub fn new(inp: usize, out: usize) -> Self {
        SparseFirst {
            inp,
            out,
            wt: AlignedVec::zeros(inp * out),
            vt: AlignedVec::zeros(inp * out),
            pend: vec![0; inp],
            mat: vec![false; inp],
        }
    }

    /// Shape `(inp, out)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.inp, self.out)
    }

    /// Starts a task: every row read from the source, no decay pending.
    pub fn begin(&mut self) {
        self.pend.fill(0);
        self.mat.fill(false);
    }

    /// Panics unless `src` matches this layer's shape.
    pub fn check_src(&self, src: &Src<'_>) {
        let n = self.inp * self.out;
        assert_eq!(src.w0t.len(), n, "transposed W_0 length");
        assert!(src.v0t.is_none_or(|v| v.len() == n), "transposed moments length");
    }

    /// This task's contribution, after its last step, to the sums of rows `rows` of `W_0ᵀ`
    /// (`delta` and `moments` hold exactly those rows, `[rows.len() × out]`): written when
    /// `first`, added otherwise; the same arithmetic as the sums fused into the last step of
    /// [`super::mlp::backward_adam_sparse`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_sums(
        &self,
        src: Src<'_>,
        rows: std::ops::Range<usize>,
        beta2: f32,
        delta: &mut [f32],
        moments: Option<&mut [f32]>,
        first: bool,
    ) {
        self.check_src(&src);
        let n = rows.len() * self.out;
        assert!(rows.end <= self.inp, "rows out of range");
        assert!(delta.len() == n && moments.as_ref().is_none_or(|m| m.len() == n), "sums length");
        let (out, r) = (self.out, rows.clone());
        let part = SumRows {
            wt: &self.wt[r.start * out..r.end * out],
            vt: &self.vt[r.start * out..r.end * out],
            pend: &self.pend[r.clone()],
            mat: &self.mat[r],
        };
        sums_d(src, out, rows.start, part, beta2, delta, moments, first);
    }

    /// `Z_0 ← b_0 + X·W_0ᵀ` over the `runs` of nonzero columns of `x` (`[points × inp]`), into
    /// `z` (`[points × out]`); `zs` (as long as `z`) holds the halves of a split pass.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        src: Src<'_>,
        x: &[f32],
        points: usize,
        runs: &[(u32, u32)],
        bias: &[f32],
        z: &mut [f32],
        zs: &mut [f32],
    ) {
        let (inp, out) = (self.inp, self.out);
        self.check_src(&src);
        assert!(x.len() >= points * inp && bias.len() == out, "x / bias length");
        assert!(z.len() >= points * out && zs.len() >= points * out, "z length");
        assert!(runs.iter().all(|&(s, e)| s < e && e as usize <= inp), "runs out of range");
        forward_d(self, src, x, points, runs, bias, z, zs);
    }
}

/// `dst ← srcᵀ`: `src` `[rows × cols]` into `dst` `[cols × rows]` (8 × 8 blocks,
/// [`Policy::transpose8`]); in two halves of `dst` rows on a parallel pool.
pub fn transpose(rows: usize, cols: usize, src: &[f32], dst: &mut [f32]) {
    assert!(src.len() == rows * cols && dst.len() == rows * cols, "transpose lengths");
    transpose_d(rows, cols, src, dst);
}

dispatch! { fn transpose_d(rows: usize, cols: usize, src: &[f32], dst: &mut [f32]) => transpose_body }

#[inline(always)]
fn transpose_body<P: Policy>(rows: usize, cols: usize, src: &[f32], dst: &mut [f32]) {
    if par()
        && let Some(mid) = half(cols)
    {
        let (d1, d2) = dst.split_at_mut(mid * rows);
        rayon::join(
            || P::enter(|| transpose_into::<P>(src, cols, rows, mid, d1)),
            || P::enter(|| transpose_into::<P>(&src[mid..], cols, rows, cols - mid, d2)),
        );
    } else {
        transpose_into::<P>(src, cols, rows, cols, dst);
    }
}

/// `dst[c·rows + r] = src[r·lds + c]` for `r < rows`, `c < cols` (`dst` `[cols × rows]`).
/// Strips of 32 `dst` rows, each written from start to end as the source rows go by, 8 × 8
/// blocks at a time: 32 lines being written at once whatever the strides (a whole `dst`
/// column of blocks at once, 784 lines 1 KB apart for Omniglot's layer, falls into 4 of L1's
/// 64 sets and evicts itself).
#[inline(always)]
fn transpose_into<P: Policy>(src: &[f32], lds: usize, rows: usize, cols: usize, dst: &mut [f32]) {
    const STRIP: usize = 32;
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    for c0 in (0..c8).step_by(STRIP) {
        let c1 = (c0 + STRIP).min(c8);
        for r in (0..r8).step_by(8) {
            for c in (c0..c1).step_by(8) {
                P::transpose8(&src[r * lds + c..], lds, &mut dst[c * rows + r..], rows);
            }
        }
    }
    for c in 0..cols {
        for r in (if c < c8 { r8 } else { 0 })..rows {
            dst[c * rows + r] = src[r * lds + c];
        }
    }
}

dispatch! { fn forward_d(s: &SparseFirst, src: Src<'_>, x: &[f32], points: usize, runs: &[(u32, u32)], bias: &[f32], z: &mut [f32], zs: &mut [f32]) => forward_body }

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_body<P: Policy>(
    s: &SparseFirst,
    src: Src<'_>,
    x: &[f32],
    points: usize,
    runs: &[(u32, u32)],
    bias: &[f32],
    z: &mut [f32],
    zs: &mut [f32],
) {
    let out = s.out;
    if par()
        && let Some(mid) = half(out)
    {
        // Two pieces of columns, each `[points × width]` in `zs`, then copied into `z`.
        let (z1, z2) = zs[..points * out].split_at_mut(points * mid);
        rayon::join(
            || P::enter(|| forward_cols::<P>(s, src, x, points, runs, bias, 0, mid, z1)),
            || P::enter(|| forward_cols::<P>(s, src, x, points, runs, bias, mid, out, z2)),
        );
        for p in 0..points {
            z[p * out..][..mid].copy_from_slice(&zs[p * mid..][..mid]);
            z[p * out + mid..][..out - mid].copy_from_slice(&zs[points * mid + p * (out - mid)..][..out - mid]);
        }
    } else {
        forward_cols::<P>(s, src, x, points, runs, bias, 0, out, &mut z[..points * out]);
    }
}

/// Columns `lo..hi` of `Z_0` into `z` (`[points × (hi − lo)]`): the bias, then one product
/// `z += X[:, a..b]·Wᵀ[a..b, lo..hi]` per stretch `a..b` of a run whose rows are all the
/// task's own or all the source's ([`Policy::axpy`]: `points` rows of `C`, the columns of `X`
/// with strides `(inp, 1)`, the rows of `Wᵀ`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_cols<P: Policy>(
    s: &SparseFirst,
    src: Src<'_>,
    x: &[f32],
    points: usize,
    runs: &[(u32, u32)],
    bias: &[f32],
    lo: usize,
    hi: usize,
    z: &mut [f32],
) {
    let (inp, out, n) = (s.inp, s.out, hi - lo);
    for row in z.chunks_exact_mut(n) {
        row.copy_from_slice(&bias[lo..hi]);
    }
    for &(a, b) in runs {
        let (mut a, b) = (a as usize, b as usize);
        while a < b {
            let own = s.mat[a];
            let mut e = a + 1;
            while e < b && s.mat[e] == own {
                e += 1;
            }
            let w: &[f32] = if own { &s.wt } else { src.w0t };
            P::axpy(points, e - a, n, 1.0, &x[a..], inp, 1, &w[a * out + lo..], out, 1.0, z, n);
            a = e;
        }
    }
}

/// One fused Adam step on the transposed layer: for each run of nonzero columns of `x`, tiles
/// of input columns `G = X[:, cols]ᵀ·dZ` (`[cols × out]`, [`Policy::axpy`]: the columns of `X`
/// with strides `(1, inp)` against `dZ` `[points × out]`); a row the task does not have yet
/// is updated out of place from the source ([`Policy::adam_slice_from`], its deferred decay
/// applied to the source moments), a row it has gets its deferred decay and then
/// [`Policy::adam_slice`].
/// Every other column's decay count goes up by one. With `acc` (a task's last step; the sums
/// of `W_0` in the transposed layout, `base` unused: the source is the base), every row is
/// then added to the sums.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn adam_p<P: Policy>(
    s: &mut SparseFirst,
    src: Src<'_>,
    x: &[f32],
    points: usize,
    runs: &[(u32, u32)],
    dz: &[f32],
    h: AdamStep,
    acc: Option<Accumulate<'_>>,
) {
    let (inp, out) = (s.inp, s.out);
    s.check_src(&src);
    assert!(x.len() >= points * inp && dz.len() >= points * out, "x / dz length");
    assert!(runs.iter().all(|&(a, b)| a < b && b as usize <= inp), "runs out of range");
    let SparseFirst { wt, vt, pend, mat, .. } = s;
    let part = Part { wt, vt, pend, mat };
    let job = Job { inp, out, src, x, points, runs, dz, h };
    assert!(
        acc.as_ref()
            .is_none_or(|a| a.delta.len() == inp * out && a.moments.as_ref().is_none_or(|m| m.len() == inp * out)),
        "sums length"
    );
    split::<P>(job, 0, part, acc);
}

/// A task's final rows of `W_0ᵀ` for the sums: input columns `lo..lo + pend.len()`.
struct SumRows<'a> {
    wt: &'a [f32],
    vt: &'a [f32],
    pend: &'a [u32],
    mat: &'a [bool],
}

/// A task's contribution to the sums of rows `lo..lo + n` of `W_0ᵀ` (`delta`, `moments`:
/// exactly those rows, `[n × out]`), row by row (contiguous in the transposed layout):
/// `δ ← θ' − θ` or `δ + (θ' − θ)`, zero for rows the task never touched; `m ← v` or `m + v`,
/// the true `v` (stored row times `β2^pend`) computed on the fly.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn sums_rows<P: Policy>(
    src: Src<'_>,
    out: usize,
    lo: usize,
    rows: SumRows<'_>,
    beta2: f32,
    delta: &mut [f32],
    mut moments: Option<&mut [f32]>,
    first: bool,
) {
    let SumRows { wt, vt, pend, mat } = rows;
    for i in 0..pend.len() {
        let gl = lo + i;
        let r = i * out..(i + 1) * out;
        let base = &src.w0t[gl * out..][..out];
        let d = &mut delta[r.clone()];
        match (mat[i], first) {
            (true, true) => update::delta_body::<P>(d, &wt[r.clone()], base),
            (true, false) => update::accumulate_body::<P>(d, &wt[r.clone()], base),
            (false, true) => d.fill(0.0),
            (false, false) => {}
        }
        if let Some(m) = moments.as_deref_mut() {
            let m = &mut m[r.clone()];
            let stored: Option<&[f32]> =
                if mat[i] { Some(&vt[r.clone()]) } else { src.v0t.map(|s| &s[gl * out..][..out]) };
            match stored {
                Some(sv) if pend[i] == 0 && first => m.copy_from_slice(sv),
                Some(sv) if pend[i] == 0 => update::add_assign_body::<P>(m, sv),
                Some(sv) => decay_into(m, sv, beta2, pend[i], first),
                None if first => m.fill(0.0),
                None => {}
            }
        }
    }
}

dispatch! { fn sums_d(src: Src<'_>, out: usize, lo: usize, rows: SumRows<'_>, beta2: f32, delta: &mut [f32], moments: Option<&mut [f32]>, first: bool) => sums_rows }

/// What every piece of [`adam_p`] shares.
#[derive(Clone, Copy)]
struct Job<'a> {
    inp: usize,
    out: usize,
    src: Src<'a>,
    x: &'a [f32],
    points: usize,
    runs: &'a [(u32, u32)],
    dz: &'a [f32],
    h: AdamStep,
}

/// The rows of a piece of [`adam_p`]: input columns `lo..lo + pend.len()`.
struct Part<'a> {
    wt: &'a mut [f32],
    vt: &'a mut [f32],
    pend: &'a mut [u32],
    mat: &'a mut [bool],
}

/// [`adam_p`] on the rows of `part` (starting at input column `lo`), in two halves on a
/// parallel pool.
#[inline(always)]
fn split<P: Policy>(job: Job<'_>, lo: usize, part: Part<'_>, acc: Option<Accumulate<'_>>) {
    let (n, out) = (part.pend.len(), job.out);
    if par()
        && let Some(mid) = half(n)
    {
        let (w1, w2) = part.wt.split_at_mut(mid * out);
        let (v1, v2) = part.vt.split_at_mut(mid * out);
        let (p1, p2) = part.pend.split_at_mut(mid);
        let (m1, m2) = part.mat.split_at_mut(mid);
        let (a1, a2) = match acc {
            Some(a) => {
                let (a1, a2) = a.split_at(mid * out);
                (Some(a1), Some(a2))
            }
            None => (None, None),
        };
        rayon::join(
            || P::enter(|| adam_rows::<P>(job, lo, Part { wt: w1, vt: v1, pend: p1, mat: m1 }, a1)),
            || P::enter(|| adam_rows::<P>(job, lo + mid, Part { wt: w2, vt: v2, pend: p2, mat: m2 }, a2)),
        );
    } else {
        adam_rows::<P>(job, lo, part, acc);
    }
}

/// One piece of [`adam_p`].
#[inline(always)]
fn adam_rows<P: Policy>(job: Job<'_>, lo: usize, part: Part<'_>, acc: Option<Accumulate<'_>>) {
    let Job { inp, out, src, x, points, runs, dz, h } = job;
    let Part { wt, vt, pend, mat } = part;
    let n = pend.len();
    pend.iter_mut().for_each(|d| *d += 1);
    let rows = (TILE / out).max(1);
    let mut tile = [0.0f32; TILE];
    for &(a, b) in runs {
        let (a, b) = ((a as usize).max(lo), (b as usize).min(lo + n));
        let mut r0 = a;
        while r0 < b {
            let rr = rows.min(b - r0);
            let g = &mut tile[..rr * out];
            P::axpy(rr, points, out, 1.0, &x[r0..], 1, inp, dz, out, 0.0, g, out);
            for (k, gi) in g.chunks_exact(out).enumerate() {
                let (i, gl) = (r0 + k - lo, r0 + k);
                let (w, v) = (&mut wt[i * out..][..out], &mut vt[i * out..][..out]);
                if !mat[i] {
                    // First touch: the source rows read in the update itself, the moments
                    // with their deferred decay.
                    let sv = src.v0t.map(|s| &s[gl * out..][..out]);
                    let f = if pend[i] > 1 { factor(h.beta2, pend[i] - 1) } else { 1.0 };
                    P::adam_slice_from(w, &src.w0t[gl * out..][..out], gi, v, sv, f, h.lr_t, h.beta2, h.eps);
                    mat[i] = true;
                    pend[i] = 0;
                    continue;
                }
                decay(v, h.beta2, pend[i] - 1);
                pend[i] = 0;
                P::adam_slice(w, gi, v, h.lr_t, h.beta2, h.eps);
            }
            r0 += rr;
        }
    }
    if let Some(mut a) = acc {
        let moments = a.moments.as_deref_mut();
        sums_rows::<P>(src, out, lo, SumRows { wt, vt, pend, mat }, h.beta2, a.delta, moments, a.first);
    }
}
