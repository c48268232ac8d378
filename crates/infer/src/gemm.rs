//! Affine layers with pre-packed weights: `C[M×N] = A[M×K]·W[K×N] + b`.
//!
//! The weights are packed once into panels of [`NR`] = 32 columns, laid out so that the
//! micro-kernel streams them: fp32 as `[panel][k][32]`, bf16 as `[panel][k/2][32][2]` (pairs of
//! consecutive k, the operand order of AVX512-BF16's `vdpbf16ps`). Every activation buffer has
//! its width padded to a multiple of 32 and its row count to a multiple of [`MR`]; padded weight
//! rows, columns and biases are zero, so padded columns come out as exactly zero and padded rows
//! are computed but never read.
//!
//! Kernels, one family per [`Isa`] (fixed when a layer is built): an AVX-512F fp32 kernel (8
//! rows × 32 columns, 16 accumulators), an AVX512-BF16 kernel of the same shape (bf16 inputs,
//! fp32 accumulation), AMX tiles for bf16 where the CPU has them (blocks of 32 × 32,
//! [`crate::amx`]); AVX2 + FMA and NEON fp32 kernels (tiles of 6 rows × 16 columns over row
//! blocks of [`MC`] rows copied so that a block of the input stays in cache, contiguous, while
//! every panel passes); and a portable fp32 loop (correct, not fast).

use crate::isa::Isa;

/// Columns per weight panel (two AVX-512 registers of f32).
pub const NR: usize = 32;
/// Rows per micro-kernel call.
pub const MR: usize = 8;
/// Depth of one pass of the micro-kernels over a panel (128 × 32 fp32 = 16 KB, in L1).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const KC: usize = 128;
/// The AVX2 and NEON kernels copy a row-major input into tiles when this many panels (or more)
/// pass over it; below, they read the input in place.
const COPY_FROM_PANELS: usize = 4;
/// Depth of one pass of the AVX2 and NEON kernels (their half panels are 16 columns wide:
/// 256 × 16 fp32 = 16 KB in L1).
const KC_TILE: usize = 256;
/// Rows of the input that the AVX2 and NEON kernels keep in cache while every panel passes
/// over them (96 × 256 fp32 = 96 KB, in L2); a multiple of their 6-row tile.
const MC: usize = 96;

/// Arithmetic of the matrix products. Accumulation is always fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// fp32 inputs and weights.
    F32,
    /// bf16 inputs and weights (activations are rounded to bf16 before each product).
    Bf16,
}

/// `x` rounded up to a multiple of `m`.
pub fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Whether layers built now run the bf16 kernel: [`Isa::active`] is AVX-512 and the CPU has
/// AVX512-BF16.
pub fn has_avx512_bf16() -> bool {
    Isa::active().has_bf16()
}

/// f32 → bf16 with round-to-nearest-even (finite inputs).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let round = ((bits >> 16) & 1) + 0x7FFF;
    (bits.wrapping_add(round) >> 16) as u16
}

