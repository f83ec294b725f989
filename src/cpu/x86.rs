//! x86-64 intrinsics for the forward product `Z ← bias + X·Wᵀ`, whose dot-product form the
//! compiler does not vectorize on its own (the lane accumulators spill to the stack).
//!
//! Work mapping (both instruction sets): blocks of `RP = 2` points × `RO` outputs; each of
//! the `2·RO` accumulators is one vector register running along `in` (a contiguous piece of an
//! `X` row times the same piece of a `W` row per FMA; every loaded `W` piece feeds both
//! points, every `X` piece all `RO` outputs). At the end each register is summed across its
//! lanes and the bias added. AVX-512 covers the `in % 16` tail with masked loads (masked-off
//! lanes are neither read nor faulted); AVX2 finishes it in scalar code. For short rows that
//! are a multiple of 8 (the sine net's 64 × 64) AVX-512 runs a pair-tiled variant instead
//! (`xwt_pairs_avx512`): one register holds 8 inputs of two points, so the final sums run
//! over 8 lanes instead of 16, about half the shuffles.
//!
//! The file also holds the AVX-512 / AVX2 axpy products, the vector `tanh` and the fused
//! optimizer updates (Adam), and an 8 × 8 transpose.

// Index loops over small register arrays read clearest as written.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use super::math::{TANH_DEN, TANH_NUM, TANH_SAT, TANH_TINY};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Checks the slice lengths the raw-pointer loops below rely on.
#[inline(always)]
fn check(points: usize, inp: usize, out: usize, x: &[f32], w: &[f32], bias: &[f32], z: &[f32]) {
    assert!(
        x.len() >= points * inp && w.len() >= out * inp && bias.len() >= out && z.len() >= points * out,
        "xwt: slices shorter than {points}×{inp}·{out}"
    );
}

/// One `RP × RO` block of the AVX-512 forward product (see [`xwt_avx512`]).
///
/// # Safety
/// AVX-512F/VL; `x`, `w`, `z` hold rows `p0..p0+RP`, `o0..o0+RO` of widths `inp`, `inp`, `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn xwt_block_avx512<const RP: usize, const RO: usize>(
    xp: *const f32,
    wp: *const f32,
    zp: *mut f32,
    bias: &[f32],
    inp: usize,
    out: usize,
    p0: usize,
    o0: usize,
    full: usize,
    mask: __mmask16,
) {
    // SAFETY: the caller guarantees the rows exist; loads stay below `full` or are masked.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); RO]; RP];
        let mut i = 0;
        while i < full {
            let xv: [__m512; RP] = std::array::from_fn(|r| _mm512_loadu_ps(xp.add((p0 + r) * inp + i)));
            for c in 0..RO {
                let wv = _mm512_loadu_ps(wp.add((o0 + c) * inp + i));
                for r in 0..RP {
                    acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
                }
            }
            i += 16;
        }
        if mask != 0 {
            let xv: [__m512; RP] = std::array::from_fn(|r| _mm512_maskz_loadu_ps(mask, xp.add((p0 + r) * inp + full)));
            for c in 0..RO {
                let wv = _mm512_maskz_loadu_ps(mask, wp.add((o0 + c) * inp + full));
                for r in 0..RP {
                    acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
                }
            }
        }
        if RP == 2 && RO == 8 {
            // Joint reduction of the 16 accumulators, fed in the order that leaves the total of
            // acc[r][c] in lane 8r + c: then the block is one bias add and two 8-float stores.
            let v: [__m512; 16] = std::array::from_fn(|q| {
                let lane = REDUCE16_SLOT[q];
                acc[lane / 8][lane % 8]
            });
            let sums = reduce16(v);
            let b8 = _mm256_loadu_ps(bias.as_ptr().add(o0));
            let b16 = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castps_pd(_mm512_castps256_ps512(b8)),
                _mm256_castps_pd(b8),
            ));
            let res = _mm512_add_ps(sums, b16);
            _mm256_storeu_ps(zp.add(p0 * out + o0), _mm512_castps512_ps256(res));
            _mm256_storeu_ps(
                zp.add((p0 + 1) * out + o0),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(res))),
            );
        } else if RP == 4 && RO == 4 {
            // Joint reduction as above; the totals land in lanes REDUCE16_SLOT[4r + c], so one
            // permute puts row r's four outputs in 128-bit block r.
            let v: [__m512; 16] = std::array::from_fn(|q| acc[q / 4][q % 4]);
            let sums = reduce16(v);
            let idx = _mm512_loadu_si512(REDUCE16_SLOT_I32.as_ptr().cast());
            let ordered = _mm512_permutexvar_ps(idx, sums);
            let b4 = _mm512_broadcast_f32x4(_mm_loadu_ps(bias.as_ptr().add(o0)));
            let res = _mm512_add_ps(ordered, b4);
            _mm_storeu_ps(zp.add(p0 * out + o0), _mm512_extractf32x4_ps::<0>(res));
            _mm_storeu_ps(zp.add((p0 + 1) * out + o0), _mm512_extractf32x4_ps::<1>(res));
            _mm_storeu_ps(zp.add((p0 + 2) * out + o0), _mm512_extractf32x4_ps::<2>(res));
            _mm_storeu_ps(zp.add((p0 + 3) * out + o0), _mm512_extractf32x4_ps::<3>(res));
        } else {
            for r in 0..RP {
                for c in 0..RO {
                    *zp.add((p0 + r) * out + o0 + c) = bias[o0 + c] + _mm512_reduce_add_ps(acc[r][c]);
                }
            }
        }
    }
}

/// Where [`reduce16`] leaves the sum of input `q`: `REDUCE16_SLOT[q]`.
const REDUCE16_SLOT: [usize; 16] = reduce16_slots();

/// [`REDUCE16_SLOT`] as permute indices.
const REDUCE16_SLOT_I32: [i32; 16] = {
    let mut a = [0i32; 16];
    let mut q = 0;
    while q < 16 {
        a[q] = REDUCE16_SLOT[q] as i32;
        q += 1;
    }
    a
};

const fn reduce16_slots() -> [usize; 16] {
    // Levels 1–2 leave input 4j + g in 128-bit block g of vector s_j; levels 3–4 put, in
    // block g of the result, inputs [g, 4 + g, 8 + g, 12 + g]. So input q sits in lane
    // 4·(q mod 4) + q / 4.
    let mut slot = [0usize; 16];
    let mut q = 0;
    while q < 16 {
        slot[q] = 4 * (q % 4) + q / 4;
        q += 1;
    }
    slot
}

/// Sums each of 16 registers across its lanes with a transpose-add tree (15 combine steps
/// instead of 16 separate reductions). Input `q`'s total lands in lane `REDUCE16_SLOT[q]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn reduce16(v: [__m512; 16]) -> __m512 {
    // Level 1 (16 → 8): u_j = [v_{2j}.b0+b2, v_{2j}.b1+b3, v_{2j+1}.b0+b2, v_{2j+1}.b1+b3].
    let u: [__m512; 8] = std::array::from_fn(|j| {
        let (a, b) = (v[2 * j], v[2 * j + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b))
    });
    // Level 2 (8 → 4): s_j block g = full 4-lane partial of input 4j + g.
    let s: [__m512; 4] = std::array::from_fn(|j| {
        let (a, b) = (u[2 * j], u[2 * j + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b))
    });
    // Level 3 (4 → 2): per block [x0+x2, y0+y2, x1+x3, y1+y3] with x from s_{2k}, y from s_{2k+1}.
    let t: [__m512; 2] = std::array::from_fn(|k| {
        let (a, b) = (s[2 * k], s[2 * k + 1]);
        _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
    });
    // Level 4 (2 → 1): per block [x(t0), y(t0), x(t1), y(t1)].
    let (a, b) = (_mm512_castps_pd(t[0]), _mm512_castps_pd(t[1]));
    _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)))
}

/// Inputs per group of the pair-tiled forward (`xwt_pairs_avx512`): half a zmm register.
const PAIR_GROUP: usize = 8;

/// Largest `points / 2 · in / 8` (pair-tiled `X` vectors, 64 bytes each) that
/// [`xwt_pairs_avx512`] stages on the stack: 16 KB.
const PAIR_TILES_MAX: usize = 256;

