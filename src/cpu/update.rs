//! Elementwise parameter kernels of the Reptile outer loop.

/// `acc ← acc + (θ' − θ)`: adds one task's delta to a running sum (fixed order of tasks ⇒
/// reproducible sums).
#[inline]
pub fn accumulate_delta(acc: &mut [f32], theta_prime: &[f32], theta: &[f32]) {
    assert!(acc.len() == theta.len() && theta_prime.len() == theta.len(), "delta lengths");
    acc.iter_mut().zip(theta_prime).zip(theta).for_each(|((a, &tp), &t)| *a += tp - t);
}

/// `out ← θ' − θ`.
#[inline]
pub fn delta(out: &mut [f32], theta_prime: &[f32], theta: &[f32]) {
    assert!(out.len() == theta.len() && theta_prime.len() == theta.len(), "delta lengths");
    out.iter_mut().zip(theta_prime).zip(theta).for_each(|((o, &tp), &t)| *o = tp - t);
}

/// `acc ← acc + x`.
#[inline]
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add lengths");
    acc.iter_mut().zip(x).for_each(|(a, &v)| *a += v);
}

/// The Reptile interpolation `out ← θ + scale·Σδ` with `scale = ε/n` (Σδ the summed task
/// deltas). Written to a separate buffer so a non-finite result can be rejected.
#[inline]
pub fn interpolate(out: &mut [f32], theta: &[f32], delta_sum: &[f32], scale: f32) {
    assert!(out.len() == theta.len() && delta_sum.len() == theta.len(), "interpolate lengths");
    out.iter_mut().zip(theta).zip(delta_sum).for_each(|((o, &t), &d)| *o = t + scale * d);
}
