//! Every error path returns the right `reptile::Error` variant, without panicking: specs,
//! parameters, task batches, configurations, prediction, divergence, and checkpoints.

mod common;

use common::*;
use reptile::io::checkpoint;
use reptile::workloads::sine::SineTasks;
use reptile::{
    Activation, DeltaSum, Error, EvalTasks, InnerLoop, Loss, MlpSpec, Model, OuterRule, ReptileConfig, Targets,
    TaskBatch, Trainer,
};
use std::borrow::Cow;
use std::path::PathBuf;

fn mse(w: &[usize]) -> MlpSpec {
    MlpSpec::new(w, Activation::Tanh, Loss::Mse).unwrap()
}
fn ce(w: &[usize]) -> MlpSpec {
    MlpSpec::new(w, Activation::Relu, Loss::SoftmaxCrossEntropy).unwrap()
}
fn vals(v: Vec<f32>) -> Targets<'static> {
    Targets::Values(Cow::Owned(v))
}
fn labs(v: Vec<u32>) -> Targets<'static> {
    Targets::Labels(Cow::Owned(v))
}

macro_rules! assert_err {
    ($e:expr, $pat:pat) => {
        match $e {
            Err($pat) => {}
            Err(other) => panic!("{}: wrong error variant {other:?}", stringify!($e)),
            Ok(_) => panic!("{}: accepted", stringify!($e)),
        }
    };
}

/// A unique scratch directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("reptile-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn spec_errors() {
    for act in [Activation::Tanh, Activation::Relu] {
        for loss in [Loss::Mse, Loss::SoftmaxCrossEntropy] {
            assert_err!(MlpSpec::new(&[], act, loss), Error::InvalidArgument(_));
            assert_err!(MlpSpec::new(&[3], act, loss), Error::InvalidArgument(_));
            assert_err!(MlpSpec::new(&[0, 4], act, loss), Error::InvalidArgument(_));
            assert_err!(MlpSpec::new(&[2, 0, 4], act, loss), Error::InvalidArgument(_));
            assert_err!(MlpSpec::new(&[2, 4, 0], act, loss), Error::InvalidArgument(_));
            assert_err!(MlpSpec::new(&[2, (1 << 20) + 1, 4], act, loss), Error::InvalidArgument(_));
            // Too many parameters in total (> i32::MAX), each width valid.
            assert_err!(MlpSpec::new(&[1 << 20, 1 << 20, 2], act, loss), Error::InvalidArgument(_));
        }
    }
    assert_err!(MlpSpec::new(&[3, 8, 1], Activation::Tanh, Loss::SoftmaxCrossEntropy), Error::InvalidArgument(_));
    assert_err!(MlpSpec::new(&[3, 1], Activation::Relu, Loss::SoftmaxCrossEntropy), Error::InvalidArgument(_));
    // The boundaries are accepted.
    assert!(MlpSpec::new(&[1, 1], Activation::Tanh, Loss::Mse).is_ok());
    assert!(MlpSpec::new(&[1, 2], Activation::Tanh, Loss::SoftmaxCrossEntropy).is_ok());
}

#[test]
fn model_errors() {
    let spec = mse(&[2, 5, 3]);
    let n = spec.num_params();
    assert_eq!(n, num_params(spec.widths()));
    let good = uniform_vec(&mut rng(1), n, -1.0, 1.0);
    for len in [0, 1, n - 1, n + 1, 2 * n] {
        let v = uniform_vec(&mut rng(len as u64), len, -1.0, 1.0);
        assert_err!(Model::from_params(spec.clone(), v), Error::ShapeMismatch(_));
    }
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for pos in [0, n / 2, n - 1] {
            let mut v = good.clone();
            v[pos] = bad;
            assert_err!(Model::from_params(spec.clone(), v), Error::NonFinite(_));
        }
    }
    let m = Model::from_params(spec.clone(), good.clone()).unwrap();
    assert_eq!(m.params(), good.as_slice());

    // predict: x must be a non-empty multiple of the input width and finite.
    for len in [0usize, 1, 3, 5] {
        let x = uniform_vec(&mut rng(7), len, -1.0, 1.0);
        assert_err!(m.predict(&x), Error::ShapeMismatch(_));
    }
    let mut x = uniform_vec(&mut rng(8), 6, -1.0, 1.0);
    assert_eq!(m.predict(&x).unwrap().len(), 9);
    x[4] = f32::NAN;
    assert_err!(m.predict(&x), Error::NonFinite(_));
    x[4] = f32::NEG_INFINITY;
    assert_err!(m.predict(&x), Error::NonFinite(_));
}

