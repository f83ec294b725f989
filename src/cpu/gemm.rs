//! Matrix products behind one small interface.
//!
//! The MLP needs exactly three products per layer (`points × in` activations `X`, `out × in`
//! weights `W`, `points × out` output gradients `dZ`, all row-major):
//!
//! | kernel          | computes                         | shape                      |
//! |-----------------|----------------------------------|----------------------------|
//! | [`x_wt`]        | `Z ← bias + X·Wᵀ`                | `[points × out]`           |
//! | [`dz_w`]        | `dX ← dZ·W`                      | `[points × in]`            |
//! | [`dzt_x`]       | `G ← α·dZᵀ·X + β·G`              | `[out × in]`               |
//!
//! For batches of up to [`SMALL_POINTS`] points (every inner-loop minibatch) they run
//! register-blocked kernels written here, with no packing and no allocation: [`xwt_kernel`]
//! (dot-product form: `W` rows and `X` rows are both contiguous along `in`) and
//! [`axpy_kernel`] (broadcast one element of the left operand, multiply-add a contiguous row
//! of the right one into a block of accumulators). Both are generic over an instruction-set
//! [`Policy`] and compiled per instruction set by the callers' `dispatch!` wrappers. Larger
//! batches (prediction on many points) go through [`gemm`], `matrixmultiply::sgemm`, which
//! packs and picks AVX/FMA at run time; it computes the same function.
//!
//! All indexing in the hand kernels is checked (slices, `try_into` of fixed-size blocks); the
//! only `unsafe` is the call into `matrixmultiply`.

/// `C[m×n] ← α·A[m×k]·B[k×n] + β·C` with explicit (row, column) strides in elements.
/// When `β = 0`, `C` is not read (it may hold anything, NaN included).
///
/// # Panics
/// If a stride walks outside its slice (an internal invariant, not user input).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    (rsc, csc): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    if k > 0 {
        assert!(last(m, k, rsa, csa) < a.len(), "gemm: A out of bounds");
        assert!(last(k, n, rsb, csb) < b.len(), "gemm: B out of bounds");
    }
    assert!(last(m, n, rsc, csc) < c.len(), "gemm: C out of bounds");
    // SAFETY: the asserts above prove that every element index the strides reach lies inside
    // the corresponding slice; `c` is borrowed mutably so it cannot alias `a` or `b`; strides
    // fit in isize because they index real allocations.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            csc as isize,
        );
    }
}

use super::simd::{Policy, dispatch};

/// Largest minibatch handled by the hand-written kernels; larger ones use `matrixmultiply`.
pub const SMALL_POINTS: usize = 64;

