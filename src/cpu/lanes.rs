//! Task-parallel kernels: 16 tasks at once, one task per AVX-512 lane.
//!
//! A meta-batch runs the same network shape on many tasks, each with its own θ'. Here 16 tasks
//! advance together: every parameter, activation and gradient is a vector of 16 floats, one
//! per task (layout `[index][16]`, "lane-interleaved"). Every product of the MLP becomes a
//! lane-wise multiply-add over whole registers: no horizontal sums, no partial vectors at the
//! edges of small matrices, and each loaded weight vector feeds every point of the minibatch.
//!
//! All three products have one shape, computed by [`lane_gemm`]:
//! `C[a][b] (op)= Σ_k A[a,k] ⊙ B[k,b]` with explicit strides (in vectors):
//!
//! | product | C | A | B |
//! |---|---|---|---|
//! | forward `Z = X·Wᵀ + b` | `Z[p][o]` | `X[p][i]` | `W[o][i]` (k = i) |
//! | input gradient `dX = dZ·W` | `dX[p][i]` | `dZ[p][o]` | `W[o][i]` (k = o) |
//! | fused SGD `W −= lr·dZᵀ·X` | `W[o][i]` | `dZ[p][o]` | `X[p][i]` (k = p) |
//!
//! Work mapping: blocks of `C` held in zmm accumulators, `k` innermost. Sixteen tasks' weights
//! far exceed L1 (the sine hidden layer alone is 256 KB), so the block shape decides the
//! traffic: [`Shape::Tall`] (≤ 12 rows × 2 columns) loads each weight vector once and applies
//! it to every point of the minibatch, whose activations stay in L1; [`Shape::Square`] (4 × 4)
//! serves the weight-gradient product. Edge blocks are their own instantiations.
//! Only compiled for x86-64 and used when the CPU has AVX-512 ([`available`]).

#![allow(clippy::needless_range_loop)]

/// Tasks per lane group.
pub const LANES: usize = 16;

/// True when the lane kernels can run here (AVX-512F/VL + FMA, not capped by `REPTILE_ISA`,
/// and not disabled by `REPTILE_LANES=0`).
pub fn available() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        super::simd::isa() == super::simd::Isa::Avx512 && std::env::var("REPTILE_LANES").as_deref() != Ok("0")
    })
}

/// Register-block shape of [`lane_gemm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Up to 12 rows × 2 columns (24 accumulators): each `B` vector is loaded once per 12 rows
    /// of `A`. For the forward and input-gradient products, where `B` is the weight matrix
    /// (large, in L2) and `A` a minibatch of ≤ 12 points (small, in L1).
    Tall,
    /// 4 × 4 (16 accumulators), for the weight-gradient product (short `k` = points).
    Square,
}

/// What [`lane_gemm`] does with the accumulated sums.
#[derive(Clone, Copy, Debug)]
pub enum Store<'a> {
    /// `C = Σ` (no bias) or `C = bias[b] + Σ` with `bias` lane vectors at stride 1.
    Set(Option<&'a [f32]>),
    /// `C += α·Σ`.
    Axpy(f32),
}

