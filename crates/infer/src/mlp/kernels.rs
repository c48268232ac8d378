//! The elementwise kernels of the MLPs: bf16 rounding, `exp`, GELU / SiLU / ReLU activations
//! (with AVX2 and AVX-512 GELU), sums, `x += y` and LayerNorm.

use super::{Activation, LN_EPS};
use crate::gemm::to_bf16;
use crate::isa::Isa;

pub(crate) fn round_to_bf16(src: &[f32], dst: &mut [u16], isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: the CPU has AVX-512F (an ISA in use never exceeds the CPU's).
        unsafe { round_to_bf16_avx512(src, dst) };
        return;
    }
    let _ = isa;
    round_to_bf16_portable(src, dst);
}

/// The portable loop compiled for AVX-512, where it vectorises 16 lanes wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn round_to_bf16_avx512(src: &[f32], dst: &mut [u16]) {
    round_to_bf16_portable(src, dst)
}

#[inline(always)]
fn round_to_bf16_portable(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_bf16(s);
    }
}

/// `e^x` for f32, branch-free so that loops over it vectorise: x = n·ln2 + r, |r| ≤ ln2/2, a
/// degree-6 Taylor polynomial for e^r (relative error < 4e-7) and 2^n from the exponent bits.
#[inline(always)]
#[allow(clippy::manual_clamp)] // `clamp` would pass NaN through; max/min map it to -87
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.max(-87.0).min(88.0);
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer in the low bits
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // The low bits of `shifted` hold n (two's complement); 2^n has exponent field n + 127.
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23);
    p * scale
}

/// GELU `x·Φ(x)` with erf from Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    let y = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * y);
    let poly = t * (0.254_829_6 + t * (-0.284_496_72 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let erf = (1.0 - poly * exp(-y * y)).copysign(x);
    0.5 * x * (1.0 + erf)
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

pub(super) fn activate(a: Activation, x: &mut [f32], isa: Isa) {
    // SAFETY: an ISA in use never exceeds the CPU's.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { activate_avx512(a, x) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { activate_avx2(a, x) },
        _ => activate_portable(a, x),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn activate_avx2(a: Activation, x: &mut [f32]) {
    match a {
        Activation::Gelu => gelu_avx2(x),
        _ => activate_portable(a, x),
    }
}

/// [`gelu`] 8 lanes at a time: the same approximation, with the reciprocal from `rcp` (12
/// bits) and two Newton steps instead of a division, and 2^n built from its exponent bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let set = _mm256_set1_ps;
    let sign = _mm256_set1_ps(-0.0);
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = _mm256_loadu_ps(c.as_ptr());
        let y = _mm256_mul_ps(_mm256_andnot_ps(sign, v), set(std::f32::consts::FRAC_1_SQRT_2));
        let d = _mm256_fmadd_ps(set(0.327_591_1), y, set(1.0));
        let mut t = _mm256_rcp_ps(d);
        for _ in 0..2 {
            t = _mm256_mul_ps(t, _mm256_fnmadd_ps(d, t, set(2.0))); // Newton: r(2 − d·r)
        }
        let mut poly = set(1.061_405_4);
        for coef in [-1.453_152, 1.421_413_8, -0.284_496_72, 0.254_829_6] {
            poly = _mm256_fmadd_ps(poly, t, set(coef));
        }
        poly = _mm256_mul_ps(poly, t);
        // e^(−y²): n = round(z·log2 e), r = z − n·ln2, Taylor degree 6, times 2^n (n ≥ −126).
        let z = _mm256_max_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), y), y), set(-87.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            z,
            set(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, set(1.428_606_8e-6), _mm256_fnmadd_ps(n, set(0.693_145_75), z));
        let mut p = set(1.0 / 720.0);
        for coef in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, set(coef));
        }
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        let e = _mm256_mul_ps(p, two_n);
        let erf_abs = _mm256_fnmadd_ps(poly, e, set(1.0));
        let erf = _mm256_or_ps(erf_abs, _mm256_and_ps(v, sign));
        let half = _mm256_mul_ps(v, set(0.5));
        _mm256_storeu_ps(c.as_mut_ptr(), _mm256_fmadd_ps(half, erf, half));
    }
    for v in chunks.into_remainder() {
        *v = gelu(*v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn activate_avx512(a: Activation, x: &mut [f32]) {
    match a {
        Activation::Gelu => gelu_avx512(x),
        _ => activate_portable(a, x),
    }
}

/// [`gelu`] 16 lanes at a time: the same approximation, with the reciprocal from `rcp14` and
/// one Newton step instead of a division, and 2^n by `scalef`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let set = _mm512_set1_ps;
    let sign = _mm512_set1_epi32(i32::MIN);
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        let v = _mm512_loadu_ps(c.as_ptr());
        let y = _mm512_mul_ps(_mm512_abs_ps(v), set(std::f32::consts::FRAC_1_SQRT_2));
        let d = _mm512_fmadd_ps(set(0.327_591_1), y, set(1.0));
        let r0 = _mm512_rcp14_ps(d);
        let t = _mm512_mul_ps(r0, _mm512_fnmadd_ps(d, r0, set(2.0))); // Newton: r(2 − d·r)
        let mut poly = set(1.061_405_4);
        for coef in [-1.453_152, 1.421_413_8, -0.284_496_72, 0.254_829_6] {
            poly = _mm512_fmadd_ps(poly, t, set(coef));
        }
        poly = _mm512_mul_ps(poly, t);
        // e^(−y²): n = round(z·log2 e), r = z − n·ln2, Taylor degree 6, scaled by 2^n.
        let z = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), y), y), set(-87.0));
        let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(z, set(std::f32::consts::LOG2_E)));
        let r = _mm512_fnmadd_ps(n, set(1.428_606_8e-6), _mm512_fnmadd_ps(n, set(0.693_145_75), z));
        let mut p = set(1.0 / 720.0);
        for coef in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, set(coef));
        }
        let e = _mm512_scalef_ps(p, n);
        let erf_abs = _mm512_fnmadd_ps(poly, e, set(1.0));
        let sign_of_v = _mm512_and_si512(_mm512_castps_si512(v), sign);
        let erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(erf_abs), sign_of_v));
        let half = _mm512_mul_ps(v, set(0.5));
        _mm512_storeu_ps(c.as_mut_ptr(), _mm512_fmadd_ps(half, erf, half));
    }
    for v in chunks.into_remainder() {
        *v = gelu(*v);
    }
}

