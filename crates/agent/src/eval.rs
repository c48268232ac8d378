//! The evaluation protocol: greedy generate-and-select with the online critic, one query per
//! chunk executed open-loop (stopping at the episode's end), success read from the
//! environment's `info.success` at the end of each episode. Episode `i` is reset with seed
//! `seed + i`, a stream kept apart from training's.

use anyhow::Result;
use mvp_envs::Env;
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

/// Runs `episodes` evaluation episodes of `agent` in `env`.
pub fn evaluate(agent: &Agent, env: &mut dyn Env, episodes: usize, seed: u64) -> Result<EvalResult> {
    let (mut successes, mut ret, mut len) = (0usize, 0.0f64, 0usize);
    let a_dim = env.spec().action_dim;
    for e in 0..episodes {
        let (mut obs, _) = env.reset(Some(seed + e as u64))?;
        'episode: loop {
            let o = Tensor::from_slice(&obs).view([1, -1]).to_kind(Kind::Float).to_device(agent.device());
            let chunk = Vec::<f32>::try_from(agent.act(&o).view([-1]).to_device(Device::Cpu))?;
            for action in chunk.chunks(a_dim) {
                let step = env.step(action)?;
                ret += step.reward as f64;
                len += 1;
                if step.done() {
                    successes += step.info.success as usize;
                    break 'episode;
                }
                obs = step.obs;
            }
        }
    }
    let n = episodes.max(1) as f64;
    Ok(EvalResult { episodes, success_rate: successes as f64 / n, mean_return: ret / n, mean_length: len as f64 / n })
}
