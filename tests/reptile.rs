//! Reptile identities and trainer behaviour: ε = 0, one task with ε = 1, the batched update as
//! the mean of task deltas, thread-count and seed determinism, the split step, FOMAML,
//! ε annealing, the evaluation/adaptation streams and the classification path.
//!
//! Numerical comparisons go against the f64 reference of `common` with full-batch inner loops
//! (where the trainer's shuffling changes only the summation order). Tolerances, with
//! `u = 2⁻²⁴`: the f32 gradient is within `C = 1e-5` normwise of the f64 one (see
//! `tests/gradients.rs`), so the adapted displacement `Δ = θ' − θ` is within `C·max|Δ|` of the
//! reference's (GD with these step sizes does not amplify errors noticeably over ≤ 8 steps);
//! each of the ≤ k + 3 roundings at θ's magnitude (k SGD updates, `θ' − θ`, `θ + ε·Δ/n`)
//! adds `u·|θ|`, hence `eps = 2(k + 3)·u` per element.

mod common;

use common::*;
use rand::Rng;
use reptile::workloads::sine::SineTasks;
use reptile::{
    Activation, DeltaSum, Error, EvalTasks, InnerLoop, Loss, MlpSpec, Model, OuterRule, ReptileConfig, Targets,
    TaskBatch, Trainer,
};
use std::borrow::Cow;

const C: f64 = 1e-5;
const U: f64 = 1.0 / (1u64 << 24) as f64;

fn sine_spec(h: usize) -> MlpSpec {
    MlpSpec::new(&[1, h, h, 1], Activation::Tanh, Loss::Mse).unwrap()
}

/// A config with the given training inner loop and constant ε.
fn config(train: InnerLoop, eps: f32, seed: u64, threads: usize) -> ReptileConfig {
    ReptileConfig {
        train,
        eval: InnerLoop { lr: 0.02, steps: 8, batch_size: 0 },
        meta_batch: 1,
        eps_start: eps,
        eps_end: eps,
        planned_iters: 1000,
        outer: OuterRule::Reptile,
        seed,
        threads,
        ..ReptileConfig::sine()
    }
}

const FULL: InnerLoop = InnerLoop { lr: 0.02, steps: 5, batch_size: 0 };
const MINI: InnerLoop = InnerLoop { lr: 0.02, steps: 5, batch_size: 10 };

/// Task `i` of a batch as f64 inputs and owned targets.
fn task_data(b: &TaskBatch<'_>, i: usize, spec: &MlpSpec) -> (Vec<f64>, OwnedTargets) {
    let t = b.task(i).unwrap();
    let x = to_f64(t.x());
    let y = match t.y() {
        Targets::Values(v) => OwnedTargets::Values(v.to_vec()),
        Targets::Labels(l) => OwnedTargets::Labels(l.to_vec()),
    };
    assert_eq!(x.len(), b.n_points() * spec.in_dim());
    (x, y)
}

/// θ'_i − θ of the f64 reference: `k` full-batch GD steps on task `i`.
fn ref_delta(spec: &MlpSpec, theta: &[f64], b: &TaskBatch<'_>, i: usize, inner: &InnerLoop) -> Vec<f64> {
    let (x, y) = task_data(b, i, spec);
    let yv = y.values_f64();
    let tp = ref_gd(spec, theta, &x, y.reference(&yv), b.n_points(), inner.lr as f64, inner.steps);
    tp.iter().zip(theta).map(|(a, b)| a - b).collect()
}

/// A random classification batch: per task, 3 class centres in [-2, 2]², points = centre of
/// a random label + uniform noise in ±0.6.
fn blob_batch(spec: &MlpSpec, n: usize, m: usize, seed: u64) -> TaskBatch<'static> {
    let mut r = rng(seed);
    let (d, k) = (spec.in_dim(), spec.out_dim());
    let (mut x, mut lab) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let centres = uniform_vec(&mut r, k * d, -2.0, 2.0);
        for c in labels(&mut r, m, k) {
            for j in 0..d {
                let noise = uniform_vec(&mut r, 1, -0.6, 0.6)[0];
                x.push(centres[c as usize * d + j] + noise);
            }
            lab.push(c);
        }
    }
    TaskBatch::new(spec, n, m, x, Targets::Labels(Cow::Owned(lab))).unwrap()
}

#[test]
fn epsilon_zero_leaves_theta_unchanged() {
    let spec = sine_spec(32);
    let model = Model::new(spec.clone(), 3);
    let theta0 = model.params().to_vec();
    let mut tr = Trainer::new(model, config(MINI, 0.0, 3, 1)).unwrap();
    let mut tasks = SineTasks::new(3);
    for it in 0..5 {
        let s = tr.step(&tasks.train_batch(&spec, 3).unwrap()).unwrap();
        assert_eq!(s.epsilon, 0.0);
        assert_eq!(s.iteration, it);
        assert!(s.loss_before.is_finite() && s.loss_after.is_finite());
        // The inner loop did move θ' (otherwise this test would be vacuous).
        assert_ne!(s.loss_before, s.loss_after);
    }
    assert_eq!(tr.iteration(), 5);
    assert_bits_eq(tr.params(), &theta0, "θ after steps with ε = 0");
}

