//! Flow Q-learning (FQL, Park et al. 2025, arXiv 2502.02538) and, on action chunks, QC-FQL
//! (the actor of Q-chunking, Li et al. 2025, arXiv 2507.07969): a flow policy cloned from the
//! data, and a one-step policy `μ(s, ε)` distilled from it while it climbs the critic.
//!
//! With our time convention (data at t = 0, noise at t = 1; the same model as FQL's under
//! t ↦ 1 − t), one batch's actor loss is
//!
//! ```text
//! L = L_flow                                   flow matching of v(s, z, t) on the data (masked)
//!   + α · mean ‖μ(s, ε) − sg(Φ(s, ε))‖²        distillation: Φ = the flow's K-step Euler sample
//!   − λ · mean_B Q̄(s, clip(μ(s, ε)))           Q̄: the mean over the critic's members;
//!                                             λ = 1, or sg(1 / mean_B |Q̄|) (normalised)
//! ```
//!
//! as in the official code (seohongpark/fql `agents/fql.py`, ColinQiyangLi/qc
//! `agents/acfql.py`) with one difference: there the Q term values μ at the distillation's own
//! ε, here at a fresh ε (the agent asks for the Q term separately, [`GenerativePolicy::q_term`],
//! so μ runs twice per update). The same: the flow loss masked by the chunk's valid steps (QC-FQL), the
//! distillation target the flow's clipped sample from the same ε and μ unclipped in it, the
//! Q term always the members' mean whatever the critic's target aggregation. Their defaults
//! differ from ours in network size (4 × 512) and batch (256) only; α is the knob: QC-FQL's
//! paper uses 300 on scene, puzzle-3x3 and cube-double, 100 on cube-triple, 10,000 on
//! robomimic lift, can and square (its Table 4).
//!
//! The flow and μ are two networks trained by this one loss; the critic's parameters receive
//! the Q term's gradient but are not stepped by it (the agent zeroes the critic's gradients
//! before its own loss). Acting, and the critic's TD target, use μ alone: one network call,
//! no best-of-N (`agent.num_samples = 1`).

use mvp_nn::{MlpConfig, TimeFeatures};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::pointnet::PointCloudConfig;
use crate::{ChunkShape, CondNet, FlowConfig, FlowPolicy, GenerativePolicy, Metrics, TimeSampler};

/// Settings of FQL's two networks and its loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FqlConfig {
    /// Both networks' hidden layers (FQL: 4 × 512; here the same size as the other actors').
    pub network: MlpConfig,
    /// Observations that begin with a point cloud (both networks encode it their own way).
    pub point_cloud: Option<PointCloudConfig>,
    /// Euler steps of the flow that μ is distilled from (FQL: 10).
    pub flow_steps: usize,
    /// α, the distillation's weight: how close μ stays to the cloned flow (QC-FQL's code
    /// default 100; per task see the module docs).
    pub alpha: f64,
    /// Divide the Q term by the batch's mean |Q| (without gradient), so that α means the same
    /// at every reward scale (FQL's `normalize_q_loss`; off there by default, and in the
    /// papers).
    pub normalize_q: bool,
}

impl Default for FqlConfig {
    fn default() -> Self {
        Self { network: MlpConfig::default(), point_cloud: None, flow_steps: 10, alpha: 100.0, normalize_q: false }
    }
}

/// FQL's actor (see the module docs).
#[derive(Debug)]
pub struct FqlPolicy {
    flow: FlowPolicy,
    onestep: CondNet,
    shape: ChunkShape,
    config: FqlConfig,
}