/// Dot-product kernel `Z[p×out] ← bias + X[p×in]·Wᵀ` (`W` `[out × in]` row-major).
///
/// Work mapping: blocks of `RP` points × `RO` outputs; for each block, `RP·RO` accumulators
/// of `L` lanes run along `in` (`L` contiguous floats of an `X` row times the same of a `W`
/// row per multiply-add), then each accumulator is summed across its lanes, the `in % L`
/// tail added in scalar, and the bias added. Edge blocks use the same code with one
/// accumulator per output.
#[inline(always)]
pub fn xwt_kernel<P: Policy, const L: usize, const RP: usize, const RO: usize>(
    points: usize,
    inp: usize,
    out: usize,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    z: &mut [f32],
) {
    let x = &x[..points * inp];
    let w = &w[..out * inp];
    let bias = &bias[..out];
    let z = &mut z[..points * out];
    let full = inp / L * L;
    let dot = |xr: &[f32], wr: &[f32]| -> f32 {
        let mut acc = [0.0f32; L];
        for (xc, wc) in xr[..full].chunks_exact(L).zip(wr[..full].chunks_exact(L)) {
            for j in 0..L {
                acc[j] = P::madd(xc[j], wc[j], acc[j]);
            }
        }
        let mut s = hsum(acc);
        for i in full..inp {
            s = P::madd(xr[i], wr[i], s);
        }
        s
    };
    let mut p0 = 0;
    while p0 < points {
        let rp = (points - p0).min(RP);
        let mut o0 = 0;
        while o0 < out {
            let ro = (out - o0).min(RO);
            if rp == RP && ro == RO {
                let xr: [&[f32]; RP] = std::array::from_fn(|r| &x[(p0 + r) * inp..][..inp]);
                let wr: [&[f32]; RO] = std::array::from_fn(|c| &w[(o0 + c) * inp..][..inp]);
                let mut acc = [[[0.0f32; L]; RO]; RP];
                let mut i = 0;
                while i < full {
                    let xv: [&[f32; L]; RP] = std::array::from_fn(|r| xr[r][i..i + L].try_into().unwrap());
                    let wv: [&[f32; L]; RO] = std::array::from_fn(|c| wr[c][i..i + L].try_into().unwrap());
                    for r in 0..RP {
                        for c in 0..RO {
                            for j in 0..L {
                                acc[r][c][j] = P::madd(xv[r][j], wv[c][j], acc[r][c][j]);
                            }
                        }
                    }
                    i += L;
                }
                for r in 0..RP {
                    for c in 0..RO {
                        let mut s = hsum(acc[r][c]);
                        for i in full..inp {
                            s = P::madd(xr[r][i], wr[c][i], s);
                        }
                        z[(p0 + r) * out + o0 + c] = bias[o0 + c] + s;
                    }
                }
            } else {
                for r in 0..rp {
                    for c in 0..ro {
                        let s = dot(&x[(p0 + r) * inp..][..inp], &w[(o0 + c) * inp..][..inp]);
                        z[(p0 + r) * out + o0 + c] = bias[o0 + c] + s;
                    }
                }
            }
            o0 += ro;
        }
        p0 += rp;
    }
}

/// Sum of `L` lanes as a balanced tree (vectorizes to shuffles and adds).
#[inline(always)]
fn hsum<const L: usize>(mut a: [f32; L]) -> f32 {
    let mut h = L / 2;
    while h > 0 {
        for j in 0..h {
            a[j] += a[j + h];
        }
        h /= 2;
    }
    a[0]
}

/// Axpy kernel `C[m×n] ← α·A[m×k]·B[k×n] + β·C`, `A` with strides `(rsa, csa)`, `B` with
/// contiguous rows (`ldb`), `C` with contiguous rows (`ldc`). `β = 0` does not read `C`;
/// otherwise each element is `madd(α, Σ, β·C)` (one rounding when `β = 1`, the SGD update).
///
/// Work mapping: blocks of `R` rows × `NB` columns of `C` held in accumulators; for each `kk`
/// one contiguous `NB`-float piece of `B`'s row `kk` is loaded and multiply-added into all
/// `R` rows, each scaled by its broadcast `A[r, kk]`. Edge blocks run the same loop with
/// run-time sizes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn axpy_kernel<P: Policy, const R: usize, const NB: usize>(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let mut r0 = 0;
    while r0 < m {
        let rr = (m - r0).min(R);
        let mut c0 = 0;
        while c0 < n {
            let nn = (n - c0).min(NB);
            let mut acc = [[0.0f32; NB]; R];
            if rr == R && nn == NB {
                for kk in 0..k {
                    let brow: &[f32; NB] = b[kk * ldb + c0..][..NB].try_into().unwrap();
                    let av: [f32; R] = std::array::from_fn(|r| a[(r0 + r) * rsa + kk * csa]);
                    for r in 0..R {
                        for j in 0..NB {
                            acc[r][j] = P::madd(av[r], brow[j], acc[r][j]);
                        }
                    }
                }
            } else {
                for kk in 0..k {
                    let brow = &b[kk * ldb + c0..][..nn];
                    for r in 0..rr {
                        let av = a[(r0 + r) * rsa + kk * csa];
                        for (acc, &bv) in acc[r][..nn].iter_mut().zip(brow) {
                            *acc = P::madd(av, bv, *acc);
                        }
                    }
                }
            }
            for r in 0..rr {
                let crow = &mut c[(r0 + r) * ldc + c0..][..nn];
                if beta == 0.0 {
                    crow.iter_mut().zip(&acc[r][..nn]).for_each(|(c, &s)| *c = alpha * s);
                } else {
                    crow.iter_mut().zip(&acc[r][..nn]).for_each(|(c, &s)| *c = P::madd(alpha, s, beta * *c));
                }
            }
            c0 += nn;
        }
        r0 += rr;
    }
}

