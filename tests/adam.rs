//! The Adam (β1 = 0) inner optimizer: steps against an f64 reference, moment handling
//! (carried across training tasks, reset for evaluation), determinism and the split step.

mod common;

use common::*;
use rand::Rng;
use reptile::meta::adapt_with;
use reptile::{
    Activation, AdamMoments, InnerLoop, InnerOptimizer, Loss, MlpSpec, Model, ReptileConfig, Targets, TaskBatch,
    Trainer,
};
use std::borrow::Cow;

/// `steps` full-batch Adam (β1 = 0) steps in f64, TensorFlow's form.
#[allow(clippy::too_many_arguments)]
fn ref_adam(
    spec: &MlpSpec,
    theta: &[f64],
    x: &[f64],
    t: RefTargets<'_>,
    points: usize,
    lr: f64,
    beta2: f64,
    eps: f64,
    steps: usize,
) -> Vec<f64> {
    let mut th = theta.to_vec();
    let mut v = vec![0.0f64; th.len()];
    for step in 1..=steps {
        let (_, g) = ref_loss_grad(spec, &th, x, t, points);
        let lr_t = lr * (1.0 - beta2.powi(step as i32)).sqrt();
        for ((th, v), g) in th.iter_mut().zip(v.iter_mut()).zip(&g) {
            *v = beta2 * *v + (1.0 - beta2) * g * g;
            *th -= lr_t * g / (v.sqrt() + eps);
        }
    }
    th
}

fn adam(eps: f32) -> InnerOptimizer {
    InnerOptimizer::Adam { beta2: 0.999, eps }
}

#[test]
fn adam_steps_match_f64_reference() {
    for (seed, loss, act) in [
        (1, Loss::Mse, Activation::Tanh),
        (2, Loss::SoftmaxCrossEntropy, Activation::Relu),
        (3, Loss::Mse, Activation::Relu),
    ] {
        let mut r = rng(seed);
        let spec = random_spec(&mut r, 3, 12, act, loss);
        let points = 9;
        let x = uniform_vec(&mut r, points * spec.in_dim(), -2.0, 2.0);
        let targets = OwnedTargets::random(&mut r, &spec, points);
        let y = match &targets {
            OwnedTargets::Values(v) => Targets::Values(Cow::Owned(v.clone())),
            OwnedTargets::Labels(l) => Targets::Labels(Cow::Owned(l.clone())),
        };
        let support = TaskBatch::new(&spec, 1, points, x.clone(), y).unwrap();
        let model = Model::new(spec.clone(), seed);
        // ε = 1e-3 keeps g/(√v + ε) well conditioned, so f32 rounding of tiny gradients cannot
        // flip a step's direction; the f64 reference uses the same ε.
        let (lr, eps, steps) = (0.01f32, 1e-3f32, 4);
        let got = adapt_with(&model, &support, &InnerLoop { lr, steps, batch_size: 0 }, adam(eps), None, 0).unwrap();
        let (x64, th64) = (to_f64(&x), to_f64(model.params()));
        let t64: Vec<f64>;
        let t = match &targets {
            OwnedTargets::Values(v) => {
                t64 = to_f64(v);
                RefTargets::Values(&t64)
            }
            OwnedTargets::Labels(l) => RefTargets::Labels(l),
        };
        let want = ref_adam(&spec, &th64, &x64, t, points, lr as f64, 0.999, eps as f64, steps);
        // Each step moves a parameter by at most lr·√(1−β2^t)/√(1−β2^t) ≈ lr; compare the moves.
        let moved: Vec<f64> = want.iter().zip(&th64).map(|(w, t)| w - t).collect();
        let got_moved: Vec<f32> = got.params().iter().zip(model.params()).map(|(g, t)| g - t).collect();
        assert_close(&got_moved, &moved, 2e-5, 2e-3, &format!("Adam moves, seed {seed}"));
        // And it is not SGD: the same steps with SGD move θ elsewhere.
        let sgd = adapt_with(&model, &support, &InnerLoop { lr, steps, batch_size: 0 }, InnerOptimizer::Sgd, None, 0)
            .unwrap();
        assert_ne!(sgd.params(), got.params());
    }
}

