//! The transposed first layer for sparse inputs (`cpu::sparse`): the transpose and the runs
//! of nonzero columns exactly; a whole task's Adam steps (first step from shared sources,
//! rows touched late, deferred decay, sums of the last step) against an f64 reference; one
//! thread against two bit for bit; and the trainer with the path on against off.

mod common;

use common::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use reptile::cpu::mlp::{self, Accumulate, AdamFrom, AdamStep, Sparse0, Workspace};
use reptile::cpu::sparse::{self, SparseFirst, Src};
use reptile::{
    Activation, AdamMoments, Error, InnerLoop, InnerOptimizer, Loss, MlpSpec, Model, ReptileConfig, Targets, TaskBatch,
    Trainer,
};
use std::borrow::Cow;

#[test]
fn transpose_moves_every_value() {
    let mut r = rng(70);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for (rows, cols) in [(1usize, 1usize), (8, 8), (13, 29), (256, 784), (40, 17), (3, 100)] {
        let src = uniform_vec(&mut r, rows * cols, -1.0, 1.0);
        for threads in [1, 2] {
            let mut dst = vec![f32::NAN; rows * cols];
            if threads == 2 {
                pool.install(|| sparse::transpose(rows, cols, &src, &mut dst));
            } else {
                sparse::transpose(rows, cols, &src, &mut dst);
            }
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(dst[j * rows + i].to_bits(), src[i * cols + j].to_bits(), "{rows}×{cols} ({i}, {j})");
                }
            }
        }
    }
}

/// `points × inp` inputs in (0, 1], with the columns marked in `blank` zero in every point and
/// a few more single zeros.
fn sparse_x(r: &mut ChaCha8Rng, points: usize, inp: usize, blank: &[bool]) -> Vec<f32> {
    (0..points * inp)
        .map(|k| if blank[k % inp] || r.random_range(0..10) == 0 { 0.0 } else { r.random_range(0.05f32..1.0) })
        .collect()
}

/// Random blank columns: stretches of about `frac` of the columns.
fn blank_columns(r: &mut ChaCha8Rng, inp: usize, frac: f64) -> Vec<bool> {
    let mut blank = vec![false; inp];
    let mut i = 0;
    while i < inp {
        let len = r.random_range(1..12usize);
        let on = r.random_bool(frac);
        for b in blank.iter_mut().skip(i).take(len) {
            *b = on;
        }
        i += len;
    }
    blank
}

#[test]
fn runs_cover_exactly_the_nonzero_columns() {
    let mut r = rng(71);
    let (mut mask, mut runs) = (Vec::new(), Vec::new());
    for inp in [1usize, 7, 64, 100, 784] {
        for points in [1usize, 3, 10] {
            let blank = blank_columns(&mut r, inp, 0.5);
            let x = sparse_x(&mut r, points, inp, &blank);
            sparse::nonzero_runs(&x, points, inp, &mut mask, &mut runs);
            let mut covered = vec![false; inp];
            let mut last = 0;
            for &(a, b) in &runs {
                assert!(a < b && a as usize >= last && b as usize <= inp, "{inp}: runs {runs:?} sorted and disjoint");
                // A run starts and ends on a nonzero column.
                let nonzero = |c: usize| (0..points).any(|p| x[p * inp + c] != 0.0);
                assert!(nonzero(a as usize) && nonzero(b as usize - 1), "{inp}: run {a}..{b} ends on zeros");
                covered[a as usize..b as usize].iter_mut().for_each(|c| *c = true);
                last = b as usize;
            }
            for c in 0..inp {
                if !covered[c] {
                    assert!((0..points).all(|p| x[p * inp + c] == 0.0), "{inp}: nonzero column {c} outside the runs");
                }
            }
        }
    }
}

