//! Real Gymnasium environments (OGBench, MuJoCo locomotion, ...) stepped from Rust through a
//! Python worker process.
//!
//! [`PythonWorker`] spawns `.venv/bin/python -m mvp_envs.worker` (with `envs/` on
//! `PYTHONPATH`), performs the handshake and then drives the M environments that the process
//! hosts with batched resets and steps. [`WorkerEnv`] is the one-environment form that
//! implements [`Env`].
//!
//! # Protocol (version [`PROTOCOL_VERSION`]; the full description is in `envs/README.md`)
//!
//! Frames over the child's stdin/stdout: `u32` little-endian payload length, then the payload,
//! whose first byte is a tag. The handshake (`HELLO` → `READY`) carries JSON; the hot path is
//! binary: `RESET` (per env: index, optional seed) → `RESET_OK` (f32 observations, success
//! flags) and `STEP` (indices, f32 actions `[K, A]`) → `STEP_OK` (f32 observations, f32
//! rewards, terminated, truncated, success). `ERROR` replies carry a one-line message (a
//! caller's mistake, e.g. an unknown id) or a Python exception with its traceback.
//!
//! # Failure handling
//!
//! Every read has a deadline ([`WorkerConfig::timeout`], [`WorkerConfig::startup_timeout`]
//! for the handshake). A worker that does not answer in time is killed and the error is
//! [`WorkerError::Timeout`]; one that exits is [`WorkerError::Died`] (with the tail of its
//! stderr). After either, the worker is *broken*: every call fails with
//! [`WorkerError::Broken`] until [`PythonWorker::restart`] starts a fresh process (all
//! episodes then need a reset; [`PythonWorker::restarts`] counts restarts). A Python exception
//! inside a reset or step keeps the process usable, but the environments of that request must
//! be reset before they step again.
//!
//! # Semantics shared with the native environments
//!
//! The worker never auto-resets. This side enforces the [`Env`] contract for every
//! environment of a worker: actions are checked (length, finite) and clipped to the action
//! bounds before they travel; stepping an environment with no running episode is
//! [`EnvError::NoEpisode`]; `truncated` is reported only when `terminated` is false.
//!
//! # Workers over TCP
//!
//! A worker listening on TCP serves only a client that proves the shared secret: its first
//! frame is `CHALLENGE` (32 random bytes), answered in the `HELLO` (`auth`; [`WorkerSecret`]).
//!
//! The code follows those jobs: `auth` (the secret and the answer), `protocol` (the wire format, one to one with
//! `envs/mvp_envs/protocol.py`), `process` (the venv's interpreter, the child process, its
//! stderr and reads with deadlines), `client` ([`PythonWorker`]) and `env` ([`WorkerEnv`]).

mod auth;
mod client;
mod env;
mod process;
mod protocol;

use std::path::PathBuf;

pub use auth::{default_secret_path, WorkerSecret, SECRET_ENV};
pub use client::{auto_spin, PythonWorker, WorkerConfig};
pub use env::WorkerEnv;
pub(crate) use process::{keep_stderr_tail, python_module_command_in, tail_text, StderrTail};
pub use process::{project_root, python_command, python_module_command};
pub use protocol::{BatchReset, BatchStep, WorkerInfo, PROTOCOL_VERSION};

/// Errors of the Python worker bridge (wrapped in `anyhow::Error`; downcast to inspect them).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkerError {
    /// The venv's interpreter does not exist.
    #[error("Python env venv not found at {}; run `make setup`", .0.display())]
    VenvMissing(PathBuf),
    /// The `mvp_envs` package is not where the project root says.
    #[error("env worker package not found at {}; run from the mvp checkout or set MVP_ROOT to it", .0.display())]
    PackageMissing(PathBuf),
    /// A remote worker's address did not accept a connection.
    #[error("cannot connect to the env worker at {address}: {reason} (is `python -m mvp_envs.worker --listen {address}` running there?)")]
    Connect {
        /// `HOST:PORT` as configured.
        address: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The process could not be started.
    #[error("cannot start the env worker {python}: {reason}")]
    Spawn {
        /// The interpreter.
        python: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A mistake of the caller that the worker reported in one line (unknown id, bad request).
    #[error("{0}")]
    User(String),
    /// A Python exception inside the worker; the message ends with the traceback.
    #[error("python exception in env worker `{env_id}` (pid {pid}): {message}")]
    Exception {
        /// The environment id of the worker.
        env_id: String,
        /// The worker's process id.
        pid: u32,
        /// `Type: message` and the full traceback.
        message: String,
    },
    /// The worker did not answer in time; it has been killed.
    #[error(
        "env worker `{env_id}` (pid {pid}) did not answer {request} within {secs:.1} s and was killed; restart it"
    )]
    Timeout {
        /// The environment id of the worker.
        env_id: String,
        /// The worker's process id.
        pid: u32,
        /// The request that went unanswered.
        request: &'static str,
        /// The deadline in seconds.
        secs: f64,
    },
    /// The worker process ended.
    #[error("env worker `{env_id}` (pid {pid}) exited during {request} ({status}); its last stderr lines:\n{stderr}")]
    Died {
        /// The environment id of the worker.
        env_id: String,
        /// The worker's process id.
        pid: u32,
        /// The request in flight.
        request: &'static str,
        /// The exit status, as text.
        status: String,
        /// The tail of its stderr.
        stderr: String,
    },
    /// The worker sent something this side does not understand.
    #[error("env worker protocol error: {0}")]
    Protocol(String),
    /// The worker failed earlier (timeout, exit, protocol error) and must be restarted.
    #[error("env worker `{env_id}` is unusable after an earlier failure ({reason}); call restart")]
    Broken {
        /// The environment id of the worker.
        env_id: String,
        /// The first failure.
        reason: String,
    },
    /// The worker was closed.
    #[error("env worker `{0}` is closed")]
    Closed(String),
}