fn sine_trainer(opt: InnerOptimizer, train_moments: AdamMoments, threads: usize) -> Trainer {
    let spec = MlpSpec::new(&[1, 16, 16, 1], Activation::Tanh, Loss::Mse).unwrap();
    let config = ReptileConfig {
        inner_optimizer: opt,
        train_moments,
        train: InnerLoop { lr: 0.01, steps: 3, batch_size: 10 },
        eval: InnerLoop { lr: 0.01, steps: 5, batch_size: 0 },
        threads,
        ..ReptileConfig::sine()
    };
    Trainer::new(Model::new(spec, 4), config).unwrap()
}

#[test]
fn moments_carry_across_training_tasks_and_reset_for_evaluation() {
    let spec = MlpSpec::new(&[1, 16, 16, 1], Activation::Tanh, Loss::Mse).unwrap();
    let mut tasks = reptile::workloads::sine::SineTasks::new(1);
    let batches: Vec<_> = (0..4).map(|_| tasks.train_batch(&spec, 3).unwrap()).collect();
    let mut carry = sine_trainer(adam(1e-8), AdamMoments::Carry, 2);
    let mut reset = sine_trainer(adam(1e-8), AdamMoments::Reset, 2);
    for b in &batches {
        carry.step(b).unwrap();
        reset.step(b).unwrap();
    }
    let (v, t) = carry.adam_moments();
    assert_eq!(t, 4 * 3, "t advances by the inner steps of every outer step");
    assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0) && v.iter().any(|&x| x > 0.0), "moments accumulate");
    let (v0, t0) = reset.adam_moments();
    assert_eq!(t0, 0);
    assert!(v0.iter().all(|&x| x == 0.0), "reset keeps no running moments");
    assert_ne!(carry.params(), reset.params(), "carried moments change the training trajectory");
    // Evaluation resets moments by default: adapting gives the same θ' as a fresh Adam run from
    // the same θ; with eval_moments = Carry it starts from the running moments instead.
    let eval = tasks.eval_tasks(&spec, 1, 10).unwrap();
    let support = eval.support().task(0).unwrap();
    let default = carry.adapt(&support, 5).unwrap();
    let fresh = adapt_with(
        carry.model(),
        &support,
        &InnerLoop { lr: 0.01, steps: 5, batch_size: 0 },
        adam(1e-8),
        None,
        carry.config().seed,
    )
    .unwrap();
    assert_eq!(default.params(), fresh.params());
    let mut cfg = carry.config().clone();
    cfg.eval_moments = AdamMoments::Carry;
    let mut carried_eval = Trainer::new(carry.model().clone(), cfg).unwrap();
    for b in &batches {
        carried_eval.step(b).unwrap(); // builds up running moments again
    }
    let a = carried_eval.adapt(&support, 5).unwrap();
    let (v, t) = carried_eval.adam_moments();
    let b = adapt_with(
        carried_eval.model(),
        &support,
        &InnerLoop { lr: 0.01, steps: 5, batch_size: 0 },
        adam(1e-8),
        Some((v, t)),
        carried_eval.config().seed,
    )
    .unwrap();
    assert_eq!(a.params(), b.params());
    let c = adapt_with(
        carried_eval.model(),
        &support,
        &InnerLoop { lr: 0.01, steps: 5, batch_size: 0 },
        adam(1e-8),
        None,
        carried_eval.config().seed,
    )
    .unwrap();
    assert_ne!(a.params(), c.params(), "starting from carried moments differs from starting at zero");
}

#[test]
fn adam_training_is_deterministic_across_threads_and_split_steps() {
    let spec = MlpSpec::new(&[1, 16, 16, 1], Activation::Tanh, Loss::Mse).unwrap();
    let mut tasks = reptile::workloads::sine::SineTasks::new(2);
    let batches: Vec<_> = (0..3).map(|_| tasks.train_batch(&spec, 7).unwrap()).collect();
    let mut one = sine_trainer(adam(1e-8), AdamMoments::Carry, 1);
    let mut two = sine_trainer(adam(1e-8), AdamMoments::Carry, 2);
    let mut split = sine_trainer(adam(1e-8), AdamMoments::Carry, 2);
    for b in &batches {
        one.step(b).unwrap();
        two.step(b).unwrap();
        let d = split.task_deltas(b, 0).unwrap();
        assert_eq!(d.moments_sum.len(), spec.num_params());
        split.apply_delta(&d).unwrap();
    }
    assert_bits_eq(one.params(), two.params(), "θ, 1 vs 2 threads");
    assert_bits_eq(one.adam_moments().0, two.adam_moments().0, "moments, 1 vs 2 threads");
    assert_bits_eq(one.params(), split.params(), "θ, step vs split step");
    assert_bits_eq(one.adam_moments().0, split.adam_moments().0, "moments, step vs split step");
    // A delta without moments cannot be applied where moments are carried.
    let mut d = split.task_deltas(&batches[0], 0).unwrap();
    d.moments_sum.clear();
    assert!(matches!(split.apply_delta(&d), Err(reptile::Error::ShapeMismatch(_))));
}