impl FqlPolicy {
    /// Builds the flow under `path / "flow"` and μ under `path / "onestep"`.
    pub fn new(path: &nn::Path, obs_dim: usize, shape: ChunkShape, config: FqlConfig) -> Self {
        let flow_config = FlowConfig {
            network: config.network.clone(),
            point_cloud: config.point_cloud,
            steps: config.flow_steps,
            time_sampler: TimeSampler::Uniform,
            time_features: TimeFeatures::Raw,
        };
        let flow = FlowPolicy::new(&(path / "flow"), obs_dim, shape, flow_config);
        let onestep = CondNet::new(
            &(path / "onestep"),
            obs_dim,
            shape.flat_dim(),
            0,
            TimeFeatures::Raw,
            &config.network,
            config.point_cloud,
        );
        Self { flow, onestep, shape, config }
    }

    /// μ(s, ε), unclipped, with its graph.
    pub fn onestep(&self, obs: &Tensor, noise: &Tensor) -> Tensor {
        let none = Tensor::zeros([noise.size()[0], 0], (noise.kind(), noise.device()));
        self.onestep.forward(&self.onestep.encode(obs), noise, &none)
    }

    /// The cloned flow.
    pub fn flow(&self) -> &FlowPolicy {
        &self.flow
    }

    /// The flow loss and the distillation term for given noise ε `[B, h·A]` (the flow's own
    /// draws come from libtorch's generator).
    pub fn bc_and_distill(
        &self,
        obs: &Tensor,
        actions: &Tensor,
        valid: Option<&Tensor>,
        eps: &Tensor,
    ) -> (Tensor, Tensor) {
        let (flow_loss, _) = self.flow.loss(obs, actions, valid);
        let target = self.flow.sample(obs, eps); // no graph, clipped
        let distill = (self.onestep(obs, eps) - target).square().mean(Kind::Float);
        (flow_loss, distill)
    }
}

impl GenerativePolicy for FqlPolicy {
    fn loss(&self, obs: &Tensor, actions: &Tensor, valid: Option<&Tensor>) -> (Tensor, Metrics) {
        let eps = actions.randn_like();
        let (flow_loss, distill) = self.bc_and_distill(obs, actions, valid, &eps);
        let loss = &flow_loss + self.config.alpha * &distill;
        let metrics = vec![
            ("actor/flow_loss", flow_loss.detach()),
            ("actor/distill_loss", distill.detach()),
            ("actor/bc_loss", loss.detach()),
        ];
        (loss, metrics)
    }

    fn q_term(&self, obs: &Tensor, q: &dyn Fn(&Tensor) -> Tensor) -> Option<(Tensor, Metrics)> {
        let eps = Tensor::randn([obs.size()[0], self.shape.flat_dim() as i64], (obs.kind(), obs.device()));
        let chunks = self.onestep(obs, &eps).clamp(-1.0, 1.0);
        let values = q(&chunks); // [B]: the mean over the critic's members
        let mean_q = values.mean(Kind::Float);
        let scale = if self.config.normalize_q {
            1.0 / (values.abs().mean(Kind::Float).detach() + 1e-8)
        } else {
            mean_q.ones_like()
        };
        let term = -(&mean_q * &scale);
        Some((term, vec![("actor/q_policy", mean_q.detach()), ("actor/q_scale", scale.detach())]))
    }

    fn sample(&self, obs: &Tensor, noise: &Tensor) -> Tensor {
        tch::no_grad(|| self.onestep(obs, noise).clamp(-1.0, 1.0))
    }

    fn network_calls(&self) -> usize {
        1
    }