/// `batches` Adam (β1 = 0) steps in f64 from θ and moments `v0`, step counts `t0 + 1..`.
#[allow(clippy::too_many_arguments)]
fn ref_adam_batches(
    spec: &MlpSpec,
    theta: &[f32],
    v0: &[f32],
    batches: &[(Vec<f32>, OwnedTargets)],
    points: usize,
    lr: f64,
    beta2: f64,
    eps: f64,
    t0: u64,
) -> (Vec<f64>, Vec<f64>) {
    let (mut th, mut v) = (to_f64(theta), to_f64(v0));
    for (s, (x, t)) in batches.iter().enumerate() {
        let vals = t.values_f64();
        let (_, g) = ref_loss_grad(spec, &th, &to_f64(x), t.reference(&vals), points);
        let lr_t = lr * (1.0 - beta2.powi((t0 + s as u64 + 1) as i32)).sqrt();
        for ((th, v), g) in th.iter_mut().zip(v.iter_mut()).zip(&g) {
            *v = beta2 * *v + (1.0 - beta2) * g * g;
            *th -= lr_t * g / (v.sqrt() + eps);
        }
    }
    (th, v)
}

/// One task of `batches.len()` Adam steps with `W_0` on the transposed path, as the trainer
/// runs it: the first step from θ and `v0`, the last adding `θ' − θ` and `v` to sums: written
/// (a chunk's first task), or added to `prior` (sums of earlier tasks, θ's layout). Returns
/// the sums in θ's layout.
#[allow(clippy::too_many_arguments)]
fn sparse_task(
    spec: &MlpSpec,
    theta: &[f32],
    v0: &[f32],
    batches: &[(Vec<f32>, OwnedTargets)],
    points: usize,
    lr: f32,
    t0: u64,
    prior: Option<(&[f32], &[f32])>,
) -> (Vec<f32>, Vec<f32>) {
    let (p, inp, out) = (spec.num_params(), spec.in_dim(), spec.widths()[1]);
    let w0 = 0..inp * out;
    let (mut w0t, mut v0t) = (vec![0.0; inp * out], vec![0.0; inp * out]);
    sparse::transpose(out, inp, &theta[w0.clone()], &mut w0t);
    sparse::transpose(out, inp, &v0[w0.clone()], &mut v0t);
    let src = Src { w0t: &w0t, v0t: Some(&v0t) };
    let mut state = SparseFirst::new(inp, out);
    state.begin();
    let mut ws = Workspace::new(spec, points);
    // θ' and v hold NaN where the path must not read them (W_0, and everything before the
    // first step writes it).
    let (mut tp, mut v) = (vec![f32::NAN; p], vec![f32::NAN; p]);
    let (mut d, mut m) = match prior {
        // The sums of W_0 are kept transposed.
        Some((pd, pm)) => {
            let (mut d, mut m) = (pd.to_vec(), pm.to_vec());
            sparse::transpose(out, inp, &pd[w0.clone()], &mut d[w0.clone()]);
            sparse::transpose(out, inp, &pm[w0.clone()], &mut m[w0.clone()]);
            (d, m)
        }
        None => (vec![f32::NAN; p], vec![f32::NAN; p]),
    };
    let (mut mask, mut runs) = (Vec::new(), Vec::new());
    let mut zs = vec![0.0; points * out];
    let (beta2, eps) = (0.999f32, 1e-8f32);
    for (s, (x, t)) in batches.iter().enumerate() {
        let first = s == 0;
        let th: &[f32] = if first { theta } else { &tp };
        sparse::nonzero_runs(x, points, inp, &mut mask, &mut runs);
        let (z0, _) = ws.z0_and_scratch(spec, points);
        state.forward(src, x, points, &runs, &th[inp * out..][..out], z0, &mut zs);
        let th = th.to_vec();
        mlp::forward_continue(spec, &th, points, &mut ws);
        mlp::loss_grad(spec, t.tgt(), points, &mut ws);
        let lr_t = (lr as f64 * (1.0 - (beta2 as f64).powi((t0 + s as u64 + 1) as i32)).sqrt()) as f32;
        let step = AdamStep { lr_t, beta2, eps };
        let from = first.then_some(AdamFrom { theta, v: Some(v0) });
        let acc = (s + 1 == batches.len()).then(|| Accumulate {
            base: theta,
            delta: &mut d,
            moments: Some(&mut m),
            first: prior.is_none(),
        });
        let sp = Sparse0 { state: &mut state, src, runs: &runs };
        mlp::backward_adam_sparse(spec, &mut tp, x, points, &mut ws, &mut v, step, from, acc, sp);
    }
    // The sums of W_0 come back transposed.
    for s in [&mut d, &mut m] {
        let t = s[w0.clone()].to_vec();
        sparse::transpose(inp, out, &t, &mut s[w0.clone()]);
    }
    (d, m)
}

