//! The CUDA kernels' logic on the CPU, without a GPU: `kernels/*.cu` compiled as C++ with the
//! emulation header `kernels/emu/cuda_emu.h` (each block's threads are OS threads meeting at a
//! barrier) into a shared library, loaded here, and compared with the CPU path on random small
//! specs and task batches, with output buffers poisoned (NaN) before every launch.
//!
//! Needs a C++20 compiler (`g++`, or `$CXX`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reptile::cpu::mlp::Tgt;
use reptile::cuda::plan::{self, FusedLayout, FusedParams, MinibatchPlan};
use reptile::cuda::sine;
use reptile::cuda::tiled::{self, Arg, Buf};
use reptile::meta::{InnerLoop, OuterRule};
use reptile::{Activation, Loss, MlpSpec, Model, ReptileConfig, Targets, TaskBatch, Trainer};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

unsafe extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *const c_char;
}
const RTLD_NOW: c_int = 2;

type FusedFn = unsafe extern "C" fn(
    u32,
    u32,
    usize,
    *const FusedParams,
    *const f32,
    *const f32,
    *const f32,
    *const u32,
    *const u32,
    *mut f32,
    *mut f32,
) -> c_int;
type ChunkFn = unsafe extern "C" fn(u32, u32, u32, *const f32, c_int, c_int, c_int, *mut f32) -> c_int;
type InterpFn = unsafe extern "C" fn(
    u32,
    u32,
    *const f32,
    *const f32,
    c_int,
    c_int,
    f32,
    f32,
    *mut f32,
    *mut f32,
    *mut u32,
) -> c_int;

type LaunchFn = unsafe extern "C" fn(*const c_char, u32, u32, u32, u32, usize, *const *mut c_void) -> c_int;

/// The emulation library's entry points.
struct Emu {
    launch: LaunchFn,
    fused: FusedFn,
    chunk_sums: ChunkFn,
    interpolate: InterpFn,
}

fn build_emu() -> PathBuf {
    build_emu_with("libreptile_cuda_emu.so", &[])
}

/// The emulation library built with extra compiler options (e.g. a shape specialization's
/// `-D` definitions) into `name`.
fn build_emu_with(name: &str, defines: &[String]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let k = root.join("kernels");
    let status = std::process::Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-g", "-shared", "-fPIC", "-pthread", "-Wall", "-Wextra", "-Werror", "-include"])
        .arg(k.join("emu/cuda_emu.h"))
        .args(defines)
        .args(["-x", "c++"])
        .arg(k.join("mlp_fused.cu"))
        .arg(k.join("reptile_update.cu"))
        .arg(k.join("mlp_tiled.cu"))
        .arg(k.join("sine_device.cu"))
        .arg(k.join("emu/emu_exports.cpp"))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler {cxx:?} (set CXX): {e}"));
    assert!(status.success(), "compiling the kernels with the emulation header failed ({status})");
    out
}

fn emu() -> &'static Emu {
    static EMU: OnceLock<Emu> = OnceLock::new();
    EMU.get_or_init(|| load_emu(build_emu()))
}

fn load_emu(path: PathBuf) -> Emu {
    {
        let c = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: dlopen with a valid NUL-terminated path; the library is never closed.
        let h = unsafe { dlopen(c.as_ptr(), RTLD_NOW) };
        if h.is_null() {
            // SAFETY: dlerror returns a valid C string after a failed dlopen.
            panic!("dlopen {}: {}", path.display(), unsafe { CStr::from_ptr(dlerror()) }.to_string_lossy());
        }
        let sym = |name: &str| {
            let c = CString::new(name).unwrap();
            // SAFETY: valid handle and NUL-terminated name.
            let p = unsafe { dlsym(h, c.as_ptr()) };
            assert!(!p.is_null(), "symbol {name} missing from the emulation library");
            p
        };
        // SAFETY: each symbol is the extern "C" function of kernels/emu/emu_exports.cpp with
        // exactly the signature of the corresponding type alias.
        unsafe {
            Emu {
                launch: std::mem::transmute::<*mut c_void, LaunchFn>(sym("emu_launch")),
                fused: std::mem::transmute::<*mut c_void, FusedFn>(sym("emu_fused_inner")),
                chunk_sums: std::mem::transmute::<*mut c_void, ChunkFn>(sym("emu_chunk_sums")),
                interpolate: std::mem::transmute::<*mut c_void, InterpFn>(sym("emu_interpolate")),
            }
        }
    }
}

/// How an emulated launch splits a product's reduction: over at most `n` warp slices
/// (`FusedParams::split`), or over the lanes of a warp.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Split {
    Slices(usize),
    Lanes,
}

/// The back end's default split: up to `plan::SPLIT` warp slices.
const SLICES: Split = Split::Slices(plan::SPLIT);

impl Split {
    /// `params` launched with this split.
    fn apply(self, params: plan::FusedParams) -> plan::FusedParams {
        match self {
            Split::Slices(n) => plan::FusedParams { lanes: 0, split: n as i32, ..params },
            Split::Lanes => plan::FusedParams { lanes: 1, ..params },
        }
    }
}