#[test]
fn bad_adam_settings_are_rejected() {
    let spec = MlpSpec::new(&[1, 4, 1], Activation::Tanh, Loss::Mse).unwrap();
    for opt in [
        InnerOptimizer::Adam { beta2: 1.0, eps: 1e-8 },
        InnerOptimizer::Adam { beta2: 0.9, eps: 0.0 },
        InnerOptimizer::Adam { beta2: f32::NAN, eps: 1e-8 },
    ] {
        let cfg = ReptileConfig { inner_optimizer: opt, ..ReptileConfig::sine() };
        assert!(
            matches!(Trainer::new(Model::new(spec.clone(), 0), cfg), Err(reptile::Error::InvalidArgument(_))),
            "{opt:?}"
        );
    }
}

/// The Adam update kernel (refined hardware estimates on AVX-512, IEEE elsewhere) against an
/// f64 reference, on fresh random θ, g and v spanning zeros, subnormals and 18 decades, with a
/// length that is not a multiple of the vector width.
#[test]
fn adam_update_kernel_matches_f64() {
    use rand::Rng;
    let mut r = rng(41);
    for (round, n) in [1usize, 15, 16, 17, 1007].into_iter().enumerate() {
        let theta: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
        // Every seventh gradient is tiny: (1 − β2)·g² would be subnormal, so it is left out of v.
        let g: Vec<f32> = (0..n)
            .map(|i| {
                let scale = if i % 7 == 3 {
                    10f32.powf(r.random_range(-30.0f32..-18.0))
                } else {
                    10f32.powf(r.random_range(-7.0f32..1.0))
                };
                r.random_range(-1.0f32..1.0) * scale
            })
            .collect();
        let v: Vec<f32> = (0..n)
            .map(|i| match i % 5 {
                0 => 0.0,
                1 => f32::MIN_POSITIVE * r.random_range(0.01f32..1.0), // subnormal
                _ => r.random_range(0.0f32..1.0) * 10f32.powf(r.random_range(-12.0f32..0.0)),
            })
            .collect();
        let (lr_t, beta2, eps) = (r.random_range(1e-4f32..1e-2), 0.999f32, 1e-8f32);
        let (mut t_got, mut v_got) = (theta.clone(), v.clone());
        reptile::cpu::update::adam_b1zero(&mut t_got, &g, &mut v_got, lr_t, beta2, eps);
        for i in 0..n {
            let (g64, b2) = (g[i] as f64, beta2 as f64);
            let gmin = (f32::MIN_POSITIVE as f64 / (1.0 - b2)).sqrt();
            let gq = if g64.abs() >= gmin { g64 } else { 0.0 };
            let v_ref = b2 * v[i] as f64 + (1.0 - b2) * gq * gq;
            let step = lr_t as f64 * g64 / (v_ref.sqrt() + eps as f64);
            let t_ref = theta[i] as f64 - step;
            // v: two roundings, and a subnormal result stored as zero (either at the edge);
            // θ: one rounding of θ plus a few ulp of the step.
            let (ev, et) = ((v_got[i] as f64 - v_ref).abs(), (t_got[i] as f64 - t_ref).abs());
            let min = f32::MIN_POSITIVE as f64;
            if v_ref < min * (1.0 - 1e-6) {
                assert_eq!(v_got[i].to_bits(), 0, "round {round}, v[{i}] = {v_ref:e} is subnormal: stored as +0");
            } else if v_ref > min * (1.0 + 1e-6) {
                assert!(ev <= 2.5e-7 * v_ref, "round {round}, v[{i}]: got {:e}, want {v_ref:e}", v_got[i]);
            } else {
                assert!(v_got[i] == 0.0 || ev <= 2.5e-7 * v_ref, "round {round}, v[{i}] at the edge: {:e}", v_got[i]);
            }
            assert!(
                et <= 6e-8 * t_ref.abs() + 1e-6 * step.abs() + 1e-30,
                "round {round}, θ[{i}]: got {:e}, want {t_ref:e} (step {step:e}, v {v_ref:e})",
                t_got[i]
            );
        }
    }
}