#[test]
fn task_batch_errors() {
    let spec = mse(&[2, 4, 3]);
    let mut r = rng(3);
    let (n, m) = (3, 5);
    let x = uniform_vec(&mut r, n * m * 2, -2.0, 2.0);
    let y = uniform_vec(&mut r, n * m * 3, -2.0, 2.0);
    assert!(TaskBatch::new(&spec, n, m, x.clone(), vals(y.clone())).is_ok());
    // Mismatched lengths.
    assert_err!(TaskBatch::new(&spec, n, m, x[1..].to_vec(), vals(y.clone())), Error::ShapeMismatch(_));
    assert_err!(TaskBatch::new(&spec, n, m, x.clone(), vals(y[1..].to_vec())), Error::ShapeMismatch(_));
    assert_err!(TaskBatch::new(&spec, n, m + 1, x.clone(), vals(y.clone())), Error::ShapeMismatch(_));
    assert_err!(TaskBatch::new(&spec, n + 1, m, x.clone(), vals(y.clone())), Error::ShapeMismatch(_));
    // Zero tasks or points.
    assert_err!(TaskBatch::new(&spec, 0, m, Vec::new(), vals(Vec::new())), Error::InvalidArgument(_));
    assert_err!(TaskBatch::new(&spec, n, 0, Vec::new(), vals(Vec::new())), Error::InvalidArgument(_));
    // Too many tasks / overflowing sizes.
    assert_err!(TaskBatch::new(&spec, (1 << 24) + 1, 1, Vec::new(), vals(Vec::new())), Error::InvalidArgument(_));
    assert_err!(
        TaskBatch::new(&spec, 1 << 20, usize::MAX / 2, Vec::new(), vals(Vec::new())),
        Error::InvalidArgument(_)
    );
    // Non-finite inputs / targets.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut xb = x.clone();
        xb[7] = bad;
        assert_err!(TaskBatch::new(&spec, n, m, xb, vals(y.clone())), Error::NonFinite(_));
        let mut yb = y.clone();
        yb[y.len() - 1] = bad;
        assert_err!(TaskBatch::new(&spec, n, m, x.clone(), vals(yb)), Error::NonFinite(_));
    }
    // Target kind must match the loss.
    assert_err!(TaskBatch::new(&spec, n, m, x.clone(), labs(vec![0; n * m])), Error::InvalidArgument(_));
    let cspec = ce(&[2, 4, 3]);
    assert_err!(TaskBatch::new(&cspec, n, m, x.clone(), vals(y.clone())), Error::InvalidArgument(_));
    // Labels: count and range.
    let mut l = labels(&mut r, n * m, 3);
    assert!(TaskBatch::new(&cspec, n, m, x.clone(), labs(l.clone())).is_ok());
    assert_err!(TaskBatch::new(&cspec, n, m, x.clone(), labs(l[1..].to_vec())), Error::ShapeMismatch(_));
    for bad in [3u32, 4, u32::MAX] {
        l[9] = bad;
        assert_err!(TaskBatch::new(&cspec, n, m, x.clone(), labs(l.clone())), Error::InvalidArgument(_));
    }
    // task(i) out of range is None.
    let b = TaskBatch::new(&spec, n, m, x.clone(), vals(y.clone())).unwrap();
    assert!(b.task(n).is_none());
    assert_eq!(b.task(n - 1).unwrap().x(), &x[(n - 1) * m * 2..]);
    // Support and query must agree.
    let q =
        TaskBatch::new(&spec, n - 1, m, x[..(n - 1) * m * 2].to_vec(), vals(y[..(n - 1) * m * 3].to_vec())).unwrap();
    assert_err!(EvalTasks::new(b.clone(), q), Error::ShapeMismatch(_));
    let cb = TaskBatch::new(&ce(&[2, 4, 3]), n, m, x.clone(), labs(vec![1; n * m])).unwrap();
    assert_err!(EvalTasks::new(b, cb), Error::ShapeMismatch(_));
    // Sine sampler: shots out of range.
    for shots in [0usize, 51] {
        assert_err!(SineTasks::new(0).eval_tasks(&mse(&[1, 8, 1]), 2, shots), Error::InvalidArgument(_));
    }
}