    fn shape(&self) -> ChunkShape {
        self.shape
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(vs: &nn::VarStore, alpha: f64, normalize_q: bool) -> FqlPolicy {
        let config = FqlConfig {
            network: MlpConfig { hidden: vec![16, 16], ..Default::default() },
            flow_steps: 4,
            alpha,
            normalize_q,
            ..Default::default()
        };
        FqlPolicy::new(&vs.root(), 3, ChunkShape { horizon: 2, action_dim: 2 }, config)
    }

    #[test]
    fn the_loss_is_the_flow_loss_plus_alpha_times_the_distillation_computed_directly() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let p = policy(&vs, 7.0, true);
        let obs = Tensor::randn([5, 3], (Kind::Float, tch::Device::Cpu));
        let actions = Tensor::rand([5, 4], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
        tch::manual_seed(11);
        let (loss, metrics) = p.loss(&obs, &actions, None);
        // The same draws, in the same order: ε for μ first, then the flow's own ε and t.
        tch::manual_seed(11);
        let eps = actions.randn_like();
        let (flow_eps, t) = (actions.randn_like(), Tensor::rand([5, 1], (Kind::Float, tch::Device::Cpu)));
        let z = (1.0 - &t) * &actions + &t * &flow_eps;
        let flow_loss = (p.flow.velocity(&obs, &z, &t) - (&flow_eps - &actions)).square().mean(Kind::Float);
        // The flow's K = 4 Euler steps from ε at t = 1 down to t = 0, by hand.
        let mut x = eps.copy();
        for i in (1..=4).rev() {
            let ti = Tensor::full([5, 1], i as f64 / 4.0, (Kind::Float, tch::Device::Cpu));
            x = &x - p.flow.velocity(&obs, &x, &ti) * 0.25;
        }
        let distill = (p.onestep(&obs, &eps) - x.clamp(-1.0, 1.0)).square().mean(Kind::Float);
        let direct: Tensor = &flow_loss + &distill * 7.0;
        assert!((loss.double_value(&[]) - direct.double_value(&[])).abs() < 1e-5, "{loss} vs {direct}");
        let names: Vec<_> = metrics.iter().map(|m| m.0).collect();
        assert_eq!(names, ["actor/flow_loss", "actor/distill_loss", "actor/bc_loss"]);
    }

    #[test]
    fn the_q_term_climbs_the_critic_through_the_one_step_policy_only() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let p = policy(&vs, 1.0, false);
        let obs = Tensor::randn([6, 3], (Kind::Float, tch::Device::Cpu));
        // A critic that likes chunks near 0.5: Q = −‖a − 0.5‖².
        let q = |a: &Tensor| -(a - 0.5).square().sum_dim_intlist(-1, false, Kind::Float);
        tch::manual_seed(3);
        let (term, _) = p.q_term(&obs, &q).unwrap();
        tch::manual_seed(3);
        let eps = Tensor::randn([6, 4], (Kind::Float, tch::Device::Cpu));
        let direct = -q(&p.onestep(&obs, &eps).clamp(-1.0, 1.0)).mean(Kind::Float);
        assert!((term.double_value(&[]) - direct.double_value(&[])).abs() < 1e-6);
        term.backward();
        let grads = |prefix: &str| -> f64 {
            vs.variables()
                .iter()
                .filter(|(name, _)| name.starts_with(prefix))
                .map(|(_, v)| if v.grad().defined() { v.grad().abs().sum(Kind::Float).double_value(&[]) } else { 0.0 })
                .sum()
        };
        assert!(grads("onestep") > 0.0, "the Q term trains μ");
        assert_eq!(grads("flow"), 0.0, "and leaves the cloned flow alone");
        // Normalised: divided by the batch's mean |Q| (here 1 / mean|Q| = the scale reported).
        let vs2 = nn::VarStore::new(tch::Device::Cpu);
        let p2 = policy(&vs2, 1.0, true);
        tch::manual_seed(3);
        let (term2, metrics) = p2.q_term(&obs, &q).unwrap();
        let mean_q = metrics[0].1.double_value(&[]);
        assert!((term2.double_value(&[]) - (-mean_q / mean_q.abs())).abs() < 1e-5, "{term2} for mean Q {mean_q}");
    }

    #[test]
    fn acting_is_one_clipped_call_of_the_one_step_policy() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let p = policy(&vs, 1.0, true);
        let obs = Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu));
        let noise = Tensor::randn([4, 4], (Kind::Float, tch::Device::Cpu)) * 50.0;
        let a = p.sample(&obs, &noise);
        assert!(a.equal(&p.onestep(&obs, &noise).clamp(-1.0, 1.0)));
        assert!(!a.requires_grad());
        assert_eq!(p.network_calls(), 1);
    }
}
