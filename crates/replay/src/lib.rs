//! Replay storage for the mvp framework: offline datasets, an episode-aware ring buffer of
//! single-step transitions, and chunked sampling with Q-chunking (QC) semantics.
//!
//! - [`Dataset`]: the offline dataset type that the readers of `mvp-data` fill.
//! - [`ReplayBuffer`]: a fixed-capacity ring of transitions stored as contiguous `f32`
//!   arrays; seeded from a [`Dataset`], then extended with online transitions; saved and
//!   loaded atomically for resume ([`ReplayBuffer::save`], [`ReplayBuffer::load`]).
//! - [`ReplayBuffer::sample_chunks`] fills a preallocated [`ChunkBatch`] with windows of `h`
//!   steps: the batch contract of FQL/QC (`observations, actions, rewards, masks,
//!   next_observations`, plus `valid`).
//! - [`Transition`]: one step as the collector hands it to the buffer ([`ReplayBuffer::push`]).
//! - [`Dataset::audit`]: what a dataset holds and what in it a learner must not see
//!   ([`Audit`]).
//!
//! Two flags per transition, never to be confused: `terminal` marks an **episode end**
//! (success or time limit), `mask` is the **bootstrap** mask (0 only on a true terminal
//! state, 1 on a time-limit truncation).
//!
//! A leaf of the workspace, pure Rust on `f32` slices: it depends on `rand` and `thiserror`
//! only — never on tensors or system libraries, so sampling never needs libtorch.
#![warn(missing_docs)]

mod audit;
mod buffer;
mod chunk;
mod dataset;
mod io;

pub use audit::{At, Audit, Flaw};
pub use buffer::ReplayBuffer;
pub use chunk::ChunkBatch;
pub use dataset::Dataset;

/// One environment step as the replay buffer stores it: (s, a, r, s'), whether the episode
/// ends here (success or time limit, or a lost episode's last stored step) and the bootstrap
/// mask. The shape a transition keeps from the collector to the buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// s_t.
    pub obs: Vec<f32>,
    /// a_t.
    pub action: Vec<f32>,
    /// r_t as the environment gave it.
    pub reward: f32,
    /// s_{t+1}.
    pub next_obs: Vec<f32>,
    /// The episode ends with this transition.
    pub terminal: bool,
    /// Bootstrap mask in [0, 1]: 0 only when s_{t+1} is a true terminal state (1 at a
    /// time-limit truncation).
    pub mask: f32,
}

impl Transition {
    /// A transition from its parts (copied).
    pub fn new(obs: &[f32], action: &[f32], reward: f32, next_obs: &[f32], terminal: bool, mask: f32) -> Self {
        Self { obs: obs.to_vec(), action: action.to_vec(), reward, next_obs: next_obs.to_vec(), terminal, mask }
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// An array does not have the shape its dimensions call for.
    #[error("`{field}`: expected shape {expected:?}, got {got:?}")]
    Shape {
        /// Which array.
        field: &'static str,
        /// The shape it should have.
        expected: Vec<usize>,
        /// The shape it has (`[len]` when its length is not a multiple of the row width).
        got: Vec<usize>,
    },
    /// A sampling or construction argument is out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The buffer holds fewer transitions than one window needs.
    #[error("cannot sample windows of {h} steps from a buffer holding {len} transitions")]
    NotEnoughData {
        /// Transitions stored.
        len: usize,
        /// Window length asked for.
        h: usize,
    },
    /// A saved buffer file is not what the reader expects (bad magic, version, header field
    /// or length).
    #[error("replay file {path}: {reason}")]
    BadFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, with the values found and expected.
        reason: String,
    },
    /// An I/O error while saving or loading.
    #[error("replay file {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result type of this crate.
pub type Result<T, E = ReplayError> = std::result::Result<T, E>;

/// Checks that a flat array of `len` values has `expected` shape (`[n]` or `[rows, width]`);
/// the error reports both shapes.
pub(crate) fn check_shape(field: &'static str, len: usize, expected: &[usize]) -> Result<()> {
    if len == expected.iter().product::<usize>() {
        return Ok(());
    }
    let got = match expected {
        [_, w] if *w > 0 && len.is_multiple_of(*w) => vec![len / w, *w],
        _ => vec![len],
    };
    Err(ReplayError::Shape { field, expected: expected.to_vec(), got })
}
