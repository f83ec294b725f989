use reptile::cpu::lanes::{lane_gemm, Shape, Store, LANES};
use std::time::Instant;
fn main() {
    let p = 10usize;
    let n: usize = std::env::var("N").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    let fm = std::env::var("FM").is_ok(); // feature-major activations [feature][point]
    let ri = n + 1;
    let x: Vec<f32> = (0..LANES * p * ri).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
    let mut w: Vec<f32> = (0..LANES * n * n).map(|i| ((i * 104729) % 1000) as f32 * 1e-3).collect();
    let b = vec![0.1f32; LANES * n];
    let mut z = vec![0f32; LANES * p * ri];
    let reps = 20000;
    let fl = 2.0 * (p * n * n * LANES) as f64 * reps as f64;
    // (row stride, feature stride) of an activation [p][f]
    let (sp, sf) = if fm { (1, p) } else { (ri, 1) };
    for (name, which) in [("fwd", 0), ("dx", 1), ("dw", 2)] {
        let t = Instant::now();
        for _ in 0..reps {
            match which {
                0 => lane_gemm(p, n, n, &x, (sp, sf), &w, (1, n), &mut z, (sp, sf), Store::Set(Some(&b)), Shape::Tall),
                1 => lane_gemm(p, n, n, &x, (sp, sf), &w, (n, 1), &mut z, (sp, sf), Store::Set(None), Shape::Tall),
                _ => lane_gemm(n, n, p, &z, (sf, sp), &x, (sp, sf), &mut w, (n, 1), Store::Axpy(-1e-9), Shape::Square),
            }
        }
        let s = t.elapsed().as_secs_f64();
        println!("{name} fm={fm} n={n}: {:.2} us/call, {:.1} GFLOP/s", s / reps as f64 * 1e6, fl / s / 1e9);
    }
}
