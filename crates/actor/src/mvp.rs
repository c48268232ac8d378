//! Mean velocity policy: MeanFlow with an instantaneous velocity constraint.
//!
//! Paper: "Mean Flow Policy with Instantaneous Velocity Constraint for One-step Action
//! Generation", arXiv 2602.13810 (ICLR 2026). MeanFlow: Geng et al., arXiv 2505.13447.
//!
//! The network `u_θ(s, z, r, t)` predicts the *mean* velocity of the noise-to-action flow over
//! `[r, t]`, so one evaluation jumps from noise (t = 1) to an action (r = 0):
//! `a = clip(ε − u_θ(s, ε, 0, 1), −1, 1)`.
//!
//! Where this code differs from the paper, deliberately:
//! - the JVP `du/dt` is computed by forward-mode propagation through our MLP (exact, ~2.4× a
//!   forward) rather than by autodiff's `jvp`;
//! - the loss is a masked mean over chunk steps with QC's `valid` mask;
//! - `sampling_steps > 1` (multi-step sampling with the same network) exists for ablations.

use mvp_nn::{MlpConfig, TimeFeatures};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::pointnet::PointCloudConfig;
use crate::{
    masked_sq_err, ChunkShape, CondNet, GenerativePolicy, LossDraws, Metrics, NativeActor, NativeLoss, NativeSampler,
    TimeSampler,
};

/// Settings of the mean velocity policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MvpConfig {
    /// The network (paper: 4×512, GELU, no LayerNorm).
    pub network: MlpConfig,
    /// Observations that begin with a point cloud: encode it DP3-style first (none: the
    /// observation goes to the network as it is).
    pub point_cloud: Option<PointCloudConfig>,
    /// λ, the weight of the IVC loss (paper: 1.0; ablations 0 and 0.5).
    pub ivc_weight: f64,
    /// Distribution of the two times whose max is t and min is r (paper: logit-normal(−0.4, 1)).
    pub time_sampler: TimeSampler,
    /// Share of MeanFlow pairs with r = t (0: none; MeanFlow's image models use 0.75).
    pub equal_time_fraction: f64,
    /// Share of MeanFlow pairs set to the one-step point (r = 0, t = 1), where every action is
    /// generated. The logit-normal pairs reach t − r > 0.8 in about 0.1% of draws, so without
    /// this the generating jump is trained only through its neighbours. Default 0.25 (measured:
    /// experiments/levers/); 0 is the paper's sampler.
    pub one_step_fraction: f64,
    /// Adaptive loss weighting power p: per-sample loss ℓ becomes ℓ / sg((ℓ + c)^p). 0 = off.
    pub adaptive_p: f64,
    /// Adaptive loss weighting constant c.
    pub adaptive_c: f64,
    /// Features of the time inputs t and t − r.
    pub time_features: TimeFeatures,
    /// Network evaluations per sample: 1 is the one-step policy; more is an ablation.
    pub sampling_steps: usize,
    /// ω of the CFG-folded tangent (MP1: 2): the MeanFlow target and its JVP tangent use
    /// v̂ = ω·v + (1 − ω)·u_θ(z, t, t | s) (computed without gradient) instead of v. 1 = the
    /// plain MeanFlow target.
    pub cfg_omega: f64,
    /// Weight of the dispersive loss (MP1: 0.5; 0 = off): log mean_ij exp(−D_ij / τ) over the
    /// batch's activations of hidden layer `dispersive_layer`, with D_ij the squared distance
    /// between samples i and j divided by the batch's largest. It pushes the representations
    /// of different states apart.
    pub dispersive_weight: f64,
    /// The hidden layer whose activations the dispersive loss spreads (0 = the first).
    pub dispersive_layer: usize,
    /// τ of the dispersive loss (MP1: 1).
    pub dispersive_tau: f64,
}

impl Default for MvpConfig {
    fn default() -> Self {
        Self {
            network: MlpConfig::default(),
            point_cloud: None,
            ivc_weight: 1.0,
            time_sampler: TimeSampler::LogitNormal { mean: -0.4, std: 1.0 },
            equal_time_fraction: 0.0,
            one_step_fraction: 0.25,
            adaptive_p: 0.0,
            adaptive_c: 1e-3,
            time_features: TimeFeatures::Raw,
            sampling_steps: 1,
            cfg_omega: 1.0,
            dispersive_weight: 0.0,
            dispersive_layer: 0,
            dispersive_tau: 1.0,
        }
    }
}

/// The mean velocity policy (see the module docs).
#[derive(Debug)]
pub struct MeanVelocityPolicy {
    net: CondNet,
    shape: ChunkShape,
    config: MvpConfig,
}

