//! The 16-tasks-per-lane path (AVX-512) against the per-task path: same minibatches (same
//! per-task random streams), same math, different f32 summation order. Skipped with a message
//! where the CPU has no AVX-512.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reptile::{Activation, InnerLoop, Loss, MlpSpec, Model, OuterRule, ReptileConfig, Targets, TaskBatch, Trainer};
use std::borrow::Cow;

fn lanes_here() -> bool {
    let on = reptile::cpu::lanes::available();
    if !on {
        eprintln!("skipped: lane kernels need AVX-512 (not available or capped by REPTILE_ISA/REPTILE_LANES)");
    }
    on
}

struct Case {
    spec: MlpSpec,
    batch: TaskBatch<'static>,
    config: ReptileConfig,
}

#[allow(clippy::too_many_arguments)]
fn case(seed: u64, depth: usize, relu: bool, n: usize, m: usize, b: usize, k: usize, outer: OuterRule) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut widths = vec![rng.random_range(1..5usize)];
    for _ in 0..depth - 1 {
        widths.push(rng.random_range(1..40usize));
    }
    widths.push(rng.random_range(1..4usize));
    let act = if relu { Activation::Relu } else { Activation::Tanh };
    let spec = MlpSpec::new(&widths, act, Loss::Mse).unwrap();
    let x: Vec<f32> = (0..n * m * spec.in_dim()).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let y: Vec<f32> = (0..n * m * spec.out_dim()).map(|_| rng.random_range(-1.5f32..1.5)).collect();
    let batch = TaskBatch::new(&spec, n, m, x, Targets::Values(Cow::Owned(y))).unwrap();
    let config = ReptileConfig {
        train: InnerLoop { lr: 0.05, steps: k, batch_size: b },
        eps_start: 0.7,
        eps_end: 0.1,
        planned_iters: 10,
        outer,
        seed,
        threads: 2,
        ..ReptileConfig::sine()
    };
    Case { spec, batch, config }
}

/// Per step: (loss before, lanes), (loss before, per task), (loss after, lanes), (after, per task).
type LossPairs = Vec<(f32, f32, f32, f32)>;

/// Runs `steps` outer steps with and without lanes; returns (θ_lane, θ_task, θ_start, losses).
fn both(c: &Case, steps: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, LossPairs) {
    let model = Model::new(c.spec.clone(), 9);
    let start = model.params().to_vec();
    let mut a = Trainer::new(model.clone(), c.config.clone()).unwrap();
    a.set_lane_batching(true);
    let mut t = Trainer::new(model, c.config.clone()).unwrap();
    assert!(a.uses_lanes(c.batch.n_tasks()) && !t.uses_lanes(c.batch.n_tasks()));
    let mut stats = Vec::new();
    for _ in 0..steps {
        let sa = a.step(&c.batch).unwrap();
        let st = t.step(&c.batch).unwrap();
        stats.push((sa.loss_before, st.loss_before, sa.loss_after, st.loss_after));
    }
    (a.params().to_vec(), t.params().to_vec(), start, stats)
}

/// |lane − task| ≤ 2e-6 + 2e-4·|task| on the parameter *changes* (what the two paths compute).
fn assert_same_update(lane: &[f32], task: &[f32], start: &[f32], what: &str) {
    let mut worst = (0.0f64, 0usize);
    for j in 0..start.len() {
        let (dl, dt) = ((lane[j] - start[j]) as f64, (task[j] - start[j]) as f64);
        let excess = (dl - dt).abs() - (2e-6 + 2e-4 * dt.abs());
        if excess > worst.0 {
            worst = (excess, j);
        }
    }
    let j = worst.1;
    assert!(
        worst.0 <= 0.0,
        "{what}: θ[{j}] moved by {} on the lane path, {} per task",
        lane[j] - start[j],
        task[j] - start[j]
    );
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lane_path_matches_per_task_path(
        seed in 0u64..1_000_000, depth in 1usize..4, relu in any::<bool>(),
        n in prop_oneof![Just(16usize), Just(17), 18usize..50], m in 1usize..20, b in 0usize..12, k in 1usize..5,
    ) {
        if !lanes_here() { return Ok(()); }
        let c = case(seed, depth, relu, n, m, b, k, OuterRule::Reptile);
        let (lane, task, start, stats) = both(&c, 2);
        assert_same_update(&lane, &task, &start, "reptile");
        for (lb_l, lb_t, la_l, la_t) in stats {
            prop_assert!((lb_l - lb_t).abs() <= 1e-5 + 1e-4 * lb_t.abs(), "loss before {lb_l} vs {lb_t}");
            prop_assert!((la_l - la_t).abs() <= 1e-5 + 1e-4 * la_t.abs(), "loss after {la_l} vs {la_t}");
        }
    }

    #[test]
    fn lane_path_matches_for_fomaml(seed in 0u64..1_000_000, relu in any::<bool>(), m in 4usize..16, k in 1usize..4) {
        if !lanes_here() { return Ok(()); }
        let tail = if seed % 2 == 0 { Some(1 + (seed as usize % (m - 1))) } else { None };
        let c = case(seed, 2, relu, 21, m, 3, k, OuterRule::Fomaml { tail });
        let (lane, task, start, _) = both(&c, 2);
        assert_same_update(&lane, &task, &start, "fomaml");
    }
}

#[test]
fn sine_meta_batch_of_32_matches() {
    if !lanes_here() {
        return;
    }
    let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
    let batch = reptile::workloads::sine::SineTasks::new(5).train_batch(&spec, 32).unwrap();
    let c = Case { spec, batch, config: ReptileConfig { meta_batch: 32, ..ReptileConfig::sine() } };
    let (lane, task, start, _) = both(&c, 3);
    assert_same_update(&lane, &task, &start, "sine n=32");
}
