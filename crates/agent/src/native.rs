//! What the native updates of the critic and the actor share: host views of libtorch's
//! parameters, the layer shapes they check, and gradient buffers that land in the optimiser's
//! flat layout ([`Adam::step_flat`]).

use anyhow::{bail, Result};
use mvp_infer::{LayerGrads, LayerParams};
use mvp_nn::{Adam, Layer};
use tch::{Device, Kind, Tensor};

/// The host values of a contiguous fp32 CPU tensor, member `e`'s part of an ensemble tensor
/// `[E, ...]` of `len` numbers per member (e = 0 and the whole length for a plain one).
pub(crate) fn member(t: &Tensor, e: usize, len: usize) -> &[f32] {
    assert!(t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() && (e + 1) * len <= t.numel());
    // SAFETY: a contiguous fp32 CPU tensor holds numel() floats from data_ptr; the caller
    // (one update, on this thread) does not write the parameters while the slice lives.
    unsafe { &std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel())[e * len..(e + 1) * len] }
}

/// Member `e`'s parameters of `layers` (widths `dims`) as host views.
pub(crate) fn params<'a>(layers: &'a [Layer], dims: &[usize], e: usize) -> Vec<LayerParams<'a>> {
    layers
        .iter()
        .enumerate()
        .map(|(l, layer)| {
            let (i, o) = (dims[l], dims[l + 1]);
            LayerParams {
                weight: member(&layer.weight, e, i * o),
                bias: member(&layer.bias, e, o),
                norm: layer.norm.as_ref().map(|(s, b)| (member(s, e, o), member(b, e, o))),
            }
        })
        .collect()
}

/// The widths (input, hidden..., output) of `layers` (weights `[in, out]`, or `[E, in, out]`
/// for an ensemble), checking that they are fp32 CPU tensors.
pub(crate) fn widths(layers: &[Layer]) -> Result<Vec<usize>> {
    let mut dims = Vec::with_capacity(layers.len() + 1);
    for (l, layer) in layers.iter().enumerate() {
        let (device, kind) = (layer.weight.device(), layer.weight.kind());
        if device != Device::Cpu || kind != Kind::Float {
            bail!("it needs fp32 CPU parameters (layer {l} is {kind:?} on {device:?})");
        }
        let size = layer.weight.size();
        let (i, o) = (size[size.len() - 2] as usize, size[size.len() - 1] as usize);
        if l == 0 {
            dims.push(i);
        }
        dims.push(o);
    }
    Ok(dims)
}

/// Where one layer's gradients go in the optimiser's flat gradient (member 0; member e adds
/// e times the parameter's per-member size).
#[derive(Debug, Clone, Copy)]
struct Slots {
    weight: usize,
    bias: usize,
    norm: Option<(usize, usize)>,
}

/// One network's gradients, written by its backward pass straight into their places in the
/// optimiser's flat gradient (one ensemble member at a time).
#[derive(Debug)]
pub(crate) struct FlatGrads {
    slots: Vec<Slots>,
    /// Widths (input, hidden..., output).
    dims: Vec<usize>,
    /// The flat gradient, for [`Adam::step_flat`].
    pub flat: Vec<f32>,
}

impl FlatGrads {
    /// The gradient of `layers` (widths `dims`) optimised by `opt`.
    pub fn new(layers: &[Layer], dims: &[usize], opt: &Adam) -> Result<Self> {
        let offset =
            |t: &Tensor| opt.offset_of(t).ok_or_else(|| anyhow::anyhow!("a parameter is not among the optimiser's"));
        let mut slots = Vec::with_capacity(layers.len());
        for layer in layers {
            let norm = match &layer.norm {
                Some((s, b)) => Some((offset(s)?, offset(b)?)),
                None => None,
            };
            slots.push(Slots { weight: offset(&layer.weight)?, bias: offset(&layer.bias)?, norm });
        }
        Ok(Self { slots, dims: dims.to_vec(), flat: vec![0.0; opt.numel()] })
    }

