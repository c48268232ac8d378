//! Videos: [`record`] runs evaluation episodes on a rendering pool and keeps their frames.

use anyhow::{bail, Result};
use mvp_envs::{EnvSpec, Outcome};

use crate::{evaluate, EnvPool, EpisodeStats, Policy};

/// Runs `episodes` episodes like [`evaluate`] on a pool of one rendering environment
/// ([`make_render_pool`](crate::make_render_pool)) and returns each episode's statistics with
/// its frames: the first observation's, then one after every step (an episode of L steps has
/// L + 1 frames).
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
