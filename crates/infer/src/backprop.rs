//! Forward and backward passes of one MLP (`Linear → GELU → [LayerNorm]` per hidden layer,
//! then a final `Linear`) on the packed kernels of [`crate::gemm`], for training critics and
//! actors without libtorch at the small batches of CPU training: at 64 rows libtorch spends
//! more time dispatching and recording its graph than multiplying. Products in fp32, or with
//! bf16 operands and fp32 sums (AVX512-BF16); everything else in fp32.
//!
//! Every product is `A·W` with `W` packed: the forward pass packs `W`, the input gradient
//! `dH = dZ·Wᵀ` packs `Wᵀ` (straight from `W`), and the weight gradient `dW = Hᵀ·dZ` packs
//! `dZ` (the batch is the inner dimension) and reads `Hᵀ` in place (in bf16, whose kernel
//! reads pairs of consecutive inputs, from a rounded transposed copy). Rows of the batch are
//! padded to a multiple of [`MR`]; their output gradients are zero, so they add nothing to any
//! gradient.
//!
//! The forward pass can also carry tangents (forward-mode differentiation) of some rows as
//! extra rows of the same products: the MeanFlow target's `du/dt`.

use crate::gemm::{round_up, to_bf16, PackedLinear, Precision, MR, NR};
use crate::isa::Isa;
use crate::mlp::{exp, gelu, round_to_bf16, sum, LN_EPS};

/// One layer's parameters: `weight [in, out]` row-major (`y = x·W + b`), `bias [out]`, and the
/// LayerNorm scale and shift `[out]` that follow its activation (hidden layers).
#[derive(Debug, Clone, Copy)]
pub struct LayerParams<'a> {
    /// `[in, out]`.
    pub weight: &'a [f32],
    /// `[out]`.
    pub bias: &'a [f32],
    /// LayerNorm scale and shift `[out]`.
    pub norm: Option<(&'a [f32], &'a [f32])>,
}

/// One layer's gradients, shaped like [`LayerParams`]; written (not accumulated).
#[derive(Debug)]
pub struct LayerGrads<'a> {
    /// `[in, out]`.
    pub weight: &'a mut [f32],
    /// `[out]`.
    pub bias: &'a mut [f32],
    /// LayerNorm scale and shift `[out]`.
    pub norm: Option<(&'a mut [f32], &'a mut [f32])>,
}

/// The state of one MLP's forward pass over a batch (activations kept for its backward pass)
/// and the packed weights of both passes. Buffers are sized on first use and reused.
#[derive(Debug)]
pub struct MlpGrad {
    /// Widths: input, hidden..., output.
    dims: Vec<usize>,
    layer_norm: bool,
    /// Padded rows of the current batch.
    rows: usize,
    /// Real rows of the current batch.
    batch: usize,
    /// `W` of each layer, packed.
    fwd: Vec<PackedLinear>,
    /// `Wᵀ` of each layer but the first, packed (index l for layer l; unused at 0).
    bwd: Vec<Option<PackedLinear>>,
    /// Layer inputs: `h[0]` the batch, `h[l]` the output of hidden layer l − 1 (after its
    /// LayerNorm), each `[rows × round_up(dims[l], NR)]`, then the tangent rows.
    h: Vec<Vec<f32>>,
    /// Pre-activations `[rows × round_up(dims[l + 1], NR)]`, then their tangents.
    z: Vec<Vec<f32>>,
    /// Normalised activations and inverse deviations of hidden layers with a LayerNorm.
    xhat: Vec<Vec<f32>>,
    rstd: Vec<Vec<f32>>,
    zeros: Vec<f32>,
    /// `dZ` of each layer packed as a weight (for `dW`), re-packed every backward pass.
    dz_pack: Vec<Option<PackedLinear>>,
    /// The products' number format: fp32, or bf16 operands with fp32 sums (AVX512-BF16).
    precision: Precision,
    /// The family of kernels of every product and elementwise loop.
    isa: Isa,
    scratch: Scratch,
}

impl MlpGrad {
    /// An MLP of widths `dims` (input, hidden..., output) with or without LayerNorms after the
    /// hidden activations (GELU).
    pub fn new(dims: &[usize], layer_norm: bool) -> Self {
        Self::with_precision(dims, layer_norm, Precision::F32)
    }