/// n = 1, ε = 1: θ_new = θ' = k full-batch GD steps from θ, for regression and classification.
#[test]
fn one_task_epsilon_one_gives_adapted_params() {
    let cases: Vec<(MlpSpec, TaskBatch<'static>, InnerLoop)> = vec![
        (sine_spec(32), SineTasks::new(11).train_batch(&sine_spec(32), 1).unwrap(), FULL),
        {
            let s = MlpSpec::new(&[2, 24, 3], Activation::Tanh, Loss::SoftmaxCrossEntropy).unwrap();
            let b = blob_batch(&s, 1, 20, 12);
            (s, b, InnerLoop { lr: 0.1, steps: 8, batch_size: 0 })
        },
        {
            // Several inputs and outputs (row gathering of x and y), ReLU.
            let s = MlpSpec::new(&[3, 20, 2], Activation::Relu, Loss::Mse).unwrap();
            let mut r = rng(14);
            let x = uniform_vec(&mut r, 25 * 3, -2.0, 2.0);
            let y = uniform_vec(&mut r, 25 * 2, -2.0, 2.0);
            let b = TaskBatch::new(&s, 1, 25, x, Targets::Values(y.into())).unwrap();
            (s, b, InnerLoop { lr: 0.05, steps: 3, batch_size: 0 })
        },
        {
            // A minibatch larger than the task wraps around the shuffled set: every step still
            // sees the whole set (b = m) when batch_size = m.
            let s = sine_spec(16);
            let b = SineTasks::new(13).train_batch(&s, 1).unwrap();
            (s, b, InnerLoop { lr: 0.01, steps: 3, batch_size: 50 })
        },
    ];
    for (seed, (spec, batch, inner)) in cases.into_iter().enumerate() {
        let model = Model::new(spec.clone(), 100 + seed as u64);
        let theta = to_f64(model.params());
        let mut tr = Trainer::new(model, config(inner, 1.0, seed as u64, 1)).unwrap();
        let s = tr.step(&batch).unwrap();
        assert_eq!(s.epsilon, 1.0);
        assert_eq!(s.tasks, 1);
        let delta = ref_delta(&spec, &theta, &batch, 0, &inner);
        let want: Vec<f64> = theta.iter().zip(&delta).map(|(t, d)| t + d).collect();
        let eps = 2.0 * (inner.steps as f64 + 3.0) * U;
        assert_close(tr.params(), &want, C * max_abs(&delta), eps, &format!("case {seed}: θ' (n = 1, ε = 1)"));
        // And θ really moved by more than the tolerance.
        assert!(max_abs(&delta) > 100.0 * C * max_abs(&delta) + eps * max_abs(&theta));
        // loss_before is the loss at θ of the first (full) minibatch, loss_after the same at θ'.
        let (x, y) = task_data(&batch, 0, &spec);
        let yv = y.values_f64();
        let t = y.reference(&yv);
        let lb = ref_loss(&spec, &theta, &x, t, batch.n_points());
        let la = ref_loss(&spec, &want, &x, t, batch.n_points());
        assert_close(&[s.loss_before, s.loss_after], &[lb, la], 1e-5 * lb, 1e-4, "step losses");
        assert!(s.loss_after < s.loss_before, "GD with a small step lowers the loss");
    }
}

/// θ_new − θ = ε·mean_i(θ'_i − θ) for n = 5 tasks (and ε = 1 and 0.3).
#[test]
fn batched_update_is_mean_of_task_deltas() {
    let spec = sine_spec(32);
    for (eps, seed) in [(1.0f32, 21u64), (0.3, 22)] {
        let model = Model::new(spec.clone(), seed);
        let theta = to_f64(model.params());
        let batch = SineTasks::new(seed).train_batch(&spec, 5).unwrap();
        let mut tr = Trainer::new(model, config(FULL, eps, seed, 2)).unwrap();
        let s = tr.step(&batch).unwrap();
        assert_eq!(s.tasks, 5);
        let deltas: Vec<Vec<f64>> = (0..5).map(|i| ref_delta(&spec, &theta, &batch, i, &FULL)).collect();
        let mean: Vec<f64> = (0..theta.len()).map(|j| deltas.iter().map(|d| d[j]).sum::<f64>() / 5.0).collect();
        let want: Vec<f64> = theta.iter().zip(&mean).map(|(t, m)| t + eps as f64 * m).collect();
        let dmax = deltas.iter().map(|d| max_abs(d)).fold(0.0, f64::max);
        let tol = eps as f64 * (C + 8.0 * U) * dmax;
        assert_close(tr.params(), &want, tol, 2.0 * (FULL.steps as f64 + 3.0) * U, &format!("ε = {eps}"));
        // The mean differs from any single task's delta by far more than the tolerance.
        let single: Vec<f64> = theta.iter().zip(&deltas[0]).map(|(t, d)| t + eps as f64 * d).collect();
        assert!(check_close(tr.params(), &single, tol, 0.0, "").is_err());
    }
}

/// With an outer decay λ the step is `θ ← (1 − ε·λ)·(θ + ε·mean_i δ_i)`: against the f64
/// reference, with one more rounding (the product by `1 − ε·λ`) than without decay; the
/// undecayed update is far outside the tolerance.
#[test]
fn outer_decay_shrinks_the_update() {
    let spec = sine_spec(32);
    for (eps, lambda, seed) in [(1.0f32, 0.3f32, 23u64), (0.3, 2.0, 24)] {
        let model = Model::new(spec.clone(), seed);
        let theta = to_f64(model.params());
        let batch = SineTasks::new(seed).train_batch(&spec, 5).unwrap();
        let cfg = ReptileConfig { outer_decay: lambda, ..config(FULL, eps, seed, 2) };
        let mut tr = Trainer::new(model, cfg).unwrap();
        tr.step(&batch).unwrap();
        let deltas: Vec<Vec<f64>> = (0..5).map(|i| ref_delta(&spec, &theta, &batch, i, &FULL)).collect();
        let keep = 1.0 - eps as f64 * lambda as f64;
        let mean: Vec<f64> = (0..theta.len()).map(|j| deltas.iter().map(|d| d[j]).sum::<f64>() / 5.0).collect();
        let want: Vec<f64> = theta.iter().zip(&mean).map(|(t, m)| keep * (t + eps as f64 * m)).collect();
        let dmax = deltas.iter().map(|d| max_abs(d)).fold(0.0, f64::max);
        let tol = eps as f64 * (C + 8.0 * U) * dmax;
        let what = format!("ε = {eps}, λ = {lambda}");
        assert_close(tr.params(), &want, tol, 2.0 * (FULL.steps as f64 + 4.0) * U, &what);
        let undecayed: Vec<f64> = theta.iter().zip(&mean).map(|(t, m)| t + eps as f64 * m).collect();
        assert!(check_close(tr.params(), &undecayed, tol, 0.0, "").is_err(), "{what}: the decay shows");
    }
}

