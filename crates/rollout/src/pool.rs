//! The [`EnvPool`] trait and its implementations: [`VecEnv`] (Python worker processes),
//! [`HistoryPool`] (observation history over another pool) and [`LocalPool`] (environments of
//! this process), with [`with_history`].

use std::collections::VecDeque;

use anyhow::{bail, Result};
use mvp_envs::{Env, EnvSpec, Outcome, VecEnv};

/// E environments of one kind, reset and stepped in batches.
pub trait EnvPool: Send {
    /// The environments' description.
    fn spec(&self) -> &EnvSpec;
    /// Number of environments E.
    fn num_envs(&self) -> usize;
    /// Resets `envs` (seeded with `seeds[k]`; `None` continues the environment's generator)
    /// and returns their first observations in request order.
    fn reset(&mut self, envs: &[usize], seeds: &[Option<u64>]) -> Result<Vec<Vec<f32>>>;
    /// Steps `envs` with `actions` (`[envs.len(), action_dim]`); outcomes in request order.
    fn step(&mut self, envs: &[usize], actions: &[f32]) -> Result<Vec<Outcome>>;
    /// How many times an environment (worker) failed and was restarted.
    fn restarts(&self) -> u64;
    /// The state of environment `env`'s running episode ([`Env::snapshot`]), where the pool
    /// can give one.
    fn snapshot(&self, _env: usize) -> Option<Vec<u8>> {
        None
    }
    /// Restores a state from [`EnvPool::snapshot`] of environment `env`.
    fn restore(&mut self, env: usize, _state: &[u8]) -> Result<()> {
        bail!("the environments of this pool cannot restore a snapshot (environment {env})")
    }
    /// An RGB frame of environment `env` as it is now, where the pool renders
    /// ([`make_render_pool`](crate::make_render_pool)).
    fn render(&mut self, env: usize) -> Result<mvp_envs::Frame> {
        bail!("the environments of this pool do not render (environment {env}); videos need a pool made for them")
    }
    /// Releases the environments.
    fn close(&mut self) -> Result<()>;
}

impl EnvPool for VecEnv {
    fn spec(&self) -> &EnvSpec {
        VecEnv::spec(self)
    }
    fn num_envs(&self) -> usize {
        VecEnv::num_envs(self)
    }
    fn reset(&mut self, envs: &[usize], seeds: &[Option<u64>]) -> Result<Vec<Vec<f32>>> {
        Ok(VecEnv::reset(self, envs, seeds)?.into_iter().map(|(obs, _)| obs).collect())
    }
    fn step(&mut self, envs: &[usize], actions: &[f32]) -> Result<Vec<Outcome>> {
        VecEnv::step(self, envs, actions)
    }
    fn restarts(&self) -> u64 {
        VecEnv::restarts(self)
    }
    fn close(&mut self) -> Result<()> {
        VecEnv::close(self)
    }
    fn render(&mut self, env: usize) -> Result<mvp_envs::Frame> {
        VecEnv::render(self, env)
    }
}

/// A pool whose observations are the last `k` observations of each environment's episode,
/// oldest first (width `k · obs_dim`; the episode's first observation repeated until it has
/// `k`), as MP1 and Diffusion Policy condition on an observation history. It stacks exactly as
/// `Dataset::with_history` of mvp-replay does, so a policy trained on a stacked dataset sees
/// the same inputs online. Snapshots hold the inner environment's state and the history.
pub struct HistoryPool {
    inner: Box<dyn EnvPool>,
    k: usize,
    spec: EnvSpec,
    frames: Vec<VecDeque<Vec<f32>>>,
}

impl HistoryPool {
    /// Stacks the last `k ≥ 1` observations of every environment of `inner`.
    pub fn new(inner: Box<dyn EnvPool>, k: usize) -> Self {
        let k = k.max(1);
        let mut spec = inner.spec().clone();
        spec.obs_dim *= k;
        let frames = vec![VecDeque::with_capacity(k); inner.num_envs()];
        Self { inner, k, spec, frames }
    }