    /// [`MlpGrad::new`] with the products in `precision`: with [`Precision::Bf16`] every
    /// product's two operands (inputs, weights, `dZ`, `Hᵀ`) are rounded to bf16 and summed in
    /// fp32 (AVX512-BF16), as libtorch's bf16 matmuls round theirs; activations, LayerNorms and
    /// gradients stay fp32. Bf16 needs a CPU with AVX512-BF16 (`has_avx512_bf16`).
    pub fn with_precision(dims: &[usize], layer_norm: bool, precision: Precision) -> Self {
        assert!(dims.len() >= 2 && dims.iter().all(|&d| d > 0), "an MLP needs an input and an output width");
        let layers = dims.len() - 1;
        let fwd = (0..layers)
            .map(|l| {
                let (i, o) = (dims[l], dims[l + 1]);
                PackedLinear::new(i, o, &vec![0.0; i * o], &vec![0.0; o], precision)
            })
            .collect();
        let bwd = (0..layers)
            .map(|l| {
                let (i, o) = (dims[l], dims[l + 1]);
                (l > 0).then(|| PackedLinear::new(o, i, &vec![0.0; i * o], &vec![0.0; i], precision))
            })
            .collect();
        Self {
            dims: dims.to_vec(),
            layer_norm,
            rows: 0,
            batch: 0,
            fwd,
            bwd,
            h: vec![Vec::new(); layers],
            z: vec![Vec::new(); layers],
            xhat: vec![Vec::new(); layers],
            rstd: vec![Vec::new(); layers],
            zeros: vec![0.0; dims.iter().copied().max().unwrap_or(1)],
            dz_pack: (0..layers).map(|_| None).collect(),
            precision,
            isa: Isa::active(),
            scratch: Scratch::default(),
        }
    }

    /// The network with its kernels from `isa` (at most [`Isa::detected`]).
    pub fn with_isa(mut self, isa: Isa) -> Self {
        assert!(isa.runs_here(), "this CPU does not run the {isa} kernels (it has {})", Isa::detected());
        self.isa = isa;
        for layer in self.fwd.iter_mut().chain(self.bwd.iter_mut().flatten()).chain(self.dz_pack.iter_mut().flatten()) {
            layer.set_isa(isa);
        }
        self
    }