/// Weighted column sums `g[c] ← α·Σ_p w_p·dz[p·ldz + c] + β·g[c]` for `c < rows`, with
/// `w_p = x[p]` (one multiply-add per point) or, with `x = None`, plain sums (the bias
/// gradient). Points are summed in order; the epilogue is `madd(α, Σ, β·g)` as in
/// [`axpy_kernel`], and `β = 0` does not read `g`.
///
/// Work mapping: 16 columns at a time in a fixed-size accumulator (one vector register on
/// AVX-512); the `rows % 16` tail the same way, element by element.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn col_sums_p<P: Policy>(
    rows: usize,
    ldz: usize,
    points: usize,
    alpha: f32,
    dz: &[f32],
    x: Option<&[f32]>,
    beta: f32,
    g: &mut [f32],
) {
    let term = |acc: f32, d: f32, p: usize| match x {
        Some(x) => P::madd(d, x[p], acc),
        None => acc + d,
    };
    let finish = |g: &mut f32, a: f32| *g = if beta == 0.0 { alpha * a } else { P::madd(alpha, a, beta * *g) };
    let full = rows / 16 * 16;
    for c0 in (0..full).step_by(16) {
        let mut acc = [0.0f32; 16];
        for p in 0..points {
            let row: &[f32; 16] = dz[p * ldz + c0..][..16].try_into().unwrap();
            for j in 0..16 {
                acc[j] = term(acc[j], row[j], p);
            }
        }
        g[c0..c0 + 16].iter_mut().zip(acc).for_each(|(g, a)| finish(g, a));
    }
    for c in full..rows {
        let a = (0..points).fold(0.0f32, |a, p| term(a, dz[p * ldz + c], p));
        finish(&mut g[c], a);
    }
}

/// Forward product with bias, generic over the instruction set (called from dispatched code).
#[inline(always)]
pub(crate) fn xwt_p<P: Policy>(
    points: usize,
    inp: usize,
    out: usize,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    z: &mut [f32],
) {
    if inp == 1 {
        // One input: W[:, 0] is contiguous, so each output row is bias + x_p·w (axpy form).
        let (w, bias) = (&w[..out], &bias[..out]);
        for (zrow, &xp) in z[..points * out].chunks_exact_mut(out).zip(&x[..points]) {
            for ((z, &wv), &b) in zrow.iter_mut().zip(w).zip(bias) {
                *z = P::madd(xp, wv, b);
            }
        }
    } else if points <= SMALL_POINTS {
        P::xwt(points, inp, out, x, w, bias, z);
    } else {
        let z = &mut z[..points * out];
        for row in z.chunks_exact_mut(out) {
            row.copy_from_slice(&bias[..out]);
        }
        gemm(points, inp, out, 1.0, x, (inp, 1), w, (1, inp), 1.0, z, (out, 1));
    }
}

/// Input gradient, generic over the instruction set.
#[inline(always)]
pub(crate) fn dzw_p<P: Policy>(points: usize, out: usize, inp: usize, dz: &[f32], w: &[f32], dx: &mut [f32]) {
    if points <= SMALL_POINTS {
        P::axpy(points, out, inp, 1.0, dz, out, 1, w, inp, 0.0, dx, inp);
    } else {
        gemm(points, out, inp, 1.0, dz, (out, 1), w, (inp, 1), 0.0, dx, (inp, 1));
    }
}