/// Runs the fused kernel in the emulation library `lib` ([`emu`], or a shape-specialized
/// build), with the task staging forced on or off (`stage`; `None`: as `fused_params`
/// decides) and products split as `split` says (a specialized build must have been compiled
/// for the same choice); returns (deltas [n × P], losses [n × 2]).
#[allow(clippy::too_many_arguments)]
fn run_fused(
    lib: &Emu,
    spec: &MlpSpec,
    theta: &[f32],
    x: &[f32],
    y: Tgt<'_>,
    m: usize,
    plan: &MinibatchPlan,
    lr: f32,
    fomaml: bool,
    block: u32,
    stage: Option<bool>,
    split: Split,
) -> (Vec<f32>, Vec<f32>) {
    let mut params = split.apply(plan.fused_params(spec, m, lr, fomaml).unwrap());
    if let Some(on) = stage {
        params.stage = on as i32;
    }
    // The shared memory the back end launches with: only the partial-sum buffers this block
    // size's warp slices use (an underestimate would overrun into the emulation's guard zone).
    let smem = plan::fused_launch_bytes(spec, &params, block);
    let n = plan.n_tasks;
    let mut delta = vec![f32::NAN; n * spec.num_params()];
    let mut losses = vec![f32::NAN; n * 2];
    let (yv, lab): (*const f32, *const u32) = match y {
        Tgt::Values(v) => (v.as_ptr(), std::ptr::null()),
        Tgt::Labels(l) => (std::ptr::null(), l.as_ptr()),
    };
    // SAFETY: every pointer covers the extent the kernel reads or writes for these params
    // (θ: P, x: n·m·in, y: n·m·out or labels n·m, idx: n·k·stride, delta: n·P, losses: 2n);
    // the unused target pointer is null and never read for this loss.
    let rc = unsafe {
        (lib.fused)(
            n as u32,
            block,
            smem,
            &params,
            theta.as_ptr(),
            x.as_ptr(),
            yv,
            lab,
            plan.idx.as_ptr(),
            delta.as_mut_ptr(),
            losses.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "emulated launch failed");
    (delta, losses)
}

/// Runs the two update kernels: returns (θ + scale·Σδ, Σδ, bad flag).
fn run_update(theta: &[f32], delta: &[f32], n: usize, scale: f32, keep: f32, block: u32) -> (Vec<f32>, Vec<f32>, u32) {
    let p = theta.len();
    let nc = plan::reduction_chunks(n);
    let mut partial = vec![f32::NAN; nc * p];
    let grid = p.div_ceil(block as usize) as u32;
    // The host's grid for the chunk sums; with 32 threads, one block only, so the kernel's
    // grid-stride loop over column pairs runs too.
    let grid_sums = if block == 32 { 1 } else { plan::chunk_sums_blocks(p, block) };
    // SAFETY: delta holds n·P floats, partial nc·P.
    let rc = unsafe {
        (emu().chunk_sums)(
            grid_sums,
            nc as u32,
            block,
            delta.as_ptr(),
            n as c_int,
            p as c_int,
            nc as c_int,
            partial.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    let (mut out, mut sum, mut bad) = (vec![f32::NAN; p], vec![f32::NAN; p], 0u32);
    // SAFETY: θ, out and sum hold P floats, partial nc·P, bad one u32.
    let rc = unsafe {
        (emu().interpolate)(
            grid,
            block,
            theta.as_ptr(),
            partial.as_ptr(),
            nc as c_int,
            p as c_int,
            scale,
            keep,
            out.as_mut_ptr(),
            sum.as_mut_ptr(),
            &mut bad,
        )
    };
    assert_eq!(rc, 0);
    (out, sum, bad)
}

/// `|got − want| ≤ tol + |want|·eps` everywhere; reports the worst element.
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

/// A random small spec: 1–3 layers, widths 1–20, either activation and loss.
fn random_spec(rng: &mut ChaCha8Rng) -> MlpSpec {
    let nl = rng.random_range(1..=3);
    let loss = if rng.random_bool(0.5) { Loss::Mse } else { Loss::SoftmaxCrossEntropy };
    let mut w: Vec<usize> = (0..=nl).map(|_| rng.random_range(1..=20)).collect();
    w[0] = rng.random_range(1..=6);
    if loss == Loss::SoftmaxCrossEntropy {
        w[nl] = rng.random_range(2..=7);
    } else if rng.random_bool(0.4) {
        w[nl] = 1; // a regression head: the forward pass also writes the layer below's gradient
    }
    let act = if rng.random_bool(0.5) { Activation::Tanh } else { Activation::Relu };
    MlpSpec::new(&w, act, loss).unwrap()
}

/// Random task data for `n` tasks of `m` points: x ∈ [−2, 2], y ∈ [−1.5, 1.5] or labels.
fn random_tasks(rng: &mut ChaCha8Rng, spec: &MlpSpec, n: usize, m: usize) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    let x = (0..n * m * spec.in_dim()).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let y = (0..n * m * spec.out_dim()).map(|_| rng.random_range(-1.5f32..1.5)).collect();
    let l = (0..n * m).map(|_| rng.random_range(0..spec.out_dim() as u32)).collect();
    (x, y, l)
}

#[test]
fn fused_inner_loop_matches_cpu_on_random_specs() {
    let mut worst = 0.0f32;
    let (mut lane_split_cases, mut capped_cases, mut head_cases) = (0, 0, 0);
    for case in 0..24u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + case);
        let spec = random_spec(&mut rng);
        let n = rng.random_range(1..=4);
        let m = rng.random_range(3..=12);
        let steps = rng.random_range(1..=4);
        let batch_size = match rng.random_range(0..3) {
            0 => 0,
            1 => m,
            _ => rng.random_range(1..=m + 3),
        };
        let tail = (rng.random_bool(0.3)).then(|| rng.random_range(1..m));
        let fomaml = tail.is_some() || rng.random_bool(0.2);
        let lr = rng.random_range(0.01f32..0.2);
        let inner = InnerLoop { lr, steps, batch_size };
        let theta = Model::new(spec.clone(), case).into_params();
        let (x, yv, lab) = random_tasks(&mut rng, &spec, n, m);
        let y = if spec.loss() == Loss::Mse { Tgt::Values(&yv) } else { Tgt::Labels(&lab) };
        let seed = rng.random();
        let plan = MinibatchPlan::build(n, m, &inner, tail, |i| {
            reptile::rng::stream(seed, reptile::rng::Purpose::InnerShuffle, i as u64)
        })
        .unwrap();
        let block = [32u32, 64, 96][case as usize % 3];

        let (d_ref, l_ref) = plan::cpu_deltas(&spec, &theta, &x, y, m, &plan, lr, fomaml);
        // Every other case gathers from global memory instead of the staged task; every other
        // pair splits products over lanes instead of warp slices, and the warp-slice cases
        // cap the slices at 4, 1 or 2 in turn.
        let (stage, lanes) = (case % 2 == 0, case % 4 >= 2);
        if lanes {
            lane_split_cases += (lane_split_products(&spec, plan.b.max(plan.b_last), block) > 0) as usize;
        }
        let split = if lanes { Split::Lanes } else { Split::Slices([plan::SPLIT, 1, 2][(case as usize / 4) % 3]) };
        if let Split::Slices(cap) = split {
            let (b, b_last) = (plan.b, plan.b_last);
            capped_cases += (plan::fused_splits(&spec, b, b_last, block, cap)
                < plan::fused_splits(&spec, b, b_last, block, plan::SPLIT)) as usize;
        }
        // A one-output MSE head above a hidden layer: its forward pass writes dZ_{L−2} too.
        head_cases += (spec.loss() == Loss::Mse && spec.out_dim() == 1 && spec.num_layers() >= 2) as usize;
        let (d_emu, l_emu) = run_fused(emu(), &spec, &theta, &x, y, m, &plan, lr, fomaml, block, Some(stage), split);
        let what = format!(
            "case {case}: {:?} {:?} n={n} m={m} {inner:?} tail={tail:?} block={block} stage={stage} {split:?}",
            spec.widths(),
            spec.loss()
        );
        // The deltas are differences of θ' values of size ~|θ|: scale the bound by that.
        worst = worst.max(assert_close(&format!("{what} delta"), &d_emu, &d_ref, 2e-5, 1e-4));
        assert_close(&format!("{what} losses"), &l_emu, &l_ref, 1e-5, 1e-4);
        assert!(d_ref.iter().any(|&d| d != 0.0), "{what}: the test must move θ");
    }
    // The lane cases must include products the lanes actually split.
    assert!(lane_split_cases >= 3, "only {lane_split_cases} lane cases split a product");
    // And the capped cases must include some the cap holds below the block's own split.
    assert!(capped_cases >= 1, "no case's warp slices were capped");
    assert!(head_cases >= 2, "only {head_cases} cases have a one-output head above a hidden layer");
    println!(
        "fused kernel vs CPU: worst |Δ| over 24 random cases = {worst:e} ({lane_split_cases} lane-split cases, \
         {capped_cases} with fewer warp slices than the block allows, {head_cases} with a one-output head)"
    );
}

