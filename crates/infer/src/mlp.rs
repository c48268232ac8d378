//! MLPs on packed layers, with their own scratch buffers, and the elementwise kernels.

use crate::backprop::LayerParams;
use crate::gemm::{round_up, to_bf16, PackedLinear, Precision, MR};
use crate::isa::Isa;

/// Nonlinearity between layers (the same set as the training crate's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)`, with Φ from an erf approximation of absolute error ≤ 1.5e-7.
    Gelu,
    /// `x·sigmoid(x)`.
    Silu,
    /// `max(x, 0)`.
    Relu,
}

/// The parameters of one affine layer, as the training code holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
    /// `[in_dim, out_dim]`, row-major (`y = x·W + b`).
    pub weight: Vec<f32>,
    /// `[out_dim]`.
    pub bias: Vec<f32>,
    /// LayerNorm scale and shift `[out_dim]` applied after this layer's activation.
    pub norm: Option<(Vec<f32>, Vec<f32>)>,
}

/// A trained MLP: `Linear → act → [LayerNorm]` per hidden layer, then a final `Linear`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpWeights {
    /// Layers from input to output.
    pub layers: Vec<LayerWeights>,
    /// Nonlinearity after each hidden layer.
    pub activation: Activation,
}

impl MlpWeights {
    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.layers[0].in_dim
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.layers.last().expect("an MLP has layers").out_dim
    }

    /// Multiply-adds per input row.
    pub fn macs(&self) -> usize {
        self.layers.iter().map(|l| l.in_dim * l.out_dim).sum()
    }
}

pub(crate) const LN_EPS: f32 = 1e-5;

/// An MLP ready to run: packed weights and scratch buffers that grow on the first call for a
/// row count and are reused afterwards (no allocation on later calls of the same or fewer rows).
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<PackedLinear>,
    norms: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    activation: Activation,
    precision: Precision,
    rows: usize,
    input: Vec<f32>,
    hidden: [Vec<f32>; 2],
    output: Vec<f32>,
    half: Vec<u16>,
    /// The first layer's leading inputs, where they repeat over groups of rows.
    shared: Option<SharedInputs>,
}

/// The first layer of an [`Mlp`] split in two for inputs whose first `cols` columns are the
/// same within groups of consecutive rows (an observation and its N candidates): those columns
/// are multiplied once per group (`head`, which holds the bias) and added to every row of the
/// group; the rows' own columns go through `layers[0]` (without a bias).
#[derive(Debug, Clone)]
struct SharedInputs {
    cols: usize,
    head: PackedLinear,
    /// One row per group, stride `head.in_stride()`.
    input: Vec<f32>,
    /// `head`'s output per group, stride `head.out_stride()`.
    out: Vec<f32>,
    half: Vec<u16>,
    /// Groups the buffers hold.
    groups: usize,
    zeros: Vec<f32>,
}

impl Mlp {
    /// Packs `w` for `precision`.
    pub fn new(w: &MlpWeights, precision: Precision) -> Self {
        let layers =
            w.layers.iter().map(|l| PackedLinear::new(l.in_dim, l.out_dim, &l.weight, &l.bias, precision)).collect();
        let norms = w.layers.iter().map(|l| l.norm.clone()).collect();
        Self {
            layers,
            norms,
            activation: w.activation,
            precision,
            rows: 0,
            input: Vec::new(),
            hidden: [Vec::new(), Vec::new()],
            output: Vec::new(),
            half: Vec::new(),
            shared: None,
        }
    }

    /// Packs `w` for inputs whose first `cols` columns repeat within groups of rows
    /// ([`Mlp::forward_grouped`]): those columns are written once per group
    /// ([`Mlp::shared_input_mut`]) and multiplied once per group; [`Mlp::input_mut`] then holds
    /// only the remaining columns of each row. `0 < cols < ` the input width.
    pub fn with_shared_inputs(w: &MlpWeights, precision: Precision, cols: usize) -> Self {
        let first = &w.layers[0];
        assert!(cols > 0 && cols < first.in_dim, "shared columns must leave some of the {} inputs", first.in_dim);
        let o = first.out_dim;
        let zeros = vec![0.0; o];
        let mut mlp = Self::new(w, precision);
        let (head, rest) = first.weight.split_at(cols * o);
        mlp.layers[0] = PackedLinear::new(first.in_dim - cols, o, rest, &zeros, precision);
        let head = PackedLinear::new(cols, o, head, &first.bias, precision);
        mlp.shared =
            Some(SharedInputs { cols, head, input: Vec::new(), out: Vec::new(), half: Vec::new(), groups: 0, zeros });
        mlp
    }

