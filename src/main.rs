//! The `reptile` command: meta-train and evaluate the papers' workloads from the shell.
//!
//! - `reptile sine`: Reptile on the sine-wave regression (the paper's / OpenAI demo's setup by
//!   default), with a progress bar, evaluation before and after, a safetensors checkpoint, a
//!   PNG of the model adapting to a new task, and `summary.json`.
//! - `reptile eval --checkpoint F`: re-evaluates a saved sine model.
//! - `reptile omniglot`: Omniglot N-way K-shot classification ([`omniglot_cmd`]).
//! - `reptile bench`: times the sine meta-step ([`bench_cmd`]).

#[path = "cli/bench.rs"]
mod bench_cmd;
#[path = "cli/omniglot.rs"]
mod omniglot_cmd;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reptile::io::{checkpoint, plot};
use reptile::workloads::sine::{self, SineTasks};
use reptile::{Activation, EvalReport, InnerLoop, Loss, MlpSpec, Model, OuterRule, ReptileConfig, Trainer};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "reptile",
    version,
    about = "Reptile meta-learning: fast CPU kernels, sine-wave and few-shot workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Meta-train the sine-wave regressor of the Reptile paper (defaults = the paper's demo).
    Sine(SineArgs),
    /// Re-evaluate a saved sine checkpoint with the paper's protocol.
    Eval(EvalArgs),
    /// Meta-train on Omniglot N-way K-shot classification (MLP, softmax cross-entropy).
    Omniglot(omniglot_cmd::OmniglotArgs),
    /// Time the sine meta-step; the last line is `task_steps_per_s=<n> gflops=<n>`.
    Bench(bench_cmd::BenchArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Act {
    Tanh,
    Relu,
}

#[derive(Args)]
struct SineArgs {
    /// Outer iterations.
    #[arg(long, default_value_t = 30_000)]
    iterations: u64,
    /// Hidden layer widths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "64,64")]
    hidden: Vec<usize>,
    /// Hidden activation.
    #[arg(long, value_enum, default_value = "tanh")]
    activation: Act,
    /// Inner SGD step size α.
    #[arg(long, default_value_t = 0.02)]
    inner_lr: f32,
    /// Inner SGD steps k per task.
    #[arg(long, default_value_t = 5)]
    inner_steps: usize,
    /// Inner minibatch size (0 = all 50 points).
    #[arg(long, default_value_t = 10)]
    inner_batch: usize,
    /// Tasks per outer step n (1 = serial Reptile).
    #[arg(long, default_value_t = 1)]
    meta_batch: usize,
    /// Outer step size ε at the start (annealed linearly).
    #[arg(long, default_value_t = 0.1)]
    eps_start: f32,
    /// Outer step size ε at the end.
    #[arg(long, default_value_t = 0.0)]
    eps_end: f32,
    /// Decoupled decay λ of θ in the outer step, `θ ← (1 − ε·λ)·(θ + ε·mean Δ)` (0: the
    /// paper's update).
    #[arg(long, default_value_t = 0.0)]
    outer_decay: f32,
    /// Use first-order MAML instead of Reptile for the outer direction.
    #[arg(long)]
    foml: bool,
    /// With --foml: points held out for the final inner minibatch.
    #[arg(long)]
    foml_tail: Option<usize>,
    #[command(flatten)]
    eval: EvalOpts,
    /// Seed for initialization, tasks and minibatch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (0 = all cores); results do not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Where meta-training's inner loops run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: reptile::Device,
    /// With --device cuda: keep meta-training on the GPU, tasks drawn there (Philox) with no
    /// host round-trip per iteration (serial Reptile: a thousand iterations per launch). The
    /// tasks are the same family but not the same draws as without it. SGD, no --foml-tail.
    #[arg(long)]
    resident: bool,
    /// Output folder for the checkpoint, the figure and summary.json.
    #[arg(long, default_value = "runs/sine")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Clone)]
struct EvalOpts {
    /// Evaluation tasks (the protocol asks for ≥ 1000).
    #[arg(long, default_value_t = 1000)]
    eval_tasks: usize,
    /// Support points per evaluation task, drawn from the grid.
    #[arg(long, default_value_t = 10)]
    eval_shots: usize,
    /// Full-batch SGD steps at evaluation.
    #[arg(long, default_value_t = 32)]
    eval_steps: usize,
    /// SGD step size at evaluation.
    #[arg(long, default_value_t = 0.02)]
    eval_lr: f32,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint written by `reptile sine`.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    eval: EvalOpts,
    /// Seed of the evaluation tasks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Also draw the adaptation figure into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Sine(a) => run_sine(a),
        Command::Eval(a) => run_eval(a),
        Command::Omniglot(a) => omniglot_cmd::run(a),
        Command::Bench(a) => bench_cmd::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Seed offsets so training tasks, evaluation tasks and the figure's task never coincide.
const EVAL_SEED: u64 = 0x5EED_E7A1;
const PLOT_SEED: u64 = 0x5EED_0F16;

fn eval_steps_list(steps: usize) -> Vec<usize> {
    let mut v = vec![0, 8, steps];
    v.sort_unstable();
    v.dedup();
    v
}

fn print_report(title: &str, r: &EvalReport) {
    println!("{title}");
    println!("  {:>6}  {:>10}  {:>10}", "steps", "mean MSE", "median MSE");
    for (j, s) in r.steps.iter().enumerate() {
        println!("  {:>6}  {:>10.4}  {:>10.4}", s, r.mean_loss(j), r.median_loss(j));
    }
}

fn report_json(r: &EvalReport) -> serde_json::Value {
    serde_json::json!(
        r.steps
            .iter()
            .enumerate()
            .map(|(j, s)| serde_json::json!({
                "steps": s, "mean_mse": r.mean_loss(j), "median_mse": r.median_loss(j)
            }))
            .collect::<Vec<_>>()
    )
}

fn run_sine(a: SineArgs) -> reptile::Result<()> {
    let act = match a.activation {
        Act::Tanh => Activation::Tanh,
        Act::Relu => Activation::Relu,
    };
    let mut widths = vec![1];
    widths.extend(&a.hidden);
    widths.push(1);
    let spec = MlpSpec::new(&widths, act, Loss::Mse)?;
    let config = ReptileConfig {
        train: InnerLoop { lr: a.inner_lr, steps: a.inner_steps, batch_size: a.inner_batch },
        eval: InnerLoop { lr: a.eval.eval_lr, steps: a.eval.eval_steps, batch_size: 0 },
        meta_batch: a.meta_batch,
        eps_start: a.eps_start,
        eps_end: a.eps_end,
        planned_iters: a.iterations.max(1),
        outer: if a.foml { OuterRule::Fomaml { tail: a.foml_tail } } else { OuterRule::Reptile },
        seed: a.seed,
        threads: a.threads,
        outer_decay: a.outer_decay,
        ..ReptileConfig::sine()
    };
    if a.foml_tail.is_some() && !a.foml {
        return Err(reptile::Error::InvalidArgument("--foml-tail needs --foml".into()));
    }
    if a.resident && !matches!(a.device, reptile::Device::Cuda(_)) {
        return Err(reptile::Error::InvalidArgument("--resident needs --device cuda (or cuda:N)".into()));
    }
    if a.resident && a.iterations > u32::MAX as u64 {
        return Err(reptile::Error::InvalidArgument("--resident runs at most 2^32 − 1 iterations".into()));
    }
    if a.resident {
        // Before the device is opened and the first evaluation runs.
        reptile::cuda::sine::check(&spec, &config)
            .map_err(|e| reptile::Error::InvalidArgument(format!("--resident cannot run this config: {e}")))?;
    }
    std::fs::create_dir_all(&a.out).map_err(|e| reptile::Error::Io { path: a.out.clone(), source: e })?;
    let mut trainer = Trainer::new(Model::new(spec.clone(), a.seed), config.clone())?;
    trainer.set_device(a.device)?;
    println!(
        "reptile sine ({}{}): MLP {:?} {:?}, {} parameters; {} iterations, n = {}, k = {}, α = {}, ε {} → {}, {} threads",
        trainer.device(),
        if a.resident { ", device-resident" } else { "" },
        widths,
        act,
        spec.num_params(),
        a.iterations,
        a.meta_batch,
        a.inner_steps,
        a.inner_lr,
        a.eps_start,
        a.eps_end,
        trainer.threads()
    );

    let steps_list = eval_steps_list(a.eval.eval_steps);
    let eval_tasks =
        SineTasks::new(a.seed ^ EVAL_SEED).eval_tasks(&spec, a.eval.eval_tasks.max(1), a.eval.eval_shots)?;
    let before = trainer.evaluate_at(&eval_tasks, &steps_list)?;
    print_report(&format!("before meta-training ({} tasks):", a.eval.eval_tasks.max(1)), &before);

    let pb = progress_bar(a.iterations, a.quiet);
    let mut tasks = SineTasks::new(a.seed);
    let mut running = f32::NAN;
    let t0 = Instant::now();
    let mut result = Ok(());
    let report_every = (a.iterations / 10).max(1);
    // One round is one iteration on the host path, or a chunk of up to a thousand
    // device-resident iterations (--resident; its loss is the chunk's last iteration's).
    let mut i = 0u64;
    while i < a.iterations {
        let round = if a.resident {
            let c = (a.iterations - i).min(1000);
            trainer
                .train_sine_resident(c as u32, a.seed)
                .map(|l| (c, l.iter().skip(1).step_by(2).sum::<f32>() / a.meta_batch as f32, 0.1))
        } else {
            let batch = tasks.train_batch(&spec, a.meta_batch)?;
            trainer.step(&batch).map(|s| (1, s.loss_after, 0.01))
        };
        let (c, after, w) = match round {
            Ok(r) => r,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        running = if running.is_nan() { after } else { (1.0 - w) * running + w * after };
        i += c;
        if i % 64 < c || i == a.iterations {
            pb.set_position(i);
            let rate = i as f64 / t0.elapsed().as_secs_f64();
            pb.set_message(format!("{rate:.0} it/s, post-adaptation loss {running:.4}"));
        }
        if pb.is_hidden() && !a.quiet && i % report_every < c {
            println!("  iteration {i:>7}/{}: running post-adaptation loss {running:.4}", a.iterations);
        }
    }
    let train_s = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let done = trainer.iteration();
    let ckpt = a.out.join("sine.safetensors");
    checkpoint::save(&ckpt, trainer.model(), Some(&config), done)?;
    if result.is_err() {
        eprintln!("saved the last finite parameters (iteration {done}) to {}", ckpt.display());
    }
    result?;
    let task_steps = done as f64 * a.meta_batch as f64 * a.inner_steps as f64;
    let flops = task_steps * spec.step_flops(config.train.batch_for(sine::GRID_POINTS)) as f64;
    println!(
        "trained {done} iterations in {train_s:.3} s: {:.0} it/s, {:.0} task-steps/s, {:.2} GFLOP/s",
        done as f64 / train_s,
        task_steps / train_s,
        flops / train_s / 1e9
    );

    let after = trainer.evaluate_at(&eval_tasks, &steps_list)?;
    print_report(&format!("after meta-training ({} tasks):", a.eval.eval_tasks.max(1)), &after);
    let png = a.out.join("sine.png");
    draw_figure(&trainer, &png, a.seed, a.eval.eval_shots, a.eval.eval_steps)?;
    let summary = serde_json::json!({
        "iterations": done, "train_seconds": train_s, "threads": trainer.threads(), "resident": a.resident,
        "spec": spec, "config": config,
        "eval_tasks": a.eval.eval_tasks.max(1),
        "before": report_json(&before), "after": report_json(&after),
    });
    let sp = a.out.join("summary.json");
    std::fs::write(&sp, serde_json::to_string_pretty(&summary).unwrap())
        .map_err(|e| reptile::Error::Io { path: sp.clone(), source: e })?;
    println!("wrote {}, {} and {}", ckpt.display(), png.display(), sp.display());
    Ok(())
}

pub(crate) fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(10));
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40.cyan/blue}] {human_pos}/{human_len} (eta {eta}) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}

