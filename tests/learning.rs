//! End-to-end learning: a shortened sine-wave Reptile run (10,000 of the paper's 30,000
//! iterations) must make 32-step adaptation far better than adaptation from the random
//! initialization, on the same 300 evaluation tasks. Run with `--nocapture` to see the
//! measured losses.
//!
//! Note on the baseline: with the random initialization, a few evaluation tasks sit at the edge
//! of stability of gradient descent at α = 0.02 (in the f64 reference too, a 1e-7 perturbation
//! injected after ~20 steps grows ~4× per step). Their 32-step losses therefore depend on f32
//! rounding, and the baseline mean moved between 2.75 and 3.05 across kernel versions while
//! the trained model's 0.33 did not change. The bound below is far from both.

mod common;

use common::*;
use reptile::workloads::sine::SineTasks;
use reptile::{Activation, Loss, MlpSpec, Model, ReptileConfig, Targets, Trainer};
use std::time::Instant;

/// Outer iterations (and `planned_iters`, so ε anneals 0.1 → 0 over the run). Measured with
/// seed 1 (ratio = trained / random-init mean query MSE after 32 adaptation steps, 300 tasks):
/// 3000 it. 1.18 vs 2.75 (ratio 0.43); 6000 it. 0.59 vs 2.75 (0.21); 10,000 it. 0.33 vs 2.75
/// (0.119); 30,000 it. (the paper's run) 0.11 vs 2.75 (0.041). At 10,000 iterations, seeds 2–5
/// give ratios 0.107–0.138. 3000 iterations leave too little margin under a meaningful bound,
/// so the test uses 10,000 (≈1 s of training in release).
const ITERS: u64 = 10_000;
/// Bound on the 32-step MSE ratio trained / random init: 2.5× the measured 0.119 (2.2× the
/// worst of seeds 1–5; 0.112 with a baseline of 2.92 after a kernel change), far below 1 (no
/// learning) and below the 0.43 of a 3000-iteration run.
const BOUND_RATIO: f32 = 0.3;

#[test]
fn short_sine_run_learns_to_adapt() {
    let t0 = Instant::now();
    let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
    let cfg = ReptileConfig { planned_iters: ITERS, seed: 1, threads: 1, ..ReptileConfig::sine() };
    let init = Model::new(spec.clone(), 1);
    let baseline = Trainer::new(init.clone(), cfg.clone()).unwrap();
    let mut trainer = Trainer::new(init, cfg.clone()).unwrap();
    let mut tasks = SineTasks::new(1);
    let (mut first, mut last) = (0.0f64, 0.0f64);
    for it in 0..ITERS {
        let s = trainer.step(&tasks.train_batch(&spec, 1).unwrap()).unwrap();
        assert_eq!(s.iteration, it);
        if it < 300 {
            first += s.loss_after as f64 / 300.0;
        } else if it >= ITERS - 300 {
            last += s.loss_after as f64 / 300.0;
        }
    }
    assert_eq!(trainer.iteration(), ITERS);
    assert_eq!(trainer.last_stats().unwrap().epsilon, cfg.epsilon(ITERS - 1), "ε of the last step");
    assert!(cfg.epsilon(ITERS - 1) < 1e-3 * cfg.eps_start, "ε annealed (almost) to 0");
    let train_time = t0.elapsed();

    // Eval tasks from a stream the training never saw.
    let eval = SineTasks::new(12345).eval_tasks(&spec, 300, 10).unwrap();
    let steps = [0usize, 1, 32];
    let base = baseline.evaluate_at(&eval, &steps).unwrap();
    let trained = trainer.evaluate_at(&eval, &steps).unwrap();
    let (b32, t32) = (base.mean_loss(2), trained.mean_loss(2));
    println!(
        "sine, {ITERS} iterations ({train_time:.2?} training): post-adaptation inner-loop loss (first 300 it.) {first:.4} → (last 300 it.) {last:.4}"
    );
    for (j, s) in steps.iter().enumerate() {
        println!(
            "  after {s:>2} adaptation steps, mean query MSE over 300 tasks: random init {:.4}, trained {:.4}",
            base.mean_loss(j),
            trained.mean_loss(j)
        );
    }
    println!("  ratio trained/baseline after 32 steps: {:.4}", t32 / b32);
    // The evaluation protocol is unchanged by training: 0 steps scores θ itself. Check the
    // report against the reference loss of θ on a few query sets.
    for (tr, rep) in [(&baseline, &base), (&trainer, &trained)] {
        let theta = to_f64(tr.params());
        for t in [0usize, 150, 299] {
            let q = eval.query().task(t).unwrap();
            let y = match q.y() {
                Targets::Values(v) => to_f64(v),
                Targets::Labels(_) => unreachable!(),
            };
            let want = ref_loss(&spec, &theta, &to_f64(q.x()), RefTargets::Values(&y), 50);
            assert_close(&[rep.losses_at(0)[t]], &[want], 0.0, 1e-4, &format!("0-step query loss of task {t}"));
        }
    }

    // loss_after = loss of the first inner minibatch after the k inner steps: meta-training
    // makes those few steps effective (measured 4.10 → 0.37).
    assert!(last < 0.5 * first, "meta-training lowers the adapted inner-loop loss: {first} → {last}");
    // Adaptation helps the trained model a lot (it learned to adapt), and 32 steps beat 1.
    assert!(t32 < 0.5 * trained.mean_loss(0), "trained: 32-step {t32} vs 0-step {}", trained.mean_loss(0));
    assert!(t32 < trained.mean_loss(1));
    assert!(t32 < BOUND_RATIO * b32, "trained {t32} is not below {BOUND_RATIO} × baseline {b32}");
}