    /// The network with every layer's kernels from `isa` (at most [`Isa::detected`]).
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.layers.iter_mut().for_each(|l| l.set_isa(isa));
        if let Some(sh) = &mut self.shared {
            sh.head.set_isa(isa);
        }
        self
    }

    /// The family of kernels the network runs.
    pub fn isa(&self) -> Isa {
        self.layers[0].isa()
    }

    /// The products' number format.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Packs new weights of the same architecture in place of the current ones (after a
    /// training step), keeping the scratch buffers.
    pub fn repack(&mut self, w: &MlpWeights) -> Result<(), crate::InferError> {
        let shared_cols = self.shared.as_ref().map_or(0, |s| s.cols);
        let fits = w.layers.len() == self.layers.len()
            && w.activation == self.activation
            && w.layers.iter().zip(&self.layers).enumerate().all(|(i, (l, p))| {
                l.in_dim == p.in_dim() + if i == 0 { shared_cols } else { 0 } && l.out_dim == p.out_dim()
            });
        if !fits {
            return Err(crate::InferError::Shape("repacked weights must keep the network's architecture".into()));
        }
        let views: Vec<LayerParams<'_>> = w
            .layers
            .iter()
            .map(|l| LayerParams {
                weight: &l.weight,
                bias: &l.bias,
                norm: l.norm.as_ref().map(|(s, b)| (s.as_slice(), b.as_slice())),
            })
            .collect();
        self.repack_layers(&views)
    }

    /// [`Mlp::repack`] from borrowed parameters (one per layer, `weight [in, out]`): the
    /// training loop's own buffers, packed without an intermediate copy.
    pub fn repack_layers(&mut self, layers: &[LayerParams<'_>]) -> Result<(), crate::InferError> {
        let shared_cols = self.shared.as_ref().map_or(0, |s| s.cols);
        let fits = layers.len() == self.layers.len()
            && layers.iter().zip(&self.layers).enumerate().all(|(i, (l, p))| {
                let in_dim = p.in_dim() + if i == 0 { shared_cols } else { 0 };
                l.weight.len() == in_dim * p.out_dim()
                    && l.bias.len() == p.out_dim()
                    && l.norm.is_none_or(|(s, b)| s.len() == p.out_dim() && b.len() == p.out_dim())
            });
        if !fits {
            return Err(crate::InferError::Shape("repacked weights must keep the network's architecture".into()));
        }
        for (i, (p, l)) in self.layers.iter_mut().zip(layers).enumerate() {
            match (i, self.shared.as_mut()) {
                (0, Some(sh)) => {
                    let (head, rest) = l.weight.split_at(sh.cols * p.out_dim());
                    sh.head.repack(head, l.bias);
                    p.repack(rest, &sh.zeros);
                }
                _ => p.repack(l.weight, l.bias),
            }
        }
        for (n, l) in self.norms.iter_mut().zip(layers) {
            match (n.as_mut(), l.norm) {
                (Some((scale, shift)), Some((s, b))) => {
                    scale.copy_from_slice(s);
                    shift.copy_from_slice(b);
                }
                (_, norm) => *n = norm.map(|(s, b)| (s.to_vec(), b.to_vec())),
            }
        }
        Ok(())
    }

    /// Row stride of the input buffer (with shared inputs: of the rows' own columns).
    pub fn in_stride(&self) -> usize {
        self.layers[0].in_stride()
    }

    /// Row stride of the shared inputs' buffer ([`Mlp::with_shared_inputs`]).
    pub fn shared_stride(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.head.in_stride())
    }

    /// Makes room for `groups` rows of shared inputs; allocates only when `groups` exceeds
    /// every earlier request.
    pub fn reserve_shared(&mut self, groups: usize) {
        let block = self.row_block();
        let Some(sh) = self.shared.as_mut() else { return };
        let groups = round_up(groups.max(1), block);
        if groups <= sh.groups {
            return;
        }
        sh.groups = groups;
        sh.input = vec![0.0; groups * sh.head.in_stride()];
        sh.out = vec![0.0; groups * sh.head.out_stride()];
        if self.precision == Precision::Bf16 {
            sh.half = vec![0; groups * sh.head.in_stride()];
        }
    }

    /// The shared inputs' buffer for `groups` groups (call [`Mlp::reserve_shared`] first):
    /// group `g`'s leading columns start at `g · shared_stride()`.
    pub fn shared_input_mut(&mut self, groups: usize) -> &mut [f32] {
        let sh = self.shared.as_mut().expect("an MLP built with_shared_inputs");
        assert!(groups <= sh.groups, "reserve_shared({groups}) first");
        &mut sh.input[..groups * sh.head.in_stride()]
    }

    /// Rows are computed in blocks of this many: 32 for the AMX tiles of the bf16 path, else
    /// the 8 of the AVX-512 micro-kernels.
    fn row_block(&self) -> usize {
        if self.precision == Precision::Bf16 && self.isa() == Isa::Avx512 && crate::amx::available() {
            crate::amx::ROWS
        } else {
            MR
        }
    }

    /// Row stride of the output.
    pub fn out_stride(&self) -> usize {
        self.layers.last().expect("an MLP has layers").out_stride()
    }

    /// Makes room for `rows` rows (rounded up to the kernel's row block); allocates only when
    /// `rows` exceeds every earlier request.
    pub fn reserve(&mut self, rows: usize) {
        let rows = round_up(rows.max(1), self.row_block());
        if rows <= self.rows {
            return;
        }
        self.rows = rows;
        let widest = self.layers.iter().map(|l| l.out_stride().max(l.in_stride())).max().unwrap_or(0);
        let tile = rows.min(TILE_ROWS);
        self.input = vec![0.0; rows * self.in_stride()];
        self.output = vec![0.0; rows * self.out_stride()];
        self.hidden = [vec![0.0; tile * widest], vec![0.0; tile * widest]];
        if self.precision == Precision::Bf16 {
            self.half = vec![0; tile * widest];
        }
    }

    /// The input buffer for `rows` rows (call [`Mlp::reserve`] first): row `i` starts at
    /// `i · in_stride()`; columns past the input width must stay zero (they are, unless written).
    pub fn input_mut(&mut self, rows: usize) -> &mut [f32] {
        assert!(rows <= self.rows, "reserve({rows}) first");
        let s = self.in_stride();
        &mut self.input[..rows * s]
    }

    /// Runs the network on the first `rows` rows of the input buffer; returns the output rows
    /// (stride [`Mlp::out_stride`]). Rows go through all layers in tiles of 256 rows, so
    /// a tile's activations stay in the core's cache however many rows there are.
    pub fn forward(&mut self, rows: usize) -> &[f32] {
        assert!(self.shared.is_none(), "an MLP with shared inputs runs forward_grouped");
        self.forward_grouped(rows, rows.max(1))
    }

    /// [`Mlp::forward`] for an MLP [`with_shared_inputs`](Mlp::with_shared_inputs): row `r`
    /// takes the shared inputs of group `r / group`.
    pub fn forward_grouped(&mut self, rows: usize, group: usize) -> &[f32] {
        assert!(rows <= self.rows, "reserve({rows}) first");
        assert!(group > 0, "groups of at least one row");
        let real_groups = rows.max(1).div_ceil(group);
        let rows = round_up(rows.max(1), self.row_block());
        let (in_stride, out_stride) = (self.in_stride(), self.out_stride());
        let last = self.layers.len() - 1;
        let isa = self.isa();
        if let Some(sh) = self.shared.as_mut() {
            let groups = round_up(real_groups, self.layers[0].row_block());
            assert!(groups <= sh.groups, "reserve_shared({real_groups}) first");
            let src = &sh.input[..groups * sh.head.in_stride()];
            let dst = &mut sh.out[..groups * sh.head.out_stride()];
            match self.precision {
                Precision::Bf16 => {
                    round_to_bf16(src, &mut sh.half[..src.len()], isa);
                    sh.head.forward_bf16(&sh.half[..src.len()], groups, dst);
                }
                Precision::F32 => sh.head.forward_f32(src, groups, dst),
            }
        }
        let mut start = 0;
        while start < rows {
            let n = (rows - start).min(TILE_ROWS);
            for i in 0..=last {
                let layer = &self.layers[i];
                let [h0, h1] = &mut self.hidden;
                let (src, dst): (&[f32], &mut [f32]) = match i {
                    0 => (&self.input[start * in_stride..(start + n) * in_stride], h0),
                    _ if i % 2 == 1 => (h0, h1),
                    _ => (h1, h0),
                };
                let src = &src[..n * layer.in_stride()];
                let dst = if i == last {
                    &mut self.output[start * out_stride..(start + n) * out_stride]
                } else {
                    &mut dst[..n * layer.out_stride()]
                };
                let bf16 = self.precision == Precision::Bf16;
                if bf16 {
                    // Hidden layers' bf16 inputs were rounded by the previous layer's epilogue.
                    if i == 0 {
                        round_to_bf16(src, &mut self.half[..src.len()], isa);
                    }
                    layer.forward_bf16(&self.half[..src.len()], n, dst);
                } else {
                    layer.forward_f32(src, n, dst);
                }
                if let (0, Some(sh)) = (i, self.shared.as_ref()) {
                    // Each row's group's share of the first layer (with the bias).
                    let (stride, hs) = (layer.out_stride(), sh.head.out_stride());
                    for (r, row) in dst.chunks_exact_mut(stride).enumerate() {
                        let g = ((start + r) / group).min(real_groups - 1);
                        add(row, &sh.out[g * hs..g * hs + stride], isa);
                    }
                }
                if i < last {
                    // One pass per row while it is in L1: activation, LayerNorm, and for bf16 the
                    // rounding that makes the next layer's input.
                    let (stride, width) = (layer.out_stride(), layer.out_dim());
                    let norm = self.norms[i].as_ref();
                    for (r, row) in dst.chunks_exact_mut(stride).enumerate() {
                        activate(self.activation, row, isa);
                        if let Some((scale, shift)) = norm {
                            layer_norm(&mut row[..width], scale, shift, isa);
                        }
                        if bf16 {
                            round_to_bf16(row, &mut self.half[r * stride..(r + 1) * stride], isa);
                        }
                    }
                }
            }
            start += n;
        }
        &self.output[..rows * out_stride]
    }
}

