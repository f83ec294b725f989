//! Run-time choice of instruction set. The kernels' bodies are `#[inline(always)]` generic
//! code, instantiated once per instruction set inside `#[target_feature]` wrappers, so the
//! same source compiles to AVX-512, AVX2+FMA and baseline (SSE2) machine code; [`isa`] picks
//! one at run time (`is_x86_feature_detected!`, cached). `REPTILE_ISA=baseline|avx2|avx512`
//! caps the choice (for tests and benchmarks).
//!
//! Results may differ in the last bits between instruction sets (FMA contracts `a·b + c` into
//! one rounding); on one machine they are reproducible and independent of the thread count.

use std::sync::OnceLock;

/// An instruction-set level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable code (SSE2 on x86-64), separate multiply and add.
    Baseline,
    /// AVX2 with fused multiply-add.
    Avx2,
    /// AVX-512 (F, VL) with fused multiply-add.
    Avx512,
}

/// The instruction set the kernels use on this machine.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detect();
        let cap = match std::env::var("REPTILE_ISA").as_deref() {
            Ok("baseline") => Isa::Baseline,
            Ok("avx2") => Isa::Avx2,
            _ => Isa::Avx512,
        };
        best.min(cap)
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("fma")
    {
        Isa::Avx512
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Isa::Avx2
    } else {
        Isa::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Baseline
}

/// An instruction-set policy: how to multiply-add, and the register-block sizes of the
/// product kernels for that instruction set. The kernels are generic over it.
pub trait Policy: Copy {
    /// `a·b + c`: fused (one rounding) where the instruction set has FMA, plain otherwise (a
    /// libm `fmaf` call per element would be far slower than two roundings).
    fn madd(a: f32, b: f32, c: f32) -> f32;
    /// `C[m×n] ← α·A·B + β·C`, `B` with contiguous rows (see [`super::gemm::axpy_kernel`]).
    #[allow(clippy::too_many_arguments)]
    fn axpy(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: &[f32],
        rsa: usize,
        csa: usize,
        b: &[f32],
        ldb: usize,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
    );
    /// `z ← tanh(z)` elementwise (see [`super::math::tanh`]).
    fn tanh_slice(z: &mut [f32]) {
        z.iter_mut().for_each(|v| *v = super::math::tanh(*v));
    }
    /// One Adam step with β1 = 0 over a slice (see [`super::update::adam_b1zero`]):
    /// `v ← β2·v + (1 − β2)·g²`, `θ ← θ − lr_t·g/(√v + ε)`. The default is IEEE square root
    /// and division; AVX-512 refines hardware estimates instead (see
    /// [`super::x86::adam_avx512`]).
    fn adam_slice(theta: &mut [f32], g: &[f32], v: &mut [f32], lr_t: f32, beta2: f32, eps: f32) {
        let one_minus = 1.0 - beta2;
        let gmin = super::update::adam_g_min(beta2);
        for ((t, &g), v) in theta.iter_mut().zip(g).zip(v.iter_mut()) {
            let gq = if g.abs() >= gmin { g } else { 0.0 };
            let vn = Self::madd(beta2, *v, one_minus * gq * gq);
            // Subnormal second moments are stored as zero (see `update::adam_b1zero`).
            let vn = if vn < f32::MIN_POSITIVE { 0.0 } else { vn };
            *v = vn;
            *t -= lr_t * g / (vn.sqrt() + eps);
        }
    }
    /// `Z ← bias + X·Wᵀ` (see [`super::gemm::xwt_kernel`]).
    #[allow(clippy::too_many_arguments)]
    fn xwt(points: usize, inp: usize, out: usize, x: &[f32], w: &[f32], bias: &[f32], z: &mut [f32]);
    /// [`Self::adam_slice`] out of place for a task's first step: θ from `src_theta`, `v` from
    /// `src_v` (zeros when `None`) times `vscale` (a deferred decay `β2^d`: the product
    /// rounded, subnormal results taken as zero, as [`super::sparse`] decays rows; `1.0`: `v`
    /// as it is), results into `theta` and `v`. The default copies, decays and then updates in
    /// place; AVX-512 reads the sources directly (bit-identical).
    #[allow(clippy::too_many_arguments)]
    fn adam_slice_from(
        theta: &mut [f32],
        src_theta: &[f32],
        g: &[f32],
        v: &mut [f32],
        src_v: Option<&[f32]>,
        vscale: f32,
        lr_t: f32,
        beta2: f32,
        eps: f32,
    ) {
        theta.copy_from_slice(src_theta);
        match src_v {
            Some(s) if vscale != 1.0 => v.iter_mut().zip(s).for_each(|(v, &x)| *v = super::update::decayed(x, vscale)),
            Some(s) => v.copy_from_slice(s),
            None => v.fill(0.0),
        }
        Self::adam_slice(theta, g, v, lr_t, beta2, eps);
    }
    /// 8 × 8 transpose `dst[c·ldd + r] = src[r·lds + c]` (8 rows of stride `lds` into 8 rows
    /// of stride `ldd`). The default is scalar; the x86 policies use a shuffle network
    /// ([`super::x86::transpose8_avx`]). Exact on every path (values are only moved).
    fn transpose8(src: &[f32], lds: usize, dst: &mut [f32], ldd: usize) {
        assert!(src.len() >= 7 * lds + 8, "transpose8: source shorter than 8 rows of {lds}");
        assert!(dst.len() >= 7 * ldd + 8, "transpose8: destination shorter than 8 rows of {ldd}");
        for r in 0..8 {
            for c in 0..8 {
                dst[c * ldd + r] = src[r * lds + c];
            }
        }
    }
    /// Runs `f` compiled for this policy's instruction set. A closure is a function of its
    /// own: one handed to `rayon::join` by a generic kernel is compiled for the baseline
    /// target, and so is everything inlined into it, unless it is entered through this (the
    /// x86 policies call it from a `#[target_feature]` function it is inlined into).
    #[inline(always)]
    fn enter<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
    /// `C[m×n] ← (A·B) ⊙ act'(G)`, the input gradient with the hidden activation's derivative
    /// taken through the stored activation `G` (laid out like `C`): `1 − g²` for tanh, `[g > 0]`
    /// for ReLU. The default is [`Self::axpy`] then a separate pass; AVX-512 fuses it into the
    /// product's epilogue with the same arithmetic (bit-identical).
    #[allow(clippy::too_many_arguments)]
    fn axpy_act(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        rsa: usize,
        csa: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        tanh: bool,
        g: &[f32],
    ) {
        Self::axpy(m, k, n, 1.0, a, rsa, csa, b, ldb, 0.0, c, ldc);
        for r in 0..m {
            super::gemm::act_backward(tanh, &g[r * ldc..][..n], &mut c[r * ldc..][..n]);
        }
    }
}

