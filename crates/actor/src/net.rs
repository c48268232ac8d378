//! The conditional network every policy uses: an MLP on `[s, z, features(times)]`, where `s`
//! is the observation or, for point-cloud observations, its [`PointEncoder`] feature.

use mvp_nn::{ForwardJvp, Mlp, MlpConfig, TimeFeatures};
use tch::{nn, Tensor};

use crate::pointnet::{PointCloudConfig, PointEncoder};

/// `f(s, z, τ)` with `τ` a row of `time_cols` flow times (MVP: `[t, t − r]`; flow: `[t]`;
/// diffusion: `[k / K]`), each expanded by [`TimeFeatures`]. Output width = action-chunk width.
#[derive(Debug)]
pub struct CondNet {
    mlp: Mlp,
    time_features: TimeFeatures,
    encoder: Option<PointEncoder>,
}

impl CondNet {
    /// Builds the MLP for `obs_dim` state inputs, `flat_dim` noisy-action inputs and outputs,
    /// and `time_cols` scalar times; with `point_cloud`, the observations are encoded by a
    /// [`PointEncoder`] first (its parameters under `path / "points"`).
    ///
    /// # Panics
    /// When `point_cloud` names more points than `obs_dim` holds ([`check_point_cloud`] says so
    /// as an error first).
    pub fn new(
        path: &nn::Path,
        obs_dim: usize,
        flat_dim: usize,
        time_cols: usize,
        time_features: TimeFeatures,
        mlp: &MlpConfig,
        point_cloud: Option<PointCloudConfig>,
    ) -> Self {
        let encoder =
            point_cloud.map(|c| PointEncoder::new(&(path / "points"), obs_dim, c).unwrap_or_else(|e| panic!("{e}")));
        let s_dim = encoder.as_ref().map_or(obs_dim, PointEncoder::out_dim);
        let in_dim = s_dim + flat_dim + time_cols * time_features.dim_per_column();
        Self { mlp: Mlp::new(path, in_dim, flat_dim, mlp), time_features, encoder }
    }

    /// The state input `s` of the other methods for observations `obs [B, S]`: the
    /// observations themselves, or their point-cloud feature. Computed once per batch of
    /// observations, it serves every network call on them (a sampler's K steps, a loss's
    /// passes).
    pub fn encode(&self, obs: &Tensor) -> Tensor {
        match &self.encoder {
            Some(e) => e.forward(obs),
            None => obs.shallow_clone(),
        }
    }

    fn inputs(&self, s: &Tensor, z: &Tensor, times: &Tensor) -> Tensor {
        Tensor::cat(&[s, z, &self.time_features.forward(times)], 1)
    }

    /// `f(s, z, τ)` for `s = encode(obs)`, `z [B, D]`, `times [B, c]`.
    pub fn forward(&self, s: &Tensor, z: &Tensor, times: &Tensor) -> Tensor {
        self.mlp.forward(&self.inputs(s, z, times))
    }

    /// [`CondNet::forward`] and the activations of hidden layer `hidden`.
    pub fn forward_with_hidden(&self, s: &Tensor, z: &Tensor, times: &Tensor, hidden: usize) -> (Tensor, Tensor) {
        self.mlp.forward_with_hidden(&self.inputs(s, z, times), hidden)
    }

    /// The MLP, when its inputs are `[s, z, raw times]` (the layout of the native acting
    /// path).
    pub fn native(&self) -> Result<&Mlp, String> {
        if self.encoder.is_some() {
            return Err("native acting has no point-cloud encoder: point-cloud policies act with libtorch".into());
        }
        match self.time_features {
            TimeFeatures::Raw => Ok(&self.mlp),
            other => Err(format!("native acting supports raw time features only, not {other:?}")),
        }
    }

    /// `f` and its derivative along the input tangent `(0, dz, dtimes)`; the tangent is
    /// computed without an autograd graph (it feeds stop-gradient targets).
    pub fn forward_jvp_sg(
        &self,
        s: &Tensor,
        z: &Tensor,
        times: &Tensor,
        dz: &Tensor,
        dtimes: &Tensor,
    ) -> (Tensor, Tensor) {
        let (tf, dtf) = self.time_features.forward_jvp(times, dtimes);
        let x = Tensor::cat(&[s, z, &tf], 1);
        let dx = Tensor::cat(&[&s.zeros_like(), dz, &dtf], 1);
        self.mlp.forward_jvp_sg(&x, &dx)
    }
}

/// Whether observations of `obs_dim` numbers can begin with the points of `point_cloud`; the
/// error names the key.
pub fn check_point_cloud(obs_dim: usize, point_cloud: Option<PointCloudConfig>) -> Result<(), String> {
    match point_cloud {
        Some(c) if c.points == 0 || 3 * c.points > obs_dim => Err(format!(
            "agent.actor.point_cloud.points = {}: observations of {obs_dim} numbers cannot begin with that many xyz \
             points (expected 1 to {})",
            c.points,
            obs_dim / 3
        )),
        _ => Ok(()),
    }
}
