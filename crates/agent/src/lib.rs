//! The MVP agent: generate-and-select, the update step on either engine, which engine runs
//! each step ([`engines`]), the export of its networks to the native engine, and the training
//! config. The runs that drive it (trainer, evaluation, run directories) are `mvp-train`'s.
//!
//! Depends on `nn`, `actor`, `critic`, `replay` (the batch an update reads), `envs` (the
//! config's environment keys) and `infer`: [`export`] turns trained networks into the native
//! engine's weights, and the native critic and actor updates run their forward and backward
//! passes on its kernels; plus tch, `serde`, `toml`, `rand`, `clap` (the engine enum's flag
//! form), `tempfile` and `tracing`.
#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod engines;
pub mod export;
mod native;
mod native_actor;
mod native_critic;

pub use agent::{Agent, TensorBatch};
pub use config::TrainConfig;