/// `C[a][b] (op)= Σ_k A[a,k] ⊙ B[k,b]` over lane vectors, for `a < na`, `b < nb`, `k < nk`.
/// `A[a,k]` is the vector at float offset `16·(a·sa + k·sk)` of `a_buf`; likewise `B[k,b]` at
/// `16·(k·tk + b·tb)` and `C[a][b]` at `16·(a·ca + b·cb)`.
///
/// # Panics
/// If any addressed vector lies outside its slice, or the CPU lacks AVX-512 (see [`available`]).
#[allow(clippy::too_many_arguments)]
pub fn lane_gemm(
    na: usize,
    nb: usize,
    nk: usize,
    a_buf: &[f32],
    (sa, sk): (usize, usize),
    b_buf: &[f32],
    (tk, tb): (usize, usize),
    c_buf: &mut [f32],
    (ca, cb): (usize, usize),
    store: Store<'_>,
    shape: Shape,
) {
    if na == 0 || nb == 0 {
        return;
    }
    let end = |n0: usize, s0: usize, n1: usize, s1: usize| LANES * ((n0 - 1) * s0 + (n1 - 1) * s1 + 1);
    if nk > 0 {
        assert!(end(na, sa, nk, sk) <= a_buf.len(), "lane_gemm: A out of bounds");
        assert!(end(nk, tk, nb, tb) <= b_buf.len(), "lane_gemm: B out of bounds");
    }
    assert!(end(na, ca, nb, cb) <= c_buf.len(), "lane_gemm: C out of bounds");
    if let Store::Set(Some(bias)) = store {
        assert!(LANES * nb <= bias.len(), "lane_gemm: bias out of bounds");
    }
    assert!(available(), "lane kernels need AVX-512");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the asserts proved every vector index the loops address lies inside its slice,
    // `c_buf` is exclusively borrowed, and `available()` established AVX-512F/VL + FMA.
    unsafe {
        imp::lane_gemm(
            na,
            nb,
            nk,
            a_buf.as_ptr(),
            sa,
            sk,
            b_buf.as_ptr(),
            tk,
            tb,
            c_buf.as_mut_ptr(),
            ca,
            cb,
            store,
            shape,
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::{LANES, Store};
    use std::arch::x86_64::*;

    /// One `RA × RB` block at (a0, b0).
    ///
    /// # Safety
    /// AVX-512F; all addressed vectors are in bounds (checked by the caller).
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const RA: usize, const RB: usize>(
        a0: usize,
        b0: usize,
        nk: usize,
        ap: *const f32,
        sa: usize,
        sk: usize,
        bp: *const f32,
        tk: usize,
        tb: usize,
        cp: *mut f32,
        ca: usize,
        cb: usize,
        store: Store<'_>,
    ) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); RB]; RA];
            for k in 0..nk {
                let bv: [__m512; RB] =
                    std::array::from_fn(|c| _mm512_loadu_ps(bp.add(LANES * (k * tk + (b0 + c) * tb))));
                for r in 0..RA {
                    let av = _mm512_loadu_ps(ap.add(LANES * ((a0 + r) * sa + k * sk)));
                    for c in 0..RB {
                        acc[r][c] = _mm512_fmadd_ps(av, bv[c], acc[r][c]);
                    }
                }
            }
            for r in 0..RA {
                for c in 0..RB {
                    let dst = cp.add(LANES * ((a0 + r) * ca + (b0 + c) * cb));
                    let v = match store {
                        Store::Set(None) => acc[r][c],
                        Store::Set(Some(bias)) => {
                            _mm512_add_ps(acc[r][c], _mm512_loadu_ps(bias.as_ptr().add(LANES * (b0 + c))))
                        }
                        Store::Axpy(alpha) => _mm512_fmadd_ps(_mm512_set1_ps(alpha), acc[r][c], _mm512_loadu_ps(dst)),
                    };
                    _mm512_storeu_ps(dst, v);
                }
            }
        }
    }

    /// # Safety
    /// As [`super::lane_gemm`] after its checks.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn lane_gemm(
        na: usize,
        nb: usize,
        nk: usize,
        ap: *const f32,
        sa: usize,
        sk: usize,
        bp: *const f32,
        tk: usize,
        tb: usize,
        cp: *mut f32,
        ca: usize,
        cb: usize,
        store: Store<'_>,
        shape: super::Shape,
    ) {
        macro_rules! go {
            ($ra:literal, $rb:literal, $a0:expr, $b0:expr) => {
                // SAFETY: the block lies inside [0, na) × [0, nb), which the caller checked.
                unsafe { block::<$ra, $rb>($a0, $b0, nk, ap, sa, sk, bp, tk, tb, cp, ca, cb, store) }
            };
        }
        if shape == super::Shape::Tall {
            // Rows in blocks of up to 12, columns in pairs (odd last column alone).
            let b2 = nb / 2 * 2;
            let mut a0 = 0;
            while a0 < na {
                let ra = (na - a0).min(12);
                macro_rules! rows {
                    ($($r:literal)*) => {
                        match ra {
                            $($r => {
                                let mut b0 = 0;
                                while b0 < b2 {
                                    go!($r, 2, a0, b0);
                                    b0 += 2;
                                }
                                if b2 < nb {
                                    go!($r, 1, a0, b2);
                                }
                            })*
                            _ => unreachable!(),
                        }
                    };
                }
                rows!(1 2 3 4 5 6 7 8 9 10 11 12);
                a0 += ra;
            }
            return;
        }
        let (a4, b4) = (na / 4 * 4, nb / 4 * 4);
        let mut a0 = 0;
        while a0 < na {
            let ra = if a0 < a4 { 4 } else { na - a4 };
            let mut b0 = 0;
            while b0 < b4 {
                match ra {
                    4 => go!(4, 4, a0, b0),
                    3 => go!(3, 4, a0, b0),
                    2 => go!(2, 4, a0, b0),
                    _ => go!(1, 4, a0, b0),
                }
                b0 += 4;
            }
            match (ra, nb - b4) {
                (_, 0) => {}
                (4, 1) => go!(4, 1, a0, b4),
                (4, 2) => go!(4, 2, a0, b4),
                (4, _) => go!(4, 3, a0, b4),
                (3, 1) => go!(3, 1, a0, b4),
                (3, 2) => go!(3, 2, a0, b4),
                (3, _) => go!(3, 3, a0, b4),
                (2, 1) => go!(2, 1, a0, b4),
                (2, 2) => go!(2, 2, a0, b4),
                (2, _) => go!(2, 3, a0, b4),
                (_, 1) => go!(1, 1, a0, b4),
                (_, 2) => go!(1, 2, a0, b4),
                (_, _) => go!(1, 3, a0, b4),
            }
            a0 += ra;
        }
    }
}