#[inline(always)]
fn activate_portable(a: Activation, x: &mut [f32]) {
    match a {
        Activation::Gelu => x.iter_mut().for_each(|v| *v = gelu(*v)),
        Activation::Silu => x.iter_mut().for_each(|v| *v = silu(*v)),
        Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
    }
}

/// Sum with 16 independent partial sums (vectorises; a plain fold would not, to keep its order).
#[inline(always)]
pub(crate) fn sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `x += y`, element by element.
pub(super) fn add(x: &mut [f32], y: &[f32], isa: Isa) {
    #[inline(always)]
    fn body(x: &mut [f32], y: &[f32]) {
        x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(x: &mut [f32], y: &[f32]) {
        body(x, y)
    }
    // SAFETY: an ISA in use never exceeds the CPU's (AVX-512 CPUs have AVX2).
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        unsafe { avx2(x, y) };
        return;
    }
    let _ = isa;
    body(x, y)
}

pub(super) fn layer_norm(x: &mut [f32], scale: &[f32], shift: &[f32], isa: Isa) {
    // SAFETY: an ISA in use never exceeds the CPU's; the functions only compile the same loops
    // for it.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { layer_norm_avx512(x, scale, shift) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { layer_norm_avx2(x, scale, shift) },
        _ => layer_norm_portable(x, scale, shift),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn layer_norm_avx2(x: &mut [f32], scale: &[f32], shift: &[f32]) {
    layer_norm_portable(x, scale, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn layer_norm_avx512(x: &mut [f32], scale: &[f32], shift: &[f32]) {
    layer_norm_portable(x, scale, shift)
}

#[inline(always)]
fn layer_norm_portable(x: &mut [f32], scale: &[f32], shift: &[f32]) {
    let n = x.len() as f32;
    let mean = sum(x, |v| v) / n;
    let var = sum(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + LN_EPS).sqrt();
    for ((v, s), b) in x.iter_mut().zip(scale).zip(shift) {
        *v = (*v - mean) * inv * s + b;
    }
}