macro_rules! policy {
    ($name:ident, $doc:literal, fused: $fused:literal, axpy: $axpy:path, xwt: |$p:ident, $i:ident, $o:ident, $x:ident, $w:ident, $b:ident, $z:ident| $xwt:expr $(, tanh: $tanh:path)? $(, adam: $adam:path, adam_from: $adam_from:path)? $(, axpy_act: $axpy_act:path)? $(, transpose8: $t8:path)? $(, features: $feat:literal)?) => {
        #[doc = $doc]
        #[derive(Clone, Copy, Debug)]
        pub struct $name;
        impl Policy for $name {
            #[inline(always)]
            fn madd(a: f32, b: f32, c: f32) -> f32 {
                if $fused { a.mul_add(b, c) } else { a * b + c }
            }
            #[inline(always)]
            fn axpy(m: usize, k: usize, n: usize, alpha: f32, a: &[f32], rsa: usize, csa: usize, b: &[f32], ldb: usize, beta: f32, c: &mut [f32], ldc: usize) {
                #[allow(unused_unsafe)]
                // SAFETY: the x86 kernels are only named by policies instantiated inside
                // `dispatch!`'s `#[target_feature]` wrappers after run-time detection.
                unsafe { $axpy(m, k, n, alpha, a, rsa, csa, b, ldb, beta, c, ldc) }
            }
            $(
                #[inline(always)]
                fn tanh_slice(z: &mut [f32]) {
                    // SAFETY: the x86 kernels are only named by policies instantiated inside
                    // `dispatch!`'s `#[target_feature]` wrappers after run-time detection.
                    unsafe { $tanh(z) }
                }
            )?
            $(
                #[inline(always)]
                fn adam_slice(theta: &mut [f32], g: &[f32], v: &mut [f32], lr_t: f32, beta2: f32, eps: f32) {
                    // SAFETY: as above, only reached after run-time detection.
                    unsafe { $adam(theta, g, v, lr_t, beta2, eps) }
                }
                #[inline(always)]
                fn adam_slice_from(theta: &mut [f32], src_theta: &[f32], g: &[f32], v: &mut [f32], src_v: Option<&[f32]>, vscale: f32, lr_t: f32, beta2: f32, eps: f32) {
                    // SAFETY: as above, only reached after run-time detection.
                    unsafe { $adam_from(theta, src_theta, g, v, src_v, vscale, lr_t, beta2, eps) }
                }
            )?
            $(
                #[inline(always)]
                fn axpy_act(m: usize, k: usize, n: usize, a: &[f32], rsa: usize, csa: usize, b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, tanh: bool, g: &[f32]) {
                    // SAFETY: as above, only reached after run-time detection.
                    unsafe { $axpy_act(m, k, n, a, rsa, csa, b, ldb, c, ldc, tanh, g) }
                }
            )?
            $(
                #[inline(always)]
                fn transpose8(src: &[f32], lds: usize, dst: &mut [f32], ldd: usize) {
                    // SAFETY: as above, only reached after run-time detection.
                    unsafe { $t8(src, lds, dst, ldd) }
                }
            )?
            $(
                #[inline(always)]
                fn enter<R>(f: impl FnOnce() -> R) -> R {
                    #[target_feature(enable = $feat)]
                    #[inline]
                    unsafe fn go<R>(f: impl FnOnce() -> R) -> R {
                        f()
                    }
                    // SAFETY: as above, only reached after run-time detection.
                    unsafe { go(f) }
                }
            )?
            #[inline(always)]
            fn xwt($p: usize, $i: usize, $o: usize, $x: &[f32], $w: &[f32], $b: &[f32], $z: &mut [f32]) {
                $xwt
            }
        }
    };
}