/// Input gradient times the hidden activation's derivative, `dX ← (dZ·W) ⊙ act'(A)` with `A`
/// the layer input's stored activation `[points × in]`, generic over the instruction set.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn dzw_act_p<P: Policy>(
    points: usize,
    out: usize,
    inp: usize,
    dz: &[f32],
    w: &[f32],
    dx: &mut [f32],
    tanh: bool,
    a: &[f32],
) {
    if points <= SMALL_POINTS {
        P::axpy_act(points, out, inp, dz, out, 1, w, inp, dx, inp, tanh, a);
    } else {
        dzw_p::<P>(points, out, inp, dz, w, dx);
        act_backward(tanh, &a[..points * inp], &mut dx[..points * inp]);
    }
}

/// `d ← d ⊙ act'(·)` through the stored activation `a = act(z)`: tanh' = 1 − a², relu' =
/// [a > 0]. The AVX-512 input-gradient epilogue computes exactly this, op for op.
#[inline(always)]
pub(crate) fn act_backward(tanh: bool, a: &[f32], d: &mut [f32]) {
    if tanh {
        d.iter_mut().zip(a).for_each(|(d, &g)| *d *= 1.0 - g * g);
    } else {
        d.iter_mut().zip(a).for_each(|(d, &g)| *d = if g > 0.0 { *d } else { 0.0 });
    }
}

/// Weight gradient, generic over the instruction set.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dztx_p<P: Policy>(
    out: usize,
    inp: usize,
    points: usize,
    alpha: f32,
    dz: &[f32],
    x: &[f32],
    beta: f32,
    g: &mut [f32],
) {
    dztx_rows_p::<P>(out, out, inp, points, alpha, dz, x, beta, g);
}

/// Weight gradient of a block of `rows` consecutive outputs: `G[rows×in] ← α·dZᵀ·X + β·G`
/// where `dz` starts at the block's first output column and has row stride `ldz` (the
/// layer's full output width), so `dz[p·ldz + r]` is point `p`, output `r` of the block.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dztx_rows_p<P: Policy>(
    rows: usize,
    ldz: usize,
    inp: usize,
    points: usize,
    alpha: f32,
    dz: &[f32],
    x: &[f32],
    beta: f32,
    g: &mut [f32],
) {
    if inp == 1 && points <= SMALL_POINTS {
        // One input (the sine net's first layer): each output's gradient is a dot product
        // over points, so run along the outputs with one multiply-add per point, in the same
        // order and with the same epilogue as the axpy kernel (identical results), instead of
        // blocks that would use one lane of sixteen.
        col_sums_p::<P>(rows, ldz, points, alpha, dz, Some(&x[..points]), beta, g);
    } else if points <= SMALL_POINTS {
        P::axpy(rows, points, inp, alpha, dz, 1, ldz, x, inp, beta, g, inp);
    } else {
        gemm(rows, points, inp, alpha, dz, (1, ldz), x, (inp, 1), beta, g, (inp, 1));
    }
}

dispatch! {
    /// Forward product: `Z[points×out] ← bias + X[points×in]·Wᵀ`, `W` `[out × in]` row-major.
    pub fn x_wt(points: usize, inp: usize, out: usize, x: &[f32], w: &[f32], bias: &[f32], z: &mut [f32]) => xwt_p
}

dispatch! {
    /// Input gradient: `dX[points×in] ← dZ[points×out]·W[out×in]`.
    pub fn dz_w(points: usize, out: usize, inp: usize, dz: &[f32], w: &[f32], dx: &mut [f32]) => dzw_p
}

dispatch! {
    /// Weight gradient: `G[out×in] ← α·dZᵀ·X + β·G` with `dZ` `[points × out]`, `X`
    /// `[points × in]`. With `α = −lr, β = 1` and `G = W` this is the fused SGD update.
    pub fn dzt_x(out: usize, inp: usize, points: usize, alpha: f32, dz: &[f32], x: &[f32], beta: f32, g: &mut [f32]) => dztx_p
}
