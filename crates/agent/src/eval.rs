//! The evaluation protocol: greedy generate-and-select with the online critic, one query per
//! chunk executed open-loop (stopping at the episode's end; `schedule.eval_execute_steps`
//! executes only the first actions of each chunk), success read from the
//! environment's `info.success` at the end of each episode. Episode `i` is reset with seed
//! `seed + i`, a stream kept apart from training's. The episodes are spread over the
//! environments of a pool ([`mvp_rollout::evaluate`]); every environment that needs a chunk
//! is served by one batched call of the agent.

use anyhow::Result;
use mvp_rollout::EnvPool;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::agent::Agent;

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

/// Runs `episodes` evaluation episodes of `agent` over the environments of `pool`, executing
/// the first `execute` actions of each chunk (the chunk length h: all of it).
pub fn evaluate(
    agent: &Agent,
    pool: &mut dyn EnvPool,
    episodes: usize,
    execute: usize,
    seed: u64,
) -> Result<EvalResult> {
    let mut policy = |obs: &[f32], k: usize| -> Result<Vec<f32>> {
        let o = Tensor::from_slice(obs).view([k as i64, -1]).to_kind(Kind::Float).to_device(agent.device());
        Ok(Vec::<f32>::try_from(agent.act(&o).view([-1]).to_device(Device::Cpu))?)
    };
    run_episodes(agent, pool, episodes, execute, seed, &mut policy)
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
