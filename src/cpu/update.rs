//! Elementwise parameter kernels of the Reptile outer loop.

use super::simd::{Policy, dispatch};

/// `acc ← acc + (θ' − θ)`: adds one task's delta to a running sum (fixed order of tasks ⇒
/// reproducible sums).
pub fn accumulate_delta(acc: &mut [f32], theta_prime: &[f32], theta: &[f32]) {
    assert!(acc.len() == theta.len() && theta_prime.len() == theta.len(), "delta lengths");
    accumulate_d(acc, theta_prime, theta);
}

dispatch! { fn accumulate_d(acc: &mut [f32], theta_prime: &[f32], theta: &[f32]) => accumulate_body }

// `P` only selects the instruction set the wrapper compiles this loop for.
#[allow(clippy::extra_unused_type_parameters)]
#[inline(always)]
pub(crate) fn accumulate_body<P: Policy>(acc: &mut [f32], theta_prime: &[f32], theta: &[f32]) {
    acc.iter_mut().zip(theta_prime).zip(theta).for_each(|((a, &tp), &t)| *a += tp - t);
}

/// `out ← θ' − θ`.
pub fn delta(out: &mut [f32], theta_prime: &[f32], theta: &[f32]) {
    assert!(out.len() == theta.len() && theta_prime.len() == theta.len(), "delta lengths");
    delta_d(out, theta_prime, theta);
}

dispatch! { fn delta_d(out: &mut [f32], theta_prime: &[f32], theta: &[f32]) => delta_body }

// `P` only selects the instruction set the wrapper compiles this loop for.
#[allow(clippy::extra_unused_type_parameters)]
#[inline(always)]
pub(crate) fn delta_body<P: Policy>(out: &mut [f32], theta_prime: &[f32], theta: &[f32]) {
    out.iter_mut().zip(theta_prime).zip(theta).for_each(|((o, &tp), &t)| *o = tp - t);
}

/// `acc ← acc + x`.
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add lengths");
    add_assign_d(acc, x);
}

dispatch! { fn add_assign_d(acc: &mut [f32], x: &[f32]) => add_assign_body }

// `P` only selects the instruction set the wrapper compiles this loop for.
#[allow(clippy::extra_unused_type_parameters)]
#[inline(always)]
pub(crate) fn add_assign_body<P: Policy>(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, &v)| *a += v);
}

/// The Reptile interpolation `out ← keep·(θ + scale·Σδ)` with `scale = ε/n` (Σδ the summed
/// task deltas) and `keep = 1 − ε·λ` (the outer decay; 1 without it: the product is then
/// exact), written to a separate buffer so a non-finite result can be rejected. Each output
/// is `θ + scale·Σδ` rounded once (fused multiply-add where the CPU has it), then times
/// `keep` rounded once. Returns whether every output is finite (checked in the same pass; a
/// NaN/Inf in Σδ or an overflow both show up in `out`).
pub fn interpolate(out: &mut [f32], theta: &[f32], delta_sum: &[f32], scale: f32, keep: f32) -> bool {
    assert!(out.len() == theta.len() && delta_sum.len() == theta.len(), "interpolate lengths");
    interpolate_d(out, theta, delta_sum, scale, keep)
}

dispatch! { fn interpolate_d(out: &mut [f32], theta: &[f32], delta_sum: &[f32], scale: f32, keep: f32) -> bool => interpolate_body }

#[inline(always)]
fn interpolate_body<P: Policy>(out: &mut [f32], theta: &[f32], delta_sum: &[f32], scale: f32, keep: f32) -> bool {
    const EXP: u32 = 0x7f80_0000;
    let mut bad = 0u32;
    for ((o, t), d) in out.chunks_mut(64).zip(theta.chunks(64)).zip(delta_sum.chunks(64)) {
        let mut m = 0u32;
        for ((o, &t), &d) in o.iter_mut().zip(t).zip(d) {
            let v = P::madd(scale, d, t) * keep;
            m |= ((v.to_bits() & EXP) == EXP) as u32;
            *o = v;
        }
        bad |= m;
    }
    bad == 0
}