/// Sums 8 pair-tiled accumulators of [`xwt_pairs_avx512`] over their 8 input phases.
/// `a[o]` holds, in lanes 0–7, point 0's partial sums of output `o` by input phase and in lanes
/// 8–15 point 1's. The result holds, by 128-bit block: point 0's outputs 0–3, point 1's outputs
/// 0–3, point 0's outputs 4–7, point 1's outputs 4–7. 21 vector operations for 16 dot
/// products (7 combine steps), against [`reduce16`]'s 45 for 16 full-width registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn reduce_pairs(a: [__m512; 8]) -> __m512 {
    // Level 1 (8 → 4), per 128-bit block: [a_2j(0+2), a_2j+1(0+2), a_2j(1+3), a_2j+1(1+3)],
    // numbering the block's four phases 0–3.
    let t: [__m512; 4] = std::array::from_fn(|j| {
        let (x, y) = (a[2 * j], a[2 * j + 1]);
        _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y))
    });
    // Level 2 (4 → 2), per block: [a_4k, a_4k+1, a_4k+2, a_4k+3] summed over the block's phases.
    let s: [__m512; 2] = std::array::from_fn(|k| {
        let (x, y) = (_mm512_castps_pd(t[2 * k]), _mm512_castps_pd(t[2 * k + 1]));
        _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)))
    });
    // Level 3 (2 → 1): blocks 0 + 1 (phases 0–3 and 4–7 of point 0) and 2 + 3 (point 1).
    _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(s[0], s[1]), _mm512_shuffle_f32x4::<0b11_01_11_01>(s[0], s[1]))
}

/// One block of [`xwt_pairs_avx512`]: `NP` point pairs (starting at pair `j0`) × 8 outputs
/// (starting at `o0`), `8·NP` accumulators.
///
/// # Safety
/// AVX-512F/VL; `tiles` holds `groups` vectors per pair for pairs `j0..j0+NP`; `w` has rows
/// `o0..o0+8` of `8·groups` floats; `z` rows `2·j0..2·(j0+NP)` of width `out` ≥ `o0 + 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn xwt_pairs_block<const NP: usize>(
    tiles: *const __m512,
    groups: usize,
    wp: *const f32,
    bias: *const f32,
    zp: *mut f32,
    out: usize,
    j0: usize,
    o0: usize,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let inp = groups * PAIR_GROUP;
        let mut acc = [[_mm512_setzero_ps(); 8]; NP];
        for g in 0..groups {
            let xv: [__m512; NP] = std::array::from_fn(|q| *tiles.add((j0 + q) * groups + g));
            for o in 0..8 {
                // W[o0 + o, 8g..8g + 8] in both halves: one load µop.
                let wv = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(
                    wp.add((o0 + o) * inp + PAIR_GROUP * g).cast(),
                )));
                for q in 0..NP {
                    acc[q][o] = _mm512_fmadd_ps(xv[q], wv, acc[q][o]);
                }
            }
        }
        // Bias by block: outputs 0–3, 0–3, 4–7, 4–7 (the layout `reduce_pairs` leaves).
        let b8 = _mm512_castps256_ps512(_mm256_loadu_ps(bias.add(o0)));
        let bv = _mm512_shuffle_f32x4::<0b01_01_00_00>(b8, b8);
        for (q, acc) in acc.into_iter().enumerate() {
            let r = _mm512_add_ps(reduce_pairs(acc), bv);
            let (z0, z1) = (zp.add(2 * (j0 + q) * out + o0), zp.add((2 * (j0 + q) + 1) * out + o0));
            _mm_storeu_ps(z0, _mm512_extractf32x4_ps::<0>(r));
            _mm_storeu_ps(z1, _mm512_extractf32x4_ps::<1>(r));
            _mm_storeu_ps(z0.add(4), _mm512_extractf32x4_ps::<2>(r));
            _mm_storeu_ps(z1.add(4), _mm512_extractf32x4_ps::<3>(r));
        }
    }
}

/// Pair-tiled AVX-512 forward product for short rows (`in` a multiple of 8, `W` in L1): the
/// point pairs' rows are first interleaved into vectors holding 8 consecutive inputs of two
/// points (`X'`, on the stack), then each vector is multiplied by one row piece `W[o, 8g..8g+8]`
/// broadcast to both halves, so an accumulator holds the dot products of one output for two
/// points at once and needs an 8-phase reduction ([`reduce_pairs`]: 21 operations per 16
/// outputs) instead of a 16-lane one (45). Work mapping: blocks of 2 pairs × 8 outputs (16
/// accumulators; per group of 8 inputs, 2 `X'` loads and 8 broadcast loads feed 16 FMAs).
/// Covers pairs `0..pairs` and outputs `0..out8` (a multiple of 8); returns false (touching
/// nothing) when `X'` would not fit its stack buffer.
///
/// # Safety
/// AVX-512F/VL and FMA; `x` holds `2·pairs` rows of `inp` floats, `w` `out8` rows of `inp`,
/// `bias` `out8` floats and `z` `2·pairs` rows of `out ≥ out8`; `inp` is a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn xwt_pairs_avx512(
    pairs: usize,
    inp: usize,
    out: usize,
    out8: usize,
    xp: *const f32,
    wp: *const f32,
    bias: *const f32,
    zp: *mut f32,
) -> bool {
    let groups = inp / PAIR_GROUP;
    if pairs * groups > PAIR_TILES_MAX {
        return false;
    }
    let mut tiles = [std::mem::MaybeUninit::<__m512>::uninit(); PAIR_TILES_MAX];
    // SAFETY: reads stay inside rows 2j, 2j + 1 < 2·pairs of x (8g + 8 ≤ inp); the tiles
    // written here (pairs·groups ≤ PAIR_TILES_MAX) are the only ones the blocks read.
    unsafe {
        for j in 0..pairs {
            for g in 0..groups {
                let lo = _mm256_loadu_ps(xp.add(2 * j * inp + PAIR_GROUP * g));
                let hi = _mm256_loadu_pd(xp.add((2 * j + 1) * inp + PAIR_GROUP * g).cast());
                let v = _mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), hi);
                tiles[j * groups + g].write(_mm512_castpd_ps(v));
            }
        }
        let tp = tiles.as_ptr().cast::<__m512>();
        let p2 = pairs / 2 * 2;
        for j0 in (0..p2).step_by(2) {
            for o0 in (0..out8).step_by(8) {
                xwt_pairs_block::<2>(tp, groups, wp, bias, zp, out, j0, o0);
            }
        }
        if p2 < pairs {
            for o0 in (0..out8).step_by(8) {
                xwt_pairs_block::<1>(tp, groups, wp, bias, zp, out, p2, o0);
            }
        }
    }
    true
}

/// Weights (floats) beyond which [`xwt_avx512`] walks `W` once, output block outermost,
/// instead of once per point pair (16 K floats: 64 KB, more than L1).
const XWT_W_L1: usize = 16 * 1024;

/// Points × outputs of the large-`W` forward block: 20 accumulators, 5 `X` rows and one `W`
/// vector at a time in the 32 zmm registers; per 16 inputs 9 loads feed 20 multiply-adds.
const XWT_RP: usize = 5;
const XWT_RO: usize = 4;

/// Row length from which [`xwt_avx512`] uses the `XWT_RP × XWT_RO` block even for a `W` that
/// fits in L1: with rows this long the 20 accumulators' reductions are a small part of the
/// work, while the 2 × 8 block's joint reduction pays off only on short rows (the sine net).
const XWT_LONG_ROWS: usize = 256;