use super::simd::{Policy, dispatch};
use crate::spec::{Activation, MlpSpec};

/// Row stride (in vectors) of a lane buffer holding `width` values per point: one vector of
/// padding, so rows are never a multiple of 4 KB apart (64 vectors × 64 B would put every row
/// of a block in the same L1 set and evict them from each other).
pub const fn row(width: usize) -> usize {
    width + 1
}

/// Scratch for 16 tasks' forward/backward in lane layout, sized once for a spec and a maximum
/// minibatch; the kernels never allocate.
#[derive(Clone, Debug)]
pub struct LaneWorkspace {
    cap: usize,
    /// Layer `l`'s activations `[points][row(out_l)][16]` at `16·cap·act_off[l]`.
    acts: Vec<f32>,
    act_off: Vec<usize>,
    g_cur: Vec<f32>,
    g_next: Vec<f32>,
}

impl LaneWorkspace {
    /// Room for minibatches of up to `max_points` points.
    pub fn new(spec: &MlpSpec, max_points: usize) -> Self {
        let cap = max_points.max(1);
        let mut act_off = Vec::new();
        let mut off = 0;
        for &w in &spec.widths()[1..] {
            act_off.push(off);
            off += row(w);
        }
        LaneWorkspace {
            cap,
            acts: vec![0.0; LANES * cap * off],
            act_off,
            g_cur: vec![0.0; LANES * cap * row(spec.max_width())],
            g_next: vec![0.0; LANES * cap * row(spec.max_width())],
        }
    }
    /// Largest minibatch.
    pub fn capacity(&self) -> usize {
        self.cap
    }
    fn act(&self, l: usize, points: usize, width: usize) -> &[f32] {
        &self.acts[LANES * self.cap * self.act_off[l]..][..LANES * points * row(width)]
    }
}

/// Forward pass of 16 tasks: `θ` lane-interleaved `[P][16]`, `x` `[points][row(in)][16]`
/// (padding vectors ignored).
pub fn forward(spec: &MlpSpec, theta: &[f32], x: &[f32], points: usize, ws: &mut LaneWorkspace) {
    assert!(points <= ws.cap && theta.len() == LANES * spec.num_params(), "lane forward shapes");
    assert_eq!(x.len(), LANES * points * row(spec.in_dim()), "lane x length");
    let cap = ws.cap;
    let nl = spec.num_layers();
    for l in 0..nl {
        let (inp, out) = (spec.widths()[l], spec.widths()[l + 1]);
        let (before, rest) = ws.acts.split_at_mut(LANES * cap * ws.act_off[l]);
        let z = &mut rest[..LANES * points * row(out)];
        let a_prev: &[f32] =
            if l == 0 { x } else { &before[LANES * cap * ws.act_off[l - 1]..][..LANES * points * row(inp)] };
        let w = &theta[LANES * spec.weight_offset(l)..][..LANES * inp * out];
        let b = &theta[LANES * spec.bias_offset(l)..][..LANES * out];
        let (ri, ro) = (row(inp), row(out));
        lane_gemm(points, out, inp, a_prev, (ri, 1), w, (1, inp), z, (ro, 1), Store::Set(Some(b)), Shape::Tall);
        if l + 1 < nl {
            match spec.activation() {
                Activation::Tanh => super::math::tanh_slice(z),
                Activation::Relu => relu(z),
            }
        }
    }
}

