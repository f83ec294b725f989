//! Matrix products behind one small interface.
//!
//! The MLP needs exactly three products per layer (`points × in` activations `X`, `out × in`
//! weights `W`, `points × out` output gradients `dZ`, all row-major):
//!
//! | kernel          | computes                         | shape                      |
//! |-----------------|----------------------------------|----------------------------|
//! | [`x_wt`]        | `Z ← X·Wᵀ + β·Z`                 | `[points × out]`           |
//! | [`dz_w`]        | `dX ← dZ·W`                      | `[points × in]`            |
//! | [`dzt_x`]       | `G ← α·dZᵀ·X + β·G`              | `[out × in]`               |
//!
//! All three go through [`gemm`], today `matrixmultiply::sgemm` (which picks AVX/FMA at run
//! time). Every call checks that its strides stay inside the slices it was given.

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

/// Forward product: `Z[points×out] ← X[points×in]·Wᵀ + β·Z`, with `W` `[out × in]` row-major.
#[inline]
pub fn x_wt(points: usize, inp: usize, out: usize, x: &[f32], w: &[f32], beta: f32, z: &mut [f32]) {
    gemm(points, inp, out, 1.0, x, (inp, 1), w, (1, inp), beta, z, (out, 1));
}

/// Input gradient: `dX[points×in] ← dZ[points×out]·W[out×in]`.
#[inline]
pub fn dz_w(points: usize, out: usize, inp: usize, dz: &[f32], w: &[f32], dx: &mut [f32]) {
    gemm(points, out, inp, 1.0, dz, (out, 1), w, (inp, 1), 0.0, dx, (inp, 1));
}

/// Weight gradient: `G[out×in] ← α·dZᵀ·X + β·G` with `dZ` `[points × out]`, `X` `[points × in]`.
/// With `α = −lr, β = 1` and `G = W` this is the fused SGD update of the weights.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn dzt_x(
    out: usize,
    inp: usize,
    points: usize,
    alpha: f32,
    dz: &[f32],
    x: &[f32],
    beta: f32,
    g: &mut [f32],
) {
    gemm(out, points, inp, alpha, dz, (1, out), x, (inp, 1), beta, g, (inp, 1));
}
