//! One update of the agent, one sequence for every engine: select at the next states → the
//! critic's TD loss and gradients → the critic's Adam step → the actor's update → Polyak.
//! Each step runs on the engine of the agent's [`super::EnginePlan`]; native steps read the
//! batch's host arrays, libtorch steps its tensors.

use anyhow::Result;
use mvp_critic::AggregateExt;
use mvp_replay::ChunkBatch;
use tch::{Kind, Tensor};

use super::batch::Batch;
use super::{Agent, Metrics};
use crate::native::host;
use crate::native_actor::ActorRows;

/// The chunks the actor's loss regresses on: the batch's own (host arrays, read in place) or,
/// with `agent.selected_target_fraction`, partly re-selected ones (tensors).
enum ActorData {
    Stored,
    Selected(Tensor, Tensor),
}

impl Agent {
    /// One update of critic and actor, then the target networks, on a sampled batch.
    pub fn update(&mut self, b: &ChunkBatch) -> Result<Metrics> {
        let b = Batch::new(b, self.device);
        if self.imitation {
            // Behaviour cloning: the actor's loss on the stored chunks, nothing else.
            let data = self.actor_data(&b);
            return self.actor_update(&b, data);
        }
        let (next_chunk, selection) = self.select_next(&b)?;
        let mut metrics = self.critic_gradients(&b, &next_chunk)?;
        // The actor's chunks before the critic's step (selected ones are picked by this critic).
        let actor_data = self.actor_data(&b);
        match &self.native_critic {
            Some(native) => self.critic_opt.step_flat(&native.grads.flat)?,
            None => drop(self.critic_opt.step()),
        }
        self.mark("critic: adam");
        let actor_metrics = self.actor_update(&b, actor_data)?;
        self.critic.soft_update();
        self.mark("polyak");
        metrics.extend(selection);
        metrics.extend(actor_metrics);
        Ok(metrics)
    }

    /// The critic's TD loss. The target selects `a*` at `s_{k+h}` with the online critic (as in
    /// acting) and values it with the target critic; it is detached. With N > 1 it also reports
    /// what selection does (the diagnostics of a young critic): the online Q of the selected
    /// chunks (compare with the critic's `critic/q_data`, the stored chunks scored the same way),
    /// the spread of the candidates' scores and of the candidates themselves.
    pub fn critic_loss(&mut self, b: &ChunkBatch) -> Result<(Tensor, Metrics)> {
        let b = Batch::new(b, self.device);
        let (target, _, selection) = self.td_target_of(&b)?;
        let t = b.t();
        let last_valid = t.valid.select(1, self.shape.horizon as i64 - 1);
        let (loss, mut metrics) = self.critic.td_loss(&t.observations, &t.actions, &target, &last_valid);
        metrics.extend(selection);
        Ok((loss, metrics))
    }

    /// The TD target `[B]` of the batch and the chunk selected at each next state `[B, h·A]`
    /// (on the engine of `agent.select_engine`), without a graph; noise from libtorch's
    /// generator either way.
    pub fn td_target(&mut self, b: &ChunkBatch) -> Result<(Tensor, Tensor)> {
        let b = Batch::new(b, self.device);
        let (target, next_chunk, _) = self.td_target_of(&b)?;
        Ok((target, next_chunk))
    }

    fn td_target_of(&mut self, b: &Batch) -> Result<(Tensor, Tensor, Metrics)> {
        let _no_grad = tch::no_grad_guard();
        let (next_chunk, selection) = self.select_next(b)?;
        let t = b.t();
        let next_q = self.critic.q_target(&t.next_observations, &next_chunk);
        let next_v = self.critic.config().aggregate.apply(&next_q);
        let target = self.critic.td_target(&t.rewards, &t.masks, &next_v, self.shape.horizon);
        self.mark("target: value");
        Ok((target, next_chunk, selection))
    }

