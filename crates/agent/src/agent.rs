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

use std::collections::HashMap;

use anyhow::{bail, Result};
use mvp_actor::{ChunkShape, GenerativePolicy};
use mvp_critic::Critic;
use mvp_infer::{NativePolicy, Precision};
use mvp_nn::{checkpoint, polyak_update, Adam};
use mvp_replay::ChunkBatch;
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::config::AgentConfig;
use crate::engines::{Choice, Step};
use crate::native::host;
use crate::native_actor::{ActorRows, NativeActorUpdate};
use crate::native_critic::NativeCritic;

/// Scalars of one update, as detached 0-d tensors.
pub type Metrics = Vec<(&'static str, Tensor)>;

/// Called between the phases of an update with the name of the phase that just ended
/// ([`Agent::update_marked`]; `mvp bench train --profile` times them).
pub type Mark<'a> = &'a mut dyn FnMut(&'static str);

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

/// A batch of chunks as tensors on the agent's device (the QC/FQL batch contract).
#[derive(Debug)]
pub struct TensorBatch {
    /// s_k `[B, S]`.
    pub observations: Tensor,
    /// a_k..a_{k+h−1} flattened `[B, h·A]`.
    pub actions: Tensor,
    /// Discounted chunk reward R `[B]`.
    pub rewards: Tensor,
    /// Bootstrap mask m `[B]` (0 after a true terminal state; truncation keeps 1).
    pub masks: Tensor,
    /// Per-step validity `[B, h]` (0 after the episode ended inside the chunk).
    pub valid: Tensor,
    /// s_{k+h} `[B, S]`.
    pub next_observations: Tensor,
}

impl TensorBatch {
    /// `batch` windows of `horizon` steps with made-up values ([`fill_synthetic`]) on `device`:
    /// the shapes of a real batch, for timing (the engine calibration, the benchmarks).
    pub fn synthetic(batch: usize, horizon: usize, obs_dim: usize, act_dim: usize, device: Device) -> Self {
        let mut b = ChunkBatch::new(batch, horizon, obs_dim, act_dim);
        fill_synthetic(&mut b);
        Self::from_chunks(&b, device)
    }

    /// Copies a host batch to `device`.
    pub fn from_chunks(b: &ChunkBatch, device: Device) -> Self {
        let t = |v: &[f32], shape: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
        let (n, h) = (b.batch as i64, b.h as i64);
        Self {
            observations: t(&b.observations, &[n, b.obs_dim as i64]),
            actions: t(&b.actions, &[n, h * b.act_dim as i64]),
            rewards: t(&b.rewards, &[n]),
            masks: t(&b.masks, &[n]),
            valid: t(&b.valid, &[n, h]),
            next_observations: t(&b.next_observations, &[n, b.obs_dim as i64]),
        }
    }
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
        })
    }

    /// Whether updates compute the selection diagnostics (`select/*` metrics: the candidates'
    /// scores and spread). On by default; the trainer turns them on only for updates it logs.
    pub fn set_diagnostics(&mut self, on: bool) {
        self.diagnostics = on;
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

    /// The actor's update on `b` with its [`Agent::actor_data`]: its loss, backward pass and
    /// Adam step (on the native kernels where `agent.actor_engine` puts them), then its moving
    /// average. Stops on a non-finite loss before the actor's parameters change.
    fn actor_update(&mut self, b: &TensorBatch, (actions, valid): (Tensor, Tensor), mark: Mark) -> Result<Metrics> {
        if let Some(native) = self.native_actor.as_mut() {
            let draws = self.actor.loss_draws(&actions).expect("an actor with a native loss draws its randomness");
            let bs = actions.size()[0];
            let shape = [bs, self.shape.horizon as i64, self.shape.action_dim as i64];
            let mask = host(&valid.unsqueeze(-1).expand(shape, false));
            let (eps, t, r) = (host(&draws.eps), host(&draws.t), draws.r.as_ref().map(host));
            let rows = ActorRows {
                obs: &host(&b.observations),
                actions: &host(&actions),
                mask: &mask,
                eps: &eps,
                t: &t,
                r: r.as_deref(),
            };
            let net = self.actor.native().map_err(anyhow::Error::msg)?.net;
            let parts = native.loss_and_grads(net, &rows);
            mark("actor: loss and backward (native)");
            let al = parts.iter().find(|(name, _)| *name == "actor/loss").map_or(f64::NAN, |p| p.1);
            anyhow::ensure!(al.is_finite(), "non-finite actor loss {al}; stopping, the last checkpoint is kept");
            self.actor_opt.step_flat(&native.grads.flat)?;
            self.update_ema();
            mark("actor: adam");
            return Ok(parts.into_iter().map(|(name, v)| (name, Tensor::from(v as f32))).collect());
        }
        let (loss, metrics) = self.actor.loss(&b.observations, &actions, Some(&valid));
        mark("actor: loss");
        let al = loss.double_value(&[]);
        anyhow::ensure!(al.is_finite(), "non-finite actor loss {al}; stopping, the last checkpoint is kept");
        self.actor_opt.zero_grad();
        loss.backward();
        mark("actor: backward");
        self.actor_opt.step();
        self.update_ema();
        mark("actor: adam");
        Ok(metrics)
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
        self.select_marked(self.acting_actor(), obs, noise, n, &mut |_| {})
    }

    fn select_marked(
        &self,
        actor: &dyn GenerativePolicy,
        obs: &Tensor,
        noise: &Tensor,
        n: usize,
        mark: Mark,
    ) -> (Tensor, Option<(Tensor, Tensor)>) {
        tch::no_grad(|| {
            let b = obs.size()[0];
            if n <= 1 {
                let chosen = actor.sample(obs, noise);
                mark("target: generate");
                return (chosen, None);
            }
            let n = n as i64;
            let obs_rep = obs.repeat_interleave_self_int(n, 0, None); // [B·n, S]
            let candidates = actor.sample(&obs_rep, noise); // [B·n, D]
            mark("target: generate");
            let scores = self.critic.score(&obs_rep, &candidates);
            mark("target: score");
            let best = scores.view([b, n]).argmax(1, false); // [B]
            let index = (Tensor::arange(b, (Kind::Int64, obs.device())) * n + best).view([-1]);
            (candidates.index_select(0, &index), Some((candidates, scores)))
        })
    }

    /// [`Agent::select_with_noise`] on the native engine, with weights packed from the
    /// networks as they are now (CPU tensors only).
    fn select_native(
        &mut self,
        obs: &Tensor,
        noise: &Tensor,
        n: usize,
        mark: Mark,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
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
        let policy = native.policy.as_mut().expect("packed above");
        mark("target: pack weights");
        let b = obs.size()[0] as usize;
        native.chosen.resize(b * d, 0.0);
        policy.act_with_noise(&host(obs), &host(noise), &mut native.chosen);
        let chosen = Tensor::from_slice(&native.chosen).view([b as i64, d as i64]);
        let scored = (n > 1 && self.diagnostics).then(|| {
            let rows = b * n;
            (
                Tensor::from_slice(&policy.candidates()[..rows * d]).view([rows as i64, d as i64]),
                Tensor::from_slice(&policy.scores()[..rows]),
            )
        });
        mark("target: generate and score (native)");
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

    /// The critic's TD loss. The target selects `a*` at `s_{k+h}` with the online critic (as in
    /// acting) and values it with the target critic; it is detached. With N > 1 it also reports
    /// what selection does (the diagnostics of a young critic): the online Q of the selected
    /// chunks (compare with the critic's `critic/q_data`, the stored chunks scored the same way),
    /// the spread of the candidates' scores and of the candidates themselves.
    pub fn critic_loss(&mut self, b: &TensorBatch) -> Result<(Tensor, Metrics)> {
        let (target, _, selection) = self.td_target_marked(b, &mut |_| {})?;
        let last_valid = b.valid.select(1, self.shape.horizon as i64 - 1);
        let (loss, mut metrics) = self.critic.td_loss(&b.observations, &b.actions, &target, &last_valid);
        metrics.extend(selection);
        Ok((loss, metrics))
    }

    /// The TD target `[B]` of the batch and the chunk selected at each next state `[B, h·A]`
    /// (on the engine of `agent.select_engine`), without a graph; noise from libtorch's
    /// generator either way.
    pub fn td_target(&mut self, b: &TensorBatch) -> Result<(Tensor, Tensor)> {
        let (target, next_chunk, _) = self.td_target_marked(b, &mut |_| {})?;
        Ok((target, next_chunk))
    }

    fn td_target_marked(&mut self, b: &TensorBatch, mark: Mark) -> Result<(Tensor, Tensor, Metrics)> {
        let _no_grad = tch::no_grad_guard();
        let (next_chunk, selection) = self.select_next(b, mark)?;
        let next_q = self.critic.q_target(&b.next_observations, &next_chunk);
        let next_v = self.critic.config().aggregate.apply(&next_q);
        let target = self.critic.td_target(&b.rewards, &b.masks, &next_v, self.shape.horizon);
        mark("target: value");
        Ok((target, next_chunk, selection))
    }

    /// The chunk selected at each next state of the batch `[B, h·A]` (on the engine of
    /// `agent.select_engine`, noise from libtorch's generator), and the selection diagnostics.
    fn select_next(&mut self, b: &TensorBatch, mark: Mark) -> Result<(Tensor, Metrics)> {
        let _no_grad = tch::no_grad_guard();
        let n = self.num_samples;
        let (bs, d) = (b.next_observations.size()[0], self.shape.flat_dim() as i64);
        let noise = Tensor::randn([bs * n as i64, d], (b.next_observations.kind(), b.next_observations.device()));
        let (next_chunk, scored) = if self.native_select.is_some() {
            self.select_native(&b.next_observations, &noise, n, mark)?
        } else {
            self.select_marked(self.actor.as_ref(), &b.next_observations, &noise, n, mark)
        };
        let mut selection = Vec::new();
        if let Some((candidates, scores)) = scored.filter(|_| self.diagnostics) {
            let scores = scores.view([bs, n as i64]);
            let best = scores.amax(1, false);
            selection.push(("select/q_selected", best.mean(Kind::Float)));
            selection.push(("select/q_candidates", scores.mean(Kind::Float)));
            selection.push(("select/score_std", scores.std_dim(1, true, false).mean(Kind::Float)));
            let spread = candidates.view([bs, n as i64, d]).std_dim(1, true, false).mean(Kind::Float);
            selection.push(("select/candidate_std", spread));
        }
        Ok((next_chunk, selection))
    }

    /// The actor's loss: its own generative loss, masked by `valid`, on the buffer's chunks —
    /// or, for a share `agent.selected_target_fraction` of the batch, on the chunk a* that
    /// generate-and-select picks at the batch state (a full chunk, so all its steps count).
    /// Either way the target is data for a behaviour-cloning loss: no gradient of the critic
    /// reaches the actor.
    pub fn actor_loss(&self, b: &TensorBatch) -> (Tensor, Metrics) {
        let (actions, valid) = self.actor_data(b);
        self.actor.loss(&b.observations, &actions, Some(&valid))
    }

    /// The chunks `[B, h·A]` the actor's loss regresses on and their per-step mask `[B, h]`
    /// (see [`Agent::actor_loss`]).
    fn actor_data(&self, b: &TensorBatch) -> (Tensor, Tensor) {
        let bs = b.observations.size()[0];
        let k = (self.selected_target_fraction * bs as f64).round() as i64;
        if k == 0 || self.num_samples <= 1 {
            return (b.actions.shallow_clone(), b.valid.shallow_clone());
        }
        let selected = self.sample_actions(&b.observations.narrow(0, 0, k), self.num_samples).detach();
        let actions = Tensor::cat(&[selected, b.actions.narrow(0, k, bs - k)], 0);
        let valid = Tensor::cat(&[b.valid.narrow(0, 0, k).ones_like(), b.valid.narrow(0, k, bs - k)], 0);
        (actions, valid)
    }

    /// One update of critic and actor, then the target networks.
    pub fn update(&mut self, b: &TensorBatch) -> Result<Metrics> {
        self.update_marked(b, &mut |_| {})
    }

    /// [`Agent::update`], calling `mark` after each phase (TD target, losses, backward passes,
    /// optimiser steps, Polyak averaging) with the phase's name, for profiling. One sequence
    /// for every engine: each step (selection, the critic's loss and gradients, the actor's
    /// update) runs on the engine of the agent's [`EnginePlan`].
    pub fn update_marked(&mut self, b: &TensorBatch, mark: Mark) -> Result<Metrics> {
        if self.imitation {
            // Behaviour cloning: the actor's loss on the stored chunks, nothing else.
            let data = self.actor_data(b);
            return self.actor_update(b, data, mark);
        }
        let (next_chunk, selection) = self.select_next(b, mark)?;
        let mut metrics = self.critic_gradients(b, &next_chunk, mark)?;
        // The actor's chunks before the critic's step (selected ones are picked by this critic).
        let actor_data = self.actor_data(b);
        match &self.native_critic {
            Some(native) => self.critic_opt.step_flat(&native.grads.flat)?,
            None => drop(self.critic_opt.step()),
        }
        mark("critic: adam");
        let actor_metrics = self.actor_update(b, actor_data, mark)?;
        self.critic.soft_update();
        mark("polyak");
        metrics.extend(selection);
        metrics.extend(actor_metrics);
        Ok(metrics)
    }

    /// Whether the critic's update runs on the native kernels (`agent.critic_engine`).
    pub fn critic_natively(&self) -> bool {
        self.native_critic.is_some()
    }

    /// The critic's TD target (valuing `next_chunk` with the target members), its loss and
    /// the loss's gradients — in the parameters' `.grad` on libtorch, in the native update's
    /// flat gradient on the native kernels — and the critic's metrics. Stops on a non-finite
    /// loss before the critic's parameters change.
    fn critic_gradients(&mut self, b: &TensorBatch, next_chunk: &Tensor, mark: Mark) -> Result<Metrics> {
        let h = self.shape.horizon;
        let Some(native) = self.native_critic.as_mut() else {
            let target = {
                let _no_grad = tch::no_grad_guard();
                let next_v =
                    self.critic.config().aggregate.apply(&self.critic.q_target(&b.next_observations, next_chunk));
                self.critic.td_target(&b.rewards, &b.masks, &next_v, h)
            };
            mark("target: value");
            let last_valid = b.valid.select(1, h as i64 - 1);
            let (loss, metrics) = self.critic.td_loss(&b.observations, &b.actions, &target, &last_valid);
            mark("critic: loss");
            let cl = loss.double_value(&[]);
            anyhow::ensure!(cl.is_finite(), "non-finite critic loss {cl}; stopping, the last checkpoint is kept");
            self.critic_opt.zero_grad();
            loss.backward();
            mark("critic: backward");
            return Ok(metrics);
        };
        let (rewards, masks) = (host(&b.rewards), host(&b.masks));
        let target =
            native.td_target(&self.critic, &host(&b.next_observations), &host(next_chunk), &rewards, &masks, h);
        mark("target: value");
        let valid = host(&b.valid.select(1, h as i64 - 1));
        let (cl, q) = native.loss_and_grads(&self.critic, &host(&b.observations), &host(&b.actions), &target, &valid);
        mark("critic: loss and backward (native)");
        anyhow::ensure!(cl.is_finite(), "non-finite critic loss {cl}; stopping, the last checkpoint is kept");
        let all = q.iter().flatten().copied();
        let rows = target.len().max(1);
        let aggregate = self.critic.config().aggregate;
        let q_data = (0..rows).map(|r| crate::native_critic::combine(aggregate, q.iter().map(|m| m[r]))).sum::<f32>();
        let scalar = |v: f64| Tensor::from(v as f32);
        Ok(vec![
            ("critic/loss", scalar(cl)),
            ("critic/q_mean", scalar(all.clone().map(f64::from).sum::<f64>() / (q.len() * rows) as f64)),
            ("critic/q_max", scalar(f64::from(all.clone().fold(f32::NEG_INFINITY, f32::max)))),
            ("critic/q_min", scalar(f64::from(all.fold(f32::INFINITY, f32::min)))),
            ("critic/q_data", scalar(f64::from(q_data) / rows as f64)),
            ("critic/target_mean", scalar(target.iter().map(|&v| f64::from(v)).sum::<f64>() / rows as f64)),
        ])
    }

    /// Every tensor of the agent's state, named, for a checkpoint, and the optimiser steps.
    pub fn state(&self) -> (Vec<(String, Tensor)>, [u64; 2]) {
        let mut t = checkpoint::varstore_tensors(&self.actor_vs, "actor/");
        if let Some((vs, _, _)) = &self.ema {
            t.extend(checkpoint::varstore_tensors(vs, "actor_ema/"));
        }
        t.extend(checkpoint::varstore_tensors(&self.critic.vs, "critic/"));
        t.extend(checkpoint::varstore_tensors(&self.critic.target_vs, "critic_target/"));
        let (a, a_steps) = self.actor_opt.state("actor_opt/");
        let (c, c_steps) = self.critic_opt.state("critic_opt/");
        t.extend(a);
        t.extend(c);
        (t, [a_steps, c_steps])
    }

    /// An agent for the networks of checkpoint `dir` (one written by the trainer), built with
    /// `config` for observations of `obs_dim` and actions of `action_dim`; returns it with the
    /// checkpoint's metadata. Only the networks are read: no dataset, buffer or environment.
    pub fn load<M: serde::de::DeserializeOwned>(
        dir: &std::path::Path,
        obs_dim: usize,
        action_dim: usize,
        config: &AgentConfig,
        device: Device,
    ) -> Result<(Self, M)> {
        let loaded: checkpoint::Loaded<M> = checkpoint::load(dir)?;
        let mut agent = Self::new(obs_dim, action_dim, config, device)?;
        agent.load_state(&loaded.tensors, [0, 0])?;
        Ok((agent, loaded.meta))
    }

    /// Restores what [`Agent::state`] wrote.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: [u64; 2]) -> Result<()> {
        checkpoint::load_varstore(&self.actor_vs, tensors, "actor/")?;
        if let Some((vs, _, _)) = &mut self.ema {
            // A checkpoint written without the average starts it from the trained weights.
            if tensors.keys().any(|k| k.starts_with("actor_ema/")) {
                checkpoint::load_varstore(vs, tensors, "actor_ema/")?;
            } else {
                vs.copy(&self.actor_vs)?;
            }
        }
        checkpoint::load_varstore(&self.critic.vs, tensors, "critic/")?;
        checkpoint::load_varstore(&self.critic.target_vs, tensors, "critic_target/")?;
        self.actor_opt.load_state(tensors, "actor_opt/", steps[0])?;
        self.critic_opt.load_state(tensors, "critic_opt/", steps[1])?;
        Ok(())
    }
}

