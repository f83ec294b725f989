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
    ] {
        let out = reptile(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{args:?}: no message on stderr: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}