/// AVX-512 forward product: blocks of 2 points × 8 outputs (16 accumulators + 3 operands of
/// the 32 zmm registers), edges in blocks of 2×1, 1×8 and 1×1. Small `W` (the sine net's 64 ×
/// 64) stays in L1, so point pairs run outermost, and rows that are a multiple of 8 take the
/// pair-tiled kernel (`xwt_pairs_avx512`) for all point pairs and whole blocks of 8 outputs;
/// a large `W` (Omniglot's 256 × 784) is walked once with the output blocks outermost.
///
/// # Safety
/// The CPU must support AVX-512F/VL and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub unsafe fn xwt_avx512(points: usize, inp: usize, out: usize, x: &[f32], w: &[f32], bias: &[f32], z: &mut [f32]) {
    check(points, inp, out, x, w, bias, z);
    let full = inp / 16 * 16;
    let mask: __mmask16 = ((1u32 << (inp - full)) - 1) as u16;
    let (xp, wp, zp) = (x.as_ptr(), w.as_ptr(), z.as_mut_ptr());
    let (p2, o8) = (points / 2 * 2, out / 8 * 8);
    // SAFETY: `check` proved x has points·inp, w out·inp, z points·out floats, and every
    // block below covers rows p0 + RP ≤ points and o0 + RO ≤ out.
    unsafe {
        if (out * inp > XWT_W_L1 || inp >= XWT_LONG_ROWS) && points >= XWT_RP {
            // W does not fit in L1, or its rows are long (a few rows of a large W, as the
            // fused Adam pass hands over): walk it once, XWT_RO rows at a time, and run the
            // points over those rows in blocks of XWT_RP while they are hot; leftover points
            // one at a time. Every output is the same lane-wise sum reduced the same way
            // whatever its block, so the shapes do not change any result.
            let (pb, ob) = (points / XWT_RP * XWT_RP, out / XWT_RO * XWT_RO);
            for o0 in (0..ob).step_by(XWT_RO) {
                for p0 in (0..pb).step_by(XWT_RP) {
                    xwt_block_avx512::<XWT_RP, XWT_RO>(xp, wp, zp, bias, inp, out, p0, o0, full, mask);
                }
            }
            for p0 in (0..pb).step_by(XWT_RP) {
                for o0 in ob..out {
                    xwt_block_avx512::<XWT_RP, 1>(xp, wp, zp, bias, inp, out, p0, o0, full, mask);
                }
            }
            for p0 in pb..points {
                for o0 in (0..o8).step_by(8) {
                    xwt_block_avx512::<1, 8>(xp, wp, zp, bias, inp, out, p0, o0, full, mask);
                }
                for o0 in o8..out {
                    xwt_block_avx512::<1, 1>(xp, wp, zp, bias, inp, out, p0, o0, full, mask);
                }
            }
            return;
        }
        if out * inp > XWT_W_L1 {
            // W does not fit in L1: walk it once, 8 rows at a time, and run every point pair
            // over those rows while they are hot (each output is computed by the same block
            // code either way, so the order does not change any result).
            for o0 in (0..o8).step_by(8) {
                for p0 in (0..p2).step_by(2) {
                    xwt_block_avx512::<2, 8>(xp, wp, zp, bias, inp, out, p0, o0, full, mask);
                }
            }
            for p0 in (0..p2).step_by(2) {
                for o0 in o8..out {
                    xwt_block_avx512::<2, 1>(xp, wp, zp, bias, inp, out, p0, o0, full, mask);
                }
            }
        } else {
            // Short rows: the pair-tiled kernel, when X' fits its stack buffer, for all
            // point pairs × whole blocks of 8 outputs; the 2 × 8 blocks otherwise.
            let tiled =
                inp.is_multiple_of(PAIR_GROUP) && xwt_pairs_avx512(p2 / 2, inp, out, o8, xp, wp, bias.as_ptr(), zp);
            for p0 in (0..p2).step_by(2) {
                if !tiled {
                    for o0 in (0..o8).step_by(8) {
                        xwt_block_avx512::<2, 8>(xp, wp, zp, bias, inp, out, p0, o0, full, mask);
                    }
                }
                for o0 in o8..out {
                    xwt_block_avx512::<2, 1>(xp, wp, zp, bias, inp, out, p0, o0, full, mask);
                }
            }
        }
        if p2 < points {
            for o0 in (0..o8).step_by(8) {
                xwt_block_avx512::<1, 8>(xp, wp, zp, bias, inp, out, p2, o0, full, mask);
            }
            for o0 in o8..out {
                xwt_block_avx512::<1, 1>(xp, wp, zp, bias, inp, out, p2, o0, full, mask);
            }
        }
    }
}

/// Sum of the 8 lanes of an AVX register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// One `RP × RO` block of the AVX2 forward product (see [`xwt_avx2`]).
///
/// # Safety
/// AVX2 + FMA; `x`, `w` hold rows `p0..p0+RP`, `o0..o0+RO` of width `inp`, and `z` rows
/// `p0..p0+RP` of width `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn xwt_block_avx2<const RP: usize, const RO: usize>(
    x: &[f32],
    w: &[f32],
    z: &mut [f32],
    bias: &[f32],
    inp: usize,
    out: usize,
    p0: usize,
    o0: usize,
    full: usize,
) {
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    // SAFETY: the caller guarantees the rows exist; vector loads stay below `full` ≤ `inp`.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); RO]; RP];
        let mut i = 0;
        while i < full {
            let xv: [__m256; RP] = std::array::from_fn(|r| _mm256_loadu_ps(xp.add((p0 + r) * inp + i)));
            for c in 0..RO {
                let wv = _mm256_loadu_ps(wp.add((o0 + c) * inp + i));
                for r in 0..RP {
                    acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
                }
            }
            i += 8;
        }
        for r in 0..RP {
            for c in 0..RO {
                let mut s = hsum256(acc[r][c]);
                for i in full..inp {
                    s = x[(p0 + r) * inp + i].mul_add(w[(o0 + c) * inp + i], s);
                }
                z[(p0 + r) * out + o0 + c] = bias[o0 + c] + s;
            }
        }
    }
}

/// Inputs per group of the AVX2 pair-tiled forward (`xwt_pairs_avx2`): half a ymm register.
const PAIR_GROUP_AVX2: usize = 4;

/// Largest `points / 2 · in / 4` (pair-tiled `X` vectors, 32 bytes each) that
/// [`xwt_pairs_avx2`] stages on the stack: 16 KB.
const PAIR_TILES_MAX_AVX2: usize = 512;

/// Sums 4 pair-tiled AVX2 accumulators over their 4 input phases: `a[o]` holds point 0's
/// partial sums of output `o` in lanes 0–3 and point 1's in lanes 4–7; the result holds point
/// 0's outputs 0–3, then point 1's. 9 vector operations for 8 dot products.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn reduce_pairs_avx2(a: [__m256; 4]) -> __m256 {
    // Per 128-bit half: [a_2j(0+2), a_2j+1(0+2), a_2j(1+3), a_2j+1(1+3)].
    let t: [__m256; 2] = std::array::from_fn(|j| {
        let (x, y) = (a[2 * j], a[2 * j + 1]);
        _mm256_add_ps(_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y))
    });
    let (x, y) = (_mm256_castps_pd(t[0]), _mm256_castps_pd(t[1]));
    _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(x, y)), _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)))
}

/// Four floats at `p` (any alignment) in both 128-bit halves.
///
/// # Safety
/// AVX; `p..p+4` readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn splat128(p: *const f32) -> __m256 {
    // SAFETY: guaranteed by the caller; an unaligned load.
    let v = unsafe { _mm_loadu_ps(p) };
    _mm256_set_m128(v, v)
}

/// One block of [`xwt_pairs_avx2`]: `NP` point pairs (from pair `j0`) × 4 outputs (from `o0`).
///
/// # Safety
/// AVX2 + FMA; `tiles` holds `groups` vectors per pair for pairs `j0..j0+NP`; `w` has rows
/// `o0..o0+4` of `4·groups` floats; `z` rows `2·j0..2·(j0+NP)` of width `out` ≥ `o0 + 4`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn xwt_pairs_block_avx2<const NP: usize>(
    tiles: *const __m256,
    groups: usize,
    wp: *const f32,
    bias: *const f32,
    zp: *mut f32,
    out: usize,
    j0: usize,
    o0: usize,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let inp = groups * PAIR_GROUP_AVX2;
        let mut acc = [[_mm256_setzero_ps(); 4]; NP];
        for g in 0..groups {
            let xv: [__m256; NP] = std::array::from_fn(|q| *tiles.add((j0 + q) * groups + g));
            for o in 0..4 {
                // W[o0 + o, 4g..4g + 4] in both halves (one `vbroadcastf128` load; no reference
                // to a possibly unaligned `__m128`).
                let wv = splat128(wp.add((o0 + o) * inp + PAIR_GROUP_AVX2 * g));
                for q in 0..NP {
                    acc[q][o] = _mm256_fmadd_ps(xv[q], wv, acc[q][o]);
                }
            }
        }
        let bv = splat128(bias.add(o0));
        for (q, acc) in acc.into_iter().enumerate() {
            let r = _mm256_add_ps(reduce_pairs_avx2(acc), bv);
            _mm_storeu_ps(zp.add(2 * (j0 + q) * out + o0), _mm256_castps256_ps128(r));
            _mm_storeu_ps(zp.add((2 * (j0 + q) + 1) * out + o0), _mm256_extractf128_ps::<1>(r));
        }
    }
}

