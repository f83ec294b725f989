//! Shared test helpers: a plain f64 reference MLP in the crate's flat θ layout, seeded
//! random specs and data, and tolerance checks of the form `|got − ref| ≤ tol + |ref|·eps`.
//!
//! The reference is written independently of `src/`: straightforward loops in f64, with
//! `f64::tanh`, so it can serve as ground truth for the f32 kernels.

#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reptile::{Activation, Loss, MlpSpec};

// ---------------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------------

/// Offsets of `W_l` and `b_l` in θ, recomputed from the widths (independently of `MlpSpec`'s
/// own offset methods).
pub fn layer_offsets(widths: &[usize]) -> Vec<(usize, usize)> {
    let mut off = 0;
    let mut v = Vec::new();
    for l in 0..widths.len() - 1 {
        let (i, o) = (widths[l], widths[l + 1]);
        v.push((off, off + i * o));
        off += (i + 1) * o;
    }
    v
}

/// Total parameters `Σ (in+1)·out`.
pub fn num_params(widths: &[usize]) -> usize {
    widths.windows(2).map(|w| (w[0] + 1) * w[1]).sum()
}

// ---------------------------------------------------------------------------------------------
// Reference MLP in f64
// ---------------------------------------------------------------------------------------------

/// Targets for the reference: real values `[points × out]` or labels `[points]`.
#[derive(Clone, Copy, Debug)]
pub enum RefTargets<'a> {
    Values(&'a [f64]),
    Labels(&'a [u32]),
}

/// Everything the forward pass computed: per layer the pre-activations `Z_l` and the
/// post-activations `A_l` (`A_{L−1} = Z_{L−1}` = the output), each `[points × out_l]`.
#[derive(Clone, Debug)]
pub struct RefForward {
    pub z: Vec<Vec<f64>>,
    pub a: Vec<Vec<f64>>,
}

impl RefForward {
    /// The network output `[points × out]`.
    pub fn output(&self) -> &[f64] {
        self.a.last().unwrap()
    }
}

fn act(a: Activation, z: f64) -> f64 {
    match a {
        Activation::Tanh => z.tanh(),
        Activation::Relu => {
            if z > 0.0 {
                z
            } else {
                0.0
            }
        }
    }
}

/// `d act / dz` at `z`.
fn act_deriv(a: Activation, z: f64) -> f64 {
    match a {
        Activation::Tanh => {
            let t = z.tanh();
            1.0 - t * t
        }
        Activation::Relu => {
            if z > 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// Forward pass: `Z_l[p,o] = b_l[o] + Σ_i W_l[o,i]·A_{l−1}[p,i]`, activation on hidden layers.
pub fn ref_forward(spec: &MlpSpec, theta: &[f64], x: &[f64], points: usize) -> RefForward {
    let w = spec.widths();
    assert_eq!(theta.len(), num_params(w));
    assert_eq!(x.len(), points * w[0]);
    let offs = layer_offsets(w);
    let nl = w.len() - 1;
    let mut zs: Vec<Vec<f64>> = Vec::with_capacity(nl);
    let mut as_: Vec<Vec<f64>> = Vec::with_capacity(nl);
    for l in 0..nl {
        let (inp, out) = (w[l], w[l + 1]);
        let (wo, bo) = offs[l];
        let prev: &[f64] = if l == 0 { x } else { &as_[l - 1] };
        let mut z = vec![0.0; points * out];
        for p in 0..points {
            for o in 0..out {
                let mut s = theta[bo + o];
                for i in 0..inp {
                    s += theta[wo + o * inp + i] * prev[p * inp + i];
                }
                z[p * out + o] = s;
            }
        }
        let a = if l + 1 < nl { z.iter().map(|&v| act(spec.activation(), v)).collect() } else { z.clone() };
        zs.push(z);
        as_.push(a);
    }
    RefForward { z: zs, a: as_ }
}

/// Loss of outputs `y` `[points × out]`: MSE = mean over points and outputs of `(y − t)²`;
/// softmax cross-entropy = mean over points of `logsumexp(y) − y[label]`.
pub fn ref_loss_of_output(spec: &MlpSpec, y: &[f64], t: RefTargets<'_>, points: usize) -> f64 {
    let out = spec.out_dim();
    match (spec.loss(), t) {
        (Loss::Mse, RefTargets::Values(t)) => {
            assert_eq!(t.len(), points * out);
            y.iter().zip(t).map(|(y, t)| (y - t) * (y - t)).sum::<f64>() / (points * out) as f64
        }
        (Loss::SoftmaxCrossEntropy, RefTargets::Labels(lab)) => {
            assert_eq!(lab.len(), points);
            let mut s = 0.0;
            for (row, &c) in y.chunks_exact(out).zip(lab) {
                s += logsumexp(row) - row[c as usize];
            }
            s / points as f64
        }
        _ => panic!("targets do not match the loss"),
    }
}

fn logsumexp(row: &[f64]) -> f64 {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// `dL/dY` for the loss of [`ref_loss_of_output`].
pub fn ref_output_grad(spec: &MlpSpec, y: &[f64], t: RefTargets<'_>, points: usize) -> Vec<f64> {
    let out = spec.out_dim();
    match (spec.loss(), t) {
        (Loss::Mse, RefTargets::Values(t)) => {
            let k = 2.0 / (points * out) as f64;
            y.iter().zip(t).map(|(y, t)| k * (y - t)).collect()
        }
        (Loss::SoftmaxCrossEntropy, RefTargets::Labels(lab)) => {
            let mut g = vec![0.0; points * out];
            for ((row, grow), &c) in y.chunks_exact(out).zip(g.chunks_exact_mut(out)).zip(lab) {
                let lse = logsumexp(row);
                for (g, &v) in grow.iter_mut().zip(row) {
                    *g = (v - lse).exp() / points as f64;
                }
                grow[c as usize] -= 1.0 / points as f64;
            }
            g
        }
        _ => panic!("targets do not match the loss"),
    }
}

/// Loss of θ on `(x, t)`.
pub fn ref_loss(spec: &MlpSpec, theta: &[f64], x: &[f64], t: RefTargets<'_>, points: usize) -> f64 {
    let f = ref_forward(spec, theta, x, points);
    ref_loss_of_output(spec, f.output(), t, points)
}

/// Analytic backward: `∇θ L` in the flat layout, given the forward pass and `dL/dY`.
pub fn ref_backward(spec: &MlpSpec, theta: &[f64], x: &[f64], points: usize, f: &RefForward, dy: &[f64]) -> Vec<f64> {
    let w = spec.widths();
    let offs = layer_offsets(w);
    let nl = w.len() - 1;
    let mut grad = vec![0.0; theta.len()];
    let mut dz = dy.to_vec();
    for l in (0..nl).rev() {
        let (inp, out) = (w[l], w[l + 1]);
        let (wo, bo) = offs[l];
        let prev: &[f64] = if l == 0 { x } else { &f.a[l - 1] };
        for p in 0..points {
            for o in 0..out {
                let d = dz[p * out + o];
                grad[bo + o] += d;
                for i in 0..inp {
                    grad[wo + o * inp + i] += d * prev[p * inp + i];
                }
            }
        }
        if l > 0 {
            let zprev = &f.z[l - 1];
            let mut dprev = vec![0.0; points * inp];
            for p in 0..points {
                for i in 0..inp {
                    let mut s = 0.0;
                    for o in 0..out {
                        s += dz[p * out + o] * theta[wo + o * inp + i];
                    }
                    dprev[p * inp + i] = s * act_deriv(spec.activation(), zprev[p * inp + i]);
                }
            }
            dz = dprev;
        }
    }
    grad
}

/// The magnitudes behind each gradient element: [`ref_backward`] with every factor replaced
/// by its absolute value (`|dy|`, `|W|`, `|act'|`, `|A|`), so element `j` is the sum of the
/// absolute values of all the products whose signed sum is `∇θ_j`. f32 rounding errors scale
/// with this sum, not with `|∇θ_j|`: where terms cancel (a deep net's small first-layer
/// gradient), the gradient is small but its rounding error is not.
pub fn ref_backward_magnitude(
    spec: &MlpSpec,
    theta: &[f64],
    x: &[f64],
    points: usize,
    f: &RefForward,
    dy: &[f64],
) -> Vec<f64> {
    let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<f64>>();
    // act'(z) is read from the unchanged z: tanh' and ReLU' are never negative.
    let fa = RefForward { z: f.z.clone(), a: f.a.iter().map(|a| abs(a)).collect() };
    ref_backward(spec, &abs(theta), &abs(x), points, &fa, &abs(dy))
}

/// Loss and gradient of θ on `(x, t)`.
pub fn ref_loss_grad(spec: &MlpSpec, theta: &[f64], x: &[f64], t: RefTargets<'_>, points: usize) -> (f64, Vec<f64>) {
    let f = ref_forward(spec, theta, x, points);
    let loss = ref_loss_of_output(spec, f.output(), t, points);
    let dy = ref_output_grad(spec, f.output(), t, points);
    (loss, ref_backward(spec, theta, x, points, &f, &dy))
}

/// `steps` steps of full-batch gradient descent `θ ← θ − lr·∇L(θ)` in f64.
pub fn ref_gd(
    spec: &MlpSpec,
    theta: &[f64],
    x: &[f64],
    t: RefTargets<'_>,
    points: usize,
    lr: f64,
    steps: usize,
) -> Vec<f64> {
    let mut th = theta.to_vec();
    for _ in 0..steps {
        let (_, g) = ref_loss_grad(spec, &th, x, t, points);
        th.iter_mut().zip(&g).for_each(|(t, g)| *t -= lr * g);
    }
    th
}

/// Smallest `|Z|` over the hidden pre-activations of point `p` (∞ without hidden layers).
pub fn min_hidden_preact(spec: &MlpSpec, f: &RefForward, p: usize) -> f64 {
    let w = spec.widths();
    let mut m = f64::INFINITY;
    for l in 0..w.len() - 2 {
        let out = w[l + 1];
        for &z in &f.z[l][p * out..(p + 1) * out] {
            m = m.min(z.abs());
        }
    }
    m
}

/// For ReLU nets: redraws the inputs of every point that has a hidden pre-activation within
/// `margin` of the kink at 0 (up to 1000 rounds; panics if it cannot), so that finite
/// differences and f32-vs-f64 comparisons never straddle a kink. No-op for tanh.
pub fn avoid_relu_kinks(
    spec: &MlpSpec,
    theta: &[f64],
    x: &mut [f32],
    points: usize,
    rng: &mut ChaCha8Rng,
    margin: f64,
) {
    if spec.activation() != Activation::Relu {
        return;
    }
    let d = spec.in_dim();
    for _ in 0..1000 {
        let f = ref_forward(spec, theta, &to_f64(x), points);
        let bad: Vec<usize> = (0..points).filter(|&p| min_hidden_preact(spec, &f, p) < margin).collect();
        if bad.is_empty() {
            return;
        }
        for p in bad {
            for v in &mut x[p * d..(p + 1) * d] {
                *v = rng.random_range(-2.0f32..2.0);
            }
        }
    }
    panic!("could not draw inputs away from the ReLU kinks");
}

// ---------------------------------------------------------------------------------------------
// Random data
// ---------------------------------------------------------------------------------------------

/// A seeded ChaCha8 generator.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` values uniform in `[lo, hi)`.
pub fn uniform_vec(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// `n` labels uniform in `0..classes`.
pub fn labels(rng: &mut ChaCha8Rng, n: usize, classes: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..classes as u32)).collect()
}

/// A random spec: `layers` linear layers (1..=4), widths in 1..=`max_w` (output ≥ 2 for
/// cross-entropy), given activation and loss.
pub fn random_spec(rng: &mut ChaCha8Rng, layers: usize, max_w: usize, act: Activation, loss: Loss) -> MlpSpec {
    let mut w: Vec<usize> = (0..=layers).map(|_| rng.random_range(1..=max_w)).collect();
    if loss == Loss::SoftmaxCrossEntropy {
        let last = w.last_mut().unwrap();
        *last = (*last).max(2);
    }
    MlpSpec::new(&w, act, loss).expect("valid random spec")
}

/// Owned targets matching a spec's loss.
#[derive(Clone, Debug)]
pub enum OwnedTargets {
    Values(Vec<f32>),
    Labels(Vec<u32>),
}

impl OwnedTargets {
    /// Random targets for `points` points: values in `[-2, 2)` (MSE) or labels.
    pub fn random(rng: &mut ChaCha8Rng, spec: &MlpSpec, points: usize) -> Self {
        match spec.loss() {
            Loss::Mse => OwnedTargets::Values(uniform_vec(rng, points * spec.out_dim(), -2.0, 2.0)),
            Loss::SoftmaxCrossEntropy => OwnedTargets::Labels(labels(rng, points, spec.out_dim())),
        }
    }
    /// As the crate's kernel targets.
    pub fn tgt(&self) -> reptile::cpu::mlp::Tgt<'_> {
        match self {
            OwnedTargets::Values(v) => reptile::cpu::mlp::Tgt::Values(v),
            OwnedTargets::Labels(l) => reptile::cpu::mlp::Tgt::Labels(l),
        }
    }
    /// As the trainer's batch targets (borrowed).
    pub fn targets(&self) -> reptile::Targets<'_> {
        match self {
            OwnedTargets::Values(v) => reptile::Targets::Values(std::borrow::Cow::Borrowed(v)),
            OwnedTargets::Labels(l) => reptile::Targets::Labels(std::borrow::Cow::Borrowed(l)),
        }
    }
    /// f64 copy of the values (empty for labels), to back a [`RefTargets`].
    pub fn values_f64(&self) -> Vec<f64> {
        match self {
            OwnedTargets::Values(v) => to_f64(v),
            OwnedTargets::Labels(_) => Vec::new(),
        }
    }
    /// The reference view; `vals` must be [`Self::values_f64`] of `self`.
    pub fn reference<'a>(&'a self, vals: &'a [f64]) -> RefTargets<'a> {
        match self {
            OwnedTargets::Values(_) => RefTargets::Values(vals),
            OwnedTargets::Labels(l) => RefTargets::Labels(l),
        }
    }
    /// Targets of point range `[start, end)` (for splitting a task batch into tasks).
    pub fn slice(&self, start: usize, end: usize, out: usize) -> OwnedTargets {
        match self {
            OwnedTargets::Values(v) => OwnedTargets::Values(v[start * out..end * out].to_vec()),
            OwnedTargets::Labels(l) => OwnedTargets::Labels(l[start..end].to_vec()),
        }
    }
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Largest `|v|`.
pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// `Err` naming the worst element unless every `|got[i] − want[i]| ≤ tol + |want[i]|·eps`
/// (and every `got` is finite).
pub fn check_close(got: &[f32], want: &[f64], tol: f64, eps: f64, what: &str) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} vs reference {}", got.len(), want.len()));
    }
    // Worst = largest excess of error over its bound.
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let bound = tol + w.abs() * eps;
        let excess = if err.is_nan() { f64::INFINITY } else { err / bound };
        if worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    match worst {
        Some((i, e)) if e > 1.0 => Err(format!(
            "{what}: worst index {i}: got {:e}, reference {:e}, |err| = {:e} > tol {tol:e} + |ref|·{eps:e} \
             (= {:e}; {} of {} elements checked)",
            got[i],
            want[i],
            (got[i] as f64 - want[i]).abs(),
            tol + want[i].abs() * eps,
            got.iter().zip(want).filter(|(g, w)| ((**g as f64) - **w).abs() > tol + w.abs() * eps).count(),
            got.len()
        )),
        _ => Ok(()),
    }
}