/// The pieces of the MVP loss for one batch, for tests and diagnostics.
#[derive(Debug)]
pub struct MvpLossParts {
    /// L_MF (with adaptive weighting when enabled).
    pub mean_flow: Tensor,
    /// L_IVC.
    pub ivc: Tensor,
    /// The stop-gradient target `v − (t − r)·du/dt`.
    pub target: Tensor,
    /// The prediction `u_θ(s, z_t, r, t)`.
    pub prediction: Tensor,
    /// The dispersive loss (zero when its weight is 0).
    pub dispersive: Tensor,
}

impl MeanVelocityPolicy {
    /// Builds the network `u_θ` under `path`.
    pub fn new(path: &nn::Path, obs_dim: usize, shape: ChunkShape, config: MvpConfig) -> Self {
        let net =
            CondNet::new(path, obs_dim, shape.flat_dim(), 2, config.time_features, &config.network, config.point_cloud);
        Self { net, shape, config }
    }

    /// `u_θ(s, z, r, t)`; `r`, `t` are `[B, 1]`.
    pub fn mean_velocity(&self, obs: &Tensor, z: &Tensor, r: &Tensor, t: &Tensor) -> Tensor {
        self.net.forward(&self.net.encode(obs), z, &Tensor::cat(&[t, &(t - r)], 1))
    }

    /// Draws `b` training pairs `(r, t)`, `[b, 1]` each with r ≤ t: the max and min of two
    /// draws of the time sampler, then a share `equal_time_fraction` set to r = t and a share
    /// `one_step_fraction` set to the one-step point (r = 0, t = 1).
    pub fn sample_times(&self, b: i64, like: &Tensor) -> (Tensor, Tensor) {
        let a = self.config.time_sampler.sample(b, like);
        let c = self.config.time_sampler.sample(b, like);
        let (mut t, mut r) = (a.maximum(&c), a.minimum(&c));
        if self.config.equal_time_fraction > 0.0 {
            let equal = a.rand_like().lt(self.config.equal_time_fraction);
            r = r.where_self(&equal.logical_not(), &t);
        }
        if self.config.one_step_fraction > 0.0 {
            let jump = a.rand_like().lt(self.config.one_step_fraction);
            t = t.where_self(&jump.logical_not(), &t.ones_like());
            r = r.where_self(&jump.logical_not(), &r.zeros_like());
        }
        (r, t)
    }

    /// The randomness of one loss evaluation on `actions`: noise ε, then the times (r, t).
    fn draws(&self, actions: &Tensor) -> (Tensor, Tensor, Tensor) {
        let eps = actions.randn_like();
        let (r, t) = self.sample_times(actions.size()[0], actions);
        (eps, r, t)
    }

    /// The loss for given data `x`, noise `eps` and times `r ≤ t` (`[B, 1]` each).
    ///
    /// Gradient flow: only `u_θ` is trained. The MeanFlow target is detached here (it is
    /// built from a tangent computed without a graph), and nothing from a critic enters.
    pub fn loss_parts(
        &self,
        obs: &Tensor,
        x: &Tensor,
        valid: Option<&Tensor>,
        eps: &Tensor,
        r: &Tensor,
        t: &Tensor,
    ) -> MvpLossParts {
        let z = (1.0 - t) * x + t * eps;
        let v = eps - x;
        let s = self.net.encode(obs);
        // MP1's CFG folding: the velocity of the tangent and the target mixes in the network's
        // own instantaneous velocity (no gradient).
        // (The IVC below keeps the plain v.)
        let v_hat = if self.config.cfg_omega != 1.0 {
            let w = self.config.cfg_omega;
            let u_tt = tch::no_grad(|| self.net.forward(&s, &z, &Tensor::cat(&[t, &t.zeros_like()], 1)));
            w * &v + (1.0 - w) * u_tt
        } else {
            v.shallow_clone()
        };
        // Tangent of the inputs (s, z, t, t − r) along d/dt with dz = v̂, dr = 0.
        let times = Tensor::cat(&[t, &(t - r)], 1);
        let (u, dudt) = self.net.forward_jvp_sg(&s, &z, &times, &v_hat, &times.ones_like());
        let target = (&v_hat - (t - r) * dudt).detach();
        let (mf_mean, mf_per_sample) = masked_sq_err(&(&u - &target), valid, self.shape);
        let mean_flow = if self.config.adaptive_p > 0.0 {
            let d = self.shape.flat_dim() as f64;
            let l = mf_per_sample / d;
            let w = (&l + self.config.adaptive_c).pow_tensor_scalar(self.config.adaptive_p).detach();
            (&l / w).mean(l.kind())
        } else {
            mf_mean
        };
        // IVC: at r = t the mean velocity is the instantaneous one, whose regression target is
        // the conditional velocity v. This is the boundary condition L_MF cannot supply.
        // The IVC's forward pass also gives the hidden activations of the dispersive loss.
        let inst_times = Tensor::cat(&[t, &t.zeros_like()], 1);
        let zero = || u.zeros_like().sum(u.kind());
        let (ivc, dispersive) = match (self.config.ivc_weight > 0.0, self.config.dispersive_weight > 0.0) {
            (false, false) => (zero(), zero()),
            (ivc_on, disp_on) => {
                let (u_inst, hidden) = self.net.forward_with_hidden(&s, &z, &inst_times, self.config.dispersive_layer);
                let ivc = if ivc_on { masked_sq_err(&(u_inst - &v), valid, self.shape).0 } else { zero() };
                let disp = if disp_on { dispersive_loss(&hidden, self.config.dispersive_tau) } else { zero() };
                (ivc, disp)
            }
        };
        MvpLossParts { mean_flow, ivc, target, prediction: u, dispersive }
    }
}

