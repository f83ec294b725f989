//! Elementwise math that must vectorize: `tanh` without a libm call per element.

use super::simd::{Policy, dispatch};

/// Numerator of the rational approximation `tanh x ≈ x·P(x²)/Q(x²)` (Eigen's
/// `generic_fast_tanh_float`, a degree 13/6 minimax fit), coefficients of `x¹, x³, …, x¹³`.
pub(crate) const TANH_NUM: [f32; 7] =
    [4.893_524_6e-3, 6.372_619_3e-4, 1.485_722_4e-5, 5.122_297e-8, -8.604_672e-11, 2.000_188e-13, -2.760_768_5e-16];
/// Denominator `Q`, coefficients of `x⁰, x², x⁴, x⁶`.
pub(crate) const TANH_DEN: [f32; 4] = [4.893_525e-3, 2.268_434_6e-3, 1.185_347e-4, 1.198_258_4e-6];
/// `|x|` from which the result is exactly ±1: the rational rounds to 1 there, and beyond it
/// the fit is not monotone (`1 − tanh(x)` is below 2.3e-7 from here on).
pub(crate) const TANH_SAT: f32 = 7.998_811_7;
/// `|x|` below which `tanh(x)` is `x` to within 5.4e-8 relative (keeps subnormals exact).
pub(crate) const TANH_TINY: f32 = 4e-4;

/// `tanh(x)` in f32, branch-free so loops over it auto-vectorize.
///
/// `x·P(x²)/Q(x²)`, a rational minimax fit of degree 13/6 (Eigen's fast tanh), on `|x|`
/// clamped at `TANH_SAT` (7.9988), with exactly `±1` from there on and `x` itself for
/// `|x| < 4e-4`. Evaluated in f64 here (the AVX-512 and AVX2 kernels use f32 fused multiply-adds). NaN propagates, ±0 keep their
/// sign, and the function is exactly odd. The test suite checks the maximum error against
/// `f64::tanh` over the whole f32 range: it stays below 4e-7 absolute and relative.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let ax = x.abs();
    // NaN compares false, so it keeps flowing through the arithmetic.
    let xc = if ax > TANH_SAT { TANH_SAT } else { ax };
    // The fit in f64 (exact for f32 inputs up to rounding far below f32's): without fused
    // multiply-adds an f32 Horner loop would add up to 7 ulp near |x| = 6.
    let (xd, x2) = (xc as f64, xc as f64 * xc as f64);
    let p = TANH_NUM[..6].iter().rev().fold(TANH_NUM[6] as f64, |acc, &c| acc * x2 + c as f64) * xd;
    let q = TANH_DEN[..3].iter().rev().fold(TANH_DEN[3] as f64, |acc, &c| acc * x2 + c as f64);
    let t = (p / q) as f32;
    let t = if ax < TANH_TINY {
        ax
    } else if ax >= TANH_SAT {
        1.0
    } else {
        t
    };
    // tanh is odd: the sign of x goes on last (this also keeps tanh(−0) = −0).
    t.copysign(x)
}

dispatch! {
    /// `z ← tanh(z)` elementwise, as the forward pass computes it: on AVX-512 machines the
    /// vector kernel `x86::tanh_avx512` (same formula, division by a refined reciprocal),
    /// elsewhere [`tanh`] per element. Same error bound as [`tanh`].
    pub fn tanh_slice(z: &mut [f32]) => tanh_slice_body
}

#[inline(always)]
fn tanh_slice_body<P: Policy>(z: &mut [f32]) {
    P::tanh_slice(z)
}