#[test]
fn task_on_the_transposed_layer_matches_f64_reference() {
    let mut r = rng(72);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let cases = [
        (vec![97usize, 24, 5], Activation::Relu, Loss::SoftmaxCrossEntropy, 10usize),
        (vec![160, 40, 16, 3], Activation::Tanh, Loss::Mse, 7),
        (vec![200, 300, 4], Activation::Relu, Loss::SoftmaxCrossEntropy, 5),
        (vec![64, 8, 2], Activation::Tanh, Loss::SoftmaxCrossEntropy, 3),
    ];
    for (widths, act, loss, points) in cases {
        let spec = MlpSpec::new(&widths, act, loss).unwrap();
        let (p, inp) = (spec.num_params(), widths[0]);
        let theta = uniform_vec(&mut r, p, -0.3, 0.3);
        let v0 = uniform_vec(&mut r, p, 1e-5, 1e-3);
        // Each step blanks different columns: some rows are first touched late, some skipped
        // after being touched (deferred decay), some never touched.
        let steps = 5usize;
        let never = blank_columns(&mut r, inp, 0.3);
        let batches: Vec<(Vec<f32>, OwnedTargets)> = (0..steps)
            .map(|_| {
                let blank: Vec<bool> =
                    blank_columns(&mut r, inp, 0.5).iter().zip(&never).map(|(a, b)| *a || *b).collect();
                (sparse_x(&mut r, points, inp, &blank), OwnedTargets::random(&mut r, &spec, points))
            })
            .collect();
        let (lr, t0) = (3e-3f32, 7u64);
        let (want_t, want_v) = ref_adam_batches(&spec, &theta, &v0, &batches, points, lr as f64, 0.999, 1e-8, t0);
        let want_d: Vec<f64> = want_t.iter().zip(&theta).map(|(a, &b)| a - b as f64).collect();
        let (d, m) = sparse_task(&spec, &theta, &v0, &batches, points, lr, t0, None);
        let what = format!("{widths:?}");
        // The updates are lr·g/(√v + ε) ≈ lr·sign(g) in size: errors relative to lr.
        assert_close(&d, &want_d, 1e-4 * lr as f64, 1e-3, &format!("{what}: θ' − θ"));
        assert_close(&m, &want_v, 1e-12, 1e-4, &format!("{what}: v"));
        assert!(d.iter().any(|&x| x != 0.0), "{what}: a real step");
        // Never-touched columns of W_0: no move, and v decayed by β2 per step.
        let out = widths[1];
        for (c, _) in never.iter().enumerate().filter(|(_, b)| **b) {
            for o in 0..out {
                let k = o * inp + c;
                assert_eq!(d[k], 0.0, "{what}: blank column {c} moved");
                let want = v0[k] as f64 * 0.999f64.powi(steps as i32);
                assert!((m[k] as f64 - want).abs() <= 1e-6 * want, "{what}: blank column {c}: v {} vs {want}", m[k]);
            }
        }
        // Two threads (the passes in halves) give the same bits.
        let (d2, m2) = pool.install(|| sparse_task(&spec, &theta, &v0, &batches, points, lr, t0, None));
        assert_bits_eq(&d2, &d, &format!("{what}: 2 threads, delta"));
        assert_bits_eq(&m2, &m, &format!("{what}: 2 threads, moments"));
        // A task added to earlier tasks' sums: each sum is `prior + this task's`, rounded
        // once, on one thread and on two.
        let (pd, pm) = (uniform_vec(&mut r, p, -1e-3, 1e-3), uniform_vec(&mut r, p, 1e-5, 1e-3));
        let want_d: Vec<f32> = pd.iter().zip(&d).map(|(a, b)| a + b).collect();
        let want_m: Vec<f32> = pm.iter().zip(&m).map(|(a, b)| a + b).collect();
        for threads in [1, 2] {
            let run = || sparse_task(&spec, &theta, &v0, &batches, points, lr, t0, Some((&pd, &pm)));
            let (d3, m3) = if threads == 2 { pool.install(run) } else { run() };
            assert_bits_eq(&d3, &want_d, &format!("{what}: added to sums, {threads} thread(s), delta"));
            assert_bits_eq(&m3, &want_m, &format!("{what}: added to sums, {threads} thread(s), moments"));
        }
    }
}

