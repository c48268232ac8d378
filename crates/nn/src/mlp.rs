//! Multi-layer perceptron with a hand-written forward-mode JVP.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::jvp::ForwardJvp;
use crate::precision::{matmul, MatmulPrecision};

// Defined in mvp-spec: shared with the native engine.
pub use mvp_spec::Activation;

/// [`Activation`] on tensors (the type lives in `mvp-spec`, which has no libtorch).
pub trait ActivationExt {
    /// Applies the activation.
    fn forward(self, x: &Tensor) -> Tensor;

    /// The derivative σ'(x), elementwise.
    fn derivative(self, x: &Tensor) -> Tensor;
}

impl ActivationExt for Activation {
    fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::Silu => x.silu(),
            Activation::Relu => x.relu(),
        }
    }

    fn derivative(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => {
                // d/dx x·Φ(x) = Φ(x) + x·φ(x)
                let cdf = ((x * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * 0.5;
                let pdf = (x.square() * -0.5).exp() * (1.0 / (2.0 * std::f64::consts::PI).sqrt());
                cdf + x * pdf
            }
            Activation::Silu => {
                let s = x.sigmoid();
                &s * (x * (1.0 - &s) + 1.0)
            }
            Activation::Relu => x.gt(0.0).to_kind(x.kind()),
        }
    }
}

/// Shape of an MLP's hidden part; input and output widths are given at construction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpConfig {
    /// Widths of the hidden layers (paper: four layers of 512).
    pub hidden: Vec<usize>,
    /// Nonlinearity after each hidden layer.
    pub activation: Activation,
    /// LayerNorm after each hidden activation (critics: yes; actors: no).
    pub layer_norm: bool,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { hidden: vec![512; 4], activation: Activation::Gelu, layer_norm: false }
    }
}

pub(crate) const LN_EPS: f64 = 1e-5;

/// One affine layer; the weight is stored `[in, out]` so that `y = x·W + b` (with a leading
/// member dimension `[E, in, out]`, `[E, 1, out]` in an [`crate::EnsembleMlp`]). Read through
/// [`Mlp::layers`] / [`crate::EnsembleMlp::layers`], e.g. to export the weights.
#[derive(Debug)]
pub struct Layer {
    /// `[in, out]` (`[E, in, out]` in an ensemble).
    pub weight: Tensor,
    /// `[out]` (`[E, 1, out]` in an ensemble).
    pub bias: Tensor,
    /// LayerNorm scale and shift after this layer's activation, present on hidden layers
    /// when enabled.
    pub norm: Option<(Tensor, Tensor)>,
}

/// Creates the parameters of every layer under `path` (`l{i}.weight`, ...). With
/// `members = Some(E)`, each tensor gets a leading ensemble dimension: weights `[E, in, out]`,
/// biases and LayerNorm parameters `[E, 1, out]` (broadcast over the batch).
pub(crate) fn build_layers(
    path: &nn::Path,
    in_dim: usize,
    out_dim: usize,
    config: &MlpConfig,
    members: Option<usize>,
) -> Vec<Layer> {
    let mut widths = vec![in_dim];
    widths.extend(&config.hidden);
    widths.push(out_dim);
    let n = widths.len() - 1;
    let lead: Vec<i64> = members.map(|e| vec![e as i64]).unwrap_or_default();
    let vec_shape = |fo: usize| -> Vec<i64> {
        match members {
            Some(e) => vec![e as i64, 1, fo as i64],
            None => vec![fo as i64],
        }
    };
    (0..n)
        .map(|i| {
            let (fi, fo) = (widths[i], widths[i + 1]);
            let p = path / format!("l{i}");
            let w_shape: Vec<i64> = lead.iter().copied().chain([fi as i64, fo as i64]).collect();
            let weight = p.var("weight", &w_shape, xavier_uniform(fi, fo));
            let bias = p.var("bias", &vec_shape(fo), nn::Init::Const(0.0));
            let norm = (config.layer_norm && i + 1 < n).then(|| {
                (
                    p.var("ln_scale", &vec_shape(fo), nn::Init::Const(1.0)),
                    p.var("ln_shift", &vec_shape(fo), nn::Init::Const(0.0)),
                )
            });
            Layer { weight, bias, norm }
        })
        .collect()
}

/// Xavier-uniform (fan-average) initialisation, as in FQL/QC's MLPs; biases start at zero.
pub(crate) fn xavier_uniform(fan_in: usize, fan_out: usize) -> nn::Init {
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
    nn::Init::Uniform { lo: -bound, up: bound }
}

/// A fully connected network: `Linear → act → [LayerNorm]` per hidden layer, then a final
/// `Linear`. Parameters live in the [`nn::Path`] it was built on, named `l{i}.weight`,
/// `l{i}.bias`, `l{i}.ln_scale`, `l{i}.ln_shift`.
#[derive(Debug)]
pub struct Mlp {
    pub(crate) layers: Vec<Layer>,
    pub(crate) activation: Activation,
    in_dim: usize,
    out_dim: usize,
}

