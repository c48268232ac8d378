//! Acting in the training environments and storing what they return: lockstep, or with the
//! collector on its own thread (`env.async_collect`).

use anyhow::{Context, Result};
use mvp_rollout::{AsyncCollector, Collected, OwnedPolicy};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::Trainer;
use crate::progress::step_seed;

impl Trainer {
    /// One step of the E environments of the collector: released transitions go into the
    /// buffer (with E > 1 whole episodes); returns episode metrics (means over the episodes
    /// that ended). Before updates start without a dataset, chunks are uniform at random.
    pub(super) fn collect(&mut self, online_step: u64, rng: &mut StdRng) -> Result<Vec<(&'static str, f64)>> {
        let random = !self.has_dataset && online_step < self.config.schedule.warmup_steps;
        let agent = &self.agent;
        let width = self.config.agent.horizon * self.spec.action_dim;
        let mut policy = |obs: &[f32], k: usize| -> Result<Vec<f32>> {
            if random {
                return Ok((0..k * width).map(|_| rng.random_range(-1.0f32..=1.0)).collect());
            }
            agent.act_rows(obs, k)
        };
        let got = self.collector.as_mut().expect("the collector is here in lockstep mode").step(&mut policy)?;
        self.store(got)
    }

    /// [`Trainer::collect`] with the collector on its own thread (`env.async_collect`): takes the
    /// transitions of its next step, after giving it the policy of the step after (the networks
    /// as they are now, on the native engine), so that it steps while this thread updates.
    pub(super) fn collect_async(&mut self, online_step: u64) -> Result<Vec<(&'static str, f64)>> {
        let c = online_step / self.num_envs as u64;
        let running = match self.async_collector.take() {
            Some(mut running) => {
                running.send(self.owned_policy(c + 1)?)?;
                running
            }
            None => {
                let collector = self.collector.take().expect("the collector starts on its thread once");
                let (first, second) = (self.owned_policy(c)?, self.owned_policy(c + 1)?);
                AsyncCollector::start(collector, first, second)?
            }
        };
        let got = self.async_collector.insert(running).receive()?;
        self.store(got)
    }

    /// The acting policy of collector step `c` as a value for the collector's thread: the
    /// current networks on the native engine, or uniform chunks during a warm-up without data;
    /// its noise seeded from (run seed, c).
    pub(super) fn owned_policy(&self, c: u64) -> Result<OwnedPolicy> {
        let seed = step_seed(self.config.run.seed ^ 0xA5A5_5A5A, c);
        let width = self.config.agent.horizon * self.spec.action_dim;
        let warmup = self.config.schedule.warmup_steps / self.num_envs as u64;
        if !self.has_dataset && c < warmup {
            let mut rng = StdRng::seed_from_u64(seed);
            return Ok(Box::new(move |_: &[f32], k: usize| {
                Ok((0..k * width).map(|_| rng.random_range(-1.0f32..=1.0)).collect())
            }));
        }
        let precision = self.agent.select_precision().context(
            "config key `env.async_collect` needs the native engine for acting (MVP or flow actors on a CPU, \
             agent.select_engine auto or native)",
        )?;
        let mut native = self.agent.native_policy(precision, seed)?;
        Ok(Box::new(move |obs: &[f32], k: usize| {
            let mut out = vec![0.0; k * width];
            native.act(obs, &mut out);
            Ok(out)
        }))
    }

    /// Puts a collector step's released transitions into the buffer; returns its episode metrics.
    fn store(&mut self, got: Collected) -> Result<Vec<(&'static str, f64)>> {
        if got.cut_stored_episode {
            self.buffer.end_episode();
        }
        for t in &got.ready {
            self.buffer.push(t)?;
        }
        self.progress.online_rows += got.ready.len() as u64;
        let mut out = Vec::new();
        if got.lost > 0 {
            self.progress.env_restarts += got.lost as u64;
            self.progress.episodes += got.lost as u64;
            out.push(("env/restarts", self.progress.env_restarts as f64));
        }
        if !got.finished.is_empty() {
            let n = got.finished.len() as f64;
            out.push(("train/episode_return", got.finished.iter().map(|e| e.ret).sum::<f64>() / n));
            out.push(("train/episode_length", got.finished.iter().map(|e| e.length as f64).sum::<f64>() / n));
            out.push(("train/episode_success", got.finished.iter().filter(|e| e.success).count() as f64 / n));
            self.progress.episodes += got.finished.len() as u64;
        }
        Ok(out)
    }
}
