//! Elementwise math that must vectorize: `tanh` without a libm call per element.

use super::simd::{Policy, dispatch};

/// Odd polynomial of Cephes `tanhf` for `|x| < 0.625`: `tanh x ≈ x + x·z·P(z)`, `z = x²`,
/// `P` highest degree first.
pub(crate) const TANH_P: [f32; 5] = [-5.704_988_7e-3, 2.063_909e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328e-1];
/// `e^r ≈ 1 + r + r²·Q(r)` on `|r| ≤ ln2/2` (Cephes `expf`), `Q` highest degree first.
pub(crate) const EXP_Q: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
/// `|x|` beyond which `tanh(x)` is ±1 in f32 (it rounds to 1 from ≈ 9.011 on).
pub(crate) const TANH_CLAMP: f32 = 10.0;
/// ln 2 split so `n·LN2_HI` is exact for the `n` that occur.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
/// The remainder `ln 2 − LN2_HI`.
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;

/// `tanh(x)` in f32, branch-free so loops over it auto-vectorize.
///
/// For `|x| < 0.625` the odd minimax polynomial of Cephes `tanhf`; above, `1 − 2/(e^{2|x|}+1)`
/// with `e^y` from a degree-6 polynomial after `y = n·ln2 + r` range reduction, `|x|` clamped at
/// 10 (tanh rounds to exactly 1 in f32 from |x| ≈ 9.01 on). NaN propagates, ±0 keep their sign. The test suite checks the maximum error
/// against `f64::tanh` over the whole f32 range: it stays below 4e-7 absolute and relative.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let ax = x.abs();
    // Small |x|: x + x³·P(x²).
    let z = x * x;
    let p = TANH_P.iter().fold(0.0f32, |acc, &c| acc * z + c) * z;
    let small = x + x * p;
    // Large |x|: 1 − 2/(exp(2|x|) + 1).
    let e = exp_small(2.0 * ax.min(TANH_CLAMP));
    let large = 1.0 - 2.0 / (e + 1.0);
    // NaN compares false, so it takes the polynomial path, which propagates it. tanh is odd:
    // the sign of x goes on last (this also keeps tanh(−0) = −0).
    (if ax >= 0.625 { large } else { small.abs() }).copysign(x)
}

/// `e^y` for `y` in `[0, 20]` (what [`tanh`] needs), relative error below 2e-7.
#[inline(always)]
fn exp_small(y: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting rounds to an integer.
    let n = (y * LOG2E + ROUND) - ROUND;
    let r = y - n * LN2_HI - n * LN2_LO;
    // 1 + r + r²·Q(r) with Q by Estrin's scheme (as the vector kernel does).
    let r2 = r * r;
    let (a, b, c) = (EXP_Q[0] * r + EXP_Q[1], EXP_Q[2] * r + EXP_Q[3], EXP_Q[4] * r + EXP_Q[5]);
    let q = (a * r2 + b) * r2 + c;
    let p = q * r2 + (r + 1.0);
    // 2^n without a float→int conversion (Rust's saturating `as` does not vectorize): for an
    // integer-valued 0 ≤ n < 2^22, the bits of n + 2^23 + 127 are 0x4B00_0000 + n + 127.
    let scale = f32::from_bits(((n + (8_388_608.0 + 127.0)).to_bits() - 0x4B00_0000) << 23);
    p * scale
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
