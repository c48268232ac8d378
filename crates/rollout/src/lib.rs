//! Parallel rollouts for the mvp framework: pools of environments stepped together, with a
//! chunk queue per environment and **one batched policy query** for all environments that
//! need a new action chunk.
//!
//! - [`EnvPool`]: E environments behind one interface: [`VecEnv`] (W Python worker processes
//!   × M environments, stepping in parallel) or [`LocalPool`] (native Rust environments).
//!   Build one by name with [`make_pool`]. A failed environment reports [`Outcome::Lost`]: its
//!   episode is over, it was restarted and needs a reset.
//! - [`Collector`]: online data collection over a pool of E ≥ 1 environments, the one online
//!   path of training: one environment releases each transition at once and resumes exactly
//!   ([`CollectorState`]); several stage each episode and release it whole, so that a replay
//!   buffer never interleaves two episodes.
//! - [`AsyncCollector`]: a [`Collector`] on its own thread, stepping environments while the
//!   learner updates, each step acting with a policy two versions old (deterministic).
//! - [`evaluate`]: the evaluation protocol (one query per chunk, executed open-loop, success
//!   from `info.success` at the episode's end; episode `e` seeded `seed + e`) spread over the
//!   pool's environments. An episode lost to a crashed worker is run again with its seed.
//!
//! Pure Rust, no tensors: the policy is a closure from a batch of observations to a batch of
//! flattened chunks, so that this crate serves any actor on any device. Depends on `mvp-envs`,
//! `serde`, `anyhow` and `tracing`.

use std::collections::VecDeque;

use anyhow::{bail, Result};
use mvp_envs::{Env, EnvSpec, Outcome, VecEnv, VecEnvConfig};
use serde::{Deserialize, Serialize};

/// A policy query: observations `[k, obs_dim]` (row-major) and `k` → chunks `[k, h·action_dim]`.
pub type Policy<'a> = dyn FnMut(&[f32], usize) -> Result<Vec<f32>> + 'a;

/// A policy that can move to another thread (one version of the learner's acting networks).
pub type OwnedPolicy = Box<dyn FnMut(&[f32], usize) -> Result<Vec<f32>> + Send>;

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
    /// ([`make_render_pool`]).
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

/// A pool of `num_envs` environments called `name`: native ones in this process, or Python
/// workers (as many as `max_workers` processes, the environments spread evenly; the pool
/// may round `num_envs` up to a multiple of the worker count). Environment `i` is seeded
/// `seed + i` at its first unseeded reset. `history` > 1 stacks that many observations
/// ([`HistoryPool`]).
pub fn make_pool(
    name: &str,
    num_envs: usize,
    max_workers: usize,
    seed: u64,
    history: usize,
) -> Result<Box<dyn EnvPool>> {
    let num_envs = num_envs.max(1);
    let pool: Box<dyn EnvPool> = if mvp_envs::NATIVE_ENVS.contains(&name) {
        let envs = (0..num_envs).map(|_| mvp_envs::make_native(name)).collect::<Result<Vec<_>>>()?;
        Box::new(LocalPool::new(envs)?)
    } else {
        let workers = max_workers.clamp(1, num_envs);
        let per_worker = num_envs.div_ceil(workers);
        Box::new(VecEnv::new(VecEnvConfig::new(name, workers, per_worker, seed))?)
    };
    Ok(with_history(pool, history))
}

/// A pool of `num_envs` environments called `name` hosted by workers already listening at
/// `addresses` (`python -m mvp_envs.worker --listen HOST:PORT`, one worker per address, the
/// environments spread evenly), connected over TCP; otherwise as [`make_pool`]. A worker whose
/// connection fails is reconnected (its environments are rebuilt) like a restarted process.
pub fn make_remote_pool(
    name: &str,
    num_envs: usize,
    addresses: &[String],
    seed: u64,
    history: usize,
) -> Result<Box<dyn EnvPool>> {
    if addresses.is_empty() {
        bail!("a remote pool needs at least one worker address");
    }
    let workers = addresses.len().min(num_envs.max(1));
    let mut config = VecEnvConfig::new(name, workers, num_envs.max(1).div_ceil(workers), seed);
    config.addresses = addresses[..workers].to_vec();
    Ok(with_history(Box::new(VecEnv::new(config)?), history))
}