impl Mlp {
    /// Builds an MLP from `in_dim` to `out_dim` with the hidden layers of `config`.
    pub fn new(path: &nn::Path, in_dim: usize, out_dim: usize, config: &MlpConfig) -> Self {
        let layers = build_layers(path, in_dim, out_dim, config, None);
        Self { layers, activation: config.activation, in_dim, out_dim }
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// The layers, input first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The hidden activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Forward pass that also returns the activations after hidden layer `hidden` (0: the
    /// first; after its activation and LayerNorm), e.g. for a loss on representations.
    pub fn forward_with_hidden(&self, x: &Tensor, hidden: usize) -> (Tensor, Tensor) {
        assert!(hidden + 1 < self.layers.len(), "hidden layer {hidden} of an MLP with {} layers", self.layers.len());
        let mut h = affine(x, &self.layers[0]);
        let mut kept = None;
        for (i, layer) in self.layers.iter().enumerate().skip(1) {
            h = self.activation.forward(&h);
            if let Some((s, b)) = &self.layers[i - 1].norm {
                h = h.layer_norm([h.size()[h.dim() - 1]], Some(s), Some(b), LN_EPS, false);
            }
            if i - 1 == hidden {
                kept = Some(h.shallow_clone());
            }
            h = affine(&h, layer);
        }
        (h, kept.expect("the hidden layer exists"))
    }

    /// Forward pass on `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = affine(x, &self.layers[0]);
        for (i, layer) in self.layers.iter().enumerate().skip(1) {
            h = self.activation.forward(&h);
            if let Some((s, b)) = &self.layers[i - 1].norm {
                h = h.layer_norm([h.size()[h.dim() - 1]], Some(s), Some(b), LN_EPS, false);
            }
            h = affine(&h, layer);
        }
        h
    }

    fn jvp_impl(&self, x: &Tensor, dx: &Tensor, tangent_grad: bool) -> (Tensor, Tensor) {
        let mut h = affine(x, &self.layers[0]);
        let mut dh = tangent(tangent_grad, || matmul(dx, &self.layers[0].weight));
        for (i, layer) in self.layers.iter().enumerate().skip(1) {
            let pre = h;
            h = self.activation.forward(&pre);
            dh = tangent(tangent_grad, || self.activation.derivative(&pre) * &dh);
            if let Some((s, b)) = &self.layers[i - 1].norm {
                let (y, dy) = layer_norm_jvp(&h, &dh, s, b, tangent_grad);
                h = y;
                dh = dy;
            }
            h = affine(&h, layer);
            dh = tangent(tangent_grad, || matmul(&dh, &layer.weight));
        }
        (h, dh)
    }
}

fn affine(x: &Tensor, layer: &Layer) -> Tensor {
    if x.dim() == 2 && MatmulPrecision::current() == MatmulPrecision::F32 {
        layer.bias.addmm(x, &layer.weight)
    } else {
        matmul(x, &layer.weight) + &layer.bias
    }
}

/// Runs a tangent computation with or without building an autograd graph.
pub(crate) fn tangent(with_grad: bool, f: impl FnOnce() -> Tensor) -> Tensor {
    if with_grad {
        f()
    } else {
        tch::no_grad(f)
    }
}

/// LayerNorm over the last dimension with its tangent:
/// `dx̂ = (dx − mean(dx) − x̂·mean(x̂·dx)) / σ`, `dy = scale·dx̂`.
pub(crate) fn layer_norm_jvp(
    x: &Tensor,
    dx: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    tangent_grad: bool,
) -> (Tensor, Tensor) {
    let mu = x.mean_dim(-1, true, x.kind());
    let centered = x - &mu;
    let sigma = (centered.square().mean_dim(-1, true, x.kind()) + LN_EPS).sqrt();
    let xhat = &centered / &sigma;
    let y = &xhat * scale + shift;
    // Inside no_grad the tangent ops record nothing, even on tensors that require grad.
    let dy = tangent(tangent_grad, || {
        let mean_dx = dx.mean_dim(-1, true, dx.kind());
        let mean_xdx = (&xhat * dx).mean_dim(-1, true, dx.kind());
        (dx - mean_dx - &xhat * mean_xdx) / &sigma * scale
    });
    (y, dy)
}

impl ForwardJvp for Mlp {
    fn forward_jvp(&self, x: &Tensor, dx: &Tensor) -> (Tensor, Tensor) {
        self.jvp_impl(x, dx, true)
    }

    fn forward_jvp_sg(&self, x: &Tensor, dx: &Tensor) -> (Tensor, Tensor) {
        self.jvp_impl(x, dx, false)
    }
}