/// The trainer on the transposed first layer (784 × 256 here, sparse inputs, carried
/// moments): ends where the dense path ends, to rounding; `step` equals `task_deltas` +
/// `apply_delta` bit for bit (the first keeps `W_0` transposed between steps, the second turns
/// it back every time), with `model()` and `adam_moments()` read between steps; and turning
/// the path off mid-run continues from the right state; one thread gives the bits of two. One
/// test: the switch is global.
/// Held by the tests that flip the process-wide switch of the transposed path.
static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `tasks` tasks of `points` sparse 784-pixel points, 5 labels.
fn sparse_batch(r: &mut ChaCha8Rng, spec: &MlpSpec, tasks: usize, points: usize) -> TaskBatch<'static> {
    let x: Vec<f32> = (0..tasks)
        .flat_map(|_| {
            let blank = blank_columns(r, 784, 0.5);
            sparse_x(r, points, 784, &blank)
        })
        .collect();
    let y = labels(r, tasks * points, 5);
    TaskBatch::new(spec, tasks, points, x, Targets::Labels(Cow::Owned(y))).unwrap()
}

#[test]
fn trainer_on_the_transposed_first_layer() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    // 5 tasks are summed after all have run (`meta::kept`); 18 take the chunk tree with the
    // sums fused into each task's last step.
    for tasks in [5, 18] {
        trainer_case(tasks);
    }
}

/// Inner Adam with carried moments on minibatches of 10, two threads: the Omniglot-like
/// trainer setup of the transposed-path tests.
fn adam_config() -> ReptileConfig {
    ReptileConfig {
        inner_optimizer: InnerOptimizer::Adam { beta2: 0.999, eps: 1e-8 },
        train_moments: AdamMoments::Carry,
        train: InnerLoop { lr: 0.003, steps: 5, batch_size: 10 },
        eval: InnerLoop { lr: 0.003, steps: 5, batch_size: 0 },
        threads: 2,
        ..ReptileConfig::sine()
    }
}