/// Products of `spec` that the generic build splits over 2 or 4 lanes (the kernel's
/// `fused_slices` with lanes on: tiles of 4 outputs or inputs × 4 points) for minibatches of
/// `bs` points and `block` threads: forward products of layers with more than 4 inputs and
/// outputs, input-gradient products of every layer but the first.
fn lane_split_products(spec: &MlpSpec, bs: usize, block: u32) -> usize {
    let (w, block) = (spec.widths(), block as usize);
    let split = |items: usize, nq: usize| (nq >= 2 && items * 2 <= block) as usize;
    let tp = bs.div_ceil(plan::POINTS_PER_THREAD);
    (0..spec.num_layers())
        .map(|l| {
            let fwd = if w[l] > 4 && w[l + 1] > 4 { split(w[l + 1].div_ceil(4) * tp, w[l].div_ceil(4)) } else { 0 };
            let da = if l > 0 { split(w[l].div_ceil(4) * tp, w[l + 1].div_ceil(4)) } else { 0 };
            fwd + da
        })
        .sum()
}

#[test]
fn fused_inner_loop_on_deep_networks() {
    // Networks of 4 and 6 layers, where some weight updates take a phase of their own (the
    // backward pass defers W_{l+1}'s update into layer l's input-gradient phase only for
    // l = L − 2 and l = 0), with either split, staged and not. The third net's first layer is
    // wider than every block below (130 outputs on the tile path: threads own more than one
    // output's bias sum, and tiles wrap around the block). The fourth is `cuda_gpu`'s sanitizer
    // net: a one-output head that writes the layer below's gradient with 3 quads per lane (2 at
    // 128 threads), and at 64 threads 4 × 8 dW tiles whose last column's second quad is past
    // its 9-quad rows. The fifth has a head over a 30-wide layer (the last quad of each row has
    // 2 real columns); `specialized_builds_match_the_cpu` runs it where that layer's split sums
    // are left to the head's lanes to finish.
    let specs = [
        MlpSpec::new(&[3, 9, 17, 12, 4], Activation::Tanh, Loss::Mse).unwrap(),
        MlpSpec::new(&[5, 20, 7, 33, 6, 11, 4], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap(),
        MlpSpec::new(&[4, 130, 40, 3], Activation::Tanh, Loss::Mse).unwrap(),
        MlpSpec::new(&[1, 36, 72, 1], Activation::Tanh, Loss::Mse).unwrap(),
        MlpSpec::new(&[3, 20, 30, 1], Activation::Tanh, Loss::Mse).unwrap(),
    ];
    for (k, spec) in specs.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(77 + k as u64);
        let (n, m) = (3, 11);
        let inner = InnerLoop { lr: 0.2, steps: 4, batch_size: 7 };
        let theta = Model::new(spec.clone(), 40 + k as u64).into_params();
        let (x, yv, lab) = random_tasks(&mut rng, spec, n, m);
        let y = if spec.loss() == Loss::Mse { Tgt::Values(&yv) } else { Tgt::Labels(&lab) };
        let plan = MinibatchPlan::build(n, m, &inner, None, |i| {
            reptile::rng::stream(5, reptile::rng::Purpose::InnerShuffle, i as u64)
        })
        .unwrap();
        let (d_ref, l_ref) = plan::cpu_deltas(spec, &theta, &x, y, m, &plan, inner.lr, false);
        for (lanes, stage, block) in [(false, false, 64u32), (true, true, 64), (false, true, 96), (true, false, 128)] {
            let split = if lanes { Split::Lanes } else { SLICES };
            let (d, l) = run_fused(emu(), spec, &theta, &x, y, m, &plan, inner.lr, false, block, Some(stage), split);
            let what = format!("{:?} lanes={lanes} stage={stage} block={block}", spec.widths());
            assert_close(&format!("{what} delta"), &d, &d_ref, 2e-5, 1e-4);
            assert_close(&format!("{what} losses"), &l, &l_ref, 1e-5, 1e-4);
        }
    }
}

#[test]
fn fused_inner_loop_sine_shape() {
    // The sine network 1-64-64-1 with the paper's inner loop (k = 5, b = 10 of 50 points).
    let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
    let mut tasks = reptile::workloads::sine::SineTasks::new(7);
    let batch = tasks.train_batch(&spec, 3).unwrap();
    let Targets::Values(y) = batch.y() else { unreachable!() };
    let theta = Model::new(spec.clone(), 7).into_params();
    let inner = ReptileConfig::sine().train;
    let plan = MinibatchPlan::training(3, 50, &inner, OuterRule::Reptile, 5, 0, 0).unwrap();
    let (d_ref, l_ref) = plan::cpu_deltas(&spec, &theta, batch.x(), Tgt::Values(y), 50, &plan, inner.lr, false);
    // At 128 threads (the generic build's tiles of 4 points) both 64-wide products split 2
    // ways: over warps, or over lanes; or, with one warp slice at most, not at all.
    assert_eq!(lane_split_products(&spec, 10, 128), 2);
    for split in [SLICES, Split::Slices(1), Split::Lanes] {
        let (d_emu, l_emu) =
            run_fused(emu(), &spec, &theta, batch.x(), Tgt::Values(y), 50, &plan, inner.lr, false, 128, None, split);
        let worst = assert_close(&format!("sine delta ({split:?})"), &d_emu, &d_ref, 1e-5, 1e-4);
        assert_close(&format!("sine losses ({split:?})"), &l_emu, &l_ref, 1e-5, 1e-4);
        println!(
            "sine 1-64-64-1, k=5, b=10, {split:?}: shared memory {} B, worst |Δ| = {worst:e}",
            FusedLayout::new(&spec, 10).bytes()
        );
    }
}