    /// The actor's loss: its own generative loss, masked by `valid`, on the buffer's chunks —
    /// or, for a share `agent.selected_target_fraction` of the batch, on the chunk a* that
    /// generate-and-select picks at the batch state (a full chunk, so all its steps count).
    /// Either way the target is data for a behaviour-cloning loss: no gradient of the critic
    /// reaches the actor.
    ///
    /// A policy trained through the critic (FQL) adds its Q term (metric `actor/q_policy`),
    /// valued by the online critic (the mean over its members). Its gradient reaches the
    /// critic's parameters too; the update discards it there after the actor's backward pass.
    pub fn actor_loss(&self, b: &ChunkBatch) -> (Tensor, Metrics) {
        let b = Batch::new(b, self.device);
        let (actions, valid) = self.actor_tensors(&b, self.actor_data(&b));
        let (loss, metrics, _) = self.actor_loss_of(&b.t().observations, &actions, &valid);
        (loss, metrics)
    }

    /// The actor's loss and metrics, and whether it holds a Q term.
    fn actor_loss_of(&self, obs: &Tensor, actions: &Tensor, valid: &Tensor) -> (Tensor, Metrics, bool) {
        let (loss, mut metrics) = self.actor.loss(obs, actions, Some(valid));
        let critic = &self.critic;
        let q = |chunks: &Tensor| critic.q(obs, chunks).mean_dim(0, false, Kind::Float);
        // Imitation trains no critic: nothing to climb.
        let term = if self.imitation { None } else { self.actor.q_term(obs, &q) };
        match term {
            None => (loss, metrics, false),
            Some((term, extra)) => {
                let total = loss + term;
                metrics.extend(extra);
                metrics.push(("actor/loss", total.detach()));
                (total, metrics, true)
            }
        }
    }

