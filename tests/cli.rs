//! The `reptile` command end to end: a short `sine` run writes its checkpoint, figure and
//! summary; `eval` reads them back; `bench` ends with its machine-readable line; bad input
//! exits non-zero with a message.

use std::process::Command;

fn reptile(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_reptile")).args(args).output().expect("run reptile")
}

#[test]
fn sine_writes_outputs_and_eval_reads_them() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-sine");
    let _ = std::fs::remove_dir_all(&dir);
    let out = reptile(&[
        "sine",
        "--iterations",
        "2000",
        "--eval-tasks",
        "100",
        "--threads",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for f in ["sine.safetensors", "sine.png", "summary.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let png = std::fs::read(dir.join("sine.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["iterations"], 2000);
    let after = summary["after"].as_array().unwrap().last().unwrap()["mean_mse"].as_f64().unwrap();
    let before = summary["before"].as_array().unwrap().last().unwrap()["mean_mse"].as_f64().unwrap();
    assert!(after < before, "meta-training did not help: {before} → {after}");
    let ckpt = dir.join("sine.safetensors");
    let ev = reptile(&["eval", "--checkpoint", ckpt.to_str().unwrap(), "--eval-tasks", "50"]);
    assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
    assert!(String::from_utf8_lossy(&ev.stdout).contains("trained 2000 iterations"));
}

#[test]
fn bench_ends_with_its_machine_readable_line() {
    let out = reptile(&["bench", "--seconds", "0.3", "--meta-batch", "4", "--threads", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap();
    let rest = last.strip_prefix("task_steps_per_s=").unwrap_or_else(|| panic!("last line {last:?}"));
    let (tsps, gflops) = rest.split_once(" gflops=").unwrap();
    let (tsps, gflops): (f64, f64) = (tsps.parse().unwrap(), gflops.parse().unwrap());
    assert!(tsps > 0.0 && gflops > 0.0, "{last}");
}

#[test]
fn bad_input_exits_nonzero_with_a_message() {
    for args in [
        &["sine", "--inner-lr", "nan", "--iterations", "10"][..],
        &["sine", "--hidden", "0", "--iterations", "10"],
        &["eval", "--checkpoint", "/nonexistent/x.safetensors"],
        &["bench", "--seconds", "-1"],
        &["omniglot", "--data", "/nonexistent", "--iterations", "1"],
        &["omniglot", "--average-tail", "1.5", "--iterations", "1"],
        &["omniglot", "--eval-moments", "carry", "--iterations", "0"],
        &["omniglot", "--eval-moments", "carry", "--train-moments", "reset", "--iterations", "1"],
        &["sine", "--resident", "--iterations", "10"],
    ] {
        let out = reptile(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{args:?}: no message on stderr: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

#[test]
fn resident_training_refuses_a_config_it_cannot_run_before_anything_else() {
    // On any machine (the config is checked before the device is opened): a clear message,
    // and no output folder.
    let out_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-resident-refused");
    let _ = std::fs::remove_dir_all(&out_dir);
    let args = ["sine", "--device", "cuda", "--resident", "--foml", "--foml-tail", "2", "--iterations", "10", "--out"];
    let out = reptile(&[&args[..], &[out_dir.to_str().unwrap()]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--resident cannot run this config") && err.contains("FOMAML tail"), "{err}");
    assert!(!out_dir.exists(), "the refused run created {}", out_dir.display());
}

#[test]
fn omniglot_trains_then_evaluates_its_checkpoint() {
    let Some(data) = reptile::workloads::omniglot::Omniglot::find_data_dir() else {
        eprintln!("skipped: Omniglot zips not found (set REPTILE_OMNIGLOT_DIR or provide ../shared/data/omniglot)");
        return;
    };
    let tmp = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join("cli-omniglot");
    let _ = std::fs::remove_dir_all(&dir);
    // The same cache file as tests/omniglot.rs, so only the first test binary preprocesses.
    let cache = tmp.join("omniglot-test").join("omniglot28.bin");
    let (data, cache, out) = (data.to_str().unwrap(), cache.to_str().unwrap(), dir.to_str().unwrap());
    let common = ["omniglot", "--data", data, "--cache", cache, "--hidden", "32", "--threads", "1", "--quiet"];
    let train = [
        &common[..],
        &["--iterations", "40", "--eval-every", "0", "--eval-tasks", "10", "--final-tasks", "30", "--train-shift", "1"],
        &["--out", out],
    ]
    .concat();
    let o = reptile(&train);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}\n{}", String::from_utf8_lossy(&o.stderr));
    for f in ["omniglot.safetensors", "accuracy.png", "summary.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert!(text.contains("GFLOP/s"), "{text}");
    // The default tail average: θ's mean over the last 40% of the 40 iterations.
    assert!(text.contains("keeping the mean of θ over the last 16 iterations"), "{text}");
    // Evaluation only, on 5-shot tasks, from the checkpoint, with the support augmented by
    // ±1 px shifts and each query scored over its 9 views within ±1 px (300 tasks: two blocks
    // of the blocked evaluation): no new checkpoint or plot.
    let ckpt = dir.join("omniglot.safetensors");
    let eval_dir = tmp.join("cli-omniglot-eval");
    let _ = std::fs::remove_dir_all(&eval_dir);
    let eval = [
        &common[..],
        &["--init", ckpt.to_str().unwrap(), "--iterations", "0", "--shots", "5", "--final-tasks", "300"],
        &["--eval-support-shift", "1", "--eval-query-shift", "1"],
        &["--out", eval_dir.to_str().unwrap()],
    ]
    .concat();
    let o = reptile(&eval);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("5-way 5-shot (support shifted by up to ±1 px, query views by up to ±1 px), 300 meta-test tasks"),
        "{text}"
    );
    assert!(!eval_dir.join("omniglot.safetensors").exists(), "evaluation-only run wrote a checkpoint");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eval_dir.join("summary.json")).unwrap()).unwrap();
    let acc = summary["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "accuracy {acc}");
    assert_eq!(summary["iterations"], 0);
    assert_eq!(summary["eval_support_shift"], 1);
    assert_eq!(summary["eval_query_shift"], 1);
    // More than one shot: 100 adaptation steps at half the inner step size by default.
    assert_eq!(summary["config"]["eval"]["steps"], 100, "{summary}");
    assert!(
        text.contains(
            "adaptation at evaluation: 100 steps on minibatches of 5 at α = 0.001, Adam from the carried moments"
        ),
        "{text}"
    );
    let (eval_lr, inner_lr) =
        (summary["config"]["eval"]["lr"].as_f64().unwrap(), summary["config"]["train"]["lr"].as_f64().unwrap());
    assert_eq!(eval_lr as f32, 0.5 * inner_lr as f32, "{summary}");
    // 300 tasks of 5 ways × 5 query drawings (not their 9 views each): the accuracy is a
    // multiple of 1/7500.
    assert!((acc * 7500.0 - (acc * 7500.0).round()).abs() < 1e-3, "accuracy {acc} is not over 300 tasks");
    // A checkpoint of another shape is a clear error.
    let wrong = [&common[..5], &["--hidden", "16", "--init", ckpt.to_str().unwrap(), "--iterations", "0"]].concat();
    let o = reptile(&wrong);
    assert!(!o.status.success(), "a 32-wide checkpoint loaded into a 16-wide net");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("error") && !err.contains("panicked"), "{err}");
    assert!(err.contains("omniglot.safetensors"), "the error does not name the file: {err}");
}