/// MP1's dispersive loss of representations `h` (`[B, H]`): log mean_{i,j} exp(−D_ij / τ), with
/// D_ij = ‖h_i − h_j‖² / max_kl ‖h_k − h_l‖² (every pair, i = j included).
pub fn dispersive_loss(h: &Tensor, tau: f64) -> Tensor {
    let sq = h.square().sum_dim_intlist(1, true, h.kind());
    let gram: Tensor = h.matmul(&h.transpose(0, 1));
    let d: Tensor = (&sq + sq.transpose(0, 1) - gram * 2.0).clamp_min(0.0);
    let d = &d / d.max().clamp_min(1e-12);
    (-d / tau).exp().mean(h.kind()).log()
}

impl GenerativePolicy for MeanVelocityPolicy {
    fn loss(&self, obs: &Tensor, actions: &Tensor, valid: Option<&Tensor>) -> (Tensor, Metrics) {
        let (eps, r, t) = self.draws(actions);
        let p = self.loss_parts(obs, actions, valid, &eps, &r, &t);
        let loss = &p.mean_flow + self.config.ivc_weight * &p.ivc + self.config.dispersive_weight * &p.dispersive;
        let mut metrics = vec![
            ("actor/mf_loss", p.mean_flow.detach()),
            ("actor/ivc_loss", p.ivc.detach()),
            ("actor/loss", loss.detach()),
        ];
        if self.config.dispersive_weight > 0.0 {
            metrics.push(("actor/dispersive_loss", p.dispersive.detach()));
        }
        (loss, metrics)
    }

    fn sample(&self, obs: &Tensor, noise: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let k = self.config.sampling_steps.max(1);
            let b = noise.size()[0];
            let mut z = noise.copy(); // updated in place below; the caller's noise stays as it was
            let s = self.net.encode(obs);
            for i in (0..k).rev() {
                // Jump from t = (i+1)/k to r = i/k with the mean velocity over [r, t].
                let t = Tensor::full([b, 1], (i + 1) as f64 / k as f64, (noise.kind(), noise.device()));
                let r = Tensor::full([b, 1], i as f64 / k as f64, (noise.kind(), noise.device()));
                let u = self.net.forward(&s, &z, &Tensor::cat(&[&t, &(&t - &r)], 1));
                z -= u * (1.0 / k as f64);
            }
            z.clamp(-1.0, 1.0)
        })
    }

    fn network_calls(&self) -> usize {
        self.config.sampling_steps.max(1)
    }

    fn native_loss(&self) -> Result<NativeLoss, String> {
        self.net.native()?;
        let c = &self.config;
        if c.cfg_omega != 1.0 || c.adaptive_p != 0.0 || c.dispersive_weight != 0.0 {
            return Err("the native MVP loss has no CFG folding, adaptive weighting or dispersive loss".into());
        }
        Ok(NativeLoss::MeanFlow { ivc_weight: c.ivc_weight })
    }

    fn loss_draws(&self, actions: &Tensor) -> Option<LossDraws> {
        let (eps, r, t) = self.draws(actions);
        Some(LossDraws { eps, t, r: Some(r) })
    }

    fn native(&self) -> Result<NativeActor<'_>, String> {
        Ok(NativeActor {
            net: self.net.native()?,
            sampler: NativeSampler::MeanVelocity { steps: self.config.sampling_steps.max(1) },
        })
    }

    fn shape(&self) -> ChunkShape {
        self.shape
    }
}
