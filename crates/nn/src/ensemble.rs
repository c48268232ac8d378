//! An ensemble of E MLPs as one batched module.

use tch::{nn, Tensor};

use crate::mlp::{build_layers, Activation, ActivationExt, Layer, MlpConfig, LN_EPS};
use crate::precision::{matmul, MatmulPrecision};

/// E independent MLPs with identical shapes, evaluated together: weights are stacked as
/// `[E, in, out]` and applied with one batched matmul per layer, so an ensemble of critics
/// costs one kernel call per layer instead of E.
///
/// Parameters are named `l{i}.weight [E,in,out]`, `l{i}.bias [E,1,out]`,
/// `l{i}.ln_scale`/`l{i}.ln_shift [E,1,out]`.
#[derive(Debug)]
pub struct EnsembleMlp {
    pub(crate) layers: Vec<Layer>,
    pub(crate) activation: Activation,
    members: usize,
}

impl EnsembleMlp {
    /// Builds `members` MLPs from `in_dim` to `out_dim`, each initialised independently.
    pub fn new(path: &nn::Path, members: usize, in_dim: usize, out_dim: usize, config: &MlpConfig) -> Self {
        let layers = build_layers(path, in_dim, out_dim, config, Some(members));
        Self { layers, activation: config.activation, members }
    }

    /// Number of members E.
    pub fn members(&self) -> usize {
        self.members
    }

    /// The layers, input first; every tensor has the member dimension first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The hidden activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Forward pass. `x` is `[B, in]` (the same input for every member) or `[E, B, in]`
    /// (one input per member); the output is `[E, B, out]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let (w, b) = (&layer.weight, &layer.bias);
            if i > 0 {
                h = self.activation.forward(&h);
                if let Some((s, sh)) = &self.layers[i - 1].norm {
                    let d = h.size()[2];
                    h = h.layer_norm([d], None::<Tensor>, None::<Tensor>, LN_EPS, false) * s + sh;
                }
            }
            h = if h.dim() == 3 && MatmulPrecision::current() == MatmulPrecision::F32 {
                b.baddbmm(&h, w, 1.0, 1.0)
            } else {
                matmul(&h, w) + b
            };
        }
        h
    }
}