// The x86 policies are only instantiated inside `dispatch!`'s `#[target_feature]` wrappers,
// which run only after `isa()` detected the features at run time.
#[cfg(target_arch = "x86_64")]
policy!(Avx512, "AVX-512: 32 zmm registers, 16 lanes.", fused: true, axpy: super::x86::axpy_avx512,
    // SAFETY: see above: only reached after AVX-512F/VL + FMA were detected.
    xwt: |p, i, o, x, w, b, z| unsafe { super::x86::xwt_avx512(p, i, o, x, w, b, z) }, tanh: super::x86::tanh_avx512,
    adam: super::x86::adam_avx512, adam_from: super::x86::adam_from_avx512, axpy_act: super::x86::axpy_act_avx512,
    transpose8: super::x86::transpose8_avx, features: "avx512f,avx512vl,avx2,fma");
#[cfg(target_arch = "x86_64")]
policy!(Avx2, "AVX2 + FMA: 16 ymm registers, 8 lanes.", fused: true, axpy: super::x86::axpy_avx2,
    // SAFETY: see above: only reached after AVX2 + FMA were detected.
    xwt: |p, i, o, x, w, b, z| unsafe { super::x86::xwt_avx2(p, i, o, x, w, b, z) }, tanh: super::x86::tanh_avx2,
    transpose8: super::x86::transpose8_avx, features: "avx2,fma");
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn base_axpy(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    super::gemm::axpy_kernel::<Base, 4, 8>(m, k, n, alpha, a, rsa, csa, b, ldb, beta, c, ldc)
}
policy!(Base, "Portable baseline (SSE2 on x86-64): 4 lanes, no FMA.", fused: false, axpy: base_axpy,
    xwt: |p, i, o, x, w, b, z| super::gemm::xwt_kernel::<Self, 4, 2, 4>(p, i, o, x, w, b, z));

/// True when every value is finite. Branch-free over the slice so it vectorizes.
#[inline]
pub fn all_finite(xs: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    let mut bad = 0u32;
    for c in xs.chunks(64) {
        let mut m = 0u32;
        for v in c {
            m |= ((v.to_bits() & EXP) == EXP) as u32;
        }
        bad |= m;
    }
    bad == 0
}

/// Defines `$name` dispatching on [`isa()`] to `$body::<Avx512/Avx2/Base>` compiled under the
/// matching `#[target_feature]`. `$body` must be `#[inline(always)]`.
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)? => $body:ident) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { $body::<$crate::cpu::simd::Avx512>($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { $body::<$crate::cpu::simd::Avx2>($($arg),*) }
                match $crate::cpu::simd::isa() {
                    // SAFETY: isa() returns Avx512 only when avx512f, avx512vl, avx2 and fma
                    // were all detected at run time.
                    $crate::cpu::simd::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: isa() returns Avx2 only when avx2 and fma were detected.
                    $crate::cpu::simd::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::cpu::simd::Isa::Baseline => {}
                }
            }
            $body::<$crate::cpu::simd::Base>($($arg),*)
        }
    };
}
pub(crate) use dispatch;
