//! Conditional generative policies over flattened action chunks.
//!
//! Four implementations of one interface, [`GenerativePolicy`]:
//! - [`MeanVelocityPolicy`] (MVP): one-step generation from a mean-velocity network trained with
//!   the MeanFlow identity plus the instantaneous velocity constraint (IVC);
//! - [`FlowPolicy`]: flow matching with K Euler steps (QC and BFN use K = 10);
//! - [`DiffusionPolicy`]: DDPM ε-prediction with K denoising steps;
//! - [`FqlPolicy`]: FQL / QC-FQL, a one-step policy distilled from a cloned flow while it
//!   climbs the critic (the only one trained through the critic: [`GenerativePolicy::q_term`]).
//!
//! All share one conditional network shape ([`CondNet`]: an MLP on `[s, z, time features]`,
//! `s` encoded by DP3's point-cloud encoder first where observations are point clouds) and
//! the noise convention of MeanFlow: `z_t = (1 − t)·x + t·ε`, data at t = 0, noise at t = 1.
//! Samples are clipped to [−1, 1]. [`GenerativePolicy::native`] describes a policy for the
//! libtorch-free engine without depending on it (the agent does the export).
//!
//! Depends on `mvp-nn`, `mvp-spec` (the sampler kinds it shares with the native engine), tch,
//! `serde`/`serde_json` and `anyhow`.
#![warn(missing_docs)]

mod diffusion;
pub mod expressiveness;
mod flow;
mod fql;
mod mvp;
mod net;
mod pointnet;

pub use diffusion::{DiffusionConfig, DiffusionPolicy};
pub use flow::{FlowConfig, FlowPolicy};
pub use fql::{FqlConfig, FqlPolicy};
pub use mvp::{dispersive_loss, MeanVelocityPolicy, MvpConfig};
pub use net::{check_point_cloud, CondNet};
pub use pointnet::{PointCloudConfig, PointEncoder};

use mvp_nn::Mlp;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Scalars a loss reports, as detached 0-d tensors (read them only when logging).
pub type Metrics = Vec<(&'static str, Tensor)>;

/// The shape of what a policy generates: a chunk of `horizon` actions of `action_dim` each,
/// flattened to `horizon · action_dim` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkShape {
    /// Steps per chunk (h).
    pub horizon: usize,
    /// Dimensions per action.
    pub action_dim: usize,
}

impl ChunkShape {
    /// `horizon · action_dim`.
    pub fn flat_dim(&self) -> usize {
        self.horizon * self.action_dim
    }
}

/// A conditional generative policy `π(a | s)` over flattened action chunks.
pub trait GenerativePolicy {
    /// The behaviour-cloning loss on a batch: `obs [B, S]`, `actions [B, h·A]` and an optional
    /// per-step `valid [B, h]` mask (steps after an episode end inside a chunk do not count).
    /// The loss trains only this policy's network; no critic gradient is involved.
    fn loss(&self, obs: &Tensor, actions: &Tensor, valid: Option<&Tensor>) -> (Tensor, Metrics);

    /// Generates one chunk per row of `obs [B, S]` from the starting noise `noise [B, h·A]`,
    /// clipped to [−1, 1]. Runs without building an autograd graph.
    fn sample(&self, obs: &Tensor, noise: &Tensor) -> Tensor;

    /// The part of the loss that is trained through the critic, for policies that have one
    /// (FQL): given `q`, which values chunks `[B, h·A]` at `obs` with the critic (the mean over
    /// its members, `[B]`, with a graph), the term to add to [`GenerativePolicy::loss`] and its
    /// metrics. `None` (the default): the policy learns from its generative loss alone.
    fn q_term(&self, obs: &Tensor, q: &dyn Fn(&Tensor) -> Tensor) -> Option<(Tensor, Metrics)> {
        let _ = (obs, q);
        None
    }

    /// Network evaluations per generated chunk.
    fn network_calls(&self) -> usize;

    /// The chunk shape generated.
    fn shape(&self) -> ChunkShape;

    /// The network and sampler for the libtorch-free acting path (exported by the agent), or
    /// why this policy has none.
    fn native(&self) -> Result<NativeActor<'_>, String> {
        Err("this policy has no native acting path (MVP and flow actors with raw time features do)".into())
    }

    /// The loss in the form the native training kernels compute, or why it has none:
    /// a regression of the network on `[s, z, raw times]`, with the randomness of one batch
    /// drawn by [`GenerativePolicy::loss_draws`].
    fn native_loss(&self) -> Result<NativeLoss, String> {
        Err("this policy's loss has no native form (MVP and flow losses do)".into())
    }

    /// The noise and times of one loss evaluation on `actions [B, h·A]`, drawn from libtorch's
    /// generator exactly as [`GenerativePolicy::loss`] draws them (the same stream follows),
    /// for losses with a [`GenerativePolicy::native_loss`] (None for the others).
    fn loss_draws(&self, actions: &Tensor) -> Option<LossDraws> {
        let _ = actions;
        None
    }
}

