//! What a run has done so far: the counters and rollout state saved with each checkpoint, the
//! summary a run reports, and the per-step seeds that make a resumed run repeat an
//! uninterrupted one.

use std::path::PathBuf;

use mvp_rollout::CollectorState;
use serde::{Deserialize, Serialize};

use crate::eval::EvalResult;

/// Counters and rollout state saved with each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Next step to run on the global axis.
    pub step: u64,
    /// Optimiser steps of actor and critic.
    pub optimizer_steps: [u64; 2],
    /// Online episodes ended so far (finished or lost).
    pub episodes: u64,
    /// The collector's running episodes (exact resume with one environment).
    #[serde(default)]
    pub collector: Option<CollectorState>,
    /// The last evaluation.
    pub last_eval: Option<EvalResult>,
    /// Every evaluation so far as (step, success rate), for the learning curve.
    pub eval_history: Vec<(u64, f64)>,
    /// Times the training environment failed (a worker died, hung or raised) and was restarted.
    #[serde(default)]
    pub env_restarts: u64,
    /// Transitions stored from the online environments (the newest rows of the buffer).
    #[serde(default)]
    pub online_rows: u64,
    /// A background evaluation of this checkpoint's networks that had not finished when it was
    /// written (its step): a resumed run runs it first.
    #[serde(default)]
    pub pending_eval: Option<u64>,
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Steps completed.
    pub steps: u64,
    /// The final evaluation, if one ran.
    pub eval: Option<EvalResult>,
    /// Every evaluation of the run as (step, success rate), the learning curve.
    pub curve: Vec<(u64, f64)>,
    /// The step where the online phase starts.
    pub offline_steps: u64,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
    /// The run stopped early on a signal ([`crate::Trainer::stop_handle`]), after writing a
    /// checkpoint.
    #[serde(default)]
    pub interrupted: bool,
}

/// Derives a 64-bit seed for step `i` of run `seed` (SplitMix64 finaliser).
pub fn step_seed(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