/// Fills `b` with fixed made-up values: observations in [−0.5, 0.5), the next observations
/// equal to them, actions in [−1, 1), rewards −1, every mask and step valid.
pub fn fill_synthetic(b: &mut ChunkBatch) {
    for (i, x) in b.observations.iter_mut().enumerate() {
        *x = ((i * 7919) % 997) as f32 / 997.0 - 0.5;
    }
    b.next_observations.copy_from_slice(&b.observations);
    for (i, x) in b.actions.iter_mut().enumerate() {
        *x = ((i * 104_729) % 1999) as f32 / 1000.0 - 1.0;
    }
    b.rewards.fill(-1.0);
    b.masks.fill(1.0);
    b.valid.fill(1.0);
}

/// Which engine runs each step of an agent, and why: resolved once, in [`Agent::new`], from
/// the config, the CPU and (for `auto`) the calibration of [`crate::engines::calibrate`].
#[derive(Debug, Clone)]
pub struct EnginePlan {
    /// TD-target selection and acting.
    pub select: Choice,
    /// The native selection's number format (where it runs natively).
    pub select_precision: Precision,
    /// The critic's update.
    pub critic: Choice,
    /// The actor's update.
    pub actor: Choice,
    /// The native kernels' family.
    pub isa: mvp_infer::Isa,
    /// The calibration the `auto` steps were decided by, where there was one.
    pub calibration: Option<crate::engines::Calibration>,
}