/// The fused Adam backward (gradient tiles applied straight from the product, optionally
/// reading θ and v from a source on the first step) computes exactly what a backward pass
/// into a gradient buffer followed by the Adam update does, on random specs with a wide input
/// layer (several tiles, widths off the vector width) and batches on both sides of the hand
/// kernels' limit.
#[test]
fn fused_adam_backward_equals_gradient_then_update() {
    use reptile::cpu::mlp::{self, AdamFrom, AdamStep, Workspace};
    use reptile::cpu::update::adam_b1zero;
    let mut r = rng(43);
    for (case, (inp, points, loss, act)) in [
        (300, 9, Loss::SoftmaxCrossEntropy, Activation::Relu),
        (97, 70, Loss::Mse, Activation::Tanh),
        (5000, 3, Loss::SoftmaxCrossEntropy, Activation::Relu),
    ]
    .into_iter()
    .enumerate()
    {
        let mut widths = vec![inp];
        widths.extend(random_spec(&mut r, 2, 40, act, loss).widths().iter().skip(1));
        if loss == Loss::SoftmaxCrossEntropy {
            *widths.last_mut().unwrap() = (*widths.last().unwrap()).max(2);
        }
        let spec = MlpSpec::new(&widths, act, loss).unwrap();
        let p = spec.num_params();
        let theta = uniform_vec(&mut r, p, -0.3, 0.3);
        let v0 = uniform_vec(&mut r, p, 0.0, 1e-4);
        let x = uniform_vec(&mut r, points * inp, -1.0, 1.0);
        let targets = OwnedTargets::random(&mut r, &spec, points);
        let step = AdamStep { lr_t: 3e-3, beta2: 0.999, eps: 1e-8 };
        let mut ws = Workspace::new(&spec, points);
        let grads = |th: &[f32], ws: &mut Workspace| {
            mlp::forward(&spec, th, &x, points, ws);
            mlp::loss_grad(&spec, targets.tgt(), points, ws);
        };
        // Reference: gradient buffer, then the update kernel.
        let (mut t_ref, mut v_ref, mut g) = (theta.clone(), v0.clone(), vec![0.0f32; p]);
        grads(&theta, &mut ws);
        mlp::backward(&spec, &theta, &x, points, &mut ws, &mut g);
        adam_b1zero(&mut t_ref, &g, &mut v_ref, step.lr_t, step.beta2, step.eps);
        assert_ne!(t_ref, theta, "case {case}: the step moved nothing");
        // Fused, in place.
        let (mut t1, mut v1) = (theta.clone(), v0.clone());
        grads(&theta, &mut ws);
        mlp::backward_adam(&spec, &mut t1, &x, points, &mut ws, &mut v1, step, None);
        assert_bits_eq(&t1, &t_ref, &format!("case {case}: fused θ"));
        assert_bits_eq(&v1, &v_ref, &format!("case {case}: fused v"));
        // Fused, reading θ and v from the source into NaN-poisoned destinations.
        let (mut t2, mut v2) = (vec![f32::NAN; p], vec![f32::NAN; p]);
        grads(&theta, &mut ws);
        let from = AdamFrom { theta: &theta, v: Some(&v0) };
        mlp::backward_adam(&spec, &mut t2, &x, points, &mut ws, &mut v2, step, Some(from));
        assert_bits_eq(&t2, &t_ref, &format!("case {case}: θ from source"));
        assert_bits_eq(&v2, &v_ref, &format!("case {case}: v from source"));
        // Zero moments from the source equal an explicit zero buffer.
        let (mut t3, mut v3) = (theta.clone(), vec![0.0f32; p]);
        grads(&theta, &mut ws);
        mlp::backward_adam(&spec, &mut t3, &x, points, &mut ws, &mut v3, step, None);
        let (mut t4, mut v4) = (vec![f32::NAN; p], vec![f32::NAN; p]);
        grads(&theta, &mut ws);
        mlp::backward_adam(
            &spec,
            &mut t4,
            &x,
            points,
            &mut ws,
            &mut v4,
            step,
            Some(AdamFrom { theta: &theta, v: None }),
        );
        assert_bits_eq(&t4, &t3, &format!("case {case}: θ from zero moments"));
        assert_bits_eq(&v4, &v3, &format!("case {case}: v from zero moments"));
    }
}

