//! Flow matching with K Euler steps: the actor of QC (arXiv 2507.07969) and BFN.
//!
//! Same convention as the mean velocity policy: `z_t = (1 − t)·x + t·ε`, the network predicts
//! the velocity `v = ε − x`, and sampling integrates from t = 1 (noise) to t = 0 (action).
//! Differs from QC's code only in the direction of time (QC integrates 0 → 1 from noise); the
//! two are the same model under t ↦ 1 − t.

use mvp_nn::{MlpConfig, TimeFeatures};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::pointnet::PointCloudConfig;
use crate::{
    masked_sq_err, ChunkShape, CondNet, GenerativePolicy, LossDraws, Metrics, NativeActor, NativeLoss, NativeSampler,
    TimeSampler,
};

/// Settings of the flow-matching policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    /// The network (same as MVP's by default).
    pub network: MlpConfig,
    /// Observations that begin with a point cloud: encode it DP3-style first (none: the
    /// observation goes to the network as it is).
    pub point_cloud: Option<PointCloudConfig>,
    /// Euler steps at sampling time (QC/BFN: 10; 1 is the one-step ablation).
    pub steps: usize,
    /// Distribution of training times (QC: uniform).
    pub time_sampler: TimeSampler,
    /// Features of the time input.
    pub time_features: TimeFeatures,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            network: MlpConfig::default(),
            point_cloud: None,
            steps: 10,
            time_sampler: TimeSampler::Uniform,
            time_features: TimeFeatures::Raw,
        }
    }
}

/// Flow-matching policy (see the module docs).
#[derive(Debug)]
pub struct FlowPolicy {
    net: CondNet,
    shape: ChunkShape,
    config: FlowConfig,
}

impl FlowPolicy {
    /// Builds the velocity network under `path`.
    pub fn new(path: &nn::Path, obs_dim: usize, shape: ChunkShape, config: FlowConfig) -> Self {
        let net =
            CondNet::new(path, obs_dim, shape.flat_dim(), 1, config.time_features, &config.network, config.point_cloud);
        Self { net, shape, config }
    }

    /// The velocity `v_θ(s, z, t)`.
    pub fn velocity(&self, obs: &Tensor, z: &Tensor, t: &Tensor) -> Tensor {
        self.net.forward(&self.net.encode(obs), z, t)
    }

    /// The randomness of one loss evaluation on `actions`: noise ε, then the times t.
    fn draws(&self, actions: &Tensor) -> (Tensor, Tensor) {
        let eps = actions.randn_like();
        (eps, self.config.time_sampler.sample(actions.size()[0], actions))
    }

    /// The flow-matching loss for given data, noise and times `t [B, 1]`.
    pub fn loss_given(&self, obs: &Tensor, x: &Tensor, valid: Option<&Tensor>, eps: &Tensor, t: &Tensor) -> Tensor {
        let z = (1.0 - t) * x + t * eps;
        masked_sq_err(&(self.velocity(obs, &z, t) - (eps - x)), valid, self.shape).0
    }
}

impl GenerativePolicy for FlowPolicy {
    fn loss(&self, obs: &Tensor, actions: &Tensor, valid: Option<&Tensor>) -> (Tensor, Metrics) {
        let (eps, t) = self.draws(actions);
        let loss = self.loss_given(obs, actions, valid, &eps, &t);
        (loss.shallow_clone(), vec![("actor/flow_loss", loss.detach()), ("actor/loss", loss.detach())])
    }

    fn sample(&self, obs: &Tensor, noise: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let k = self.config.steps.max(1);
            let b = noise.size()[0];
            let mut z = noise.copy(); // updated in place below; the caller's noise stays as it was
            let s = self.net.encode(obs);
            for i in (1..=k).rev() {
                let t = Tensor::full([b, 1], i as f64 / k as f64, (noise.kind(), noise.device()));
                let v = self.net.forward(&s, &z, &t);
                z -= v * (1.0 / k as f64);
            }
            z.clamp(-1.0, 1.0)
        })
    }

    fn network_calls(&self) -> usize {
        self.config.steps.max(1)
    }

    fn native_loss(&self) -> Result<NativeLoss, String> {
        self.net.native()?;
        Ok(NativeLoss::Flow)
    }

    fn loss_draws(&self, actions: &Tensor) -> Option<LossDraws> {
        let (eps, t) = self.draws(actions);
        Some(LossDraws { eps, t, r: None })
    }

    fn native(&self) -> Result<NativeActor<'_>, String> {
        Ok(NativeActor { net: self.net.native()?, sampler: NativeSampler::Flow { steps: self.config.steps.max(1) } })
    }

    fn shape(&self) -> ChunkShape {
        self.shape
    }
}