impl EnginePlan {
    /// The one place the engine keys are read: each step's config value, whether its native
    /// engine can run here (`can`, per [`Step::ALL`]: the reason where not), and for `auto` the
    /// calibration of these shapes on this CPU (or the rule where there is none).
    fn resolve(
        config: &AgentConfig,
        isa: mvp_infer::Isa,
        select_precision: Precision,
        calibration: Option<crate::engines::Calibration>,
        can: [std::result::Result<(), String>; 3],
    ) -> Result<Self> {
        let [select, critic, actor] = can;
        let times = |s: Step| calibration.as_ref().and_then(|c| c.times(s));
        let decide = |s: Step, can| crate::engines::decide(s, s.engine(config), can, times(s), isa);
        Ok(Self {
            select: decide(Step::Select, select)?,
            select_precision,
            critic: decide(Step::Critic, critic)?,
            actor: decide(Step::Actor, actor)?,
            isa,
            calibration,
        })
    }

    /// The start line's account: per step, its engine and why.
    pub fn describe(&self) -> String {
        let precision = match self.select_precision {
            Precision::Bf16 => "bf16",
            Precision::F32 => "fp32",
        };
        let select = match self.select.native {
            true => self.select.why.replacen(
                &format!("native {}", self.isa),
                &format!("native {} {precision}", self.isa),
                1,
            ),
            false => self.select.why.clone(),
        };
        format!(
            "TD-target selection and acting: {select}; critic update: {}; actor update: {}",
            self.critic.why, self.actor.why
        )
    }
}

/// What every native update needs: the CPU and plain Adam; the products' format follows
/// `runtime.matmul` (bf16 on CPUs with AVX512-BF16).
fn check_native_update(device: Device, optim: &mvp_nn::AdamConfig) -> Result<Precision> {
    if device != Device::Cpu {
        bail!("it runs on the CPU, the networks are on {device:?}");
    }
    if optim.weight_decay != 0.0 || optim.max_grad_norm.is_some() {
        bail!("its Adam step has no weight decay or gradient clipping");
    }
    match mvp_nn::MatmulPrecision::current() {
        mvp_nn::MatmulPrecision::F32 => Ok(Precision::F32),
        mvp_nn::MatmulPrecision::Bf16 if mvp_infer::Isa::active().has_bf16() => Ok(Precision::Bf16),
        mvp_nn::MatmulPrecision::Bf16 => bail!("runtime.matmul = \"bf16\" needs AVX512-BF16, which this CPU lacks"),
    }
}
