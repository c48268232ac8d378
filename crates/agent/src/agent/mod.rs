//! The MVP agent: a generative actor improved only by generate-and-select, and a Q-ensemble.
//!
//! Paper: "Mean Flow Policy with Instantaneous Velocity Constraint for One-step Action
//! Generation", arXiv 2602.13810; the experimental frame (chunks, best-of-N, critic ensemble,
//! offline-to-online) is Q-chunking's, arXiv 2507.07969. The same agent runs QC (flow actor,
//! K = 10, N = 32, h = 5) and BFN (N = 4, h = 1) by configuration.
//!
//! Gradient flow, in one place:
//! - the **critic** gets the TD loss; its target (selected chunk valued by the target critic)
//!   is detached;
//! - the **actor** gets only its behaviour-cloning generative loss on buffer chunks (MeanFlow +
//!   IVC for MVP). **No Q-gradient reaches the actor**: improvement comes from selection.
//! - target networks get no gradient, only Polyak averaging.
//!
//! The actor's regression target is the stored chunk (QC) by default; a share of each batch can
//! instead regress on the selected chunk a* re-generated at the batch state
//! (`agent.selected_target_fraction`), which the MVP paper describes. Still a behaviour-cloning
//! target: the critic only chooses it.

mod batch;
mod plan;
mod state;
mod update;

use std::cell::RefCell;

use anyhow::Result;
use mvp_actor::{ChunkShape, GenerativePolicy};
use mvp_critic::Critic;
use mvp_infer::{NativePolicy, Precision};
use mvp_nn::{polyak_update, Adam};
use tch::{nn::VarStore, Device, Kind, Tensor};

pub use batch::{fill_synthetic, TensorBatch};
pub use plan::EnginePlan;

use crate::config::AgentConfig;
use crate::engines::Step;
use crate::native_actor::NativeActorUpdate;
use crate::native_critic::NativeCritic;
use plan::check_native_update;