fn sine_cfg() -> ReptileConfig {
    ReptileConfig { threads: 1, ..ReptileConfig::sine() }
}

#[test]
fn trainer_config_errors() {
    let spec = mse(&[1, 8, 1]);
    let model = Model::new(spec.clone(), 0);
    let ok = sine_cfg();
    assert!(Trainer::new(model.clone(), ok.clone()).is_ok());
    let bad_inner = |f: &dyn Fn(&mut InnerLoop)| {
        let mut a = ok.clone();
        f(&mut a.train);
        let mut b = ok.clone();
        f(&mut b.eval);
        [a, b]
    };
    for c in bad_inner(&|i| i.lr = f32::NAN).into_iter().chain(bad_inner(&|i| i.lr = f32::INFINITY)) {
        assert_err!(Trainer::new(model.clone(), c), Error::NonFinite(_));
    }
    for c in bad_inner(&|i| i.lr = -0.01).into_iter().chain(bad_inner(&|i| i.steps = 0)) {
        assert_err!(Trainer::new(model.clone(), c), Error::InvalidArgument(_));
    }
    for (s, e) in [(f32::NAN, 0.0), (0.1, f32::NAN), (f32::INFINITY, 0.0), (0.1, f32::NEG_INFINITY)] {
        let c = ReptileConfig { eps_start: s, eps_end: e, ..ok.clone() };
        assert_err!(Trainer::new(model.clone(), c), Error::NonFinite(_));
    }
    assert_err!(
        Trainer::new(model.clone(), ReptileConfig { planned_iters: 0, ..ok.clone() }),
        Error::InvalidArgument(_)
    );
    assert_err!(Trainer::new(model.clone(), ReptileConfig { meta_batch: 0, ..ok.clone() }), Error::InvalidArgument(_));
    assert_err!(
        Trainer::new(model.clone(), ReptileConfig { outer: OuterRule::Fomaml { tail: Some(0) }, ..ok.clone() }),
        Error::InvalidArgument(_)
    );
    // Non-finite θ slipped in through params_mut.
    let mut m2 = model.clone();
    m2.params_mut()[3] = f32::NAN;
    assert_err!(Trainer::new(m2, ok.clone()), Error::NonFinite(_));
    // set_params.
    let mut tr = Trainer::new(model.clone(), ok).unwrap();
    assert_err!(tr.set_params(&model.params()[1..]), Error::ShapeMismatch(_));
    let mut p = model.params().to_vec();
    p[0] = f32::INFINITY;
    assert_err!(tr.set_params(&p), Error::NonFinite(_));
    assert_eq!(tr.params(), model.params(), "rejected set_params leaves θ");
}

