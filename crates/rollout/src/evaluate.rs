//! The evaluation protocol: [`evaluate`] and its per-episode [`EpisodeStats`].

use anyhow::{bail, Result};
use mvp_envs::Outcome;
use serde::{Deserialize, Serialize};

use crate::collector::{refill, Lane};
use crate::{EnvPool, Policy};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{constant, native_pool};

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
}