/// The network outputs of the last [`forward`], `[points][row(out)][16]`.
pub fn output<'w>(spec: &MlpSpec, ws: &'w LaneWorkspace, points: usize) -> &'w [f32] {
    ws.act(spec.num_layers() - 1, points, spec.out_dim())
}

/// MSE of each lane's output against targets `t` `[points][row(out)][16]` (mean over points
/// and outputs; padding vectors of `t` must be 0), and `dL/dY` into the workspace. Returns the
/// 16 losses.
pub fn mse_grad(spec: &MlpSpec, t: &[f32], points: usize, ws: &mut LaneWorkspace) -> [f32; LANES] {
    let out = spec.out_dim();
    let l = spec.num_layers() - 1;
    let n = LANES * points * row(out);
    assert_eq!(t.len(), n, "lane target length");
    let y = &ws.acts[LANES * ws.cap * ws.act_off[l]..][..n];
    mse_d(y, t, &mut ws.g_cur[..n], 1.0 / (points * out) as f32)
}

/// Backward pass fused with SGD on 16 tasks (after [`forward`] and [`mse_grad`] on the same
/// batch): per layer, from the last, `dX = dZ·W` (⊙ act′), then `W −= lr·dZᵀ·X` and
/// `b −= lr·Σ_p dZ`, all lane-wise.
pub fn backward_sgd(spec: &MlpSpec, theta: &mut [f32], x: &[f32], points: usize, ws: &mut LaneWorkspace, lr: f32) {
    assert!(points <= ws.cap && theta.len() == LANES * spec.num_params(), "lane backward shapes");
    assert_eq!(x.len(), LANES * points * row(spec.in_dim()), "lane x length");
    let cap = ws.cap;
    for l in (0..spec.num_layers()).rev() {
        let (inp, out) = (spec.widths()[l], spec.widths()[l + 1]);
        let (ri, ro) = (row(inp), row(out));
        let (wo, bo) = (LANES * spec.weight_offset(l), LANES * spec.bias_offset(l));
        let a_prev: &[f32] =
            if l == 0 { x } else { &ws.acts[LANES * cap * ws.act_off[l - 1]..][..LANES * points * ri] };
        let dz = &ws.g_cur[..LANES * points * ro];
        if l > 0 {
            let dx = &mut ws.g_next[..LANES * points * ri];
            lane_gemm(
                points,
                inp,
                out,
                dz,
                (ro, 1),
                &theta[wo..],
                (inp, 1),
                dx,
                (ri, 1),
                Store::Set(None),
                Shape::Tall,
            );
            act_backward_d(spec.activation() == Activation::Tanh, a_prev, dx);
        }
        let w = &mut theta[wo..bo];
        lane_gemm(out, inp, points, dz, (1, ro), a_prev, (ri, 1), w, (inp, 1), Store::Axpy(-lr), Shape::Square);
        bias_sgd_d(dz, out, ro, lr, &mut theta[bo..bo + LANES * out]);
        std::mem::swap(&mut ws.g_cur, &mut ws.g_next);
    }
}

/// Sets `θ_lanes[j][l] = θ[j]` for every lane.
pub fn broadcast_params(theta: &[f32], lanes: &mut [f32]) {
    assert_eq!(lanes.len(), LANES * theta.len(), "lane θ length");
    broadcast_d(theta, lanes);
}

/// `acc[j] += Σ_{l < count} (θ'[j][l] − base(j, l))`, lanes summed in a fixed tree order, where
/// `base` is `θ[j]` (`base_lanes = None`) or the lane-interleaved `base_lanes[j][l]`.
pub fn accumulate_lane_deltas(
    acc: &mut [f32],
    theta_p: &[f32],
    theta: &[f32],
    base_lanes: Option<&[f32]>,
    count: usize,
) {
    assert!(count <= LANES && theta_p.len() == LANES * acc.len() && theta.len() == acc.len(), "lane delta shapes");
    if let Some(b) = base_lanes {
        assert_eq!(b.len(), theta_p.len(), "lane base length");
    }
    accumulate_d(acc, theta_p, theta, base_lanes, count);
}

