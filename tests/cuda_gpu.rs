//! CPU vs CUDA agreement on a real GPU: every kernel, on random specs and fresh random data,
//! with output buffers poisoned (NaN) before each launch, within `tol + |ref|·eps`.
//!
//! Where no usable GPU is found each test prints the reason and passes; with
//! `REPTILE_REQUIRE_GPU=1` (scripts/gpu-check.sh sets it) that is a failure. The ignored test
//! `gpu_benchmarks` prints the performance table (`-- --ignored gpu_benchmarks --nocapture`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reptile::cpu::mlp::Tgt;
use reptile::cuda::backend::{CudaBackend, Path};
use reptile::cuda::plan::{self, MinibatchPlan};
use reptile::cuda::{CudaError, DeviceInfo, sine};
use reptile::meta::{InnerLoop, OuterRule};
use reptile::workloads::sine::SineTasks;
use reptile::{Activation, Loss, MlpSpec, Model, ReptileConfig, Targets, TaskBatch, Trainer};

fn backend() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(mut b) => {
            b.set_poison_outputs(true);
            Some(b)
        }
        Err(e) if std::env::var("REPTILE_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("REPTILE_REQUIRE_GPU=1 but the CUDA back end cannot start: {e}")
        }
        Err(e) => {
            println!("SKIPPED (no usable GPU): {e}");
            None
        }
    }
}

/// [`backend`] for the benchmarks and the profiling case: outputs not poisoned before each
/// launch (the poisoning is a correctness check, and costs a memset per launch).
fn bench_backend() -> Option<CudaBackend> {
    let mut gpu = backend()?;
    gpu.set_poison_outputs(false);
    Some(gpu)
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32, eps: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(err <= tol + w.abs() * eps, "{what}[{i}]: got {g}, want {w} (|Δ| = {err:e})");
        worst = worst.max(err);
    }
    worst
}

fn random_spec(rng: &mut ChaCha8Rng) -> MlpSpec {
    let nl = rng.random_range(1..=4);
    let loss = if rng.random_bool(0.5) { Loss::Mse } else { Loss::SoftmaxCrossEntropy };
    let mut w: Vec<usize> = (0..=nl).map(|_| rng.random_range(1..=80)).collect();
    w[0] = rng.random_range(1..=16);
    if loss == Loss::SoftmaxCrossEntropy {
        w[nl] = rng.random_range(2..=10);
    } else if rng.random_bool(0.4) {
        w[nl] = 1; // a regression head: the forward pass also writes the layer below's gradient
    }
    let act = if rng.random_bool(0.5) { Activation::Tanh } else { Activation::Relu };
    MlpSpec::new(&w, act, loss).unwrap()
}

fn random_tasks(rng: &mut ChaCha8Rng, spec: &MlpSpec, n: usize, m: usize) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    let x = (0..n * m * spec.in_dim()).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let y = (0..n * m * spec.out_dim()).map(|_| rng.random_range(-1.5f32..1.5)).collect();
    let l = (0..n * m).map(|_| rng.random_range(0..spec.out_dim() as u32)).collect();
    (x, y, l)
}

#[test]
fn fused_kernel_matches_cpu_on_random_specs() {
    let Some(mut gpu) = backend() else { return };
    let mut worst = 0.0f32;
    for case in 0..40u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(9000 + case);
        let spec = random_spec(&mut rng);
        let n = rng.random_range(1..=37);
        let m = rng.random_range(2..=50);
        let steps = rng.random_range(1..=6);
        let batch_size = if rng.random_bool(0.2) { 0 } else { rng.random_range(1..=m + 5) };
        let tail = rng.random_bool(0.25).then(|| rng.random_range(1..m));
        let fomaml = tail.is_some() || rng.random_bool(0.2);
        let lr = rng.random_range(0.005f32..0.1);
        let inner = InnerLoop { lr, steps, batch_size };
        let theta = Model::new(spec.clone(), case).into_params();
        let (x, yv, lab) = random_tasks(&mut rng, &spec, n, m);
        let y = if spec.loss() == Loss::Mse { Tgt::Values(&yv) } else { Tgt::Labels(&lab) };
        let seed = rng.random();
        let plan = MinibatchPlan::build(n, m, &inner, tail, |i| {
            reptile::rng::stream(seed, reptile::rng::Purpose::InnerShuffle, i as u64)
        })
        .unwrap();
        let what = format!("case {case}: {:?} {:?} n={n} m={m} {inner:?} tail={tail:?}", spec.widths(), spec.loss());
        let (d_ref, l_ref) = plan::cpu_deltas(&spec, &theta, &x, y, m, &plan, lr, fomaml);
        let mut paths = vec![Path::Tiled];
        match gpu.fused_shared_memory(&spec, plan.stride) {
            Ok(_) => paths.push(Path::Fused),
            Err(CudaError::Unsupported(why)) => println!("{what}: fused path skipped: {why}"),
            Err(e) => panic!("{what}: {e}"),
        }
        // The fused kernel at several block sizes: its results must not depend on blockDim.
        gpu.set_fused_block(Some([256, 128, 512, 64, 96][case as usize % 5])).unwrap();
        // A third of the cases on the shape-specialized build (one NVRTC compile each); half
        // with products split over lanes instead of warp slices, and of the others, every
        // other with at most 2 warp slices.
        gpu.set_specialize(case % 3 == 0);
        gpu.set_lane_split(case % 2 == 1);
        gpu.set_warp_slices(if case % 4 == 2 { 2 } else { plan::SPLIT }).unwrap();
        for path in paths {
            let (d_gpu, l_gpu) = gpu.inner_deltas(path, &spec, &theta, &x, y, m, &plan, lr, fomaml).unwrap();
            worst = worst.max(assert_close(&format!("{what} {path:?} delta"), &d_gpu, &d_ref, 5e-5, 1e-3));
            assert_close(&format!("{what} {path:?} losses"), &l_gpu, &l_ref, 1e-5, 1e-3);
        }
    }
    assert!(gpu.set_fused_block(Some(100)).is_err() && gpu.set_fused_block(Some(1024)).is_err());
    assert!(gpu.set_warp_slices(0).is_err() && gpu.set_warp_slices(plan::SPLIT + 1).is_err());
    gpu.set_fused_block(None).unwrap();
    gpu.set_lane_split(false);
    gpu.set_warp_slices(plan::SPLIT).unwrap();
    // The sine net as the benchmark launches it (n = 4096: 128 threads, the occupancy-bounded
    // specialized build), with either split, and with at most 3 warp slices (6 blocks per SM).
    let case = SineCase::new(4096);
    let (d_ref, l_ref) =
        plan::cpu_deltas(&case.spec, &case.theta, case.batch.x(), case.y(), 50, &case.plan, case.lr, false);
    for (lanes, slices) in [(false, plan::SPLIT), (true, plan::SPLIT), (false, 3)] {
        gpu.set_lane_split(lanes);
        gpu.set_warp_slices(slices).unwrap();
        let (d, l) = gpu
            .inner_deltas(
                Path::Fused,
                &case.spec,
                &case.theta,
                case.batch.x(),
                case.y(),
                50,
                &case.plan,
                case.lr,
                false,
            )
            .unwrap();
        let what = format!("sine n=4096 lanes={lanes} slices={slices}");
        worst = worst.max(assert_close(&format!("{what} delta"), &d, &d_ref, 5e-5, 1e-3));
        assert_close(&format!("{what} losses"), &l, &l_ref, 1e-5, 1e-3);
    }
    gpu.set_lane_split(false);
    gpu.set_warp_slices(plan::SPLIT).unwrap();
    println!("inner loops (fused and tiled), GPU vs CPU: worst |Δ| = {worst:e}");
}

