//! The point-cloud encoder of DP3 and MP1: observations that begin with `P` xyz points (a
//! fixed-size cloud from one depth camera, `mvp_envs.pointcloud`) followed by the agent's own
//! state are turned into a 128-d feature before the policy network sees them.
//!
//! Points: a per-point MLP 3 → 64 → 128 → 256 (each `Linear → LayerNorm → ReLU`), max-pooled
//! over the points (so the order of the points does not matter), then `Linear(256, 64) →
//! LayerNorm`. State: `Linear(S, 64) → ReLU → Linear(64, 64)`. The feature is both, side by
//! side.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

/// Where the points are in an observation (`agent.actor.point_cloud`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointCloudConfig {
    /// Points at the start of each observation (3 numbers each); the rest is the agent's
    /// state (MP1: 512).
    pub points: usize,
}

const POINT_WIDTHS: [i64; 4] = [3, 64, 128, 256];
const POINT_OUT: i64 = 64;
const STATE_OUT: i64 = 64;

/// The encoder; see the module documentation.
#[derive(Debug)]
pub struct PointEncoder {
    points: i64,
    state_dim: i64,
    per_point: Vec<(nn::Linear, nn::LayerNorm)>,
    project: nn::Linear,
    project_norm: nn::LayerNorm,
    state: (nn::Linear, nn::Linear),
}

impl PointEncoder {
    /// The encoder of observations of `obs_dim` numbers, the first `config.points · 3` of them
    /// points. Fails when the observation is too short to hold them.
    pub fn new(path: &nn::Path, obs_dim: usize, config: PointCloudConfig) -> Result<Self, String> {
        crate::net::check_point_cloud(obs_dim, Some(config))?;
        let (points, state_dim) = (config.points as i64, obs_dim as i64 - 3 * config.points as i64);
        let ln = |p: nn::Path, w: i64| nn::layer_norm(p, vec![w], Default::default());
        let per_point = POINT_WIDTHS
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let p = path / format!("point{i}");
                (nn::linear(&p / "linear", w[0], w[1], Default::default()), ln(&p / "norm", w[1]))
            })
            .collect();
        let project = nn::linear(path / "project", POINT_WIDTHS[3], POINT_OUT, Default::default());
        let project_norm = ln(path / "project_norm", POINT_OUT);
        let state_in = state_dim.max(1);
        let state = (
            nn::linear(path / "state0", state_in, STATE_OUT, Default::default()),
            nn::linear(path / "state1", STATE_OUT, STATE_OUT, Default::default()),
        );
        Ok(Self { points, state_dim, per_point, project, project_norm, state })
    }

    /// Width of the feature [`PointEncoder::forward`] returns.
    pub fn out_dim(&self) -> usize {
        (POINT_OUT + if self.state_dim > 0 { STATE_OUT } else { 0 }) as usize
    }

    /// `obs [B, 3P + S]` → `[B, out_dim]`.
    pub fn forward(&self, obs: &Tensor) -> Tensor {
        let b = obs.size()[0];
        let mut h = obs.narrow(1, 0, 3 * self.points).reshape([b, self.points, 3]);
        for (linear, norm) in &self.per_point {
            h = norm.forward(&linear.forward(&h)).relu();
        }
        let pooled = h.amax([1], false);
        let points = self.project_norm.forward(&self.project.forward(&pooled));
        if self.state_dim == 0 {
            return points;
        }
        let s = obs.narrow(1, 3 * self.points, self.state_dim);
        let state = self.state.1.forward(&self.state.0.forward(&s).relu());
        Tensor::cat(&[points, state], 1)
    }
}
