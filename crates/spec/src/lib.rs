//! The types both sides of the deployment boundary share, defined once: the training crates
//! (`mvp-nn`, `mvp-actor`, on libtorch) describe their networks with them and the native engine
//! (`mvp-infer`, without libtorch) runs what they describe, so exporting a trained agent passes
//! them across unchanged.
//!
//! A leaf of the workspace: it depends on `serde` only — never on libtorch or on another mvp
//! crate, so either side can use it without reaching the other.
#![warn(missing_docs)]

use serde::{Deserialize, Serialize};

/// Nonlinearity between layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Exact (erf) GELU, `x·Φ(x)`, the default of FQL/QC and of the MVP paper (the native
    /// engine's erf has an absolute error ≤ 1.5e-7).
    #[default]
    Gelu,
    /// SiLU / swish, `x·sigmoid(x)`.
    Silu,
    /// ReLU, `max(x, 0)`.
    Relu,
}

/// What an actor network computes and how samples are drawn from it (the training side calls
/// it the native sampler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    /// The mean velocity policy `u(s, z, r, t)` on inputs `[s, z, t, t − r]`, in `steps` jumps;
    /// `steps` = 1 is the one-step policy `a = ε − u(s, ε, 0, 1)`.
    MeanVelocity {
        /// Network evaluations per sample.
        steps: usize,
    },
    /// A flow-matching velocity `v(s, z, t)` on inputs `[s, z, t]`, integrated with `steps`
    /// Euler steps from t = 1 to 0 (QC: 10).
    Flow {
        /// Euler steps.
        steps: usize,
    },
}

impl ActorKind {
    /// Network evaluations per sample (0 counts as 1).
    pub fn steps(self) -> usize {
        match self {
            ActorKind::MeanVelocity { steps } | ActorKind::Flow { steps } => steps.max(1),
        }
    }

    /// The time columns after `[s, z]` in the network's input: `t, t − r` (2) for a mean
    /// velocity policy, `t` (1) for a flow.
    pub fn time_cols(self) -> usize {
        match self {
            ActorKind::MeanVelocity { .. } => 2,
            ActorKind::Flow { .. } => 1,
        }
    }
}

/// How the critic ensemble's members' values are combined (in the TD target and in selection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// The mean over members (QC's default).
    #[default]
    Mean,
    /// The minimum over members (pessimistic, as in clipped double Q-learning).
    Min,
}