    /// The chunk selected at each next state of the batch `[B, h·A]` (on the engine of
    /// `agent.select_engine`, noise from libtorch's generator), and the selection diagnostics.
    fn select_next(&mut self, b: &Batch) -> Result<(Tensor, Metrics)> {
        let _no_grad = tch::no_grad_guard();
        let n = self.num_samples;
        let (bs, d) = (b.rows() as i64, self.shape.flat_dim() as i64);
        let noise = Tensor::randn([bs * n as i64, d], (Kind::Float, self.device));
        let (next_chunk, scored) = if self.native_select.is_some() {
            self.select_native(&b.host.next_observations, &noise, n)?
        } else {
            self.select_among(self.actor.as_ref(), &b.t().next_observations, &noise, n)
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

    /// What the actor's loss regresses on (see [`Agent::actor_loss`]).
    fn actor_data(&self, b: &Batch) -> ActorData {
        let bs = b.rows() as i64;
        let k = (self.selected_target_fraction * bs as f64).round() as i64;
        if k == 0 || self.num_samples <= 1 {
            return ActorData::Stored;
        }
        let t = b.t();
        let selected = self.sample_actions(&t.observations.narrow(0, 0, k), self.num_samples).detach();
        let actions = Tensor::cat(&[selected, t.actions.narrow(0, k, bs - k)], 0);
        let valid = Tensor::cat(&[t.valid.narrow(0, 0, k).ones_like(), t.valid.narrow(0, k, bs - k)], 0);
        ActorData::Selected(actions, valid)
    }

    /// The actor's chunks `[B, h·A]` and their per-step mask `[B, h]` as tensors.
    fn actor_tensors(&self, b: &Batch, data: ActorData) -> (Tensor, Tensor) {
        match data {
            ActorData::Stored => (b.t().actions.shallow_clone(), b.t().valid.shallow_clone()),
            ActorData::Selected(actions, valid) => (actions, valid),
        }
    }

    /// The actor's update on `b` with its [`ActorData`]: its loss, backward pass and Adam step
    /// (on the native kernels where `agent.actor_engine` puts them), then its moving average.
    /// Stops on a non-finite loss before the actor's parameters change.
    fn actor_update(&mut self, b: &Batch, data: ActorData) -> Result<Metrics> {
        if self.native_actor.is_some() {
            return self.actor_update_native(b, data);
        }
        let (actions, valid) = self.actor_tensors(b, data);
        let (loss, metrics, through_critic) = self.actor_loss_of(&b.t().observations, &actions, &valid);
        self.mark("actor: loss");
        let al = loss.double_value(&[]);
        anyhow::ensure!(al.is_finite(), "non-finite actor loss {al}; stopping, the last checkpoint is kept");
        self.actor_opt.zero_grad();
        loss.backward();
        if through_critic {
            // The Q term's gradient also reached the critic: it is not the critic's to use.
            self.critic_opt.zero_grad();
        }
        self.mark("actor: backward");
        self.actor_opt.step();
        self.update_ema();
        self.mark("actor: adam");
        Ok(metrics)
    }

    /// [`Agent::actor_update`] on the native kernels. The loss's randomness still comes from
    /// libtorch's generator (the same draws as the libtorch update's).
    fn actor_update_native(&mut self, b: &Batch, data: ActorData) -> Result<Metrics> {
        let (h, a) = (self.shape.horizon, self.shape.action_dim);
        let bs = b.rows();
        let (actions, valid) = match data {
            ActorData::Stored => (None, None),
            ActorData::Selected(actions, valid) => (Some(host(&actions)), Some(host(&valid))),
        };
        let (actions, valid) =
            (actions.as_deref().unwrap_or(&b.host.actions), valid.as_deref().unwrap_or(&b.host.valid));
        // The draws depend on the chunks' shape only (no values: nothing to fill or copy).
        let like = Tensor::empty([bs as i64, (h * a) as i64], (Kind::Float, self.device));
        let draws = self.actor.loss_draws(&like).expect("an actor with a native loss draws its randomness");
        let mask: Vec<f32> = valid.iter().flat_map(|&v| std::iter::repeat_n(v, a)).collect();
        let (eps, t, r) = (host(&draws.eps), host(&draws.t), draws.r.as_ref().map(host));
        let rows = ActorRows { obs: &b.host.observations, actions, mask: &mask, eps: &eps, t: &t, r: r.as_deref() };
        let net = self.actor.native().map_err(anyhow::Error::msg)?.net;
        let native = self.native_actor.as_mut().expect("checked by the caller");
        let parts = native.loss_and_grads(net, &rows);
        self.mark("actor: loss and backward (native)");
        let al = parts.iter().find(|(name, _)| *name == "actor/loss").map_or(f64::NAN, |p| p.1);
        anyhow::ensure!(al.is_finite(), "non-finite actor loss {al}; stopping, the last checkpoint is kept");
        let native = self.native_actor.as_ref().expect("checked by the caller");
        self.actor_opt.step_flat(&native.grads.flat)?;
        self.update_ema();
        self.mark("actor: adam");
        Ok(parts.into_iter().map(|(name, v)| (name, Tensor::from(v as f32))).collect())
    }

    /// The critic's TD target (valuing `next_chunk` with the target members), its loss and
    /// the loss's gradients — in the parameters' `.grad` on libtorch, in the native update's
    /// flat gradient on the native kernels — and the critic's metrics. Stops on a non-finite
    /// loss before the critic's parameters change.
    fn critic_gradients(&mut self, b: &Batch, next_chunk: &Tensor) -> Result<Metrics> {
        let h = self.shape.horizon;
        if self.native_critic.is_none() {
            let t = b.t();
            let target = {
                let _no_grad = tch::no_grad_guard();
                let next_v =
                    self.critic.config().aggregate.apply(&self.critic.q_target(&t.next_observations, next_chunk));
                self.critic.td_target(&t.rewards, &t.masks, &next_v, h)
            };
            self.mark("target: value");
            let last_valid = t.valid.select(1, h as i64 - 1);
            let (loss, metrics) = self.critic.td_loss(&t.observations, &t.actions, &target, &last_valid);
            self.mark("critic: loss");
            let cl = loss.double_value(&[]);
            anyhow::ensure!(cl.is_finite(), "non-finite critic loss {cl}; stopping, the last checkpoint is kept");
            self.critic_opt.zero_grad();
            loss.backward();
            self.mark("critic: backward");
            return Ok(metrics);
        }
        let hb = b.host;
        let native = self.native_critic.as_mut().expect("checked above");
        let target =
            native.td_target(&self.critic, &hb.next_observations, &host(next_chunk), &hb.rewards, &hb.masks, h);
        self.mark("target: value");
        let native = self.native_critic.as_mut().expect("checked above");
        let (cl, q) = native.loss_and_grads(
            &self.critic,
            &hb.observations,
            &hb.actions,
            &target,
            &hb.last_valid().collect::<Vec<_>>(),
        );
        self.mark("critic: loss and backward (native)");
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
}