/// Scalars of one update, as detached 0-d tensors.
pub type Metrics = Vec<(&'static str, Tensor)>;

/// Called between the phases of an update with the name of the phase that just ended
/// ([`Agent::set_profiler`]; `mvp bench train --profile` and the engine calibration time them).
pub type Profiler = Box<dyn FnMut(&'static str) + Send>;

/// The TD target's generate-and-select on the native engine: its precision, and the policy
/// once the first target has packed it (re-packed from the current weights before each target).
struct NativeSelect {
    precision: Precision,
    policy: Option<NativePolicy>,
    chosen: Vec<f32>,
}

/// Packs the actor's and the online critic's parameters into `policy` straight from their
/// host memory (no copy of the weights first), to select among `n` candidates; `false` where
/// they are not fp32 CPU tensors.
fn repack_in_place(policy: &mut NativePolicy, actor: &dyn GenerativePolicy, critic: &Critic, n: usize) -> Result<bool> {
    use crate::native::{params, widths};
    let net = actor.native().map_err(anyhow::Error::msg)?.net;
    let (Ok(actor_dims), Ok(critic_dims)) = (widths(net.layers()), widths(critic.online().layers())) else {
        return Ok(false);
    };
    let layers = critic.online().layers();
    let members: Vec<_> = (0..critic.online().members()).map(|e| params(layers, &critic_dims, e)).collect();
    policy.set_layers(&params(net.layers(), &actor_dims, 0), &members, n)?;
    Ok(true)
}

/// Actor, critic, their optimisers, and the selection rule.
pub struct Agent {
    /// Actor parameters.
    pub actor_vs: VarStore,
    actor: Box<dyn GenerativePolicy>,
    /// Critic ensemble with its target.
    pub critic: Critic,
    actor_opt: Adam,
    critic_opt: Adam,
    num_samples: usize,
    selected_target_fraction: f64,
    obs_dim: usize,
    shape: ChunkShape,
    device: Device,
    native_select: Option<NativeSelect>,
    /// The critic's update on the native kernels (`agent.critic_engine`).
    native_critic: Option<NativeCritic>,
    /// The actor's update on the native kernels (`agent.actor_engine`).
    native_actor: Option<NativeActorUpdate>,
    /// Which engine runs each step, and why.
    plan: EnginePlan,
    diagnostics: bool,
    imitation: bool,
    /// The moving average of the actor's weights that acts (`agent.actor_ema`), with its decay.
    ema: Option<(VarStore, Box<dyn GenerativePolicy>, f64)>,
    /// Told the end of each phase of an update, where set.
    profiler: RefCell<Option<Profiler>>,
}

impl Agent {
    /// Builds networks and optimisers for `obs_dim` observations and `action_dim` actions.
    /// Fails when `agent.select_engine` asks for the native engine where it cannot run.
    pub fn new(obs_dim: usize, action_dim: usize, config: &AgentConfig, device: Device) -> Result<Self> {
        let shape = ChunkShape { horizon: config.horizon, action_dim };
        mvp_actor::check_point_cloud(obs_dim, config.actor.point_cloud()).map_err(anyhow::Error::msg)?;
        let actor_vs = VarStore::new(device);
        let actor = config.actor.build(&actor_vs.root(), obs_dim, shape);
        let critic = Critic::new(device, obs_dim, shape.flat_dim(), config.critic.clone());
        let actor_opt = Adam::new(&actor_vs, config.actor_optim.clone());
        let ema = (config.actor_ema > 0.0).then(|| {
            let mut vs = VarStore::new(device);
            let net = config.actor.build(&vs.root(), obs_dim, shape);
            vs.copy(&actor_vs).expect("the same actor layout");
            vs.freeze();
            (vs, net, config.actor_ema)
        });
        let critic_opt = Adam::new(&critic.vs, config.critic_optim.clone());
        // Each step's native engine, built where it can run (its error says why not); the
        // plan keeps those its config and the calibration choose.
        let isa = mvp_infer::Isa::active();
        let select_precision = match config.select_precision {
            None if isa.has_bf16() => Precision::Bf16,
            None | Some(mvp_nn::MatmulPrecision::F32) => Precision::F32,
            Some(mvp_nn::MatmulPrecision::Bf16) => Precision::Bf16,
        };
        let select_can = match (device, actor.native()) {
            (Device::Cpu, Ok(_)) if select_precision == Precision::Bf16 && !isa.has_bf16() => {
                Err("bf16 selection needs a CPU with AVX512-BF16".to_string())
            }
            (Device::Cpu, Ok(_)) => Ok(()),
            (Device::Cpu, Err(why)) => Err(why.to_string()),
            (other, _) => Err(format!("it runs on the CPU, the networks are on {other:?}")),
        };
        // Not built where the config asks for libtorch (nothing would use it).
        let wanted = |s: Step| match s.engine(config) {
            crate::config::Engine::Libtorch => Err(anyhow::anyhow!("libtorch asked for")),
            _ => Ok(()),
        };
        let native_critic = wanted(Step::Critic)
            .and_then(|()| check_native_update(device, &config.critic_optim))
            .and_then(|precision| NativeCritic::new(&critic, &critic_opt, precision));
        let native_actor = wanted(Step::Actor)
            .and_then(|()| check_native_update(device, &config.actor_optim))
            .and_then(|precision| NativeActorUpdate::new(actor.as_ref(), &actor_opt, precision));
        fn reason<T>(r: &Result<T>) -> std::result::Result<(), String> {
            r.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"))
        }
        let calibration =
            crate::engines::has_auto(config).then(|| crate::engines::cached(obs_dim, action_dim, config)).flatten();
        let plan = EnginePlan::resolve(
            config,
            isa,
            select_precision,
            calibration,
            [select_can, reason(&native_critic), reason(&native_actor)],
        )?;
        let native_select =
            plan.select.native.then(|| NativeSelect { precision: select_precision, policy: None, chosen: Vec::new() });
        let native_critic = native_critic.ok().filter(|_| plan.critic.native);
        let native_actor = native_actor.ok().filter(|_| plan.actor.native);
        Ok(Self {
            actor_vs,
            actor,
            critic,
            actor_opt,
            critic_opt,
            num_samples: config.num_samples,
            selected_target_fraction: config.selected_target_fraction,
            obs_dim,
            shape,
            device,
            native_select,
            native_critic,
            native_actor,
            plan,
            diagnostics: true,
            imitation: config.imitation,
            ema,
            profiler: RefCell::new(None),
        })
    }

    /// Whether updates compute the selection diagnostics (`select/*` metrics: the candidates'
    /// scores and spread). On by default; the trainer turns them on only for updates it logs.
    pub fn set_diagnostics(&mut self, on: bool) {
        self.diagnostics = on;
    }

    /// Calls `profiler` at the end of each phase of every update (TD target, losses, backward
    /// passes, optimiser steps, Polyak averaging) with the phase's name; `None` stops it.
    pub fn set_profiler(&mut self, profiler: Option<Profiler>) {
        *self.profiler.get_mut() = profiler;
    }

    /// Tells the profiler, if one is set, that `phase` ended.
    fn mark(&self, phase: &'static str) {
        if let Some(p) = self.profiler.borrow_mut().as_mut() {
            p(phase);
        }
    }

    /// Which engine runs each step, and why (for the start line).
    pub fn engines(&self) -> &EnginePlan {
        &self.plan
    }

    /// Whether the TD target's selection runs on the native engine (`agent.select_engine`).
    pub fn selects_natively(&self) -> bool {
        self.native_select.is_some()
    }

    /// The native engine's precision where selection runs on it (also the precision of
    /// background evaluations).
    pub fn select_precision(&self) -> Option<Precision> {
        self.native_select.as_ref().map(|n| n.precision)
    }

    /// The chunk shape the actor generates.
    pub fn shape(&self) -> ChunkShape {
        self.shape
    }

    /// Sets the candidates per selection; the trainer switches between the offline and the
    /// online count (`agent.offline_num_samples`).
    pub fn set_num_samples(&mut self, n: usize) {
        self.num_samples = n.max(1);
    }

    /// The device of the networks.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The actor.
    pub fn actor(&self) -> &dyn GenerativePolicy {
        self.actor.as_ref()
    }

    /// The actor that acts (collection, evaluation, export): the moving average of the weights
    /// where `agent.actor_ema` is set, else the trained actor.
    pub fn acting_actor(&self) -> &dyn GenerativePolicy {
        match &self.ema {
            Some((_, net, _)) => net.as_ref(),
            None => self.actor.as_ref(),
        }
    }

    /// Whether the actor's update runs on the native kernels (`agent.actor_engine`).
    pub fn actor_natively(&self) -> bool {
        self.native_actor.is_some()
    }

    fn update_ema(&mut self) {
        if let Some((vs, _, decay)) = &self.ema {
            polyak_update(vs, &self.actor_vs, 1.0 - *decay);
        }
    }

    /// Generate-and-select: for each row of `obs [B, S]`, draws `n` candidate chunks in one
    /// actor call over `B·n` rows, scores them with the online critic (aggregated over the
    /// ensemble) and returns the best, `[B, h·A]`. With `n = 1` the critic is not consulted.
    pub fn sample_actions(&self, obs: &Tensor, n: usize) -> Tensor {
        let (b, d) = (obs.size()[0], self.shape.flat_dim() as i64);
        let noise = Tensor::randn([b * n.max(1) as i64, d], (obs.kind(), obs.device()));
        self.select_with_noise(obs, &noise, n).0
    }

    /// [`Agent::sample_actions`] from given starting noise `[B·n, D]` (the candidates of row b
    /// are rows b·n .. b·n + n); also returns the candidates and their scores (`None` for n = 1).
    pub fn select_with_noise(&self, obs: &Tensor, noise: &Tensor, n: usize) -> (Tensor, Option<(Tensor, Tensor)>) {
        self.select_among(self.acting_actor(), obs, noise, n)
    }

    fn select_among(
        &self,
        actor: &dyn GenerativePolicy,
        obs: &Tensor,
        noise: &Tensor,
        n: usize,
    ) -> (Tensor, Option<(Tensor, Tensor)>) {
        tch::no_grad(|| {
            let b = obs.size()[0];
            if n <= 1 {
                let chosen = actor.sample(obs, noise);
                self.mark("target: generate");
                return (chosen, None);
            }
            let n = n as i64;
            let obs_rep = obs.repeat_interleave_self_int(n, 0, None); // [B·n, S]
            let candidates = actor.sample(&obs_rep, noise); // [B·n, D]
            self.mark("target: generate");
            let scores = self.critic.score(&obs_rep, &candidates);
            self.mark("target: score");
            let best = scores.view([b, n]).argmax(1, false); // [B]
            let index = (Tensor::arange(b, (Kind::Int64, obs.device())) * n + best).view([-1]);
            (candidates.index_select(0, &index), Some((candidates, scores)))
        })
    }

    /// [`Agent::select_with_noise`] on the native engine, with weights packed from the
    /// networks as they are now (CPU tensors only), at the host observations `obs [B, S]`.
    fn select_native(&mut self, obs: &[f32], noise: &Tensor, n: usize) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let d = self.shape.flat_dim();
        let native = self.native_select.as_mut().expect("select_native is called only with a native engine");
        let repacked = match native.policy.as_mut() {
            Some(p) => repack_in_place(p, self.actor.as_ref(), &self.critic, n)?,
            None => false,
        };
        if !repacked {
            let weights = crate::export::policy_weights(self.actor.as_ref(), Some(&self.critic), self.obs_dim, d, n)
                .map_err(anyhow::Error::msg)?;
            match native.policy.as_mut() {
                Some(p) => p.set_weights(&weights)?,
                None => native.policy = Some(NativePolicy::new(&weights, native.precision, 0)?),
            }
        }
        self.mark("target: pack weights");
        let native = self.native_select.as_mut().expect("select_native is called only with a native engine");
        let policy = native.policy.as_mut().expect("packed above");
        let b = obs.len() / self.obs_dim;
        native.chosen.resize(b * d, 0.0);
        policy.act_with_noise(obs, &crate::native::host(noise), &mut native.chosen);
        let chosen = Tensor::from_slice(&native.chosen).view([b as i64, d as i64]);
        let scored = (n > 1 && self.diagnostics).then(|| {
            let rows = b * n;
            (
                Tensor::from_slice(&policy.candidates()[..rows * d]).view([rows as i64, d as i64]),
                Tensor::from_slice(&policy.scores()[..rows]),
            )
        });
        self.mark("target: generate and score (native)");
        Ok((chosen, scored))
    }

    /// The acting networks (actor and online critic) as a libtorch-free policy with its own
    /// packed weights (`mvp-infer`): a snapshot, not updated by later training. Fails for
    /// actors without a native path (diffusion, Fourier time features) and for bf16 on CPUs
    /// without AVX512-BF16.
    pub fn native_policy(&self, precision: mvp_infer::Precision, seed: u64) -> Result<mvp_infer::NativePolicy> {
        Ok(mvp_infer::NativePolicy::new(&self.policy_weights()?, precision, seed)?)
    }

    /// The acting networks (actor and online critic) and the current candidate count as plain
    /// host weights: what [`Agent::native_policy`] packs and `mvp export` writes. Fails for
    /// actors without a native path.
    pub fn policy_weights(&self) -> Result<mvp_infer::PolicyWeights> {
        crate::export::policy_weights(
            self.acting_actor(),
            Some(&self.critic),
            self.obs_dim,
            self.shape.flat_dim(),
            self.num_samples,
        )
        .map_err(anyhow::Error::msg)
    }

    /// Converts the networks used for acting (actor and online critic) to `kind`, e.g.
    /// `Kind::BFloat16` for a deployment-only agent; observations must then have that kind.
    /// Training afterwards is not supported (the optimiser moments stay in f32).
    pub fn set_acting_kind(&mut self, kind: Kind) {
        self.actor_vs.set_kind(kind);
        self.critic.vs.set_kind(kind);
    }

    /// The selection rule with the configured number of candidates.
    pub fn act(&self, obs: &Tensor) -> Tensor {
        self.sample_actions(obs, self.num_samples)
    }

    /// [`Agent::act`] on host rows: `k` observations (row-major `[k, S]`) → `k` flattened
    /// chunks. The policy closure of collection and evaluation.
    pub fn act_rows(&self, obs: &[f32], k: usize) -> Result<Vec<f32>> {
        let o = Tensor::from_slice(obs).view([k as i64, -1]).to_device(self.device).to_kind(Kind::Float);
        Ok(Vec::<f32>::try_from(self.act(&o).view([-1]).to_device(Device::Cpu))?)
    }

    /// Whether the critic's update runs on the native kernels (`agent.critic_engine`).
    pub fn critic_natively(&self) -> bool {
        self.native_critic.is_some()
    }
}