    fn push(&mut self, env: usize, obs: Vec<f32>, first: bool) -> Vec<f32> {
        let frames = &mut self.frames[env];
        if first {
            frames.clear();
            frames.extend(std::iter::repeat_n(obs, self.k));
        } else {
            frames.pop_front();
            frames.push_back(obs);
        }
        frames.iter().flatten().copied().collect()
    }
}

impl EnvPool for HistoryPool {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }
    fn num_envs(&self) -> usize {
        self.inner.num_envs()
    }
    fn reset(&mut self, envs: &[usize], seeds: &[Option<u64>]) -> Result<Vec<Vec<f32>>> {
        let first = self.inner.reset(envs, seeds)?;
        Ok(envs.iter().zip(first).map(|(&i, obs)| self.push(i, obs, true)).collect())
    }
    fn step(&mut self, envs: &[usize], actions: &[f32]) -> Result<Vec<Outcome>> {
        let outcomes = self.inner.step(envs, actions)?;
        Ok(envs
            .iter()
            .zip(outcomes)
            .map(|(&i, outcome)| match outcome {
                Outcome::Step(mut step) => {
                    step.obs = self.push(i, std::mem::take(&mut step.obs), false);
                    Outcome::Step(step)
                }
                lost => lost,
            })
            .collect())
    }
    fn restarts(&self) -> u64 {
        self.inner.restarts()
    }
    fn snapshot(&self, env: usize) -> Option<Vec<u8>> {
        let inner = self.inner.snapshot(env)?;
        let history: Vec<f32> = self.frames[env].iter().flatten().copied().collect();
        let mut out = (inner.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&inner);
        out.extend(history.iter().flat_map(|x| x.to_le_bytes()));
        Some(out)
    }
    fn restore(&mut self, env: usize, state: &[u8]) -> Result<()> {
        let d = self.inner.spec().obs_dim;
        let len = state.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
        let Some((inner, history)) = len.and_then(|n| state.get(8..).map(|rest| rest.split_at_checked(n))).flatten()
        else {
            bail!("a history pool's snapshot of environment {env} is truncated");
        };
        if history.len() != self.k * d * 4 {
            bail!(
                "a history pool's snapshot of environment {env} holds {} bytes of history, expected {}",
                history.len(),
                self.k * d * 4
            );
        }
        self.inner.restore(env, inner)?;
        let values: Vec<f32> =
            history.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        self.frames[env] = values.chunks(d).map(<[f32]>::to_vec).collect();
        Ok(())
    }
    fn render(&mut self, env: usize) -> Result<mvp_envs::Frame> {
        self.inner.render(env)
    }
    fn close(&mut self) -> Result<()> {
        self.inner.close()
    }
}

/// Environments of this process (native Rust ones, or any [`Env`]), stepped one after the
/// other. A failed step asks the environment to [`recover`](Env::recover); if it does, the
/// outcome is [`Outcome::Lost`].
pub struct LocalPool {
    envs: Vec<Box<dyn Env>>,
    spec: EnvSpec,
    restarts: u64,
}

impl LocalPool {
    /// A pool over `envs` (at least one, all of the same spec).
    pub fn new(envs: Vec<Box<dyn Env>>) -> Result<Self> {
        let Some(first) = envs.first() else { bail!("a pool needs at least one environment") };
        let spec = first.spec().clone();
        if envs.iter().any(|e| e.spec() != &spec) {
            bail!("every environment of a pool must have the same spec");
        }
        Ok(Self { envs, spec, restarts: 0 })
    }
}

