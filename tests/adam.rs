//! The Adam (β1 = 0) inner optimizer: steps against an f64 reference, moment handling
//! (carried across training tasks, reset for evaluation), determinism and the split step.

mod common;

use common::*;
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