/// A policy loss the native kernels compute (`agent.actor_engine`). With `x` the data chunk,
/// `ε` the noise, `z = (1 − t)·x + t·ε` and `v = ε − x`, masked means over every chunk
/// number as in the libtorch losses:
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NativeLoss {
    /// Flow matching: `‖f(s, z, t) − v‖²`.
    Flow,
    /// MeanFlow with the IVC: `‖u − sg(v − (t − r)·du/dt)‖² + λ·‖f(s, z, t, 0) − v‖²`, with
    /// `u = f(s, z, t, t − r)` and `du/dt` its derivative along `(dz, dt, d(t − r)) = (v, 1, 1)`.
    MeanFlow {
        /// λ, the IVC's weight.
        ivc_weight: f64,
    },
}

/// The randomness of one loss evaluation: noise `[B, h·A]` and times `[B, 1]`.
#[derive(Debug)]
pub struct LossDraws {
    /// ε.
    pub eps: Tensor,
    /// t.
    pub t: Tensor,
    /// r ≤ t (MeanFlow losses).
    pub r: Option<Tensor>,
}

/// What the libtorch-free acting path needs of a policy: its network, whose inputs are
/// `[s, z, raw times]`, and how it is sampled.
#[derive(Debug, Clone, Copy)]
pub struct NativeActor<'a> {
    /// The network.
    pub net: &'a Mlp,
    /// The sampler.
    pub sampler: NativeSampler,
}

// How a native actor's network is sampled: defined in mvp-spec (as `ActorKind`), shared with
// the native engine.
pub use mvp_spec::ActorKind as NativeSampler;

/// Which policy to build, with its settings. In TOML: `kind = "mvp" | "flow" | "diffusion" | "fql"`
/// next to the kind's own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ActorConfig {
    /// Mean velocity policy with IVC.
    Mvp(MvpConfig),
    /// Flow matching, K Euler steps.
    Flow(FlowConfig),
    /// DDPM diffusion, K steps.
    Diffusion(DiffusionConfig),
    /// FQL: a one-step policy distilled from a cloned flow, trained through the critic.
    Fql(FqlConfig),
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig::Mvp(MvpConfig::default())
    }
}

impl ActorConfig {
    /// Builds the policy's network under `path`.
    pub fn build(&self, path: &nn::Path, obs_dim: usize, shape: ChunkShape) -> Box<dyn GenerativePolicy> {
        match self {
            ActorConfig::Mvp(c) => Box::new(MeanVelocityPolicy::new(path, obs_dim, shape, c.clone())),
            ActorConfig::Flow(c) => Box::new(FlowPolicy::new(path, obs_dim, shape, c.clone())),
            ActorConfig::Diffusion(c) => Box::new(DiffusionPolicy::new(path, obs_dim, shape, c.clone())),
            ActorConfig::Fql(c) => Box::new(FqlPolicy::new(path, obs_dim, shape, c.clone())),
        }
    }

    /// The point-cloud encoder's settings, if the actor has one.
    pub fn point_cloud(&self) -> Option<PointCloudConfig> {
        match self {
            ActorConfig::Mvp(c) => c.point_cloud,
            ActorConfig::Flow(c) => c.point_cloud,
            ActorConfig::Diffusion(c) => c.point_cloud,
            ActorConfig::Fql(c) => c.point_cloud,
        }
    }

    /// A short name for tables: `mvp(λ=1)`, `flow(K=10)`, `diffusion(K=10)`.
    pub fn label(&self) -> String {
        match self {
            ActorConfig::Mvp(c) if c.sampling_steps == 1 => format!("mvp(λ={})", c.ivc_weight),
            ActorConfig::Mvp(c) => format!("mvp(λ={}, K={})", c.ivc_weight, c.sampling_steps),
            ActorConfig::Flow(c) => format!("flow(K={})", c.steps),
            ActorConfig::Diffusion(c) => format!("diffusion(K={})", c.steps),
            ActorConfig::Fql(c) => format!("fql(α={})", c.alpha),
        }
    }
}

/// How flow times are drawn during training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimeSampler {
    /// `sigmoid(N(mean, std))` (MeanFlow's logit-normal).
    LogitNormal {
        /// Mean of the normal before the sigmoid.
        mean: f64,
        /// Standard deviation of the normal before the sigmoid.
        std: f64,
    },
    /// Uniform on [0, 1].
    Uniform,
}

impl TimeSampler {
    /// `n` draws as `[n, 1]`, on the device and kind of `like`.
    pub fn sample(&self, n: i64, like: &Tensor) -> Tensor {
        let opts = (like.kind(), like.device());
        match *self {
            TimeSampler::LogitNormal { mean, std } => (Tensor::randn([n, 1], opts) * std + mean).sigmoid(),
            TimeSampler::Uniform => Tensor::rand([n, 1], opts),
        }
    }
}

/// Masked mean of squared errors, QC-style: `err [B, h·A]`, `valid [B, h]` expanded over the
/// action dimensions; the mean runs over all B·h·A entries (masked ones count as zero), as in
/// QC's actor loss. Returns the per-sample sums too, for adaptive weighting.
pub(crate) fn masked_sq_err(err: &Tensor, valid: Option<&Tensor>, shape: ChunkShape) -> (Tensor, Tensor) {
    let sq = err.square();
    let sq = match valid {
        Some(v) => {
            let b = sq.size()[0];
            let m =
                v.to_kind(sq.kind()).unsqueeze(-1).expand([b, shape.horizon as i64, shape.action_dim as i64], false);
            sq * m.reshape([b, -1])
        }
        None => sq,
    };
    let per_sample = sq.sum_dim_intlist(-1, false, sq.kind());
    (sq.mean(sq.kind()), per_sample)
}