/// A negative, non-finite or too large outer decay (`ε·λ ≥ 1` anywhere on the schedule) is
/// refused when the trainer is made.
#[test]
fn outer_decay_is_validated() {
    let model = Model::new(sine_spec(8), 1);
    let base = ReptileConfig { eps_start: 0.5, eps_end: 2.0, ..ReptileConfig::sine() };
    for bad in [-1e-3f32, f32::NAN, f32::INFINITY, 0.5, 1.0] {
        let r = Trainer::new(model.clone(), ReptileConfig { outer_decay: bad, ..base.clone() });
        match r {
            Err(Error::InvalidArgument(m)) | Err(Error::NonFinite(m)) => {
                assert!(m.contains("outer_decay"), "λ = {bad}: {m}")
            }
            other => panic!("λ = {bad}: expected an error naming outer_decay, got {:?}", other.map(|_| ())),
        }
    }
    assert!(Trainer::new(model, ReptileConfig { outer_decay: 0.49, ..base }).is_ok());
}

/// With minibatch inner loops the per-task deltas come from `task_deltas` on each single task
/// with its global index as offset (same random stream as inside the batch): the batched step
/// must equal θ + ε·Σ d_i / n up to the summation order.
#[test]
fn batched_update_matches_single_task_deltas_with_offsets() {
    let spec = sine_spec(32);
    let n = 6;
    let eps = 0.7f32;
    let model = Model::new(spec.clone(), 31);
    let theta = model.params().to_vec();
    let batch = SineTasks::new(31).train_batch(&spec, n).unwrap();
    let mut b = Trainer::new(model.clone(), config(MINI, eps, 31, 1)).unwrap();
    let singles: Vec<DeltaSum> = (0..n).map(|i| b.task_deltas(&batch.task(i).unwrap(), i as u64).unwrap()).collect();
    assert_eq!(b.iteration(), 0, "task_deltas does not advance the iteration");
    assert_bits_eq(b.params(), &theta, "task_deltas does not touch θ");
    let mut a = Trainer::new(model, config(MINI, eps, 31, 2)).unwrap();
    let s = a.step(&batch).unwrap();
    let p = theta.len();
    let sum: Vec<f64> = (0..p).map(|j| singles.iter().map(|d| d.sum[j] as f64).sum()).collect();
    let abs_sum: Vec<f64> = (0..p).map(|j| singles.iter().map(|d| (d.sum[j] as f64).abs()).sum()).collect();
    let want: Vec<f64> = (0..p).map(|j| theta[j] as f64 + eps as f64 * sum[j] / n as f64).collect();
    // Summation rounding ≤ n·u·Σ|d|, then ε/n scaling and the final add.
    let tol = (n as f64 + 2.0) * U * eps as f64 * max_abs(&abs_sum) / n as f64;
    assert_close(a.params(), &want, tol, 2.0 * U, "batched step vs single-task deltas");
    let lb: f64 = singles.iter().map(|d| d.loss_before_sum).sum::<f64>() / n as f64;
    let la: f64 = singles.iter().map(|d| d.loss_after_sum).sum::<f64>() / n as f64;
    assert_close(&[s.loss_before, s.loss_after], &[lb, la], 0.0, 2.0 * U, "step losses vs single tasks");
    // Wrong offsets give other minibatch orders, hence other deltas.
    let d_wrong = b.task_deltas(&batch.task(3).unwrap(), 0).unwrap();
    assert_ne!(d_wrong.sum, singles[3].sum, "offset must select the task's random stream");
}

#[test]
fn thread_count_does_not_change_theta() {
    let spec = sine_spec(64);
    for n in [1usize, 7, 100] {
        let run = |threads: usize| {
            let mut tr = Trainer::new(Model::new(spec.clone(), 5), config(MINI, 0.5, 9, threads)).unwrap();
            assert_eq!(tr.threads(), threads);
            let mut tasks = SineTasks::new(n as u64);
            let stats: Vec<_> = (0..3).map(|_| tr.step(&tasks.train_batch(&spec, n).unwrap()).unwrap()).collect();
            let eval = tasks.eval_tasks(&spec, 9, 10).unwrap();
            let rep = tr.evaluate_at(&eval, &[0, 3, 8]).unwrap();
            (tr.params().to_vec(), stats, rep)
        };
        let (t1, s1, r1) = run(1);
        let (t2, s2, r2) = run(2);
        assert_bits_eq(&t1, &t2, &format!("θ with 1 vs 2 threads, n = {n}"));
        assert_eq!(s1, s2, "step stats, n = {n}");
        assert_bits_eq(&r1.losses, &r2.losses, &format!("evaluation losses, n = {n}"));
        assert_ne!(t1, Model::new(spec.clone(), 5).into_params(), "training moved θ");
    }
}