#[test]
fn specialized_builds_match_the_cpu() {
    // The fused kernel built with compile-time shapes (REPTILE_SPEC, as the back end compiles
    // it per shape with NVRTC) on the sine net (Reptile) and a cross-entropy net with a FOMAML
    // tail (b ≠ b_last), against the CPU path; block sizes whose products split over warps.
    let mut rng = ChaCha8Rng::seed_from_u64(404);
    // Each also with products split over lanes: the sine net at 128 threads as the back end
    // launches it for many tasks (tiles of 5 points: both 64-wide products split over 4 lanes).
    let sine = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
    let ce = MlpSpec::new(&[6, 40, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
    // And the sine net at 128 threads with at most 3 warp slices (16 quads in slices of 6, 6
    // and 4: the n = 4096 launch with `set_warp_slices(3)`). With warp slices, the sine net's
    // 64 → 64 layer leaves its split sums for the one-output head to finish as it reads them
    // (no epilogue phase); so does `head30`'s 20 → 30 layer (2 slices at 64 threads), whose rows
    // end in a quad with 2 real columns (the partial sums' padding is never cleared).
    let head30 = MlpSpec::new(&[3, 20, 30, 1], Activation::Tanh, Loss::Mse).unwrap();
    let cases = [
        (head30, None, 64u32, "head30", SLICES),
        (sine.clone(), None, 96, "sine", SLICES),
        (sine.clone(), None, 128, "sine_lanes", Split::Lanes),
        (sine, None, 128, "sine_slices3", Split::Slices(3)),
        (ce.clone(), Some(3), 64, "ce", SLICES),
        (ce, Some(3), 64, "ce_lanes", Split::Lanes),
    ];
    for (spec, tail, block, name, split) in cases {
        let (n, m) = (3, 12);
        let inner = InnerLoop { lr: 0.03, steps: 3, batch_size: 10 };
        let plan = MinibatchPlan::build(n, m, &inner, tail, |i| {
            reptile::rng::stream(9, reptile::rng::Purpose::InnerShuffle, i as u64)
        })
        .unwrap();
        let fomaml = tail.is_some();
        let params = split.apply(plan.fused_params(&spec, m, inner.lr, fomaml).unwrap());
        let mut defines = plan::FusedShape::new(&params, block).defines();
        // With the shapes constant, some helpers no longer read their FusedParams argument.
        defines.push("-Wno-unused-parameter".into());
        let lib = load_emu(build_emu_with(&format!("libreptile_cuda_emu_{name}.so"), &defines));
        let theta = Model::new(spec.clone(), 5).into_params();
        let x: Vec<f32> = (0..n * m * spec.in_dim()).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let yv: Vec<f32> = (0..n * m * spec.out_dim()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let lab: Vec<u32> = (0..n * m).map(|_| rng.random_range(0..spec.out_dim() as u32)).collect();
        let y = if spec.loss() == Loss::Mse { Tgt::Values(&yv) } else { Tgt::Labels(&lab) };
        let (d_ref, l_ref) = plan::cpu_deltas(&spec, &theta, &x, y, m, &plan, inner.lr, fomaml);
        let (d, l) = run_fused(&lib, &spec, &theta, &x, y, m, &plan, inner.lr, fomaml, block, None, split);
        let worst = assert_close(&format!("{name} specialized delta"), &d, &d_ref, 5e-5, 1e-3);
        assert_close(&format!("{name} specialized losses"), &l, &l_ref, 1e-5, 1e-3);
        println!("{name} specialized (block {block}): worst |Δ| = {worst:e}");
    }
}

#[test]
fn meta_step_matches_the_cpu_trainer() {
    // The whole Reptile/FOMAML step: host minibatch plan + fused kernel + reduction +
    // interpolation, against Trainer::task_deltas / apply_delta on the same batches; with and
    // without an outer decay (keep = 1 − ε·λ = 0.85 at the first iteration with λ = 0.3).
    let cases = [
        (OuterRule::Reptile, 0.0f32),
        (OuterRule::Reptile, 0.3),
        (OuterRule::Fomaml { tail: None }, 0.1),
        (OuterRule::Fomaml { tail: Some(2) }, 0.0),
    ];
    for (case, (outer, outer_decay)) in cases.into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(77 + case as u64);
        let spec = MlpSpec::new(&[2, 12, 9, 3], Activation::Tanh, Loss::Mse).unwrap();
        let config = ReptileConfig {
            train: InnerLoop { lr: 0.05, steps: 3, batch_size: 4 },
            outer,
            seed: 11,
            threads: 1,
            eps_start: 0.5,
            planned_iters: 10,
            outer_decay,
            ..ReptileConfig::sine()
        };
        let mut trainer = Trainer::new(Model::new(spec.clone(), 3), config.clone()).unwrap();
        let mut theta = trainer.model().params().to_vec();
        let (n, m) = (70, 7); // more tasks than reduction chunks: chunks of 1 and 2 tasks
        for it in 0..3u64 {
            let (x, y, _) = random_tasks(&mut rng, &spec, n, m);
            let batch = TaskBatch::new(&spec, n, m, x.clone(), Targets::Values(y.clone().into())).unwrap();
            let cpu = trainer.task_deltas(&batch, 0).unwrap();
            let plan = MinibatchPlan::training(n, m, &config.train, outer, config.seed, it, 0).unwrap();
            let fomaml = outer != OuterRule::Reptile;
            let (d, losses) = run_fused(
                emu(),
                &spec,
                &theta,
                &x,
                Tgt::Values(&y),
                m,
                &plan,
                config.train.lr,
                fomaml,
                64,
                None,
                SLICES,
            );
            let scale = config.epsilon(it) / n as f32;
            let (out, sum, bad) = run_update(&theta, &d, n, scale, config.keep(config.epsilon(it)), 64);
            assert_eq!(bad, 0);
            let what = format!("{outer:?}, outer decay {outer_decay}, iteration {it}");
            assert_close(&format!("{what} Σδ"), &sum, &cpu.sum, 1e-4, 1e-3);
            let lb: f64 = losses.iter().step_by(2).map(|&v| v as f64).sum();
            let la: f64 = losses.iter().skip(1).step_by(2).map(|&v| v as f64).sum();
            assert!(
                (lb - cpu.loss_before_sum).abs() <= 1e-4 * cpu.loss_before_sum.abs() + 1e-5,
                "{what}: {lb} vs {}",
                cpu.loss_before_sum
            );
            assert!(
                (la - cpu.loss_after_sum).abs() <= 1e-4 * cpu.loss_after_sum.abs() + 1e-5,
                "{what}: {la} vs {}",
                cpu.loss_after_sum
            );
            trainer.apply_delta(&cpu).unwrap();
            assert_close(&format!("{what} θ"), &out, trainer.model().params(), 1e-5, 1e-5);
            theta = trainer.model().params().to_vec();
        }
    }
}

#[test]
fn reduction_is_chunked_in_fixed_order_and_interpolates() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for &(n, p) in &[(1usize, 37usize), (3, 300), (64, 129), (100, 257), (130, 64)] {
        let theta: Vec<f32> = (0..p).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let delta: Vec<f32> = (0..n * p).map(|_| rng.random_range(-0.1f32..0.1)).collect();
        let scale = 0.3 / n as f32;
        // An outer decay's factor (1 at every other size: the undecayed update).
        let keep = if n % 2 == 0 { rng.random_range(0.9f32..1.0) } else { 1.0 };
        let (out, sum, bad) = run_update(&theta, &delta, n, scale, keep, if p % 2 == 1 { 32 } else { 64 });
        assert_eq!(bad, 0);
        // Bit-exact against the CPU trainer's order: chunk c sums its tasks from 0 in order,
        // chunk sums are added in chunk order.
        let nc = plan::reduction_chunks(n);
        for j in 0..p {
            let mut s = 0.0f32;
            for c in 0..nc {
                let (a, b) = (c * n / nc, (c + 1) * n / nc);
                let cs = (a..b).fold(0.0f32, |acc, i| acc + delta[i * p + j]);
                s = if c == 0 { cs } else { s + cs };
            }
            assert_eq!(sum[j].to_bits(), s.to_bits(), "n={n} sum[{j}]");
            // The CPU trainer's rounding on an FMA machine: fma(scale, Σδ, θ), then ·keep.
            let v = scale.mul_add(s, theta[j]) * keep;
            assert_eq!(out[j].to_bits(), v.to_bits(), "n={n} out[{j}] with keep = {keep}");
        }
        // Against f64.
        let want: Vec<f32> = (0..p)
            .map(|j| {
                let s: f64 = (0..n).map(|i| delta[i * p + j] as f64).sum();
                ((theta[j] as f64 + scale as f64 * s) * keep as f64) as f32
            })
            .collect();
        assert_close(&format!("n={n} θ, keep = {keep}"), &out, &want, 1e-6 * n as f32, 1e-6);
    }
    // A non-finite delta raises the flag.
    let theta = vec![0.5f32; 100];
    let mut delta = vec![0.01f32; 300];
    delta[250] = f32::INFINITY;
    let (_, _, bad) = run_update(&theta, &delta, 3, 0.1, 1.0, 32);
    assert_eq!(bad, 1, "an infinite delta must be reported");
}

#[test]
fn emulation_detects_shared_memory_overrun() {
    // Too little dynamic shared memory: the kernel writes into the guard zone and the
    // emulated launch reports it (so the layout computation is checked, not trusted).
    let spec = MlpSpec::new(&[3, 8, 2], Activation::Relu, Loss::Mse).unwrap();
    let inner = InnerLoop { lr: 0.1, steps: 2, batch_size: 4 };
    let plan = MinibatchPlan::build(1, 6, &inner, None, |i| {
        reptile::rng::stream(1, reptile::rng::Purpose::InnerShuffle, i as u64)
    })
    .unwrap();
    let mut params = plan.fused_params(&spec, 6, 0.1, false).unwrap();
    // No staged task: the cut below must land inside the guard zone, not past it.
    params.stage = 0;
    let theta = Model::new(spec.clone(), 1).into_params();
    let x = [0.3f32; 18];
    let y = [0.1f32; 12];
    let (mut d, mut l) = (vec![0.0f32; spec.num_params()], vec![0.0f32; 2]);
    // One warp never splits a product over warp slices, so the split buffers at the end of
    // the layout go unused: cut 40 floats more than those.
    let split_floats = (reptile::cuda::plan::SPLIT - 1) * plan.stride * plan::ld4(8);
    let short = FusedLayout::new(&spec, plan.stride).bytes() - 4 * (split_floats + 40);
    // SAFETY: buffers sized as in run_fused; only the shared memory is short (emulated).
    let rc = unsafe {
        (emu().fused)(
            1,
            32,
            short,
            &params,
            theta.as_ptr(),
            x.as_ptr(),
            y.as_ptr(),
            std::ptr::null(),
            plan.idx.as_ptr(),
            d.as_mut_ptr(),
            l.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 2, "an overrun of dynamic shared memory must be detected");
}

/// Host memory for a launch program: every buffer as u32 words (floats by bits), created
/// poisoned (NaN), kept across runs of the program.
struct EmuMem {
    bufs: Vec<Vec<u32>>,
}

impl EmuMem {
    fn new(prog: &tiled::TiledProgram) -> Self {
        EmuMem { bufs: Buf::ALL.iter().map(|&b| vec![u32::MAX; prog.size(b).max(1)]).collect() }
    }
    fn slot(b: Buf) -> usize {
        Buf::ALL.iter().position(|&x| x == b).unwrap()
    }
    fn put(&mut self, b: Buf, words: &[u32]) {
        self.bufs[Self::slot(b)][..words.len()].copy_from_slice(words);
    }
    fn put_f32(&mut self, b: Buf, v: &[f32]) {
        self.put(b, &v.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
    fn get_f32(&self, b: Buf, len: usize) -> Vec<f32> {
        self.bufs[Self::slot(b)][..len].iter().map(|&w| f32::from_bits(w)).collect()
    }
    fn get(&self, b: Buf, len: usize) -> Vec<u32> {
        self.bufs[Self::slot(b)][..len].to_vec()
    }

    /// Runs the launches in order through `emu_launch`, exactly as the CUDA back end would
    /// (same kernels, shapes and arguments; buffers bound to this memory).
    fn run(&mut self, prog: &tiled::TiledProgram) {
        for (k, launch) in prog.launches.iter().enumerate() {
            let mut structs: Vec<Box<FusedParams>> = Vec::new();
            let mut vals: Vec<u64> = Vec::with_capacity(launch.args.len());
            for a in &launch.args {
                vals.push(match *a {
                    Arg::Ptr(b, off) => {
                        let v = &mut self.bufs[Self::slot(b)];
                        assert!(off <= v.len(), "launch {k} {}: offset {off} past {b:?}", launch.kernel);
                        // SAFETY: off ≤ len (checked), so the pointer is in bounds or one past.
                        unsafe { v.as_mut_ptr().add(off) as u64 }
                    }
                    Arg::I32(v) => v as u32 as u64,
                    Arg::F32(v) => v.to_bits() as u64,
                    Arg::Fused(p) => {
                        structs.push(Box::new(p));
                        0
                    }
                });
            }
            let mut si = 0;
            let params: Vec<*mut c_void> = launch
                .args
                .iter()
                .zip(vals.iter_mut())
                .map(|(a, v)| match a {
                    Arg::Fused(_) => {
                        si += 1;
                        &mut *structs[si - 1] as *mut FusedParams as *mut c_void
                    }
                    _ => v as *mut u64 as *mut c_void,
                })
                .collect();
            let name = CString::new(launch.kernel).unwrap();
            // SAFETY: `params` holds one pointer per kernel argument: to an 8-byte slot whose low
            // bytes (little-endian) are the int, float or pointer the kernel expects, or to the
            // FusedParams struct; buffers are sized by the program and are not reallocated
            // during the call.
            let rc = unsafe {
                (emu().launch)(
                    name.as_ptr(),
                    launch.grid[0],
                    launch.grid[1],
                    launch.grid[2],
                    launch.block,
                    launch.smem as usize,
                    params.as_ptr(),
                )
            };
            assert_eq!(rc, 0, "launch {k} ({}) failed", launch.kernel);
        }
    }
}

/// Runs the tiled path's launch sequence in the emulation (outputs and scratch poisoned).
#[allow(clippy::too_many_arguments)]
fn run_tiled(
    spec: &MlpSpec,
    theta: &[f32],
    x: &[f32],
    y: Tgt<'_>,
    m: usize,
    plan: &MinibatchPlan,
    lr: f32,
    fomaml: bool,
) -> (Vec<f32>, Vec<f32>) {
    let prog = tiled::program(spec, plan, m, lr, fomaml, None).unwrap();
    let mut mem = EmuMem::new(&prog);
    mem.put_f32(Buf::Theta, theta);
    mem.put_f32(Buf::X, x);
    match y {
        Tgt::Values(v) => mem.put_f32(Buf::Y, v),
        Tgt::Labels(l) => mem.put(Buf::Labels, l),
    }
    mem.put(Buf::Idx, &plan.idx);
    mem.run(&prog);
    (mem.get_f32(Buf::Delta, plan.n_tasks * spec.num_params()), mem.get_f32(Buf::Losses, 2 * plan.n_tasks))
}

#[test]
fn tiled_path_matches_cpu_on_random_specs() {
    let mut worst = 0.0f32;
    for case in 0..12u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(5000 + case);
        let spec = random_spec(&mut rng);
        let n = rng.random_range(1..=3);
        let m = rng.random_range(3..=20);
        let steps = rng.random_range(1..=3);
        let batch_size = match rng.random_range(0..3) {
            0 => 0,
            1 => m,
            _ => rng.random_range(1..=m + 3),
        };
        let tail = (rng.random_bool(0.3)).then(|| rng.random_range(1..m));
        let fomaml = tail.is_some() || rng.random_bool(0.2);
        let lr = rng.random_range(0.01f32..0.2);
        let inner = InnerLoop { lr, steps, batch_size };
        let theta = Model::new(spec.clone(), case).into_params();
        let (x, yv, lab) = random_tasks(&mut rng, &spec, n, m);
        let y = if spec.loss() == Loss::Mse { Tgt::Values(&yv) } else { Tgt::Labels(&lab) };
        let seed = rng.random();
        let plan = MinibatchPlan::build(n, m, &inner, tail, |i| {
            reptile::rng::stream(seed, reptile::rng::Purpose::InnerShuffle, i as u64)
        })
        .unwrap();
        let (d_ref, l_ref) = plan::cpu_deltas(&spec, &theta, &x, y, m, &plan, lr, fomaml);
        let (d_emu, l_emu) = run_tiled(&spec, &theta, &x, y, m, &plan, lr, fomaml);
        let what =
            format!("tiled case {case}: {:?} {:?} n={n} m={m} {inner:?} tail={tail:?}", spec.widths(), spec.loss());
        worst = worst.max(assert_close(&format!("{what} delta"), &d_emu, &d_ref, 2e-5, 1e-4));
        assert_close(&format!("{what} losses"), &l_emu, &l_ref, 1e-5, 1e-4);
    }
    println!("tiled path vs CPU: worst |Δ| over 12 random cases = {worst:e}");
}

/// Adam (β1 = 0) on the tiled path against `Trainer::task_deltas` on the CPU (random small
/// specs and one wider than a tile in every dimension): moments carried
/// (from random starting moments after 7 Adam steps, so the bias correction and the start are
/// both exercised) or reset per task; Reptile and FOMAML with a tail; MSE and cross-entropy;
/// three outer iterations, each from the CPU trainer's state. ε = 1e-3 keeps g/(√v + ε) well
/// conditioned, as in tests/adam.rs: with ε = 1e-8 a gradient within rounding of zero moves its
/// weight by up to α·√(1 − β2^t) in either direction on either path.
#[test]
fn tiled_adam_matches_the_cpu_trainer() {
    use reptile::meta::{AdamMoments, InnerOptimizer};
    let mut worst = 0.0f32;
    for case in 0..8u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(7000 + case);
        let mut spec = random_spec(&mut rng);
        if case == 6 {
            // Past one 16-wide tile in every dimension, as tiled_path_on_a_wide_network.
            spec = MlpSpec::new(&[37, 70, 33, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
        }
        let (n, m) = (rng.random_range(1..=4), rng.random_range(4..=20));
        let steps = rng.random_range(1..=3);
        let batch_size = if rng.random_bool(0.5) { 0 } else { rng.random_range(1..=m) };
        let carry = case % 2 == 0;
        let outer =
            if case % 4 == 3 { OuterRule::Fomaml { tail: Some(rng.random_range(1..m)) } } else { OuterRule::Reptile };
        let (beta2, eps) = (0.999f32, 1e-3f32);
        let config = ReptileConfig {
            train: InnerLoop { lr: rng.random_range(0.002f32..0.02), steps, batch_size },
            inner_optimizer: InnerOptimizer::Adam { beta2, eps },
            train_moments: if carry { AdamMoments::Carry } else { AdamMoments::Reset },
            outer,
            seed: rng.random(),
            threads: 1,
            eps_start: 0.5,
            planned_iters: 10,
            ..ReptileConfig::sine()
        };
        let p = spec.num_params();
        let mut trainer = Trainer::new(Model::new(spec.clone(), case), config.clone()).unwrap();
        if carry {
            let v: Vec<f32> = (0..p).map(|_| rng.random_range(0.0f32..0.01)).collect();
            trainer.set_adam_moments(&v, 7).unwrap();
        }
        for it in 0..3u64 {
            let (x, yv, lab) = random_tasks(&mut rng, &spec, n, m);
            let (y, targets) = if spec.loss() == Loss::Mse {
                (Tgt::Values(&yv), Targets::Values(yv.clone().into()))
            } else {
                (Tgt::Labels(&lab), Targets::Labels(lab.clone().into()))
            };
            let batch = TaskBatch::new(&spec, n, m, x.clone(), targets).unwrap();
            let theta = trainer.params().to_vec();
            let (v0, t0) = match trainer.adam_moments() {
                (v, t) if carry => (v.to_vec(), t),
                _ => (vec![0.0f32; p], 0),
            };
            assert_eq!(t0, if carry { 7 + it * steps as u64 } else { 0 });
            let cpu = trainer.task_deltas(&batch, 0).unwrap();

            let plan = MinibatchPlan::training(n, m, &config.train, outer, config.seed, it, 0).unwrap();
            let adam = tiled::TiledAdam { beta2, eps, t0 };
            let fomaml = outer != OuterRule::Reptile;
            let prog = tiled::program(&spec, &plan, m, config.train.lr, fomaml, Some(adam)).unwrap();
            let mut mem = EmuMem::new(&prog);
            mem.put_f32(Buf::Theta, &theta);
            mem.put_f32(Buf::MomentsIn, &v0);
            mem.put_f32(Buf::X, &x);
            match y {
                Tgt::Values(v) => mem.put_f32(Buf::Y, v),
                Tgt::Labels(l) => mem.put(Buf::Labels, l),
            }
            mem.put(Buf::Idx, &plan.idx);
            mem.run(&prog);
            let (d, vs) = (mem.get_f32(Buf::Delta, n * p), mem.get_f32(Buf::Moments, n * p));
            let losses = mem.get_f32(Buf::Losses, 2 * n);
            let task_sum = |a: &[f32]| -> Vec<f32> { (0..p).map(|j| (0..n).map(|t| a[t * p + j]).sum()).collect() };
            let what = format!(
                "Adam case {case} it {it}: {:?} {:?} n={n} m={m} {:?} carry={carry} {outer:?}",
                spec.widths(),
                spec.loss(),
                config.train
            );
            worst = worst.max(assert_close(&format!("{what} Σδ"), &task_sum(&d), &cpu.sum, 2e-5, 1e-4));
            if carry {
                assert_close(&format!("{what} Σv"), &task_sum(&vs), &cpu.moments_sum, 1e-7, 1e-4);
            } else {
                assert!(cpu.moments_sum.is_empty());
            }
            let lb: f64 = losses.iter().step_by(2).map(|&v| v as f64).sum();
            let la: f64 = losses.iter().skip(1).step_by(2).map(|&v| v as f64).sum();
            for (got, want) in [(lb, cpu.loss_before_sum), (la, cpu.loss_after_sum)] {
                assert!((got - want).abs() <= 1e-4 * want.abs() + 1e-5, "{what}: loss {got} vs {want}");
            }
            trainer.apply_delta(&cpu).unwrap();
        }
    }
    println!("tiled Adam vs CPU trainer: worst |Δ| of Σδ over 8 cases × 3 iterations = {worst:e}");
}

#[test]
fn tiled_path_on_a_wide_network() {
    // Widths past one 16-wide tile in every dimension (K, M and N loops with ragged edges).
    let spec = MlpSpec::new(&[37, 70, 33, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let (n, m) = (2, 25);
    let inner = InnerLoop { lr: 0.05, steps: 2, batch_size: 20 };
    let theta = Model::new(spec.clone(), 9).into_params();
    let (x, _, lab) = random_tasks(&mut rng, &spec, n, m);
    let plan = MinibatchPlan::training(n, m, &inner, OuterRule::Reptile, 1, 3, 0).unwrap();
    let (d_ref, l_ref) = plan::cpu_deltas(&spec, &theta, &x, Tgt::Labels(&lab), m, &plan, inner.lr, false);
    let (d_emu, l_emu) = run_tiled(&spec, &theta, &x, Tgt::Labels(&lab), m, &plan, inner.lr, false);
    let worst = assert_close("wide delta", &d_emu, &d_ref, 2e-5, 1e-4);
    assert_close("wide losses", &l_emu, &l_ref, 1e-5, 1e-4);
    println!("tiled 37-70-33-5, b=20: worst |Δ| = {worst:e}");
}

#[test]
fn philox_matches_the_random123_known_answers() {
    // Known-answer vectors of Random123 (kat_vectors, philox4x32 with 10 rounds).
    assert_eq!(sine::philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
    assert_eq!(sine::philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
    assert_eq!(
        sine::philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

fn sine_setup(n: usize, steps: usize, batch_size: usize, lr: f32) -> (MlpSpec, ReptileConfig, Vec<f32>) {
    let spec = MlpSpec::new(&[1, 24, 16, 1], Activation::Tanh, Loss::Mse).unwrap();
    let config = ReptileConfig {
        train: InnerLoop { lr, steps, batch_size },
        eps_start: 0.3,
        eps_end: 0.05,
        planned_iters: 4,
        ..ReptileConfig::sine()
    };
    let _ = n;
    let theta = Model::new(spec.clone(), 21).into_params();
    (spec, config, theta)
}

#[test]
fn device_sine_sampling_matches_the_cpu_sampler() {
    let (spec, config, theta) = sine_setup(5, 3, 20, 0.02);
    let (n, seed, it) = (5, 0x1234_5678_9abc_def0u64, 7u32);
    let prog = sine::resident_program(&spec, &config, n, seed).unwrap();
    let sample = tiled::TiledProgram { launches: prog.launches[..1].to_vec(), sizes: prog.sizes.clone() };
    let mut mem = EmuMem::new(&prog);
    mem.put_f32(Buf::Theta, &theta);
    mem.put(Buf::Iter, &[it]);
    mem.run(&sample);
    let (x, y, plan) = sine::sample_tasks(seed, it, n, 3, 20);
    assert_eq!(mem.get(Buf::Idx, plan.idx.len()), plan.idx, "minibatch lists");
    assert_eq!(mem.get_f32(Buf::X, x.len()), x, "grid");
    assert_close("sine targets", &mem.get_f32(Buf::Y, y.len()), &y, 1e-6, 1e-6);
    // The draws are task parameters within range, and the 60 indices span two shuffled passes
    // (each pass a permutation of the 50 points).
    for t in 0..n {
        let l = &plan.idx[t * 60..][..60];
        let mut first: Vec<u32> = l[..50].to_vec();
        first.sort_unstable();
        assert_eq!(first, (0..50).collect::<Vec<_>>());
        let amp = y[t * 50..][..50].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!((0.05..=5.0).contains(&amp), "task {t}: amplitude {amp}");
    }
}

#[test]
fn device_resident_sine_loop_matches_the_cpu_reference() {
    let cases = [
        (OuterRule::Reptile, 0.02f32, 5u32, 0.0f32),
        (OuterRule::Reptile, 0.02, 5, 0.4),
        (OuterRule::Fomaml { tail: None }, 0.05, 3, 0.0),
    ];
    for (outer, lr, iters, outer_decay) in cases {
        let (spec, mut config, theta) = sine_setup(3, 2, 10, lr);
        config.outer = outer;
        config.outer_decay = outer_decay;
        let (n, seed, start) = (3, 99u64, 2u32);
        let prog = sine::resident_program(&spec, &config, n, seed).unwrap();
        let mut mem = EmuMem::new(&prog);
        mem.put_f32(Buf::Theta, &theta);
        mem.put(Buf::Iter, &[start]);
        mem.put(Buf::Bad, &[0]);
        for _ in 0..iters {
            mem.run(&prog);
        }
        let want = sine::reference_run(&spec, &theta, &config, n, seed, start, iters).unwrap();
        assert!(!want.diverged);
        assert_eq!(mem.get(Buf::Iter, 1)[0] as u64, want.iteration);
        assert_eq!(mem.get(Buf::Bad, 1)[0], 0);
        let got = mem.get_f32(Buf::Theta, theta.len());
        let what = format!("{outer:?}, outer decay {outer_decay}");
        let worst = assert_close(&format!("{what} θ"), &got, &want.theta, 1e-5, 1e-4);
        assert_close(&format!("{what} losses"), &mem.get_f32(Buf::Losses, 2 * n), &want.losses, 1e-5, 1e-4);
        assert!(got.iter().zip(&theta).any(|(a, b)| a != b), "θ must move");
        if outer_decay != 0.0 {
            // The reference applies the decay: without it, θ differs by far more than the bound.
            let plain = ReptileConfig { outer_decay: 0.0, ..config.clone() };
            let undecayed = sine::reference_run(&spec, &theta, &plain, n, seed, start, iters).unwrap();
            let far = undecayed.theta.iter().zip(&want.theta).any(|(a, b)| (a - b).abs() > 1e-3 + 1e-2 * b.abs());
            assert!(far, "the decay must change θ");
        }
        println!("resident sine loop {what}, {iters} iterations: worst |Δθ| = {worst:e}");
    }
}

#[test]
fn device_resident_loop_stops_at_divergence_keeping_theta() {
    // A step size large enough to overflow: the first update is non-finite, so nothing is
    // committed, in the kernels as in the reference.
    let (spec, config, theta) = sine_setup(2, 2, 10, 1e30);
    let prog = sine::resident_program(&spec, &config, 2, 5).unwrap();
    let mut mem = EmuMem::new(&prog);
    mem.put_f32(Buf::Theta, &theta);
    mem.put(Buf::Iter, &[0]);
    mem.put(Buf::Bad, &[0]);
    for _ in 0..3 {
        mem.run(&prog);
    }
    let want = sine::reference_run(&spec, &theta, &config, 2, 5, 0, 3).unwrap();
    assert!(want.diverged && want.iteration == 0);
    assert_eq!(mem.get(Buf::Bad, 1)[0], 1, "divergence flag");
    assert_eq!(mem.get(Buf::Iter, 1)[0], 0, "iteration counter frozen at the failing iteration");
    assert_eq!(mem.get_f32(Buf::Theta, theta.len()), theta, "θ keeps its last finite value");
}

#[test]
fn serial_sine_kernel_matches_the_cpu_reference() {
    // Kernel 5 (serial Reptile, many iterations per launch) against the CPU reference of the
    // resident loop for n = 1: three iterations as launches of 2 and 1, from iteration 5 (the
    // ε schedule is past its end there: planned_iters = 4), then from iteration 0.
    // The second pass with an outer decay; the third at 128 threads with products split over
    // lanes (the 64-wide products split 2 ways there).
    for (start, counts, outer_decay, lanes) in
        [(5u32, [2u32, 1], 0.0f32, false), (0, [1, 2], 0.5, false), (0, [1, 2], 0.5, true)]
    {
        let (spec, mut config, theta) = sine_setup(1, 3, 10, 0.02);
        config.outer_decay = outer_decay;
        let seed = 0x0bad_cafe_u64;
        let mut prog = sine::serial_program(&spec, &config, seed, if lanes { 128 } else { 64 }).unwrap();
        if lanes {
            let b = prog.launches[0].args.iter_mut().find_map(|a| if let Arg::Fused(p) = a { Some(p) } else { None });
            let p = b.expect("the serial launch takes FusedParams");
            assert_eq!(lane_split_products(&spec, p.b as usize, 128), 2);
            p.lanes = 1;
        }
        let mut mem = EmuMem::new(&prog);
        mem.put_f32(Buf::Theta, &theta);
        mem.put(Buf::Iter, &[start]);
        mem.put(Buf::Bad, &[0]);
        for c in counts {
            sine::set_serial_count(&mut prog, c);
            mem.run(&prog);
        }
        let want = sine::reference_run(&spec, &theta, &config, 1, seed, start, 3).unwrap();
        assert!(!want.diverged);
        assert_eq!(mem.get(Buf::Iter, 1)[0] as u64, want.iteration);
        assert_eq!(mem.get(Buf::Bad, 1)[0], 0);
        let got = mem.get_f32(Buf::Theta, theta.len());
        let worst = assert_close("serial θ", &got, &want.theta, 1e-5, 1e-4);
        assert_close("serial losses", &mem.get_f32(Buf::Losses, 2), &want.losses, 1e-5, 1e-4);
        assert!(got.iter().zip(&theta).any(|(a, b)| a != b), "θ must move");
        println!(
            "serial sine kernel from {start}, launches of {counts:?}, outer decay {outer_decay}, lanes {lanes}: \
             worst |Δθ| = {worst:e}"
        );
    }
}

#[test]
fn serial_sine_kernel_stops_at_divergence_keeping_theta() {
    // Two good iterations, then a launch whose step size overflows: its first candidate is
    // non-finite, so θ stays at the two-iteration value, the counter at the failing iteration,
    // and a later launch changes nothing.
    let (spec, config, theta) = sine_setup(1, 2, 10, 0.02);
    let mut prog = sine::serial_program(&spec, &config, 5, 32).unwrap();
    let mut mem = EmuMem::new(&prog);
    mem.put_f32(Buf::Theta, &theta);
    mem.put(Buf::Iter, &[0]);
    mem.put(Buf::Bad, &[0]);
    sine::set_serial_count(&mut prog, 2);
    mem.run(&prog);
    let good = mem.get_f32(Buf::Theta, theta.len());
    let want = sine::reference_run(&spec, &theta, &config, 1, 5, 0, 2).unwrap();
    assert_close("θ after two iterations", &good, &want.theta, 1e-5, 1e-4);
    let mut wild = config;
    wild.train.lr = 1e30;
    let mut bad_prog = sine::serial_program(&spec, &wild, 5, 32).unwrap();
    sine::set_serial_count(&mut bad_prog, 3);
    mem.run(&bad_prog);
    assert_eq!(mem.get(Buf::Bad, 1)[0], 1, "divergence flag");
    assert_eq!(mem.get(Buf::Iter, 1)[0], 2, "iteration counter frozen at the failing iteration");
    assert_eq!(mem.get_f32(Buf::Theta, theta.len()), good, "θ keeps its last finite value");
    assert!(mem.get_f32(Buf::Losses, 2)[1].is_nan(), "no loss after adaptation for a failed iteration");
    mem.run(&prog);
    assert_eq!(mem.get(Buf::Iter, 1)[0], 2, "a launch after a divergence does nothing");
    assert_eq!(mem.get_f32(Buf::Theta, theta.len()), good);
}

#[test]
fn resident_sine_training_refuses_what_it_cannot_run() {
    // The resident loop's inner steps are SGD: an Adam config is refused, not run as SGD.
    let (spec, mut config, _) = sine_setup(1, 2, 10, 0.02);
    config.inner_optimizer = reptile::meta::InnerOptimizer::Adam { beta2: 0.999, eps: 1e-8 };
    assert!(matches!(sine::check(&spec, &config), Err(reptile::cuda::CudaError::Unsupported(_))));
    assert!(sine::serial_program(&spec, &config, 0, 64).is_err());
    // A trainer on the CPU has no GPU to keep the loop on: a clear error, θ untouched.
    let (spec, config, theta) = sine_setup(1, 2, 10, 0.02);
    let mut trainer = reptile::Trainer::new(Model::from_params(spec, theta.clone()).unwrap(), config).unwrap();
    let err = trainer.train_sine_resident(10, 0).unwrap_err();
    assert!(matches!(err, reptile::Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("CUDA"), "{err}");
    // Zero iterations leave no losses to return: refused before anything else.
    let err = trainer.train_sine_resident(0, 0).unwrap_err();
    assert!(err.to_string().contains("at least 1 iteration"), "{err}");
    assert_eq!(trainer.params(), &theta[..]);
    assert_eq!(trainer.iteration(), 0);
    // The device counts iterations in 32 bits: a run past 2^32 − 1 is refused up front.
    trainer.set_iteration(u32::MAX as u64 - 5);
    let err = trainer.train_sine_resident(6, 0).unwrap_err();
    assert!(matches!(err, reptile::Error::InvalidArgument(_)) && err.to_string().contains("32 bits"), "{err}");
    trainer.set_iteration(0);
    // Config problems are reported before the missing device, on any machine.
    let (spec, mut config, theta) = sine_setup(1, 2, 10, 0.02);
    config.inner_optimizer = reptile::meta::InnerOptimizer::Adam { beta2: 0.999, eps: 1e-8 };
    let mut adam = reptile::Trainer::new(Model::from_params(spec, theta.clone()).unwrap(), config).unwrap();
    let err = adam.train_sine_resident(10, 0).unwrap_err();
    assert!(
        matches!(err, reptile::Error::InvalidArgument(_)) && err.to_string().contains("inner loop is SGD"),
        "{err}"
    );
    assert_eq!((adam.params(), adam.iteration()), (&theta[..], 0));
}