/// Panicking form of [`check_close`].
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f64], tol: f64, eps: f64, what: &str) {
    if let Err(e) = check_close(got, want, tol, eps, what) {
        panic!("{e}");
    }
}

/// Largest `|got − want| / scale` (for printing measured errors).
pub fn max_err_over(got: &[f32], want: &[f64], scale: f64) -> f64 {
    got.iter().zip(want).fold(0.0, |m, (&g, &w)| m.max((g as f64 - w).abs() / scale))
}

/// Bitwise equality of two f32 slices, reporting the first difference.
#[track_caller]
pub fn assert_bits_eq(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits()) {
        panic!("{what}: first difference at [{i}]: {:e} vs {:e}", a[i], b[i]);
    }
}

// ---------------------------------------------------------------------------------------------
// Instruction-set coverage
// ---------------------------------------------------------------------------------------------

/// Re-runs the calling test binary (all its tests) once per instruction set below the
/// machine's best, with `REPTILE_ISA` capping the kernels' choice, and fails if any run fails.
/// The kernels pick their instruction set once per process, so each level needs its own
/// process. Inside such a child, the test calling this (`self_name`) checks that the cap took
/// effect.
pub fn rerun_under_lower_isas(self_name: &str) {
    use reptile::cpu::simd::{Isa, isa};
    if let Ok(want) = std::env::var("REPTILE_ISA") {
        let cap = match want.as_str() {
            "baseline" => Isa::Baseline,
            "avx2" => Isa::Avx2,
            _ => Isa::Avx512,
        };
        assert!(isa() <= cap, "REPTILE_ISA={want} but the kernels use {:?}", isa());
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let levels: Vec<(&str, Isa)> =
        [("baseline", Isa::Baseline), ("avx2", Isa::Avx2)].into_iter().filter(|&(_, l)| l < isa()).collect();
    if levels.is_empty() {
        eprintln!("{self_name}: the best instruction set here is {:?}; nothing lower to run", isa());
    }
    for (name, _) in levels {
        let out = std::process::Command::new(&exe)
            .env("REPTILE_ISA", name)
            .args(["--test-threads", "2"])
            .output()
            .expect("re-run the test binary");
        let text = String::from_utf8_lossy(&out.stdout);
        let summary = text.lines().rev().find(|l| l.starts_with("test result")).unwrap_or("no summary");
        eprintln!("{self_name}: REPTILE_ISA={name}: {summary}");
        assert!(
            out.status.success(),
            "tests failed with REPTILE_ISA={name}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!summary.contains(" 0 passed"), "no test ran with REPTILE_ISA={name}");
    }
}