#[test]
fn seeds_determine_theta() {
    let spec = sine_spec(32);
    let run = |model_seed: u64, cfg_seed: u64| {
        let mut tr = Trainer::new(Model::new(spec.clone(), model_seed), config(MINI, 0.5, cfg_seed, 1)).unwrap();
        let mut tasks = SineTasks::new(77);
        for _ in 0..5 {
            tr.step(&tasks.train_batch(&spec, 2).unwrap()).unwrap();
        }
        tr.params().to_vec()
    };
    let base = run(1, 1);
    assert_bits_eq(&run(1, 1), &base, "same seeds");
    assert_ne!(run(2, 1), base, "another init seed must give another θ");
    assert_ne!(run(1, 2), base, "another minibatch-order seed must give another θ");
    // Init: same seed, same θ; another seed, another θ; values in U(−1/√in, 1/√in).
    assert_eq!(Model::new(spec.clone(), 8), Model::new(spec.clone(), 8));
    assert_ne!(Model::new(spec.clone(), 8).params(), Model::new(spec.clone(), 9).params());
    let m = Model::new(spec.clone(), 8);
    for l in 0..spec.num_layers() {
        let bound = 1.0 / (spec.widths()[l] as f32).sqrt();
        let block = &m.params()[spec.weight_offset(l)..spec.bias_offset(l) + spec.widths()[l + 1]];
        assert!(block.iter().all(|v| v.abs() <= bound), "layer {l} init outside ±{bound}");
        let spread = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        assert!(spread > 0.5 * bound, "layer {l} init does not use its range");
    }
}

#[test]
fn split_step_whole_batch_is_bit_identical_to_step() {
    let spec = sine_spec(32);
    for (n, threads) in [(10usize, 2usize), (1, 1), (70, 2)] {
        let model = Model::new(spec.clone(), 41);
        let mut a = Trainer::new(model.clone(), config(MINI, 0.4, 41, threads)).unwrap();
        let mut b = Trainer::new(model, config(MINI, 0.4, 41, 3 - threads)).unwrap();
        let mut tasks = SineTasks::new(41);
        for _ in 0..3 {
            let batch = tasks.train_batch(&spec, n).unwrap();
            let sa = a.step(&batch).unwrap();
            let d = b.task_deltas(&batch, 0).unwrap();
            assert_eq!(d.tasks, n as u64);
            let sb = b.apply_delta(&d).unwrap();
            assert_eq!(sa, sb, "n = {n}");
            assert_bits_eq(a.params(), b.params(), &format!("split vs step, n = {n}"));
            assert_eq!(a.iteration(), b.iteration());
        }
    }
}

#[test]
fn split_step_halves_with_offsets() {
    let spec = sine_spec(32);
    // Two single tasks: Σ = (0 + d0) + d1 either way, so even the bits agree.
    {
        let model = Model::new(spec.clone(), 51);
        let batch = SineTasks::new(51).train_batch(&spec, 2).unwrap();
        let mut a = Trainer::new(model.clone(), config(MINI, 0.6, 51, 2)).unwrap();
        let mut b = Trainer::new(model, config(MINI, 0.6, 51, 1)).unwrap();
        let sa = a.step(&batch).unwrap();
        let mut total = b.task_deltas(&batch.task(0).unwrap(), 0).unwrap();
        total.add(&b.task_deltas(&batch.task(1).unwrap(), 1).unwrap()).unwrap();
        let sb = b.apply_delta(&total).unwrap();
        assert_eq!(sa, sb);
        assert_bits_eq(a.params(), b.params(), "two one-task halves vs step");
    }
    // n = 10 in halves [0, 5) and [5, 10): minibatch inner loops with the right offsets
    // (identical per-task deltas, other summation order), and full-batch inner loops with
    // offset 0 for both halves (other shuffles, same full-batch gradients).
    for (inner, second_offset) in [(MINI, 5u64), (FULL, 0)] {
        let n = 10;
        let model = Model::new(spec.clone(), 52);
        let theta = to_f64(model.params());
        let batch = SineTasks::new(52).train_batch(&spec, n).unwrap();
        let x = batch.x();
        let ys = match batch.y() {
            Targets::Values(v) => v.to_vec(),
            Targets::Labels(_) => unreachable!(),
        };
        let half = |r: std::ops::Range<usize>| {
            TaskBatch::new(
                &spec,
                r.len(),
                50,
                &x[r.start * 50..r.end * 50],
                Targets::Values(ys[r.start * 50..r.end * 50].to_vec().into()),
            )
            .unwrap()
        };
        let (h0, h1) = (half(0..5), half(5..10));
        let mut a = Trainer::new(model.clone(), config(inner, 1.0, 52, 2)).unwrap();
        let mut b = Trainer::new(model, config(inner, 1.0, 52, 2)).unwrap();
        a.step(&batch).unwrap();
        let mut total = DeltaSum::zeros(spec.num_params());
        total.add(&b.task_deltas(&h0, 0).unwrap()).unwrap();
        total.add(&b.task_deltas(&h1, second_offset).unwrap()).unwrap();
        assert_eq!(total.tasks, 10);
        let a64 = to_f64(a.params());
        let (tol, eps) = if inner.batch_size == 0 {
            // Both are within C·dmax of the f64 reference, dmax = largest per-task displacement.
            let dmax = (0..n).map(|i| max_abs(&ref_delta(&spec, &theta, &batch, i, &FULL))).fold(0.0, f64::max);
            (2.0 * C * dmax, 4.0 * (inner.steps as f64 + 3.0) * U)
        } else {
            // Identical per-task deltas d_i (task_deltas of task i with offset i); only the
            // order of the n-term sum differs: ≤ 2n·u·Σ_i|d_i| (ε/n = 1/n scaling).
            let singles: Vec<DeltaSum> =
                (0..n).map(|i| b.task_deltas(&batch.task(i).unwrap(), i as u64).unwrap()).collect();
            let abs_sum = (0..spec.num_params())
                .map(|j| singles.iter().map(|d| (d.sum[j] as f64).abs()).sum::<f64>())
                .fold(0.0, f64::max);
            (2.0 * U * abs_sum, 4.0 * U)
        };
        b.apply_delta(&total).unwrap();
        assert_close(b.params(), &a64, tol, eps, &format!("halves vs step, {inner:?}"));
        assert_ne!(a.params(), theta.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice());
    }
}

