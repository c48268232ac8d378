//! An ensemble of E MLPs as one batched module.

use tch::{nn, Tensor};

use crate::mlp::{xavier_uniform, Activation, MlpConfig, LN_EPS};

/// E independent MLPs with identical shapes, evaluated together: weights are stacked as
/// `[E, in, out]` and applied with one batched matmul per layer, so an ensemble of critics
/// costs one kernel call per layer instead of E.
///
/// Parameters are named `l{i}.weight [E,in,out]`, `l{i}.bias [E,1,out]`,
/// `l{i}.ln_scale`/`l{i}.ln_shift [E,1,out]`.
#[derive(Debug)]
pub struct EnsembleMlp {
    layers: Vec<(Tensor, Tensor, Option<(Tensor, Tensor)>)>,
    activation: Activation,
    members: usize,
}

impl EnsembleMlp {
    /// Builds `members` MLPs from `in_dim` to `out_dim`, each initialised independently.
    pub fn new(path: &nn::Path, members: usize, in_dim: usize, out_dim: usize, config: &MlpConfig) -> Self {
        let e = members as i64;
        let mut widths = vec![in_dim];
        widths.extend(&config.hidden);
        widths.push(out_dim);
        let n = widths.len() - 1;
        let layers = (0..n)
            .map(|i| {
                let (fi, fo) = (widths[i], widths[i + 1]);
                let p = path / format!("l{i}");
                let w = p.var("weight", &[e, fi as i64, fo as i64], xavier_uniform(fi, fo));
                let b = p.var("bias", &[e, 1, fo as i64], nn::Init::Const(0.0));
                let norm = (config.layer_norm && i + 1 < n).then(|| {
                    (
                        p.var("ln_scale", &[e, 1, fo as i64], nn::Init::Const(1.0)),
                        p.var("ln_shift", &[e, 1, fo as i64], nn::Init::Const(0.0)),
                    )
                });
                (w, b, norm)
            })
            .collect();
        Self { layers, activation: config.activation, members }
    }

    /// Number of members E.
    pub fn members(&self) -> usize {
        self.members
    }

    /// Forward pass. `x` is `[B, in]` (the same input for every member) or `[E, B, in]`
    /// (one input per member); the output is `[E, B, out]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, (w, b, _)) in self.layers.iter().enumerate() {
            if i > 0 {
                h = self.activation.forward(&h);
                if let Some((s, sh)) = &self.layers[i - 1].2 {
                    let d = h.size()[2];
                    h = h.layer_norm([d], None::<Tensor>, None::<Tensor>, LN_EPS, false) * s + sh;
                }
            }
            h = if h.dim() == 3 { b.baddbmm(&h, w, 1.0, 1.0) } else { h.matmul(w) + b };
        }
        h
    }
}
