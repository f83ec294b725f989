//! Gradient checks, property-based over random MLPs (1–4 layers, widths 1–64, tanh/ReLU,
//! MSE/softmax cross-entropy, 1–32 points):
//!
//! 1. the f64 reference's analytic gradient against central finite differences of the f64
//!    loss (validates the reference itself);
//! 2. the crate's f32 kernels (`forward`, `loss_grad`, `backward`, `backward_sgd`) against the
//!    f64 reference;
//! 3. `Model::predict` against the reference forward pass.
//!
//! # Tolerances for the f32 kernels
//!
//! f32 unit roundoff is `u = 2⁻²⁴ ≈ 6e-8`. Every product here is a sum of at most 64 terms
//! (forward and input-gradient products) or 32 terms (sums over points), whose worst-case
//! rounding error is `γ_n ≈ n·u ≤ 4e-6` relative to the sum of `|terms|`, but rounding errors
//! add like `√n·u ≈ 5e-7`; the fast tanh adds at most 4e-7 (measured 3.8e-7 in the vector kernels). Values are
//! compared *normwise* per block: `|got − ref| ≤ C·scale + C·|ref|` with `scale` the largest
//! `|ref|` of the block (outputs: the whole output; gradients: layer `l`'s `W_l`/`b_l`), and
//! `C = 1e-5`: over 3000 random problems of this generator the largest normwise errors were
//! 2.6e-7 (outputs, loss) and 8.5e-7 (gradients), so `C` leaves a ~10× margin while still
//! catching any precision loss beyond a few dozen ulps, let alone layout or indexing errors
//! (O(1) relative differences).
//!
//! The gradient's `scale` in the property test is the largest *magnitude of the terms* behind
//! the layer's gradient elements (`ref_backward_magnitude`: the backward pass on absolute
//! values), not the largest `|∇θ|`: rounding errors are relative to the former, and where the
//! terms cancel (a deep net's first layer on one point) the two differ. The `|∇θ|` scale once
//! failed a correct kernel, an error of 3.2e-8 against a bound of 2.7e-8
//! (`cancelling_first_layer_gradient`); a 1e-4 relative error in one gradient element still
//! fails the check.

mod common;

use common::*;
use proptest::prelude::*;
use rand::Rng;
use reptile::cpu::mlp::{self, Workspace};
use reptile::{Activation, Loss, MlpSpec, Model};

/// Normwise relative tolerance of the f32 kernels (see the module docs).
const C: f64 = 1e-5;
/// Finite-difference step.
const H: f64 = 1e-6;
/// Minimum distance of every hidden ReLU pre-activation from the kink at 0.
const KINK_MARGIN: f64 = 1e-4;

/// One random problem: spec, θ (from `Model::new`), inputs in [-2, 2), targets.
struct Problem {
    spec: MlpSpec,
    theta: Vec<f32>,
    x: Vec<f32>,
    t: OwnedTargets,
    rng: rand_chacha::ChaCha8Rng,
}

fn problem(layers: usize, relu: bool, ce: bool, points: usize, seed: u64) -> Problem {
    let mut rng = rng(seed);
    let act = if relu { Activation::Relu } else { Activation::Tanh };
    let loss = if ce { Loss::SoftmaxCrossEntropy } else { Loss::Mse };
    let spec = random_spec(&mut rng, layers, 64, act, loss);
    let theta = Model::new(spec.clone(), seed ^ 0x5eed).into_params();
    let mut x = uniform_vec(&mut rng, points * spec.in_dim(), -2.0, 2.0);
    avoid_relu_kinks(&spec, &to_f64(&theta), &mut x, points, &mut rng, KINK_MARGIN);
    let t = OwnedTargets::random(&mut rng, &spec, points);
    Problem { spec, theta, x, t, rng }
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() }
}

/// `(layers, relu, ce, points, seed)`.
fn params() -> impl Strategy<Value = (usize, bool, bool, usize, u64)> {
    (1usize..=4, any::<bool>(), any::<bool>(), 1usize..=32, any::<u64>())
}

