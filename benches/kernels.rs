//! Kernel and meta-step benchmarks for the sine shape (MLP 1-64-64-1 tanh, minibatch 10),
//! and the inner step of the Omniglot MLP (784-256-128-64-64-5 ReLU, minibatches of 10 and 25).
//!
//! `cargo bench --bench kernels` — criterion reports FLOP-based throughput as "elem/s"
//! (1 elem = 1 FLOP, counted by `MlpSpec::step_flops`), and after each group a line with
//! GFLOP/s and task-steps/s (tasks/s for the interpolation) from a separate timed loop.
//! `REPTILE_ISA=avx2|baseline` caps the instruction set.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use reptile::cpu::aligned::AlignedVec;
use reptile::cpu::mlp::{self, Tgt, Workspace};
use reptile::cpu::sparse;
use reptile::cpu::update;
use reptile::workloads::sine::SineTasks;
use reptile::{Activation, Loss, MlpSpec, Model, ReptileConfig, Trainer};
use std::hint::black_box;
use std::time::{Duration, Instant};

const POINTS: usize = 10;

fn sine_spec() -> MlpSpec {
    MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap()
}

/// Times `f` for about `secs` seconds after a warm-up and returns seconds per call; 0 (and no
/// line printed) when `REPTILE_BENCH_SUMMARY=0`, e.g. while profiling one benchmark.
fn time_per_call(secs: f64, mut f: impl FnMut()) -> f64 {
    if std::env::var("REPTILE_BENCH_SUMMARY").as_deref() == Ok("0") {
        return 0.0;
    }
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < 0.2 {
        f();
    }
    let (mut n, t) = (0u64, Instant::now());
    while t.elapsed().as_secs_f64() < secs {
        f();
        n += 1;
    }
    t.elapsed().as_secs_f64() / n as f64
}

fn line(name: &str, per_call: f64, flops: u64, units: f64, unit: &str) {
    if per_call == 0.0 {
        return;
    }
    println!(
        "  -> {name}: {:.3} µs/call, {:.2} GFLOP/s, {:.0} {unit}/s",
        per_call * 1e6,
        flops as f64 / per_call / 1e9,
        units / per_call
    );
}

fn batch_data() -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..POINTS).map(|i| -4.5 + i as f32).collect();
    let y: Vec<f32> = x.iter().map(|v| 2.0 * (v + 0.3).sin()).collect();
    (x, y)
}

fn bench_single_task(c: &mut Criterion) {
    let spec = sine_spec();
    let (x, y) = batch_data();
    let model = Model::new(spec.clone(), 1);
    let mut ws = Workspace::new(&spec, POINTS);
    let mut grad = vec![0.0; spec.num_params()];
    let fb_flops = spec.step_flops(POINTS) - 2 * spec.num_params() as u64;

    let mut g = c.benchmark_group("sine_task");
    g.throughput(Throughput::Elements(fb_flops));
    let mut fwd_bwd = || {
        mlp::forward(&spec, model.params(), &x, POINTS, &mut ws);
        mlp::loss_grad(&spec, Tgt::Values(&y), POINTS, &mut ws);
        mlp::backward(&spec, model.params(), &x, POINTS, &mut ws, &mut grad);
        black_box(&grad);
    };
    g.bench_function("forward_backward", |b| b.iter(&mut fwd_bwd));
    let t = time_per_call(1.0, &mut fwd_bwd);
    line("forward+backward", t, fb_flops, 1.0, "tasks");

    let step_flops = spec.step_flops(POINTS);
    g.throughput(Throughput::Elements(step_flops));
    let mut theta = model.params().to_vec();
    let mut step = || {
        mlp::forward(&spec, &theta, &x, POINTS, &mut ws);
        mlp::loss_grad(&spec, Tgt::Values(&y), POINTS, &mut ws);
        mlp::backward_sgd(&spec, &mut theta, &x, POINTS, &mut ws, 1e-6);
        black_box(&theta);
    };
    g.bench_function("inner_sgd_step", |b| b.iter(&mut step));
    let t = time_per_call(1.0, &mut step);
    line("inner SGD step", t, step_flops, 1.0, "task-steps");
    g.finish();
}