#[test]
fn fomaml_k1_equals_reptile_k1() {
    let spec = sine_spec(32);
    for inner in [InnerLoop { steps: 1, ..MINI }, InnerLoop { steps: 1, ..FULL }] {
        let model = Model::new(spec.clone(), 61);
        let theta = to_f64(model.params());
        let mut rep = Trainer::new(model.clone(), config(inner, 1.0, 61, 1)).unwrap();
        let mut fo =
            Trainer::new(model, ReptileConfig { outer: OuterRule::Fomaml { tail: None }, ..config(inner, 1.0, 61, 1) })
                .unwrap();
        let mut tasks = SineTasks::new(61);
        let batch = tasks.train_batch(&spec, 3).unwrap();
        assert_eq!(rep.step(&batch).unwrap(), fo.step(&batch).unwrap());
        assert_bits_eq(rep.params(), fo.params(), &format!("FOMAML vs Reptile, k = 1, {inner:?}"));
        if inner.batch_size == 0 {
            // Both are θ − α·mean_i g_i.
            let d: Vec<Vec<f64>> = (0..3).map(|i| ref_delta(&spec, &theta, &batch, i, &inner)).collect();
            let want: Vec<f64> = (0..theta.len()).map(|j| theta[j] + (d[0][j] + d[1][j] + d[2][j]) / 3.0).collect();
            let dmax = d.iter().map(|v| max_abs(v)).fold(0.0, f64::max);
            assert_close(fo.params(), &want, (C + 8.0 * U) * dmax, 8.0 * U, "FOMAML k = 1 vs θ − α·g");
        }
    }
}

/// FOMAML with k > 1 moves along the last step only: θ + ε·(θ'_k − θ'_{k−1}).
#[test]
fn fomaml_uses_last_step() {
    let spec = sine_spec(16);
    let inner = InnerLoop { lr: 0.05, steps: 4, batch_size: 0 };
    let model = Model::new(spec.clone(), 62);
    let theta = to_f64(model.params());
    let batch = SineTasks::new(62).train_batch(&spec, 1).unwrap();
    let cfg = ReptileConfig { outer: OuterRule::Fomaml { tail: None }, ..config(inner, 1.0, 62, 1) };
    let mut fo = Trainer::new(model, cfg).unwrap();
    fo.step(&batch).unwrap();
    let (x, y) = task_data(&batch, 0, &spec);
    let yv = y.values_f64();
    let t = y.reference(&yv);
    let prev = ref_gd(&spec, &theta, &x, t, 50, inner.lr as f64, 3);
    let last = ref_gd(&spec, &prev, &x, t, 50, inner.lr as f64, 1);
    let step: Vec<f64> = last.iter().zip(&prev).map(|(a, b)| a - b).collect();
    let want: Vec<f64> = theta.iter().zip(&step).map(|(t, s)| t + s).collect();
    let total = ref_delta(&spec, &theta, &batch, 0, &inner);
    // θ'_{k−1} is rounded at |θ| scale, so its rounding enters the difference: 2(k+3)·u·|θ|.
    let tol = C * max_abs(&total) + 2.0 * (inner.steps as f64 + 3.0) * U * max_abs(&theta);
    assert_close(fo.params(), &want, tol, 2.0 * U, "FOMAML k = 4");
    assert!(
        check_close(fo.params(), &theta.iter().zip(&total).map(|(a, b)| a + b).collect::<Vec<_>>(), tol, 2.0 * U, "")
            .is_err()
    );
}

#[test]
fn fomaml_tail_must_leave_support_points() {
    let spec = sine_spec(16);
    let batch = SineTasks::new(1).train_batch(&spec, 2).unwrap();
    for t in [50usize, 51, 1000] {
        let cfg = ReptileConfig { outer: OuterRule::Fomaml { tail: Some(t) }, ..config(MINI, 1.0, 0, 1) };
        let model = Model::new(spec.clone(), 1);
        let mut tr = Trainer::new(model.clone(), cfg).unwrap();
        assert!(matches!(tr.step(&batch), Err(Error::InvalidArgument(_))), "tail {t} of 50 points");
        assert!(matches!(tr.task_deltas(&batch, 0), Err(Error::InvalidArgument(_))));
        assert_eq!(tr.iteration(), 0);
        assert_bits_eq(tr.params(), model.params(), "θ after a rejected step");
    }
    let cfg = ReptileConfig { outer: OuterRule::Fomaml { tail: Some(0) }, ..config(MINI, 1.0, 0, 1) };
    assert!(matches!(Trainer::new(Model::new(spec.clone(), 1), cfg), Err(Error::InvalidArgument(_))));
    // A valid tail trains.
    let cfg = ReptileConfig { outer: OuterRule::Fomaml { tail: Some(10) }, ..config(MINI, 1.0, 0, 1) };
    let mut tr = Trainer::new(Model::new(spec.clone(), 1), cfg).unwrap();
    let s = tr.step(&batch).unwrap();
    assert!(s.loss_before.is_finite());
    assert_ne!(tr.params(), Model::new(spec, 1).params());
}