/// `dst[2j] = bf16(even[j])`, `dst[2j + 1] = bf16(odd[j])`: two weight rows interleaved as
/// the bf16 kernel reads them (vectorised where the CPU has AVX-512).
fn interleave_bf16(even: &[f32], odd: &[f32], dst: &mut [u16], isa: Isa) {
    #[inline(always)]
    fn body(even: &[f32], odd: &[f32], dst: &mut [u16]) {
        for ((pair, &e), &o) in dst.chunks_exact_mut(2).zip(even).zip(odd) {
            let word = u32::from(to_bf16(e)) | (u32::from(to_bf16(o)) << 16);
            pair.copy_from_slice(&[word as u16, (word >> 16) as u16]);
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(even: &[f32], odd: &[f32], dst: &mut [u16]) {
        body(even, odd, dst)
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: the CPU has AVX-512F (a layer's ISA never exceeds the CPU's).
        unsafe { avx512(even, odd, dst) };
        return;
    }
    let _ = isa;
    body(even, odd, dst)
}

/// bf16 → f32 (exact).
#[inline(always)]
pub fn from_bf16(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// One affine layer with its weights packed for one precision.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    in_dim: usize,
    out_dim: usize,
    /// Padded K: the row stride of the input buffer.
    k: usize,
    /// Padded N: the row stride of the output buffer.
    n: usize,
    precision: Precision,
    isa: Isa,
    f32_panels: Vec<f32>,
    bf16_panels: Vec<u16>,
    bias: Vec<f32>,
}

impl PackedLinear {
    /// Packs `weight` (`[in_dim, out_dim]`, row-major, so `y = x·W + b`) and `bias` (`[out_dim]`).
    pub fn new(in_dim: usize, out_dim: usize, weight: &[f32], bias: &[f32], precision: Precision) -> Self {
        let (k, n) = (round_up(in_dim, NR), round_up(out_dim, NR));
        let mut layer = Self {
            in_dim,
            out_dim,
            k,
            n,
            precision,
            isa: Isa::active(),
            f32_panels: Vec::new(),
            bf16_panels: Vec::new(),
            bias: Vec::new(),
        };
        layer.repack(weight, bias);
        layer
    }

    /// The layer with its kernels from `isa` (at most [`Isa::detected`]; panics above it).
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.set_isa(isa);
        self
    }

    /// Switches the layer's kernels to `isa` (at most [`Isa::detected`]; panics above it). The
    /// packed weights are the same for every family.
    pub fn set_isa(&mut self, isa: Isa) {
        assert!(isa.runs_here(), "this CPU does not run the {isa} kernels (it has {})", Isa::detected());
        self.isa = isa;
    }

    /// The family of kernels the layer runs.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Packs new values of the same shape in place of the current ones, reusing the buffers
    /// (a training step's weights, packed again for the next TD target).
    pub fn repack(&mut self, weight: &[f32], bias: &[f32]) {
        let (in_dim, out_dim, k) = (self.in_dim, self.out_dim, self.k);
        assert_eq!(weight.len(), in_dim * out_dim, "weight must be [in, out]");
        assert_eq!(bias.len(), out_dim, "bias must be [out]");
        let n = self.n;
        let panels = n / NR;
        match self.precision {
            Precision::F32 => {
                // Panel p holds columns p·NR .. p·NR + NR of every row, row after row; rows past
                // in_dim and columns past out_dim are zeros. Whole panels are copied straight
                // from the weight's rows.
                let out = &mut self.f32_panels;
                out.resize(panels * k * NR, 0.0);
                for (p, panel) in out.chunks_exact_mut(k * NR).enumerate() {
                    let (c0, width) = (p * NR, NR.min(out_dim - p * NR));
                    let (real, pad) = panel.split_at_mut(in_dim * NR);
                    for (kk, dst) in real.chunks_exact_mut(NR).enumerate() {
                        let src = &weight[kk * out_dim + c0..kk * out_dim + c0 + width];
                        match <&[f32; NR]>::try_from(src) {
                            Ok(whole) => *<&mut [f32; NR]>::try_from(dst).expect("NR lanes") = *whole,
                            Err(_) => {
                                dst[..width].copy_from_slice(src);
                                dst[width..].fill(0.0);
                            }
                        }
                    }
                    pad.fill(0.0);
                }
            }
            Precision::Bf16 => {
                // Panel p holds, for each pair of rows (2kp, 2kp + 1), the NR columns interleaved.
                // Row kk of the weight, zero-padded to whole panels (rows past in_dim are zeros).
                let mut row = vec![0.0f32; 2 * n];
                let fill = |kk: usize, dst: &mut [f32]| {
                    dst.fill(0.0);
                    if kk < in_dim {
                        dst[..out_dim].copy_from_slice(&weight[kk * out_dim..(kk + 1) * out_dim]);
                    }
                };
                let out = &mut self.bf16_panels;
                out.clear();
                out.resize(panels * k * NR, 0);
                let (even, odd) = row.split_at_mut(n);
                for kp in 0..k / 2 {
                    fill(2 * kp, even);
                    fill(2 * kp + 1, odd);
                    for p in 0..panels {
                        let dst = &mut out[(p * (k / 2) + kp) * 2 * NR..(p * (k / 2) + kp + 1) * 2 * NR];
                        interleave_bf16(&even[p * NR..(p + 1) * NR], &odd[p * NR..(p + 1) * NR], dst, self.isa);
                    }
                }
            }
        }
        self.bias.clear();
        self.bias.extend_from_slice(bias);
        self.bias.resize(self.n, 0.0);
    }

    /// Packs the transpose of `weight_t` (`[out_dim, in_dim]`, row-major: the weight of the
    /// layer this one runs backwards) with a zero bias, in one pass.
    pub fn repack_transposed(&mut self, weight_t: &[f32]) {
        let (in_dim, out_dim, k) = (self.in_dim, self.out_dim, self.k);
        assert_eq!(weight_t.len(), in_dim * out_dim, "weight_t must be [out, in]");
        let len = self.n / NR * k * NR;
        // Column c of this layer's weight is row c of `weight_t`: it goes to lane c % NR of
        // panel c / NR, one row of the panel per input (fp32), or one pair of inputs per row
        // pair, interleaved (bf16).
        match self.precision {
            Precision::F32 => {
                let out = &mut self.f32_panels;
                out.clear();
                out.resize(len, 0.0);
                for (c, row) in weight_t.chunks_exact(in_dim).enumerate() {
                    let panel = &mut out[(c / NR) * k * NR + c % NR..];
                    for (kk, &v) in row.iter().enumerate() {
                        panel[kk * NR] = v;
                    }
                }
            }
            Precision::Bf16 => {
                let out = &mut self.bf16_panels;
                out.clear();
                out.resize(len, 0);
                for (c, row) in weight_t.chunks_exact(in_dim).enumerate() {
                    let panel = &mut out[(c / NR) * k * NR + 2 * (c % NR)..];
                    for (kp, pair) in row.chunks(2).enumerate() {
                        for (parity, &v) in pair.iter().enumerate() {
                            panel[kp * 2 * NR + parity] = to_bf16(v);
                        }
                    }
                }
            }
        }
        self.bias.clear();
        self.bias.resize(self.n, 0.0);
    }

    /// Real input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Real output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Input row stride (padded input width).
    pub fn in_stride(&self) -> usize {
        self.k
    }

    /// Output row stride (padded output width).
    pub fn out_stride(&self) -> usize {
        self.n
    }

    /// The precision the weights were packed for.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The row multiple the forward kernels of this precision take: [`MR`] for fp32 and for
    /// AVX512-BF16, the AMX block of 32 rows for bf16 where the CPU has AMX.
    pub fn row_block(&self) -> usize {
        match self.precision {
            Precision::Bf16 if self.isa == Isa::Avx512 && crate::amx::available() => crate::amx::ROWS,
            _ => MR,
        }
    }

    /// The kernel that runs this layer on this CPU, in words.
    pub fn kernel(&self) -> &'static str {
        match (self.precision, self.isa) {
            (Precision::Bf16, Isa::Avx512) if crate::amx::available() => "bf16 (AMX)",
            (Precision::Bf16, _) => "bf16 (AVX512-BF16)",
            (Precision::F32, Isa::Avx512) => "fp32 (AVX-512)",
            (Precision::F32, Isa::Avx2) => "fp32 (AVX2)",
            (Precision::F32, Isa::Neon) => "fp32 (NEON)",
            (Precision::F32, Isa::Portable) => "fp32 (portable)",
        }
    }

    /// `out = a·W + b` for `rows` rows (a multiple of [`MR`]) of fp32 input with stride
    /// [`Self::in_stride`]; `out` has stride [`Self::out_stride`]. fp32 layers only.
    pub fn forward_f32(&self, a: &[f32], rows: usize, out: &mut [f32]) {
        self.forward_f32_biased(a, rows, rows, out);
    }

    /// [`Self::forward_f32`] with the bias added to the first `biased` rows only (a multiple
    /// of [`MR`]); the rows after them get `a·W`: tangents pushed through the layer together
    /// with their primal rows.
    pub fn forward_f32_biased(&self, a: &[f32], rows: usize, biased: usize, out: &mut [f32]) {
        assert_eq!(self.precision, Precision::F32);
        self.check(a.len(), rows, out.len());
        assert!(biased <= rows && biased.is_multiple_of(MR), "biased rows must be a multiple of {MR} up to rows");
        self.forward_f32_any(a, rows, (self.k, 1), biased, out);
    }

    /// `out = A·W + b` where element (row i, input j) of `A` is `a[i·row_step + j·col_step]`:
    /// with `row_step = 1` and `col_step` a row stride, `A` is the transpose of a row-major
    /// buffer, multiplied without copying it (`dW = Hᵀ·dZ` in a backward pass). Only the
    /// `in_dim` real inputs are read.
    pub fn forward_f32_strided(&self, a: &[f32], rows: usize, row_step: usize, col_step: usize, out: &mut [f32]) {
        assert_eq!(self.precision, Precision::F32);
        assert_eq!(rows % MR, 0, "rows must be a multiple of {MR}");
        assert!(out.len() >= rows * self.n, "output buffer too small");
        let last = (rows.max(1) - 1) * row_step + (self.in_dim - 1) * col_step;
        assert!(rows == 0 || last < a.len(), "input buffer too small");
        self.forward_f32_any(a, rows, (row_step, col_step), rows, out);
    }

    fn forward_f32_any(&self, a: &[f32], rows: usize, steps: (usize, usize), biased: usize, out: &mut [f32]) {
        // SAFETY (both kernels): the layer's ISA never exceeds the CPU's; the callers bound
        // every element the kernel reads (rows × in_dim of `a` at `steps`) and writes (rows × n
        // of `out`).
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.forward_f32_avx512(a, rows, steps, biased, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.forward_f32_avx2(a, rows, steps, biased, out) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { self.forward_f32_neon(a, rows, steps, biased, out) },
            _ => self.forward_f32_portable(a, rows, steps, biased, out),
        }
    }

    /// `out = a·W + b` for bf16 input `a` (see [`Self::forward_f32`]). bf16 layers of the
    /// AVX-512 family only, on a CPU with AVX512-BF16 ([`Isa::has_bf16`]).
    pub fn forward_bf16(&self, a: &[u16], rows: usize, out: &mut [f32]) {
        assert_eq!(self.precision, Precision::Bf16);
        assert!(self.isa.has_bf16(), "the bf16 kernel needs AVX512-BF16 (this layer runs {} kernels)", self.isa);
        self.check(a.len(), rows, out.len());
        #[cfg(target_arch = "x86_64")]
        if crate::amx::available() && rows.is_multiple_of(crate::amx::ROWS) {
            // SAFETY: AMX is available and permitted; `check` bounds the three buffers.
            unsafe { crate::amx::matmul_bias(a, &self.bf16_panels, &self.bias, rows, self.k, self.n, out) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX512-BF16 (asserted); `check` bounds every pointer.
        unsafe {
            self.forward_bf16_avx512(a, rows, out)
        };
    }

    /// The AVX512-BF16 kernel even where AMX is available (to test one against the other).
    #[cfg(test)]
    fn forward_bf16_avx512_only(&self, a: &[u16], rows: usize, out: &mut [f32]) {
        assert_eq!(self.precision, Precision::Bf16);
        assert!(self.isa.has_bf16(), "the bf16 kernel needs AVX512-BF16");
        self.check(a.len(), rows, out.len());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `forward_bf16`.
        unsafe {
            self.forward_bf16_avx512(a, rows, out)
        };
    }

    fn check(&self, a_len: usize, rows: usize, out_len: usize) {
        assert_eq!(rows % MR, 0, "rows must be a multiple of {MR}");
        assert!(a_len >= rows * self.k, "input buffer too small");
        assert!(out_len >= rows * self.n, "output buffer too small");
    }

    fn forward_f32_portable(&self, a: &[f32], rows: usize, steps: (usize, usize), biased: usize, out: &mut [f32]) {
        let (rs, cs) = steps;
        for p in 0..self.n / NR {
            let panel = &self.f32_panels[p * self.k * NR..(p + 1) * self.k * NR];
            for r in 0..rows {
                let mut acc = [0f32; NR];
                if r < biased {
                    acc.copy_from_slice(&self.bias[p * NR..(p + 1) * NR]);
                }
                for kk in 0..self.in_dim {
                    let x = a[r * rs + kk * cs];
                    for (c, &w) in acc.iter_mut().zip(&panel[kk * NR..(kk + 1) * NR]) {
                        *c += x * w;
                    }
                }
                out[r * self.n + p * NR..r * self.n + (p + 1) * NR].copy_from_slice(&acc);
            }
        }
    }

    /// The AVX2 + FMA fp32 kernel: [`Self::blocked`] with its 6 × 16 tiles compiled for AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_f32_avx2(&self, a: &[f32], rows: usize, steps: (usize, usize), biased: usize, out: &mut [f32]) {
        self.blocked::<Avx2Tile>(a, rows, steps, biased, out)
    }

    /// The NEON fp32 kernel: [`Self::blocked`] with its 6 × 16 tiles of `vfmaq_f32` (NEON is
    /// part of every aarch64 CPU).
    #[cfg(target_arch = "aarch64")]
    unsafe fn forward_f32_neon(&self, a: &[f32], rows: usize, steps: (usize, usize), biased: usize, out: &mut [f32]) {
        self.blocked::<NeonTile>(a, rows, steps, biased, out)
    }

    /// The loops around the 6-row × 16-column tiles of the AVX2 and NEON kernels. Loop order: K
    /// in blocks of [`KC_TILE`], rows in blocks of [`MC`], each block copied into tiles of 6
    /// rows (`[k][6]`, so that the tiles' broadcasts read one contiguous stream whatever the
    /// input's steps; a row-major input passed by few panels is read in place), then every
    /// panel in two halves of 16 columns, each passed over the block tile by tile. Partial sums
    /// of later K blocks go through the output buffer. Inlined into each kernel's entry point,
    /// which compiles it for its instruction set.
    ///
    /// Safety: `T` runs on this CPU; the caller bounds every element read (rows × in_dim of `a`
    /// at `steps`) and written (rows × n of `out`).
    #[inline(always)]
    unsafe fn blocked<T: Tile>(&self, a: &[f32], rows: usize, steps: (usize, usize), biased: usize, out: &mut [f32]) {
        let (k, n, (rs, cs)) = (self.k, self.n, steps);
        // The copied block: MC × KC_TILE floats (96 KB) on the stack, written before it is read
        // (only the real rows of a partial tile are written and read).
        let copy = cs != 1 || n / NR >= COPY_FROM_PANELS;
        let mut block = std::mem::MaybeUninit::<[f32; MC * KC_TILE]>::uninit();
        let block = block.as_mut_ptr() as *mut f32;
        for kc in (0..self.in_dim).step_by(KC_TILE) {
            let kend = (kc + KC_TILE).min(self.in_dim);
            let depth = kend - kc;
            for m0 in (0..rows).step_by(MC) {
                let mend = (m0 + MC).min(rows);
                if copy {
                    for (t, r0) in (m0..mend).step_by(6).enumerate() {
                        let (dst, live) = (block.add(t * 6 * depth), (mend - r0).min(6));
                        for kk in 0..depth {
                            for i in 0..live {
                                *dst.add(kk * 6 + i) = *a.as_ptr().add((r0 + i) * rs + (kc + kk) * cs);
                            }
                        }
                    }
                }
                for p in 0..n / NR {
                    for half in 0..2 {
                        let col = p * NR + half * 16;
                        if col >= self.out_dim {
                            // Padding only (the critic's one output): zeros, as every kernel
                            // leaves padded columns.
                            if kc == 0 {
                                for r in m0..mend {
                                    out[r * n + col..r * n + col + 16].fill(0.0);
                                }
                            }
                            continue;
                        }
                        let pass = TilePass {
                            w: self.f32_panels.as_ptr().add(p * k * NR + kc * NR + half * 16),
                            bias: self.bias.as_ptr().add(col),
                            depth,
                            accumulate: kc > 0,
                            n,
                            biased,
                            // (row step, k step) of the tile's input: the copy's, or the input's.
                            steps: if copy { (1, 6) } else { (rs, 1) },
                        };
                        for (t, r0) in (m0..mend).step_by(6).enumerate() {
                            let ap = match copy {
                                true => block.add(t * 6 * depth),
                                false => a.as_ptr().add(r0 * rs + kc),
                            };
                            let cp = out.as_mut_ptr().add(r0 * n + col);
                            match mend - r0 {
                                1 => T::run::<1>(&pass, ap, cp, r0),
                                2 => T::run::<2>(&pass, ap, cp, r0),
                                3 => T::run::<3>(&pass, ap, cp, r0),
                                4 => T::run::<4>(&pass, ap, cp, r0),
                                5 => T::run::<5>(&pass, ap, cp, r0),
                                _ => T::run::<6>(&pass, ap, cp, r0),
                            }
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn forward_f32_avx512(&self, a: &[f32], rows: usize, steps: (usize, usize), biased: usize, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let (k, n, (rs, cs)) = (self.k, self.n, steps);
        for p in 0..n / NR {
            let w = self.f32_panels.as_ptr().add(p * k * NR);
            let bias0 = _mm512_loadu_ps(self.bias.as_ptr().add(p * NR));
            let bias1 = _mm512_loadu_ps(self.bias.as_ptr().add(p * NR + 16));
            // K in blocks of KC so that the panel's slice (KC × 32 floats) stays in L1 while
            // every row block passes over it; partial sums go through the output buffer. Inputs
            // past in_dim would multiply zero rows of the panel: skipped.
            for kc in (0..self.in_dim).step_by(KC) {
                let kend = (kc + KC).min(self.in_dim);
                for r0 in (0..rows).step_by(MR) {
                    let ap = a.as_ptr().add(r0 * rs);
                    let cp = out.as_mut_ptr().add(r0 * n + p * NR);
                    let (b0, b1) =
                        if r0 < biased { (bias0, bias1) } else { (_mm512_setzero_ps(), _mm512_setzero_ps()) };
                    let mut acc = [b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1];
                    if kc > 0 {
                        for i in 0..MR {
                            acc[2 * i] = _mm512_loadu_ps(cp.add(i * n));
                            acc[2 * i + 1] = _mm512_loadu_ps(cp.add(i * n + 16));
                        }
                    }
                    for kk in kc..kend {
                        let w0 = _mm512_loadu_ps(w.add(kk * NR));
                        let w1 = _mm512_loadu_ps(w.add(kk * NR + 16));
                        for i in 0..MR {
                            let x = _mm512_set1_ps(*ap.add(i * rs + kk * cs));
                            acc[2 * i] = _mm512_fmadd_ps(x, w0, acc[2 * i]);
                            acc[2 * i + 1] = _mm512_fmadd_ps(x, w1, acc[2 * i + 1]);
                        }
                    }
                    for i in 0..MR {
                        _mm512_storeu_ps(cp.add(i * n), acc[2 * i]);
                        _mm512_storeu_ps(cp.add(i * n + 16), acc[2 * i + 1]);
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn forward_bf16_avx512(&self, a: &[u16], rows: usize, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let (k, n) = (self.k, self.n);
        for p in 0..n / NR {
            let w = self.bf16_panels.as_ptr().add(p * k * NR);
            let b0 = _mm512_loadu_ps(self.bias.as_ptr().add(p * NR));
            let b1 = _mm512_loadu_ps(self.bias.as_ptr().add(p * NR + 16));
            for kc in (0..k).step_by(KC) {
                let kend = (kc + KC).min(k);
                for r0 in (0..rows).step_by(MR) {
                    let ap = a.as_ptr().add(r0 * k);
                    let cp = out.as_mut_ptr().add(r0 * n + p * NR);
                    let mut acc = [b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1];
                    if kc > 0 {
                        for i in 0..MR {
                            acc[2 * i] = _mm512_loadu_ps(cp.add(i * n));
                            acc[2 * i + 1] = _mm512_loadu_ps(cp.add(i * n + 16));
                        }
                    }
                    for kp in kc / 2..kend / 2 {
                        let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(kp * 2 * NR) as *const _));
                        let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(kp * 2 * NR + NR) as *const _));
                        for i in 0..MR {
                            let pair = std::ptr::read_unaligned(ap.add(i * k + 2 * kp) as *const i32);
                            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                            acc[2 * i] = _mm512_dpbf16_ps(acc[2 * i], x, w0);
                            acc[2 * i + 1] = _mm512_dpbf16_ps(acc[2 * i + 1], x, w1);
                        }
                    }
                    for i in 0..MR {
                        _mm512_storeu_ps(cp.add(i * n), acc[2 * i]);
                        _mm512_storeu_ps(cp.add(i * n + 16), acc[2 * i + 1]);
                    }
                }
            }
        }
    }
}

/// One pass of a 6 × 16 tile kernel over 16 columns of a panel: its weights from the K
/// block's first row (row stride [`NR`]), its bias, the K block's depth, whether earlier K
/// blocks left partial sums in the output, the output stride, the rows that take the bias, and
/// the (row, k) steps of the tile's input.
struct TilePass {
    w: *const f32,
    bias: *const f32,
    depth: usize,
    accumulate: bool,
    n: usize,
    biased: usize,
    steps: (usize, usize),
}

/// A micro-kernel of [`PackedLinear::blocked`]: `R` ≤ 6 rows from input row `r0` (at `ap`,
/// element (i, k) at `i·steps.0 + k·steps.1`) into 16 output columns at `cp`: the bias (rows
/// before `biased`, first K block) or the partial sums in `cp` (later K blocks), plus the
/// products over the K block.
trait Tile {
    /// Safety: the instruction set of the implementation runs on this CPU; `ap`, `cp` and the
    /// pass's pointers cover what the tile reads and writes.
    unsafe fn run<const R: usize>(pass: &TilePass, ap: *const f32, cp: *mut f32, r0: usize);
}

/// AVX2 + FMA: 12 accumulators, two weight registers and a broadcast (15 of the 16 YMM
/// registers).
#[cfg(target_arch = "x86_64")]
struct Avx2Tile;

#[cfg(target_arch = "x86_64")]
impl Tile for Avx2Tile {
    #[inline(always)]
    unsafe fn run<const R: usize>(pass: &TilePass, ap: *const f32, cp: *mut f32, r0: usize) {
        use std::arch::x86_64::*;
        let (n, (rs, ks)) = (pass.n, pass.steps);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for (i, a) in acc.iter_mut().enumerate() {
            if pass.accumulate {
                *a = [_mm256_loadu_ps(cp.add(i * n)), _mm256_loadu_ps(cp.add(i * n + 8))];
            } else if r0 + i < pass.biased {
                *a = [_mm256_loadu_ps(pass.bias), _mm256_loadu_ps(pass.bias.add(8))];
            }
        }
        for kk in 0..pass.depth {
            let w0 = _mm256_loadu_ps(pass.w.add(kk * NR));
            let w1 = _mm256_loadu_ps(pass.w.add(kk * NR + 8));
            for (i, a) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_ps(*ap.add(i * rs + kk * ks));
                a[0] = _mm256_fmadd_ps(x, w0, a[0]);
                a[1] = _mm256_fmadd_ps(x, w1, a[1]);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(cp.add(i * n), a[0]);
            _mm256_storeu_ps(cp.add(i * n + 8), a[1]);
        }
    }
}

/// NEON: 24 accumulators, four weight registers and a broadcast (29 of the 32 vector
/// registers).
#[cfg(target_arch = "aarch64")]
struct NeonTile;

#[cfg(target_arch = "aarch64")]
impl Tile for NeonTile {
    #[inline(always)]
    unsafe fn run<const R: usize>(pass: &TilePass, ap: *const f32, cp: *mut f32, r0: usize) {
        use std::arch::aarch64::*;
        let (n, (rs, ks)) = (pass.n, pass.steps);
        let mut acc = [[vdupq_n_f32(0.0); 4]; R];
        for (i, a) in acc.iter_mut().enumerate() {
            if pass.accumulate {
                *a = [0, 4, 8, 12].map(|j| vld1q_f32(cp.add(i * n + j)));
            } else if r0 + i < pass.biased {
                *a = [0, 4, 8, 12].map(|j| vld1q_f32(pass.bias.add(j)));
            }
        }
        for kk in 0..pass.depth {
            let w = [0, 4, 8, 12].map(|j| vld1q_f32(pass.w.add(kk * NR + j)));
            for (i, a) in acc.iter_mut().enumerate() {
                let x = vdupq_n_f32(*ap.add(i * rs + kk * ks));
                for (aj, &wj) in a.iter_mut().zip(&w) {
                    *aj = vfmaq_f32(*aj, x, wj);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (j, &v) in a.iter().enumerate() {
                vst1q_f32(cp.add(i * n + 4 * j), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn naive(a: &[f32], rows: usize, k_real: usize, lda: usize, w: &[f32], b: &[f32], n_real: usize) -> Vec<f32> {
        let mut out = vec![0.0; rows * n_real];
        for r in 0..rows {
            for c in 0..n_real {
                let mut s = b[c] as f64;
                for kk in 0..k_real {
                    s += a[r * lda + kk] as f64 * w[kk * n_real + c] as f64;
                }
                out[r * n_real + c] = s as f32;
            }
        }
        out
    }

    fn check(precision: Precision, isa: Isa, in_dim: usize, out_dim: usize, rows: usize) {
        let w = data(in_dim * out_dim, 1);
        let b = data(out_dim, 2);
        let layer = PackedLinear::new(in_dim, out_dim, &w, &b, precision).with_isa(isa);
        let mut a = vec![0.0; rows * layer.in_stride()];
        for r in 0..rows {
            let row = data(in_dim, 3 + r as u32);
            a[r * layer.in_stride()..r * layer.in_stride() + in_dim].copy_from_slice(&row);
        }
        let mut out = vec![f32::NAN; rows * layer.out_stride()];
        let tol = match precision {
            Precision::F32 => {
                layer.forward_f32(&a, rows, &mut out);
                1e-4
            }
            Precision::Bf16 => {
                let a16: Vec<u16> = a.iter().map(|&x| to_bf16(x)).collect();
                layer.forward_bf16(&a16, rows, &mut out);
                2e-2 * (in_dim as f32).sqrt()
            }
        };
        let want = naive(&a, rows, in_dim, layer.in_stride(), &w, &b, out_dim);
        for r in 0..rows {
            for c in 0..layer.out_stride() {
                let got = out[r * layer.out_stride() + c];
                if c < out_dim {
                    let e = want[r * out_dim + c];
                    assert!((got - e).abs() <= tol * (1.0 + e.abs()), "{precision:?} {isa} [{r},{c}]: {got} vs {e}");
                } else {
                    assert_eq!(got, 0.0, "padded column {c} must be zero");
                }
            }
        }
    }

    /// Every fp32 kernel this CPU runs, at shapes that cover partial panels, partial tiles of
    /// every kernel (6-row AVX2 tiles: 8, 16, 40 rows), several K blocks and row blocks.
    #[test]
    fn fp32_kernels_match_naive_product() {
        for isa in Isa::available() {
            for &(i, o, r) in
                &[(64, 512, 32), (37, 25, 8), (512, 1, 16), (100, 70, 40), (300, 70, 16), (256, 64, 200), (5, 33, 104)]
            {
                check(Precision::F32, isa, i, o, r);
            }
        }
    }

    /// The bf16 panels hold each pair of weight rows rounded to nearest even and interleaved
    /// column by column, zeros past the real rows and columns (bit for bit).
    #[test]
    fn bf16_panels_interleave_rounded_row_pairs() {
        let (i, o) = (37, 45);
        let w = data(i * o, 21);
        let layer = PackedLinear::new(i, o, &w, &data(o, 22), Precision::Bf16);
        let k = layer.in_stride();
        for p in 0..layer.out_stride() / NR {
            for kp in 0..k / 2 {
                for j in 0..NR {
                    for parity in 0..2 {
                        let (row, col) = (2 * kp + parity, p * NR + j);
                        let want = if row < i && col < o { to_bf16(w[row * o + col]) } else { 0 };
                        let got = layer.bf16_panels[(p * (k / 2) + kp) * 2 * NR + 2 * j + parity];
                        assert_eq!(got, want, "panel {p}, row {row}, column {col}");
                    }
                }
            }
        }
    }

    /// A strided input (the transpose of a row-major buffer) gives the product of the copy.
    #[test]
    fn strided_input_equals_its_copy() {
        let (i, o, r) = (45, 70, 24);
        let layer = PackedLinear::new(i, o, &data(i * o, 13), &data(o, 14), Precision::F32);
        let ht = data(i * r, 15); // [i, r] row-major: A = htᵀ is [r, i]
        let mut a = vec![0.0; r * layer.in_stride()];
        for row in 0..r {
            for c in 0..i {
                a[row * layer.in_stride() + c] = ht[c * r + row];
            }
        }
        let (mut x, mut y) = (vec![0.0; r * layer.out_stride()], vec![0.0; r * layer.out_stride()]);
        layer.forward_f32(&a, r, &mut y);
        for isa in Isa::available() {
            layer.clone().with_isa(isa).forward_f32_strided(&ht, r, 1, r, &mut x);
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() < 1e-5, "{isa}: {p} vs {q}");
            }
        }
    }

    /// Packing the transpose directly equals transposing and packing.
    #[test]
    fn transposed_packing_equals_packing_the_transpose() {
        let (i, o, r) = (45, 71, 16);
        let w = data(i * o, 11); // [i, o], the forward layer
        let mut wt = vec![0.0; i * o]; // [o, i]
        for a in 0..i {
            for b in 0..o {
                wt[b * i + a] = w[a * o + b];
            }
        }
        for precision in [Precision::F32, Precision::Bf16] {
            let want = PackedLinear::new(o, i, &wt, &vec![0.0; i], precision);
            let mut got = PackedLinear::new(o, i, &vec![1.0; i * o], &vec![1.0; i], precision);
            got.repack_transposed(&w);
            assert_eq!(got.f32_panels, want.f32_panels, "{precision:?}");
            assert_eq!(got.bf16_panels, want.bf16_panels, "{precision:?}");
            assert_eq!(got.bias, want.bias);
        }
        let (want, mut got) = (
            PackedLinear::new(o, i, &wt, &vec![0.0; i], Precision::F32),
            PackedLinear::new(o, i, &vec![1.0; i * o], &vec![1.0; i], Precision::F32),
        );
        got.repack_transposed(&w);
        let a = data(r * got.in_stride(), 12);
        let (mut x, mut y) = (vec![0.0; r * got.out_stride()], vec![0.0; r * got.out_stride()]);
        got.forward_f32(&a, r, &mut x);
        want.forward_f32(&a, r, &mut y);
        assert_eq!(x, y);
    }

    /// Rows past `biased` get `a·W` without the bias, on both kernels.
    #[test]
    fn unbiased_rows_skip_the_bias() {
        let (i, o, r, biased) = (300, 70, 24, 8);
        let w = data(i * o, 8);
        let b = data(o, 9);
        let layer = PackedLinear::new(i, o, &w, &b, Precision::F32);
        let a = data(r * layer.in_stride(), 10);
        let mut full = vec![0.0; r * layer.out_stride()];
        layer.forward_f32(&a, r, &mut full);
        let mut x = vec![0.0; r * layer.out_stride()];
        for isa in Isa::available() {
            layer.clone().with_isa(isa).forward_f32_biased(&a, r, biased, &mut x);
            for row in 0..r {
                for c in 0..o {
                    let (got, with_bias) = (x[row * layer.out_stride() + c], full[row * layer.out_stride() + c]);
                    let want = if row < biased { with_bias } else { with_bias - b[c] };
                    assert!((got - want).abs() < 1e-4, "row {row} col {c}: {got} vs {want} ({isa})");
                }
            }
        }
    }

    #[test]
    fn bf16_kernel_matches_naive_product() {
        if !has_avx512_bf16() {
            eprintln!("this CPU has no AVX512-BF16; the bf16 kernel is not run here");
            return;
        }
        for &(i, o, r) in &[(64, 512, 32), (37, 25, 8), (512, 1, 16), (300, 70, 16)] {
            check(Precision::Bf16, Isa::Avx512, i, o, r);
        }
    }

    #[test]
    fn amx_kernel_matches_the_avx512_bf16_kernel() {
        if !crate::amx::available() {
            eprintln!("no AMX on this CPU (or not permitted); the AMX kernel is not run here");
            return;
        }
        for &(i, o, r) in &[(64, 512, 32), (512, 512, 64), (62, 32, 32), (300, 70, 96)] {
            let w = data(i * o, 11);
            let b = data(o, 12);
            let layer = PackedLinear::new(i, o, &w, &b, Precision::Bf16);
            let mut a = vec![0u16; r * layer.in_stride()];
            for row in 0..r {
                for (c, x) in data(i, 20 + row as u32).into_iter().enumerate() {
                    a[row * layer.in_stride() + c] = to_bf16(x);
                }
            }
            let (mut x, mut y) = (vec![0.0; r * layer.out_stride()], vec![0.0; r * layer.out_stride()]);
            layer.forward_bf16(&a, r, &mut x); // AMX (rows are a multiple of 32)
            layer.forward_bf16_avx512_only(&a, r, &mut y);
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() <= 1e-3 * (1.0 + q.abs()), "AMX {p} vs AVX-512 {q} ({i}→{o}, {r} rows)");
            }
        }
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        // 1 + 2^-8 lies halfway between two bf16 values; ties go to the even one (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
    }
}