/// Adapts to one fresh task and draws the blog's figure: truth, support points, predictions
/// after 0, 8, 16, 24, 32 (or `steps/4` multiples) steps.
fn draw_figure(trainer: &Trainer, png: &Path, seed: u64, shots: usize, steps: usize) -> reptile::Result<()> {
    let spec = trainer.spec();
    let (tasks, params) = SineTasks::new(seed ^ PLOT_SEED).eval_tasks_with_params(spec, 1, shots)?;
    let task = params[0];
    let support = tasks.support().task(0).expect("one task");
    let dense: Vec<f32> = (0..=200).map(|i| -5.0 + 10.0 * i as f32 / 200.0).collect();
    let truth =
        plot::Series { label: "true function".into(), points: dense.iter().map(|&x| (x, task.eval(x))).collect() };
    let sx = support.x();
    let sy = match support.y() {
        reptile::Targets::Values(v) => v.to_vec(),
        reptile::Targets::Labels(_) => unreachable!("sine tasks are regression"),
    };
    let mut preds = Vec::new();
    let mut marks: Vec<usize> = (0..=4).map(|q| q * steps / 4).collect();
    marks.dedup();
    for s in marks {
        let model = if s == 0 { trainer.model().clone() } else { trainer.adapt(&support, s)? };
        let y = model.predict(&dense)?;
        preds.push(plot::Series { label: format!("after {s} steps"), points: dense.iter().copied().zip(y).collect() });
    }
    let pts: Vec<(f32, f32)> = sx.iter().copied().zip(sy).collect();
    plot::sine_adaptation(
        png,
        &format!("Reptile sine: adapting from {shots} points (A = {:.2}, φ = {:.2})", task.amplitude, task.phase),
        &truth,
        &pts,
        &preds,
    )
}

