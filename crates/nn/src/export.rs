//! Conversion of trained networks into `mvp-infer`'s plain weights (host f32 copies).

use mvp_infer::{LayerWeights, MlpWeights};
use tch::{Device, Kind, Tensor};

use crate::mlp::{Activation, Layer};
use crate::{EnsembleMlp, Mlp};

fn host(t: &Tensor) -> Vec<f32> {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1]);
    Vec::<f32>::try_from(&t).expect("a float tensor converts to Vec<f32>")
}

fn activation(a: Activation) -> mvp_infer::Activation {
    match a {
        Activation::Gelu => mvp_infer::Activation::Gelu,
        Activation::Silu => mvp_infer::Activation::Silu,
        Activation::Relu => mvp_infer::Activation::Relu,
    }
}

/// Layer `l` of ensemble member `member` (`None`: a plain MLP).
fn layer(l: &Layer, member: Option<i64>) -> LayerWeights {
    let pick = |t: &Tensor| match member {
        Some(e) => t.select(0, e),
        None => t.shallow_clone(),
    };
    let w = pick(&l.weight);
    let (in_dim, out_dim) = w.size2().expect("a layer weight is [in, out]");
    LayerWeights {
        in_dim: in_dim as usize,
        out_dim: out_dim as usize,
        weight: host(&w),
        bias: host(&pick(&l.bias)),
        norm: l.norm.as_ref().map(|(s, b)| (host(&pick(s)), host(&pick(b)))),
    }
}

impl Mlp {
    /// The current parameters as plain weights.
    pub fn export(&self) -> MlpWeights {
        MlpWeights {
            layers: self.layers.iter().map(|l| layer(l, None)).collect(),
            activation: activation(self.activation),
        }
    }
}

impl EnsembleMlp {
    /// The current parameters of every member as plain weights.
    pub fn export(&self) -> Vec<MlpWeights> {
        (0..self.members() as i64)
            .map(|e| MlpWeights {
                layers: self.layers.iter().map(|l| layer(l, Some(e))).collect(),
                activation: activation(self.activation),
            })
            .collect()
    }
}
