//! Every kernel compiles through the crate's own NVRTC path for sm_80 and sm_90, and assembles
//! with `ptxas -v` without register spills. Needs NVRTC (not a GPU): `.ci/run` installs the
//! `nvidia-cuda-nvrtc` and `nvidia-cuda-nvcc` wheels into `target/cuda-venv` and points
//! `LD_LIBRARY_PATH` at NVRTC and `REPTILE_PTXAS` at ptxas. Without NVRTC the tests print why
//! and pass, unless `REPTILE_REQUIRE_NVRTC=1` (CI sets it), which makes a missing tool an error.

use reptile::cuda::kernels::{self, FAMILIES, KernelFamily};
use reptile::cuda::plan::{FusedLayout, MinibatchPlan};
use reptile::cuda::{CudaError, nvrtc_version};
use reptile::meta::InnerLoop;
use reptile::{Activation, Loss, MlpSpec};
use std::path::PathBuf;
use std::process::Command;

const ARCHS: &[(&str, &str)] = &[("compute_80", "sm_80"), ("compute_90", "sm_90")];

/// Kernels allowed a stack frame (local memory; never spills), with the reason. Every other
/// kernel must have none: a stack frame there means a dynamically indexed local array.
const LOCAL_MEMORY_ALLOWED: &[(&str, &str)] = &[
    ("reptile_sine_sample", "sinf's large-argument reduction table (never reached: |x + φ| < 12)"),
    ("reptile_sine_serial", "the same sinf table (the serial loop draws its tasks with the same code)"),
];