/// The three products and the activation at the sine hidden layer (10 points, 64 × 64).
fn bench_products(c: &mut Criterion) {
    use reptile::cpu::{gemm, math};
    let (p, i, o) = (POINTS, 64usize, 64usize);
    let x: Vec<f32> = (0..p * i).map(|k| ((k * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let w: Vec<f32> = (0..o * i).map(|k| ((k * 104_729) % 1000) as f32 / 8000.0 - 0.06).collect();
    let b: Vec<f32> = (0..o).map(|k| k as f32 / 640.0).collect();
    let dz: Vec<f32> = (0..p * o).map(|k| ((k * 31) % 97) as f32 / 97.0 - 0.5).collect();
    let mut z = vec![0.0f32; p * o];
    let mut dx = vec![0.0f32; p * i];
    let mut g = w.clone();
    let flops = (2 * p * i * o) as u64;
    let mut grp = c.benchmark_group("products_10x64x64");
    grp.throughput(Throughput::Elements(flops));
    grp.bench_function("x_wt_bias", |bn| bn.iter(|| gemm::x_wt(p, i, o, &x, &w, &b, black_box(&mut z))));
    grp.bench_function("dz_w", |bn| bn.iter(|| gemm::dz_w(p, o, i, &dz, &w, black_box(&mut dx))));
    grp.bench_function("dzt_x_sgd", |bn| bn.iter(|| gemm::dzt_x(o, i, p, -1e-9, &dz, &x, 1.0, black_box(&mut g))));
    grp.throughput(Throughput::Elements((p * o) as u64));
    grp.bench_function("tanh_640", |bn| {
        bn.iter(|| {
            z.copy_from_slice(&dz);
            math::tanh_slice(black_box(&mut z))
        })
    });
    grp.finish();
}

fn bench_meta_step(c: &mut Criterion) {
    meta_step_group(c, 5);
    meta_step_group(c, 32);
}

/// The sine meta-step with `k` inner steps (minibatches of 10 of the 50 grid points) for
/// n = 1, 32 and 1024 tasks.
fn meta_step_group(c: &mut Criterion, k: usize) {
    let spec = sine_spec();
    let mut g = c.benchmark_group(format!("sine_meta_step_k{k}"));
    for n in [1usize, 32, 1024] {
        let base = ReptileConfig::sine();
        let config = ReptileConfig { meta_batch: n, train: reptile::InnerLoop { steps: k, ..base.train }, ..base };
        let mut trainer = Trainer::new(Model::new(spec.clone(), 0), config).unwrap();
        let batch = SineTasks::new(7).train_batch(&spec, n).unwrap();
        // Per task: k steps plus the forward that measures the post-adaptation loss.
        let flops = n as u64 * (k as u64 * spec.step_flops(POINTS) + spec.forward_flops(POINTS));
        g.throughput(Throughput::Elements(flops));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(trainer.step(&batch).unwrap()))
        });
        let t = time_per_call(1.5, || {
            black_box(trainer.step(&batch).unwrap());
        });
        line(&format!("meta-step n={n} k={k} ({} threads)", trainer.threads()), t, flops, (n * k) as f64, "task-steps");
    }
    g.finish();
}