/// Adam's step size at step `t` (1-based) with the bias correction of β1 = 0 folded in:
/// `α·√(1 − β2^t)`, computed in f64 and rounded once. The CPU inner loops and the CUDA tiled
/// path both take it from here, so they step by the same f32.
pub fn adam_lr_t(lr: f32, beta2: f32, t: u64) -> f32 {
    (lr as f64 * (1.0 - (beta2 as f64).powf(t as f64)).sqrt()) as f32
}

/// Smallest `|g|` whose `(1 − β2)·g²` is a normal float: `√(2⁻¹²⁶/(1 − β2))`, rounded up
/// (3.4e-18 for β2 = 0.999).
pub fn adam_g_min(beta2: f32) -> f32 {
    let g = (f32::MIN_POSITIVE as f64 / (1.0 - beta2 as f64)).sqrt();
    (g * (1.0 + 1e-6)) as f32
}

/// `x·f` rounded once, a subnormal result stored as zero (ordered compare: NaN stays NaN): one
/// element of a deferred decay `β2^d·v` (see [`super::sparse`]).
#[inline(always)]
pub(crate) fn decayed(x: f32, f: f32) -> f32 {
    let y = x * f;
    if y < f32::MIN_POSITIVE { 0.0 } else { y }
}

/// One Adam step with β1 = 0 on θ: `v ← β2·v + (1 − β2)·g²`, `θ ← θ − lr_t·g/(√v + ε)`, where
/// the caller folds the bias correction into `lr_t = α·√(1 − β2^t)`.
///
/// Precision: on AVX-512 the square root and the division come from the hardware estimates
/// `vrsqrt14ps`/`vrcp14ps` refined by one Newton step each (a square root and a division
/// cost about 22 cycles per 16 values, more than the rest of a large layer's step), so the
/// update `lr_t·g/(√v + ε)` is within a few ulp (relative 1e-6) of the IEEE-exact value that
/// the AVX2 and portable paths compute; `v` itself is computed exactly on every path.
///
/// Subnormals: a new `v` below `f32::MIN_POSITIVE` (2⁻¹²⁶ ≈ 1.2e-38) is stored as 0 (NaN is
/// kept), and the gradient's share `(1 − β2)·g²` is left out where `|g|` is below
/// [`adam_g_min`] (where that share would be subnormal; the step still uses `g`). Weights
/// whose gradient is zero for long stretches (inputs that are always blank, such as
/// Omniglot's border pixels, or dead ReLU units) have their `v` decay by β2 every step,
/// and x86 cores run arithmetic on subnormal operands through a microcode assist of about a
/// hundred cycles: one 246,597-parameter update took 3.1 ms with subnormal `v` against
/// 0.27 ms without, and long Omniglot runs spent half their time there. Such a `v` is below
/// ε² by 22 orders of magnitude, so the step `lr_t·g/(√v + ε)` does not see the difference.
pub fn adam_b1zero(theta: &mut [f32], grad: &[f32], v: &mut [f32], lr_t: f32, beta2: f32, eps: f32) {
    assert!(grad.len() == theta.len() && v.len() == theta.len(), "adam lengths");
    adam_d(theta, grad, v, lr_t, beta2, eps);
}

dispatch! { fn adam_d(theta: &mut [f32], grad: &[f32], v: &mut [f32], lr_t: f32, beta2: f32, eps: f32) => adam_body }

#[inline(always)]
pub(crate) fn adam_body<P: Policy>(theta: &mut [f32], grad: &[f32], v: &mut [f32], lr_t: f32, beta2: f32, eps: f32) {
    P::adam_slice(theta, grad, v, lr_t, beta2, eps);
}