fn required() -> bool {
    std::env::var("REPTILE_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

/// NVRTC's version, or None (after printing why) when the test should be skipped.
fn nvrtc() -> Option<(i32, i32)> {
    match nvrtc_version() {
        Ok(v) => Some(v),
        Err(e) if !required() => {
            println!("SKIPPED: {e} (set REPTILE_REQUIRE_NVRTC=1 to make this an error)");
            None
        }
        Err(e) => panic!("REPTILE_REQUIRE_NVRTC=1 but NVRTC is unavailable: {e}"),
    }
}

fn ptxas() -> Option<PathBuf> {
    let cand = std::env::var_os("REPTILE_PTXAS").map(PathBuf::from).unwrap_or_else(|| "ptxas".into());
    match Command::new(&cand).arg("--version").output() {
        Ok(o) if o.status.success() => Some(cand),
        _ if required() => panic!("REPTILE_REQUIRE_NVRTC=1 but ptxas ({}) does not run", cand.display()),
        _ => {
            println!("SKIPPED ptxas: {} does not run (set REPTILE_PTXAS)", cand.display());
            None
        }
    }
}

/// Per-function `ptxas -v` facts.
#[derive(Debug, Default)]
struct PtxasInfo {
    function: String,
    registers: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
    smem: u32,
}

/// Parses `ptxas -v` output: "Compiling entry function 'f'", "N bytes stack frame, N bytes
/// spill stores, N bytes spill loads", "Used N registers, ... N bytes smem, ...".
fn parse_ptxas(text: &str) -> Vec<PtxasInfo> {
    let num_before = |line: &str, key: &str| -> Option<u32> {
        let i = line.find(key)?;
        line[..i].split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty())?.parse().ok()
    };
    let mut out: Vec<PtxasInfo> = Vec::new();
    for line in text.lines() {
        if let Some(i) = line.find("Compiling entry function '") {
            let name = &line[i + "Compiling entry function '".len()..];
            out.push(PtxasInfo {
                function: name.trim_end_matches(['\'', ' ']).split('\'').next().unwrap().into(),
                ..Default::default()
            });
        } else if let Some(cur) = out.last_mut() {
            if line.contains("spill stores") {
                cur.stack = num_before(line, "bytes stack frame").unwrap_or(u32::MAX);
                cur.spill_stores = num_before(line, "bytes spill stores").unwrap_or(u32::MAX);
                cur.spill_loads = num_before(line, "bytes spill loads").unwrap_or(u32::MAX);
            } else if line.contains("Used") && line.contains("registers") {
                cur.registers = num_before(line, "registers").unwrap_or(u32::MAX);
                cur.smem = num_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_spills() {
    let Some((major, minor)) = nvrtc() else { return };
    let ptxas = ptxas();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ptx");
    std::fs::create_dir_all(&dir).unwrap();
    let mut table = vec![
        format!("NVRTC {major}.{minor}"),
        "| kernel | arch | registers | stack B | spill st/ld B | static smem B |".into(),
        "|---|---|---|---|---|---|".into(),
    ];
    for fam in FAMILIES {
        for &(virt, real) in ARCHS {
            let ptx = kernels::compile_ptx(fam, virt).unwrap_or_else(|e| panic!("{}: {e}", fam.file));
            for entry in fam.entry_points {
                assert!(ptx.contains(&format!(".entry {entry}(")), "{} for {virt} lacks .entry {entry}", fam.file);
            }
            let path = dir.join(format!("{}.{real}.ptx", fam.file));
            std::fs::write(&path, &ptx).unwrap();
            let Some(ptxas) = &ptxas else { continue };
            let out = Command::new(ptxas)
                .args(["-v", &format!("-arch={real}"), "-o", "/dev/null"])
                .arg(&path)
                .output()
                .unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "ptxas {real} {}: {text}", fam.file);
            let infos = parse_ptxas(&text);
            for entry in fam.entry_points {
                let info = infos
                    .iter()
                    .find(|i| i.function == *entry)
                    .unwrap_or_else(|| panic!("no ptxas info for {entry}:\n{text}"));
                assert!(info.registers > 0 && info.registers < 255, "{entry} {real}: {info:?}");
                if *entry == "reptile_fused_inner" || *entry == "reptile_sine_serial" {
                    // Blocks of up to 512 threads (CudaBackend::set_fused_block) must fit the
                    // 64K-register file: at most 128 registers per thread.
                    assert!(info.registers <= 128, "{entry} {real}: {} registers", info.registers);
                }
                assert_eq!((info.spill_stores, info.spill_loads), (0, 0), "{entry} {real} spills:\n{text}");
                if !LOCAL_MEMORY_ALLOWED.iter().any(|(k, _)| k == entry) {
                    assert_eq!(
                        info.stack, 0,
                        "{entry} {real} uses local memory (a dynamically indexed array?):\n{text}"
                    );
                }
                table.push(format!(
                    "| {entry} | {real} | {} | {} | {}/{} | {} |",
                    info.registers, info.stack, info.spill_stores, info.spill_loads, info.smem
                ));
            }
        }
    }
    let sine = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
    table.push(format!(
        "dynamic shared memory of reptile_fused_inner, sine 1-64-64-1 with b = 10: {} B",
        FusedLayout::new(&sine, 10).bytes()
    ));
    println!("{}", table.join("\n"));
}

/// Writes `ptx` to `path`, assembles it with `ptxas -v` for sm_90 (which must succeed) and
/// returns `entry`'s facts with ptxas's text.
fn assemble_sm90(ptxas: &std::path::Path, path: &std::path::Path, ptx: &str, entry: &str) -> (PtxasInfo, String) {
    std::fs::write(path, ptx).unwrap();
    let out = Command::new(ptxas).args(["-v", "-arch=sm_90", "-o", "/dev/null"]).arg(path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ptxas {}: {text}", path.display());
    let info = parse_ptxas(&text)
        .into_iter()
        .find(|i| i.function == entry)
        .unwrap_or_else(|| panic!("no ptxas info for {entry}:\n{text}"));
    (info, text)
}

#[test]
fn specialized_fused_kernels_compile_without_spills() {
    // The shape-specialized builds (REPTILE_SPEC) the back end compiles at run time: the sine
    // net (the benchmark's shape), a cross-entropy net with a FOMAML tail (b ≠ b_last), and the
    // deepest network the kernels take, each at two block sizes.
    let Some(_) = nvrtc() else { return };
    let ptxas = ptxas();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ptx");
    std::fs::create_dir_all(&dir).unwrap();
    let inner = InnerLoop { lr: 0.02, steps: 5, batch_size: 10 };
    let cases = [
        (MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap(), None),
        (MlpSpec::new(&[6, 40, 5], Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap(), Some(3)),
        (MlpSpec::new(&[3, 9, 17, 5, 33, 8, 2, 11, 4], Activation::Tanh, Loss::Mse).unwrap(), None),
    ];
    let mut table = vec![];
    for (case, (spec, tail)) in cases.iter().enumerate() {
        let plan = MinibatchPlan::build(2, 12, &inner, *tail, |i| {
            reptile::rng::stream(1, reptile::rng::Purpose::InnerShuffle, i as u64)
        })
        .unwrap();
        let params = plan.fused_params(spec, 12, 0.02, tail.is_some()).unwrap();
        for block in [128u32, 256] {
            // As the back end launches them: 128 threads for many tasks (gathers from global
            // memory), 256 for few (task staged in shared memory).
            let params = reptile::cuda::plan::FusedParams { stage: (block == 256) as i32, ..params };
            let defs = reptile::cuda::plan::FusedShape::new(&params, block).defines();
            let ptx = kernels::compile_ptx_with(&kernels::MLP_FUSED, "compute_90", &defs)
                .unwrap_or_else(|e| panic!("case {case} block {block}: {e}"));
            let Some(ptxas) = &ptxas else { continue };
            let name = format!("mlp_fused.spec{case}.b{block}.sm_90.ptx");
            let (info, text) = assemble_sm90(ptxas, &dir.join(name), &ptx, "reptile_fused_inner");
            // Spills cost speed, not correctness: the benchmark's shape (the sine net) must have
            // none; the others are reported.
            if case == 0 {
                assert_eq!((info.spill_stores, info.spill_loads, info.stack), (0, 0, 0), "sine block {block}:\n{text}");
            }
            table.push(format!(
                "| specialized {:?} b={block} stage={} | sm_90 | {} | {} | {}/{} |",
                spec.widths(),
                params.stage,
                info.registers,
                info.stack,
                info.spill_stores,
                info.spill_loads
            ));
        }
    }
    // The sine net as the back end builds it for the benchmark's launch on an H200 (n = 4096
    // tasks on 132 SMs of 228 KB, 128 threads, not staged): registers bounded for the blocks
    // its shared memory holds (plan::occupancy_blocks), with products split over warp slices
    // and over lanes (no partial-sum buffers: more blocks per SM, so a tighter bound), and
    // over at most 3 warp slices (`set_warp_slices(3)`: one buffer fewer, 6 blocks). None may
    // spill, and each must get the registers its blocks need.
    let sine = &cases[0].0;
    let plan = MinibatchPlan { idx: vec![], n_tasks: 4096, steps: 5, b: 10, b_last: 10, stride: 10 };
    let h200 = plan.fused_params(sine, 50, 0.02, false).unwrap();
    for (lanes, split, min_blocks) in [(0, 4, 5), (1, 4, 7), (0, 3, 6)] {
        let params = reptile::cuda::plan::FusedParams { stage: 0, lanes, split, ..h200 };
        let bytes = reptile::cuda::plan::fused_launch_bytes(sine, &params, 128);
        let blocks = reptile::cuda::plan::occupancy_blocks(bytes, 128, 4096, 132, 228 * 1024);
        assert!(blocks >= min_blocks, "lanes {lanes} split {split}: {bytes} B per task allow {blocks} blocks");
        let defs = reptile::cuda::plan::FusedShape::new(&params, 128).with_min_blocks(blocks).defines();
        let ptx = kernels::compile_ptx_with(&kernels::MLP_FUSED, "compute_90", &defs).unwrap();
        let Some(ptxas) = &ptxas else { continue };
        let name = if split == 4 { format!("lanes{lanes}") } else { format!("slices{split}") };
        let path = dir.join(format!("mlp_fused.h200.{name}.b128.sm_90.ptx"));
        let (info, text) = assemble_sm90(ptxas, &path, &ptx, "reptile_fused_inner");
        assert_eq!((info.spill_stores, info.spill_loads, info.stack), (0, 0, 0), "{name}:\n{text}");
        assert!(info.registers as usize * 128 * blocks as usize <= 65536, "{name}: {} registers", info.registers);
        table.push(format!(
            "| specialized {:?} b=128 lanes={lanes} split={split}, {bytes} B, bound to {blocks} blocks/SM | sm_90 | {} | {} | {}/{} |",
            sine.widths(),
            info.registers,
            info.stack,
            info.spill_stores,
            info.spill_loads
        ));
    }
    // The serial sine kernel as the back end builds it for the demo (256 threads, staged).
    let plan = MinibatchPlan { idx: vec![], n_tasks: 1, steps: 5, b: 10, b_last: 10, stride: 10 };
    let params = reptile::cuda::plan::FusedParams { stage: 1, ..plan.fused_params(sine, 50, 0.02, false).unwrap() };
    let mut defs = reptile::cuda::plan::FusedShape::new(&params, 256).defines();
    defs.push("-DREPTILE_SPEC_SERIAL=1".into());
    let ptx = kernels::compile_ptx_with(&kernels::MLP_FUSED, "compute_90", &defs).unwrap();
    assert!(ptx.contains("reptile_sine_serial") && !ptx.contains(".entry reptile_fused_inner"));
    if let Some(ptxas) = &ptxas {
        let path = dir.join("mlp_fused.serial.b256.sm_90.ptx");
        let (info, text) = assemble_sm90(ptxas, &path, &ptx, "reptile_sine_serial");
        assert_eq!((info.spill_stores, info.spill_loads), (0, 0), "serial sine kernel spills:\n{text}");
        table.push(format!(
            "| specialized serial {:?} b=256 | sm_90 | {} | {} | {}/{} |",
            sine.widths(),
            info.registers,
            info.stack,
            info.spill_stores,
            info.spill_loads
        ));
    }
    println!("{}", table.join("\n"));
}

#[test]
fn a_compile_error_carries_the_nvrtc_log() {
    if nvrtc().is_none() {
        return;
    }
    let broken = KernelFamily {
        file: "broken.cu",
        source: "#include \"common.cuh\"\nextern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }\n",
        entry_points: &["k"],
    };
    match kernels::compile_ptx(&broken, "compute_80") {
        Err(CudaError::Nvrtc { kernel, log, .. }) => {
            assert_eq!(kernel, "broken.cu");
            assert!(log.contains("undefined_name"), "log should name the error: {log}");
        }
        other => panic!("expected an NVRTC error, got {other:?}"),
    }
}

#[test]
fn ptxas_output_is_parsed() {
    // The parser the spill check relies on, on a verbatim ptxas 13 report.
    let text = "ptxas info    : 0 bytes gmem\nptxas info    : Compiling entry function 'reptile_fused_inner' for 'sm_90'\nptxas info    : Function properties for reptile_fused_inner\n    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\nptxas info    : Used 40 registers, used 1 barriers, 8 bytes stack frame, 16 bytes smem, 456 bytes cmem[0]\n";
    let i = parse_ptxas(text);
    assert_eq!(i.len(), 1);
    assert_eq!(i[0].function, "reptile_fused_inner");
    assert_eq!((i[0].registers, i[0].stack, i[0].spill_stores, i[0].spill_loads, i[0].smem), (40, 8, 4, 12, 16));
}
