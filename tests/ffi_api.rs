//! The C ABI called from Rust exactly as a C host calls it: every exported function with NULL
//! for each pointer, wrong lengths, non-finite values and a freed-then-NULL handle (status and
//! message checked every time), plus the functional contract: results equal the Rust API's,
//! outputs are written only on success, messages, status names, config versioning, CUDA.

use reptile::ffi::*;
use reptile::io::checkpoint;
use reptile::workloads::sine::SineTasks;
use reptile::{Activation, EvalTasks, Loss, MlpSpec, Model, ReptileConfig, Targets, TaskBatch, Trainer};
use std::borrow::Cow;
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// This thread's last error message, read through the C API.
fn message() -> String {
    let mut written = 0usize;
    // SAFETY: len 0 with a NULL buffer is allowed; `written` is a valid size_t.
    assert_eq!(unsafe { reptile_last_error_message(null_mut(), 0, &mut written) }, reptile_status::Ok);
    let mut buf = vec![0u8; written + 1];
    let mut again = 0usize;
    // SAFETY: `buf` holds `buf.len()` writable bytes.
    let s = unsafe { reptile_last_error_message(buf.as_mut_ptr().cast(), buf.len(), &mut again) };
    assert_eq!(s, reptile_status::Ok);
    assert_eq!(again, written);
    CStr::from_bytes_until_nul(&buf).unwrap().to_str().unwrap().to_string()
}

/// Asserts that `got` is `want` and that the message is non-empty and mentions `needle`.
#[track_caller]
fn expect(got: reptile_status, want: reptile_status, needle: &str) {
    let m = message();
    assert_eq!(got, want, "status (message: {m:?})");
    assert!(!m.is_empty(), "empty message for {want:?}");
    assert!(m.contains(needle), "message {m:?} does not mention {needle:?}");
}

/// Asserts `REPTILE_STATUS_NULL_ARGUMENT` naming `arg`.
#[track_caller]
fn expect_null(got: reptile_status, arg: &str) {
    expect(got, reptile_status::NullArgument, &format!("{arg} is NULL"));
}

#[track_caller]
fn ok(got: reptile_status) {
    if got != reptile_status::Ok {
        panic!("expected REPTILE_STATUS_OK, got {got:?}: {}", message());
    }
}

const SINE: [usize; 4] = [1, 16, 16, 1];

fn new_model(widths: &[usize], act: reptile_activation, loss: reptile_loss, seed: u64) -> *mut reptile_model {
    let mut m = null_mut();
    // SAFETY: valid widths and out pointer.
    ok(unsafe { reptile_model_new(widths.as_ptr(), widths.len(), act, loss, seed, &mut m) });
    assert!(!m.is_null());
    m
}

fn sine_model() -> *mut reptile_model {
    new_model(&SINE, REPTILE_ACTIVATION_TANH, REPTILE_LOSS_MSE, 7)
}

fn config(threads: usize) -> reptile_trainer_config {
    let mut c = std::mem::MaybeUninit::<reptile_trainer_config>::uninit();
    // SAFETY: `c` has room for the struct.
    ok(unsafe { reptile_trainer_config_default(std::mem::size_of::<reptile_trainer_config>(), c.as_mut_ptr()) });
    // SAFETY: written on success.
    let mut c = unsafe { c.assume_init() };
    c.threads = threads;
    c
}

fn new_trainer(model: *const reptile_model, c: &reptile_trainer_config) -> *mut reptile_trainer {
    let mut t = null_mut();
    // SAFETY: live handle, valid config and out pointer.
    ok(unsafe { reptile_trainer_new(model, c, &mut t) });
    t
}

fn new_sampler(seed: u64) -> *mut reptile_sine_sampler {
    let mut s = null_mut();
    // SAFETY: valid out pointer.
    ok(unsafe { reptile_sine_sampler_new(seed, &mut s) });
    s
}

/// A regression view of `x`/`y`.
fn view(n_tasks: usize, n_points: usize, x: &[f32], y: &[f32]) -> reptile_tasks {
    reptile_tasks {
        n_tasks,
        n_points,
        x: x.as_ptr(),
        n_x: x.len(),
        y: y.as_ptr(),
        n_y: y.len(),
        labels: null(),
        n_labels: 0,
    }
}

/// A classification view of `x`/`labels`.
fn label_view(n_tasks: usize, n_points: usize, x: &[f32], labels: &[u32]) -> reptile_tasks {
    reptile_tasks {
        n_tasks,
        n_points,
        x: x.as_ptr(),
        n_x: x.len(),
        y: null(),
        n_y: 0,
        labels: labels.as_ptr(),
        n_labels: labels.len(),
    }
}