    /// The family of kernels the network runs.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Packs new parameters (one [`LayerParams`] per layer, shapes as built).
    pub fn set_params(&mut self, params: &[LayerParams<'_>], with_backward: bool) {
        assert_eq!(params.len(), self.fwd.len(), "one parameter set per layer");
        for (l, p) in params.iter().enumerate() {
            let (i, o) = (self.dims[l], self.dims[l + 1]);
            assert_eq!((p.weight.len(), p.bias.len()), (i * o, o), "layer {l}: weight [in, out] and bias [out]");
            self.fwd[l].repack(p.weight, p.bias);
            if let (true, Some(b)) = (with_backward, self.bwd[l].as_mut()) {
                b.repack_transposed(p.weight); // Wᵀ: [out, in]
            }
        }
    }

    /// Row stride of [`MlpGrad::forward`]'s output.
    pub fn out_stride(&self) -> usize {
        self.stride(self.dims.len() - 1)
    }

    fn stride(&self, l: usize) -> usize {
        round_up(self.dims[l], NR)
    }

    /// The forward pass of `batch` rows of `x` (`[batch, dims[0]]`, row-major) with the
    /// parameters of the last [`MlpGrad::set_params`] (`params` for the LayerNorms); keeps the
    /// activations. Returns the outputs `[rows × round_up(out, NR)]` (the first `batch` rows).
    pub fn forward(&mut self, x: &[f32], batch: usize, params: &[LayerParams<'_>]) -> &[f32] {
        self.forward_with_tangent(x, batch, &[], 0, params).0
    }

    /// [`MlpGrad::forward`], and the tangent `dy = J_f(x)·dx` of its first `tangent_rows` rows
    /// along `dx` (`[tangent_rows, dims[0]]`): forward-mode differentiation, in the same
    /// products as the primal rows (stacked after them, without the bias). The tangent is a
    /// value only: [`MlpGrad::backward`] differentiates the primal rows. Returns the outputs
    /// and the tangents, `[round_up(_, MR) × out_stride]` each.
    pub fn forward_with_tangent(
        &mut self,
        x: &[f32],
        batch: usize,
        dx: &[f32],
        tangent_rows: usize,
        params: &[LayerParams<'_>],
    ) -> (&[f32], &[f32]) {
        assert!(tangent_rows <= batch, "tangents are taken of primal rows");
        assert_eq!(dx.len(), tangent_rows * self.dims[0], "dx must be [tangent_rows, in]");
        self.run_forward(x, batch, dx, tangent_rows, params);
        let out = &self.z[self.fwd.len() - 1];
        let split = self.rows * self.out_stride();
        (&out[..split], &out[split..])
    }

    fn run_forward(&mut self, x: &[f32], batch: usize, dx: &[f32], tangent_rows: usize, params: &[LayerParams<'_>]) {
        // SAFETY: the network's ISA never exceeds the CPU's; the functions compile the same
        // code for it.
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.forward_avx512(x, batch, dx, tangent_rows, params) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.forward_avx2(x, batch, dx, tangent_rows, params) },
            _ => self.forward_body(x, batch, dx, tangent_rows, params),
        }
    }

    /// The backward pass of the last forward pass from the output gradients `dy`
    /// (`[batch, out]`, row-major): writes every parameter's gradient into `grads`.
    pub fn backward(&mut self, dy: &[f32], params: &[LayerParams<'_>], grads: &mut [LayerGrads<'_>]) {
        // SAFETY: as in `run_forward`.
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.backward_avx512(dy, params, grads) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.backward_avx2(dy, params, grads) },
            _ => self.backward_body(dy, params, grads),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(
        &mut self,
        x: &[f32],
        batch: usize,
        dx: &[f32],
        tangent_rows: usize,
        params: &[LayerParams<'_>],
    ) {
        self.forward_body(x, batch, dx, tangent_rows, params)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_avx2(&mut self, dy: &[f32], params: &[LayerParams<'_>], grads: &mut [LayerGrads<'_>]) {
        self.backward_body(dy, params, grads)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn forward_avx512(
        &mut self,
        x: &[f32],
        batch: usize,
        dx: &[f32],
        tangent_rows: usize,
        params: &[LayerParams<'_>],
    ) {
        self.forward_body(x, batch, dx, tangent_rows, params)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn backward_avx512(&mut self, dy: &[f32], params: &[LayerParams<'_>], grads: &mut [LayerGrads<'_>]) {
        self.backward_body(dy, params, grads)
    }

    /// The element-wise loops of both passes are written to vectorise: the AVX-512 and AVX2
    /// entry points above compile this same body for their instruction sets.
    #[inline(always)]
    fn forward_body(&mut self, x: &[f32], batch: usize, dx: &[f32], tangent_rows: usize, params: &[LayerParams<'_>]) {
        let d0 = self.dims[0];
        assert_eq!(x.len(), batch * d0, "x must be [batch, in]");
        let layers = self.fwd.len();
        self.batch = batch;
        self.rows = round_up(batch.max(1), MR);
        // Tangent rows follow the padded primal rows.
        let (rows, all) = (self.rows, self.rows + round_up(tangent_rows, MR));
        for l in 0..layers {
            let (si, so) = (self.stride(l), self.stride(l + 1));
            self.h[l].clear();
            self.h[l].resize(all * si, 0.0);
            self.z[l].resize(all * so, 0.0);
        }
        let s0 = self.stride(0);
        for r in 0..batch {
            self.h[0][r * s0..r * s0 + d0].copy_from_slice(&x[r * d0..(r + 1) * d0]);
        }
        for r in 0..tangent_rows {
            self.h[0][(rows + r) * s0..(rows + r) * s0 + d0].copy_from_slice(&dx[r * d0..(r + 1) * d0]);
        }
        #[allow(clippy::needless_range_loop)] // `l` indexes four per-layer arrays
        for l in 0..layers {
            match self.precision {
                Precision::F32 => self.fwd[l].forward_f32_biased(&self.h[l], all, rows, &mut self.z[l]),
                Precision::Bf16 => {
                    let half = &mut self.scratch.half;
                    half.resize(self.h[l].len(), 0);
                    round_to_bf16(&self.h[l], half, self.isa);
                    self.fwd[l].forward_bf16(half, all, &mut self.z[l]);
                    // Tangent rows carry no bias: take it off again.
                    let (so, bias) = (self.stride(l + 1), params[l].bias);
                    for row in self.z[l][rows * so..all * so].chunks_exact_mut(so) {
                        row.iter_mut().zip(bias).for_each(|(z, b)| *z -= b);
                    }
                }
            }
            if l + 1 == layers {
                break;
            }
            let (d, s) = (self.dims[l + 1], self.stride(l + 1));
            let norm = params[l].norm.filter(|_| self.layer_norm);
            if norm.is_some() {
                self.xhat[l].resize(rows * d, 0.0);
                self.rstd[l].resize(rows, 0.0);
            }
            for r in 0..rows {
                let z = &self.z[l][r * s..r * s + d];
                let out = &mut self.h[l + 1][r * s..r * s + d];
                for (o, &v) in out.iter_mut().zip(z) {
                    *o = gelu(v);
                }
                if let Some((scale, shift)) = norm {
                    let n = d as f32;
                    let mean = sum(out, |v| v) / n;
                    let var = sum(out, |v| (v - mean) * (v - mean)) / n;
                    let inv = 1.0 / (var + LN_EPS).sqrt();
                    self.rstd[l][r] = inv;
                    let xhat = &mut self.xhat[l][r * d..(r + 1) * d];
                    for j in 0..d {
                        xhat[j] = (out[j] - mean) * inv;
                        out[j] = xhat[j] * scale[j] + shift[j];
                    }
                }
            }
            // Tangents: through the GELU (its derivative at the primal pre-activation), then
            // the LayerNorm's: dx̂ = (dh − mean(dh) − x̂·mean(x̂·dh)) / σ, scaled.
            let (zl, hl) = (&self.z[l], &mut self.h[l + 1]);
            for r in 0..tangent_rows {
                let (t, at) = ((rows + r) * s, r * s);
                let out = &mut hl[t..t + d];
                for ((o, &dz), &z) in out.iter_mut().zip(&zl[t..t + d]).zip(&zl[at..at + d]) {
                    *o = dz * gelu_derivative(z);
                }
                if let Some((scale, _)) = norm {
                    let n = d as f32;
                    let xhat = &self.xhat[l][r * d..(r + 1) * d];
                    let mean = sum(out, |v| v) / n;
                    let mean_x = dot(out, xhat, |_| 1.0, xhat) / n;
                    let inv = self.rstd[l][r];
                    for j in 0..d {
                        out[j] = (out[j] - mean - xhat[j] * mean_x) * inv * scale[j];
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn backward_body(&mut self, dy: &[f32], params: &[LayerParams<'_>], grads: &mut [LayerGrads<'_>]) {
        let layers = self.fwd.len();
        let (rows, batch) = (self.rows, self.batch);
        let out = self.dims[layers];
        assert_eq!(dy.len(), batch * out, "dy must be [batch, out]");
        let Scratch { dz, next, dh, dw, compact, half } = &mut self.scratch;
        let (precision, isa) = (self.precision, self.isa);
        // dz: the gradient of the current layer's pre-activation, [rows × stride], zero-padded.
        let s_out = round_up(out, NR);
        dz.clear();
        dz.resize(rows * s_out, 0.0);
        for r in 0..batch {
            dz[r * s_out..r * s_out + out].copy_from_slice(&dy[r * out..(r + 1) * out]);
        }
        for l in (0..layers).rev() {
            let (din, dout) = (self.dims[l], self.dims[l + 1]);
            let (sin, sout) = (round_up(din, NR), round_up(dout, NR));
            // dW = Hᵀ·dZ: dZ [rows, dout] packed as the weight, Hᵀ [din, rows] as the input.
            let compact: &[f32] = if sout == dout {
                &dz[..rows * dout]
            } else {
                compact.clear();
                for r in 0..rows {
                    compact.extend_from_slice(&dz[r * sout..r * sout + dout]);
                }
                compact
            };
            let pack = match &mut self.dz_pack[l] {
                Some(p) if p.in_dim() == rows => {
                    p.repack(compact, &self.zeros[..dout]);
                    p
                }
                slot => {
                    slot.insert(PackedLinear::new(rows, dout, compact, &self.zeros[..dout], precision).with_isa(isa))
                }
            };
            // Hᵀ read in place: element (c, r) of Hᵀ is h[r·sin + c]. Where the kernel's padded
            // output is the gradient's own shape, it is written in place.
            let g = &mut grads[l];
            let ht_rows = round_up(din, MR);
            if precision == Precision::Bf16 {
                // The bf16 kernel reads pairs of consecutive inputs: Hᵀ rounded into rows of its own.
                let k = pack.in_stride();
                half.clear();
                half.resize(ht_rows * k, 0);
                // Column by column: contiguous writes, and the rows' cache lines serve 16 columns.
                let h = &self.h[l];
                for (c, dst) in half.chunks_exact_mut(k).take(din).enumerate() {
                    for (r, d) in dst[..rows].iter_mut().enumerate() {
                        *d = to_bf16(h[r * sin + c]);
                    }
                }
                dw.resize(ht_rows * pack.out_stride(), 0.0);
                pack.forward_bf16(half, ht_rows, dw);
                for c in 0..din {
                    g.weight[c * dout..(c + 1) * dout]
                        .copy_from_slice(&dw[c * pack.out_stride()..c * pack.out_stride() + dout]);
                }
            } else if ht_rows == din && pack.out_stride() == dout {
                pack.forward_f32_strided(&self.h[l], ht_rows, 1, sin, g.weight);
            } else {
                dw.resize(ht_rows * pack.out_stride(), 0.0);
                pack.forward_f32_strided(&self.h[l], ht_rows, 1, sin, dw);
                for c in 0..din {
                    g.weight[c * dout..(c + 1) * dout]
                        .copy_from_slice(&dw[c * pack.out_stride()..c * pack.out_stride() + dout]);
                }
            }
            g.bias.fill(0.0);
            for r in 0..rows {
                for (b, &v) in g.bias.iter_mut().zip(&dz[r * sout..r * sout + dout]) {
                    *b += v;
                }
            }
            if l == 0 {
                break;
            }
            // dH = dZ·Wᵀ, then back through the LayerNorm and the GELU of hidden layer l − 1.
            dh.resize(rows * sin, 0.0);
            let bwd = self.bwd[l].as_ref().expect("packed for layers after the first");
            match precision {
                Precision::F32 => bwd.forward_f32(dz, rows, dh),
                Precision::Bf16 => {
                    half.resize(rows * sout, 0);
                    round_to_bf16(&dz[..rows * sout], &mut half[..rows * sout], isa);
                    bwd.forward_bf16(&half[..rows * sout], rows, dh);
                }
            }
            let zl = &self.z[l - 1];
            next.clear();
            next.resize(rows * sin, 0.0);
            match params[l - 1].norm.filter(|_| self.layer_norm) {
                Some((scale, _)) => {
                    let (gs, gb) = grads[l - 1].norm.as_mut().expect("LayerNorm gradients for a LayerNorm layer");
                    gs.fill(0.0);
                    gb.fill(0.0);
                    let n = din as f32;
                    for r in 0..batch {
                        let dh = &dh[r * sin..r * sin + din];
                        let xhat = &self.xhat[l - 1][r * din..(r + 1) * din];
                        for ((g, b), (&d, &x)) in gs.iter_mut().zip(gb.iter_mut()).zip(dh.iter().zip(xhat)) {
                            *g += d * x;
                            *b += d;
                        }
                        let mean_dx = dot(dh, scale, |_| 1.0, xhat) / n;
                        let mean_dxx = dot(dh, scale, |x| x, xhat) / n;
                        let inv = self.rstd[l - 1][r];
                        let z = &zl[r * sin..r * sin + din];
                        let o = &mut next[r * sin..r * sin + din];
                        for ((o, (&d, &s)), (&x, &z)) in o.iter_mut().zip(dh.iter().zip(scale)).zip(xhat.iter().zip(z))
                        {
                            *o = inv * (d * s - mean_dx - x * mean_dxx) * gelu_derivative(z);
                        }
                    }
                }
                None => {
                    for r in 0..batch {
                        let (d, z) = (&dh[r * sin..r * sin + din], &zl[r * sin..r * sin + din]);
                        for (o, (&d, &z)) in next[r * sin..r * sin + din].iter_mut().zip(d.iter().zip(z)) {
                            *o = d * gelu_derivative(z);
                        }
                    }
                }
            }
            std::mem::swap(dz, next);
        }
    }
}

/// Buffers of the backward pass, kept between calls.
#[derive(Debug, Default)]
struct Scratch {
    dz: Vec<f32>,
    next: Vec<f32>,
    dh: Vec<f32>,
    dw: Vec<f32>,
    compact: Vec<f32>,
    /// bf16 operands: a layer's rounded inputs, `Hᵀ` or `dZ`.
    half: Vec<u16>,
}

/// `Σ_j a_j·b_j·f(c_j)` with 16 partial sums (a reduction the compiler vectorises).
#[inline(always)]
fn dot(a: &[f32], b: &[f32], f: impl Fn(f32) -> f32, c: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let n = a.len() / 16 * 16;
    for ((a, b), c) in a[..n].chunks_exact(16).zip(b[..n].chunks_exact(16)).zip(c[..n].chunks_exact(16)) {
        for k in 0..16 {
            acc[k] += a[k] * b[k] * f(c[k]);
        }
    }
    let rest: f32 = (n..a.len()).map(|j| a[j] * b[j] * f(c[j])).sum();
    acc.iter().sum::<f32>() + rest
}

/// `d/dx [x·Φ(x)] = Φ(x) + x·φ(x)`, with Φ from the same erf as [`gelu`] (one exponential:
/// e^(−x²/2) serves both), branch-free so that its loops vectorise.
#[inline(always)]
fn gelu_derivative(x: f32) -> f32 {
    let y = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * y);
    let poly = t * (0.254_829_6 + t * (-0.284_496_72 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let e = exp(-y * y);
    let erf = (1.0 - poly * e).copysign(x);
    0.5 * (1.0 + erf) + x * e * 0.398_942_3 // 1/√(2π)
}
