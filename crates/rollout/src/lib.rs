//! Parallel rollouts for the mvp framework: pools of environments stepped together, with a
//! chunk queue per environment and **one batched policy query** for all environments that
//! need a new action chunk.
//!
//! - [`EnvPool`]: E environments behind one interface: [`VecEnv`](mvp_envs::VecEnv) (W Python
//!   worker processes × M environments, stepping in parallel) or [`LocalPool`] (native Rust
//!   environments). Build one by name with [`make_pool`]. A failed environment reports
//!   [`Outcome::Lost`](mvp_envs::Outcome::Lost): its episode is over, it was restarted and needs
//!   a reset.
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
//! `mvp-replay` (the [`Transition`] it hands to a buffer),
//! `serde`, `anyhow` and `tracing`.
//!
//! Modules (private; every public item is re-exported at the crate root):
//!
//! - `pool`: the [`EnvPool`] trait and its implementations (for [`VecEnv`](mvp_envs::VecEnv),
//!   [`HistoryPool`], [`LocalPool`]) and [`with_history`].
//! - `factory`: pools by name: [`make_pool`], [`make_remote_pool`], [`make_ray_pool`],
//!   [`make_render_pool`].
//! - `record`: [`record`], evaluation episodes with their frames (for videos).
//! - `evaluate`: [`evaluate`] and [`EpisodeStats`].
//! - `collector`: [`Collector`], [`Transition`], [`Collected`], [`CollectorState`],
//!   [`LaneState`], and the chunk queue it shares with [`evaluate`].
//! - `async_collector`: [`AsyncCollector`].

#![warn(missing_docs)]

use anyhow::Result;

/// A policy query: observations `[k, obs_dim]` (row-major) and `k` → chunks `[k, h·action_dim]`.
pub type Policy<'a> = dyn FnMut(&[f32], usize) -> Result<Vec<f32>> + 'a;

/// A policy that can move to another thread (one version of the learner's acting networks).
pub type OwnedPolicy = Box<dyn FnMut(&[f32], usize) -> Result<Vec<f32>> + Send>;

mod async_collector;
mod collector;
mod evaluate;
mod factory;
mod pool;
mod record;
#[cfg(test)]
mod testing;

pub use async_collector::AsyncCollector;
pub use collector::{Collected, Collector, CollectorState, LaneState};
pub use evaluate::{evaluate, EpisodeStats};
pub use factory::{make_pool, make_ray_pool, make_remote_pool, make_render_pool};
pub use mvp_replay::Transition;
pub use pool::{with_history, EnvPool, HistoryPool, LocalPool};
pub use record::record;