/// Pair-tiled AVX2 forward product, as [`xwt_pairs_avx512`] with half the widths: vectors of
/// 4 consecutive inputs of two points, row pieces `W[o, 4g..4g+4]` broadcast to both halves,
/// 4-phase sums ([`reduce_pairs_avx2`]: 9 operations per 8 outputs, against about 6 per output
/// for separate horizontal sums). Work mapping: blocks of 2 pairs × 4 outputs (8 accumulators;
/// per group, 2 `X'` loads and 4 broadcast loads feed 8 FMAs). Covers pairs `0..pairs` and
/// outputs `0..out4` (a multiple of 4); returns false (touching nothing) when `X'` would not
/// fit its stack buffer.
///
/// # Safety
/// AVX2 + FMA; `x` holds `2·pairs` rows of `inp` floats, `w` `out4` rows of `inp`, `bias`
/// `out4` floats and `z` `2·pairs` rows of `out ≥ out4`; `inp` is a multiple of 4.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn xwt_pairs_avx2(
    pairs: usize,
    inp: usize,
    out: usize,
    out4: usize,
    xp: *const f32,
    wp: *const f32,
    bias: *const f32,
    zp: *mut f32,
) -> bool {
    let groups = inp / PAIR_GROUP_AVX2;
    if pairs * groups > PAIR_TILES_MAX_AVX2 {
        return false;
    }
    let mut tiles = [std::mem::MaybeUninit::<__m256>::uninit(); PAIR_TILES_MAX_AVX2];
    // SAFETY: reads stay inside rows 2j, 2j + 1 < 2·pairs of x (4g + 4 ≤ inp); the tiles
    // written here (pairs·groups ≤ PAIR_TILES_MAX_AVX2) are the only ones the blocks read.
    unsafe {
        for j in 0..pairs {
            for g in 0..groups {
                let lo = _mm_loadu_ps(xp.add(2 * j * inp + PAIR_GROUP_AVX2 * g));
                let hi = _mm_loadu_ps(xp.add((2 * j + 1) * inp + PAIR_GROUP_AVX2 * g));
                tiles[j * groups + g].write(_mm256_set_m128(hi, lo));
            }
        }
        let tp = tiles.as_ptr().cast::<__m256>();
        let p2 = pairs / 2 * 2;
        for j0 in (0..p2).step_by(2) {
            for o0 in (0..out4).step_by(4) {
                xwt_pairs_block_avx2::<2>(tp, groups, wp, bias, zp, out, j0, o0);
            }
        }
        if p2 < pairs {
            for o0 in (0..out4).step_by(4) {
                xwt_pairs_block_avx2::<1>(tp, groups, wp, bias, zp, out, p2, o0);
            }
        }
    }
    true
}

/// AVX2 forward product: blocks of 2 points × 4 outputs (8 accumulators + operands of the 16
/// ymm registers), edges in blocks of 2×1, 1×4 and 1×1; the `in % 8` tail in scalar FMA.
/// Short rows that are a multiple of 4 with `W` in L1 take the pair-tiled kernel
/// (`xwt_pairs_avx2`) for all point pairs and whole blocks of 4 outputs.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn xwt_avx2(points: usize, inp: usize, out: usize, x: &[f32], w: &[f32], bias: &[f32], z: &mut [f32]) {
    check(points, inp, out, x, w, bias, z);
    let full = inp / 8 * 8;
    let (p2, o4) = (points / 2 * 2, out / 4 * 4);
    // SAFETY: `check` proved the extents; every block covers rows p0 + RP ≤ points and
    // o0 + RO ≤ out.
    unsafe {
        // Short rows whose W fits in L1: the pair-tiled kernel for all point pairs × whole
        // blocks of 4 outputs, when X' fits its stack buffer.
        let tiled = inp.is_multiple_of(PAIR_GROUP_AVX2)
            && out * inp <= XWT_W_L1
            && inp < XWT_LONG_ROWS
            && xwt_pairs_avx2(p2 / 2, inp, out, o4, x.as_ptr(), w.as_ptr(), bias.as_ptr(), z.as_mut_ptr());
        for p0 in (0..p2).step_by(2) {
            if !tiled {
                for o0 in (0..o4).step_by(4) {
                    xwt_block_avx2::<2, 4>(x, w, z, bias, inp, out, p0, o0, full);
                }
            }
            for o0 in o4..out {
                xwt_block_avx2::<2, 1>(x, w, z, bias, inp, out, p0, o0, full);
            }
        }
        if p2 < points {
            for o0 in (0..o4).step_by(4) {
                xwt_block_avx2::<1, 4>(x, w, z, bias, inp, out, p2, o0, full);
            }
            for o0 in o4..out {
                xwt_block_avx2::<1, 1>(x, w, z, bias, inp, out, p2, o0, full);
            }
        }
    }
}

/// Checks the extents the raw-pointer axpy loops rely on.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn check_axpy(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    ldb: usize,
    c: &[f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k > 0 {
        assert!((m - 1) * rsa + (k - 1) * csa < a.len(), "axpy: A out of bounds");
        assert!((k - 1) * ldb + n <= b.len(), "axpy: B out of bounds");
    }
    assert!((m - 1) * ldc + n <= c.len(), "axpy: C out of bounds");
}

/// One block of [`axpy_avx512`]: `RR` rows × `NV` vectors of 16 columns (masked by `masks`).
///
/// # Safety
/// AVX-512F/VL; the rows `r0..r0+RR` of `A` and `C`, rows `0..k` of `B` and the unmasked
/// columns exist.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_block_avx512<const RR: usize, const NV: usize, const G: u8, const FULL: bool>(
    k: usize,
    alpha: f32,
    ap: *const f32,
    rsa: usize,
    csa: usize,
    bp: *const f32,
    ldb: usize,
    beta: f32,
    cp: *mut f32,
    ldc: usize,
    r0: usize,
    c0: usize,
    masks: [__mmask16; 4],
    gp: *const f32,
) {
    // SAFETY: guaranteed by the caller; masked-off lanes are neither read nor written.
    unsafe {
        // Blocks whose vectors are all whole (`FULL`: every mask all ones) load and store
        // without masks: with all-ones masks the sine net's 64 × 64 products ran 14–17%
        // slower (criterion, session 17, Ice Lake).
        let load = |h: usize, p: *const f32| if FULL { _mm512_loadu_ps(p) } else { _mm512_maskz_loadu_ps(masks[h], p) };
        let mut acc = [[_mm512_setzero_ps(); NV]; RR];
        for kk in 0..k {
            let brow = bp.add(kk * ldb + c0);
            let bv: [__m512; NV] = std::array::from_fn(|h| load(h, brow.add(16 * h)));
            for r in 0..RR {
                let av = _mm512_set1_ps(*ap.add((r0 + r) * rsa + kk * csa));
                for h in 0..NV {
                    acc[r][h] = _mm512_fmadd_ps(av, bv[h], acc[r][h]);
                }
            }
        }
        let (va, vb) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta));
        for (r, acc) in acc.iter().enumerate() {
            let crow = cp.add((r0 + r) * ldc + c0);
            for h in 0..NV {
                // α·acc, or α·acc + β·C in one rounding (one FMA when β = 1, the SGD update).
                let v = if beta == 0.0 {
                    _mm512_mul_ps(va, acc[h])
                } else {
                    let c = load(h, crow.add(16 * h));
                    _mm512_fmadd_ps(va, acc[h], if beta == 1.0 { c } else { _mm512_mul_ps(vb, c) })
                };
                // The activation derivative through the stored activation a (same layout as C),
                // with the arithmetic of the separate pass: v·(1 − a·a), or v where a > 0.
                // (G is a compile-time constant: the plain product has no gate code at all.)
                let v = match G {
                    GATE_TANH => {
                        let a = load(h, gp.add((r0 + r) * ldc + c0 + 16 * h));
                        _mm512_mul_ps(v, _mm512_sub_ps(_mm512_set1_ps(1.0), _mm512_mul_ps(a, a)))
                    }
                    GATE_RELU => {
                        let a = load(h, gp.add((r0 + r) * ldc + c0 + 16 * h));
                        _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, _mm512_setzero_ps()), v)
                    }
                    _ => v,
                };
                if FULL {
                    _mm512_storeu_ps(crow.add(16 * h), v);
                } else {
                    _mm512_mask_storeu_ps(crow.add(16 * h), masks[h], v);
                }
            }
        }
    }
}

