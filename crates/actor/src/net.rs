//! The conditional network every policy uses: an MLP on `[s, z, features(times)]`.

use mvp_nn::{ForwardJvp, Mlp, MlpConfig, TimeFeatures};
use tch::{nn, Tensor};

/// `f(s, z, τ)` with `τ` a row of `time_cols` flow times (MVP: `[t, t − r]`; flow: `[t]`;
/// diffusion: `[k / K]`), each expanded by [`TimeFeatures`]. Output width = action-chunk width.
#[derive(Debug)]
pub struct CondNet {
    mlp: Mlp,
    time_features: TimeFeatures,
}

impl CondNet {
    /// Builds the MLP for `obs_dim` state inputs, `flat_dim` noisy-action inputs and outputs,
    /// and `time_cols` scalar times.
    pub fn new(
        path: &nn::Path,
        obs_dim: usize,
        flat_dim: usize,
        time_cols: usize,
        time_features: TimeFeatures,
        mlp: &MlpConfig,
    ) -> Self {
        let in_dim = obs_dim + flat_dim + time_cols * time_features.dim_per_column();
        Self { mlp: Mlp::new(path, in_dim, flat_dim, mlp), time_features }
    }

    /// `f(s, z, τ)` for `obs [B, S]`, `z [B, D]`, `times [B, c]`.
    pub fn forward(&self, obs: &Tensor, z: &Tensor, times: &Tensor) -> Tensor {
        let x = Tensor::cat(&[obs, z, &self.time_features.forward(times)], 1);
        self.mlp.forward(&x)
    }

    /// [`CondNet::forward`] and the activations of hidden layer `hidden`.
    pub fn forward_with_hidden(&self, obs: &Tensor, z: &Tensor, times: &Tensor, hidden: usize) -> (Tensor, Tensor) {
        let x = Tensor::cat(&[obs, z, &self.time_features.forward(times)], 1);
        self.mlp.forward_with_hidden(&x, hidden)
    }

    /// The MLP, when its inputs are `[s, z, raw times]` (the layout of the native acting
    /// path).
    pub fn native(&self) -> Result<&Mlp, String> {
        match self.time_features {
            TimeFeatures::Raw => Ok(&self.mlp),
            other => Err(format!("native acting supports raw time features only, not {other:?}")),
        }
    }

    /// `f` and its derivative along the input tangent `(0, dz, dtimes)`; the tangent is
    /// computed without an autograd graph (it feeds stop-gradient targets).
    pub fn forward_jvp_sg(
        &self,
        obs: &Tensor,
        z: &Tensor,
        times: &Tensor,
        dz: &Tensor,
        dtimes: &Tensor,
    ) -> (Tensor, Tensor) {
        let (tf, dtf) = self.time_features.forward_jvp(times, dtimes);
        let x = Tensor::cat(&[obs, z, &tf], 1);
        let dx = Tensor::cat(&[&obs.zeros_like(), dz, &dtf], 1);
        self.mlp.forward_jvp_sg(&x, &dx)
    }
}
