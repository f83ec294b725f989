//! `reptile bench`: times the sine meta-step for users choosing settings and for comparisons
//! with other implementations. Task batches are sampled before timing (sampling is not
//! measured); after a warm-up, outer steps run for `--seconds`. The last line is exactly
//! `task_steps_per_s=<number> gflops=<number>`, FLOPs counted by `MlpSpec::step_flops` and
//! `forward_flops` (k inner steps plus the forward pass that measures the loss after
//! adaptation, per task).

use clap::Args;
use reptile::workloads::sine::SineTasks;
use reptile::{Activation, InnerLoop, Loss, MlpSpec, Model, ReptileConfig, Trainer};
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// Tasks per outer step n.
    #[arg(long, default_value_t = 32)]
    meta_batch: usize,
    /// Inner SGD steps k.
    #[arg(long, default_value_t = 5)]
    inner_steps: usize,
    /// Inner minibatch size.
    #[arg(long, default_value_t = 10)]
    inner_batch: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seconds of timed steps (after a warm-up of a quarter of that, at least 0.2 s).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Hidden widths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "64,64")]
    hidden: Vec<usize>,
    /// Where the inner loops run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: reptile::Device,
}

pub fn run(a: BenchArgs) -> reptile::Result<()> {
    if !(a.seconds.is_finite() && a.seconds > 0.0) {
        return Err(reptile::Error::InvalidArgument(format!("--seconds must be positive, got {}", a.seconds)));
    }
    let mut widths = vec![1];
    widths.extend(&a.hidden);
    widths.push(1);
    let spec = MlpSpec::new(&widths, Activation::Tanh, Loss::Mse)?;
    let config = ReptileConfig {
        train: InnerLoop { lr: 0.02, steps: a.inner_steps, batch_size: a.inner_batch },
        meta_batch: a.meta_batch,
        // A small constant ε keeps θ moving like a real run without drifting far.
        eps_start: 0.01,
        eps_end: 0.01,
        threads: a.threads,
        ..ReptileConfig::sine()
    };
    let mut trainer = Trainer::new(Model::new(spec.clone(), 0), config.clone())?;
    trainer.set_device(a.device)?;
    let mut tasks = SineTasks::new(1);
    let batches: Vec<_> = (0..8).map(|_| tasks.train_batch(&spec, a.meta_batch.max(1))).collect::<Result<_, _>>()?;
    let points = config.train.batch_for(reptile::workloads::sine::GRID_POINTS);
    let flops_per_step = a.meta_batch as f64
        * (a.inner_steps as f64 * spec.step_flops(points) as f64 + spec.forward_flops(points) as f64);

    let warm = (a.seconds / 4.0).max(0.2);
    let t = Instant::now();
    let mut k = 0;
    while t.elapsed().as_secs_f64() < warm {
        trainer.step(&batches[k % batches.len()])?;
        k += 1;
    }
    let (t, mut steps) = (Instant::now(), 0u64);
    while t.elapsed().as_secs_f64() < a.seconds {
        trainer.step(&batches[(k + steps as usize) % batches.len()])?;
        steps += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let task_steps = steps as f64 * a.meta_batch as f64 * a.inner_steps as f64 / secs;
    let gflops = steps as f64 * flops_per_step / secs / 1e9;
    println!("| setting | value |");
    println!("|---|---|");
    println!("| network | {widths:?} tanh, {} parameters |", spec.num_params());
    println!("| device, kernels | {}, {:?} |", trainer.device(), reptile::cpu::simd::isa());
    println!("| threads | {} |", trainer.threads());
    println!("| meta-batch n, inner steps k, minibatch | {}, {}, {points} |", a.meta_batch, a.inner_steps);
    println!("| outer steps timed | {steps} in {secs:.3} s ({:.1} µs each) |", secs / steps as f64 * 1e6);
    println!("| outer steps/s | {:.1} |", steps as f64 / secs);
    println!("| FLOP per outer step | {:.0} |", flops_per_step);
    println!("task_steps_per_s={task_steps:.0} gflops={gflops:.3}");
    Ok(())
}