#[test]
fn interpolation_matches_f64_and_is_deterministic() {
    let Some(mut gpu) = backend() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    for &(n, p) in &[(1usize, 4353usize), (7, 1000), (64, 4353), (1000, 4353), (4096, 517)] {
        let theta: Vec<f32> = (0..p).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let delta: Vec<f32> = (0..n * p).map(|_| rng.random_range(-0.1f32..0.1)).collect();
        let scale = 0.1 / n as f32;
        // An outer decay's factor on every other size (1: the undecayed update).
        let keep = if n % 2 == 0 { rng.random_range(0.9f32..1.0) } else { 1.0 };
        let (out, sum, finite) = gpu.interpolate(&theta, &delta, n, scale, keep).unwrap();
        assert!(finite);
        let again = gpu.interpolate(&theta, &delta, n, scale, keep).unwrap();
        assert_eq!((&out, &sum), (&again.0, &again.1), "n={n}: results must be bit-identical run to run");
        let nc = plan::reduction_chunks(n);
        for j in 0..p {
            let mut s = 0.0f32;
            for c in 0..nc {
                let cs = (c * n / nc..(c + 1) * n / nc).fold(0.0f32, |a, i| a + delta[i * p + j]);
                s = if c == 0 { cs } else { s + cs };
            }
            assert_eq!(sum[j].to_bits(), s.to_bits(), "n={n}: sum[{j}] in the CPU trainer's order");
            let v = scale.mul_add(s, theta[j]) * keep;
            assert_eq!(out[j].to_bits(), v.to_bits(), "n={n}: out[{j}] = fma(scale, Σδ, θ)·keep, keep = {keep}");
        }
        let want: Vec<f32> = (0..p)
            .map(|j| {
                let s: f64 = (0..n).map(|i| delta[i * p + j] as f64).sum();
                ((theta[j] as f64 + scale as f64 * s) * keep as f64) as f32
            })
            .collect();
        assert_close(&format!("n={n} θ, keep = {keep}"), &out, &want, 1e-6 * (n as f32).sqrt(), 1e-6);
    }
    let mut delta = vec![0.01f32; 3 * 100];
    delta[150] = f32::NAN;
    let (_, _, finite) = gpu.interpolate(&[0.5; 100], &delta, 3, 0.1, 1.0).unwrap();
    assert!(!finite, "a NaN delta must be reported");
}