/// AVX-512 axpy product `C[m×n] ← α·A·B + β·C` (`B`, `C` with contiguous rows).
///
/// Work mapping: blocks of 4 rows (5 when `m` is a multiple of 5 but not of 4) × 64 columns of
/// `C` in 16 (20) zmm accumulators; per `kk`, four
/// (masked at the right edge) loads of `B`'s row `kk` and 4 broadcasts of `A[r, kk]` feed 16
/// FMAs (4 loads + 4 broadcasts per 16 FMAs keeps the two load ports below the two FMA
/// ports). Edge blocks (fewer rows, fewer vectors) are separate instantiations, so every
/// block runs fully unrolled. `β = 0` never reads `C`.
///
/// # Safety
/// The CPU must support AVX-512F/VL and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn axpy_avx512(
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
    // SAFETY: same contract as this function's.
    unsafe { axpy_avx512_gated::<GATE_NONE>(m, k, n, alpha, a, rsa, csa, b, ldb, beta, c, ldc, std::ptr::null()) }
}

/// What the axpy epilogue multiplies in, read through the stored activation (`[m × ldc]`, the
/// layout of `C`): nothing, the tanh derivative, or the ReLU mask.
const GATE_NONE: u8 = 0;
const GATE_TANH: u8 = 1;
const GATE_RELU: u8 = 2;

/// Input gradient fused with the activation derivative: `C[m×n] ← (A·B) ⊙ act'(G)` where `G`
/// (the layer's stored activation, `[m × ldc]` like `C`) gives `1 − g²` (tanh) or `[g > 0]`
/// (ReLU), computed in the product's epilogue with the same arithmetic as the separate pass
/// (bit-identical), saving a read-modify-write pass over `C`.
///
/// # Safety
/// The CPU must support AVX-512F/VL and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn axpy_act_avx512(
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
    assert!(m == 0 || n == 0 || (m - 1) * ldc + n <= g.len(), "axpy: activations out of bounds");
    // SAFETY: same contract as this function's; `g` covers every C position (checked above).
    unsafe {
        if tanh {
            axpy_avx512_gated::<GATE_TANH>(m, k, n, 1.0, a, rsa, csa, b, ldb, 0.0, c, ldc, g.as_ptr())
        } else {
            axpy_avx512_gated::<GATE_RELU>(m, k, n, 1.0, a, rsa, csa, b, ldb, 0.0, c, ldc, g.as_ptr())
        }
    }
}

/// [`axpy_avx512`] with an optional activation-derivative epilogue.
///
/// # Safety
/// The CPU must support AVX-512F/VL and FMA; with a gate, `gp` covers every C position.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_avx512_gated<const G: u8>(
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
    gp: *const f32,
) {
    check_axpy(m, k, n, a, rsa, csa, b, ldb, c, ldc);
    let lane_mask = |from: usize| -> __mmask16 {
        let left = n.saturating_sub(from).min(16);
        ((1u32 << left) - 1) as u16
    };
    let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    // SAFETY: `check_axpy` proved every A index (r·rsa + kk·csa, r < m, kk < k) and every
    // B/C row piece [row·ld + c0, row·ld + n) is inside its slice; each block covers rows
    // r0 + RR ≤ m, and columns past n are masked off.
    unsafe {
        macro_rules! run {
            ($rr:literal, $nv:literal, $r0:expr, $c0:expr, $masks:expr) => {
                if $masks[$nv - 1] == u16::MAX {
                    axpy_block_avx512::<$rr, $nv, G, true>(
                        k, alpha, ap, rsa, csa, bp, ldb, beta, cp, ldc, $r0, $c0, $masks, gp,
                    )
                } else {
                    axpy_block_avx512::<$rr, $nv, G, false>(
                        k, alpha, ap, rsa, csa, bp, ldb, beta, cp, ldc, $r0, $c0, $masks, gp,
                    )
                }
            };
        }
        macro_rules! rows {
            ($rr:literal, $r0:expr, $c0:expr, $masks:expr, $nv:expr) => {
                match $nv {
                    4 => run!($rr, 4, $r0, $c0, $masks),
                    3 => run!($rr, 3, $r0, $c0, $masks),
                    2 => run!($rr, 2, $r0, $c0, $masks),
                    _ => run!($rr, 1, $r0, $c0, $masks),
                }
            };
        }
        // Row blocks of 4, or of 5 when that covers m exactly and 4 does not (10 and 25
        // points: 5 + 5 instead of 4 + 4 + 2, with 20 accumulators per block).
        let fives = !m.is_multiple_of(4) && m.is_multiple_of(5);
        let m4 = if fives { 0 } else { m / 4 * 4 };
        let mut c0 = 0;
        while c0 < n {
            let masks = [lane_mask(c0), lane_mask(c0 + 16), lane_mask(c0 + 32), lane_mask(c0 + 48)];
            let nv = (n - c0).min(64).div_ceil(16);
            if fives {
                for r0 in (0..m).step_by(5) {
                    rows!(5, r0, c0, masks, nv)
                }
                c0 += 64;
                continue;
            }
            for r0 in (0..m4).step_by(4) {
                rows!(4, r0, c0, masks, nv)
            }
            match m - m4 {
                0 => {}
                1 => rows!(1, m4, c0, masks, nv),
                2 => rows!(2, m4, c0, masks, nv),
                _ => rows!(3, m4, c0, masks, nv),
            }
            c0 += 64;
        }
    }
}

/// One block of [`axpy_avx2`]: `RR ≤ 4` rows × 16 columns (two ymm vectors per row). `FULL`:
/// both vectors whole, plain loads and stores; otherwise `vmaskmov` with masks `m0` and
/// `m1.0` (`m1.1`: the second vector has any lane at all).
///
/// # Safety
/// AVX2 + FMA; the rows `r0..r0+RR` of `A` and `C`, rows `0..k` of `B` and the unmasked
/// columns exist.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_block_avx2<const RR: usize, const FULL: bool>(
    (k, alpha, beta): (usize, f32, f32),
    (ap, rsa, csa): (*const f32, usize, usize),
    (bp, ldb): (*const f32, usize),
    (cp, ldc): (*mut f32, usize),
    r0: usize,
    c0: usize,
    m0: __m256i,
    m1: (__m256i, bool),
) {
    // SAFETY: guaranteed by the caller; masked-off lanes are neither read nor written.
    unsafe {
        // Whole vectors without masks (the 64 × 64 weight-gradient product ran 7–13% faster
        // so on Ice Lake, criterion, session 17).
        let load = |p: *const f32, m: __m256i| if FULL { _mm256_loadu_ps(p) } else { _mm256_maskload_ps(p, m) };
        let two = FULL || m1.1;
        let mut acc = [[_mm256_setzero_ps(); 2]; RR];
        for kk in 0..k {
            let brow = bp.add(kk * ldb + c0);
            let b0 = load(brow, m0);
            let b1 = if two { load(brow.add(8), m1.0) } else { _mm256_setzero_ps() };
            for r in 0..RR {
                let av = _mm256_set1_ps(*ap.add((r0 + r) * rsa + kk * csa));
                acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
                if two {
                    acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
                }
            }
        }
        let (va, vb) = (_mm256_set1_ps(alpha), _mm256_set1_ps(beta));
        for (r, acc) in acc.iter().enumerate() {
            let crow = cp.add((r0 + r) * ldc + c0);
            for (h, mask) in [(0, m0), (1, m1.0)] {
                if h == 1 && !two {
                    continue;
                }
                let v = if beta == 0.0 {
                    _mm256_mul_ps(va, acc[h])
                } else {
                    let c = load(crow.add(8 * h), mask);
                    _mm256_fmadd_ps(va, acc[h], if beta == 1.0 { c } else { _mm256_mul_ps(vb, c) })
                };
                if FULL {
                    _mm256_storeu_ps(crow.add(8 * h), v);
                } else {
                    _mm256_maskstore_ps(crow.add(8 * h), mask, v);
                }
            }
        }
    }
}

/// AVX2 axpy product, as [`axpy_avx512`] with 4 rows × 16 columns (8 ymm accumulators) and
/// `vmaskmov` loads/stores at the right edge only.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn axpy_avx2(
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
    check_axpy(m, k, n, a, rsa, csa, b, ldb, c, ldc);
    const R: usize = 4;
    // SAFETY (whole body): as in `axpy_avx512`; masked lanes are neither read nor written.
    unsafe {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let lane_mask = |from: usize| -> (__m256i, bool) {
            let left = n.saturating_sub(from).min(8);
            (_mm256_cmpgt_epi32(_mm256_set1_epi32(left as i32), lanes), left > 0)
        };
        let (ab, a_, b_, c_) = ((k, alpha, beta), (a.as_ptr(), rsa, csa), (b.as_ptr(), ldb), (c.as_mut_ptr(), ldc));
        let all = _mm256_set1_epi32(-1);
        let mut c0 = 0;
        while c0 < n {
            let (m0, _) = lane_mask(c0);
            let m1 = lane_mask(c0 + 8);
            let full = n - c0 >= 16;
            let mut r0 = 0;
            while r0 < m {
                let rr = (m - r0).min(R);
                macro_rules! run {
                    ($rr:literal) => {
                        if full {
                            axpy_block_avx2::<$rr, true>(ab, a_, b_, c_, r0, c0, all, (all, true))
                        } else {
                            axpy_block_avx2::<$rr, false>(ab, a_, b_, c_, r0, c0, m0, m1)
                        }
                    };
                }
                match rr {
                    4 => run!(4),
                    3 => run!(3),
                    2 => run!(2),
                    _ => run!(1),
                }
                r0 += rr;
            }
            c0 += 16;
        }
    }
}