fn sine_batch(seed: u64, n: usize) -> (Vec<f32>, Vec<f32>) {
    let spec = MlpSpec::new(&SINE, Activation::Tanh, Loss::Mse).unwrap();
    let b = SineTasks::new(seed).train_batch(&spec, n).unwrap();
    let Targets::Values(y) = b.y() else { unreachable!() };
    (b.x().to_vec(), y.to_vec())
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("reptile-ffi-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    fn c_path(&self, name: &str) -> CString {
        CString::new(self.0.join(name).to_str().unwrap()).unwrap()
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Status names, messages, version, CUDA
// ---------------------------------------------------------------------------------------------

#[test]
fn status_codes_are_stable_and_named() {
    let all = [
        (reptile_status::Ok, 0, "REPTILE_STATUS_OK"),
        (reptile_status::NullArgument, 1, "REPTILE_STATUS_NULL_ARGUMENT"),
        (reptile_status::InvalidArgument, 2, "REPTILE_STATUS_INVALID_ARGUMENT"),
        (reptile_status::ShapeMismatch, 3, "REPTILE_STATUS_SHAPE_MISMATCH"),
        (reptile_status::NonFinite, 4, "REPTILE_STATUS_NON_FINITE"),
        (reptile_status::Diverged, 5, "REPTILE_STATUS_DIVERGED"),
        (reptile_status::Io, 6, "REPTILE_STATUS_IO"),
        (reptile_status::Format, 7, "REPTILE_STATUS_FORMAT"),
        (reptile_status::InvalidState, 8, "REPTILE_STATUS_INVALID_STATE"),
        (reptile_status::CudaUnavailable, 9, "REPTILE_STATUS_CUDA_UNAVAILABLE"),
        (reptile_status::Cuda, 10, "REPTILE_STATUS_CUDA"),
        (reptile_status::Panic, 11, "REPTILE_STATUS_PANIC"),
    ];
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/reptile.h")).unwrap();
    for (s, code, name) in all {
        assert_eq!(s as i32, code);
        // SAFETY: returns a static NUL-terminated string.
        assert_eq!(unsafe { CStr::from_ptr(reptile_status_str(code)) }.to_str().unwrap(), name);
        assert!(header.contains(&format!("{name} = {code},")), "{name} = {code} is not in the header");
    }
    for bad in [-1, 12, 1000, i32::MIN, i32::MAX] {
        // SAFETY: as above.
        assert_eq!(unsafe { CStr::from_ptr(reptile_status_str(bad)) }.to_str().unwrap(), "REPTILE_STATUS_UNKNOWN");
    }
}

#[test]
fn last_error_message_truncates_safely_and_is_thread_local() {
    // Provoke a known message: "null argument: out is NULL".
    // SAFETY: NULL out is checked.
    let s = unsafe { reptile_model_new(SINE.as_ptr(), SINE.len(), 0, 0, 0, null_mut()) };
    assert_eq!(s, reptile_status::NullArgument);
    let full = message();
    assert_eq!(full, "null argument: out is NULL");

    // len 0, NULL buffer: only the size.
    let mut written = 99usize;
    // SAFETY: allowed combination.
    ok(unsafe { reptile_last_error_message(null_mut(), 0, &mut written) });
    assert_eq!(written, full.len());

    // len 1: just the NUL. len 5: 4 bytes and a NUL; nothing written past len.
    for len in [1usize, 5, full.len(), full.len() + 1, full.len() + 10] {
        let mut buf = vec![0x55u8; len + 4];
        let mut written = 0usize;
        // SAFETY: `buf` has at least `len` bytes.
        ok(unsafe { reptile_last_error_message(buf.as_mut_ptr().cast(), len, &mut written) });
        assert_eq!(written, full.len());
        let n = (len - 1).min(full.len());
        assert_eq!(&buf[..n], &full.as_bytes()[..n]);
        assert_eq!(buf[n], 0, "NUL terminator at {n} for len {len}");
        assert!(buf[len..].iter().all(|&b| b == 0x55), "wrote past len {len}");
    }

    // A UTF-8 message is cut at a character boundary: widths = [0] gives "width 0 is 0 (must be
    // in 1..=…" — find a multi-byte character in a real message instead: θ in set_params.
    let m = sine_model();
    let short = [0f32; 3];
    // SAFETY: live handle, valid buffer.
    let s = unsafe { reptile_model_set_params(m, short.as_ptr(), short.len()) };
    assert_eq!(s, reptile_status::ShapeMismatch);
    let n_params = 16 * 2 + 17 * 16 + 17;
    let nan = vec![f32::NAN; n_params];
    // SAFETY: as above.
    let s = unsafe { reptile_model_set_params(m, nan.as_ptr(), nan.len()) };
    assert_eq!(s, reptile_status::NonFinite);
    let full = message();
    let theta = full.find('θ').expect("the message names θ");
    let mut buf = vec![0u8; theta + 2]; // room for the first byte of θ only, then NUL
    let mut written = 0usize;
    // SAFETY: `buf` holds `buf.len()` bytes.
    ok(unsafe { reptile_last_error_message(buf.as_mut_ptr().cast(), buf.len(), &mut written) });
    let got = CStr::from_bytes_until_nul(&buf).unwrap().to_str().expect("truncation keeps UTF-8 valid");
    assert_eq!(got, &full[..theta]);
    // SAFETY: live handle.
    unsafe { reptile_model_free(m) };

    // Its own misuse is reported like any other failure.
    // SAFETY: NULL written is checked.
    expect_null(unsafe { reptile_last_error_message(null_mut(), 0, null_mut()) }, "written");
    let mut written = 0usize;
    // SAFETY: NULL buf with len > 0 is checked.
    expect_null(unsafe { reptile_last_error_message(null_mut(), 8, &mut written) }, "buf");

    // Thread-local: another thread sees its own (empty) message.
    let other = std::thread::spawn(|| {
        let mut written = 123usize;
        // SAFETY: as above.
        ok(unsafe { reptile_last_error_message(null_mut(), 0, &mut written) });
        written
    })
    .join()
    .unwrap();
    assert_eq!(other, 0);
    assert!(message().contains("buf is NULL"));
}

#[test]
fn cuda_availability_and_backend_selection_never_abort() {
    // Whatever this machine has, the answer agrees with the Rust probe and nothing aborts.
    let available = reptile_cuda_available();
    assert_eq!(available, reptile::cuda::available().is_ok());
    let m = sine_model();
    let mut c = config(1);
    c.backend = REPTILE_BACKEND_CUDA;
    let mut t = null_mut();
    // SAFETY (whole block): valid arguments.
    unsafe {
        if available {
            ok(reptile_trainer_new(m, &c, &mut t));
            let (mut b, mut d) = (9u32, 9u32);
            ok(reptile_trainer_backend(t, &mut b, &mut d));
            assert_eq!((b, d), (REPTILE_BACKEND_CUDA, 0));
            reptile_trainer_free(t);
            t = null_mut();
        } else {
            expect(reptile_trainer_new(m, &c, &mut t), reptile_status::CudaUnavailable, "CUDA unavailable");
            assert!(t.is_null(), "no trainer on failure");
        }
        // No machine has device 4000.
        c.cuda_device = 4000;
        expect(reptile_trainer_new(m, &c, &mut t), reptile_status::CudaUnavailable, "CUDA unavailable");
        assert!(t.is_null());
        c.backend = 7;
        expect(reptile_trainer_new(m, &c, &mut t), reptile_status::InvalidArgument, "backend = 7");

        // Switching an existing CPU trainer: a failed switch leaves it on the CPU.
        let t = new_trainer(m, &config(1));
        let (mut b, mut d) = (9u32, 9u32);
        ok(reptile_trainer_backend(t, &mut b, &mut d));
        assert_eq!((b, d), (REPTILE_BACKEND_CPU, 0));
        expect(reptile_trainer_set_backend(t, REPTILE_BACKEND_CUDA, 4000), reptile_status::CudaUnavailable, "CUDA");
        expect(reptile_trainer_set_backend(t, 7, 0), reptile_status::InvalidArgument, "backend = 7");
        ok(reptile_trainer_backend(t, &mut b, &mut d));
        assert_eq!((b, d), (REPTILE_BACKEND_CPU, 0));
        ok(reptile_trainer_set_backend(t, REPTILE_BACKEND_CPU, 0));
        reptile_trainer_free(t);
        reptile_model_free(m);
    }
}

#[test]
fn device_resident_sine_training_checks_everything_before_it_runs() {
    // Config problems are reported on any machine, before the back end is looked at; a CPU
    // trainer is told it needs CUDA. Nothing changes on any error, the losses included.
    let m = sine_model();
    let mut c = config(1);
    c.meta_batch = 2;
    c.inner_optimizer = REPTILE_INNER_OPTIMIZER_ADAM;
    let adam = new_trainer(m, &c);
    c.inner_optimizer = REPTILE_INNER_OPTIMIZER_SGD;
    c.outer_rule = REPTILE_OUTER_RULE_FOMAML;
    c.fomaml_tail = 5;
    let tail = new_trainer(m, &c);
    c.outer_rule = REPTILE_OUTER_RULE_REPTILE;
    c.fomaml_tail = 0;
    let cpu = new_trainer(m, &c);
    let inv = reptile_status::InvalidArgument;
    // SAFETY (whole block): live handles and buffers of the lengths passed.
    unsafe {
        let theta = |t: *mut reptile_trainer| {
            let mut th = vec![0f32; 16 * 2 + 17 * 16 + 17];
            ok(reptile_trainer_get_params(t, th.as_mut_ptr(), th.len()));
            th
        };
        let before = theta(cpu);
        let mut losses = [-3.5f32; 4];
        expect(reptile_trainer_train_sine_resident(adam, 5, 1, losses.as_mut_ptr(), 4), inv, "inner loop is SGD");
        expect(reptile_trainer_train_sine_resident(tail, 5, 1, losses.as_mut_ptr(), 4), inv, "FOMAML tail");
        expect(reptile_trainer_train_sine_resident(cpu, 5, 1, losses.as_mut_ptr(), 4), inv, "needs the CUDA back end");
        assert_eq!(losses, [-3.5f32; 4], "losses written on failure");
        for t in [adam, tail, cpu] {
            let mut it = 9u64;
            ok(reptile_trainer_iteration(t, &mut it));
            assert_eq!(it, 0);
            assert_eq!(theta(t), before);
            reptile_trainer_free(t);
        }
        reptile_model_free(m);
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn config_default_matches_the_rust_defaults_and_checks_its_size() {
    let c = config(0);
    let r = ReptileConfig::sine();
    assert_eq!(c.struct_size, std::mem::size_of::<reptile_trainer_config>());
    assert_eq!((c.inner_lr, c.inner_steps, c.inner_batch), (r.train.lr, r.train.steps, r.train.batch_size));
    assert_eq!((c.eval_lr, c.eval_steps, c.eval_batch), (r.eval.lr, r.eval.steps, r.eval.batch_size));
    assert_eq!((c.meta_batch, c.eps_start, c.eps_end), (r.meta_batch, r.eps_start, r.eps_end));
    assert_eq!((c.planned_iterations, c.seed, c.threads), (r.planned_iters, r.seed, r.threads));
    assert_eq!((c.inner_optimizer, c.outer_rule, c.fomaml_tail), (REPTILE_INNER_OPTIMIZER_SGD, 0, 0));
    assert_eq!((c.backend, c.cuda_device), (REPTILE_BACKEND_CPU, 0));
    assert_eq!((c.adam_beta2, c.adam_eps), (0.999, 1e-8));
    assert_eq!((c.train_moments, c.eval_moments), (REPTILE_ADAM_MOMENTS_CARRY, REPTILE_ADAM_MOMENTS_RESET));
    assert_eq!(r.inner_optimizer, reptile::InnerOptimizer::Sgd);

    let size = std::mem::size_of::<reptile_trainer_config>();
    let mut out = config(0);
    out.inner_lr = 123.0;
    for bad in [0, 8, size - 4, size - 16, size + 8] {
        // SAFETY: `out` has room for `size` bytes; smaller sizes are refused before any write,
        // larger ones are refused before any write too.
        let s = unsafe { reptile_trainer_config_default(bad, &mut out) };
        expect(s, reptile_status::InvalidArgument, "struct_size");
        assert_eq!(out.inner_lr, 123.0, "nothing written on failure");
    }
    // SAFETY: NULL is checked.
    expect_null(unsafe { reptile_trainer_config_default(size, null_mut()) }, "config");

    // A config with a bad struct_size, enumeration or value is refused by reptile_trainer_new.
    let m = sine_model();
    let mut t = null_mut();
    type Edit = fn(&mut reptile_trainer_config);
    let cases: [(Edit, reptile_status, &str); 22] = [
        (|c| c.outer_decay = -1e-3, reptile_status::InvalidArgument, "outer_decay"),
        (|c| c.outer_decay = f32::NAN, reptile_status::NonFinite, "outer_decay"),
        (|c| c.outer_decay = 10.0, reptile_status::InvalidArgument, "outer_decay"),
        (|c| c.struct_size = 0, reptile_status::InvalidArgument, "struct_size"),
        (|c| c.struct_size += 8, reptile_status::InvalidArgument, "newer reptile.h"),
        (|c| c.inner_optimizer = 3, reptile_status::InvalidArgument, "inner_optimizer = 3"),
        (|c| c.train_moments = 4, reptile_status::InvalidArgument, "train_moments = 4"),
        (|c| c.eval_moments = 4, reptile_status::InvalidArgument, "eval_moments = 4"),
        (
            |c| (c.inner_optimizer, c.adam_eps) = (REPTILE_INNER_OPTIMIZER_ADAM, f32::NAN),
            reptile_status::NonFinite,
            "adam_eps",
        ),
        (
            |c| (c.inner_optimizer, c.adam_beta2) = (REPTILE_INNER_OPTIMIZER_ADAM, 1.0),
            reptile_status::InvalidArgument,
            "β2",
        ),
        (
            |c| (c.inner_optimizer, c.adam_eps) = (REPTILE_INNER_OPTIMIZER_ADAM, 0.0),
            reptile_status::InvalidArgument,
            "ε",
        ),
        (|c| c.outer_rule = 9, reptile_status::InvalidArgument, "outer_rule = 9"),
        (|c| c.fomaml_tail = 5, reptile_status::InvalidArgument, "fomaml_tail"),
        (|c| c.inner_lr = f32::NAN, reptile_status::NonFinite, "train.lr"),
        (|c| c.eval_lr = f32::INFINITY, reptile_status::NonFinite, "eval.lr"),
        (|c| c.eps_start = f32::NEG_INFINITY, reptile_status::NonFinite, "eps_start"),
        (|c| c.eps_end = f32::NAN, reptile_status::NonFinite, "eps_end"),
        (|c| c.inner_lr = -1.0, reptile_status::InvalidArgument, "train.lr"),
        (|c| c.inner_steps = 0, reptile_status::InvalidArgument, "train.steps"),
        (|c| c.eval_steps = 0, reptile_status::InvalidArgument, "eval.steps"),
        (|c| c.meta_batch = 0, reptile_status::InvalidArgument, "meta_batch"),
        (|c| c.planned_iterations = 0, reptile_status::InvalidArgument, "planned_iters"),
    ];
    for (edit, want, needle) in cases {
        let mut c = config(1);
        edit(&mut c);
        // SAFETY: valid pointers; the struct is fully readable whatever struct_size claims
        // (sizes other than the real one are refused before the rest is read).
        expect(unsafe { reptile_trainer_new(m, &c, &mut t) }, want, needle);
        assert!(t.is_null());
    }
    // FOMAML with a tail is a valid configuration.
    let mut c = config(1);
    c.outer_rule = REPTILE_OUTER_RULE_FOMAML;
    c.fomaml_tail = 5;
    let t = new_trainer(m, &c);
    // SAFETY: live handles.
    unsafe {
        reptile_trainer_free(t);
        reptile_model_free(m);
    }
}

// ---------------------------------------------------------------------------------------------
// Functional contract: the C ABI computes what the Rust API computes
// ---------------------------------------------------------------------------------------------

#[test]
fn model_functions_match_the_rust_model() {
    let spec = MlpSpec::new(&SINE, Activation::Tanh, Loss::Mse).unwrap();
    let rust = Model::new(spec.clone(), 7);
    let m = sine_model();
    let mut n = 0usize;
    // SAFETY (whole block): live handle and buffers of the stated lengths.
    unsafe {
        ok(reptile_model_num_params(m, &mut n));
        assert_eq!(n, spec.num_params());
        ok(reptile_model_num_widths(m, &mut n));
        assert_eq!(n, 4);
        let mut w = [0usize; 4];
        ok(reptile_model_widths(m, w.as_mut_ptr(), 4));
        assert_eq!(w, SINE);
        let (mut a, mut l) = (9u32, 9u32);
        ok(reptile_model_activation(m, &mut a));
        ok(reptile_model_loss(m, &mut l));
        assert_eq!((a, l), (REPTILE_ACTIVATION_TANH, REPTILE_LOSS_MSE));

        let mut theta = vec![0f32; spec.num_params()];
        ok(reptile_model_get_params(m, theta.as_mut_ptr(), theta.len()));
        assert_eq!(theta, rust.params(), "same seed, same θ as Model::new");

        let x: Vec<f32> = (0..20).map(|i| i as f32 * 0.3 - 3.0).collect();
        let mut y = vec![0f32; 20];
        ok(reptile_model_predict(m, x.as_ptr(), x.len(), y.as_mut_ptr(), y.len()));
        assert_eq!(y, rust.predict(&x).unwrap());

        // set_params / from_params / clone round trips.
        let theta2: Vec<f32> = theta.iter().map(|v| v * 0.5).collect();
        ok(reptile_model_set_params(m, theta2.as_ptr(), theta2.len()));
        let mut c = null_mut();
        ok(reptile_model_clone(m, &mut c));
        let mut back = vec![0f32; theta.len()];
        ok(reptile_model_get_params(c, back.as_mut_ptr(), back.len()));
        assert_eq!(back, theta2);
        let mut f = null_mut();
        ok(reptile_model_from_params(SINE.as_ptr(), 4, 0, 0, theta.as_ptr(), theta.len(), &mut f));
        ok(reptile_model_get_params(f, back.as_mut_ptr(), back.len()));
        assert_eq!(back, theta);

        // adapt equals reptile::meta::adapt.
        let (sx, sy) = sine_batch(3, 1);
        let support = view(1, 50, &sx, &sy);
        let mut adapted = null_mut();
        ok(reptile_model_adapt(f, &support, 0.02, 8, 10, 5, &mut adapted));
        let batch = TaskBatch::new(&spec, 1, 50, sx.clone(), Targets::Values(Cow::Owned(sy.clone()))).unwrap();
        let inner = reptile::InnerLoop { lr: 0.02, steps: 8, batch_size: 10 };
        let want = reptile::meta::adapt(&rust, &batch, &inner, 5).unwrap();
        ok(reptile_model_get_params(adapted, back.as_mut_ptr(), back.len()));
        assert_eq!(back, want.params());

        for h in [m, c, f, adapted] {
            reptile_model_free(h);
        }
    }
}

#[test]
fn trainer_steps_evaluation_and_split_steps_match_the_rust_trainer() {
    let spec = MlpSpec::new(&SINE, Activation::Tanh, Loss::Mse).unwrap();
    let m = sine_model();
    let c = config(2);
    let t = new_trainer(m, &c);
    let mut rust_cfg = ReptileConfig::sine();
    rust_cfg.threads = 2;
    let mut rust = Trainer::new(Model::new(spec.clone(), 7), rust_cfg).unwrap();
    let p = spec.num_params();

    // SAFETY (whole block): live handles, views and buffers of the stated lengths.
    unsafe {
        let mut st = reptile_step_stats { iteration: 9, tasks: 9, epsilon: 9.0, loss_before: 9.0, loss_after: 9.0 };
        expect(reptile_trainer_last_stats(t, &mut st), reptile_status::InvalidState, "no outer step");
        for i in 0..20 {
            let (x, y) = sine_batch(100 + i, 3);
            let b = view(3, 50, &x, &y);
            ok(reptile_trainer_step(t, &b, &mut st));
            let rb = TaskBatch::new(&spec, 3, 50, x, Targets::Values(Cow::Owned(y))).unwrap();
            let rs = rust.step(&rb).unwrap();
            assert_eq!(
                (st.iteration, st.tasks, st.epsilon, st.loss_before, st.loss_after),
                (rs.iteration, rs.tasks, rs.epsilon, rs.loss_before, rs.loss_after)
            );
        }
        let mut theta = vec![0f32; p];
        ok(reptile_trainer_get_params(t, theta.as_mut_ptr(), p));
        assert_eq!(theta, rust.params(), "θ after 20 steps equals the Rust trainer's");
        let mut it = 0u64;
        ok(reptile_trainer_iteration(t, &mut it));
        assert_eq!(it, 20);
        let mut last = st;
        last.iteration = 0;
        ok(reptile_trainer_last_stats(t, &mut last));
        assert_eq!(last, st);
        let mut eps = 0f32;
        ok(reptile_trainer_epsilon(t, 15_000, &mut eps));
        assert_eq!(eps, rust.config().epsilon(15_000));
        let mut n = 0usize;
        ok(reptile_trainer_threads(t, &mut n));
        assert_eq!(n, 2);
        ok(reptile_trainer_num_params(t, &mut n));
        assert_eq!(n, p);

        // Split step = step: task_deltas + apply_delta on a clone of the state.
        let mut snapshot = null_mut();
        ok(reptile_trainer_model(t, &mut snapshot));
        let t2 = new_trainer(snapshot, &c);
        ok(reptile_trainer_set_iteration(t2, 20));
        let (x, y) = sine_batch(999, 4);
        let b = view(4, 50, &x, &y);
        let mut sum = vec![0f32; p];
        let mut ds = reptile_delta_stats { tasks: 0, loss_before_sum: 0.0, loss_after_sum: 0.0 };
        ok(reptile_trainer_task_deltas(t2, &b, 0, sum.as_mut_ptr(), p, &mut ds));
        assert_eq!(ds.tasks, 4);
        let mut split = st;
        ok(reptile_trainer_apply_delta(t2, sum.as_ptr(), p, &ds, &mut split));
        ok(reptile_trainer_step(t, &b, &mut st));
        assert_eq!(split, st);
        let mut theta2 = vec![0f32; p];
        ok(reptile_trainer_get_params(t, theta.as_mut_ptr(), p));
        ok(reptile_trainer_get_params(t2, theta2.as_mut_ptr(), p));
        assert_eq!(theta, theta2, "split step equals step");
        let rb = TaskBatch::new(&spec, 4, 50, x, Targets::Values(Cow::Owned(y))).unwrap();
        rust.step(&rb).unwrap();

        // Evaluation equals Trainer::evaluate_at; report accessors.
        let mut tasks = SineTasks::new(42);
        let ev = tasks.eval_tasks(&spec, 6, 10).unwrap();
        let want = rust.evaluate_at(&ev, &[0, 4, 16]).unwrap();
        let vals = |b: &TaskBatch<'_>| match b.y() {
            Targets::Values(v) => v.to_vec(),
            Targets::Labels(_) => unreachable!(),
        };
        let (sx, sy, qx, qy) =
            (ev.support().x().to_vec(), vals(ev.support()), ev.query().x().to_vec(), vals(ev.query()));
        let (sv, qv) = (view(6, 10, &sx, &sy), view(6, 50, &qx, &qy));
        let steps = [0usize, 4, 16];
        let mut r = null_mut();
        ok(reptile_trainer_evaluate(t, &sv, &qv, steps.as_ptr(), 3, &mut r));
        ok(reptile_eval_report_n_tasks(r, &mut n));
        assert_eq!(n, 6);
        ok(reptile_eval_report_n_checkpoints(r, &mut n));
        assert_eq!(n, 3);
        let mut got_steps = [0usize; 3];
        ok(reptile_eval_report_steps(r, got_steps.as_mut_ptr(), 3));
        assert_eq!(got_steps, steps);
        for j in 0..3 {
            let (mut mean, mut median) = (0f32, 0f32);
            ok(reptile_eval_report_mean_loss(r, j, &mut mean));
            ok(reptile_eval_report_median_loss(r, j, &mut median));
            assert_eq!((mean, median), (want.mean_loss(j), want.median_loss(j)));
            let mut losses = [0f32; 6];
            ok(reptile_eval_report_losses(r, j, losses.as_mut_ptr(), 6));
            assert_eq!(losses.to_vec(), want.losses_at(j));
        }
        let mut acc = 0f32;
        expect(reptile_eval_report_mean_accuracy(r, 0, &mut acc), reptile_status::InvalidState, "no accuracies");
        expect(reptile_eval_report_accuracy_ci95(r, 0, &mut acc), reptile_status::InvalidState, "no accuracies");
        let mut accs = [0f32; 6];
        expect(reptile_eval_report_accuracies(r, 0, accs.as_mut_ptr(), 6), reptile_status::InvalidState, "accuracies");
        let mut mean = 0f32;
        expect(reptile_eval_report_mean_loss(r, 3, &mut mean), reptile_status::InvalidArgument, "checkpoint 3");
        reptile_eval_report_free(r);

        // Query views equal Trainer::evaluate_at on EvalTasks::with_query_views: per task the
        // first 25 query points, then the same points moved by 0.01 (same targets).
        let (mut vx, mut vy) = (Vec::new(), Vec::new());
        for t in 0..6 {
            let (x25, y25) = (&qx[t * 50..t * 50 + 25], &qy[t * 50..t * 50 + 25]);
            vx.extend_from_slice(x25);
            vx.extend(x25.iter().map(|v| v + 0.01));
            vy.extend_from_slice(y25);
            vy.extend_from_slice(y25);
        }
        let vq = TaskBatch::new(&spec, 6, 50, vx.clone(), Targets::Values(Cow::Owned(vy.clone()))).unwrap();
        let want_v = rust
            .evaluate_at(&EvalTasks::new(ev.support().clone(), vq).unwrap().with_query_views(2).unwrap(), &steps)
            .unwrap();
        let qvv = view(6, 50, &vx, &vy);
        ok(reptile_trainer_evaluate_views(t, &sv, &qvv, 2, steps.as_ptr(), 3, &mut r));
        for j in 0..3 {
            let mut losses = [0f32; 6];
            ok(reptile_eval_report_losses(r, j, losses.as_mut_ptr(), 6));
            assert_eq!(losses.to_vec(), want_v.losses_at(j), "views, checkpoint {j}");
        }
        reptile_eval_report_free(r);
        assert_ne!(want_v.losses, want.losses, "the views changed the scores");
        ok(reptile_trainer_evaluate_views(t, &sv, &qv, 1, steps.as_ptr(), 3, &mut r));
        let mut losses = [0f32; 6];
        ok(reptile_eval_report_losses(r, 2, losses.as_mut_ptr(), 6));
        assert_eq!(losses.to_vec(), want.losses_at(2), "one view is plain evaluation");
        reptile_eval_report_free(r);
        r = null_mut();
        let bad = reptile_trainer_evaluate_views(t, &sv, &qv, 2, steps.as_ptr(), 3, &mut r);
        expect(bad, reptile_status::InvalidArgument, "another target than the point");
        expect(
            reptile_trainer_evaluate_views(t, &sv, &qv, 3, steps.as_ptr(), 3, &mut r),
            reptile_status::ShapeMismatch,
            "3 query views do not divide the 50",
        );
        expect(
            reptile_trainer_evaluate_views(t, &sv, &qv, 0, steps.as_ptr(), 3, &mut r),
            reptile_status::ShapeMismatch,
            "0 query views",
        );
        assert!(r.is_null(), "no report on error");

        // adapt / adapt_predict equal Trainer::adapt + predict.
        let one = ev.support().task(0).unwrap();
        let want_model = rust.adapt(&one, 16).unwrap();
        let want_y = want_model.predict(&qx[..50]).unwrap();
        let first = view(1, 10, &sx[..10], &sy[..10]);
        let mut y = vec![0f32; 50];
        ok(reptile_trainer_adapt_predict(t, &first, 16, qx.as_ptr(), 50, y.as_mut_ptr(), 50));
        assert_eq!(y, want_y);
        let mut am = null_mut();
        ok(reptile_trainer_adapt(t, &first, 16, &mut am));
        ok(reptile_model_predict(am, qx.as_ptr(), 50, y.as_mut_ptr(), 50));
        assert_eq!(y, want_y);

        // set_params keeps the iteration.
        let zeros = vec![0f32; p];
        ok(reptile_trainer_set_params(t, zeros.as_ptr(), p));
        ok(reptile_trainer_get_params(t, theta.as_mut_ptr(), p));
        assert!(theta.iter().all(|&v| v == 0.0));
        ok(reptile_trainer_iteration(t, &mut it));
        assert_eq!(it, 21);

        reptile_model_free(am);
        reptile_model_free(snapshot);
        reptile_trainer_free(t2);
        reptile_trainer_free(t);
        reptile_model_free(m);
    }
}

/// One step of the C trainer `t` and of each of `rust` on the same two-task sine batch
/// (`sine_batch(seed, 2)`). Returns the C step's statistics and the first Rust trainer's.
///
/// # Safety
/// `t` is a live trainer handle.
unsafe fn step_c_and_rust(
    t: *mut reptile_trainer,
    spec: &MlpSpec,
    seed: u64,
    rust: &mut [&mut Trainer],
) -> (reptile_step_stats, reptile::StepStats) {
    // SAFETY: `st` is plain data; `t` is live (the caller's contract) and the view borrows
    // `x` and `y`, which outlive the call.
    let mut st = unsafe { std::mem::zeroed::<reptile_step_stats>() };
    let (x, y) = sine_batch(seed, 2);
    ok(unsafe { reptile_trainer_step(t, &view(2, 50, &x, &y), &mut st) });
    let rb = TaskBatch::new(spec, 2, 50, x, Targets::Values(Cow::Owned(y))).unwrap();
    let stats: Vec<reptile::StepStats> = rust.iter_mut().map(|r| r.step(&rb).unwrap()).collect();
    (st, stats[0])
}

/// θ of the C trainer `t` (`p` parameters).
///
/// # Safety
/// `t` is a live trainer handle.
unsafe fn c_params(t: *const reptile_trainer, p: usize) -> Vec<f32> {
    let mut theta = vec![0f32; p];
    // SAFETY: `t` is live (the caller's contract); `theta` holds `p` floats.
    ok(unsafe { reptile_trainer_get_params(t, theta.as_mut_ptr(), p) });
    theta
}

/// Version 1 of `reptile_trainer_config` ends before `outer_decay`: a host built against
/// that header passes `struct_size` = the offset of `outer_decay`. The library writes only
/// those bytes, reads only those bytes (whatever follows them), and the missing field takes
/// its default, 0.
#[test]
fn a_version_1_config_is_read_and_written_as_a_prefix() {
    let v1 = std::mem::offset_of!(reptile_trainer_config, outer_decay);
    let size = std::mem::size_of::<reptile_trainer_config>();
    assert!(v1 < size);
    let mut c = config(0);
    c.outer_decay = 7.5;
    c.inner_lr = 123.0;
    // SAFETY: `c` has room for `size` ≥ v1 bytes.
    ok(unsafe { reptile_trainer_config_default(v1, &mut c) });
    assert_eq!(c.struct_size, v1);
    assert_eq!(c.inner_lr, ReptileConfig::sine().train.lr, "the v1 fields are written");
    assert_eq!(c.outer_decay, 7.5, "nothing past the v1 fields is written");
    assert_eq!(config(0).outer_decay, 0.0, "the default is the paper's update");

    // Past the v1 fields the host has other memory: here an invalid decay, which is ignored.
    c.outer_decay = f32::NAN;
    let spec = MlpSpec::new(&SINE, Activation::Tanh, Loss::Mse).unwrap();
    let m = sine_model();
    let t = new_trainer(m, &c);
    let mut rust = Trainer::new(Model::new(spec.clone(), 7), ReptileConfig::sine()).unwrap();
    // SAFETY (whole block): live handles and valid views.
    unsafe {
        step_c_and_rust(t, &spec, 60, &mut [&mut rust]);
        assert_eq!(c_params(t, spec.num_params()), rust.params(), "a v1 config trains without decay");
        reptile_trainer_free(t);
        reptile_model_free(m);
    }
}

/// `outer_decay` through the C config gives the Rust trainer's θ bit for bit, and differs from
/// the undecayed update.
#[test]
fn outer_decay_through_the_c_config_matches_the_rust_trainer() {
    let spec = MlpSpec::new(&SINE, Activation::Tanh, Loss::Mse).unwrap();
    let m = sine_model();
    let mut c = config(2);
    (c.eps_start, c.outer_decay) = (0.5, 0.4);
    let t = new_trainer(m, &c);
    let rc = ReptileConfig { eps_start: 0.5, outer_decay: 0.4, threads: 2, ..ReptileConfig::sine() };
    let mut rust = Trainer::new(Model::new(spec.clone(), 7), rc.clone()).unwrap();
    let mut plain = Trainer::new(Model::new(spec.clone(), 7), ReptileConfig { outer_decay: 0.0, ..rc }).unwrap();
    // SAFETY (whole block): live handles and valid views.
    unsafe {
        for i in 0..3 {
            step_c_and_rust(t, &spec, 70 + i, &mut [&mut rust, &mut plain]);
        }
        let theta = c_params(t, spec.num_params());
        assert_eq!(theta, rust.params());
        assert_ne!(theta, plain.params(), "the decay shows");
        reptile_trainer_free(t);
        reptile_model_free(m);
    }
}

#[test]
fn adam_through_the_c_config_matches_the_rust_trainer() {
    let spec = MlpSpec::new(&SINE, Activation::Tanh, Loss::Mse).unwrap();
    let m = sine_model();
    let mut c = config(2);
    c.inner_optimizer = REPTILE_INNER_OPTIMIZER_ADAM;
    c.inner_lr = 0.001;
    c.eval_lr = 0.001;
    c.adam_beta2 = 0.99;
    c.eval_moments = REPTILE_ADAM_MOMENTS_CARRY;
    let t = new_trainer(m, &c);
    let mut rc = ReptileConfig::sine();
    (rc.train.lr, rc.eval.lr, rc.threads) = (0.001, 0.001, 2);
    rc.inner_optimizer = reptile::InnerOptimizer::Adam { beta2: 0.99, eps: 1e-8 };
    rc.eval_moments = reptile::AdamMoments::Carry;
    let mut rust = Trainer::new(Model::new(spec.clone(), 7), rc).unwrap();
    let mut sgd = Trainer::new(Model::new(spec.clone(), 7), ReptileConfig::sine()).unwrap();
    // SAFETY (whole block): live handles and valid views.
    unsafe {
        for i in 0..5 {
            let (st, rs) = step_c_and_rust(t, &spec, 50 + i, &mut [&mut rust, &mut sgd]);
            assert_eq!(st.loss_after, rs.loss_after);
        }
        let mut theta = c_params(t, spec.num_params());
        assert_eq!(theta, rust.params());
        assert_ne!(theta, sgd.params(), "Adam and SGD differ");
        let (x, y) = sine_batch(77, 1);
        let mut am = null_mut();
        ok(reptile_trainer_adapt(t, &view(1, 50, &x, &y), 6, &mut am));
        let one = TaskBatch::new(&spec, 1, 50, x, Targets::Values(Cow::Owned(y))).unwrap();
        ok(reptile_model_get_params(am, theta.as_mut_ptr(), theta.len()));
        assert_eq!(theta, rust.adapt(&one, 6).unwrap().params(), "adaptation uses Adam with carried moments");
        reptile_model_free(am);
        reptile_trainer_free(t);
        reptile_model_free(m);
    }
}

#[test]
fn classification_batches_use_labels_and_report_accuracy() {
    let widths = [2usize, 8, 3];
    let m = new_model(&widths, REPTILE_ACTIVATION_RELU, REPTILE_LOSS_SOFTMAX_CROSS_ENTROPY, 1);
    let mut c = config(1);
    c.inner_batch = 0;
    let t = new_trainer(m, &c);
    let (n_tasks, pts) = (2usize, 6usize);
    let x: Vec<f32> = (0..n_tasks * pts * 2).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect();
    let labels: Vec<u32> = (0..n_tasks * pts).map(|i| (i % 3) as u32).collect();
    // SAFETY (whole block): live handles and valid views.
    unsafe {
        let mut st = std::mem::zeroed::<reptile_step_stats>();
        let b = label_view(n_tasks, pts, &x, &labels);
        ok(reptile_trainer_step(t, &b, &mut st));
        assert!(st.loss_before.is_finite() && st.loss_before > 0.0);

        // Real-valued targets for a cross-entropy model, and labels out of range, are refused.
        let y = vec![0f32; n_tasks * pts * 3];
        let wrong = view(n_tasks, pts, &x, &y);
        expect(reptile_trainer_step(t, &wrong, &mut st), reptile_status::InvalidArgument, "label");
        let mut bad = labels.clone();
        bad[3] = 3;
        let b_bad = label_view(n_tasks, pts, &x, &bad);
        expect(reptile_trainer_step(t, &b_bad, &mut st), reptile_status::InvalidArgument, "label[3] = 3");

        let steps = [0usize, 5];
        let mut r = null_mut();
        ok(reptile_trainer_evaluate(t, &b, &b, steps.as_ptr(), 2, &mut r));
        let (mut acc, mut ci) = (-1f32, -1f32);
        ok(reptile_eval_report_mean_accuracy(r, 1, &mut acc));
        ok(reptile_eval_report_accuracy_ci95(r, 1, &mut ci));
        assert!((0.0..=1.0).contains(&acc) && ci >= 0.0);
        let mut accs = [0f32; 2];
        ok(reptile_eval_report_accuracies(r, 1, accs.as_mut_ptr(), 2));
        assert!((acc - (accs[0] + accs[1]) / 2.0).abs() < 1e-6);
        expect(
            reptile_eval_report_accuracies(r, 1, accs.as_mut_ptr(), 1),
            reptile_status::ShapeMismatch,
            "accuracies has 1 elements",
        );
        reptile_eval_report_free(r);
        reptile_trainer_free(t);
        reptile_model_free(m);
    }
}

#[test]
fn sine_sampler_matches_the_rust_sampler_and_drives_a_trainer() {
    let spec = MlpSpec::new(&SINE, Activation::Tanh, Loss::Mse).unwrap();
    let s = new_sampler(11);
    let mut rust = SineTasks::new(11);
    // SAFETY (whole block): live handles and buffers of the stated lengths.
    unsafe {
        let mut grid = [0f32; REPTILE_SINE_GRID_POINTS];
        ok(reptile_sine_grid(grid.as_mut_ptr(), grid.len()));
        assert_eq!(grid, reptile::workloads::sine::grid());

        let (mut x, mut y) = (vec![0f32; 150], vec![0f32; 150]);
        ok(reptile_sine_sampler_train_batch(s, 3, x.as_mut_ptr(), 150, y.as_mut_ptr(), 150));
        let rb = rust.train_batch(&spec, 3).unwrap();
        assert_eq!(x, rb.x());
        assert_eq!(Targets::Values(Cow::Borrowed(&y[..])), *rb.y());

        let (mut sx, mut sy, mut qx, mut qy) = (vec![0f32; 20], vec![0f32; 20], vec![0f32; 100], vec![0f32; 100]);
        ok(reptile_sine_sampler_eval_tasks(
            s,
            2,
            10,
            sx.as_mut_ptr(),
            20,
            sy.as_mut_ptr(),
            20,
            qx.as_mut_ptr(),
            100,
            qy.as_mut_ptr(),
            100,
        ));
        let re: EvalTasks<'_> = rust.eval_tasks(&spec, 2, 10).unwrap();
        assert_eq!(sx, re.support().x());
        assert_eq!(qx, re.query().x());
        assert_eq!(Targets::Values(Cow::Borrowed(&sy[..])), *re.support().y());
        assert_eq!(Targets::Values(Cow::Borrowed(&qy[..])), *re.query().y());

        let (mut a, mut ph) = (0f32, 0f32);
        ok(reptile_sine_sampler_sample(s, &mut a, &mut ph));
        let rt = rust.sample();
        assert_eq!((a, ph), (rt.amplitude, rt.phase));

        // step_sine / evaluate_sine equal stepping on the sampler's buffers.
        let m = sine_model();
        let c = config(1);
        let (t1, t2) = (new_trainer(m, &c), new_trainer(m, &c));
        let (s1, s2) = (new_sampler(5), new_sampler(5));
        let (mut st1, mut st2) = (std::mem::zeroed(), std::mem::zeroed());
        for _ in 0..10 {
            ok(reptile_trainer_step_sine(t1, s1, &mut st1));
            ok(reptile_sine_sampler_train_batch(s2, 1, x.as_mut_ptr(), 50, y.as_mut_ptr(), 50));
            ok(reptile_trainer_step(t2, &view(1, 50, &x[..50], &y[..50]), &mut st2));
            assert_eq!(st1, st2);
        }
        let steps = [0usize, 8];
        let mut r1 = null_mut();
        ok(reptile_trainer_evaluate_sine(t1, s1, 2, 10, steps.as_ptr(), 2, &mut r1));
        ok(reptile_sine_sampler_eval_tasks(
            s2,
            2,
            10,
            sx.as_mut_ptr(),
            20,
            sy.as_mut_ptr(),
            20,
            qx.as_mut_ptr(),
            100,
            qy.as_mut_ptr(),
            100,
        ));
        let mut r2 = null_mut();
        ok(reptile_trainer_evaluate(t2, &view(2, 10, &sx, &sy), &view(2, 50, &qx, &qy), steps.as_ptr(), 2, &mut r2));
        let (mut l1, mut l2) = (0f32, 0f32);
        ok(reptile_eval_report_mean_loss(r1, 1, &mut l1));
        ok(reptile_eval_report_mean_loss(r2, 1, &mut l2));
        assert_eq!(l1, l2);

        // A model that is not 1-in/1-out MSE cannot run the sine workload.
        let wide = new_model(&[2, 4, 1], 0, 0, 0);
        let tw = new_trainer(wide, &c);
        expect(reptile_trainer_step_sine(tw, s1, &mut st1), reptile_status::ShapeMismatch, "sine workload");
        let mut r3 = null_mut();
        expect(
            reptile_trainer_evaluate_sine(tw, s1, 2, 10, steps.as_ptr(), 2, &mut r3),
            reptile_status::ShapeMismatch,
            "sine workload",
        );
        assert!(r3.is_null());

        for r in [r1, r2] {
            reptile_eval_report_free(r);
        }
        for t in [t1, t2, tw] {
            reptile_trainer_free(t);
        }
        for s in [s, s1, s2] {
            reptile_sine_sampler_free(s);
        }
        reptile_model_free(m);
        reptile_model_free(wide);
    }
}

#[test]
fn checkpoints_round_trip_and_bad_files_are_reported() {
    let dir = TempDir::new("ckpt");
    let m = sine_model();
    let c = config(1);
    let t = new_trainer(m, &c);
    let s = new_sampler(0);
    // SAFETY (whole block): live handles and NUL-terminated paths.
    unsafe {
        let mut st = std::mem::zeroed();
        for _ in 0..5 {
            ok(reptile_trainer_step_sine(t, s, &mut st));
        }
        let path = dir.c_path("t.safetensors");
        ok(reptile_trainer_save(t, path.as_ptr()));
        let ck = checkpoint::load(&dir.0.join("t.safetensors")).unwrap();
        assert_eq!(ck.iteration, 5);
        assert!(ck.config.is_some());

        let mut resumed = null_mut();
        ok(reptile_trainer_load(path.as_ptr(), &c, &mut resumed));
        let mut it = 0;
        ok(reptile_trainer_iteration(resumed, &mut it));
        assert_eq!(it, 5);
        let p = 16 * 2 + 17 * 16 + 17;
        let (mut a, mut b) = (vec![0f32; p], vec![0f32; p]);
        ok(reptile_trainer_get_params(t, a.as_mut_ptr(), p));
        ok(reptile_trainer_get_params(resumed, b.as_mut_ptr(), p));
        assert_eq!(a, b);

        let mpath = dir.c_path("m.safetensors");
        ok(reptile_model_save(m, mpath.as_ptr()));
        let mut loaded = null_mut();
        ok(reptile_model_load(mpath.as_ptr(), &mut loaded));
        ok(reptile_model_get_params(m, a.as_mut_ptr(), p));
        ok(reptile_model_get_params(loaded, b.as_mut_ptr(), p));
        assert_eq!(a, b);

        // Missing file, damaged file, unwritable directory, empty path.
        let mut out = null_mut();
        let missing = dir.c_path("missing.safetensors");
        expect(reptile_model_load(missing.as_ptr(), &mut out), reptile_status::Io, "missing.safetensors");
        expect(reptile_trainer_load(missing.as_ptr(), &c, &mut resumed), reptile_status::Io, "missing");
        std::fs::write(dir.0.join("junk.safetensors"), b"not a checkpoint at all").unwrap();
        let junk = dir.c_path("junk.safetensors");
        expect(reptile_model_load(junk.as_ptr(), &mut out), reptile_status::Format, "junk.safetensors");
        assert!(out.is_null());
        let nodir = dir.c_path("no/such/dir/m.safetensors");
        expect(reptile_model_save(m, nodir.as_ptr()), reptile_status::Io, "no/such/dir");
        expect(reptile_trainer_save(t, nodir.as_ptr()), reptile_status::Io, "no/such/dir");
        let empty = c"";
        expect(reptile_model_save(m, empty.as_ptr()), reptile_status::InvalidArgument, "empty path");
        expect(reptile_model_load(empty.as_ptr(), &mut out), reptile_status::InvalidArgument, "empty path");

        reptile_model_free(loaded);
        reptile_trainer_free(resumed);
        reptile_sine_sampler_free(s);
        reptile_trainer_free(t);
        reptile_model_free(m);
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input: NULL for every pointer, wrong lengths, non-finite values, freed-then-NULL handles
// ---------------------------------------------------------------------------------------------

/// Every `reptile_*` function the header declares is called with bad input in this file.
#[test]
fn every_exported_function_is_exercised_with_bad_input() {
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/reptile.h")).unwrap();
    let this = include_str!("ffi_api.rs");
    let bad_input = &this[this.find("fn null_for_every_pointer()").unwrap()..];
    let mut n = 0;
    for line in header.lines().filter(|l| !l.starts_with(' ') && !l.starts_with('#') && l.contains("reptile_")) {
        let Some(open) = line.find('(') else { continue };
        let name = line[..open].rsplit([' ', '*']).next().unwrap();
        if !name.starts_with("reptile_") {
            continue;
        }
        n += 1;
        assert!(bad_input.contains(&format!("{name}(")), "{name} is not exercised by the bad-input tests");
    }
    assert!(n >= 55, "found only {n} functions in the header");
}

#[test]
fn null_for_every_pointer() {
    let m = sine_model();
    let c = config(1);
    let t = new_trainer(m, &c);
    let s = new_sampler(0);
    let p = 16 * 2 + 17 * 16 + 17;
    let (x, y) = sine_batch(1, 1);
    let b = view(1, 50, &x, &y);
    let steps = [0usize, 2];
    let w = SINE;
    let path = c"/nonexistent/never.safetensors";
    let mut r = null_mut();
    // SAFETY (whole block): every non-NULL pointer is valid; the NULL ones are the point.
    unsafe {
        ok(reptile_trainer_evaluate(t, &b, &b, steps.as_ptr(), 2, &mut r));
        let mut buf = vec![0f32; 200];
        let mut ubuf = [0usize; 8];
        let (mut f, mut u, mut u64v, mut st) = (0f32, 0usize, 0u64, std::mem::zeroed::<reptile_step_stats>());
        let mut ds = std::mem::zeroed::<reptile_delta_stats>();
        let (mut mo, mut to, mut ro) = (null_mut(), null_mut(), null_mut());
        let (mut act, mut loss) = (0u32, 0u32);
        let fp = buf.as_mut_ptr();

        // General.
        expect_null(reptile_last_error_message(null_mut(), 4, &mut u), "buf");
        expect_null(reptile_last_error_message(null_mut(), 0, null_mut()), "written");
        expect_null(
            reptile_trainer_config_default(std::mem::size_of::<reptile_trainer_config>(), null_mut()),
            "config",
        );
        // Functions without pointers cannot get NULL; call them anyway.
        assert_eq!(reptile_cuda_available(), reptile::cuda::available().is_ok());
        assert!(!reptile_status_str(-5).is_null());
        assert!(!reptile_version().is_null());
        assert!(reptile_version_number() < 1_000_000_000);

        // Model.
        expect_null(reptile_model_new(null(), 4, 0, 0, 0, &mut mo), "widths");
        expect_null(reptile_model_new(w.as_ptr(), 4, 0, 0, 0, null_mut()), "out");
        expect_null(reptile_model_from_params(null(), 4, 0, 0, fp, p, &mut mo), "widths");
        expect_null(reptile_model_from_params(w.as_ptr(), 4, 0, 0, null(), p, &mut mo), "params");
        expect_null(reptile_model_from_params(w.as_ptr(), 4, 0, 0, fp, p, null_mut()), "out");
        expect_null(reptile_model_clone(null(), &mut mo), "model");
        expect_null(reptile_model_clone(m, null_mut()), "out");
        expect_null(reptile_model_num_params(null(), &mut u), "model");
        expect_null(reptile_model_num_params(m, null_mut()), "out");
        expect_null(reptile_model_num_widths(null(), &mut u), "model");
        expect_null(reptile_model_num_widths(m, null_mut()), "out");
        expect_null(reptile_model_widths(null(), ubuf.as_mut_ptr(), 4), "model");
        expect_null(reptile_model_widths(m, null_mut(), 4), "widths");
        expect_null(reptile_model_activation(null(), &mut act), "model");
        expect_null(reptile_model_activation(m, null_mut()), "out");
        expect_null(reptile_model_loss(null(), &mut loss), "model");
        expect_null(reptile_model_loss(m, null_mut()), "out");
        expect_null(reptile_model_get_params(null(), fp, p), "model");
        expect_null(reptile_model_get_params(m, null_mut(), p), "params");
        expect_null(reptile_model_set_params(null_mut(), fp, p), "model");
        expect_null(reptile_model_set_params(m, null(), p), "params");
        expect_null(reptile_model_predict(null(), x.as_ptr(), 50, fp, 50), "model");
        expect_null(reptile_model_predict(m, null(), 50, fp, 50), "x");
        expect_null(reptile_model_predict(m, x.as_ptr(), 50, null_mut(), 50), "y");
        expect_null(reptile_model_adapt(null(), &b, 0.1, 1, 0, 0, &mut mo), "model");
        expect_null(reptile_model_adapt(m, null(), 0.1, 1, 0, 0, &mut mo), "support");
        expect_null(reptile_model_adapt(m, &b, 0.1, 1, 0, 0, null_mut()), "out");
        expect_null(reptile_model_save(null(), path.as_ptr()), "model");
        expect_null(reptile_model_save(m, null()), "path");
        expect_null(reptile_model_load(null(), &mut mo), "path");
        expect_null(reptile_model_load(path.as_ptr(), null_mut()), "out");
        reptile_model_free(null_mut());

        // Task views: NULL inside the struct.
        let mut nb = b;
        nb.x = null();
        expect_null(reptile_trainer_step(t, &nb, &mut st), "batch->x");
        let mut nb = b;
        nb.y = null();
        expect(reptile_trainer_step(t, &nb, &mut st), reptile_status::NullArgument, "batch->y and batch->labels");
        let mut both = b;
        let labels = [0u32; 50];
        both.labels = labels.as_ptr();
        both.n_labels = 50;
        expect(reptile_trainer_step(t, &both, &mut st), reptile_status::InvalidArgument, "both set");

        // Trainer.
        expect_null(reptile_trainer_new(null(), &c, &mut to), "model");
        expect_null(reptile_trainer_new(m, null(), &mut to), "config");
        expect_null(reptile_trainer_new(m, &c, null_mut()), "out");
        expect_null(reptile_trainer_load(null(), &c, &mut to), "path");
        expect_null(reptile_trainer_load(path.as_ptr(), null(), &mut to), "config");
        expect_null(reptile_trainer_load(path.as_ptr(), &c, null_mut()), "out");
        reptile_trainer_free(null_mut());
        expect_null(reptile_trainer_save(null(), path.as_ptr()), "trainer");
        expect_null(reptile_trainer_save(t, null()), "path");
        expect_null(reptile_trainer_step(null_mut(), &b, &mut st), "trainer");
        expect_null(reptile_trainer_step(t, null(), &mut st), "batch");
        expect_null(reptile_trainer_step(t, &b, null_mut()), "stats");
        expect_null(reptile_trainer_task_deltas(null_mut(), &b, 0, fp, p, &mut ds), "trainer");
        expect_null(reptile_trainer_task_deltas(t, null(), 0, fp, p, &mut ds), "batch");
        expect_null(reptile_trainer_task_deltas(t, &b, 0, null_mut(), p, &mut ds), "delta_sum");
        expect_null(reptile_trainer_task_deltas(t, &b, 0, fp, p, null_mut()), "stats");
        expect_null(reptile_trainer_apply_delta(null_mut(), fp, p, &ds, &mut st), "trainer");
        expect_null(reptile_trainer_apply_delta(t, null(), p, &ds, &mut st), "delta_sum");
        expect_null(reptile_trainer_apply_delta(t, fp, p, null(), &mut st), "delta_stats");
        expect_null(reptile_trainer_apply_delta(t, fp, p, &ds, null_mut()), "stats");
        expect_null(reptile_trainer_adapt(null(), &b, 1, &mut mo), "trainer");
        expect_null(reptile_trainer_adapt(t, null(), 1, &mut mo), "support");
        expect_null(reptile_trainer_adapt(t, &b, 1, null_mut()), "out");
        expect_null(reptile_trainer_adapt_predict(null(), &b, 1, x.as_ptr(), 50, fp, 50), "trainer");
        expect_null(reptile_trainer_adapt_predict(t, null(), 1, x.as_ptr(), 50, fp, 50), "support");
        expect_null(reptile_trainer_adapt_predict(t, &b, 1, null(), 50, fp, 50), "x");
        expect_null(reptile_trainer_adapt_predict(t, &b, 1, x.as_ptr(), 50, null_mut(), 50), "y");
        expect_null(reptile_trainer_evaluate(null(), &b, &b, steps.as_ptr(), 2, &mut ro), "trainer");
        expect_null(reptile_trainer_evaluate(t, null(), &b, steps.as_ptr(), 2, &mut ro), "support");
        expect_null(reptile_trainer_evaluate(t, &b, null(), steps.as_ptr(), 2, &mut ro), "query");
        expect_null(reptile_trainer_evaluate(t, &b, &b, null(), 2, &mut ro), "steps");
        expect_null(reptile_trainer_evaluate(t, &b, &b, steps.as_ptr(), 2, null_mut()), "out");
        expect_null(reptile_trainer_evaluate_views(null(), &b, &b, 1, steps.as_ptr(), 2, &mut ro), "trainer");
        expect_null(reptile_trainer_evaluate_views(t, null(), &b, 1, steps.as_ptr(), 2, &mut ro), "support");
        expect_null(reptile_trainer_evaluate_views(t, &b, null(), 1, steps.as_ptr(), 2, &mut ro), "query");
        expect_null(reptile_trainer_evaluate_views(t, &b, &b, 1, null(), 2, &mut ro), "steps");
        expect_null(reptile_trainer_evaluate_views(t, &b, &b, 1, steps.as_ptr(), 2, null_mut()), "out");
        expect_null(reptile_trainer_iteration(null(), &mut u64v), "trainer");
        expect_null(reptile_trainer_iteration(t, null_mut()), "out");
        expect_null(reptile_trainer_set_iteration(null_mut(), 3), "trainer");
        expect_null(reptile_trainer_last_stats(null(), &mut st), "trainer");
        expect_null(reptile_trainer_last_stats(t, null_mut()), "out");
        expect_null(reptile_trainer_epsilon(null(), 0, &mut f), "trainer");
        expect_null(reptile_trainer_epsilon(t, 0, null_mut()), "out");
        let (mut bk, mut dv) = (0u32, 0u32);
        expect_null(reptile_trainer_backend(null(), &mut bk, &mut dv), "trainer");
        expect_null(reptile_trainer_backend(t, null_mut(), &mut dv), "backend");
        expect_null(reptile_trainer_backend(t, &mut bk, null_mut()), "cuda_device");
        expect_null(reptile_trainer_set_backend(null_mut(), REPTILE_BACKEND_CPU, 0), "trainer");
        expect_null(reptile_trainer_threads(null(), &mut u), "trainer");
        expect_null(reptile_trainer_threads(t, null_mut()), "out");
        expect_null(reptile_trainer_num_params(null(), &mut u), "trainer");
        expect_null(reptile_trainer_num_params(t, null_mut()), "out");
        expect_null(reptile_trainer_get_params(null(), fp, p), "trainer");
        expect_null(reptile_trainer_get_params(t, null_mut(), p), "params");
        expect_null(reptile_trainer_set_params(null_mut(), fp, p), "trainer");
        expect_null(reptile_trainer_set_params(t, null(), p), "params");
        expect_null(reptile_trainer_model(null(), &mut mo), "trainer");
        expect_null(reptile_trainer_model(t, null_mut()), "out");

        // Evaluation report.
        reptile_eval_report_free(null_mut());
        expect_null(reptile_eval_report_n_tasks(null(), &mut u), "report");
        expect_null(reptile_eval_report_n_tasks(r, null_mut()), "out");
        expect_null(reptile_eval_report_n_checkpoints(null(), &mut u), "report");
        expect_null(reptile_eval_report_n_checkpoints(r, null_mut()), "out");
        expect_null(reptile_eval_report_steps(null(), ubuf.as_mut_ptr(), 2), "report");
        expect_null(reptile_eval_report_steps(r, null_mut(), 2), "steps");
        expect_null(reptile_eval_report_mean_loss(null(), 0, &mut f), "report");
        expect_null(reptile_eval_report_mean_loss(r, 0, null_mut()), "out");
        expect_null(reptile_eval_report_median_loss(null(), 0, &mut f), "report");
        expect_null(reptile_eval_report_median_loss(r, 0, null_mut()), "out");
        expect_null(reptile_eval_report_mean_accuracy(null(), 0, &mut f), "report");
        expect_null(reptile_eval_report_mean_accuracy(r, 0, null_mut()), "out");
        expect_null(reptile_eval_report_accuracy_ci95(null(), 0, &mut f), "report");
        expect_null(reptile_eval_report_accuracy_ci95(r, 0, null_mut()), "out");
        expect_null(reptile_eval_report_losses(null(), 0, fp, 1), "report");
        expect_null(reptile_eval_report_losses(r, 0, null_mut(), 1), "losses");
        expect_null(reptile_eval_report_accuracies(null(), 0, fp, 1), "report");
        expect_null(reptile_eval_report_accuracies(r, 0, null_mut(), 1), "accuracies");

        // Sine sampler.
        expect_null(reptile_sine_sampler_new(0, null_mut()), "out");
        reptile_sine_sampler_free(null_mut());
        expect_null(reptile_sine_grid(null_mut(), 50), "x");
        let mut f2 = 0f32;
        expect_null(reptile_sine_sampler_sample(null_mut(), &mut f, &mut f2), "sampler");
        expect_null(reptile_sine_sampler_sample(s, null_mut(), &mut f2), "amplitude");
        expect_null(reptile_sine_sampler_sample(s, &mut f2, null_mut()), "phase");
        let (b0, b1, b2, b3) = (fp, fp.add(50), fp.add(100), fp.add(150));
        expect_null(reptile_sine_sampler_train_batch(null_mut(), 1, b0, 50, b1, 50), "sampler");
        expect_null(reptile_sine_sampler_train_batch(s, 1, null_mut(), 50, b1, 50), "x");
        expect_null(reptile_sine_sampler_train_batch(s, 1, b0, 50, null_mut(), 50), "y");
        expect_null(reptile_sine_sampler_eval_tasks(null_mut(), 1, 10, b0, 10, b1, 10, b2, 50, b3, 50), "sampler");
        expect_null(reptile_sine_sampler_eval_tasks(s, 1, 10, null_mut(), 10, b1, 10, b2, 50, b3, 50), "support_x");
        expect_null(reptile_sine_sampler_eval_tasks(s, 1, 10, b0, 10, null_mut(), 10, b2, 50, b3, 50), "support_y");
        expect_null(reptile_sine_sampler_eval_tasks(s, 1, 10, b0, 10, b1, 10, null_mut(), 50, b3, 50), "query_x");
        expect_null(reptile_sine_sampler_eval_tasks(s, 1, 10, b0, 10, b1, 10, b2, 50, null_mut(), 50), "query_y");
        expect_null(reptile_trainer_step_sine(null_mut(), s, &mut st), "trainer");
        expect_null(reptile_trainer_step_sine(t, null_mut(), &mut st), "sampler");
        expect_null(reptile_trainer_step_sine(t, s, null_mut()), "stats");
        expect_null(reptile_trainer_train_sine_resident(null_mut(), 10, 0, buf.as_mut_ptr(), 2), "trainer");
        expect_null(reptile_trainer_train_sine_resident(t, 10, 0, null_mut(), 2), "losses");
        expect_null(reptile_trainer_evaluate_sine(null(), s, 1, 10, steps.as_ptr(), 2, &mut ro), "trainer");
        expect_null(reptile_trainer_evaluate_sine(t, null_mut(), 1, 10, steps.as_ptr(), 2, &mut ro), "sampler");
        expect_null(reptile_trainer_evaluate_sine(t, s, 1, 10, null(), 2, &mut ro), "steps");
        expect_null(reptile_trainer_evaluate_sine(t, s, 1, 10, steps.as_ptr(), 2, null_mut()), "out");

        // No output handle was written by any failed call.
        assert!(mo.is_null() && to.is_null() && ro.is_null());

        reptile_eval_report_free(r);
        reptile_sine_sampler_free(s);
        reptile_trainer_free(t);
        reptile_model_free(m);
    }
}

#[test]
fn wrong_lengths_and_shapes() {
    let m = sine_model();
    let c = config(1);
    let t = new_trainer(m, &c);
    let s = new_sampler(0);
    let p = 16 * 2 + 17 * 16 + 17;
    let (x, y) = sine_batch(1, 2);
    let steps = [0usize, 2];
    // SAFETY (whole block): every buffer has at least the length passed.
    unsafe {
        let mut buf = vec![7f32; 400];
        let fp = buf.as_mut_ptr();
        let mut ubuf = [0usize; 8];
        let (mut mo, mut ro) = (null_mut(), null_mut());
        let mut st = std::mem::zeroed::<reptile_step_stats>();
        let mut ds = std::mem::zeroed::<reptile_delta_stats>();
        let sh = reptile_status::ShapeMismatch;
        let inv = reptile_status::InvalidArgument;

        // Specs.
        expect(reptile_model_new(SINE.as_ptr(), 1, 0, 0, 0, &mut mo), inv, "at least [in, out]");
        expect(reptile_model_new([1usize, 0, 1].as_ptr(), 3, 0, 0, 0, &mut mo), inv, "width 1 is 0");
        expect(reptile_model_new(SINE.as_ptr(), 4, 2, 0, 0, &mut mo), inv, "activation = 2");
        expect(reptile_model_new(SINE.as_ptr(), 4, 0, 5, 0, &mut mo), inv, "loss = 5");
        expect(reptile_model_new([3usize, 1].as_ptr(), 2, 0, 1, 0, &mut mo), inv, "at least 2 outputs");
        expect(reptile_model_new(SINE.as_ptr(), usize::MAX, 0, 0, 0, &mut mo), inv, "more than any buffer");
        expect(reptile_model_from_params(SINE.as_ptr(), 4, 0, 0, fp, p - 1, &mut mo), sh, "params has");
        expect(reptile_model_from_params(SINE.as_ptr(), 4, 0, 0, fp, p + 1, &mut mo), sh, "params has");
        assert!(mo.is_null());

        // Model buffers.
        expect(reptile_model_widths(m, ubuf.as_mut_ptr(), 3), sh, "widths has 3");
        expect(reptile_model_widths(m, ubuf.as_mut_ptr(), 5), sh, "widths has 5");
        expect(reptile_model_get_params(m, fp, p - 1), sh, "params has");
        expect(reptile_model_get_params(m, fp, p + 1), sh, "params has");
        assert!(buf.iter().all(|&v| v == 7.0), "nothing written on failure");
        let fp = buf.as_mut_ptr();
        expect(reptile_model_set_params(m, fp, p + 1), sh, "params has");
        expect(reptile_model_predict(m, x.as_ptr(), 0, fp, 0), sh, "not a non-zero multiple");
        expect(reptile_model_predict(m, x.as_ptr(), 10, fp, 9), sh, "y has 9");
        expect(reptile_model_predict(m, x.as_ptr(), 10, fp, 11), sh, "y has 11");
        let wide = new_model(&[3, 4, 2], 0, 0, 0);
        expect(reptile_model_predict(wide, x.as_ptr(), 10, fp, 10), sh, "multiple of the input width 3");
        // Overlapping input and output, and a misaligned buffer.
        let xy = buf.as_mut_ptr();
        expect(reptile_model_predict(m, xy, 10, xy.add(5), 10), inv, "overlap");
        let misaligned = (x.as_ptr() as *const u8).add(1) as *const f32;
        expect(reptile_model_predict(m, misaligned, 10, fp, 10), inv, "not aligned");

        // Task batches.
        let mut b = view(2, 50, &x, &y);
        b.n_x = 99;
        expect(reptile_trainer_step(t, &b, &mut st), sh, "x has 99");
        let mut b = view(2, 50, &x, &y);
        b.n_y = 99;
        expect(reptile_trainer_step(t, &b, &mut st), sh, "y has 99");
        let b = view(2, 50, &x[..50], &y[..50]);
        expect(reptile_trainer_step(t, &b, &mut st), sh, "x has 50");
        let b = view(0, 50, &x, &y);
        expect(reptile_trainer_step(t, &b, &mut st), inv, "at least one task");
        let b = view(2, 50, &x, &y);
        let tw = new_trainer(wide, &c);
        expect(reptile_trainer_step(tw, &b, &mut st), sh, "expected n_tasks·n_points·in");
        let mut it = 9u64;
        ok(reptile_trainer_iteration(t, &mut it));
        assert_eq!(it, 0, "failed steps do not advance the iteration");

        // Split steps.
        expect(reptile_trainer_task_deltas(t, &b, 0, fp, p - 1, &mut ds), sh, "delta_sum has");
        let xb = x.as_ptr() as *mut f32;
        expect(reptile_trainer_task_deltas(t, &b, 0, xb, p, &mut ds), inv, "overlap");
        ds.tasks = 1;
        expect(reptile_trainer_apply_delta(t, fp, p + 1, &ds, &mut st), sh, "delta_sum has");
        ds.tasks = 0;
        expect(reptile_trainer_apply_delta(t, fp, p, &ds, &mut st), inv, "zero tasks");

        // Adaptation and evaluation.
        let one = view(1, 50, &x[..50], &y[..50]);
        expect(reptile_trainer_adapt(t, &b, 4, &mut mo), inv, "one task");
        expect(reptile_model_adapt(m, &b, 0.1, 4, 0, 0, &mut mo), inv, "one task");
        expect(reptile_model_adapt(m, &one, 0.1, 0, 0, 0, &mut mo), inv, "steps");
        expect(reptile_trainer_adapt_predict(t, &one, 4, x.as_ptr(), 50, fp, 49), sh, "y has 49");
        expect(reptile_trainer_adapt_predict(t, &one, 4, x.as_ptr(), 50, xb, 50), inv, "overlap");
        expect(reptile_trainer_evaluate(t, &b, &one, steps.as_ptr(), 2, &mut ro), sh, "disagree");
        expect(reptile_trainer_evaluate_views(t, &b, &one, 1, steps.as_ptr(), 2, &mut ro), sh, "disagree");
        expect(reptile_trainer_evaluate_views(t, &b, &b, 7, steps.as_ptr(), 2, &mut ro), sh, "do not divide");
        expect(reptile_trainer_evaluate(t, &b, &b, steps.as_ptr(), 0, &mut ro), inv, "ascending and non-empty");
        let desc = [4usize, 2];
        expect(reptile_trainer_evaluate(t, &b, &b, desc.as_ptr(), 2, &mut ro), inv, "ascending");
        assert!(mo.is_null() && ro.is_null());

        // Trainer buffers.
        expect(reptile_trainer_get_params(t, fp, p + 1), sh, "params has");
        expect(reptile_trainer_set_params(t, fp, p - 1), sh, "params has");

        // Report buffers and indices.
        let mut r = null_mut();
        ok(reptile_trainer_evaluate(t, &b, &b, steps.as_ptr(), 2, &mut r));
        let mut f = 0f32;
        expect(reptile_eval_report_steps(r, ubuf.as_mut_ptr(), 3), sh, "steps has 3");
        expect(reptile_eval_report_losses(r, 0, fp, 3), sh, "losses has 3");
        expect(reptile_eval_report_losses(r, 2, fp, 2), inv, "checkpoint 2");
        expect(reptile_eval_report_median_loss(r, 9, &mut f), inv, "checkpoint 9");
        expect(reptile_eval_report_mean_accuracy(r, 9, &mut f), inv, "checkpoint 9");
        expect(reptile_eval_report_accuracy_ci95(r, 1, &mut f), reptile_status::InvalidState, "regression");
        let mut u = 0usize;
        ok(reptile_eval_report_n_tasks(r, &mut u));
        ok(reptile_eval_report_n_checkpoints(r, &mut u));
        reptile_eval_report_free(r);

        // Sampler buffers.
        expect(reptile_sine_grid(fp, 49), sh, "x has 49");
        expect(reptile_sine_sampler_train_batch(s, 2, fp, 100, fp.add(100), 99), sh, "y has 99");
        expect(reptile_sine_sampler_train_batch(s, 2, fp, 101, fp.add(101), 100), sh, "x has 101");
        expect(reptile_sine_sampler_train_batch(s, 0, fp, 0, fp.add(1), 0), inv, "n_tasks");
        expect(reptile_sine_sampler_train_batch(s, 1, fp, 50, fp.add(25), 50), inv, "overlap");
        expect(reptile_sine_sampler_train_batch(s, usize::MAX / 4, fp, 50, fp.add(50), 50), inv, "too large");
        let (b0, b1, b2, b3) = (fp, fp.add(100), fp.add(200), fp.add(300));
        expect(reptile_sine_sampler_eval_tasks(s, 1, 51, b0, 51, b1, 51, b2, 50, b3, 50), inv, "shots = 51");
        expect(reptile_sine_sampler_eval_tasks(s, 1, 0, b0, 0, b1, 0, b2, 50, b3, 50), inv, "shots = 0");
        expect(reptile_sine_sampler_eval_tasks(s, 1, 10, b0, 9, b1, 10, b2, 50, b3, 50), sh, "support_x has 9");
        expect(reptile_sine_sampler_eval_tasks(s, 1, 10, b0, 10, b1, 11, b2, 50, b3, 50), sh, "support_y has 11");
        expect(reptile_sine_sampler_eval_tasks(s, 1, 10, b0, 10, b1, 10, b2, 49, b3, 50), sh, "query_x has 49");
        expect(reptile_sine_sampler_eval_tasks(s, 1, 10, b0, 10, b1, 10, b2, 50, b3, 51), sh, "query_y has 51");
        expect(reptile_sine_sampler_eval_tasks(s, 1, 10, b0, 10, b0, 10, b2, 50, b3, 50), inv, "overlap");
        expect(reptile_sine_sampler_eval_tasks(s, 0, 10, b0, 0, b1, 0, b2, 0, b3, 0), inv, "n_tasks");
        expect(reptile_trainer_evaluate_sine(t, s, 0, 10, steps.as_ptr(), 2, &mut ro), inv, "n_tasks");
        expect(reptile_trainer_evaluate_sine(t, s, 1, 60, steps.as_ptr(), 2, &mut ro), inv, "shots");
        expect(reptile_trainer_train_sine_resident(t, 10, 0, fp, 3), sh, "losses has 3 elements");
        expect(reptile_trainer_train_sine_resident(t, 10, 0, fp, 0), sh, "losses has 0 elements");
        expect(reptile_trainer_train_sine_resident(tw, 10, 0, fp, 2), sh, "sine workload");
        expect(reptile_trainer_train_sine_resident(t, 0, 0, fp, 2), inv, "at least 1");
        ok(reptile_trainer_step_sine(t, s, &mut st));
        assert!(ro.is_null());

        reptile_trainer_free(tw);
        reptile_model_free(wide);
        reptile_sine_sampler_free(s);
        reptile_trainer_free(t);
        reptile_model_free(m);
    }
}

#[test]
fn non_finite_values() {
    let m = sine_model();
    let c = config(1);
    let t = new_trainer(m, &c);
    let p = 16 * 2 + 17 * 16 + 17;
    let (x, y) = sine_batch(2, 1);
    let nf = reptile_status::NonFinite;
    // SAFETY (whole block): valid handles and buffers.
    unsafe {
        let mut theta = vec![0.1f32; p];
        theta[17] = f32::NAN;
        let mut mo = null_mut();
        expect(reptile_model_from_params(SINE.as_ptr(), 4, 0, 0, theta.as_ptr(), p, &mut mo), nf, "[17]");
        expect(reptile_model_set_params(m, theta.as_ptr(), p), nf, "θ[17]");
        expect(reptile_trainer_set_params(t, theta.as_ptr(), p), nf, "θ[17]");
        // The model and trainer are unchanged.
        let mut back = vec![0f32; p];
        ok(reptile_model_get_params(m, back.as_mut_ptr(), p));
        assert!(back.iter().all(|v| v.is_finite()));
        ok(reptile_trainer_get_params(t, back.as_mut_ptr(), p));
        assert!(back.iter().all(|v| v.is_finite()));

        let mut xi = x.clone();
        xi[3] = f32::INFINITY;
        let mut out = vec![0f32; 50];
        expect(reptile_model_predict(m, xi.as_ptr(), 50, out.as_mut_ptr(), 50), nf, "x[3]");
        let mut st = std::mem::zeroed::<reptile_step_stats>();
        expect(reptile_trainer_step(t, &view(1, 50, &xi, &y), &mut st), nf, "x[3]");
        let mut yn = y.clone();
        yn[49] = f32::NEG_INFINITY;
        let bad = view(1, 50, &x, &yn);
        expect(reptile_trainer_step(t, &bad, &mut st), nf, "y[49]");
        let good = view(1, 50, &x, &y);
        let steps = [0usize, 1];
        let mut ro = null_mut();
        expect(reptile_trainer_evaluate(t, &bad, &good, steps.as_ptr(), 2, &mut ro), nf, "y[49]");
        expect(reptile_trainer_evaluate(t, &good, &bad, steps.as_ptr(), 2, &mut ro), nf, "y[49]");
        expect(reptile_model_adapt(m, &good, f32::NAN, 3, 0, 0, &mut mo), nf, "lr");
        expect(reptile_trainer_adapt(t, &bad, 3, &mut mo), nf, "y[49]");
        expect(reptile_trainer_adapt_predict(t, &good, 3, xi.as_ptr(), 50, out.as_mut_ptr(), 50), nf, "x[3]");

        // A non-finite delta diverges and leaves θ and the iteration count unchanged.
        let mut sum = vec![0f32; p];
        sum[5] = f32::NAN;
        let ds = reptile_delta_stats { tasks: 1, loss_before_sum: 1.0, loss_after_sum: 1.0 };
        expect(reptile_trainer_apply_delta(t, sum.as_ptr(), p, &ds, &mut st), reptile_status::Diverged, "[5]");
        let ds = reptile_delta_stats { tasks: 1, loss_before_sum: f64::NAN, loss_after_sum: 1.0 };
        sum[5] = 0.0;
        expect(reptile_trainer_apply_delta(t, sum.as_ptr(), p, &ds, &mut st), reptile_status::Diverged, "loss");
        // A huge inner step size diverges in training.
        let mut hot = c;
        hot.inner_lr = 1e30;
        let th = new_trainer(m, &hot);
        let big: Vec<f32> = y.iter().map(|v| v * 1e6).collect();
        expect(reptile_trainer_step(th, &view(1, 50, &x, &big), &mut st), reptile_status::Diverged, "diverged");
        let mut it = 9u64;
        ok(reptile_trainer_iteration(th, &mut it));
        assert_eq!(it, 0);
        assert!(mo.is_null() && ro.is_null());

        reptile_trainer_free(th);
        reptile_trainer_free(t);
        reptile_model_free(m);
    }
}

#[test]
fn freed_then_null_handles() {
    // The host pattern: free, set to NULL, and every later call reports NULL_ARGUMENT; a
    // second free of the NULL pointer is a no-op.
    let mut m = sine_model();
    let c = config(1);
    let mut t = new_trainer(m, &c);
    let mut s = new_sampler(3);
    let steps = [0usize];
    let mut r = null_mut();
    let (x, y) = sine_batch(4, 1);
    let b = view(1, 50, &x, &y);
    // SAFETY (whole block): handles are live until freed, NULL afterwards.
    unsafe {
        ok(reptile_trainer_evaluate(t, &b, &b, steps.as_ptr(), 1, &mut r));
        reptile_eval_report_free(r);
        r = null_mut();
        reptile_sine_sampler_free(s);
        s = null_mut();
        reptile_trainer_free(t);
        t = null_mut();
        reptile_model_free(m);
        m = null_mut();

        let mut u = 0usize;
        let mut f = 0f32;
        let mut st = std::mem::zeroed::<reptile_step_stats>();
        expect_null(reptile_model_num_params(m, &mut u), "model");
        let mut out = [0f32; 50];
        expect_null(reptile_model_predict(m, x.as_ptr(), 50, out.as_mut_ptr(), 50), "model");
        expect_null(reptile_trainer_step(t, &b, &mut st), "trainer");
        expect_null(reptile_trainer_step_sine(t, s, &mut st), "trainer");
        let mut f2 = 0f32;
        expect_null(reptile_sine_sampler_sample(s, &mut f, &mut f2), "sampler");
        expect_null(reptile_eval_report_mean_loss(r, 0, &mut f), "report");
        reptile_eval_report_free(r);
        reptile_sine_sampler_free(s);
        reptile_trainer_free(t);
        reptile_model_free(m);
    }
}

#[test]
fn handles_are_usable_from_several_threads() {
    // Models are read concurrently; trainers are moved to another thread and used there.
    struct SendPtr<T>(*mut T);
    // SAFETY: the handles' documented thread safety is what this test exercises.
    unsafe impl<T> Send for SendPtr<T> {}
    unsafe impl<T> Sync for SendPtr<T> {}
    let m = SendPtr(sine_model());
    let x: Vec<f32> = (0..50).map(|i| i as f32 / 10.0).collect();
    let mut want = vec![0f32; 50];
    // SAFETY: live handle, valid buffers.
    ok(unsafe { reptile_model_predict(m.0, x.as_ptr(), 50, want.as_mut_ptr(), 50) });
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                let m = &m;
                let mut y = vec![0f32; 50];
                for _ in 0..50 {
                    // SAFETY: concurrent predicts on one model are documented as safe.
                    ok(unsafe { reptile_model_predict(m.0, x.as_ptr(), 50, y.as_mut_ptr(), 50) });
                    assert_eq!(y, want);
                }
            });
        }
    });
    let t = SendPtr(new_trainer(m.0, &config(2)));
    let s = SendPtr(new_sampler(0));
    let iters = std::thread::spawn(move || {
        let (t, s) = (t, s);
        let mut st = reptile_step_stats { iteration: 0, tasks: 0, epsilon: 0.0, loss_before: 0.0, loss_after: 0.0 };
        // SAFETY: the trainer and sampler are used from this thread only.
        unsafe {
            for _ in 0..3 {
                ok(reptile_trainer_step_sine(t.0, s.0, &mut st));
            }
            let mut it = 0u64;
            ok(reptile_trainer_iteration(t.0, &mut it));
            reptile_trainer_free(t.0);
            reptile_sine_sampler_free(s.0);
            it
        }
    })
    .join()
    .unwrap();
    assert_eq!(iters, 3);
    // SAFETY: live handle.
    unsafe { reptile_model_free(m.0) };
}
