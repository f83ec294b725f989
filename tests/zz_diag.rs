mod common;
use common::*;
use reptile::workloads::sine::SineTasks;
use reptile::{Activation, Loss, MlpSpec, Model, ReptileConfig, Targets, Trainer};
#[test]
fn diag() {
    let spec = MlpSpec::new(&[1, 64, 64, 1], Activation::Tanh, Loss::Mse).unwrap();
    let cfg = ReptileConfig { planned_iters: 10000, seed: 1, threads: 1, ..ReptileConfig::sine() };
    let tr = Trainer::new(Model::new(spec.clone(), 1), cfg).unwrap();
    let eval = SineTasks::new(12345).eval_tasks(&spec, 300, 10).unwrap();
    let rep = tr.evaluate_at(&eval, &[32]).unwrap();
    let theta = to_f64(tr.params());
    let mut worst = (0.0f64, 0usize, 0.0f64, 0.0f32);
    let mut mean_ref = 0.0;
    for t in 0..300 {
        let s = eval.support().task(t).unwrap();
        let q = eval.query().task(t).unwrap();
        let sy = match s.y() { Targets::Values(v) => to_f64(v), _ => unreachable!() };
        let qy = match q.y() { Targets::Values(v) => to_f64(v), _ => unreachable!() };
        let th = ref_gd(&spec, &theta, &to_f64(s.x()), RefTargets::Values(&sy), 10, 0.02, 32);
        let l = ref_loss(&spec, &th, &to_f64(q.x()), RefTargets::Values(&qy), 50);
        mean_ref += l / 300.0;
        let got = rep.losses[t];
        let rel = (got as f64 - l).abs() / l;
        if rel > worst.0 { worst = (rel, t, l, got); }
    }
    println!("mean ref {mean_ref}, mean got {}, worst rel {:?}", rep.mean_loss(0), worst);
}