#[test]
fn trainer_batch_errors() {
    let spec = mse(&[1, 8, 1]);
    let model = Model::new(spec.clone(), 0);
    let mut tr = Trainer::new(model.clone(), sine_cfg()).unwrap();
    let mut r = rng(4);
    // Other input width, other output width, other loss.
    let other_in = TaskBatch::new(
        &mse(&[2, 8, 1]),
        1,
        4,
        uniform_vec(&mut r, 8, -1.0, 1.0),
        vals(uniform_vec(&mut r, 4, -1.0, 1.0)),
    )
    .unwrap();
    let other_out = TaskBatch::new(
        &mse(&[1, 8, 2]),
        1,
        4,
        uniform_vec(&mut r, 4, -1.0, 1.0),
        vals(uniform_vec(&mut r, 8, -1.0, 1.0)),
    )
    .unwrap();
    let other_loss =
        TaskBatch::new(&ce(&[1, 8, 2]), 1, 4, uniform_vec(&mut r, 4, -1.0, 1.0), labs(vec![0, 1, 1, 0])).unwrap();
    for b in [&other_in, &other_out, &other_loss] {
        assert_err!(tr.step(b), Error::ShapeMismatch(_));
        assert_err!(tr.task_deltas(b, 0), Error::ShapeMismatch(_));
        assert_err!(tr.adapt(b, 3), Error::ShapeMismatch(_));
        assert_err!(EvalTasks::new(b.clone(), b.clone()).and_then(|e| tr.evaluate(&e)), Error::ShapeMismatch(_));
    }
    assert_eq!(tr.iteration(), 0);
    assert_eq!(tr.params(), model.params());
    // adapt takes one task and ≥ 1 step; evaluate_at takes ascending, non-empty steps.
    let mut tasks = SineTasks::new(4);
    let two = tasks.train_batch(&spec, 2).unwrap();
    assert_err!(tr.adapt(&two, 3), Error::InvalidArgument(_));
    assert_err!(tr.adapt(&two.task(0).unwrap(), 0), Error::InvalidArgument(_));
    let eval = tasks.eval_tasks(&spec, 3, 5).unwrap();
    for steps in [&[][..], &[3, 3], &[5, 2]] {
        assert_err!(tr.evaluate_at(&eval, steps), Error::InvalidArgument(_));
    }
    // apply_delta: wrong length, zero tasks, non-finite sums.
    let p = spec.num_params();
    assert_err!(tr.apply_delta(&DeltaSum::zeros(p + 1)), Error::ShapeMismatch(_));
    assert_err!(tr.apply_delta(&DeltaSum::zeros(p)), Error::InvalidArgument(_));
    let mut d = tr.task_deltas(&two, 0).unwrap();
    assert_err!(d.add(&DeltaSum::zeros(p - 1)), Error::ShapeMismatch(_));
    d.sum[p / 2] = f32::NAN;
    assert_err!(tr.apply_delta(&d), Error::Diverged { iteration: 0, .. });
    let mut d = tr.task_deltas(&two, 0).unwrap();
    d.loss_after_sum = f64::INFINITY;
    assert_err!(tr.apply_delta(&d), Error::Diverged { iteration: 0, .. });
    assert_eq!(tr.iteration(), 0);
    assert_eq!(tr.params(), model.params());
    // A finite delta whose scaled update overflows is rejected too.
    let mut tr_big =
        Trainer::new(model.clone(), ReptileConfig { eps_start: 1e30, eps_end: 1e30, ..sine_cfg() }).unwrap();
    let mut d = tr_big.task_deltas(&two, 0).unwrap();
    d.sum.iter_mut().for_each(|v| *v = 1e30);
    assert_err!(tr_big.apply_delta(&d), Error::Diverged { .. });
    assert_eq!(tr_big.params(), model.params());
}

/// A huge inner step size makes training blow up: the trainer reports `Diverged` and keeps θ
/// (and the iteration count) at their values before the failing step.
#[test]
fn divergence_keeps_last_finite_theta() {
    let spec = mse(&[1, 32, 32, 1]);
    for (lr, eps) in [(1e30f32, 0.1f32), (1e6, 0.1), (50.0, 1.0)] {
        let cfg = ReptileConfig {
            train: InnerLoop { lr, steps: 5, batch_size: 10 },
            eps_start: eps,
            eps_end: eps,
            ..sine_cfg()
        };
        let mut tr = Trainer::new(Model::new(spec.clone(), 2), cfg).unwrap();
        let mut tasks = SineTasks::new(2);
        let mut diverged = false;
        for it in 0..200u64 {
            let before = tr.params().to_vec();
            let batch = tasks.train_batch(&spec, 2).unwrap();
            match tr.step(&batch) {
                Ok(_) => assert!(tr.params().iter().all(|v| v.is_finite())),
                Err(Error::Diverged { iteration, reason }) => {
                    assert_eq!(iteration, it, "lr {lr}: {reason}");
                    assert_eq!(tr.iteration(), it, "iteration count unchanged");
                    assert!(tr.params().iter().all(|v| v.is_finite()), "θ finite after divergence");
                    assert_bits_eq(tr.params(), &before, &format!("lr {lr}: θ after Diverged"));
                    // Stays diverged, and stays put, on retry.
                    assert_err!(tr.step(&batch), Error::Diverged { .. });
                    assert_bits_eq(tr.params(), &before, "θ after a second Diverged");
                    diverged = true;
                    break;
                }
                Err(e) => panic!("lr {lr}: unexpected error {e:?}"),
            }
        }
        assert!(diverged, "lr {lr} did not diverge in 200 iterations");
    }
    // Adaptation with a huge step size reports Diverged too, and evaluation shows non-finite
    // losses instead of failing.
    let cfg = ReptileConfig { eval: InnerLoop { lr: 1e30, steps: 5, batch_size: 0 }, ..sine_cfg() };
    let tr = Trainer::new(Model::new(spec.clone(), 2), cfg).unwrap();
    let eval = SineTasks::new(3).eval_tasks(&spec, 2, 10).unwrap();
    assert_err!(tr.adapt(&eval.support().task(0).unwrap(), 5), Error::Diverged { .. });
    let rep = tr.evaluate(&eval).unwrap();
    assert!(rep.losses.iter().all(|l| !l.is_finite()), "losses {:?}", rep.losses);
}