/// `tanh` of 16 lanes: the rational fit of [`super::math::tanh`] with fused multiply-adds and
/// the division replaced by `rcp14` and one residual correction (relative error about 2^-28
/// before rounding). 22 vector instructions per 16 values (the exp-based version took ~33).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn tanh16(x: __m512) -> __m512 {
    let set = _mm512_set1_ps;
    let ax = _mm512_abs_ps(x);
    // `min(a, b)` returns `b` when either is NaN, so a NaN input flows on through `xc`.
    let xc = _mm512_min_ps(set(TANH_SAT), ax);
    let x2 = _mm512_mul_ps(xc, xc);
    let mut p = set(TANH_NUM[6]);
    for &c in TANH_NUM[..6].iter().rev() {
        p = _mm512_fmadd_ps(p, x2, set(c));
    }
    let p = _mm512_mul_ps(p, xc);
    let mut q = set(TANH_DEN[3]);
    for &c in TANH_DEN[..3].iter().rev() {
        q = _mm512_fmadd_ps(q, x2, set(c));
    }
    // p/q: the estimate t0 = p·rcp14(q) (relative error < 2⁻¹⁴), then one residual
    // correction t0 + rcp14(q)·(p − q·t0), which leaves about 2⁻²⁸ before rounding.
    let r0 = _mm512_rcp14_ps(q);
    let t0 = _mm512_mul_ps(p, r0);
    let t = _mm512_fmadd_ps(r0, _mm512_fnmadd_ps(q, t0, p), t0);
    // The f32 evaluation can land one ulp above 1 just below saturation (at 7.9954): cap it
    // (NaN stays: `min` returns its second operand then).
    let t = _mm512_min_ps(set(1.0), t);
    // |x| < 4e-4: x itself (subnormals stay exact); |x| ≥ TANH_SAT: exactly 1. NaN compares
    // false in both.
    let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(ax, set(TANH_TINY));
    let sat = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(ax, set(TANH_SAT));
    let t = _mm512_mask_blend_ps(sat, _mm512_mask_blend_ps(tiny, t, ax), set(1.0));
    // tanh is odd: |t| gets the sign of x last (this also keeps tanh(−0) = −0). The bit
    // select (x & sign) | t is one ternary-logic op.
    let sign = _mm512_set1_epi32(i32::MIN);
    _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xEA>(_mm512_castps_si512(x), sign, _mm512_castps_si512(t)))
}

/// `z ← tanh(z)` elementwise with AVX-512 (`tanh16`). One vector is a long dependency chain
/// (two polynomials, the reciprocal, its correction), so the main loop runs four independent
/// vectors at a time; a masked loop finishes
/// the last < 64 values. NaN propagates; ±0 keep their sign.
///
/// # Safety
/// The CPU must support AVX-512F/VL and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub unsafe fn tanh_avx512(z: &mut [f32]) {
    let n = z.len();
    let zp = z.as_mut_ptr();
    let mut i = 0;
    // SAFETY: full-width accesses stay below i + 64 ≤ n; the tail's masked lanes below n.
    unsafe {
        while i + 64 <= n {
            let v: [__m512; 4] = std::array::from_fn(|j| _mm512_loadu_ps(zp.add(i + 16 * j)));
            let t = v.map(|x| tanh16(x));
            for (j, t) in t.into_iter().enumerate() {
                _mm512_storeu_ps(zp.add(i + 16 * j), t);
            }
            i += 64;
        }
        while i < n {
            let left = (n - i).min(16);
            let mask: __mmask16 = ((1u32 << left) - 1) as u16;
            let x = _mm512_maskz_loadu_ps(mask, zp.add(i));
            _mm512_mask_storeu_ps(zp.add(i), mask, tanh16(x));
            i += 16;
        }
    }
}

/// `tanh` of 8 lanes with AVX2 + FMA: the fit of [`super::math::tanh`] as in `tanh16`, with
/// an IEEE division (AVX2's 12-bit `rcp` estimate would need two corrections) and blends
/// instead of masks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn tanh8(x: __m256) -> __m256 {
    let set = _mm256_set1_ps;
    let sign = set(-0.0);
    let ax = _mm256_andnot_ps(sign, x);
    // `min(a, b)` returns `b` when either is NaN, so a NaN input flows on through `xc`.
    let xc = _mm256_min_ps(set(TANH_SAT), ax);
    let x2 = _mm256_mul_ps(xc, xc);
    let mut p = set(TANH_NUM[6]);
    for &c in TANH_NUM[..6].iter().rev() {
        p = _mm256_fmadd_ps(p, x2, set(c));
    }
    let p = _mm256_mul_ps(p, xc);
    let mut q = set(TANH_DEN[3]);
    for &c in TANH_DEN[..3].iter().rev() {
        q = _mm256_fmadd_ps(q, x2, set(c));
    }
    let t = _mm256_min_ps(set(1.0), _mm256_div_ps(p, q));
    let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(ax, set(TANH_TINY));
    let sat = _mm256_cmp_ps::<_CMP_GE_OQ>(ax, set(TANH_SAT));
    let t = _mm256_blendv_ps(_mm256_blendv_ps(t, ax, tiny), set(1.0), sat);
    _mm256_or_ps(t, _mm256_and_ps(x, sign))
}

/// `z ← tanh(z)` elementwise with AVX2 + FMA (`tanh8`): four independent vectors at a time,
/// then single vectors, then a masked load/store for the last < 8 values.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tanh_avx2(z: &mut [f32]) {
    let n = z.len();
    let zp = z.as_mut_ptr();
    let mut i = 0;
    // SAFETY: full-width accesses stay below i + 32 (or i + 8) ≤ n; the tail's mask enables
    // only the lanes below n (masked-off lanes are neither read nor written).
    unsafe {
        while i + 32 <= n {
            let v: [__m256; 4] = std::array::from_fn(|j| _mm256_loadu_ps(zp.add(i + 8 * j)));
            for (j, t) in v.map(|x| tanh8(x)).into_iter().enumerate() {
                _mm256_storeu_ps(zp.add(i + 8 * j), t);
            }
            i += 32;
        }
        while i + 8 <= n {
            _mm256_storeu_ps(zp.add(i), tanh8(_mm256_loadu_ps(zp.add(i))));
            i += 8;
        }
        if i < n {
            let left = (n - i) as i32;
            let mask = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), mask);
            let x = _mm256_maskload_ps(zp.add(i), mask);
            _mm256_maskstore_ps(zp.add(i), mask, tanh8(x));
        }
    }
}

/// AVX-512 Adam step with β1 = 0 over a slice: `v ← β2·v + (1 − β2)·g²` (exact, as the
/// other paths), then `θ ← θ − lr_t·g·r` with `r ≈ 1/(√v + ε)`: `√v = v·rsqrt(v)` from
/// `vrsqrt14ps` plus one Newton step (0 where `v` is below the smallest normal float, which
/// changes the result by less than 1e-11 relative since ε ≫ √v there), and `r` from
/// `vrcp14ps` plus one Newton step. Both refined estimates are within about 2 ulp, against 22
/// cycles per 16 values for `vsqrtps` + `vdivps` (port 0 only), which bound the large Omniglot
/// layers' update. Work: 16 parameters per iteration, masked tail.
///
/// # Safety
/// The CPU must support AVX-512F/VL and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub unsafe fn adam_avx512(theta: &mut [f32], g: &[f32], v: &mut [f32], lr_t: f32, beta2: f32, eps: f32) {
    let n = theta.len();
    assert!(g.len() == n && v.len() == n, "adam lengths");
    let (tp, vp) = (theta.as_mut_ptr(), v.as_mut_ptr());
    // SAFETY: same contract; reading and writing the same θ and v positions in place.
    unsafe { adam_avx512_raw(n, tp, tp, g.as_ptr(), vp, 1.0, vp, lr_t, beta2, eps) }
}

