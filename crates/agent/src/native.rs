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

/// One layer's gradient buffers.
#[derive(Debug, Default)]
struct Buffers {
    weight: Vec<f32>,
    bias: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

/// Gradient buffers of one network's layers (one member at a time) and where each lands in
/// the optimiser's flat gradient.
#[derive(Debug)]
pub(crate) struct FlatGrads {
    slots: Vec<Slots>,
    buffers: Vec<Buffers>,
    /// The flat gradient, for [`Adam::step_flat`].
    pub flat: Vec<f32>,
}

impl FlatGrads {
    /// Buffers for `layers` (widths `dims`) optimised by `opt`.
    pub fn new(layers: &[Layer], dims: &[usize], opt: &Adam) -> Result<Self> {
        let offset =
            |t: &Tensor| opt.offset_of(t).ok_or_else(|| anyhow::anyhow!("a parameter is not among the optimiser's"));
        let mut slots = Vec::with_capacity(layers.len());
        let mut buffers = Vec::with_capacity(layers.len());
        for (l, layer) in layers.iter().enumerate() {
            let norm = match &layer.norm {
                Some((s, b)) => Some((offset(s)?, offset(b)?)),
                None => None,
            };
            slots.push(Slots { weight: offset(&layer.weight)?, bias: offset(&layer.bias)?, norm });
            let (i, o) = (dims[l], dims[l + 1]);
            let n = if layer.norm.is_some() { o } else { 0 };
            buffers.push(Buffers {
                weight: vec![0.0; i * o],
                bias: vec![0.0; o],
                scale: vec![0.0; n],
                shift: vec![0.0; n],
            });
        }
        Ok(Self { slots, buffers, flat: vec![0.0; opt.numel()] })
    }

    /// The buffers, for a backward pass to write.
    pub fn layers(&mut self) -> Vec<LayerGrads<'_>> {
        self.buffers
            .iter_mut()
            .map(|b| LayerGrads {
                weight: &mut b.weight,
                bias: &mut b.bias,
                norm: (!b.scale.is_empty()).then_some((&mut b.scale, &mut b.shift)),
            })
            .collect()
    }

    /// Copies the buffers into member `e`'s place of the flat gradient.
    pub fn scatter(&mut self, e: usize) {
        let Self { slots, buffers, flat } = self;
        let mut put = |at: usize, v: &[f32]| flat[at + e * v.len()..at + (e + 1) * v.len()].copy_from_slice(v);
        for (b, s) in buffers.iter().zip(slots.iter()) {
            put(s.weight, &b.weight);
            put(s.bias, &b.bias);
            if let Some((ss, sb)) = s.norm {
                put(ss, &b.scale);
                put(sb, &b.shift);
            }
        }
    }
}

/// A float tensor's values, row-major, on the host.
pub(crate) fn host(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_kind(Kind::Float).contiguous().view([-1])).expect("a float tensor converts to Vec<f32>")
}

/// Tests that draw from libtorch's generator (one per process) hold this lock.
#[cfg(test)]
pub(crate) static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Asserts that the flat gradient `flat` (in `opt`'s layout) equals the `.grad` libtorch left on
/// every variable of `vs`, to 1e-4 of each parameter's largest; returns how many were checked.
#[cfg(test)]
pub(crate) fn assert_flat_grads_match(vs: &tch::nn::VarStore, opt: &Adam, flat: &[f32], what: &str) -> usize {
    let mut checked = 0;
    for (name, p) in vs.variables() {
        let g = host(&p.grad());
        let at = opt.offset_of(&p).unwrap();
        let ours = &flat[at..at + g.len()];
        let scale = g.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let worst = ours.iter().zip(&g).fold(0f32, |m, (a, e)| m.max((a - e).abs()));
        assert!(worst <= 1e-4 * scale, "{what} {name}: gradient off by {worst} (largest {scale})");
        checked += 1;
    }
    checked
}