/// A pool of `num_envs` environments called `name` hosted by `workers` Ray actors placed as
/// `ray` says ([`mvp_envs::RayWorkers`]), connected over TCP; otherwise as [`make_pool`]. A
/// worker actor that Ray restarts is reconnected where it now serves (its environments are
/// rebuilt), like a restarted process.
pub fn make_ray_pool(
    name: &str,
    num_envs: usize,
    workers: usize,
    ray: mvp_envs::RayConfig,
    seed: u64,
    history: usize,
) -> Result<Box<dyn EnvPool>> {
    if mvp_envs::NATIVE_ENVS.contains(&name) {
        bail!("the native environment {name} runs in this process; Ray workers host Python environments");
    }
    let num_envs = num_envs.max(1);
    let workers = workers.clamp(1, num_envs);
    let mut config = VecEnvConfig::new(name, workers, num_envs.div_ceil(workers), seed);
    config.ray = Some(ray);
    Ok(with_history(Box::new(VecEnv::new(config)?), history))
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

/// One environment of `name` in its own worker process, rendering RGB frames of `[width,
/// height]` offscreen (for videos; [`record`]), observations stacked `history` deep. Native
/// environments do not render.
pub fn make_render_pool(name: &str, size: [u32; 2], seed: u64, history: usize) -> Result<Box<dyn EnvPool>> {
    if mvp_envs::NATIVE_ENVS.contains(&name) {
        bail!("the native environment {name} does not render; videos need a MuJoCo environment (OGBench, robomimic)");
    }
    let mut config = VecEnvConfig::new(name, 1, 1, seed);
    config.worker.render = Some(size);
    Ok(with_history(Box::new(VecEnv::new(config)?), history))
}

/// Runs `episodes` episodes like [`evaluate`] on a pool of one rendering environment
/// ([`make_render_pool`]) and returns each episode's statistics with its frames: the first
/// observation's, then one after every step (an episode of L steps has L + 1 frames).
pub fn record(
    pool: &mut dyn EnvPool,
    h: usize,
    execute: usize,
    episodes: usize,
    seed: u64,
    policy: &mut Policy<'_>,
) -> Result<Vec<(EpisodeStats, Vec<mvp_envs::Frame>)>> {
    if pool.num_envs() != 1 {
        bail!("recording needs a pool of one environment, this one has {}", pool.num_envs());
    }
    let mut recorder = Recorder { pool, episodes: Vec::new() };
    let stats = evaluate(&mut recorder, h, execute, episodes, seed, policy)?;
    Ok(stats.into_iter().zip(recorder.episodes).collect())
}

/// An [`EnvPool`] of one environment that renders it after every reset and step.
struct Recorder<'a> {
    pool: &'a mut dyn EnvPool,
    /// Frames of each episode so far (the last one is running).
    episodes: Vec<Vec<mvp_envs::Frame>>,
}

impl EnvPool for Recorder<'_> {
    fn spec(&self) -> &EnvSpec {
        self.pool.spec()
    }
    fn num_envs(&self) -> usize {
        1
    }
    fn reset(&mut self, envs: &[usize], seeds: &[Option<u64>]) -> Result<Vec<Vec<f32>>> {
        let obs = self.pool.reset(envs, seeds)?;
        self.episodes.push(vec![self.pool.render(0)?]);
        Ok(obs)
    }
    fn step(&mut self, envs: &[usize], actions: &[f32]) -> Result<Vec<Outcome>> {
        let outcomes = self.pool.step(envs, actions)?;
        match outcomes.first() {
            Some(Outcome::Step(_)) => {
                let frame = self.pool.render(0)?;
                self.episodes.last_mut().expect("a reset came first").push(frame);
            }
            // The episode runs again from its reset: drop its frames.
            Some(Outcome::Lost(_)) => {
                self.episodes.pop();
            }
            None => {}
        }
        Ok(outcomes)
    }
    fn restarts(&self) -> u64 {
        self.pool.restarts()
    }
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What one finished episode gave.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpisodeStats {
    /// Undiscounted return.
    pub ret: f64,
    /// Steps.
    pub length: usize,
    /// `info.success` at the episode's last step.
    pub success: bool,
}