impl EnvPool for LocalPool {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }
    fn num_envs(&self) -> usize {
        self.envs.len()
    }
    fn reset(&mut self, envs: &[usize], seeds: &[Option<u64>]) -> Result<Vec<Vec<f32>>> {
        envs.iter().enumerate().map(|(k, &i)| Ok(self.envs[i].reset(seeds.get(k).copied().flatten())?.0)).collect()
    }
    fn step(&mut self, envs: &[usize], actions: &[f32]) -> Result<Vec<Outcome>> {
        let a = self.spec.action_dim;
        let mut out = Vec::with_capacity(envs.len());
        for (k, &i) in envs.iter().enumerate() {
            match self.envs[i].step(&actions[k * a..(k + 1) * a]) {
                Ok(step) => out.push(Outcome::Step(step)),
                Err(err) => {
                    if !self.envs[i].recover()? {
                        return Err(err);
                    }
                    self.restarts += 1;
                    out.push(Outcome::Lost(format!("{err:#}").lines().next().unwrap_or_default().to_string()));
                }
            }
        }
        Ok(out)
    }
    fn restarts(&self) -> u64 {
        self.restarts
    }
    fn snapshot(&self, env: usize) -> Option<Vec<u8>> {
        self.envs[env].snapshot()
    }
    fn restore(&mut self, env: usize, state: &[u8]) -> Result<()> {
        self.envs[env].restore(state)
    }
    fn close(&mut self) -> Result<()> {
        self.envs.iter_mut().try_for_each(|e| e.close())
    }
}

/// `pool` with its observations stacked `history` deep ([`HistoryPool`]); `pool` itself when
/// `history` ≤ 1.
pub fn with_history(pool: Box<dyn EnvPool>, history: usize) -> Box<dyn EnvPool> {
    if history <= 1 {
        pool
    } else {
        Box::new(HistoryPool::new(pool, history))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::make_pool;
    use crate::testing::native_pool;

    fn step_obs(pool: &mut dyn EnvPool, a: &[f32]) -> Vec<f32> {
        match pool.step(&[0], a).unwrap().pop().unwrap() {
            Outcome::Step(s) => s.obs,
            Outcome::Lost(why) => panic!("lost: {why}"),
        }
    }

    #[test]
    fn a_history_pool_stacks_each_episode_and_restores_its_history() {
        let (mut plain, mut stacked) = (native_pool(1), make_pool("branch-reach-v0", 1, 1, 0, 3).unwrap());
        let d = plain.spec().obs_dim;
        assert_eq!(stacked.spec().obs_dim, 3 * d);
        let o0 = plain.reset(&[0], &[Some(4)]).unwrap().remove(0);
        assert_eq!(stacked.reset(&[0], &[Some(4)]).unwrap().remove(0), [o0.clone(), o0.clone(), o0.clone()].concat());
        let (a, b) = ([0.5, -0.2], [-0.3, 0.9]);
        let o1 = step_obs(plain.as_mut(), &a);
        assert_eq!(step_obs(stacked.as_mut(), &a), [o0.clone(), o0.clone(), o1.clone()].concat());
        let o2 = step_obs(plain.as_mut(), &b);
        assert_eq!(step_obs(stacked.as_mut(), &b), [o0.clone(), o1.clone(), o2.clone()].concat());
        // A snapshot carries the history: a fresh pool restored from it continues identically.
        let snap = stacked.snapshot(0).unwrap();
        let mut copy = make_pool("branch-reach-v0", 1, 1, 0, 3).unwrap();
        copy.restore(0, &snap).unwrap();
        assert_eq!(step_obs(copy.as_mut(), &a), step_obs(stacked.as_mut(), &a));
        assert!(copy.restore(0, &snap[..snap.len() - 1]).is_err(), "a truncated snapshot is refused");
        // A new episode starts a new history.
        let o0 = plain.reset(&[0], &[Some(5)]).unwrap().remove(0);
        assert_eq!(stacked.reset(&[0], &[Some(5)]).unwrap().remove(0), [o0.clone(), o0.clone(), o0].concat());
    }
}
