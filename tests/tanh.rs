//! `reptile::cpu::math::tanh` (scalar) and `math::tanh_slice` (what the forward pass uses: the
//! AVX-512 kernel where available) against `f64::tanh` over the whole f32 range.
//!
//! The doc of `math::tanh` claims a maximum error below 4e-7, absolute and relative. The sweep
//! visits every 97th f32 bit pattern (≈ 44 M values, both signs, all binades, subnormals, NaN
//! payloads, ±Inf) plus every f32 in the binades around the two branch points (`x` itself below
//! |x| = 4e-4, exactly ±1 from |x| = 7.9988) and where the fit errs most. Relative error is checked for
//! |x| ≥ 1e-30; absolute error everywhere. The measured maxima are printed
//! (`cargo test --release --test tanh -- --nocapture`).

mod common;

use reptile::cpu::math::{tanh, tanh_slice};

/// The documented bound, absolute and relative.
const BOUND: f64 = 4e-7;

fn nan_to_inf(v: f64) -> f64 {
    if v.is_nan() { f64::INFINITY } else { v }
}

#[derive(Default, Debug)]
struct Stats {
    checked: u64,
    max_abs: f64,
    max_abs_at: f32,
    max_rel: f64,
    max_rel_at: f32,
    out_of_range: Vec<f32>,
    nan_mishandled: Vec<u32>,
    asymmetric: Vec<f32>,
}

impl Stats {
    /// Scalar `tanh(x)`, with the oddness check.
    fn visit(&mut self, x: f32) {
        self.visit_result(x, tanh(x), true);
    }

    fn visit_result(&mut self, x: f32, y: f32, check_odd: bool) {
        if x.is_nan() {
            if !y.is_nan() && self.nan_mishandled.len() < 8 {
                self.nan_mishandled.push(x.to_bits());
            }
            return;
        }
        self.checked += 1;
        let r = (x as f64).tanh();
        // A NaN result for a non-NaN input counts as an infinite error.
        let err = nan_to_inf((y as f64 - r).abs());
        if err > self.max_abs {
            self.max_abs = err;
            self.max_abs_at = x;
        }
        if x.abs() >= 1e-30 {
            let rel = nan_to_inf(err / r.abs());
            if rel > self.max_rel {
                self.max_rel = rel;
                self.max_rel_at = x;
            }
        }
        if (y.is_nan() || y.abs() > 1.0) && self.out_of_range.len() < 8 {
            self.out_of_range.push(x);
        }
        // tanh is odd; for x ≠ 0 the implementation is exactly symmetric.
        if check_odd && x != 0.0 && tanh(-x).to_bits() != (-y).to_bits() && self.asymmetric.len() < 8 {
            self.asymmetric.push(x);
        }
    }

    fn merge(&mut self, o: Stats) {
        self.checked += o.checked;
        if o.max_abs > self.max_abs {
            self.max_abs = o.max_abs;
            self.max_abs_at = o.max_abs_at;
        }
        if o.max_rel > self.max_rel {
            self.max_rel = o.max_rel;
            self.max_rel_at = o.max_rel_at;
        }
        self.out_of_range.extend(o.out_of_range);
        self.nan_mishandled.extend(o.nan_mishandled);
        self.asymmetric.extend(o.asymmetric);
    }