fn trainer_case(tasks: usize) {
    let mut r = rng(73 + tasks as u64);
    let spec = MlpSpec::new(&[784, 256, 32, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
    assert!(sparse::suits(&spec));
    let points = 20usize;
    let batches: Vec<TaskBatch<'static>> = (0..3).map(|_| sparse_batch(&mut r, &spec, tasks, points)).collect();
    let model = Model::new(spec.clone(), 3);
    let config = adam_config();
    let state = |t: &Trainer| (t.model().params().to_vec(), t.adam_moments().0.to_vec());
    // Dense, and transposed with `step` (state read after every step).
    sparse::set_enabled(false);
    let mut dense = Trainer::new(model.clone(), config.clone()).unwrap();
    sparse::set_enabled(true);
    let mut stepped = Trainer::new(model.clone(), config.clone()).unwrap();
    let mut split = Trainer::new(model.clone(), config.clone()).unwrap();
    let mut switched = Trainer::new(model.clone(), config.clone()).unwrap();
    let mut one_thread = Trainer::new(model.clone(), ReptileConfig { threads: 1, ..config.clone() }).unwrap();
    for (k, b) in batches.iter().enumerate() {
        sparse::set_enabled(false);
        dense.step(b).unwrap();
        sparse::set_enabled(k < 2);
        switched.step(b).unwrap();
        sparse::set_enabled(true);
        stepped.step(b).unwrap();
        one_thread.step(b).unwrap();
        let d = split.task_deltas(b, 0).unwrap();
        split.apply_delta(&d).unwrap();
        let (a, b) = (state(&stepped), state(&split));
        assert_bits_eq(&a.0, &b.0, &format!("{tasks} tasks, step {k}: θ, step vs split"));
        assert_bits_eq(&a.1, &b.1, &format!("{tasks} tasks, step {k}: moments, step vs split"));
        // The f64 accumulation the tail mean uses reads the transposed state in place and
        // adds exactly θ (bit for bit, after rounding back), without building θ's layout.
        // Added twice, so the sum is 2θ exactly (it adds, it does not overwrite).
        for (t, what) in [(&stepped, "transposed"), (&dense, "dense")] {
            let mut sum = vec![0.0f64; a.0.len()];
            t.accumulate_params(&mut sum).unwrap();
            t.accumulate_params(&mut sum).unwrap();
            let back: Vec<f32> = sum.iter().map(|&s| (s / 2.0) as f32).collect();
            assert_bits_eq(&back, &state(t).0, &format!("{tasks} tasks, step {k}: accumulate_params, {what}"));
        }
        assert!(stepped.accumulate_params(&mut [0.0; 3]).is_err(), "a sum of the wrong length");
        let c = state(&one_thread);
        assert_bits_eq(&c.0, &a.0, &format!("{tasks} tasks, step {k}: θ, 1 thread vs 2"));
        assert_bits_eq(&c.1, &a.1, &format!("{tasks} tasks, step {k}: moments, 1 thread vs 2"));
    }
    let start = model.params();
    let moved = |t: &[f32]| -> Vec<f32> { t.iter().zip(start).map(|(a, b)| a - b).collect() };
    let (dense_t, dense_v) = state(&dense);
    let want = to_f64(&moved(&dense_t));
    assert!(want.iter().any(|&x| x != 0.0), "a real step");
    for (what, t) in [("transposed", &stepped), ("switched off for the last step", &switched)] {
        let (got_t, got_v) = state(t);
        assert_close(&moved(&got_t), &want, 1e-6, 1e-3, &format!("{tasks} tasks: θ − θ_start, {what} vs dense"));
        assert_close(
            &got_v,
            &to_f64(&dense_v),
            1e-14,
            1e-3,
            &format!("{tasks} tasks: carried moments, {what} vs dense"),
        );
    }
    // The model handed out at the end is the state the accessors showed.
    let (last_t, _) = state(&stepped);
    assert_bits_eq(stepped.into_model().params(), &last_t, "into_model");
}

/// Training that blows up on the transposed path reports `Diverged` and loses nothing: θ, the
/// carried moments and the iteration count stay at their values before the failing step
/// (the transposed state is not advanced), and a retry fails the same way. Two ways: inputs
/// so large that the losses overflow, and finite task deltas whose interpolation overflows in
/// `W_0ᵀ` (ε annealed to `f32::MAX`; the reason names `W_0ᵀ`).
#[test]
fn divergence_on_the_transposed_path_keeps_the_state() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    sparse::set_enabled(true);
    let mut r = rng(74);
    let spec = MlpSpec::new(&[784, 256, 16, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
    assert!(sparse::suits(&spec));
    let good = sparse_batch(&mut r, &spec, 5, 20);
    let huge = {
        let b = sparse_batch(&mut r, &spec, 5, 20);
        let x: Vec<f32> = b.x().iter().map(|v| v * 1e38).collect();
        TaskBatch::new(&spec, 5, 20, x, b.y().clone()).unwrap().into_owned()
    };
    let base = ReptileConfig {
        inner_optimizer: InnerOptimizer::Adam { beta2: 0.999, eps: 1e-8 },
        train_moments: AdamMoments::Carry,
        train: InnerLoop { lr: 0.003, steps: 5, batch_size: 10 },
        eps_start: 0.5,
        eps_end: 0.5,
        threads: 2,
        ..ReptileConfig::sine()
    };
    let blows_up = ReptileConfig {
        train: InnerLoop { lr: 1.0, ..base.train },
        eps_end: f32::MAX,
        planned_iters: 1,
        ..base.clone()
    };
    for (config, failing, why) in [(base, &huge, "loss"), (blows_up, &good, "W_0ᵀ")] {
        let mut tr = Trainer::new(Model::new(spec.clone(), 4), config).unwrap();
        // One good step first (ε = 0.5), so the transposed state is in use when it fails.
        tr.step(&good).unwrap();
        let before = (tr.params().to_vec(), tr.adam_moments().0.to_vec(), tr.adam_moments().1);
        assert!(before.0.iter().all(|v| v.is_finite()), "{why}: θ finite after the good step");
        for attempt in 0..2 {
            match tr.step(failing) {
                Err(Error::Diverged { iteration, reason }) => {
                    assert_eq!(iteration, 1, "{why}: iteration in the error");
                    assert!(reason.contains(why), "{why}: reason {reason:?}");
                }
                other => panic!("{why}, attempt {attempt}: expected Diverged, got {other:?}"),
            }
            assert_eq!(tr.iteration(), 1, "{why}: iteration count unchanged");
            assert_bits_eq(tr.params(), &before.0, &format!("{why}, attempt {attempt}: θ kept"));
            let (v, t) = tr.adam_moments();
            assert_bits_eq(v, &before.1, &format!("{why}, attempt {attempt}: moments kept"));
            assert_eq!(t, before.2, "{why}: step count kept");
        }
    }
}

/// The outer decay multiplies each interpolated parameter by `keep = 1 − ε·λ`, rounded once
/// after the interpolation's own rounding: on the transposed first layer (where `W_0` is
/// updated in the transposed state) and on the dense path, with the tasks summed after the
/// fact (5) and through the chunk tree (18), θ with decay is θ without it times `keep`, bit for
/// bit, and the carried moments are untouched.
#[test]
fn outer_decay_on_the_transposed_first_layer() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = rng(91);
    let spec = MlpSpec::new(&[784, 256, 32, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
    let model = Model::new(spec.clone(), 4);
    let config = ReptileConfig { eps_start: 0.9, eps_end: 0.1, planned_iters: 10, ..adam_config() };
    let lambda = 0.25f32;
    for tasks in [5, 18] {
        let batches: Vec<TaskBatch<'static>> = (0..2).map(|_| sparse_batch(&mut r, &spec, tasks, 20)).collect();
        for transposed in [true, false] {
            sparse::set_enabled(transposed);
            let mut plain = Trainer::new(model.clone(), config.clone()).unwrap();
            let mut decayed =
                Trainer::new(model.clone(), ReptileConfig { outer_decay: lambda, ..config.clone() }).unwrap();
            for (k, b) in batches.iter().enumerate() {
                // Both start the step from the same θ: the decayed trainer's θ.
                plain.set_params(decayed.params()).unwrap();
                let (v, t) = decayed.adam_moments();
                plain.set_adam_moments(v, t).unwrap();
                let before = decayed.params().to_vec();
                let (sp, sd) = (plain.step(b).unwrap(), decayed.step(b).unwrap());
                assert_eq!(sp, sd, "step statistics");
                let keep = 1.0 - sd.epsilon * lambda;
                assert!(keep < 1.0);
                let want: Vec<f32> = plain.params().iter().map(|&p| p * keep).collect();
                let what = format!("{tasks} tasks, transposed {transposed}, step {k}");
                assert_bits_eq(decayed.params(), &want, &format!("{what}: θ = keep·θ without decay"));
                assert_bits_eq(decayed.adam_moments().0, plain.adam_moments().0, &format!("{what}: moments"));
                assert!(decayed.params() != before.as_slice(), "{what}: θ moved");
            }
        }
    }
    sparse::set_enabled(true);
}