dispatch! { fn mse_d(y: &[f32], t: &[f32], g: &mut [f32], inv: f32) -> [f32; LANES] => mse_body }
dispatch! { fn act_backward_d(tanh: bool, a: &[f32], g: &mut [f32]) => act_backward_body }
dispatch! { fn bias_sgd_d(dz: &[f32], out: usize, stride: usize, lr: f32, b: &mut [f32]) => bias_sgd_body }
dispatch! { fn broadcast_d(theta: &[f32], lanes: &mut [f32]) => broadcast_body }
dispatch! { fn accumulate_d(acc: &mut [f32], theta_p: &[f32], theta: &[f32], base: Option<&[f32]>, count: usize) => accumulate_body }

fn relu(z: &mut [f32]) {
    z.iter_mut().for_each(|v| *v = v.max(0.0));
}

#[inline(always)]
fn mse_body<P: Policy>(y: &[f32], t: &[f32], g: &mut [f32], inv: f32) -> [f32; LANES] {
    let mut acc = [0.0f32; LANES];
    let scale = 2.0 * inv;
    for ((yv, tv), gv) in y.chunks_exact(LANES).zip(t.chunks_exact(LANES)).zip(g.chunks_exact_mut(LANES)) {
        for l in 0..LANES {
            let d = yv[l] - tv[l];
            acc[l] = P::madd(d, d, acc[l]);
            gv[l] = scale * d;
        }
    }
    acc.map(|s| s * inv)
}

// `P` only selects the instruction set the wrapper compiles this loop for.
#[allow(clippy::extra_unused_type_parameters)]
#[inline(always)]
fn act_backward_body<P: Policy>(tanh: bool, a: &[f32], g: &mut [f32]) {
    if tanh {
        g.iter_mut().zip(a).for_each(|(g, &a)| *g *= 1.0 - a * a);
    } else {
        g.iter_mut().zip(a).for_each(|(g, &a)| *g = if a > 0.0 { *g } else { 0.0 });
    }
}

#[inline(always)]
fn bias_sgd_body<P: Policy>(dz: &[f32], out: usize, stride: usize, lr: f32, b: &mut [f32]) {
    debug_assert_eq!(b.len(), LANES * out);
    for (o, bv) in b.chunks_exact_mut(LANES).enumerate() {
        let mut s = [0.0f32; LANES];
        for row in dz.chunks_exact(LANES * stride) {
            let v = &row[LANES * o..][..LANES];
            for l in 0..LANES {
                s[l] += v[l];
            }
        }
        for l in 0..LANES {
            bv[l] = P::madd(-lr, s[l], bv[l]);
        }
    }
}

// `P` only selects the instruction set the wrapper compiles this loop for.
#[allow(clippy::extra_unused_type_parameters)]
#[inline(always)]
fn broadcast_body<P: Policy>(theta: &[f32], lanes: &mut [f32]) {
    for (&t, v) in theta.iter().zip(lanes.chunks_exact_mut(LANES)) {
        v.fill(t);
    }
}

// `P` only selects the instruction set the wrapper compiles this loop for.
#[allow(clippy::extra_unused_type_parameters)]
#[inline(always)]
fn accumulate_body<P: Policy>(acc: &mut [f32], theta_p: &[f32], theta: &[f32], base: Option<&[f32]>, count: usize) {
    for (j, (a, tp)) in acc.iter_mut().zip(theta_p.chunks_exact(LANES)).enumerate() {
        let mut d = [0.0f32; LANES];
        match base {
            None => (0..LANES).for_each(|l| d[l] = if l < count { tp[l] - theta[j] } else { 0.0 }),
            Some(b) => {
                let bv = &b[LANES * j..][..LANES];
                (0..LANES).for_each(|l| d[l] = if l < count { tp[l] - bv[l] } else { 0.0 });
            }
        }
        // Fixed pairwise tree over the 16 lanes.
        let mut h = LANES / 2;
        while h > 0 {
            for l in 0..h {
                d[l] += d[l + h];
            }
            h /= 2;
        }
        *a += d[0];
    }
}
