//! The critic: an ensemble of Q-networks over (state, action chunk), one batched module,
//! with Polyak-averaged target networks and Q-chunking's TD loss.
//!
//! `Q_j(s, a_{k..k+h})` estimates the return of executing the chunk open-loop from s. The TD
//! target is `R + γ^h · m · agg_j Q̄_j(s_{k+h}, a*)`, where `R` is the discounted reward over
//! the chunk, `m` the bootstrap mask and `a*` a chunk the agent selects (see the agent crate).
//! Depends on `mvp-nn`, `mvp-spec` (the [`Aggregate`] it shares with the native engine), tch,
//! `serde` and `anyhow`.
#![warn(missing_docs)]

use mvp_nn::{polyak_update, Activation, EnsembleMlp, MlpConfig};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

pub use mvp_spec::Aggregate;

/// [`Aggregate`] on tensors.
pub trait AggregateExt {
    /// Combines `q [E, ...]` over the first dimension.
    fn apply(self, q: &Tensor) -> Tensor;
}

impl AggregateExt for Aggregate {
    fn apply(self, q: &Tensor) -> Tensor {
        match self {
            Aggregate::Mean => q.mean_dim(0, false, q.kind()),
            Aggregate::Min => q.amin(0, false),
        }
    }
}

/// Settings of the critic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriticConfig {
    /// Each member's network (paper: 4×512, GELU, LayerNorm).
    pub network: MlpConfig,
    /// Number of ensemble members K (paper: 2).
    pub ensemble: usize,
    /// Combination of members in the TD target and in action selection.
    pub aggregate: Aggregate,
    /// Polyak rate τ of the target networks.
    pub tau: f64,
    /// Discount per environment step γ.
    pub gamma: f64,
}

impl Default for CriticConfig {
    fn default() -> Self {
        Self {
            network: MlpConfig { hidden: vec![512; 4], activation: Activation::Gelu, layer_norm: true },
            ensemble: 2,
            aggregate: Aggregate::Mean,
            tau: 0.005,
            gamma: 0.99,
        }
    }
}

/// Q-ensemble with its target copy.
#[derive(Debug)]
pub struct Critic {
    /// Online parameters (trained).
    pub vs: VarStore,
    /// Target parameters (Polyak averages of the online ones; never trained).
    pub target_vs: VarStore,
    online: EnsembleMlp,
    target: EnsembleMlp,
    config: CriticConfig,
}

/// Scalars from a critic loss, as detached tensors.
pub type Metrics = Vec<(&'static str, Tensor)>;

impl Critic {
    /// Builds online and target ensembles on `[s, chunk]` inputs; the target starts as a copy.
    pub fn new(device: Device, obs_dim: usize, chunk_dim: usize, config: CriticConfig) -> Self {
        let vs = VarStore::new(device);
        let mut target_vs = VarStore::new(device);
        let online = EnsembleMlp::new(&vs.root(), config.ensemble, obs_dim + chunk_dim, 1, &config.network);
        let target = EnsembleMlp::new(&target_vs.root(), config.ensemble, obs_dim + chunk_dim, 1, &config.network);
        target_vs.copy(&vs).expect("target and online critics have the same variables");
        target_vs.freeze();
        Self { vs, target_vs, online, target, config }
    }

    /// The settings.
    pub fn config(&self) -> &CriticConfig {
        &self.config
    }

    /// Online values `[E, B]` of `obs [B, S]`, `chunks [B, D]`.
    pub fn q(&self, obs: &Tensor, chunks: &Tensor) -> Tensor {
        self.online.forward(&Tensor::cat(&[obs, chunks], 1)).squeeze_dim(-1)
    }

    /// Target values `[E, B]`, without a graph.
    pub fn q_target(&self, obs: &Tensor, chunks: &Tensor) -> Tensor {
        tch::no_grad(|| self.target.forward(&Tensor::cat(&[obs, chunks], 1)).squeeze_dim(-1))
    }

    /// Aggregated online value `[B]` (for scoring candidates), without a graph.
    pub fn score(&self, obs: &Tensor, chunks: &Tensor) -> Tensor {
        tch::no_grad(|| self.config.aggregate.apply(&self.q(obs, chunks)))
    }

    /// The chunked TD target `R + γ^h · m · next_value`, detached.
    pub fn td_target(&self, rewards: &Tensor, masks: &Tensor, next_value: &Tensor, horizon: usize) -> Tensor {
        (rewards + self.config.gamma.powi(horizon as i32) * masks * next_value).detach()
    }

    /// The TD loss of the online ensemble against `target [B]`, counting a sample only when
    /// the last step of its chunk is valid (`last_valid [B]`), as QC does: windows that cross
    /// an episode end drop out. Only the online critic receives gradients.
    pub fn td_loss(&self, obs: &Tensor, chunks: &Tensor, target: &Tensor, last_valid: &Tensor) -> (Tensor, Metrics) {
        let q = self.q(obs, chunks); // [E, B]
        let err = (&q - target.unsqueeze(0)).square() * last_valid.unsqueeze(0);
        let loss = err.mean(Kind::Float);
        let metrics = vec![
            ("critic/loss", loss.detach()),
            ("critic/q_mean", q.detach().mean(Kind::Float)),
            ("critic/q_max", q.detach().max()),
            ("critic/q_min", q.detach().min()),
            // The stored chunks as selection scores them (ensemble aggregate): the point of
            // comparison for the agent's `select/q_selected`.
            ("critic/q_data", self.config.aggregate.apply(&q.detach()).mean(Kind::Float)),
            ("critic/target_mean", target.mean(Kind::Float)),
        ];
        (loss, metrics)
    }

    /// The target members (what values the selected chunk in the TD target).
    pub fn target(&self) -> &EnsembleMlp {
        &self.target
    }

    /// The online members (what acting scores candidates with).
    pub fn online(&self) -> &EnsembleMlp {
        &self.online
    }

    /// Moves the target networks toward the online ones by τ.
    pub fn soft_update(&mut self) {
        polyak_update(&self.target_vs, &self.vs, self.config.tau);
    }
}