    fn assert_ok(&self, what: &str) {
        println!(
            "{what}: {} finite values; max abs error {:.3e} at x = {:e} ({:#010x}); max rel error {:.3e} at x = {:e} ({:#010x})",
            self.checked,
            self.max_abs,
            self.max_abs_at,
            self.max_abs_at.to_bits(),
            self.max_rel,
            self.max_rel_at,
            self.max_rel_at.to_bits()
        );
        assert!(self.checked > 0, "{what}: nothing checked");
        assert!(self.nan_mishandled.is_empty(), "{what}: NaN inputs gave non-NaN: {:x?}", self.nan_mishandled);
        assert!(self.out_of_range.is_empty(), "{what}: |tanh(x)| > 1 at {:?}", self.out_of_range);
        assert!(self.asymmetric.is_empty(), "{what}: tanh(−x) ≠ −tanh(x) at {:?}", self.asymmetric);
        assert!(
            self.max_abs <= BOUND,
            "{what}: max abs error {:e} at x = {:e} exceeds the documented {BOUND:e}",
            self.max_abs,
            self.max_abs_at
        );
        assert!(
            self.max_rel <= BOUND,
            "{what}: max rel error {:e} at x = {:e} exceeds the documented {BOUND:e}",
            self.max_rel,
            self.max_rel_at
        );
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Scalar,
    /// `tanh_slice` on consecutive runs of 1 to 37 values (exercises the vector tails).
    Slice,
}

/// Visits the bit patterns `start, start+step, ...` up to `end` (inclusive), split over two
/// threads.
fn sweep(start: u32, end: u32, step: u32, imp: Impl) -> Stats {
    let n = (end - start) / step + 1;
    let half = n / 2;
    let run = |lo: u32, hi: u32| {
        let mut s = Stats::default();
        match imp {
            Impl::Scalar => {
                for k in lo..hi {
                    s.visit(f32::from_bits(start + k * step));
                }
            }
            Impl::Slice => {
                let (mut k, mut run_len, mut xs, mut ys) = (lo, 1u32, Vec::new(), Vec::new());
                while k < hi {
                    let len = run_len.min(hi - k);
                    xs.clear();
                    xs.extend((k..k + len).map(|j| f32::from_bits(start + j * step)));
                    ys.clone_from(&xs);
                    tanh_slice(&mut ys);
                    for (&x, &y) in xs.iter().zip(&ys) {
                        s.visit_result(x, y, false);
                    }
                    k += len;
                    run_len = run_len % 37 + 1;
                }
            }
        }
        s
    };
    let (a, b) = std::thread::scope(|sc| {
        let h = sc.spawn(|| run(0, half));
        let b = run(half, n);
        (h.join().unwrap(), b)
    });
    let mut s = a;
    s.merge(b);
    s
}

#[test]
fn every_97th_bit_pattern() {
    let s = sweep(0, u32::MAX, 97, Impl::Scalar);
    // ≈ 2³²/97 patterns, minus the NaN ones.
    assert!(s.checked > 43_000_000, "only {} values checked", s.checked);
    s.assert_ok("tanh, every 97th f32");
}

#[test]
fn every_value_near_branch_points() {
    // [2⁻¹², 2⁻¹¹) holds the switch to `x` itself at 4e-4; [4, 8) the saturation at 7.9988 and
    // the largest errors of the fit; [8, 16) the saturated range; [0.5, 1) the steepest part
    // of the relative error. Both signs.
    for (lo, hi) in [(2f32.powi(-12), 2f32.powi(-11)), (0.5f32, 1.0f32), (4.0, 8.0), (8.0, 16.0)] {
        for sign in [0u32, 0x8000_0000] {
            let s = sweep(lo.to_bits() | sign, (hi.to_bits() - 1) | sign, 1, Impl::Scalar);
            assert_eq!(s.checked, (hi.to_bits() - lo.to_bits()) as u64);
            s.assert_ok(&format!("tanh, every f32 in {}[{lo}, {hi})", if sign == 0 { '+' } else { '-' }));
        }
    }
}

/// The slice version (the forward pass's activation) over every 101st bit pattern (a different
/// sample from the scalar sweep), every f32 of [2⁻¹², 16) (everything between the `x` itself
/// branch and saturation: where the vector kernel's f32 arithmetic errs most) and of −[4, 8).
#[test]
fn tanh_slice_sweep() {
    let s = sweep(0, u32::MAX, 101, Impl::Slice);
    assert!(s.checked > 41_000_000, "only {} values checked", s.checked);
    s.assert_ok("tanh_slice, every 101st f32");
    for (lo, hi) in [(2f32.powi(-12), 16.0f32), (-4.0, -8.0)] {
        let s = sweep(lo.to_bits(), hi.to_bits() - 1, 1, Impl::Slice);
        assert_eq!(s.checked, (hi.to_bits() - lo.to_bits()) as u64);
        s.assert_ok(&format!("tanh_slice, every f32 in [{lo}, {hi})"));
    }
    // Specials, in one slice with a vector-width-straddling length.
    let xs = [f32::NAN, 0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::from_bits(1), 1e-30, -2.5, 0.3];
    let mut ys: Vec<f32> = xs.iter().cycle().take(45).copied().collect();
    let inp = ys.clone();
    tanh_slice(&mut ys);
    for (&x, &y) in inp.iter().zip(&ys) {
        if x.is_nan() {
            assert!(y.is_nan(), "tanh_slice(NaN) = {y}");
        } else {
            let want = (x as f64).tanh();
            assert!(
                (y as f64 - want).abs() <= BOUND * want.abs().max(1e-300),
                "tanh_slice({x:e}) = {y:e}, want {want:e}"
            );
        }
    }
}

#[test]
fn special_values() {
    // ±Inf within the error bound of ±1 (exactness: `saturates_to_exactly_one`).
    assert!((tanh(f32::INFINITY) as f64 - 1.0).abs() <= BOUND);
    assert!((tanh(f32::NEG_INFINITY) as f64 + 1.0).abs() <= BOUND);
    assert!(tanh(f32::NAN).is_nan());
    assert!(tanh(-f32::NAN).is_nan());
    assert!(tanh(f32::from_bits(0x7f80_0001)).is_nan(), "signalling NaN");
    assert_eq!(tanh(0.0), 0.0);
    assert_eq!(tanh(-0.0), 0.0);
    // Huge and tiny magnitudes, each against the correctly rounded f64 result.
    for x in [
        f32::MAX,
        f32::MIN,
        1e30,
        -1e30,
        1e10,
        -1e10,
        100.0,
        -100.0,
        9.0,
        -9.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::from_bits(1),
        -f32::from_bits(1),
        f32::from_bits(0x007f_ffff),
        1e-30,
        -1e-30,
        1e-20,
        0.625,
        -0.625,
        0.624_999_94,
    ] {
        let want = (x as f64).tanh();
        let err = (tanh(x) as f64 - want).abs();
        assert!(err <= BOUND * want.abs().max(f64::MIN_POSITIVE), "tanh({x:e}) = {:e}, want {want:e}", tanh(x));
        if x.abs() < 1e-6 {
            // tanh(x) = x − x³/3 + …: the f32 result must be x itself.
            assert_eq!(tanh(x), x, "tanh({x:e}) for tiny x");
        }
    }
    // Subnormals and the smallest normals, all of them.
    let mut s = Stats::default();
    for bits in 0..=0x0080_0000u32 {
        s.visit(f32::from_bits(bits));
        assert_eq!(tanh(f32::from_bits(bits)), f32::from_bits(bits), "subnormal {bits:#x}");
    }
    s.assert_ok("subnormals");
}

/// `tanh(x)` rounds to exactly ±1 in f32 for |x| ≥ 9.011 (`1 − tanh(x) = 2/(e^{2x}+1)` is then
/// below half an ulp of 1, 2⁻²⁵), so `tanh(±Inf)`, `tanh(±1e30)`, `tanh(±100)` must be ±1.
///
/// (An earlier version clamped |x| at 9 and returned ±0.99999994 for every larger input,
/// ±Inf included: within the error bound, but never saturating.)
#[test]
fn saturates_to_exactly_one() {
    let mut wrong = Vec::new();
    for x in [f32::INFINITY, f32::MAX, 1e30, 1e10, 100.0, 20.0, 10.0, 9.5, 9.02] {
        for x in [x, -x] {
            let want = (x as f64).tanh() as f32; // correctly rounded: ±1
            assert_eq!(want.abs(), 1.0, "reference tanh({x:e})");
            if tanh(x) != want {
                wrong.push(("tanh", x, tanh(x)));
            }
            let mut v = [x; 19];
            tanh_slice(&mut v);
            if v[18] != want {
                wrong.push(("tanh_slice", x, v[18]));
            }
        }
    }
    assert!(wrong.is_empty(), "should be exactly ±1 but are: {wrong:?}");
}

/// `tanh` is odd, so `tanh(−0) = −0` (IEEE 754 / C `tanhf`, and `f32::tanh` return −0), in
/// the scalar function and in the vector kernel the forward pass uses.
#[test]
fn negative_zero_keeps_its_sign() {
    assert_eq!((-0.0f64).tanh().to_bits(), (-0.0f64).to_bits());
    assert_eq!(tanh(-0.0).to_bits(), (-0.0f32).to_bits(), "tanh(-0.0) = {:e}", tanh(-0.0));
    assert_eq!(tanh(0.0).to_bits(), 0.0f32.to_bits());
    let mut v = [-0.0f32, 0.0, -0.0, 0.0, -0.0, -0.0, 0.0, -0.0, -0.0, -0.0, 0.0, 0.0, -0.0, -0.0, 0.0, -0.0, -0.0];
    let want: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
    tanh_slice(&mut v);
    assert_eq!(v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want, "tanh_slice(±0)");
}

/// Every test of this file again on the lower instruction-set paths (the AVX2 kernel, the
/// portable scalar function), each in its own process (see `common::rerun_under_lower_isas`).
#[test]
fn lower_isa_paths() {
    common::rerun_under_lower_isas("lower_isa_paths");
}
