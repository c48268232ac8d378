//! The evaluation protocol: greedy generate-and-select with the online critic, one query per
//! chunk executed open-loop (stopping at the episode's end; `schedule.eval_execute_steps`
//! executes only the first actions of each chunk), success read from the
//! environment's `info.success` at the end of each episode. Episode `i` is reset with seed
//! `seed + i`, a stream kept apart from training's. The episodes are spread over the
//! environments of a pool ([`mvp_rollout::evaluate`]); every environment that needs a chunk
//! is served by one batched call of the agent.

use std::path::Path;

use anyhow::{Context, Result};
use mvp_nn::checkpoint;
use mvp_rollout::EnvPool;
use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::config::TrainConfig;
use crate::progress::{step_seed, Progress};

/// Outcome of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Episodes run.
    pub episodes: usize,
    /// Share of episodes that ended in success.
    pub success_rate: f64,
    /// Mean undiscounted return.
    pub mean_return: f64,
    /// Mean episode length.
    pub mean_length: f64,
}

/// A trained agent read from a run directory for evaluation only (`mvp eval`): the run's
/// config (with overrides), the networks of its latest checkpoint and the evaluation
/// environments — no dataset, no replay buffer, no training environments.
pub struct RunEvaluation {
    config: TrainConfig,
    agent: Agent,
    pool: Box<dyn EnvPool>,
    step: u64,
}

impl RunEvaluation {
    /// Opens `run_dir` with `overrides` (e.g. `schedule.eval_episodes=100`).
    pub fn open(run_dir: &Path, overrides: &[String]) -> Result<Self> {
        let config = TrainConfig::load(Some(&run_dir.join(crate::run_dir::CONFIG_FILE)), overrides)
            .with_context(|| format!("{} is not a run directory", run_dir.display()))?;
        let device = config.runtime.apply()?;
        let e = &config.env;
        let pool = mvp_rollout::make_pool(&e.name, e.eval_envs, e.eval_workers, e.eval_seed_offset)?;
        let root = run_dir.join(crate::trainer::CHECKPOINTS);
        let dir = root
            .join(checkpoint::latest(&root).with_context(|| format!("no complete checkpoint in {}", root.display()))?);
        // The same generator state as a resumed run's (the networks' initialisation draws).
        tch::manual_seed(step_seed(config.run.seed, u64::MAX) as i64);
        let (o, a) = (pool.spec().obs_dim, pool.spec().action_dim);
        let (mut agent, progress): (Agent, Progress) = Agent::load(&dir, o, a, &config.agent, device)?;
        // A checkpoint of the offline phase acts with the offline candidate count.
        agent.set_num_samples(config.agent.num_samples_in(progress.step <= config.schedule.offline_steps));
        Ok(Self { config, agent, pool, step: progress.step })
    }

    /// The step of the checkpoint evaluated.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The evaluation protocol of the run's config with the libtorch networks.
    pub fn evaluate(&mut self) -> Result<EvalResult> {
        let (episodes, execute, seed) = self.config.eval_protocol();
        evaluate(&self.agent, self.pool.as_mut(), episodes, execute, seed)
    }

    /// The same protocol on the native engine at `precision` (see [`evaluate_native`]).
    pub fn evaluate_native(&mut self, precision: mvp_infer::Precision) -> Result<EvalResult> {
        let (episodes, execute, seed) = self.config.eval_protocol();
        evaluate_native(&self.agent, self.pool.as_mut(), episodes, execute, seed, precision)
    }
}

/// Runs `episodes` evaluation episodes of `agent` over the environments of `pool`, executing
/// the first `execute` actions of each chunk (the chunk length h: all of it).
pub fn evaluate(
    agent: &Agent,
    pool: &mut dyn EnvPool,
    episodes: usize,
    execute: usize,
    seed: u64,
) -> Result<EvalResult> {
    run_episodes(agent, pool, episodes, execute, seed, &mut |obs, k| agent.act_rows(obs, k))
}

/// [`evaluate`] with the acting networks run by the native engine (`mvp-infer`) at
/// `precision`: the deployment path, e.g. to check that bf16 acting keeps the success rate.
/// Its candidates' noise comes from the engine's own generator (seeded with `seed`).
pub fn evaluate_native(
    agent: &Agent,
    pool: &mut dyn EnvPool,
    episodes: usize,
    execute: usize,
    seed: u64,
    precision: mvp_infer::Precision,
) -> Result<EvalResult> {
    let mut native = agent.native_policy(precision, seed)?;
    let d = native.chunk_dim();
    let mut policy = |obs: &[f32], k: usize| -> Result<Vec<f32>> {
        let mut out = vec![0.0; k * d];
        native.act(obs, &mut out);
        Ok(out)
    };
    run_episodes(agent, pool, episodes, execute, seed, &mut policy)
}

fn run_episodes(
    agent: &Agent,
    pool: &mut dyn EnvPool,
    episodes: usize,
    execute: usize,
    seed: u64,
    policy: &mut mvp_rollout::Policy<'_>,
) -> Result<EvalResult> {
    let eps = mvp_rollout::evaluate(pool, agent.shape().horizon, execute, episodes, seed, policy)?;
    let n = episodes.max(1) as f64;
    Ok(EvalResult {
        episodes,
        success_rate: eps.iter().filter(|e| e.success).count() as f64 / n,
        mean_return: eps.iter().map(|e| e.ret).sum::<f64>() / n,
        mean_length: eps.iter().map(|e| e.length as f64).sum::<f64>() / n,
    })
}
