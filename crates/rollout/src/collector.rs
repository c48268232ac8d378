//! Online data collection: the [`Collector`] and what it produces ([`Transition`],
//! [`Collected`]) and saves ([`CollectorState`], [`LaneState`]), with the chunk queue
//! ([`refill`]) that [`evaluate`](crate::evaluate) shares.

use std::collections::VecDeque;

use anyhow::{bail, Result};
use mvp_envs::Outcome;
use mvp_replay::Transition;
use serde::{Deserialize, Serialize};

use crate::{EnvPool, EpisodeStats, Policy};

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

/// One environment's running episode (in a [`Collector`] or during
/// [`evaluate`](crate::evaluate)).
pub(crate) struct Lane {
    /// Index of the episode (over all environments); its reset seed is `seed + episode`.
    pub(crate) episode: u64,
    pub(crate) obs: Vec<f32>,
    /// Actions of the current chunk still to execute, flattened.
    pub(crate) queue: VecDeque<f32>,
    pub(crate) ret: f64,
    pub(crate) length: usize,
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
    pub(crate) fn new(episode: u64, obs: Vec<f32>) -> Self {
        Self { episode, obs, queue: VecDeque::new(), ret: 0.0, length: 0, staged: Vec::new() }
    }
}

/// The chunk queue: every lane whose chunk is used up gets the first `execute` actions of a
/// new chunk of `h`, all from one policy call (lanes in the iterator's order).
pub(crate) fn refill<'a>(
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
    use crate::testing::{constant, native_pool};

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