#[test]
fn epsilon_anneals_linearly() {
    let mut r = rng(71);
    for _ in 0..20 {
        let (s, e) = (r_f32(&mut r, 0.0, 1.0), r_f32(&mut r, 0.0, 1.0));
        let t_max = 1 + (r_f32(&mut r, 0.0, 1000.0) as u64);
        let cfg = ReptileConfig { eps_start: s, eps_end: e, planned_iters: t_max, ..ReptileConfig::sine() };
        assert_eq!(cfg.epsilon(0), s);
        assert_eq!(cfg.epsilon(t_max), e);
        assert_eq!(cfg.epsilon(t_max + 1), e, "constant after planned_iters");
        assert_eq!(cfg.epsilon(u64::MAX), e);
        let ulp = 2.0 * U * s.abs().max(e.abs()) as f64;
        for t in [t_max / 2, t_max / 3, t_max - 1] {
            let want = s as f64 + (e as f64 - s as f64) * t as f64 / t_max as f64;
            assert_close(&[cfg.epsilon(t)], &[want], ulp, 0.0, &format!("ε({t}) of {t_max}"));
        }
    }
    // StepStats.epsilon follows the schedule, also across set_iteration (resume), and the
    // update uses it: θ_new = θ + ε_t·d/n with d from task_deltas at the same iteration.
    let spec = sine_spec(16);
    let cfg = ReptileConfig { eps_start: 0.9, eps_end: 0.1, planned_iters: 4, ..config(MINI, 0.0, 7, 1) };
    let mut tr = Trainer::new(Model::new(spec.clone(), 7), cfg.clone()).unwrap();
    let mut tasks = SineTasks::new(7);
    for it in 0..7u64 {
        if it == 5 {
            tr.set_iteration(2);
        }
        let expect_it = if it >= 5 { it - 3 } else { it };
        let batch = tasks.train_batch(&spec, 2).unwrap();
        let theta = to_f64(tr.params());
        let d = tr.task_deltas(&batch, 0).unwrap();
        let st = tr.step(&batch).unwrap();
        assert_eq!(st.iteration, expect_it);
        assert_eq!(st.epsilon, cfg.epsilon(expect_it));
        let want: Vec<f64> = theta.iter().zip(&d.sum).map(|(t, &s)| t + st.epsilon as f64 * s as f64 / 2.0).collect();
        let tol = 2.0 * U * st.epsilon as f64 * d.sum.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        assert_close(tr.params(), &want, tol, 2.0 * U, &format!("update at iteration {expect_it}"));
    }
    assert_eq!(tr.iteration(), 4);
}

fn r_f32(r: &mut rand_chacha::ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    uniform_vec(r, 1, lo, hi)[0]
}