/// Checks `got` against `want` layer block by layer block, with `|got − ref| ≤ tol_scale·s_l
/// + eps·|ref|` where `s_l` is the largest value of `scale` over layer `l`'s parameters (+
/// `extra_tol`): `|ref|` itself, or the magnitudes of the terms behind each gradient element
/// ([`ref_backward_magnitude`]).
#[allow(clippy::too_many_arguments)]
fn check_per_layer(
    spec: &MlpSpec,
    got: &[f32],
    want: &[f64],
    scale: &[f64],
    tol_scale: f64,
    extra_tol: f64,
    eps: f64,
    what: &str,
) -> Result<(), String> {
    let offs = layer_offsets(spec.widths());
    for (l, &(wo, _)) in offs.iter().enumerate() {
        let end = offs.get(l + 1).map_or(want.len(), |o| o.0);
        let scale = max_abs(&scale[wo..end]);
        check_close(&got[wo..end], &want[wo..end], tol_scale * scale + extra_tol, eps, &format!("{what} layer {l}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// The reference's analytic gradient equals central finite differences of its loss.
    ///
    /// FD error: truncation `h²/6·|L'''| ≈ 2e-13·|L'''|` plus cancellation `≈ 1e-16·L/h =
    /// 1e-10·L`; the bound `1e-7·max(1, L) + 1e-6·|g|` is ≥ 1000× above both and ≥ 1000×
    /// below the size of any real derivative error for gradients of order 1e-4 and up.
    #[test]
    fn reference_gradient_matches_finite_differences((layers, relu, ce, points, seed) in params()) {
        let mut p = problem(layers, relu, ce, points, seed);
        let spec = &p.spec;
        let theta = to_f64(&p.theta);
        let x = to_f64(&p.x);
        let tv = p.t.values_f64();
        let t = p.t.reference(&tv);
        let (loss, grad) = ref_loss_grad(spec, &theta, &x, t, points);
        prop_assert!(loss.is_finite() && loss > 0.0);
        let n = theta.len();
        let coords: Vec<usize> = if n <= 20 { (0..n).collect() } else { (0..20).map(|_| p.rng.random_range(0..n)).collect() };
        let mut th = theta.clone();
        for &j in &coords {
            th[j] = theta[j] + H;
            let lp = ref_loss(spec, &th, &x, t, points);
            th[j] = theta[j] - H;
            let lm = ref_loss(spec, &th, &x, t, points);
            th[j] = theta[j];
            let fd = (lp - lm) / (2.0 * H);
            let bound = 1e-7 * loss.max(1.0) + 1e-6 * grad[j].abs();
            prop_assert!(
                (fd - grad[j]).abs() <= bound,
                "θ[{}] of {:?} {:?} {:?}: analytic {:e}, finite difference {:e}, |diff| {:e} > {:e}",
                j, spec.widths(), spec.activation(), spec.loss(), grad[j], fd, (fd - grad[j]).abs(), bound
            );
        }
    }

    /// The f32 kernels agree with the f64 reference: outputs, loss, gradient, and the fused
    /// SGD update `θ − lr·∇θ`.
    #[test]
    fn kernels_match_reference((layers, relu, ce, points, seed) in params(), extra_cap in 0usize..4) {
        check_kernels(layers, relu, ce, points, seed, extra_cap)?;
    }

    /// `Model::predict` equals the reference forward pass.
    #[test]
    fn predict_matches_reference((layers, relu, ce, points, seed) in params()) {
        let p = problem(layers, relu, ce, points, seed);
        let model = Model::from_params(p.spec.clone(), p.theta.clone()).unwrap();
        let y = model.predict(&p.x).unwrap();
        prop_assert_eq!(y.len(), points * p.spec.out_dim());
        let f = ref_forward(&p.spec, &to_f64(&p.theta), &to_f64(&p.x), points);
        let s = max_abs(f.output());
        check_close(&y, f.output(), C * s, C, "predict").map_err(TestCaseError::fail)?;
    }
}

/// The f32 kernels against the f64 reference on one random problem (the body of
/// `kernels_match_reference`).
fn check_kernels(
    layers: usize,
    relu: bool,
    ce: bool,
    points: usize,
    seed: u64,
    extra_cap: usize,
) -> Result<(), TestCaseError> {
    let mut p = problem(layers, relu, ce, points, seed);
    let spec = &p.spec;
    let theta64 = to_f64(&p.theta);
    let x64 = to_f64(&p.x);
    let tv = p.t.values_f64();
    let t = p.t.reference(&tv);
    let f = ref_forward(spec, &theta64, &x64, points);
    let (loss_ref, grad_ref) = ref_loss_grad(spec, &theta64, &x64, t, points);
    let dy_ref = ref_output_grad(spec, f.output(), t, points);
    let magnitude = ref_backward_magnitude(spec, &theta64, &x64, points, &f, &dy_ref);

    // A workspace larger than the batch exercises the capacity strides.
    let mut ws = Workspace::new(spec, points + extra_cap);
    let y = mlp::forward(spec, &p.theta, &p.x, points, &mut ws).to_vec();
    let y_ref = f.output();
    let y_scale = max_abs(y_ref);
    check_close(&y, y_ref, C * y_scale, C, "forward output").map_err(TestCaseError::fail)?;

    // Loss: an output error δ moves MSE by ≤ 2·√L·δ and cross-entropy by ≤ 2·δ, plus
    // f32 rounding of the per-point terms (relative C).
    let loss = mlp::loss_grad(spec, p.t.tgt(), points, &mut ws);
    let dy = C * y_scale;
    let loss_tol = 2.0 * (loss_ref.sqrt() + 1.0) * dy;
    check_close(&[loss], &[loss_ref], loss_tol, C, "loss").map_err(TestCaseError::fail)?;

    // Gradient into a NaN-poisoned buffer: backward must overwrite every entry.
    let mut grad = vec![f32::NAN; spec.num_params()];
    mlp::backward(spec, &p.theta, &p.x, points, &mut ws, &mut grad);
    check_per_layer(spec, &grad, &grad_ref, &magnitude, C, 0.0, C, "gradient").map_err(TestCaseError::fail)?;

    // Fused SGD: θ_new = θ − lr·g; rounding adds ≤ 2u·|θ_new| on top of lr × the gradient
    // tolerance.
    let lr = p.rng.random_range(0.001f32..0.5);
    let mut theta_new = p.theta.clone();
    mlp::forward(spec, &p.theta, &p.x, points, &mut ws);
    let loss2 = mlp::loss_grad(spec, p.t.tgt(), points, &mut ws);
    prop_assert_eq!(loss2.to_bits(), loss.to_bits(), "loss_grad is not deterministic");
    mlp::backward_sgd(spec, &mut theta_new, &p.x, points, &mut ws, lr);
    let want: Vec<f64> = theta64.iter().zip(&grad_ref).map(|(t, g)| t - lr as f64 * g).collect();
    let offs = layer_offsets(spec.widths());
    for (l, &(wo, _)) in offs.iter().enumerate() {
        let end = offs.get(l + 1).map_or(want.len(), |o| o.0);
        let gscale = max_abs(&magnitude[wo..end]);
        let tol = lr as f64 * C * gscale;
        check_close(&theta_new[wo..end], &want[wo..end], tol, 2.5e-7, &format!("backward_sgd layer {l}"))
            .map_err(TestCaseError::fail)?;
    }
    Ok(())
}

/// A deep tanh net on one point whose first-layer gradient (at most 1.4e-3 in magnitude) is
/// what is left after cancellation. Its f32 error on the portable path, 3.2e-8, exceeded the
/// bound scaled by the layer's largest |∇θ| (2.7e-8) and is within the bound scaled by the
/// magnitudes of the terms. Drawn by `kernels_match_reference` in a CI run of session 21.
#[test]
fn cancelling_first_layer_gradient() {
    check_kernels(4, false, true, 1, 12194828512617988069, 0).unwrap();
}

/// The analytic gradient also passes finite differences at a ReLU point *between* kinks for a
/// deep, narrow net with many dead units, where errors in the mask would show.
#[test]
fn relu_mask_gradient_deep_narrow() {
    for seed in 0..20u64 {
        let mut rng = rng(1000 + seed);
        let spec = MlpSpec::new(&[3, 2, 2, 2, 2], Activation::Relu, Loss::Mse).unwrap();
        let theta = to_f64(&Model::new(spec.clone(), seed).into_params());
        let points = 8;
        let mut x = uniform_vec(&mut rng, points * 3, -2.0, 2.0);
        avoid_relu_kinks(&spec, &theta, &mut x, points, &mut rng, KINK_MARGIN);
        let x = to_f64(&x);
        let t = uniform_vec(&mut rng, points * 2, -2.0, 2.0);
        let tv = to_f64(&t);
        let (loss, g) = ref_loss_grad(&spec, &theta, &x, RefTargets::Values(&tv), points);
        let mut th = theta.clone();
        for j in 0..theta.len() {
            th[j] = theta[j] + H;
            let lp = ref_loss(&spec, &th, &x, RefTargets::Values(&tv), points);
            th[j] = theta[j] - H;
            let lm = ref_loss(&spec, &th, &x, RefTargets::Values(&tv), points);
            th[j] = theta[j];
            let fd = (lp - lm) / (2.0 * H);
            assert!(
                (fd - g[j]).abs() <= 1e-7 * loss.max(1.0) + 1e-6 * g[j].abs(),
                "seed {seed} θ[{j}]: analytic {:e} vs fd {fd:e}",
                g[j]
            );
        }
    }
}

/// Runs forward and backward of the net `w` on `points` random inputs in `[lo, hi)` against
/// the f64 reference (same tolerances as the property tests) and returns the problem and the
/// reference gradient for further checks.
fn check_shape(
    w: &[usize],
    act: Activation,
    loss: Loss,
    points: usize,
    seed: u64,
    (lo, hi): (f32, f32),
) -> (Problem, Vec<f64>) {
    let mut rng = rng(seed);
    let spec = MlpSpec::new(w, act, loss).unwrap();
    let theta = Model::new(spec.clone(), seed ^ 0x5eed).into_params();
    let mut x = uniform_vec(&mut rng, points * spec.in_dim(), lo, hi);
    avoid_relu_kinks(&spec, &to_f64(&theta), &mut x, points, &mut rng, KINK_MARGIN);
    let t = OwnedTargets::random(&mut rng, &spec, points);
    let tv = t.values_f64();
    let f = ref_forward(&spec, &to_f64(&theta), &to_f64(&x), points);
    let (_, g) = ref_loss_grad(&spec, &to_f64(&theta), &to_f64(&x), t.reference(&tv), points);
    let mut ws = Workspace::new(&spec, points);
    let y = mlp::forward(&spec, &theta, &x, points, &mut ws).to_vec();
    assert_close(&y, f.output(), C * max_abs(f.output()), C, &format!("{w:?} output, {points} points"));
    mlp::loss_grad(&spec, t.tgt(), points, &mut ws);
    let mut grad = vec![f32::NAN; spec.num_params()];
    mlp::backward(&spec, &theta, &x, points, &mut ws, &mut grad);
    check_per_layer(&spec, &grad, &g, &g, C, 0.0, C, &format!("{w:?} gradient, {points} points")).unwrap();
    (Problem { spec, theta, x, t, rng }, g)
}

/// Layers wider than 64 (the bias-gradient kernel works in blocks of 64) and batches of more
/// than 32 points, same tolerances as the property tests.
#[test]
fn wide_layers_match_reference() {
    let shapes: [(&[usize], Activation, Loss, usize); 4] = [
        (&[5, 130, 70, 3], Activation::Tanh, Loss::Mse, 40),
        (&[5, 130, 70, 3], Activation::Relu, Loss::SoftmaxCrossEntropy, 40),
        (&[65, 64, 129], Activation::Relu, Loss::Mse, 7),
        (&[2, 200, 200], Activation::Tanh, Loss::SoftmaxCrossEntropy, 65),
    ];
    for (k, (w, act, loss, points)) in shapes.into_iter().enumerate() {
        check_shape(w, act, loss, points, 500 + k as u64, (-2.0, 2.0));
    }
}

/// Large layers, whose weights do not fit in L1 (the forward product then walks `W` once,
/// output blocks outermost; the weight-gradient kernel runs many 64-column blocks and a masked
/// edge): the Omniglot MLP with batches of 10 and 25, and an odd-sized tanh net; also the
/// fused SGD update's move against −lr·∇.
#[test]
fn large_layers_match_reference() {
    let shapes: [(&[usize], Activation, Loss, usize); 3] = [
        (&[784, 256, 128, 64, 64, 5], Activation::Relu, Loss::SoftmaxCrossEntropy, 10),
        (&[784, 256, 128, 64, 64, 5], Activation::Relu, Loss::SoftmaxCrossEntropy, 25),
        (&[301, 203, 3], Activation::Tanh, Loss::Mse, 9),
    ];
    for (k, (w, act, loss, points)) in shapes.into_iter().enumerate() {
        let (p, g) = check_shape(w, act, loss, points, 700 + k as u64, (0.0, 1.0));
        let (spec, lr) = (&p.spec, 0.5f32);
        let mut ws = Workspace::new(spec, points);
        let mut th = p.theta.clone();
        mlp::forward(spec, &th, &p.x, points, &mut ws);
        mlp::loss_grad(spec, p.t.tgt(), points, &mut ws);
        mlp::backward_sgd(spec, &mut th, &p.x, points, &mut ws, lr);
        let moved: Vec<f32> = th.iter().zip(&p.theta).map(|(a, b)| (b - a) / lr).collect();
        check_per_layer(spec, &moved, &g, &g, C, 2e-7, C, &format!("{w:?} SGD move, {points} points")).unwrap();
    }
}

/// The spec's layout (offsets, parameter count) is the documented one.
#[test]
fn layout_matches_documentation() {
    let mut r = rng(600);
    for _ in 0..200 {
        let layers = r.random_range(1..=6);
        let spec = random_spec(&mut r, layers, 300, Activation::Tanh, Loss::Mse);
        let w = spec.widths();
        assert_eq!(spec.num_layers(), w.len() - 1);
        assert_eq!(spec.num_params(), num_params(w));
        for (l, &(wo, bo)) in layer_offsets(w).iter().enumerate() {
            assert_eq!(spec.weight_offset(l), wo, "W_{l} of {w:?}");
            assert_eq!(spec.bias_offset(l), bo, "b_{l} of {w:?}");
        }
        assert_eq!(Model::new(spec.clone(), 0).params().len(), spec.num_params());
    }
}

/// Every test of this file again on the lower instruction-set paths (AVX2, portable), each in
/// its own process (see `common::rerun_under_lower_isas`).
#[test]
fn lower_isa_paths() {
    common::rerun_under_lower_isas("lower_isa_paths");
}