fn trained(spec: &MlpSpec, iters: u64) -> Trainer {
    let cfg = ReptileConfig { eps_start: 0.37, eps_end: 0.013, planned_iters: 777, seed: 99, ..sine_cfg() };
    let mut tr = Trainer::new(Model::new(spec.clone(), 5), cfg).unwrap();
    let mut tasks = SineTasks::new(5);
    for _ in 0..iters {
        tr.step(&tasks.train_batch(spec, 1).unwrap()).unwrap();
    }
    tr
}

#[test]
fn checkpoint_round_trip() {
    let dir = TempDir::new("roundtrip");
    for spec in [mse(&[1, 16, 16, 1]), ce(&[3, 7, 4]), mse(&[2, 3])] {
        let (model, cfg, it) = if spec.in_dim() == 1 {
            let tr = trained(&spec, 13);
            (tr.model().clone(), Some(tr.config().clone()), tr.iteration())
        } else {
            (Model::new(spec.clone(), 17), None, 123_456_789_012u64)
        };
        let path = dir.path("model.safetensors");
        checkpoint::save(&path, &model, cfg.as_ref(), it).unwrap();
        let c = checkpoint::load(&path).unwrap();
        assert_eq!(c.model.spec(), &spec);
        assert_bits_eq(c.model.params(), model.params(), "θ after round trip");
        assert_eq!(c.config, cfg);
        assert_eq!(c.iteration, it);
        let c2 = checkpoint::load_expecting(&path, &spec).unwrap();
        assert_eq!(c2, c);
        // Bytes round trip the same way.
        let bytes = checkpoint::to_bytes(&model, cfg.as_ref(), it).unwrap();
        assert_eq!(checkpoint::from_bytes(&bytes).unwrap(), c);
        // (The bytes themselves are not compared: the metadata map is a HashMap, so the key
        // order in the JSON header varies between calls.)
        assert_eq!(std::fs::read(&path).unwrap().len(), bytes.len(), "save writes to_bytes");
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
    }
    // A resumed trainer continues bit-identically.
    let spec = mse(&[1, 16, 16, 1]);
    let mut a = trained(&spec, 10);
    let path = dir.path("resume.safetensors");
    checkpoint::save(&path, a.model(), Some(a.config()), a.iteration()).unwrap();
    let c = checkpoint::load_expecting(&path, &spec).unwrap();
    let mut b = Trainer::new(c.model, c.config.unwrap()).unwrap();
    b.set_iteration(c.iteration);
    let mut tasks = SineTasks::new(1234);
    for _ in 0..3 {
        let batch = tasks.train_batch(&spec, 2).unwrap();
        assert_eq!(a.step(&batch).unwrap(), b.step(&batch).unwrap());
    }
    assert_bits_eq(a.params(), b.params(), "resumed θ");
}