    /// Member `e`'s places in the flat gradient, one [`LayerGrads`] per layer, for a backward
    /// pass to write.
    pub fn layers(&mut self, e: usize) -> Vec<LayerGrads<'_>> {
        let mut ranges = Vec::with_capacity(4 * self.slots.len());
        for (l, s) in self.slots.iter().enumerate() {
            let (i, o) = (self.dims[l], self.dims[l + 1]);
            ranges.extend([(s.weight + e * i * o, i * o), (s.bias + e * o, o)]);
            if let Some((scale, shift)) = s.norm {
                ranges.extend([(scale + e * o, o), (shift + e * o, o)]);
            }
        }
        let mut parts = disjoint_mut(&mut self.flat, &ranges).into_iter();
        let mut next = || parts.next().expect("one slice per range");
        self.slots
            .iter()
            .map(|s| LayerGrads { weight: next(), bias: next(), norm: s.norm.map(|_| (next(), next())) })
            .collect()
    }
}

/// The slices `(start, len)` of `flat`, in the order given; they must not overlap.
fn disjoint_mut<'a>(flat: &'a mut [f32], ranges: &[(usize, usize)]) -> Vec<&'a mut [f32]> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].0);
    let mut out: Vec<Option<&'a mut [f32]>> = ranges.iter().map(|_| None).collect();
    let (mut rest, mut base) = (flat, 0);
    for i in order {
        let (start, len) = ranges[i];
        assert!(start >= base, "gradient slices overlap at {start}");
        let (mine, tail) = std::mem::take(&mut rest)[start - base..].split_at_mut(len);
        out[i] = Some(mine);
        (rest, base) = (tail, start + len);
    }
    out.into_iter().map(|s| s.expect("every range is split off")).collect()
}

/// A float tensor's values, row-major, on the host.
pub(crate) fn host(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_kind(Kind::Float).contiguous().view([-1])).expect("a float tensor converts to Vec<f32>")
}

/// The products' formats and kernel families a native update is tested in, with libtorch's
/// setting of the same format and the tolerances against it (gradients relative to each
/// parameter's largest; values relative to 1 + |value|): fp32 on every family this CPU runs,
/// bf16 where the CPU has AVX512-BF16 (its operands are rounded as libtorch's are; libtorch
/// also rounds the products' results to bf16, the native kernels keep them in fp32).
#[cfg(test)]
pub(crate) fn test_precisions() -> Vec<(mvp_infer::Precision, mvp_infer::Isa, mvp_nn::MatmulPrecision, f32, f64)> {
    use mvp_infer::{Isa, Precision};
    use mvp_nn::MatmulPrecision;
    let mut all: Vec<_> =
        Isa::available().into_iter().map(|isa| (Precision::F32, isa, MatmulPrecision::F32, 1e-4, 1e-5)).collect();
    if Isa::Avx512.has_bf16() {
        all.push((Precision::Bf16, Isa::Avx512, MatmulPrecision::Bf16, 1e-2, 1e-3));
    } else {
        eprintln!("this CPU has no AVX512-BF16: the native bf16 update is not tested here");
    }
    all
}

/// Tests that draw from libtorch's generator (one per process) hold this lock.
#[cfg(test)]
pub(crate) static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Asserts that the flat gradient `flat` (in `opt`'s layout) equals the `.grad` libtorch left on
/// every variable of `vs`, to 1e-4 of each parameter's largest; returns how many were checked.
#[cfg(test)]
pub(crate) fn assert_flat_grads_match(vs: &tch::nn::VarStore, opt: &Adam, flat: &[f32], what: &str, tol: f32) -> usize {
    let mut checked = 0;
    for (name, p) in vs.variables() {
        let g = host(&p.grad());
        let at = opt.offset_of(&p).unwrap();
        let ours = &flat[at..at + g.len()];
        let scale = g.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let worst = ours.iter().zip(&g).fold(0f32, |m, (a, e)| m.max((a - e).abs()));
        assert!(worst <= tol * scale, "{what} {name}: gradient off by {worst} (largest {scale})");
        checked += 1;
    }
    checked
}
