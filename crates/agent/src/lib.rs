//! The MVP agent and everything that drives it: generate-and-select, the update step, the
//! offline-to-online trainer with evaluation, logging and checkpoints, and the training config.
//!
//! Depends on every crate below it: `nn`, `actor`, `critic`, `replay`, `envs`, `data`, `rollout`,
//! `logging`, and on `infer`: [`export`] turns trained networks into the native engine's
//! weights, and the native critic and actor updates run their forward and backward passes on
//! its kernels; [`engines`] decides which engine runs each step; plus tch, `serde`, `toml`,
//! `rand`, `indicatif`, `clap` (the engine enum's flag form), `tempfile` and `tracing`.
#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod engines;
pub mod eval;
pub mod export;
mod native;
mod native_actor;
mod native_critic;
pub mod progress;
pub mod run_dir;
pub mod trainer;

pub use agent::{Agent, TensorBatch};
pub use config::TrainConfig;
pub use eval::{evaluate, EvalResult, RunEvaluation};
pub use progress::{Progress, Summary};
pub use trainer::Trainer;
