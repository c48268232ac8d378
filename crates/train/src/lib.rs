//! Runs of the mvp agent: the offline-to-online [`Trainer`] (its step loop and the parts around
//! it), the evaluation protocol in the foreground and the background, run directories, the
//! progress a checkpoint carries, and the export of a run's policy.
//!
//! The agent's maths live in `mvp-agent`; this crate drives it. Depends on `agent`, `nn`
//! (checkpoints), `infer` (exported policies and native acting), `replay`, `envs`, `data`,
//! `rollout` and `logging`, plus tch, `serde`, `rand`, `indicatif` and `tracing`.
#![warn(missing_docs)]

pub mod eval;
pub mod progress;
pub mod run_dir;
pub mod trainer;

pub use eval::{evaluate, EvalResult, RunEvaluation};
pub use progress::{Progress, Summary};
pub use trainer::Trainer;