/// Adam with carried moments: checkpoints keep the moments, a trainer resumed from them steps
/// bit-identically, and bad moments are clear errors.
#[test]
fn checkpoint_keeps_adam_moments() {
    let dir = TempDir::new("moments");
    let spec = mse(&[1, 16, 16, 1]);
    let cfg = ReptileConfig {
        inner_optimizer: reptile::InnerOptimizer::ADAM,
        train_moments: reptile::AdamMoments::Carry,
        eval_moments: reptile::AdamMoments::Carry,
        ..sine_cfg()
    };
    let mut a = Trainer::new(Model::new(spec.clone(), 3), cfg.clone()).unwrap();
    let mut tasks = SineTasks::new(31);
    for _ in 0..6 {
        a.step(&tasks.train_batch(&spec, 2).unwrap()).unwrap();
    }
    let (v, t) = (a.adam_moments().0.to_vec(), a.adam_moments().1);
    assert!(t > 0 && v.iter().filter(|x| **x > 0.0).count() > v.len() / 2, "moments after training: t = {t}");
    let path = dir.path("adam.safetensors");
    checkpoint::save_with_moments(&path, a.model(), Some(a.config()), a.iteration(), Some((&v, t))).unwrap();
    let c = checkpoint::load_expecting(&path, &spec).unwrap();
    let (cv, ct) = c.adam_moments.clone().expect("moments saved");
    assert_eq!(ct, t);
    assert_bits_eq(&cv, &v, "moments after round trip");
    // A checkpoint without moments loads with none.
    checkpoint::save(&dir.path("plain.safetensors"), a.model(), None, 0).unwrap();
    assert_eq!(checkpoint::load(&dir.path("plain.safetensors")).unwrap().adam_moments, None);
    // Resumed with the moments: the same steps and θ; without them: another θ.
    let mut b = Trainer::new(c.model.clone(), c.config.clone().unwrap()).unwrap();
    b.set_iteration(c.iteration);
    b.set_adam_moments(&cv, ct).unwrap();
    let mut fresh = Trainer::new(c.model.clone(), c.config.clone().unwrap()).unwrap();
    fresh.set_iteration(c.iteration);
    let mut tasks = SineTasks::new(32);
    for _ in 0..3 {
        let batch = tasks.train_batch(&spec, 2).unwrap();
        assert_eq!(a.step(&batch).unwrap(), b.step(&batch).unwrap());
        fresh.step(&batch).unwrap();
    }
    assert_bits_eq(a.params(), b.params(), "θ resumed with moments");
    assert_ne!(a.params(), fresh.params(), "the moments change the steps");
    // Evaluation from the carried moments differs from evaluation from zero.
    let eval = tasks.eval_tasks(&spec, 4, 10).unwrap();
    let with = b.evaluate(&eval).unwrap();
    let mut reset_cfg = b.config().clone();
    reset_cfg.eval_moments = reptile::AdamMoments::Reset;
    let r = Trainer::new(b.model().clone(), reset_cfg).unwrap().evaluate(&eval).unwrap();
    assert_ne!(with.mean_loss(with.last()), r.mean_loss(r.last()), "carried vs reset moments at evaluation");
    // Bad moments: wrong length, NaN, negative — on the trainer and in a file.
    assert_err!(b.set_adam_moments(&v[1..], t), Error::InvalidArgument(_));
    assert_err!(
        checkpoint::save_with_moments(&path, b.model(), None, 0, Some((&v[1..], t))),
        Error::InvalidArgument(_)
    );
    for bad in [f32::NAN, f32::INFINITY, -1.0] {
        let mut w = v.clone();
        w[7] = bad;
        assert_err!(b.set_adam_moments(&w, t), Error::InvalidArgument(_));
        let bytes = checkpoint::to_bytes_with_moments(b.model(), None, 0, Some((&w, t))).unwrap();
        assert!(is_format(checkpoint::from_bytes(&bytes)), "moment {bad} in a file");
    }
}

fn is_format(r: reptile::Result<checkpoint::Checkpoint>) -> bool {
    matches!(r, Err(Error::Format { .. }))
}