/// A fused Adam step that also starts the next forward (`backward_adam_ahead`: the next
/// batch's first-layer product from each tile of updated rows, then `forward_continue`) gives
/// bit for bit the θ', `v`, running sums and next output of the plain step followed by a full
/// `forward`: first-layer tiles of 4, 12 and 1 rows (784, 300 and 5000 inputs), next batches
/// of 1 to 25 points, with and without a source and sums, on one thread and in a two-thread
/// pool (where the 784 × 256 layer is cut into row pieces); a next batch too large for a tile
/// is not fused and says so.
#[test]
fn ahead_forward_equals_forward_after_the_update() {
    use reptile::cpu::mlp::{self, Accumulate, AdamFrom, AdamStep, Workspace};
    let mut r = rng(44);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let cases = [
        (vec![784usize, 256, 128, 5], Activation::Relu, Loss::SoftmaxCrossEntropy, 10usize),
        (vec![300, 40, 3], Activation::Relu, Loss::SoftmaxCrossEntropy, 9),
        (vec![97, 33, 2], Activation::Tanh, Loss::Mse, 7),
        (vec![5000, 8, 2], Activation::Relu, Loss::SoftmaxCrossEntropy, 3),
    ];
    for (widths, act, loss, points) in cases {
        let spec = MlpSpec::new(&widths, act, loss).unwrap();
        let (p, inp) = (spec.num_params(), widths[0]);
        // Rows per layer-0 tile with a fused next forward: as many as fit in 4096 floats,
        // rounded down to a multiple of 4 from 4 on.
        let rows = (4096 / inp).clamp(1, widths[1]);
        let rows = if rows >= 4 { rows / 4 * 4 } else { rows };
        let too_many = 4096 / rows + 1;
        for np in [1usize, 3, 10, 25, too_many] {
            let theta = uniform_vec(&mut r, p, -0.3, 0.3);
            let v0 = uniform_vec(&mut r, p, 1e-6, 1e-4);
            let base = uniform_vec(&mut r, p, -0.3, 0.3);
            let x = uniform_vec(&mut r, points * inp, 0.0, 1.0);
            let xn = uniform_vec(&mut r, np * inp, 0.0, 1.0);
            let targets = OwnedTargets::random(&mut r, &spec, points);
            let step = AdamStep { lr_t: 3e-3, beta2: 0.999, eps: 1e-8 };
            let fits = np * rows <= 4096;
            for (threads, with_from) in [(1usize, false), (1, true), (2, false), (2, true)] {
                let what = format!("{widths:?}, next {np} points, {threads} threads, from {with_from}");
                let run = |ahead: bool| {
                    let mut ws = Workspace::new(&spec, points.max(np));
                    let (mut t, mut v) =
                        if with_from { (vec![f32::NAN; p], vec![f32::NAN; p]) } else { (theta.clone(), v0.clone()) };
                    let (mut d, mut m) = (vec![0.5f32; p], vec![0.25f32; p]);
                    let from = with_from.then_some(AdamFrom { theta: &theta, v: Some(&v0) });
                    mlp::forward(&spec, &theta, &x, points, &mut ws);
                    mlp::loss_grad(&spec, targets.tgt(), points, &mut ws);
                    let acc = Some(Accumulate { base: &base, delta: &mut d, moments: Some(&mut m), first: !with_from });
                    let fused = if ahead {
                        mlp::backward_adam_ahead(&spec, &mut t, &x, points, &mut ws, &mut v, step, from, acc, &xn)
                    } else {
                        mlp::backward_adam_acc(&spec, &mut t, &x, points, &mut ws, &mut v, step, from, acc);
                        false
                    };
                    let y = if fused {
                        mlp::forward_continue(&spec, &t, np, &mut ws).to_vec()
                    } else {
                        mlp::forward(&spec, &t, &xn, np, &mut ws).to_vec()
                    };
                    (fused, t, v, d, m, y)
                };
                let (want, got) =
                    if threads == 2 { pool.install(|| (run(false), run(true))) } else { (run(false), run(true)) };
                assert_eq!(got.0, fits, "{what}: fused");
                assert!(want.5.iter().all(|v| v.is_finite()) && want.1 != theta, "{what}: a real step");
                assert_bits_eq(&got.1, &want.1, &format!("{what}: θ'"));
                assert_bits_eq(&got.2, &want.2, &format!("{what}: v"));
                assert_bits_eq(&got.3, &want.3, &format!("{what}: delta sum"));
                assert_bits_eq(&got.4, &want.4, &format!("{what}: moments sum"));
                assert_bits_eq(&got.5, &want.5, &format!("{what}: next output"));
            }
        }
    }
}