/// One inner step of the Omniglot MLP (784-256-128-64-64-5 ReLU, softmax cross-entropy) on
/// minibatches of 10 and 25: forward, loss, and backward fused with SGD or with Adam (β1 = 0).
/// FLOPs are `step_flops` (SGD's update: 2 per parameter; Adam's few more per parameter are
/// not counted).
fn bench_omniglot_step(c: &mut Criterion) {
    use reptile::cpu::mlp::AdamStep;
    let spec = MlpSpec::new(&[784, 256, 128, 64, 64, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
    let model = Model::new(spec.clone(), 3);
    let mut g = c.benchmark_group("omniglot_step");
    for points in [10usize, 25] {
        // Fresh-looking inputs: sparse ink in [0, 1] like the 28×28 drawings, labels 0..5.
        let x: Vec<f32> =
            (0..points * 784).map(|k| if (k * 7919) % 5 == 0 { ((k * 31) % 97) as f32 / 97.0 } else { 0.0 }).collect();
        let labels: Vec<u32> = (0..points as u32).map(|i| i % 5).collect();
        let mut ws = Workspace::new(&spec, points);
        let mut theta = model.params().to_vec();
        let mut v = vec![1e-6f32; spec.num_params()];
        let flops = spec.step_flops(points);
        g.throughput(Throughput::Elements(flops));
        let mut sgd = || {
            mlp::forward(&spec, &theta, &x, points, &mut ws);
            mlp::loss_grad(&spec, Tgt::Labels(&labels), points, &mut ws);
            mlp::backward_sgd(&spec, &mut theta, &x, points, &mut ws, 1e-7);
            black_box(&theta);
        };
        g.bench_with_input(BenchmarkId::new("sgd", points), &points, |b, _| b.iter(&mut sgd));
        let t = time_per_call(1.0, &mut sgd);
        line(&format!("omniglot SGD step, {points} points"), t, flops, 1.0, "task-steps");
        let step = AdamStep { lr_t: 1e-7, beta2: 0.999, eps: 1e-8 };
        let mut adam = || {
            mlp::forward(&spec, &theta, &x, points, &mut ws);
            mlp::loss_grad(&spec, Tgt::Labels(&labels), points, &mut ws);
            mlp::backward_adam(&spec, &mut theta, &x, points, &mut ws, &mut v, step, None);
            black_box(&theta);
        };
        g.bench_with_input(BenchmarkId::new("adam", points), &points, |b, _| b.iter(&mut adam));
        let t = time_per_call(1.0, &mut adam);
        line(&format!("omniglot Adam step, {points} points"), t, flops, 1.0, "task-steps");
        // The step as training runs it: 64-byte aligned θ' and v, the first layer's product
        // of this minibatch already computed by the step before (`backward_adam_ahead`, next
        // minibatch = this one), so the forward starts at the activation.
        let (mut theta_a, mut v_a) = (AlignedVec::from_slice(&theta), AlignedVec::from_slice(&v));
        mlp::forward(&spec, &theta_a, &x, points, &mut ws);
        mlp::loss_grad(&spec, Tgt::Labels(&labels), points, &mut ws);
        assert!(mlp::backward_adam_ahead(&spec, &mut theta_a, &x, points, &mut ws, &mut v_a, step, None, None, &x));
        let mut fused = || {
            mlp::forward_continue(&spec, &theta_a, points, &mut ws);
            mlp::loss_grad(&spec, Tgt::Labels(&labels), points, &mut ws);
            mlp::backward_adam_ahead(&spec, &mut theta_a, &x, points, &mut ws, &mut v_a, step, None, None, &x);
            black_box(&theta_a);
        };
        g.bench_with_input(BenchmarkId::new("adam_fused", points), &points, |b, _| b.iter(&mut fused));
        let t = time_per_call(1.0, &mut fused);
        line(&format!("omniglot Adam step, fused next forward, aligned, {points} points"), t, flops, 1.0, "task-steps");
        // The step on the transposed first layer (`cpu::sparse`), as training runs it after a
        // task's first step, on drawing-like inputs: ink only inside a centred disc of radius
        // 11 px (48% of the pixels, about the share of columns Omniglot's minibatches touch),
        // so the blank columns are skipped. FLOPs counted as for the dense step.
        let xs: Vec<f32> = (0..points * 784)
            .map(|k| {
                let (r, c) = ((k % 784) / 28, k % 28);
                let d2 = (r as i32 - 14).pow(2) + (c as i32 - 14).pow(2);
                if d2 <= 121 && (k * 7919) % 3 == 0 { ((k * 31) % 97) as f32 / 97.0 } else { 0.0 }
            })
            .collect();
        let (mut w0t, mut v0t) = (vec![0.0f32; 784 * 256], vec![0.0f32; 784 * 256]);
        sparse::transpose(256, 784, &theta_a[..784 * 256], &mut w0t);
        sparse::transpose(256, 784, &v_a[..784 * 256], &mut v0t);
        let src = sparse::Src { w0t: &w0t, v0t: Some(&v0t) };
        let mut state = sparse::SparseFirst::new(784, 256);
        state.begin();
        let (mut mask, mut runs) = (Vec::new(), Vec::new());
        let mut zs = vec![0.0f32; points * 256];
        let mut sparse_step = || {
            sparse::nonzero_runs(&xs, points, 784, &mut mask, &mut runs);
            let (z0, _) = ws.z0_and_scratch(&spec, points);
            state.forward(src, &xs, points, &runs, &theta_a[784 * 256..784 * 256 + 256], z0, &mut zs);
            mlp::forward_continue(&spec, &theta_a, points, &mut ws);
            mlp::loss_grad(&spec, Tgt::Labels(&labels), points, &mut ws);
            let sp = mlp::Sparse0 { state: &mut state, src, runs: &runs };
            mlp::backward_adam_sparse(&spec, &mut theta_a, &xs, points, &mut ws, &mut v_a, step, None, None, sp);
            black_box(&theta_a);
        };
        g.bench_with_input(BenchmarkId::new("adam_sparse", points), &points, |b, _| b.iter(&mut sparse_step));
        let t = time_per_call(1.0, &mut sparse_step);
        line(
            &format!("omniglot Adam step, transposed first layer, 48% ink disc, {points} points"),
            t,
            flops,
            1.0,
            "task-steps",
        );
    }
    g.finish();
}

fn bench_interpolation(c: &mut Criterion) {
    let spec = sine_spec();
    let p = spec.num_params();
    let mut g = c.benchmark_group("interpolate");
    for n in [32usize, 1024] {
        let theta: Vec<f32> = (0..p).map(|i| (i as f32 * 0.37).sin()).collect();
        let primes: Vec<Vec<f32>> = (0..n).map(|t| theta.iter().map(|v| v + 1e-3 * t as f32).collect()).collect();
        let mut acc = vec![0.0f32; p];
        let mut out = vec![0.0f32; p];
        // Reads n·P θ' + n·P θ floats, read-modify-writes the sum, then one interpolation.
        g.throughput(Throughput::Bytes((4 * p * (2 * n + 3)) as u64));
        let mut f = || {
            acc.fill(0.0);
            for tp in &primes {
                update::accumulate_delta(&mut acc, tp, &theta);
            }
            update::interpolate(&mut out, &theta, &acc, 0.1 / n as f32, 1.0);
            black_box(&out);
        };
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| b.iter(&mut f));
        let t = time_per_call(1.0, &mut f);
        line(&format!("interpolation n={n}"), t, (2 * n * p + 2 * p) as u64, n as f64, "tasks");
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = bench_products, bench_single_task, bench_meta_step, bench_omniglot_step, bench_interpolation
}
criterion_main!(benches);
