//! Environments for the mvp framework: the [`Env`] trait (the Gymnasium reset/step contract),
//! a Rust-native test environment with its scripted demonstrator, and real Gymnasium
//! environments in Python worker processes.
//!
//! - [`Env`], [`EnvSpec`], [`Step`], [`Info`]: what every environment offers, whether it is
//!   native Rust or a real Gymnasium environment behind a Python worker. The contract
//!   is Gymnasium's: `reset(seed) -> (obs, info)`, `step(action) -> (obs, reward, terminated,
//!   truncated, info)`.
//! - [`BranchReach`] (`"branch-reach-v0"`): a 2-D point mass that must pass an obstacle on the
//!   left **or** the right — a cheap task whose good behaviour is multimodal — and
//!   [`BranchReachDemo`], its noisy scripted demonstrator. Build native environments by name
//!   with [`make_native`].
//! - [`VecEnv`]: W worker processes × M environments stepped in parallel, restarting workers
//!   that die or hang (their episodes end as [`Outcome::Lost`]).
//! - [`RayWorkers`]: the same workers placed as actors on a Ray cluster (by the Python module
//!   `mvp_envs.ray_workers`) and reached over TCP; a worker that Ray restarts elsewhere is a
//!   reconnect here. This crate speaks only TCP to them, never Ray.
//! - [`PythonWorker`], [`WorkerEnv`]: real Gymnasium environments (OGBench, robomimic, ...)
//!   hosted by Python worker processes (`envs/mvp_envs/worker.py`) and driven over pipes with a
//!   versioned binary protocol (`envs/README.md`); [`python_module_command`] runs the venv's
//!   other tools (the dataset generators of `mvp-data`).
//!
//! Two flags, never to be confused: `terminated` means the new state is a true terminal state
//! (success: the bootstrap mask is 0); `truncated` means the time limit ended the episode (the
//! state is not terminal: the bootstrap mask stays 1). Either one ends the episode.
//!
//! A leaf of the workspace (no other mvp crate) and pure Rust: it depends on `rand`,
//! `rand_distr`, `serde`, `serde_json`, `libc` (poll for read deadlines), `anyhow`,
//! `thiserror` and `tracing` — never on tch, so environment benchmarks need no libtorch.
#![warn(missing_docs)]

mod branch_reach;
mod ray;
mod vector;
mod worker;

pub use branch_reach::{BranchReach, BranchReachDemo, Route};
pub use ray::{AddressBook, RayConfig, RayWorkers};
pub use vector::{Outcome, VecEnv, VecEnvConfig};
pub use worker::{
    auto_spin, default_secret_path, project_root, python_command, python_module_command, BatchReset, BatchStep,
    PythonWorker, WorkerConfig, WorkerEnv, WorkerError, WorkerInfo, WorkerSecret, PROTOCOL_VERSION, SECRET_ENV,
};

use serde::{Deserialize, Serialize};

/// One rendered RGB image: `height` rows of `width` pixels, 3 bytes each, top row first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `height × width × 3` bytes.
    pub rgb: Vec<u8>,
}

/// Static description of an environment: its name, dimensions, action bounds and time limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvSpec {
    /// Registered name, e.g. `"branch-reach-v0"`.
    pub name: String,
    /// Width of one observation.
    pub obs_dim: usize,
    /// Width of one action.
    pub action_dim: usize,
    /// Per-dimension lower action bound (the framework assumes −1).
    pub action_low: Vec<f32>,
    /// Per-dimension upper action bound (the framework assumes +1).
    pub action_high: Vec<f32>,
    /// Time limit: the step that reaches this many steps returns `truncated = true` unless it
    /// is `terminated`.
    pub max_episode_steps: usize,
}

/// Extra per-step information (Gymnasium's `info` dict, restricted to the keys we use).
///
/// More fields may be added; build it with `Info { success, ..Default::default() }`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// Whether the task is solved in the current state (`info['success']`).
    pub success: bool,
}

/// The result of one [`Env::step`].
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The next observation s_{t+1}.
    pub obs: Vec<f32>,
    /// The reward r_t for this transition.
    pub reward: f32,
    /// s_{t+1} is a true terminal state (e.g. success): the episode ends and the value of
    /// s_{t+1} is zero, so the bootstrap mask is 0.
    pub terminated: bool,
    /// The time limit ended the episode at a non-terminal state: the episode ends but the
    /// bootstrap mask stays 1. Set only when `terminated` is false.
    pub truncated: bool,
    /// Extra information about s_{t+1}.
    pub info: Info,
}

impl Step {
    /// Bootstrap mask of this transition: 0.0 when `terminated`, else 1.0 (also at a
    /// time-limit truncation).
    pub fn mask(&self) -> f32 {
        if self.terminated {
            0.0
        } else {
            1.0
        }
    }

    /// Whether the episode ends with this step (`terminated || truncated`): the `terminals`
    /// flag of a dataset. The next call must be [`Env::reset`].
    pub fn done(&self) -> bool {
        self.terminated || self.truncated
    }
}