#[test]
fn trainer_steps_agree_with_the_cpu() {
    let Some(mut gpu) = backend() else { return };
    for (spec, outer, n) in [
        (MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap(), OuterRule::Reptile, 16),
        (MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap(), OuterRule::Fomaml { tail: None }, 3),
        (MlpSpec::new(&[6, 40, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap(), OuterRule::Reptile, 70),
    ] {
        let config = ReptileConfig { outer, threads: 1, seed: 4, ..ReptileConfig::sine() };
        let mut cpu = Trainer::new(Model::new(spec.clone(), 2), config.clone()).unwrap();
        let mut dev = Trainer::new(Model::new(spec.clone(), 2), config).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let mut sine = SineTasks::new(3);
        for it in 0..5 {
            let batch = if spec.loss() == Loss::Mse {
                sine.train_batch(&spec, n).unwrap()
            } else {
                let m = 20;
                let (x, _, lab) = random_tasks(&mut rng, &spec, n, m);
                TaskBatch::new(&spec, n, m, x, Targets::Labels(lab.into())).unwrap()
            };
            let a = cpu.step(&batch).unwrap();
            let b = gpu.step(&mut dev, &batch).unwrap();
            let what = format!("{:?} {outer:?} iteration {it}", spec.widths());
            assert!((a.loss_before - b.loss_before).abs() <= 1e-4 * a.loss_before.abs() + 1e-6, "{what}: {a:?} {b:?}");
            assert!((a.loss_after - b.loss_after).abs() <= 1e-3 * a.loss_after.abs() + 1e-5, "{what}: {a:?} {b:?}");
            assert_close(&what, dev.params(), cpu.params(), 1e-5, 1e-4);
        }
    }
}

/// Adam (β1 = 0) inner steps on the GPU (the tiled path) against the CPU trainer: moments
/// carried (their sum over the tasks reduced on the GPU) or reset, five outer steps each.
/// ε = 1e-3 keeps g/(√v + ε) well conditioned (see tests/adam.rs).
#[test]
fn trainer_adam_steps_agree_with_the_cpu() {
    use reptile::meta::{AdamMoments, InnerOptimizer};
    let Some(mut gpu) = backend() else { return };
    let spec = MlpSpec::new(&[12, 40, 30, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
    for (moments, outer) in [
        (AdamMoments::Carry, OuterRule::Reptile),
        (AdamMoments::Reset, OuterRule::Reptile),
        (AdamMoments::Carry, OuterRule::Fomaml { tail: Some(5) }),
    ] {
        let config = ReptileConfig {
            train: InnerLoop { lr: 0.005, steps: 4, batch_size: 10 },
            inner_optimizer: InnerOptimizer::Adam { beta2: 0.999, eps: 1e-3 },
            train_moments: moments,
            outer,
            threads: 1,
            seed: 6,
            ..ReptileConfig::sine()
        };
        let mut cpu = Trainer::new(Model::new(spec.clone(), 2), config.clone()).unwrap();
        let mut dev = Trainer::new(Model::new(spec.clone(), 2), config).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (n, m) = (5, 25);
        for it in 0..5 {
            let (x, _, lab) = random_tasks(&mut rng, &spec, n, m);
            let batch = TaskBatch::new(&spec, n, m, x, Targets::Labels(lab.into())).unwrap();
            let a = cpu.step(&batch).unwrap();
            let b = gpu.step(&mut dev, &batch).unwrap();
            let what = format!("Adam {moments:?} {outer:?} iteration {it}");
            assert!((a.loss_after - b.loss_after).abs() <= 1e-3 * a.loss_after.abs() + 1e-5, "{what}: {a:?} {b:?}");
            assert_close(&what, dev.params(), cpu.params(), 1e-5, 1e-4);
            let ((vc, tc), (vd, td)) = (cpu.adam_moments(), dev.adam_moments());
            assert_eq!(tc, td, "{what}: Adam step counts");
            assert_close(&format!("{what} moments"), vd, vc, 1e-8, 1e-4);
        }
    }
}

#[test]
fn large_networks_take_the_tiled_path() {
    // The Omniglot MLP (~250k parameters) does not fit the fused kernel's shared memory: the
    // back end picks the tiled path, which agrees with the CPU.
    let Some(mut gpu) = backend() else { return };
    let spec = MlpSpec::new(&[784, 256, 128, 64, 64, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
    assert!(matches!(gpu.fused_shared_memory(&spec, 10), Err(CudaError::Unsupported(_))));
    assert_eq!(gpu.path_for(&spec, 10).unwrap(), Path::Tiled);
    let info: &DeviceInfo = gpu.device();
    assert!(info.max_shared_per_block >= 48 * 1024);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (n, m) = (6, 10);
    let inner = InnerLoop { lr: 0.01, steps: 3, batch_size: 5 };
    let theta = Model::new(spec.clone(), 5).into_params();
    let x: Vec<f32> = (0..n * m * 784).map(|_| rng.random_range(0.0f32..1.0)).collect();
    let lab: Vec<u32> = (0..n * m).map(|_| rng.random_range(0..5)).collect();
    let plan = MinibatchPlan::training(n, m, &inner, OuterRule::Reptile, 0, 0, 0).unwrap();
    let (d_ref, l_ref) = plan::cpu_deltas(&spec, &theta, &x, Tgt::Labels(&lab), m, &plan, inner.lr, false);
    let (d, l) =
        gpu.inner_deltas(Path::Tiled, &spec, &theta, &x, Tgt::Labels(&lab), m, &plan, inner.lr, false).unwrap();
    assert_close("omniglot delta", &d, &d_ref, 5e-5, 1e-3);
    assert_close("omniglot losses", &l, &l_ref, 1e-5, 1e-3);
}

/// The benchmark workload: the sine net with the paper's inner loop (k = 5, b = 10 of 50
/// points per task) on `n` tasks, with its FLOP count (the CPU path's: five steps and the
/// forward pass for the loss after adaptation).
/// FLOPs of one meta-step's inner loops on `n` tasks as the benchmarks count them (the CPU
/// path's count): k = 5 SGD steps on minibatches of 10 points, then the forward pass for the
/// loss after adaptation.
fn meta_step_flops(spec: &MlpSpec, n: usize) -> f64 {
    n as f64 * (5.0 * spec.step_flops(10) as f64 + spec.forward_flops(10) as f64)
}

struct SineCase {
    spec: MlpSpec,
    theta: Vec<f32>,
    lr: f32,
    batch: TaskBatch<'static>,
    plan: MinibatchPlan,
    flops: f64,
}

impl SineCase {
    fn new(n: usize) -> Self {
        let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
        let config = ReptileConfig::sine();
        let theta = Model::new(spec.clone(), 0).into_params();
        let batch = SineTasks::new(1).train_batch(&spec, n).unwrap();
        let plan = MinibatchPlan::training(n, 50, &config.train, OuterRule::Reptile, 0, 0, 0).unwrap();
        let flops = meta_step_flops(&spec, n);
        SineCase { spec, theta, lr: config.train.lr, batch, plan, flops }
    }
    fn y(&self) -> Tgt<'_> {
        let Targets::Values(y) = self.batch.y() else { unreachable!("sine targets are values") };
        Tgt::Values(y)
    }
    /// Seconds per launch of the fused kernel alone.
    fn time_fused(&self, gpu: &mut CudaBackend, reps: usize) -> f64 {
        gpu.time_fused_kernel(&self.spec, &self.theta, self.batch.x(), self.y(), 50, &self.plan, self.lr, reps).unwrap()
    }
    /// Seconds per call of the inner loops on `path`, uploads included.
    fn time_inner(&self, gpu: &mut CudaBackend, path: Path, reps: usize) -> f64 {
        gpu.time_inner(path, &self.spec, &self.theta, self.batch.x(), self.y(), 50, &self.plan, self.lr, reps).unwrap()
    }
}

/// The GPU benchmarks of the issue (run by scripts/gpu-check.sh).
#[test]
#[ignore = "benchmark: run explicitly on a GPU"]
fn gpu_benchmarks() {
    let Some(mut gpu) = bench_backend() else { return };
    let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
    let theta = Model::new(spec.clone(), 0).into_params();
    let mut rows = vec![format!("device: {} (sm_{}{})", gpu.device().name, gpu.device().major, gpu.device().minor)];
    // H200 SXM FP32 peak (NVIDIA datasheet): 67 TFLOP/s.
    const PEAK: f64 = 67e12;
    for n in [1usize, 1024, 4096, 16384] {
        let case = SineCase::new(n);
        let flops = case.flops;
        for block in [128u32, 256, 512] {
            gpu.set_fused_block(Some(block)).unwrap();
            let secs = case.time_fused(&mut gpu, 20);
            rows.push(format!(
                "fused inner loop sine k=5 n={n} block={block}: {:.4} ms, {:.1} M task-steps/s, {:.2} TFLOP/s = {:.1}% \
                 of FP32 peak (target ≥ 25% at n ≥ 4096)",
                secs * 1e3,
                n as f64 * 5.0 / secs / 1e6,
                flops / secs / 1e12,
                100.0 * flops / secs / PEAK
            ));
        }
        gpu.set_fused_block(None).unwrap();
        let tiled = case.time_inner(&mut gpu, Path::Tiled, 5);
        let fused = case.time_inner(&mut gpu, Path::Fused, 5);
        rows.push(format!(
            "  with uploads: fused {:.3} ms, tiled {:.3} ms ({:.1} TFLOP/s tiled)",
            fused * 1e3,
            tiled * 1e3,
            flops / tiled / 1e12
        ));
        let p = spec.num_params();
        let deltas: Vec<f32> = (0..n * p).map(|i| (i % 97) as f32 * 1e-4).collect();
        gpu.interpolate(&theta, &deltas, n, 0.1 / n as f32, 1.0).unwrap();
        let t = gpu.time_update_kernels(n, p, 20).unwrap();
        let nc = plan::reduction_chunks(n);
        let bytes = (n * p + 2 * nc * p + 3 * p) as f64 * 4.0;
        let copy = gpu.copy_bandwidth(n * p * 4, 20).unwrap();
        rows.push(format!(
            "interpolation n={n}: {:.3} ms, {:.0} GB/s vs D2D copy {:.0} GB/s = {:.0}% (target ≥ 80%)",
            t * 1e3,
            bytes / t / 1e9,
            copy,
            100.0 * bytes / t / 1e9 / copy
        ));
    }
    // The Omniglot MLP on the tiled path (5-way, 10 points per task, k = 5, b = 10).
    let omni = MlpSpec::new(&[784, 256, 128, 64, 64, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
    let otheta = Model::new(omni.clone(), 0).into_params();
    for n in [32usize, 256] {
        let x: Vec<f32> = (0..n * 10 * 784).map(|i| (i % 255) as f32 / 255.0).collect();
        let lab: Vec<u32> = (0..n * 10).map(|i| (i % 5) as u32).collect();
        let inner = InnerLoop { lr: 0.001, steps: 5, batch_size: 10 };
        let plan = MinibatchPlan::training(n, 10, &inner, OuterRule::Reptile, 0, 0, 0).unwrap();
        let secs = gpu.time_inner(Path::Tiled, &omni, &otheta, &x, Tgt::Labels(&lab), 10, &plan, 0.001, 5).unwrap();
        let flops = meta_step_flops(&omni, n);
        rows.push(format!(
            "tiled inner loop Omniglot MLP k=5 b=10 n={n}: {:.3} ms, {:.2} TFLOP/s",
            secs * 1e3,
            flops / secs / 1e12
        ));
    }
    // A whole Omniglot meta-step with the CLI's Adam (β1 = 0) inner loop (tiled path, carried
    // moments, 5 tasks of 5-way 1-shot training batches of 10 points, k = 5), through
    // `CudaBackend::step`: uploads, the launches, both reductions and the host update.
    {
        use reptile::meta::{AdamMoments, InnerOptimizer};
        let config = ReptileConfig {
            train: InnerLoop { lr: 0.001, steps: 5, batch_size: 10 },
            inner_optimizer: InnerOptimizer::Adam { beta2: 0.999, eps: 1e-8 },
            train_moments: AdamMoments::Carry,
            threads: 1,
            ..ReptileConfig::sine()
        };
        let mut trainer = Trainer::new(Model::new(omni.clone(), 0), config).unwrap();
        let (n, m) = (5, 10);
        let x: Vec<f32> = (0..n * m * 784).map(|i| (i % 255) as f32 / 255.0).collect();
        let lab: Vec<u32> = (0..n * m).map(|i| (i % 5) as u32).collect();
        let batch = TaskBatch::new(&omni, n, m, x, Targets::Labels(lab.into())).unwrap();
        gpu.step(&mut trainer, &batch).unwrap();
        let reps = 50;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            gpu.step(&mut trainer, &batch).unwrap();
        }
        let secs = t.elapsed().as_secs_f64() / reps as f64;
        rows.push(format!(
            "tiled inner loop Omniglot meta-step, Adam, n={n} (whole step): {:.3} ms, {:.0} it/s",
            secs * 1e3,
            1.0 / secs
        ));
    }
    // The 30,000-iteration sine demo (n = 1), device-resident: the serial kernel (the default
    // for n = 1; first call includes its NVRTC compile, so it is run twice), then the
    // five-launch program with the CUDA graph and without.
    let config = ReptileConfig::sine();
    for (serial, graph, block) in [
        (true, false, None),
        (true, false, None),
        (true, false, Some(512u32)),
        (true, false, Some(128)),
        (false, true, None),
        (false, false, None),
    ] {
        gpu.set_serial_sine(serial);
        gpu.set_fused_block(block).unwrap();
        let block = gpu.fused_block_for(1);
        let t = std::time::Instant::now();
        let run = gpu.train_sine_resident(&spec, &theta, &config, 1, 0, 0, 30_000, graph).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(!run.diverged && run.iteration == 30_000);
        let how = if serial { "serial kernel".to_string() } else { format!("five launches, graph={graph}") };
        rows.push(format!(
            "sine demo device-resident, 30,000 iterations, {how}, block={block}: {secs:.3} s (target < 1 s)"
        ));
    }
    gpu.set_serial_sine(true);
    gpu.set_fused_block(None).unwrap();
    // The whole meta-step as device-resident training runs it at n ≥ 4096: tasks sampled on the
    // device, the fused kernel, the chunked reduction, the interpolation and the commit, replayed
    // as a CUDA graph; per iteration, after a warm-up call that compiles and captures. The
    // fused kernel alone is the `fused inner loop` rows above.
    for (n, iterations) in [(4096usize, 200u32), (16384, 100)] {
        let flops = meta_step_flops(&spec, n);
        gpu.train_sine_resident(&spec, &theta, &config, n, 0, 0, 3, true).unwrap();
        let t = std::time::Instant::now();
        let run = gpu.train_sine_resident(&spec, &theta, &config, n, 0, 0, iterations, true).unwrap();
        let secs = t.elapsed().as_secs_f64() / iterations as f64;
        assert!(!run.diverged && run.iteration == iterations as u64);
        rows.push(format!(
            "resident meta-step sine k=5 n={n} (device sampling + fused + reduction + interpolation, graph): \
             {:.4} ms/iteration, {:.1} M task-steps/s, {:.1}% of FP32 peak",
            secs * 1e3,
            n as f64 * 5.0 / secs / 1e6,
            100.0 * flops / secs / PEAK
        ));
    }
    // The sine demo (n = 1) through Trainer + CudaBackend::step, 3,000 iterations timed.
    let mut trainer = Trainer::new(Model::new(spec.clone(), 0), ReptileConfig::sine()).unwrap();
    let mut tasks = SineTasks::new(0);
    let batches: Vec<_> = (0..3000).map(|_| tasks.train_batch(&spec, 1).unwrap()).collect();
    let t = std::time::Instant::now();
    for b in &batches {
        gpu.step(&mut trainer, b).unwrap();
    }
    let per = t.elapsed().as_secs_f64() / 3000.0;
    rows.push(format!(
        "sine demo via CudaBackend::step (host round-trip per iteration): {:.1} µs/iteration → {:.2} s for 30,000 (target < 1 s)",
        per * 1e6,
        per * 30000.0
    ));
    println!("\n{}", rows.join("\n"));
}

#[test]
fn resident_sine_loop_matches_the_cpu_reference() {
    let Some(mut gpu) = backend() else { return };
    let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
    let theta = Model::new(spec.clone(), 6).into_params();
    // With an outer decay on the serial kernel's case and on a batched one.
    let cases = [
        (OuterRule::Reptile, 1usize, 0.0f32),
        (OuterRule::Reptile, 1, 0.05),
        (OuterRule::Reptile, 37, 0.0),
        (OuterRule::Reptile, 37, 0.05),
        (OuterRule::Fomaml { tail: None }, 4, 0.0),
    ];
    for (outer, n, outer_decay) in cases {
        let config = ReptileConfig { outer, planned_iters: 100, outer_decay, ..ReptileConfig::sine() };
        let want = sine::reference_run(&spec, &theta, &config, n, 17, 3, 60).unwrap();
        gpu.set_fused_block(if n == 37 { Some(512) } else { None }).unwrap();
        gpu.set_serial_sine(false);
        let plain = gpu.train_sine_resident(&spec, &theta, &config, n, 17, 3, 60, false).unwrap();
        let graph = gpu.train_sine_resident(&spec, &theta, &config, n, 17, 3, 60, true).unwrap();
        gpu.set_serial_sine(true);
        assert_eq!(plain, graph, "{outer:?} n={n}: the graph replays the same launches bit for bit");
        assert!(!plain.diverged && plain.iteration == 63);
        assert_close(&format!("{outer:?} n={n} θ after 60 iterations"), &plain.theta, &want.theta, 1e-4, 1e-3);
        if n == 1 {
            // The serial kernel (the default for n = 1): the same iterations in one launch.
            let serial = gpu.train_sine_resident(&spec, &theta, &config, n, 17, 3, 60, false).unwrap();
            assert!(!serial.diverged && serial.iteration == 63);
            assert_close("serial kernel θ after 60 iterations", &serial.theta, &want.theta, 1e-4, 1e-3);
            assert_close("serial kernel losses", &serial.losses, &want.losses, 1e-4, 1e-3);
            // With products split over lanes.
            gpu.set_lane_split(true);
            let lanes = gpu.train_sine_resident(&spec, &theta, &config, n, 17, 3, 60, false);
            gpu.set_lane_split(false);
            let lanes = lanes.unwrap();
            assert!(!lanes.diverged && lanes.iteration == 63);
            assert_close("serial kernel (lanes) θ after 60 iterations", &lanes.theta, &want.theta, 1e-4, 1e-3);
        }
    }
    gpu.set_fused_block(None).unwrap();
    // The serial kernel at divergence: two good iterations, then a step size that overflows.
    let config = ReptileConfig { planned_iters: 100, ..ReptileConfig::sine() };
    let good = gpu.train_sine_resident(&spec, &theta, &config, 1, 4, 0, 2, false).unwrap();
    let wild = ReptileConfig { train: InnerLoop { lr: 1e30, ..config.train }, ..config };
    let run = gpu.train_sine_resident(&spec, &good.theta, &wild, 1, 4, 2, 3, false).unwrap();
    assert!(run.diverged && run.iteration == 2, "{run:?}");
    assert_eq!(run.theta, good.theta, "the serial kernel keeps the last finite θ");
    // Divergence: nothing is committed, θ stays as it was.
    let config =
        ReptileConfig { train: InnerLoop { lr: 1e30, ..ReptileConfig::sine().train }, ..ReptileConfig::sine() };
    let run = gpu.train_sine_resident(&spec, &theta, &config, 2, 1, 0, 5, false).unwrap();
    assert!(run.diverged && run.iteration == 0);
    assert_eq!(run.theta, theta);
}

/// The fused kernel alone on the sine batch, at n = 1 (latency) and n = 4096 (throughput),
/// blocks of 128 and 256 threads: a quick comparison of kernel variants
/// (`REPTILE_KERNELS_DIR`, see `reptile::cuda::kernels`), printed as `fused …` lines.
#[test]
#[ignore = "benchmark: run explicitly on a GPU"]
fn bench_fused() {
    let Some(mut gpu) = bench_backend() else { return };
    for n in [1usize, 4096] {
        let case = SineCase::new(n);
        let flops = case.flops;
        for (specialize, block) in
            [(false, 128u32), (false, 256), (true, 64), (true, 96), (true, 128), (true, 256), (true, 512)]
        {
            gpu.set_specialize(specialize);
            gpu.set_fused_block(Some(block)).unwrap();
            let secs = case.time_fused(&mut gpu, if n == 1 { 200 } else { 50 });
            println!(
                "fused n={n} specialized={specialize} block={block}: {:.2} µs, {:.2} TFLOP/s = {:.1}% of 67 TFLOP/s",
                secs * 1e6,
                flops / secs / 1e12,
                100.0 * flops / secs / 67e12
            );
        }
    }
}

/// The fused sine meta-step (k = 5, 128 threads, specialized) at n = 4096 and 16384 under each
/// launch choice the back end has, to pick its defaults by measurement (run by
/// scripts/gpu-check.sh): registers bounded by occupancy or not (`set_occupancy_bound`),
/// products split over warp slices or lanes (`set_lane_split`), at most 4, 3 or 2 warp slices
/// (`set_warp_slices`), task staging as decided or forced on (`set_staging`). Each
/// configuration is timed twice, alternating, so a drift of the clocks shows as a disagreement
/// between the two rounds.
#[test]
#[ignore = "benchmark: run explicitly on a GPU"]
fn gpu_variants() {
    let Some(mut gpu) = bench_backend() else { return };
    gpu.set_fused_block(Some(128)).unwrap();
    for n in [4096usize, 16384] {
        let case = SineCase::new(n);
        let mut rows = vec![];
        for round in 0..2 {
            for (i, (occupancy, lanes, staging, slices)) in [
                (true, false, None, plan::SPLIT),
                (false, false, None, plan::SPLIT),
                (true, true, None, plan::SPLIT),
                (false, true, None, plan::SPLIT),
                (true, false, Some(true), plan::SPLIT),
                (true, true, Some(true), plan::SPLIT),
                (true, false, None, 3),
                (true, false, None, 2),
            ]
            .into_iter()
            .enumerate()
            {
                gpu.set_occupancy_bound(occupancy);
                gpu.set_lane_split(lanes);
                gpu.set_staging(staging);
                gpu.set_warp_slices(slices).unwrap();
                case.time_fused(&mut gpu, 3); // compile and warm up
                let secs = case.time_fused(&mut gpu, 20);
                let pct = 100.0 * case.flops / secs / 67e12;
                if round == 0 {
                    let what = format!("occupancy={occupancy} lanes={lanes} staging={staging:?} slices={slices}");
                    rows.push((what, secs, pct, 0.0));
                } else {
                    rows[i].3 = pct;
                }
            }
        }
        for (what, secs, pct0, pct1) in rows {
            println!(
                "variant sine k=5 n={n} block=128 {what}: {:.4} ms, {pct0:.1}% / {pct1:.1}% of FP32 peak (two rounds)",
                secs * 1e3
            );
        }
    }
    gpu.set_occupancy_bound(true);
    gpu.set_staging(None);
    gpu.set_warp_slices(plan::SPLIT).unwrap();
    gpu.set_fused_block(None).unwrap();
    // The 30,000-iteration demo on the serial sine kernel with either split, each run twice
    // (the first run of a split includes its build's NVRTC compile).
    let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
    let theta = Model::new(spec.clone(), 0).into_params();
    for lanes in [false, true, false, true] {
        gpu.set_lane_split(lanes);
        let t = std::time::Instant::now();
        let run = gpu.train_sine_resident(&spec, &theta, &ReptileConfig::sine(), 1, 0, 0, 30_000, false).unwrap();
        assert!(!run.diverged && run.iteration == 30_000);
        println!("variant sine demo serial kernel lanes={lanes}: {:.3} s", t.elapsed().as_secs_f64());
    }
    gpu.set_lane_split(false);
}

/// The fused sine meta-step (k = 5, 128 threads) at n = 4096 with the back end's defaults and
/// with the lane split, three rounds each: what scripts/gpu-check.sh times for each kernel
/// variant folder of scripts/gpu-variants.sh (`REPTILE_KERNELS_DIR`).
#[test]
#[ignore = "benchmark: run explicitly on a GPU"]
fn bench_fused_default() {
    let Some(mut gpu) = bench_backend() else { return };
    gpu.set_fused_block(Some(128)).unwrap();
    let case = SineCase::new(4096);
    let dir = std::env::var("REPTILE_KERNELS_DIR").unwrap_or_else(|_| "embedded".into());
    // A folder of kernels older than the lane split says so with a `slices-only` marker.
    let slices_only = std::path::Path::new(&dir).join("slices-only").exists();
    for lanes in [false, true] {
        if lanes && slices_only {
            continue;
        }
        gpu.set_lane_split(lanes);
        case.time_fused(&mut gpu, 3); // compile and warm up
        let pct: Vec<String> =
            (0..3).map(|_| format!("{:.1}%", 100.0 * case.flops / case.time_fused(&mut gpu, 20) / 67e12)).collect();
        println!("kernels {dir}: sine k=5 n=4096 block=128 lanes={lanes}: {} of FP32 peak", pct.join(" / "));
    }
    gpu.set_lane_split(false);
}

/// One launch of each hot kernel at benchmark size, for a profiler (`ncu --launch-count`) in
/// scripts/gpu-check.sh: the fused inner loop on the sine net (n = 4096, k = 5) and the tiled
/// path on the Omniglot MLP (n = 64).
#[test]
#[ignore = "profiling case: run explicitly on a GPU"]
fn profile_case() {
    let Some(mut gpu) = bench_backend() else { return };
    SineCase::new(4096).time_fused(&mut gpu, 1);
    let omni = MlpSpec::new(&[784, 256, 128, 64, 64, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
    let otheta = Model::new(omni.clone(), 0).into_params();
    let n = 64;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x: Vec<f32> = (0..n * 10 * 784).map(|_| rng.random_range(0.0f32..1.0)).collect();
    let lab: Vec<u32> = (0..n * 10).map(|i| (i % 5) as u32).collect();
    let inner = InnerLoop { lr: 0.001, steps: 5, batch_size: 10 };
    let plan = MinibatchPlan::training(n, 10, &inner, OuterRule::Reptile, 0, 0, 0).unwrap();
    gpu.inner_deltas(Path::Tiled, &omni, &otheta, &x, Tgt::Labels(&lab), 10, &plan, 0.001, false).unwrap();
}

/// A small case for compute-sanitizer (memcheck, racecheck) in scripts/gpu-check.sh: both
/// kernels once, on a two-layer tanh MSE net, a relu cross-entropy net with a FOMAML tail, and
/// a one-output regression net (its head writes the layer below's gradient in the forward
/// pass, two quads per lane at 64 threads; its 36 → 72 layer takes 4 × 8 dW tiles, the second
/// quad of the last tile column past the row; at 64 threads, in the specialized build, both of
/// its products split over 2 warp slices leave their sums to their readers, the head and the
/// first layer's update).
#[test]
fn sanitizer_small_case() {
    let Some(mut gpu) = backend() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (spec, tail) in [
        (MlpSpec::new(&[2, 33, 17, 3], Activation::Tanh, Loss::Mse).unwrap(), None),
        (MlpSpec::new(&[5, 20, 4], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap(), Some(3)),
        (MlpSpec::new(&[1, 36, 72, 1], Activation::Tanh, Loss::Mse).unwrap(), None),
    ] {
        let (n, m) = (5, 9);
        let inner = InnerLoop { lr: 0.05, steps: 3, batch_size: 4 };
        let (x, yv, lab) = random_tasks(&mut rng, &spec, n, m);
        let y = if spec.loss() == Loss::Mse { Tgt::Values(&yv) } else { Tgt::Labels(&lab) };
        let theta = Model::new(spec.clone(), 1).into_params();
        let plan = MinibatchPlan::build(n, m, &inner, tail, |i| {
            reptile::rng::stream(2, reptile::rng::Purpose::InnerShuffle, i as u64)
        })
        .unwrap();
        let (d_ref, _) = plan::cpu_deltas(&spec, &theta, &x, y, m, &plan, inner.lr, tail.is_some());
        // The fused kernel with either split (at 64 threads both nets' products split).
        gpu.set_fused_block(Some(64)).unwrap();
        for lanes in [false, true] {
            gpu.set_lane_split(lanes);
            let (d, _) =
                gpu.inner_deltas(Path::Fused, &spec, &theta, &x, y, m, &plan, inner.lr, tail.is_some()).unwrap();
            assert_close(&format!("sanitizer case lanes={lanes} delta"), &d, &d_ref, 5e-5, 1e-3);
        }
        gpu.set_lane_split(false);
        gpu.set_fused_block(None).unwrap();
        for path in [Path::Fused, Path::Tiled] {
            let (d, _) = gpu.inner_deltas(path, &spec, &theta, &x, y, m, &plan, inner.lr, tail.is_some()).unwrap();
            assert_close(&format!("sanitizer case {path:?} delta"), &d, &d_ref, 5e-5, 1e-3);
            let (out, _, finite) = gpu.interpolate(&theta, &d, n, 0.1, 0.99).unwrap();
            assert!(finite && out.len() == theta.len());
        }
    }
    // The serial sine kernel (kernel 5): three iterations in one launch, against the reference.
    let sine_spec = MlpSpec::new(&[1, 16, 8, 1], Activation::Tanh, Loss::Mse).unwrap();
    let theta = Model::new(sine_spec.clone(), 2).into_params();
    let config = ReptileConfig { planned_iters: 10, ..ReptileConfig::sine() };
    let run = gpu.train_sine_resident(&sine_spec, &theta, &config, 1, 3, 0, 3, false).unwrap();
    let want = sine::reference_run(&sine_spec, &theta, &config, 1, 3, 0, 3).unwrap();
    assert_close("sanitizer case serial θ", &run.theta, &want.theta, 1e-4, 1e-3);
}

/// One launch of the serial sine kernel (n = 1, 200 iterations of the sine demo), for a
/// profiler: its latency is the demo's.
#[test]
#[ignore = "profiling case: run explicitly on a GPU"]
fn profile_serial() {
    let Some(mut gpu) = backend() else { return };
    let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
    let theta = Model::new(spec.clone(), 0).into_params();
    let run = gpu.train_sine_resident(&spec, &theta, &ReptileConfig::sine(), 1, 0, 0, 200, false).unwrap();
    assert_eq!(run.iteration, 200);
}

/// `Trainer::train_sine_resident` (what `reptile sine --device cuda --resident` runs): two
/// calls of 40 and 20 iterations against the CPU reference of the resident loop.
#[test]
fn trainer_trains_sine_device_resident() {
    let Some(_) = backend() else { return };
    let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
    let config = ReptileConfig { planned_iters: 100, ..ReptileConfig::sine() };
    let mut trainer = Trainer::new(Model::new(spec.clone(), 3), config.clone()).unwrap();
    let theta = trainer.params().to_vec();
    trainer.set_device(reptile::Device::Cuda(0)).unwrap();
    trainer.train_sine_resident(40, 9).unwrap();
    let losses = trainer.train_sine_resident(20, 9).unwrap();
    let want = sine::reference_run(&spec, &theta, &config, 1, 9, 0, 60).unwrap();
    assert_eq!(trainer.iteration(), 60);
    assert_close("trainer θ after 60 resident iterations", trainer.params(), &want.theta, 1e-4, 1e-3);
    assert_close("losses of the last iteration", &losses, &want.losses, 1e-4, 1e-3);
}

/// `reptile_trainer_train_sine_resident` (the C ABI's device-resident sine training): serial
/// Reptile (the serial kernel) and a meta-batch of 3 (the five-launch program), two calls of
/// 40 and 20 iterations each, against the CPU reference of the resident loop.
#[test]
fn c_abi_trains_sine_device_resident() {
    use reptile::ffi::*;
    let Some(_) = backend() else { return };
    for n in [1usize, 3] {
        let mut c = std::mem::MaybeUninit::<reptile_trainer_config>::uninit();
        let (mut m, mut t) = (std::ptr::null_mut(), std::ptr::null_mut());
        let widths = [1usize, 64, 64, 1];
        // SAFETY (whole block): valid pointers and lengths; handles freed once at the end.
        unsafe {
            let size = std::mem::size_of::<reptile_trainer_config>();
            assert_eq!(reptile_trainer_config_default(size, c.as_mut_ptr()), reptile_status::Ok);
            let mut c = c.assume_init();
            (c.planned_iterations, c.meta_batch, c.backend) = (100, n, REPTILE_BACKEND_CUDA);
            let st = reptile_model_new(widths.as_ptr(), 4, REPTILE_ACTIVATION_TANH, REPTILE_LOSS_MSE, 3, &mut m);
            assert_eq!(st, reptile_status::Ok);
            assert_eq!(reptile_trainer_new(m, &c, &mut t), reptile_status::Ok);
            let spec = MlpSpec::new(&widths, Activation::Tanh, Loss::Mse).unwrap();
            let mut theta = vec![0f32; spec.num_params()];
            assert_eq!(reptile_trainer_get_params(t, theta.as_mut_ptr(), theta.len()), reptile_status::Ok);
            let mut losses = vec![f32::NAN; 2 * n];
            for chunk in [40u32, 20] {
                let st = reptile_trainer_train_sine_resident(t, chunk, 9, losses.as_mut_ptr(), losses.len());
                assert_eq!(st, reptile_status::Ok, "n = {n}");
            }
            let mut it = 0u64;
            assert_eq!(reptile_trainer_iteration(t, &mut it), reptile_status::Ok);
            assert_eq!(it, 60);
            let mut got = vec![0f32; theta.len()];
            assert_eq!(reptile_trainer_get_params(t, got.as_mut_ptr(), got.len()), reptile_status::Ok);
            let config = ReptileConfig { planned_iters: 100, meta_batch: n, ..ReptileConfig::sine() };
            let want = sine::reference_run(&spec, &theta, &config, n, 9, 0, 60).unwrap();
            assert_close(&format!("C ABI θ after 60 resident iterations, n = {n}"), &got, &want.theta, 1e-4, 1e-3);
            assert_close(&format!("C ABI losses, n = {n}"), &losses, &want.losses, 1e-4, 1e-3);
            reptile_trainer_free(t);
            reptile_model_free(m);
        }
    }
}