/// Runs `episodes` evaluation episodes of `policy` over the pool's environments: of each chunk
/// of `h` actions the first `execute` (1 ≤ execute ≤ h) are executed open-loop before the next
/// query (`execute = h`: whole chunks; 1: receding horizon, closed loop). Episode `e` is reset
/// with seed `seed + e`. Returns the episodes in order of `e`. Every environment that needs a
/// chunk is served by one policy call.
pub fn evaluate(
    pool: &mut dyn EnvPool,
    h: usize,
    execute: usize,
    episodes: usize,
    seed: u64,
    policy: &mut Policy<'_>,
) -> Result<Vec<EpisodeStats>> {
    if execute == 0 || execute > h {
        bail!("evaluation executes {execute} actions of chunks of {h}: allowed 1..={h}");
    }
    let a_dim = pool.spec().action_dim;
    let mut results: Vec<Option<EpisodeStats>> = vec![None; episodes];
    let mut slots: Vec<Option<Lane>> = (0..pool.num_envs()).map(|_| None).collect();
    let mut next = 0usize;
    // Environments to (re)start, with the episode each one runs.
    let mut starts: Vec<(usize, usize)> = Vec::new();
    for i in 0..slots.len().min(episodes) {
        starts.push((i, next));
        next += 1;
    }
    loop {
        if !starts.is_empty() {
            let envs: Vec<usize> = starts.iter().map(|&(i, _)| i).collect();
            let seeds: Vec<Option<u64>> = starts.iter().map(|&(_, e)| Some(seed + e as u64)).collect();
            for ((i, episode), obs) in starts.drain(..).zip(pool.reset(&envs, &seeds)?) {
                slots[i] = Some(Lane::new(episode as u64, obs));
            }
        }
        let active: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_some()).collect();
        if active.is_empty() {
            break;
        }
        // One policy call for every environment whose chunk is used up.
        refill(slots.iter_mut().flatten(), policy, h, a_dim, execute)?;
        let mut actions = Vec::with_capacity(active.len() * a_dim);
        for &i in &active {
            let s = slots[i].as_mut().expect("active");
            actions.extend(s.queue.drain(..a_dim));
        }
        for (&i, outcome) in active.iter().zip(pool.step(&active, &actions)?) {
            let s = slots[i].as_mut().expect("active");
            match outcome {
                Outcome::Step(step) => {
                    s.ret += step.reward as f64;
                    s.length += 1;
                    if step.done() {
                        results[s.episode as usize] =
                            Some(EpisodeStats { ret: s.ret, length: s.length, success: step.info.success });
                        slots[i] = None;
                        if next < episodes {
                            starts.push((i, next));
                            next += 1;
                        }
                    } else {
                        s.obs = step.obs;
                    }
                }
                Outcome::Lost(why) => {
                    tracing::warn!("evaluation episode {} lost ({why}); running it again", s.episode);
                    let episode = s.episode as usize;
                    slots[i] = None;
                    starts.push((i, episode));
                }
            }
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every episode finished")).collect())
}

/// One stored transition of a [`Collector`]: (s, a, r, s'), whether the episode ends here
/// (success or time limit, or a lost episode's last stored step) and the bootstrap mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Environment that produced it.
    pub env: usize,
    /// s_t.
    pub obs: Vec<f32>,
    /// a_t.
    pub action: Vec<f32>,
    /// r_t as the environment gave it.
    pub reward: f32,
    /// s_{t+1}.
    pub next_obs: Vec<f32>,
    /// The episode ends with this transition.
    pub terminal: bool,
    /// Bootstrap mask: 0 only when s_{t+1} is a true terminal state.
    pub mask: f32,
}