#[test]
fn classification_trains_and_reports_accuracy() {
    let spec = MlpSpec::new(&[2, 16, 3], Activation::Tanh, Loss::SoftmaxCrossEntropy).unwrap();
    let inner = InnerLoop { lr: 0.1, steps: 5, batch_size: 0 };
    let cfg = ReptileConfig { eval: InnerLoop { lr: 0.1, steps: 10, batch_size: 0 }, ..config(inner, 0.5, 81, 2) };
    let mut tr = Trainer::new(Model::new(spec.clone(), 81), cfg).unwrap();
    let (mut sb, mut sa) = (0.0f64, 0.0f64);
    for i in 0..20 {
        let s = tr.step(&blob_batch(&spec, 4, 15, 1000 + i)).unwrap();
        assert!(s.loss_before > 0.0 && s.loss_after > 0.0);
        sb += s.loss_before as f64;
        sa += s.loss_after as f64;
    }
    assert!(sa < sb, "inner loops lower the loss on average: before {sb}, after {sa}");

    // Evaluation on 30 fresh tasks: support and query from the same blobs.
    let n = 30;
    let both = blob_batch(&spec, n, 30, 5);
    let lab = match both.y() {
        Targets::Labels(l) => l.to_vec(),
        Targets::Values(_) => unreachable!(),
    };
    let split = |r: std::ops::Range<usize>| {
        let (mut x, mut l) = (vec![], vec![]);
        for t in 0..n {
            for p in r.clone() {
                x.extend_from_slice(&both.x()[(t * 30 + p) * 2..][..2]);
                l.push(lab[t * 30 + p]);
            }
        }
        TaskBatch::new(&spec, n, r.len(), x, Targets::Labels(l.into())).unwrap()
    };
    let (sup, qry) = (split(0..10), split(10..30));
    let eval = reptile::EvalTasks::new(sup, qry.clone()).unwrap();
    let rep = tr.evaluate(&eval).unwrap();
    assert_eq!(rep.steps, vec![10]);
    let acc = rep.accuracies.as_ref().expect("classification reports accuracies");
    assert_eq!(acc.len(), n);
    assert!(acc.iter().all(|a| (0.0..=1.0).contains(a)), "accuracies {acc:?}");
    assert!(rep.losses.iter().all(|l| l.is_finite() && *l > 0.0));

    // At 0 steps the report scores θ itself: compare with the reference loss and with
    // argmax accuracy of predict.
    let rep0 = tr.evaluate_at(&eval, &[0, 10]).unwrap();
    assert_bits_eq(&rep0.losses_at(1), &rep.losses, "evaluate = evaluate_at(eval.steps)");
    let theta = to_f64(tr.params());
    for t in 0..n {
        let q = qry.task(t).unwrap();
        let ql = match q.y() {
            Targets::Labels(l) => l.to_vec(),
            Targets::Values(_) => unreachable!(),
        };
        let want = ref_loss(&spec, &theta, &to_f64(q.x()), RefTargets::Labels(&ql), 20);
        assert_close(&[rep0.losses_at(0)[t]], &[want], C * want, C, &format!("query loss of task {t} at 0 steps"));
        let y = tr.model().predict(q.x()).unwrap();
        let correct = y.chunks(3).zip(&ql).filter(|(row, c)| argmax(row) == **c as usize).count();
        assert_eq!(rep0.accuracies.as_ref().unwrap()[2 * t], correct as f32 / 20.0, "accuracy of task {t} at 0 steps");
    }
    // Adapting on the support set helps on the query set, on average.
    assert!(rep0.mean_loss(1) < rep0.mean_loss(0), "losses {} → {}", rep0.mean_loss(0), rep0.mean_loss(1));
    assert!(rep0.mean_accuracy(1).unwrap() >= rep0.mean_accuracy(0).unwrap());
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

/// Trainer::adapt follows the task-0 evaluation stream: after s steps its model scores the
/// query exactly as evaluate_at does for task 0, and with full-batch steps it matches the f64
/// reference GD.
#[test]
fn adapt_matches_evaluation_and_reference() {
    let spec = sine_spec(32);
    for eval_inner in [InnerLoop { lr: 0.02, steps: 8, batch_size: 0 }, InnerLoop { lr: 0.02, steps: 8, batch_size: 4 }]
    {
        let cfg = ReptileConfig { eval: eval_inner, ..config(MINI, 0.5, 91, 2) };
        let tr = Trainer::new(Model::new(spec.clone(), 91), cfg).unwrap();
        let eval = SineTasks::new(91).eval_tasks(&spec, 3, 10).unwrap();
        let rep = tr.evaluate_at(&eval, &[0, 3, 8]).unwrap();
        let sup = eval.support().task(0).unwrap();
        let qx = eval.query().task(0).unwrap().x().to_vec();
        let qy = match eval.query().task(0).unwrap().y() {
            Targets::Values(v) => to_f64(v),
            Targets::Labels(_) => unreachable!(),
        };
        for (j, &s) in [0usize, 3, 8].iter().enumerate() {
            if s == 0 {
                continue; // adapt needs ≥ 1 step
            }
            let m = tr.adapt(&sup, s).unwrap();
            let m2 = reptile::meta::adapt(tr.model(), &sup, &InnerLoop { steps: s, ..eval_inner }, 91).unwrap();
            assert_eq!(m, m2, "Trainer::adapt = meta::adapt with the eval loop");
            let y = m.predict(&qx).unwrap();
            let mse = y.iter().zip(&qy).map(|(a, b)| (*a as f64 - b).powi(2)).sum::<f64>() / 50.0;
            assert_close(&[rep.losses_at(j)[0]], &[mse], 0.0, 1e-5, &format!("task 0 query loss after {s} steps"));
            if eval_inner.batch_size == 0 {
                let theta = to_f64(tr.params());
                let sy = match sup.y() {
                    Targets::Values(v) => to_f64(v),
                    Targets::Labels(_) => unreachable!(),
                };
                let want = ref_gd(&spec, &theta, &to_f64(sup.x()), RefTargets::Values(&sy), 10, 0.02, s);
                let disp: Vec<f64> = want.iter().zip(&theta).map(|(a, b)| a - b).collect();
                assert_close(
                    m.params(),
                    &want,
                    C * max_abs(&disp),
                    2.0 * (s as f64 + 3.0) * U,
                    &format!("adapt {s} steps"),
                );
            }
        }
    }
}

/// Scratch buffers are reused across steps of different shapes (points per task, tasks per
/// batch): the result of a step must not depend on what the trainer did before.
#[test]
fn step_does_not_depend_on_history() {
    let spec = MlpSpec::new(&[2, 24, 24, 3], Activation::Tanh, Loss::Mse).unwrap();
    let inner = InnerLoop { lr: 0.03, steps: 4, batch_size: 6 };
    let cfg = config(inner, 0.5, 17, 2);
    let mut long = Trainer::new(Model::new(spec.clone(), 17), cfg.clone()).unwrap();
    let mut r = rng(17);
    for (it, (n, m)) in [(3usize, 50usize), (1, 4), (70, 9), (2, 120), (5, 3), (64, 6)].into_iter().enumerate() {
        let x = uniform_vec(&mut r, n * m * 2, -2.0, 2.0);
        let y = uniform_vec(&mut r, n * m * 3, -2.0, 2.0);
        let batch = TaskBatch::new(&spec, n, m, x, Targets::Values(y.into())).unwrap();
        let mut fresh = Trainer::new(long.model().clone(), cfg.clone()).unwrap();
        fresh.set_iteration(it as u64);
        let a = long.step(&batch).unwrap();
        let b = fresh.step(&batch).unwrap();
        assert_eq!(a, b, "step {it} ({n} tasks × {m} points)");
        assert_bits_eq(long.params(), fresh.params(), &format!("θ after step {it} ({n} tasks × {m} points)"));
    }
}

/// Every test of this file again on the lower instruction-set paths (AVX2, portable), each in
/// its own process (see `common::rerun_under_lower_isas`).
#[test]
fn lower_isa_paths() {
    common::rerun_under_lower_isas("lower_isa_paths");
}

/// Query views: evaluate_at scores each query point by its mean prediction over its views
/// (mean softmax for classification, mean output for regression), checked for task 0 against
/// Trainer::adapt + predict and an f64 mean; one view is plain scoring; malformed views are
/// errors.
#[test]
fn query_views_score_the_mean_prediction() {
    let mut r = rng(404);
    let (n, m, q, views) = (3usize, 12usize, 4usize, 3usize);
    for (loss, out) in [(Loss::SoftmaxCrossEntropy, 3usize), (Loss::Mse, 2)] {
        let spec = MlpSpec::new(&[5, 16, out], Activation::Relu, loss).unwrap();
        let eval_inner = InnerLoop { lr: 0.05, steps: 6, batch_size: 4 };
        let cfg = ReptileConfig { eval: eval_inner, ..config(MINI, 0.5, 404, 2) };
        let tr = Trainer::new(Model::new(spec.clone(), 404), cfg).unwrap();
        let xs = uniform_vec(&mut r, n * m * 5, -1.5, 1.5);
        let xq = uniform_vec(&mut r, n * q * views * 5, -1.5, 1.5);
        let (ys, yq, yq1) = match loss {
            Loss::SoftmaxCrossEntropy => {
                let ys: Vec<u32> = (0..n * m).map(|_| r.random_range(0..out as u32)).collect();
                let y1: Vec<u32> = (0..n * q).map(|_| r.random_range(0..out as u32)).collect();
                let yq: Vec<u32> = (0..n * q * views).map(|i| y1[(i / (q * views)) * q + i % q]).collect();
                (Targets::Labels(ys.into()), Targets::Labels(yq.into()), Targets::Labels(y1.into()))
            }
            Loss::Mse => {
                let ys = uniform_vec(&mut r, n * m * out, -1.0, 1.0);
                let y1 = uniform_vec(&mut r, n * q * out, -1.0, 1.0);
                let yq: Vec<f32> = (0..n * q * views)
                    .flat_map(|i| y1[((i / (q * views)) * q + i % q) * out..][..out].to_vec())
                    .collect();
                (Targets::Values(ys.into()), Targets::Values(yq.into()), Targets::Values(y1.into()))
            }
        };
        let sup = TaskBatch::new(&spec, n, m, xs, ys).unwrap();
        let qry = TaskBatch::new(&spec, n, q * views, xq.clone(), yq).unwrap();
        let plain = EvalTasks::new(sup.clone(), qry.clone()).unwrap();
        let viewed = plain.clone().with_query_views(views).unwrap();
        assert_eq!(viewed.query_views(), views);
        assert_eq!(plain.clone().with_query_views(1).unwrap(), plain, "one view is plain");
        let rep = tr.evaluate_at(&viewed, &[0, 6]).unwrap();
        let rep_plain = tr.evaluate_at(&plain, &[0, 6]).unwrap();
        assert_ne!(rep.losses, rep_plain.losses, "views change the score");
        // Task 0 by hand: adapt (the task-0 stream), predict every view, average in f64.
        let adapted = tr.adapt(&sup.task(0).unwrap(), 6).unwrap();
        let y = adapted.predict(&xq[..q * views * 5]).unwrap();
        let (mut want_loss, mut want_correct) = (0.0f64, 0usize);
        for i in 0..q {
            let mut mean = vec![0.0f64; out];
            for v in 0..views {
                let row: Vec<f64> = to_f64(&y[(v * q + i) * out..][..out]);
                match loss {
                    Loss::SoftmaxCrossEntropy => {
                        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let s: f64 = row.iter().map(|x| (x - mx).exp()).sum();
                        for k in 0..out {
                            mean[k] += (row[k] - mx).exp() / s / views as f64;
                        }
                    }
                    Loss::Mse => (0..out).for_each(|k| mean[k] += row[k] / views as f64),
                }
            }
            match &yq1 {
                Targets::Labels(l) => {
                    let c = l[i] as usize;
                    want_loss -= mean[c].ln();
                    let mut sorted = mean.clone();
                    sorted.sort_by(|a, b| b.total_cmp(a));
                    assert!(sorted[0] - sorted[1] > 1e-6, "a near-tie would make the count fragile; reseed");
                    let best = (0..out).fold(0, |b, k| if mean[k] > mean[b] { k } else { b });
                    want_correct += usize::from(best == c);
                }
                Targets::Values(t) => {
                    want_loss += (0..out).map(|k| (mean[k] - t[i * out + k] as f64).powi(2)).sum::<f64>() / out as f64;
                }
            }
        }
        want_loss /= q as f64;
        assert_close(&[rep.losses_at(1)[0]], &[want_loss], 1e-6, 1e-5, &format!("{loss:?}: task 0 view-mean loss"));
        if loss == Loss::SoftmaxCrossEntropy {
            let acc = rep.accuracies.as_ref().unwrap()[1];
            assert_eq!(acc, want_correct as f32 / q as f32, "task 0 accuracy over q = {q} points, not q·views");
        }
    }
    // Malformed views.
    let spec = MlpSpec::new(&[5, 8, 3], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
    let lab = |v: Vec<u32>| Targets::Labels(v.into());
    let sup = TaskBatch::new(&spec, 1, 3, uniform_vec(&mut r, 15, -1.0, 1.0), lab(vec![0, 1, 2])).unwrap();
    let qry = TaskBatch::new(&spec, 1, 4, uniform_vec(&mut r, 20, -1.0, 1.0), lab(vec![0, 1, 0, 2])).unwrap();
    let t = EvalTasks::new(sup, qry).unwrap();
    assert!(matches!(t.clone().with_query_views(0), Err(Error::ShapeMismatch(_))), "zero views");
    assert!(matches!(t.clone().with_query_views(3), Err(Error::ShapeMismatch(_))), "3 does not divide 4");
    assert!(
        matches!(t.clone().with_query_views(2), Err(Error::InvalidArgument(_))),
        "view 1 of point 1 has label 2, not 1"
    );
    assert!(t.with_query_views(4).is_err(), "views of points with other labels");
}