#[test]
fn checkpoint_errors() {
    let dir = TempDir::new("ckpt-errors");
    let spec = mse(&[1, 16, 16, 1]);
    let tr = trained(&spec, 3);
    let path = dir.path("good.safetensors");
    checkpoint::save(&path, tr.model(), Some(tr.config()), tr.iteration()).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    // Missing file, a directory.
    assert_err!(checkpoint::load(&dir.path("missing.safetensors")), Error::Io { .. });
    assert_err!(checkpoint::load(&dir.0), Error::Io { .. });
    assert_err!(checkpoint::load_expecting(&dir.path("missing"), &spec), Error::Io { .. });
    // Saving into a missing directory.
    assert_err!(checkpoint::save(&dir.path("no/such/dir/x.safetensors"), tr.model(), None, 0), Error::Io { .. });

    // Every truncation of a valid file is a Format error (the path is reported).
    let cut = dir.path("cut.safetensors");
    for len in (0..bytes.len()).step_by(7).chain([bytes.len() - 1, bytes.len() - 4, 8, 9]) {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        match checkpoint::load(&cut) {
            Err(Error::Format { path, .. }) => assert_eq!(path.as_deref(), Some(cut.as_path())),
            other => panic!("truncated to {len} of {} bytes: {other:?}", bytes.len()),
        }
    }
    // Random bytes, also behind a plausible header length.
    let mut r = rng(6);
    for n in [0usize, 1, 7, 8, 64, 4096] {
        let junk: Vec<u8> = (0..n).map(|_| uniform_vec(&mut r, 1, 0.0, 256.0)[0] as u8).collect();
        assert!(is_format(checkpoint::from_bytes(&junk)), "{n} random bytes");
        if n >= 16 {
            let mut j = junk.clone();
            j[..8].copy_from_slice(&((n - 8) as u64).to_le_bytes());
            assert!(is_format(checkpoint::from_bytes(&j)), "{n} random bytes after a length");
        }
    }
    // Another spec.
    for other in
        [mse(&[1, 16, 1]), mse(&[1, 16, 16, 2]), MlpSpec::new(&[1, 16, 16, 1], Activation::Relu, Loss::Mse).unwrap()]
    {
        match checkpoint::load_expecting(&path, &other) {
            Err(Error::Format { path: p, .. }) => assert_eq!(p.as_deref(), Some(path.as_path())),
            r => panic!("load_expecting {other:?}: {r:?}"),
        }
    }
    // A non-finite parameter stored in the file (the last 4 bytes are the last bias).
    let mut nan = bytes.clone();
    let n = nan.len();
    nan[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(is_format(checkpoint::from_bytes(&nan)));
    // Damaged header bytes: flip single bytes inside the JSON header.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for pos in (8..8 + header_len).step_by(11) {
        let mut b = bytes.clone();
        b[pos] ^= 0x5a;
        // Either still parseable with an equal-or-other meaning, or a Format error; never a
        // panic or another error kind.
        match checkpoint::from_bytes(&b) {
            Ok(_) | Err(Error::Format { .. }) => {}
            Err(e) => panic!("byte {pos} flipped: {e:?}"),
        }
    }
}

/// A tensor to serialize by hand: name, dtype, shape, little-endian bytes.
type Tensor<'a> = (&'a str, safetensors::Dtype, Vec<usize>, &'a [u8]);