/// What one [`Collector::step`] produced.
#[derive(Debug, Default)]
pub struct Collected {
    /// Transitions ready for a replay buffer, in an order that never interleaves two episodes:
    /// with one environment each transition as it happens, with several whole episodes, each
    /// contiguous and closed by a `terminal` transition.
    pub ready: Vec<Transition>,
    /// Episodes that ended in this step.
    pub finished: Vec<EpisodeStats>,
    /// Episodes lost to a failed environment in this step (their stored part ends as a
    /// truncation).
    pub lost: usize,
    /// One environment only: an episode whose transitions were already released was lost, so
    /// the newest stored transition must end its episode (`ReplayBuffer::end_episode`).
    pub cut_stored_episode: bool,
}

/// One environment's running episode (in a [`Collector`] or during [`evaluate`]).
struct Lane {
    /// Index of the episode (over all environments); its reset seed is `seed + episode`.
    episode: u64,
    obs: Vec<f32>,
    /// Actions of the current chunk still to execute, flattened.
    queue: VecDeque<f32>,
    ret: f64,
    length: usize,
    staged: Vec<Transition>,
}

/// A collector's running episodes, saved with a checkpoint so that a one-environment run
/// resumes exactly (see [`Collector::resume`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectorState {
    /// Episodes started so far over all environments.
    pub started: u64,
    /// Each environment's running episode.
    pub lanes: Vec<LaneState>,
}

/// One environment's running episode in a [`CollectorState`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LaneState {
    /// Index of the episode (its seed is `seed + episode`).
    pub episode: u64,
    /// The current observation.
    pub obs: Vec<f32>,
    /// Actions of the current chunk still to execute.
    pub queue: Vec<f32>,
    /// Return so far.
    pub ret: f64,
    /// Steps so far.
    pub length: usize,
    /// The environment's own state ([`EnvPool::snapshot`]), when it can give one.
    pub env: Option<Vec<u8>>,
}

/// Online data collection over the E ≥ 1 environments of a pool, the one online path of
/// training: each environment executes its chunk open-loop; environments whose chunk is used
/// up are served by one policy call. Episodes are numbered over all environments in the order
/// they start, and episode k is reset with seed `seed + k`. With one environment every
/// transition is released at once (and the run resumes exactly, see [`Collector::resume`]);
/// with several, each environment's transitions are staged until its episode ends and then
/// released together, so that episodes never interleave in a replay buffer.
pub struct Collector {
    pool: Box<dyn EnvPool>,
    h: usize,
    seed: u64,
    started: u64,
    lanes: Vec<Lane>,
}

impl Collector {
    /// Starts an episode on every environment of `pool`: environment i runs episode
    /// `started + i` (seed `seed + started + i`).
    pub fn new(mut pool: Box<dyn EnvPool>, h: usize, seed: u64, started: u64) -> Result<Self> {
        let n = pool.num_envs();
        let envs: Vec<usize> = (0..n).collect();
        let seeds: Vec<Option<u64>> = (0..n).map(|i| Some(seed + started + i as u64)).collect();
        let lanes = pool
            .reset(&envs, &seeds)?
            .into_iter()
            .enumerate()
            .map(|(i, obs)| Lane::new(started + i as u64, obs))
            .collect();
        Ok(Self { pool, h, seed, started: started + n as u64, lanes })
    }

