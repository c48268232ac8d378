//! DDPM ε-prediction policy (Ho et al., arXiv 2006.11239) with K denoising steps, the
//! multi-step diffusion baseline (as in Diffusion-QL / IDQL-style actors).
//!
//! Choices: the cosine noise schedule (Nichol & Dhariwal, arXiv 2102.09672), training and
//! sampling with the same K, and the predicted clean chunk clipped to [−1, 1] at every step
//! (the `clip_sample` of common diffusion-policy code).

use mvp_nn::{MlpConfig, TimeFeatures};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::pointnet::PointCloudConfig;
use crate::{masked_sq_err, ChunkShape, CondNet, GenerativePolicy, Metrics};

/// Settings of the diffusion policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionConfig {
    /// The network (same as MVP's by default).
    pub network: MlpConfig,
    /// Observations that begin with a point cloud: encode it DP3-style first (none: the
    /// observation goes to the network as it is).
    pub point_cloud: Option<PointCloudConfig>,
    /// Denoising steps K, for training and sampling.
    pub steps: usize,
    /// Features of the step input k / K.
    pub time_features: TimeFeatures,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self { network: MlpConfig::default(), point_cloud: None, steps: 10, time_features: TimeFeatures::Raw }
    }
}

/// DDPM policy (see the module docs).
#[derive(Debug)]
pub struct DiffusionPolicy {
    net: CondNet,
    shape: ChunkShape,
    config: DiffusionConfig,
    /// ᾱ_k for k = 0..=K (ᾱ_0 = 1), on the host for sampling.
    alpha_bar: Vec<f64>,
    /// The same as a tensor on the network's device, for training batches.
    alpha_bar_t: Tensor,
}

/// Cosine schedule: ᾱ_k for k = 0..=K, with each β_k = 1 − ᾱ_k/ᾱ_{k−1} capped at 0.999.
pub fn cosine_alpha_bar(steps: usize) -> Vec<f64> {
    let s = 0.008;
    let f = |tau: f64| ((tau + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2).cos().powi(2);
    let mut out = vec![1.0];
    for k in 1..=steps {
        let raw = f(k as f64 / steps as f64) / f(0.0);
        let beta = (1.0 - raw / f((k - 1) as f64 / steps as f64) * f(0.0)).min(0.999);
        out.push(out[k - 1] * (1.0 - beta));
    }
    out
}

impl DiffusionPolicy {
    /// Builds the noise-prediction network under `path`.
    pub fn new(path: &nn::Path, obs_dim: usize, shape: ChunkShape, config: DiffusionConfig) -> Self {
        let net =
            CondNet::new(path, obs_dim, shape.flat_dim(), 1, config.time_features, &config.network, config.point_cloud);
        let alpha_bar = cosine_alpha_bar(config.steps.max(1));
        let alpha_bar_t = Tensor::from_slice(&alpha_bar).to_kind(Kind::Float).to_device(path.device());
        Self { net, shape, config, alpha_bar, alpha_bar_t }
    }

    /// ε̂ at step k for `s = net.encode(obs)`.
    fn eps_hat(&self, s: &Tensor, xk: &Tensor, k: usize) -> Tensor {
        let b = xk.size()[0];
        let tau = Tensor::full([b, 1], k as f64 / self.config.steps.max(1) as f64, (xk.kind(), xk.device()));
        self.net.forward(s, xk, &tau)
    }
}

impl GenerativePolicy for DiffusionPolicy {
    fn loss(&self, obs: &Tensor, actions: &Tensor, valid: Option<&Tensor>) -> (Tensor, Metrics) {
        let (b, dev) = (actions.size()[0], actions.device());
        let k_max = self.config.steps.max(1) as i64;
        let k = Tensor::randint_low(1, k_max + 1, [b, 1], (Kind::Int64, dev));
        let ab = self.alpha_bar_t.index_select(0, &k.view([-1])).view([b, 1]).to_kind(actions.kind());
        let eps = actions.randn_like();
        let xk = ab.sqrt() * actions + (-&ab + 1.0).sqrt() * &eps;
        let tau = k.to_kind(actions.kind()) / k_max as f64;
        let loss = masked_sq_err(&(self.net.forward(&self.net.encode(obs), &xk, &tau) - eps), valid, self.shape).0;
        (loss.shallow_clone(), vec![("actor/diffusion_loss", loss.detach()), ("actor/loss", loss.detach())])
    }

    fn sample(&self, obs: &Tensor, noise: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let mut x = noise.shallow_clone();
            let s = self.net.encode(obs);
            for k in (1..=self.config.steps.max(1)).rev() {
                let (ab, ab_prev) = (self.alpha_bar[k], self.alpha_bar[k - 1]);
                let beta = 1.0 - ab / ab_prev;
                let eps = self.eps_hat(&s, &x, k);
                let x0 = ((&x - eps * (1.0 - ab).sqrt()) / ab.sqrt()).clamp(-1.0, 1.0);
                let mean = x0 * (ab_prev.sqrt() * beta / (1.0 - ab))
                    + &x * ((1.0 - beta).sqrt() * (1.0 - ab_prev) / (1.0 - ab));
                x = if k > 1 {
                    let var = beta * (1.0 - ab_prev) / (1.0 - ab);
                    mean + x.randn_like() * var.sqrt()
                } else {
                    mean
                };
            }
            x.clamp(-1.0, 1.0)
        })
    }

    fn network_calls(&self) -> usize {
        self.config.steps.max(1)
    }

    fn shape(&self) -> ChunkShape {
        self.shape
    }
}