/// A layer of 76,800 weights is over the size at which the forward product and the fused
/// Adam update are cut into row pieces run with `rayon::join` on a multi-thread pool
/// (`cpu::mlp`): training and evaluation with two threads (pieces, possibly on both threads)
/// must equal one thread (no pieces) bit for bit, moments included.
#[test]
fn split_large_layers_are_bit_identical_across_threads() {
    let spec = MlpSpec::new(&[300, 256, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
    let mut r = rng(47);
    let (n, m) = (5usize, 20usize);
    let batch = |r: &mut rand_chacha::ChaCha8Rng, n: usize| {
        let x = uniform_vec(r, n * m * 300, 0.0, 1.0);
        let lab: Vec<u32> = (0..n * m).map(|_| r.random_range(0..5u32)).collect();
        TaskBatch::new(&spec, n, m, x, Targets::Labels(Cow::Owned(lab))).unwrap()
    };
    let batches: Vec<_> = (0..3).map(|_| batch(&mut r, n)).collect();
    let eval = reptile::EvalTasks::new(batch(&mut r, 3), batch(&mut r, 3)).unwrap();
    let trainer = |threads: usize| {
        let config = ReptileConfig {
            inner_optimizer: adam(1e-8),
            train_moments: AdamMoments::Carry,
            train: InnerLoop { lr: 0.003, steps: 3, batch_size: 10 },
            eval: InnerLoop { lr: 0.003, steps: 4, batch_size: 10 },
            meta_batch: n,
            threads,
            ..ReptileConfig::sine()
        };
        Trainer::new(Model::new(spec.clone(), 6), config).unwrap()
    };
    let (mut one, mut two) = (trainer(1), trainer(2));
    for b in &batches {
        one.step(b).unwrap();
        two.step(b).unwrap();
    }
    assert_bits_eq(one.params(), two.params(), "θ, 1 vs 2 threads");
    assert_bits_eq(one.adam_moments().0, two.adam_moments().0, "moments, 1 vs 2 threads");
    assert_ne!(one.params(), Model::new(spec.clone(), 6).params(), "training moved θ");
    let (e1, e2) = (one.evaluate(&eval).unwrap(), two.evaluate(&eval).unwrap());
    assert_bits_eq(&e1.losses, &e2.losses, "evaluation losses, 1 vs 2 threads");
}

/// The meta-batch sum is a fixed tree over tasks (n ≤ 64: one task per chunk): for 3 tasks
/// `d0 + (d1 + d2)`. A right leaf may add its task straight into its left sibling's sums when
/// that sibling has finished (always on one thread, by timing on two); either way the sums
/// must equal the tree of single-task deltas added with `DeltaSum::add`, bit for bit, moments
/// included.
#[test]
fn meta_batch_sums_equal_the_tree_of_single_task_deltas() {
    let spec = MlpSpec::new(&[1, 16, 16, 1], Activation::Tanh, Loss::Mse).unwrap();
    let mut tasks = reptile::workloads::sine::SineTasks::new(9);
    for n in [2usize, 3] {
        let batch = tasks.train_batch(&spec, n).unwrap();
        let mut single = sine_trainer(adam(1e-8), AdamMoments::Carry, 1);
        let d: Vec<_> = (0..n).map(|i| single.task_deltas(&batch.task(i).unwrap(), i as u64).unwrap()).collect();
        let want = if n == 2 {
            let mut s = d[0].clone();
            s.add(&d[1]).unwrap();
            s
        } else {
            let mut right = d[1].clone();
            right.add(&d[2]).unwrap();
            let mut s = d[0].clone();
            s.add(&right).unwrap();
            s
        };
        for threads in [1, 2] {
            for _ in 0..5 {
                let got = sine_trainer(adam(1e-8), AdamMoments::Carry, threads).task_deltas(&batch, 0).unwrap();
                assert_bits_eq(&got.sum, &want.sum, &format!("delta sum, n = {n}, {threads} threads"));
                assert_bits_eq(
                    &got.moments_sum,
                    &want.moments_sum,
                    &format!("moments sum, n = {n}, {threads} threads"),
                );
                assert_eq!(got.tasks, n as u64);
            }
        }
    }
}

/// Every test of this file again on the lower instruction-set paths (AVX2, portable), each in
/// its own process (see `common::rerun_under_lower_isas`): the Adam update's subnormal rule
/// and the split and tree identities hold on every path.
#[test]
fn lower_isa_paths() {
    common::rerun_under_lower_isas("lower_isa_paths");
}