/// [`adam_avx512`] out of place, for the first step of a task: reads θ from `src_theta` and
/// `v` from `src_v` (zeros when `None`) times `vscale` (a deferred decay `β2^d`: the product
/// rounded, subnormal results taken as zero; `1.0`: `v` as it is), writes both to `theta` and
/// `v`. The same arithmetic as copying (and decaying) first and updating in place
/// (bit-identical), without the copy pass.
///
/// # Safety
/// The CPU must support AVX-512F/VL and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn adam_from_avx512(
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
    let n = theta.len();
    assert!(g.len() == n && v.len() == n && src_theta.len() == n, "adam lengths");
    assert!(src_v.is_none_or(|s| s.len() == n), "adam source moments length");
    let vin = src_v.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: lengths checked above; the sources are shared borrows distinct from the
    // mutably borrowed destinations.
    unsafe {
        adam_avx512_raw(
            n,
            src_theta.as_ptr(),
            theta.as_mut_ptr(),
            g.as_ptr(),
            vin,
            vscale,
            v.as_mut_ptr(),
            lr_t,
            beta2,
            eps,
        )
    }
}

/// The Adam loop over raw pointers: θ and `v` read from `tin`/`vin` (`vin` null = zeros; `v`
/// times `vscale` unless that is 1, see [`adam_from_avx512`]) and written to `tout`/`vout`
/// (which may equal the inputs).
///
/// # Safety
/// AVX-512F/VL + FMA; every pointer covers `n` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn adam_avx512_raw(
    n: usize,
    tin: *const f32,
    tout: *mut f32,
    gp: *const f32,
    vin: *const f32,
    vscale: f32,
    vout: *mut f32,
    lr_t: f32,
    beta2: f32,
    eps: f32,
) {
    let (b2, omb2) = (_mm512_set1_ps(beta2), _mm512_set1_ps(1.0 - beta2));
    let (lr, ep) = (_mm512_set1_ps(lr_t), _mm512_set1_ps(eps));
    let (half, three_halves, two) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1.5), _mm512_set1_ps(2.0));
    let tiny = _mm512_set1_ps(f32::MIN_POSITIVE);
    let gmin = _mm512_set1_ps(crate::cpu::update::adam_g_min(beta2));
    let step = |t: __m512, g: __m512, v: __m512| -> (__m512, __m512) {
        // v ← β2·v + (1 − β2)·g², rounded as `madd(β2, v, (1 − β2)·g·g)` on the other paths.
        // The gradient's share (1 − β2)·g², dropped where it would be subnormal.
        let gq = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(g), gmin), g);
        let vn = _mm512_fmadd_ps(b2, v, _mm512_mul_ps(_mm512_mul_ps(omb2, gq), gq));
        // Subnormal results are stored as zero (ordered compare: NaN stays NaN), so no later
        // step reads a subnormal `v` (see `update::adam_b1zero`).
        let vn = _mm512_mask_mov_ps(vn, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(vn, tiny), _mm512_setzero_ps());
        // y ≈ 1/√v: estimate (rel. error < 2⁻¹⁴) and one Newton step y·(1.5 − 0.5·v·y²).
        let y = _mm512_rsqrt14_ps(vn);
        let hv = _mm512_mul_ps(half, vn);
        let y = _mm512_mul_ps(y, _mm512_fnmadd_ps(_mm512_mul_ps(hv, y), y, three_halves));
        let normal = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(vn, tiny);
        let d = _mm512_add_ps(_mm512_maskz_mul_ps(normal, vn, y), ep);
        // r ≈ 1/d: estimate and one Newton step r·(2 − d·r).
        let r = _mm512_rcp14_ps(d);
        let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, two));
        (_mm512_fnmadd_ps(_mm512_mul_ps(lr, g), r, t), vn)
    };
    // The deferred decay `β2^d·v` as `sparse::decay` rounds it: one product, subnormal results
    // (ordered compare: NaN stays NaN) taken as zero.
    let (scaled, vs) = (vscale != 1.0, _mm512_set1_ps(vscale));
    let decay = |v: __m512| -> __m512 {
        if !scaled {
            return v;
        }
        let y = _mm512_mul_ps(v, vs);
        _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, tiny), _mm512_setzero_ps())
    };
    let mut i = 0;
    // SAFETY: full-width accesses stay below i + 16 ≤ n; the tail's masked lanes below n
    // (masked-off lanes are neither read nor written).
    unsafe {
        let zero = vin.is_null();
        while i + 16 <= n {
            let v = if zero { _mm512_setzero_ps() } else { decay(_mm512_loadu_ps(vin.add(i))) };
            let (t, vn) = step(_mm512_loadu_ps(tin.add(i)), _mm512_loadu_ps(gp.add(i)), v);
            _mm512_storeu_ps(tout.add(i), t);
            _mm512_storeu_ps(vout.add(i), vn);
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            let ld = |p: *const f32| _mm512_maskz_loadu_ps(mask, p);
            let v = if zero { _mm512_setzero_ps() } else { decay(ld(vin.add(i))) };
            let (t, vn) = step(ld(tin.add(i)), ld(gp.add(i)), v);
            _mm512_mask_storeu_ps(tout.add(i), mask, t);
            _mm512_mask_storeu_ps(vout.add(i), mask, vn);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn reduce16_puts_each_sum_in_its_slot() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")) {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        // Input q has lanes (q + 1)·(lane + 1)·0.5, sum (q + 1)·68 (exact in f32).
        let vals: Vec<[f32; 16]> =
            (0..16).map(|q| std::array::from_fn(|l| (q + 1) as f32 * (l + 1) as f32 * 0.5)).collect();
        let mut out = [0.0f32; 16];
        // SAFETY: AVX-512F/VL detected above; loads and stores cover exactly 16 floats.
        unsafe {
            let v: [__m512; 16] = std::array::from_fn(|q| _mm512_loadu_ps(vals[q].as_ptr()));
            _mm512_storeu_ps(out.as_mut_ptr(), reduce16(v));
        }
        for q in 0..16 {
            assert_eq!(out[REDUCE16_SLOT[q]], (q + 1) as f32 * 68.0, "input {q}");
        }
    }

    #[test]
    fn reduce_pairs_puts_each_sum_in_its_block() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")) {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        // Accumulator o, lane h·8 + k: (o + 1)·(k + 1) + 100·h, so point h's sum of output o is
        // 36·(o + 1) + 800·h (exact in f32).
        let vals: Vec<[f32; 16]> =
            (0..8).map(|o| std::array::from_fn(|l| ((o + 1) * (l % 8 + 1) + 100 * (l / 8)) as f32)).collect();
        let mut out = [0.0f32; 16];
        // SAFETY: AVX-512F/VL detected above; loads and stores cover exactly 16 floats.
        unsafe {
            let v: [__m512; 8] = std::array::from_fn(|o| _mm512_loadu_ps(vals[o].as_ptr()));
            _mm512_storeu_ps(out.as_mut_ptr(), reduce_pairs(v));
        }
        for o in 0..8 {
            for h in 0..2 {
                let lane = 8 * (o / 4) + 4 * h + o % 4;
                assert_eq!(out[lane], (36 * (o + 1) + 800 * h) as f32, "output {o}, point {h}");
            }
        }
    }

    /// The AVX-512 forward product, every path (pair-tiled, 2 × 8 blocks, long rows, large
    /// `W`, odd points, output and input tails), against an f64 reference on fresh random
    /// data: |z − ref| ≤ 1e-6 + 4e-7·Σ|x·w| (f32 sums of up to 800 products).
    #[test]
    fn xwt_avx512_matches_f64_reference() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")) {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        // SAFETY: AVX-512F/VL detected above (FMA comes with it on every such CPU).
        check_xwt_kernel(|p, i, o, x, w, b, z| unsafe { xwt_avx512(p, i, o, x, w, b, z) });
    }

    /// [`xwt_avx512_matches_f64_reference`] for the AVX2 forward product (pair-tiled for rows
    /// that are multiples of 4, 2 × 4 blocks and the scalar tail otherwise).
    #[test]
    fn xwt_avx2_matches_f64_reference() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("skipped: no AVX2 + FMA on this CPU");
            return;
        }
        // SAFETY: AVX2 and FMA detected above.
        check_xwt_kernel(|p, i, o, x, w, b, z| unsafe { xwt_avx2(p, i, o, x, w, b, z) });
    }

    type XwtFn = fn(usize, usize, usize, &[f32], &[f32], &[f32], &mut [f32]);

    fn check_xwt_kernel(kernel: XwtFn) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5157);
        let mut shapes = vec![(10, 64, 64), (25, 128, 64), (10, 64, 5), (9, 64, 64), (2, 8, 8), (1, 64, 64)];
        shapes.extend([(33, 64, 24), (40, 200, 70), (10, 784, 20), (7, 40, 300), (12, 17, 9)]);
        for _ in 0..60 {
            let inp = if rng.random_bool(0.6) { 4 * rng.random_range(1..=40) } else { rng.random_range(1..=130) };
            shapes.push((rng.random_range(1..=40), inp, rng.random_range(1..=70)));
        }
        for (points, inp, out) in shapes {
            let x: Vec<f32> = (0..points * inp).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let w: Vec<f32> = (0..out * inp).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let b: Vec<f32> = (0..out).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let mut z = vec![f32::NAN; points * out];
            kernel(points, inp, out, &x, &w, &b, &mut z);
            for p in 0..points {
                for o in 0..out {
                    let terms = (0..inp).map(|i| x[p * inp + i] as f64 * w[o * inp + i] as f64);
                    let (r, mag) = terms.fold((b[o] as f64, b[o].abs() as f64), |(s, m), t| (s + t, m + t.abs()));
                    let got = z[p * out + o] as f64;
                    assert!(
                        (got - r).abs() <= 1e-6 + 4e-7 * mag,
                        "{points}×{inp}·{out}: z[{p}, {o}] = {got}, reference {r}"
                    );
                }
            }
        }
    }

    /// The AVX-512 axpy product `C ← α·A·B + β·C` on random shapes (whole and partial
    /// column vectors, every row-block size, both `A` layouts, β = 0 with NaN in `C`, 1 and
    /// 0.7) against an f64 reference: |c − ref| ≤ 1e-6 + 4e-7·(Σ|α·a·b| + |β·c|); the
    /// padding between rows of `C` is never written.
    #[test]
    fn axpy_avx512_matches_f64_reference() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")) {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        // SAFETY: AVX-512F/VL detected above (FMA comes with it on every such CPU).
        check_axpy_kernel(|m, k, n, al, a, rsa, csa, b, ldb, be, c, ldc| unsafe {
            axpy_avx512(m, k, n, al, a, rsa, csa, b, ldb, be, c, ldc)
        });
    }

    /// [`axpy_avx512_matches_f64_reference`] for the AVX2 product.
    #[test]
    fn axpy_avx2_matches_f64_reference() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("skipped: no AVX2 + FMA on this CPU");
            return;
        }
        // SAFETY: AVX2 and FMA detected above.
        check_axpy_kernel(|m, k, n, al, a, rsa, csa, b, ldb, be, c, ldc| unsafe {
            axpy_avx2(m, k, n, al, a, rsa, csa, b, ldb, be, c, ldc)
        });
    }

    type AxpyFn = fn(usize, usize, usize, f32, &[f32], usize, usize, &[f32], usize, f32, &mut [f32], usize);

    fn check_axpy_kernel(kernel: AxpyFn) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xa8b1);
        let mut shapes = vec![(10, 64, 64), (64, 10, 64), (25, 128, 64), (10, 64, 1), (7, 3, 100)];
        for _ in 0..80 {
            let n = if rng.random_bool(0.5) { 16 * rng.random_range(1..=9) } else { rng.random_range(1..=150) };
            shapes.push((rng.random_range(1..=30), rng.random_range(1..=70), n));
        }
        for (case, (m, k, n)) in shapes.into_iter().enumerate() {
            let transposed = case % 2 == 1;
            let (rsa, csa) = if transposed { (1, m) } else { (k, 1) };
            let (ldb, ldc) = (n + case % 3, n + 2 * (case % 2));
            let beta = [0.0f32, 1.0, 0.7][case % 3];
            let alpha = rng.random_range(-1.5f32..1.5);
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let b: Vec<f32> = (0..k * ldb).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let c0: Vec<f32> = (0..m * ldc)
                .map(|j| if beta == 0.0 && j % ldc < n { f32::NAN } else { rng.random_range(-1.0f32..1.0) })
                .collect();
            let mut c = c0.clone();
            kernel(m, k, n, alpha, &a, rsa, csa, &b, ldb, beta, &mut c, ldc);
            for r in 0..m {
                for j in 0..ldc {
                    let got = c[r * ldc + j];
                    if j >= n {
                        assert_eq!(got.to_bits(), c0[r * ldc + j].to_bits(), "{m}×{k}·{n}: padding ({r}, {j}) written");
                        continue;
                    }
                    let before = if beta == 0.0 { 0.0 } else { beta as f64 * c0[r * ldc + j] as f64 };
                    let terms = (0..k).map(|q| alpha as f64 * a[r * rsa + q * csa] as f64 * b[q * ldb + j] as f64);
                    let (want, mag) = terms.fold((before, before.abs()), |(s, g), t| (s + t, g + t.abs()));
                    assert!(
                        (got as f64 - want).abs() <= 1e-6 + 4e-7 * mag,
                        "{m}×{k}·{n} (β = {beta}, transposed A: {transposed}): C[{r}, {j}] = {got}, reference {want}"
                    );
                }
            }
        }
    }

    /// The out-of-place update with a deferred decay equals copying, decaying (`x·f`, subnormal
    /// results as zero) and updating in place, bit for bit, full vectors and a masked tail;
    /// moments near the subnormal boundary and a NaN included.
    #[test]
    fn adam_from_with_decay_is_copy_decay_update() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")) {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        let n = 37;
        let src_t: Vec<f32> = (0..n).map(|i| ((i * 7919 % 113) as f32 - 56.0) * 0.013).collect();
        let g: Vec<f32> = (0..n).map(|i| ((i * 104729 % 97) as f32 - 48.0) * 3.1e-3).collect();
        let mut src_v: Vec<f32> = (0..n).map(|i| 1e-6 * (1.0 + (i * 31 % 17) as f32)).collect();
        src_v[3] = 1.176e-38; // normal, decays below f32::MIN_POSITIVE
        let mut g = g;
        g[3] = 4e-18; // (1 − β2)·g² ≈ 1.6e-38: a subnormal decayed v would show in the sum
        src_v[5] = 0.0;
        src_v[8] = f32::NAN;
        for f in [1.0f32, 0.999, 0.999f32.powi(4)] {
            let (mut t1, mut v1) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            // SAFETY: AVX-512F/VL detected above (FMA comes with it on every such CPU).
            unsafe { adam_from_avx512(&mut t1, &src_t, &g, &mut v1, Some(&src_v), f, 1e-3, 0.999, 1e-8) };
            let mut t2 = src_t.clone();
            let mut v2: Vec<f32> = src_v
                .iter()
                .map(|&x| {
                    if f == 1.0 {
                        return x;
                    }
                    let y = x * f;
                    if y < f32::MIN_POSITIVE { 0.0 } else { y }
                })
                .collect();
            // SAFETY: as above.
            unsafe { adam_avx512(&mut t2, &g, &mut v2, 1e-3, 0.999, 1e-8) };
            for i in 0..n {
                assert_eq!(t1[i].to_bits(), t2[i].to_bits(), "f {f}: θ[{i}] {} vs {}", t1[i], t2[i]);
                assert_eq!(v1[i].to_bits(), v2[i].to_bits(), "f {f}: v[{i}] {} vs {}", v1[i], v2[i]);
            }
            assert!(t1[0] != src_t[0], "a real step");
        }
    }
}

/// 8 × 8 transpose: `dst[c·ldd + r] = src[r·lds + c]` for `r, c < 8` (eight unaligned row
/// loads, the classic unpack / shuffle / lane-permute network of 24 shuffles, eight stores).
/// The building block of the transposed first layer's passes (see `cpu::sparse`).
///
/// # Safety
/// The CPU must support AVX2 (the policies name it only after run-time detection).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn transpose8_avx(src: &[f32], lds: usize, dst: &mut [f32], ldd: usize) {
    assert!(src.len() >= 7 * lds + 8, "transpose8: source shorter than 8 rows of {lds}");
    assert!(dst.len() >= 7 * ldd + 8, "transpose8: destination shorter than 8 rows of {ldd}");
    let p = src.as_ptr();
    // SAFETY: the asserts above keep every 8-float row load `r·lds .. r·lds + 8` (r < 8) inside
    // `src` and every row store `c·ldd .. c·ldd + 8` inside `dst`; all unaligned.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(i * lds)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let o = [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ];
        let d = dst.as_mut_ptr();
        for (c, v) in o.into_iter().enumerate() {
            _mm256_storeu_ps(d.add(c * ldd), v);
        }
    }
}