    /// Continues the episodes of `state` on `pool` (of as many environments): an environment
    /// that restores its snapshot continues its episode exactly; one that cannot restarts the
    /// same episode when it had not stepped yet, else starts the next episode. Returns the
    /// collector and whether, with one environment, an episode whose transitions were already
    /// released was cut (end the stored episode then, as for [`Collected::cut_stored_episode`]).
    pub fn resume(mut pool: Box<dyn EnvPool>, h: usize, seed: u64, state: &CollectorState) -> Result<(Self, bool)> {
        let n = pool.num_envs();
        if state.lanes.len() != n {
            bail!("the saved collector has {} environments, the pool {n}", state.lanes.len());
        }
        let mut started = state.started;
        let (mut lanes, mut restart, mut cut) = (Vec::with_capacity(n), Vec::new(), false);
        for (i, l) in state.lanes.iter().enumerate() {
            let restored = match &l.env {
                // A snapshot that does not restore is an error (another environment, a damaged
                // checkpoint), as before the collector took over the one-environment path.
                Some(bytes) => {
                    pool.restore(i, bytes)?;
                    true
                }
                None => false,
            };
            let mut lane = Lane::new(l.episode, l.obs.clone());
            if restored {
                (lane.queue, lane.ret, lane.length) = (l.queue.iter().copied().collect(), l.ret, l.length);
            } else {
                if l.length > 0 {
                    // The stored part of the episode ends as a truncation; the next one starts.
                    cut |= n == 1;
                    lane.episode = started;
                    started += 1;
                }
                restart.push(i);
            }
            lanes.push(lane);
        }
        let mut c = Self { pool, h, seed, started, lanes };
        c.reset(&restart)?;
        Ok((c, cut))
    }

    /// The running episodes, with each environment's snapshot where it can give one.
    pub fn state(&self) -> CollectorState {
        let lanes = self
            .lanes
            .iter()
            .enumerate()
            .map(|(i, l)| LaneState {
                episode: l.episode,
                obs: l.obs.clone(),
                queue: l.queue.iter().copied().collect(),
                ret: l.ret,
                length: l.length,
                env: self.pool.snapshot(i),
            })
            .collect();
        CollectorState { started: self.started, lanes }
    }

    /// Number of environments E (transitions per [`step`](Self::step)).
    pub fn num_envs(&self) -> usize {
        self.lanes.len()
    }

    /// The pool (restarts, spec).
    pub fn pool(&self) -> &dyn EnvPool {
        self.pool.as_ref()
    }

    /// Transitions staged in running episodes (not yet released).
    pub fn staged(&self) -> usize {
        self.lanes.iter().map(|l| l.staged.len()).sum()
    }

    /// Steps every environment once.
    pub fn step(&mut self, policy: &mut Policy<'_>) -> Result<Collected> {
        let a_dim = self.pool.spec().action_dim;
        let n = self.lanes.len();
        refill(self.lanes.iter_mut(), policy, self.h, a_dim, self.h)?;
        let envs: Vec<usize> = (0..n).collect();
        let actions: Vec<f32> =
            self.lanes.iter_mut().flat_map(|l| l.queue.drain(..a_dim).collect::<Vec<_>>()).collect();
        let mut out = Collected::default();
        let mut restart = Vec::new();
        let stage = n > 1;
        for (i, outcome) in self.pool.step(&envs, &actions)?.into_iter().enumerate() {
            let lane = &mut self.lanes[i];
            match outcome {
                Outcome::Step(step) => {
                    let done = step.done();
                    lane.ret += step.reward as f64;
                    lane.length += 1;
                    lane.staged.push(Transition {
                        env: i,
                        obs: std::mem::take(&mut lane.obs),
                        action: actions[i * a_dim..(i + 1) * a_dim].to_vec(),
                        reward: step.reward,
                        next_obs: step.obs.clone(),
                        terminal: done,
                        mask: step.mask(),
                    });
                    if done {
                        out.finished.push(EpisodeStats {
                            ret: lane.ret,
                            length: lane.length,
                            success: step.info.success,
                        });
                        restart.push(i);
                    } else {
                        lane.obs = step.obs;
                    }
                    if done || !stage {
                        out.ready.append(&mut lane.staged);
                    }
                }
                Outcome::Lost(why) => {
                    tracing::warn!(
                        "training episode of environment {i} lost ({why}); its stored part ends as a truncation"
                    );
                    if let Some(last) = lane.staged.last_mut() {
                        last.terminal = true;
                    }
                    out.ready.append(&mut lane.staged);
                    out.cut_stored_episode |= !stage && lane.length > 0;
                    out.lost += 1;
                    restart.push(i);
                }
            }
        }
        for &i in &restart {
            self.lanes[i].episode = self.started;
            self.started += 1;
        }
        self.reset(&restart)?;
        Ok(out)
    }