fn run_eval(a: EvalArgs) -> reptile::Result<()> {
    let c = checkpoint::load(&a.checkpoint)?;
    let spec = c.model.spec().clone();
    if spec.in_dim() != 1 || spec.out_dim() != 1 || spec.loss() != Loss::Mse {
        return Err(reptile::Error::InvalidArgument(format!(
            "{} is not a sine model (spec {:?}); `reptile eval` evaluates sine checkpoints",
            a.checkpoint.display(),
            spec.widths()
        )));
    }
    let mut config = c.config.clone().unwrap_or_default();
    config.eval = InnerLoop { lr: a.eval.eval_lr, steps: a.eval.eval_steps, batch_size: 0 };
    config.threads = a.threads;
    let trainer = Trainer::new(c.model, config)?;
    println!("{}: MLP {:?}, trained {} iterations", a.checkpoint.display(), spec.widths(), c.iteration);
    let tasks = SineTasks::new(a.seed ^ EVAL_SEED).eval_tasks(&spec, a.eval.eval_tasks.max(1), a.eval.eval_shots)?;
    let r = trainer.evaluate_at(&tasks, &eval_steps_list(a.eval.eval_steps))?;
    print_report(&format!("evaluation ({} tasks, {} shots):", a.eval.eval_tasks.max(1), a.eval.eval_shots), &r);
    if let Some(p) = a.plot {
        draw_figure(&trainer, &p, a.seed, a.eval.eval_shots, a.eval.eval_steps)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