/// Checkpoints built by hand with the safetensors crate: foreign metadata, impossible specs,
/// missing or misshaped tensors.
#[test]
fn checkpoint_foreign_content() {
    use safetensors::tensor::TensorView;
    use safetensors::{Dtype, serialize};
    use std::collections::HashMap;

    let spec = mse(&[2, 3]);
    let theta = uniform_vec(&mut rng(9), spec.num_params(), -1.0, 1.0);
    let bytes: Vec<u8> = theta.iter().flat_map(|v| v.to_le_bytes()).collect();
    let spec_json = serde_json::to_string(&spec).unwrap();
    let meta = |format: Option<&str>, spec: Option<&str>, it: Option<&str>, cfg: Option<&str>| {
        let mut m = HashMap::new();
        for (k, v) in [("format", format), ("spec", spec), ("iteration", it), ("config", cfg)] {
            if let Some(v) = v {
                m.insert(k.to_string(), v.to_string());
            }
        }
        m
    };
    let build = |tensors: Vec<Tensor<'_>>, m: HashMap<String, String>| -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> =
            tensors.into_iter().map(|(n, d, s, b)| (n.to_string(), TensorView::new(d, s, b).unwrap())).collect();
        serialize(views, Some(m)).unwrap()
    };
    let (w, b) = (&bytes[..24], &bytes[24..]);
    let good_tensors =
        || vec![("layers.0.weight", Dtype::F32, vec![3, 2], w), ("layers.0.bias", Dtype::F32, vec![3], b)];
    let v1 = Some("reptile-checkpoint-v1");

    // The hand-built file with the right content loads (so the failures below are specific).
    let ok = checkpoint::from_bytes(&build(good_tensors(), meta(v1, Some(&spec_json), Some("4"), None))).unwrap();
    assert_eq!(ok.model.params(), theta.as_slice());
    assert_eq!(ok.iteration, 4);
    let no_it = checkpoint::from_bytes(&build(good_tensors(), meta(v1, Some(&spec_json), None, None))).unwrap();
    assert_eq!(no_it.iteration, 0);

    let bad_metas = [
        meta(None, Some(&spec_json), None, None),
        meta(Some("reptile-checkpoint-v2"), Some(&spec_json), None, None),
        meta(v1, None, None, None),
        meta(v1, Some("{not json"), None, None),
        meta(v1, Some(r#"{"widths":[2,0],"activation":"tanh","loss":"mse"}"#), None, None),
        meta(v1, Some(r#"{"widths":[2],"activation":"tanh","loss":"mse"}"#), None, None),
        meta(v1, Some(r#"{"widths":[2,3],"activation":"gelu","loss":"mse"}"#), None, None),
        meta(v1, Some(r#"{"widths":[2,1],"activation":"tanh","loss":"softmax_cross_entropy"}"#), None, None),
        meta(v1, Some(&spec_json), Some("-1"), None),
        meta(v1, Some(&spec_json), Some("many"), None),
        meta(v1, Some(&spec_json), None, Some("{}")),
    ];
    for (i, m) in bad_metas.into_iter().enumerate() {
        let r = checkpoint::from_bytes(&build(good_tensors(), m));
        assert!(is_format(r), "bad metadata #{i}");
    }
    let m = || meta(v1, Some(&spec_json), None, None);
    let zeros = [0u8; 64];
    let bad_tensors: Vec<Vec<Tensor<'_>>> = vec![
        vec![("layers.0.weight", Dtype::F32, vec![3, 2], w)],
        vec![("layers.0.weight", Dtype::F32, vec![2, 3], w), ("layers.0.bias", Dtype::F32, vec![3], b)],
        vec![("layers.0.weight", Dtype::F32, vec![3, 2], w), ("layers.0.bias", Dtype::F32, vec![1, 3], b)],
        vec![("layers.0.weight", Dtype::F32, vec![6], w), ("layers.0.bias", Dtype::F32, vec![3], b)],
        vec![("layers.0.weight", Dtype::F64, vec![3, 1], w), ("layers.0.bias", Dtype::F32, vec![3], b)],
        vec![("layers.0.weight", Dtype::I32, vec![3, 2], w), ("layers.0.bias", Dtype::F32, vec![3], b)],
        vec![("layers.0.weights", Dtype::F32, vec![3, 2], w), ("layers.0.bias", Dtype::F32, vec![3], b)],
        vec![("layers.1.weight", Dtype::F32, vec![3, 2], w), ("layers.0.bias", Dtype::F32, vec![3], b)],
        vec![
            ("layers.0.weight", Dtype::F32, vec![3, 2], w),
            ("layers.0.bias", Dtype::F32, vec![3], b),
            ("extra", Dtype::F32, vec![4], &zeros[..16]),
        ],
    ];
    for (i, t) in bad_tensors.into_iter().enumerate() {
        assert!(is_format(checkpoint::from_bytes(&build(t, m()))), "bad tensors #{i}");
    }
    // Non-finite values in a hand-built file.
    let mut wnan = w.to_vec();
    wnan[..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let t = vec![("layers.0.weight", Dtype::F32, vec![3, 2], &wnan[..]), ("layers.0.bias", Dtype::F32, vec![3], b)];
    assert!(is_format(checkpoint::from_bytes(&build(t, m()))));
}

/// Selecting CUDA where it cannot be used is a typed error with a reason, never a panic, and
/// the trainer stays on the CPU; device strings parse or fail clearly.
#[test]
fn cuda_device_errors_are_clear() {
    use reptile::Device;
    assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
    assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
    assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
    assert!("gpu".parse::<Device>().is_err() && "cuda:x".parse::<Device>().is_err());
    let spec = MlpSpec::new(&[1, 8, 1], Activation::Tanh, Loss::Mse).unwrap();
    let mut tr = Trainer::new(Model::new(spec, 0), ReptileConfig::sine()).unwrap();
    match tr.set_device(Device::Cuda(0)) {
        Ok(()) => eprintln!("a CUDA device is present here; nothing to check for its absence"),
        Err(e) => {
            assert!(matches!(e, reptile::Error::Cuda(_)), "{e}");
            assert!(e.to_string().contains("CUDA"), "{e}");
            assert_eq!(tr.device(), Device::Cpu);
        }
    }
}