    /// Resets `envs` for their lanes' episodes (seed `seed + episode`).
    fn reset(&mut self, envs: &[usize]) -> Result<()> {
        if envs.is_empty() {
            return Ok(());
        }
        let seeds: Vec<Option<u64>> = envs.iter().map(|&i| Some(self.seed + self.lanes[i].episode)).collect();
        for (&i, obs) in envs.iter().zip(self.pool.reset(envs, &seeds)?) {
            let episode = self.lanes[i].episode;
            self.lanes[i] = Lane::new(episode, obs);
        }
        Ok(())
    }
}

impl Lane {
    fn new(episode: u64, obs: Vec<f32>) -> Self {
        Self { episode, obs, queue: VecDeque::new(), ret: 0.0, length: 0, staged: Vec::new() }
    }
}

/// The chunk queue: every lane whose chunk is used up gets the first `execute` actions of a
/// new chunk of `h`, all from one policy call (lanes in the iterator's order).
fn refill<'a>(
    lanes: impl Iterator<Item = &'a mut Lane>,
    policy: &mut Policy<'_>,
    h: usize,
    a_dim: usize,
    execute: usize,
) -> Result<()> {
    let mut need: Vec<&mut Lane> = lanes.filter(|l| l.queue.is_empty()).collect();
    if need.is_empty() {
        return Ok(());
    }
    let obs: Vec<f32> = need.iter().flat_map(|l| l.obs.iter().copied()).collect();
    let chunks = policy(&obs, need.len())?;
    if chunks.len() != need.len() * h * a_dim {
        bail!("policy returned {} values for {} chunks of {h}×{a_dim}", chunks.len(), need.len());
    }
    for (k, lane) in need.iter_mut().enumerate() {
        lane.queue.extend(&chunks[k * h * a_dim..(k * h + execute) * a_dim]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native_pool(n: usize) -> Box<dyn EnvPool> {
        make_pool("branch-reach-v0", n, 1, 0, 1).unwrap()
    }

    /// A policy that always pushes towards +x, +y, counting its calls and rows.
    fn constant(h: usize, a: usize, calls: &mut Vec<usize>) -> impl FnMut(&[f32], usize) -> Result<Vec<f32>> + '_ {
        move |_obs, k| {
            calls.push(k);
            Ok(vec![0.5; k * h * a])
        }
    }

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

    #[test]
    fn evaluation_is_the_same_on_one_or_many_environments() {
        let h = 4;
        let mut calls1 = Vec::new();
        let mut pool = native_pool(1);
        let a = pool.spec().action_dim;
        let one = evaluate(pool.as_mut(), h, h, 5, 7, &mut constant(h, a, &mut calls1)).unwrap();
        let mut calls3 = Vec::new();
        let mut pool = native_pool(3);
        let three = evaluate(pool.as_mut(), h, h, 5, 7, &mut constant(h, a, &mut calls3)).unwrap();
        // A deterministic policy: episode e depends only on its seed, not on the pool.
        assert_eq!(one, three);
        assert_eq!(one.len(), 5);
        // Batched queries: fewer calls, several rows each; the same total number of chunks.
        assert!(calls3.len() < calls1.len(), "{} vs {}", calls3.len(), calls1.len());
        assert!(calls3.iter().any(|&k| k > 1));
        assert_eq!(calls1.iter().sum::<usize>(), calls3.iter().sum::<usize>());
        // Each episode asks for ceil(length / h) chunks.
        let chunks: usize = one.iter().map(|e| e.length.div_ceil(h)).sum();
        assert_eq!(calls1.iter().sum::<usize>(), chunks);
    }

    #[test]
    fn executing_part_of_each_chunk_queries_the_policy_once_per_executed_part() {
        let h = 4;
        let mut pool = native_pool(1);
        let a = pool.spec().action_dim;
        let mut whole = Vec::new();
        let full = evaluate(pool.as_mut(), h, h, 3, 7, &mut constant(h, a, &mut whole)).unwrap();
        let mut closed = Vec::new();
        let one = evaluate(pool.as_mut(), h, 1, 3, 7, &mut constant(h, a, &mut closed)).unwrap();
        // The same actions either way (the policy is constant), hence the same episodes...
        assert_eq!(full, one);
        // ...but one query per executed action instead of one per chunk.
        let steps: usize = one.iter().map(|e| e.length).sum();
        assert_eq!(closed.iter().sum::<usize>(), steps);
        assert_eq!(whole.iter().sum::<usize>(), full.iter().map(|e| e.length.div_ceil(h)).sum::<usize>());
    }

    #[test]
    fn every_episode_finishes_and_a_wrongly_sized_policy_output_is_an_error() {
        let mut pool = native_pool(2);
        let a = pool.spec().action_dim;
        let mut calls = Vec::new();
        let eps = evaluate(pool.as_mut(), 5, 5, 4, 0, &mut constant(5, a, &mut calls)).unwrap();
        assert!(eps.iter().all(|e| e.length > 0 && e.ret.is_finite()));
        let mut policy_bad = |_: &[f32], k: usize| Ok(vec![0.0; k]);
        let err = evaluate(pool.as_mut(), 5, 5, 1, 0, &mut policy_bad).unwrap_err().to_string();
        assert!(err.contains("policy returned"), "{err}");
        let err = evaluate(pool.as_mut(), 5, 6, 1, 0, &mut constant(5, a, &mut calls)).unwrap_err().to_string();
        assert!(err.contains("allowed 1..=5"), "{err}");
    }

    #[test]
    fn collector_releases_whole_contiguous_episodes() {
        let h = 3;
        let pool = native_pool(3);
        let a = pool.spec().action_dim;
        let mut c = Collector::new(pool, h, 11, 0).unwrap();
        let mut calls = Vec::new();
        let mut policy = constant(h, a, &mut calls);
        let mut released = Vec::new();
        let mut finished = 0;
        for _ in 0..400 {
            let got = c.step(&mut policy).unwrap();
            finished += got.finished.len();
            released.extend(got.ready);
        }
        assert!(finished >= 3, "{finished} episodes");
        assert_eq!(released.iter().filter(|t| t.terminal).count(), finished);
        // Inside the released stream, every non-terminal transition is followed by the next
        // step of the same environment's episode.
        for w in released.windows(2) {
            if !w[0].terminal {
                assert_eq!(w[0].env, w[1].env);
                assert_eq!(w[0].next_obs, w[1].obs);
            }
        }
        assert!(released.last().unwrap().terminal);
        assert_eq!(released.len() + c.staged(), 400 * 3);
        drop(policy);
        assert!(calls.iter().any(|&k| k > 1), "batched queries");
    }

    #[test]
    fn one_environment_releases_each_transition_and_resumes_from_its_saved_state() {
        let h = 4;
        let mut a = Collector::new(native_pool(1), h, 3, 0).unwrap();
        let dim = a.pool().spec().action_dim;
        // A policy whose chunks depend on the observation, so a wrong resume shows.
        let mut policy =
            |obs: &[f32], k: usize| Ok((0..k * h * dim).map(|j| (obs[j % obs.len()] * 3.0).sin()).collect());
        for _ in 0..10 {
            assert_eq!(a.step(&mut policy).unwrap().ready.len(), 1);
        }
        // Resume mid-chunk from the saved state on a fresh pool: the same transitions follow.
        let (mut b, cut) = Collector::resume(native_pool(1), h, 3, &a.state()).unwrap();
        assert!(!cut, "a native environment restores its state");
        for _ in 0..60 {
            let (x, y) = (a.step(&mut policy).unwrap(), b.step(&mut policy).unwrap());
            assert_eq!(x.ready, y.ready);
            assert_eq!(x.finished, y.finished);
        }
        // Without the environment's snapshot the stored episode is cut and the next episode
        // starts (seed 3 + its index).
        let mut state = a.state();
        assert!(state.lanes[0].length > 0, "the saved episode is under way");
        state.lanes[0].env = None;
        let (c, cut) = Collector::resume(native_pool(1), h, 3, &state).unwrap();
        let resumed = c.state();
        assert!(cut);
        assert_eq!((resumed.lanes[0].episode, resumed.lanes[0].length), (state.started, 0));
        assert_eq!(resumed.started, state.started + 1);
    }
}

/// A [`Collector`] on its own thread, so that environment steps overlap the learner's updates
/// (`env.async_collect`). Its step k acts with the k-th policy the learner sent: the learner
/// sends two at the start ([`AsyncCollector::start`]) and one after each step it has consumed,
/// so step k + 2 is collected with the networks after the learner's step k while the learner
/// updates on step k + 1. The sequence of policies, and so of transitions, does not depend on
/// timing: an uninterrupted run repeats itself. A checkpoint cannot capture the thread's
/// running episodes; a resumed run starts new ones.
pub struct AsyncCollector {
    items: std::sync::mpsc::Receiver<Result<Collected>>,
    policies: Option<std::sync::mpsc::Sender<OwnedPolicy>>,
    handle: Option<std::thread::JoinHandle<Collector>>,
    num_envs: usize,
}

impl AsyncCollector {
    /// Moves `collector` to a thread that steps with `first`, then `second`, then each policy
    /// sent with [`AsyncCollector::send`].
    pub fn start(mut collector: Collector, first: OwnedPolicy, second: OwnedPolicy) -> Result<Self> {
        let (policy_tx, policy_rx) = std::sync::mpsc::channel::<OwnedPolicy>();
        let (item_tx, items) = std::sync::mpsc::sync_channel(2);
        let sent = policy_tx.send(first).and_then(|()| policy_tx.send(second));
        sent.map_err(|_| anyhow::anyhow!("the policy channel is closed"))?;
        let num_envs = collector.num_envs();
        let handle = std::thread::Builder::new().name("collector".into()).spawn(move || {
            // Ends when the learner stops sending policies or stops receiving.
            while let Ok(mut policy) = policy_rx.recv() {
                let item = collector.step(&mut *policy);
                let failed = item.is_err();
                if item_tx.send(item).is_err() || failed {
                    break;
                }
            }
            collector
        })?;
        Ok(Self { items, policies: Some(policy_tx), handle: Some(handle), num_envs })
    }

    /// Environments E.
    pub fn num_envs(&self) -> usize {
        self.num_envs
    }

    /// The next step's transitions (waits for them).
    pub fn next(&mut self) -> Result<Collected> {
        match self.items.recv() {
            Ok(item) => item,
            Err(_) => bail!("the collector thread stopped"),
        }
    }

    /// The policy of the step after the next one not yet given a policy.
    pub fn send(&mut self, policy: OwnedPolicy) -> Result<()> {
        let tx = self.policies.as_ref().expect("policies are sent until the collector stops");
        if tx.send(policy).is_err() {
            bail!("the collector thread stopped");
        }
        Ok(())
    }

    /// Stops the thread (after the step it is on) and returns the collector.
    pub fn stop(mut self) -> Result<Collector> {
        self.policies = None;
        while self.items.try_recv().is_ok() {}
        let handle = self.handle.take().expect("joined once");
        // Unblock a thread waiting to hand over a finished step.
        let items = std::mem::replace(&mut self.items, std::sync::mpsc::sync_channel(1).1);
        drop(items);
        handle.join().map_err(|_| anyhow::anyhow!("the collector thread panicked"))
    }
}