/// An environment with Gymnasium's reset/step contract.
///
/// - [`reset`](Env::reset) starts an episode. `Some(seed)` reseeds the environment's random
///   generator (same seed → same episode); `None` continues the current generator, so a run
///   that seeds the first reset only is still reproducible. An environment never seeded draws
///   its generator from OS entropy, as Gymnasium does.
/// - [`step`](Env::step) applies one action (clipped to the action bounds). The environment
///   applies its own time limit: the step that reaches `spec().max_episode_steps` returns
///   `truncated = true` unless it is `terminated` (Gymnasium's `TimeLimit` wrapper may set
///   both; we keep them exclusive, and [`Step::mask`] depends on `terminated` only).
/// - Stepping before the first reset or after the episode ended is an error.
///
/// `Send` so that rollout workers can own environments on their own threads.
pub trait Env: Send {
    /// The static description of this environment.
    fn spec(&self) -> &EnvSpec;

    /// Starts a new episode and returns the first observation and its info.
    fn reset(&mut self, seed: Option<u64>) -> anyhow::Result<(Vec<f32>, Info)>;

    /// Applies `action` (length `spec().action_dim`) and returns the transition.
    fn step(&mut self, action: &[f32]) -> anyhow::Result<Step>;

    /// After a failed [`step`](Env::step) or [`reset`](Env::reset), tries to make the
    /// environment usable again, e.g. by restarting a worker process that died or hung.
    /// `Ok(true)`: it did; the running episode is lost and the next call must be `reset`.
    /// `Ok(false)` (the default): the failure cannot be recovered from.
    fn recover(&mut self) -> anyhow::Result<bool> {
        Ok(false)
    }

    /// Releases resources (worker processes, files). The default does nothing.
    fn close(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// The state of the running episode as opaque bytes, for an exact mid-episode resume of
    /// training; `None` when the environment cannot provide it (a resumed run then starts a
    /// new episode).
    fn snapshot(&self) -> Option<Vec<u8>> {
        None
    }

    /// Restores a state produced by [`Env::snapshot`] of the same environment.
    fn restore(&mut self, _state: &[u8]) -> anyhow::Result<()> {
        anyhow::bail!("environment `{}` cannot restore a snapshot", self.spec().name)
    }
}

/// Errors raised by the environments of this crate (wrapped in `anyhow::Error`; downcast to
/// inspect them).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvError {
    /// No native environment has this name.
    #[error("unknown native environment `{name}`; known: {}", known.join(", "))]
    UnknownEnv {
        /// The name asked for.
        name: String,
        /// The registered names.
        known: Vec<String>,
    },
    /// There is no scripted demonstrator for this environment.
    #[error("no scripted demonstrator for environment `{name}`; available: {}", known.join(", "))]
    NoDemonstrator {
        /// The name asked for.
        name: String,
        /// The environments that have a demonstrator.
        known: Vec<String>,
    },
    /// The action has the wrong length.
    #[error("action has {got} values, expected {expected}")]
    ActionDim {
        /// `spec().action_dim`.
        expected: usize,
        /// The length passed.
        got: usize,
    },
    /// The action holds a NaN or an infinity.
    #[error("action holds a non-finite value: {0:?}")]
    NonFiniteAction(Vec<f32>),
    /// `step` was called before the first `reset`, or after the episode ended.
    #[error("step called with no episode running (before the first reset or after terminated/truncated); call reset")]
    NoEpisode,
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Names accepted by [`make_native`].
pub const NATIVE_ENVS: &[&str] = &[BranchReach::NAME];

/// OGBench's `sparse` option (`env.sparse` of a training config): every non-zero reward
/// becomes −1, so a step earns 0 only when the whole task is solved. Applied to datasets and
/// online rewards alike.
pub fn sparse_reward(r: f32) -> f32 {
    if r != 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Builds a Rust-native environment by its registered name (see [`NATIVE_ENVS`]).
///
/// An unknown name gives [`EnvError::UnknownEnv`], whose message lists the known names.
pub fn make_native(name: &str) -> anyhow::Result<Box<dyn Env>> {
    match name {
        BranchReach::NAME => Ok(Box::new(BranchReach::new())),
        _ => Err(EnvError::UnknownEnv {
            name: name.to_string(),
            known: NATIVE_ENVS.iter().map(|s| s.to_string()).collect(),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_native_builds_every_registered_env() {
        for name in NATIVE_ENVS {
            let env = make_native(name).unwrap();
            assert_eq!(env.spec().name, *name);
        }
    }

    #[test]
    fn unknown_env_name_error_lists_known_names() {
        let Err(err) = make_native("cube-triple-v9") else { panic!("unknown name accepted") };
        let msg = err.to_string();
        assert!(msg.contains("cube-triple-v9"), "{msg}");
        for name in NATIVE_ENVS {
            assert!(msg.contains(name), "{msg}");
        }
        assert!(matches!(err.downcast_ref::<EnvError>(), Some(EnvError::UnknownEnv { .. })));
    }

    #[test]
    fn step_mask_and_done_follow_terminated_and_truncated() {
        let step =
            |terminated, truncated| Step { obs: vec![], reward: 0.0, terminated, truncated, info: Info::default() };
        assert_eq!((step(false, false).mask(), step(false, false).done()), (1.0, false));
        assert_eq!((step(true, false).mask(), step(true, false).done()), (0.0, true));
        assert_eq!((step(false, true).mask(), step(false, true).done()), (1.0, true));
    }
}