/// Rows per tile of [`Mlp::forward`]: a multiple of every kernel's row block (8, and AMX's 32).
const TILE_ROWS: usize = 256;

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

fn activate(a: Activation, x: &mut [f32], isa: Isa) {
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
fn add(x: &mut [f32], y: &[f32], isa: Isa) {
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

fn layer_norm(x: &mut [f32], scale: &[f32], shift: &[f32], isa: Isa) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Maclaurin series in f64 (accurate to ~1e-8 for |x| ≤ 4.3).
    fn erf_ref(x: f64) -> f64 {
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn gelu_matches_the_exact_definition() {
        for i in -600..=600 {
            let x = i as f64 / 100.0;
            let want = 0.5 * x * (1.0 + erf_ref(x / std::f64::consts::SQRT_2));
            let got = gelu(x as f32) as f64;
            assert!((got - want).abs() < 1e-6 * (1.0 + x.abs()), "gelu({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn vectorised_gelu_matches_the_exact_definition() {
        let xs: Vec<f32> = (-1200..=1200).map(|i| i as f32 / 100.0).collect();
        for isa in Isa::available() {
            let mut ys = xs.clone();
            activate(Activation::Gelu, &mut ys, isa);
            for (&x, &y) in xs.iter().zip(&ys) {
                let x = x as f64;
                let want = 0.5 * x * (1.0 + erf_ref(x.clamp(-6.0, 6.0) / std::f64::consts::SQRT_2));
                assert!((y as f64 - want).abs() < 1e-6 * (1.0 + x.abs()), "{isa}: gelu({x}) = {y}, want {want}");
            }
        }
    }

    fn weights(dims: &[usize], seed: u32) -> MlpWeights {
        let val = |i: usize, salt: u32| {
            (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed * 977 + salt) >> 9) % 2001) as f32 / 4000.0
                - 0.25
        };
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(l, w)| LayerWeights {
                in_dim: w[0],
                out_dim: w[1],
                weight: (0..w[0] * w[1]).map(|i| val(i, l as u32)).collect(),
                bias: (0..w[1]).map(|i| val(i, 100 + l as u32)).collect(),
                norm: (l + 2 < dims.len()).then(|| {
                    ((0..w[1]).map(|i| 1.0 + val(i, 200)).collect(), (0..w[1]).map(|i| val(i, 300)).collect())
                }),
            })
            .collect();
        MlpWeights { layers, activation: Activation::Gelu }
    }

    /// Splitting off the leading inputs that repeat within groups of rows (an observation and
    /// its candidates) gives the plain network's outputs, on every kernel family, also after
    /// repacking new weights; a partial last group and padded rows included.
    #[test]
    fn shared_inputs_give_the_plain_networks_outputs() {
        let (s, d, group, rows): (usize, usize, usize, usize) = (37, 27, 32, 301); // 10 groups, the last partial; two row tiles
        let dims = [s + d, 64, 48, 25];
        for isa in Isa::available() {
            for seed in [1, 2] {
                let w = weights(&dims, seed);
                let mut plain = Mlp::new(&weights(&dims, 9), Precision::F32).with_isa(isa);
                let mut split = Mlp::with_shared_inputs(&weights(&dims, 9), Precision::F32, s).with_isa(isa);
                plain.repack(&w).unwrap();
                split.repack(&w).unwrap();
                let groups = rows.div_ceil(group);
                plain.reserve(rows);
                split.reserve(rows);
                split.reserve_shared(groups);
                let obs = |g: usize, c: usize| ((g * 13 + c * 7) % 17) as f32 / 8.5 - 1.0;
                let own = |r: usize, c: usize| ((r * 5 + c * 3) % 11) as f32 / 5.5 - 1.0;
                let (ps, ss) = (plain.in_stride(), split.in_stride());
                for (r, row) in plain.input_mut(rows).chunks_exact_mut(ps).enumerate() {
                    (0..s).for_each(|c| row[c] = obs(r / group, c));
                    (0..d).for_each(|c| row[s + c] = own(r, c));
                }
                for (r, row) in split.input_mut(rows).chunks_exact_mut(ss).enumerate() {
                    (0..d).for_each(|c| row[c] = own(r, c));
                }
                let hs = split.shared_stride();
                for (g, row) in split.shared_input_mut(groups).chunks_exact_mut(hs).enumerate() {
                    (0..s).for_each(|c| row[c] = obs(g, c));
                }
                let want = plain.forward(rows).to_vec();
                let got = split.forward_grouped(rows, group);
                let os = plain.out_stride();
                for r in 0..rows {
                    for c in 0..25 {
                        let (g, e) = (got[r * os + c], want[r * os + c]);
                        assert!((g - e).abs() < 1e-5 * (1.0 + e.abs()), "{isa}, row {r}, column {c}: {g} vs {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn exp_is_accurate_over_the_range_used() {
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!(((got - want) / want).abs() < 1e-6, "exp({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn layer_norm_standardises() {
        for isa in Isa::available() {
            let mut x: Vec<f32> = (0..64).map(|i| i as f32 * 0.3 - 4.0).collect();
            layer_norm(&mut x, &[1.0; 64], &[0.0; 64], isa);
            let mean = x.iter().sum::<f32>() / 64.0;
            let var = x.iter().map(|v| v * v).sum::<f32>() / 64.0;
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3, "{isa}: mean {mean}, var {var}");
        }
    }
}
