//! [`PythonWorker`]: one worker process hosting M environments, driven with batched requests.
//!
//! The code follows its jobs: `config` ([`WorkerConfig`], [`auto_spin`]), this file (the process's
//! life: spawn and handshake, restart, close, requests and their failures), `batch` (resets,
//! renders and steps) and `tests`.

mod batch;
mod config;

use std::time::{Duration, Instant};

use super::auth::{NONCE_BYTES, SECRET_ENV};
use super::process::{exchange, read_frame, write_frame, Proc};
use super::protocol::{begin_frame, tag, WorkerInfo, PROTOCOL_VERSION};
use super::WorkerError;
use crate::{EnvError, EnvSpec};
use anyhow::bail;

pub use config::{auto_spin, WorkerConfig};

/// A Python process hosting M environments of one id, driven with batched requests.
///
/// Not thread-safe by itself (one request at a time); it is `Send`, so a rollout thread can
/// own it. Dropping it ends the process.
pub struct PythonWorker {
    config: WorkerConfig,
    proc: Option<Proc>,
    info: WorkerInfo,
    spec: EnvSpec,
    /// Whether environment i has a running episode.
    running: Vec<bool>,
    /// Why the worker is unusable, after a timeout, an exit or a protocol error.
    broken: Option<String>,
    closed: bool,
    restarts: u64,
    send_buf: Vec<u8>,
    recv_buf: Vec<u8>,
    /// Indices of a step sent and not yet received.
    pending_step: Option<Vec<usize>>,
}

impl std::fmt::Debug for PythonWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonWorker")
            .field("env_id", &self.config.env_id)
            .field("num_envs", &self.info.num_envs)
            .field("pid", &self.proc.as_ref().map(|p| p.pid))
            .field("broken", &self.broken)
            .field("restarts", &self.restarts)
            .finish()
    }
}

impl PythonWorker {
    /// Starts the worker process and performs the handshake.
    ///
    /// Errors: [`WorkerError::VenvMissing`] (run `make setup`), [`WorkerError::User`] for an
    /// unknown id (one line), [`WorkerError::Exception`] when construction raises, and
    /// [`WorkerError::Timeout`] / [`WorkerError::Died`].
    pub fn spawn(mut config: WorkerConfig) -> anyhow::Result<Self> {
        // Decided once here, not per reply; a lone worker spins when a core is free.
        config.spin.get_or_insert_with(|| auto_spin(1));
        if config.num_envs == 0 {
            return Err(EnvError::Invalid("num_envs must be at least 1".into()).into());
        }
        if let Some(seeds) = &config.seeds {
            if seeds.len() != config.num_envs {
                return Err(
                    EnvError::Invalid(format!("{} seeds for {} environments", seeds.len(), config.num_envs)).into()
                );
            }
        }
        let (proc, info) = Self::start(&config)?;
        let spec = EnvSpec {
            name: config.env_id.clone(),
            obs_dim: info.obs_dim,
            action_dim: info.action_dim,
            action_low: info.action_low.clone(),
            action_high: info.action_high.clone(),
            max_episode_steps: info.max_episode_steps,
        };
        Ok(Self {
            running: vec![false; info.num_envs],
            config,
            proc: Some(proc),
            info,
            spec,
            broken: None,
            closed: false,
            restarts: 0,
            send_buf: Vec::new(),
            recv_buf: Vec::new(),
            pending_step: None,
        })
    }

    /// Spawns a process (or connects to a listening worker) and runs the handshake; kills the
    /// process on failure. A remote worker's connection lost during the handshake is tried
    /// again until `startup_timeout`: a connection made while the old listener was going away
    /// (a worker restarted on its machine) is reset without an answer.
    fn start(config: &WorkerConfig) -> anyhow::Result<(Proc, WorkerInfo)> {
        let deadline = Instant::now() + config.startup_timeout;
        loop {
            match Self::start_once(config) {
                Err(e)
                    if config.is_remote()
                        && Instant::now() < deadline
                        && matches!(e.downcast_ref::<WorkerError>(), Some(WorkerError::Died { .. })) =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                result => return result,
            }
        }
    }

    fn start_once(config: &WorkerConfig) -> anyhow::Result<(Proc, WorkerInfo)> {
        let mut proc = Proc::open(config)?;
        let auth = match Self::answer_challenge(&mut proc, config) {
            Ok(auth) => auth,
            Err(err) => {
                proc.shutdown(Duration::from_millis(500));
                return Err(err);
            }
        };
        let hello = serde_json::json!({
            "protocol": PROTOCOL_VERSION,
            "env_id": config.env_id,
            "num_envs": config.num_envs,
            "seeds": config.seeds,
            "max_episode_steps": config.max_episode_steps,
            "env_kwargs": config.env_kwargs,
            "render": config.render,
            "auth": auth,
        });
        let result = (|| -> Result<WorkerInfo, WorkerError> {
            let mut frame = Vec::new();
            begin_frame(&mut frame, tag::HELLO);
            frame.extend_from_slice(hello.to_string().as_bytes());
            let mut buf = Vec::new();
            exchange(&mut proc, config, &mut frame, &mut buf, config.startup_timeout, "the handshake")?;
            let body = expect_reply(&mut proc, config, &buf, tag::READY)?;
            let info: WorkerInfo =
                serde_json::from_slice(body).map_err(|e| WorkerError::Protocol(format!("bad READY message: {e}")))?;
            let valid = info.protocol == PROTOCOL_VERSION
                && info.num_envs == config.num_envs
                && info.obs_dim > 0
                && info.action_dim > 0
                && info.action_low.len() == info.action_dim
                && info.action_high.len() == info.action_dim;
            if !valid {
                return Err(WorkerError::Protocol(format!("inconsistent READY message: {info:?}")));
            }
            Ok(info)
        })();
        match result {
            Ok(info) => {
                proc.pid = info.pid;
                Ok((proc, info))
            }
            Err(err) => {
                proc.shutdown(Duration::from_millis(500));
                Err(err.into())
            }
        }
    }

    /// A remote worker's challenge answered with the secret (`None` for a child process).
    fn answer_challenge(proc: &mut Proc, config: &WorkerConfig) -> anyhow::Result<Option<String>> {
        if !config.is_remote() {
            return Ok(None);
        }
        let Some(secret) = &config.secret else {
            bail!(
                "the env worker at {} needs the shared secret: set env.worker_secret_file (or {SECRET_ENV}) \
                 to the secret the worker was started with",
                proc.address().unwrap_or("a TCP address")
            );
        };
        let mut buf = Vec::new();
        read_frame(proc, config, &mut buf, config.startup_timeout, "the challenge")?;
        let nonce = expect_reply(proc, config, &buf, tag::CHALLENGE)?;
        if nonce.len() != NONCE_BYTES {
            return Err(
                WorkerError::Protocol(format!("a challenge of {} bytes, not {NONCE_BYTES}", nonce.len())).into()
            );
        }
        Ok(Some(secret.answer(nonce)))
    }

    /// The environments' description (`name` is the id as given).
    pub fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    /// The handshake's report (versions, pid, ...).
    pub fn info(&self) -> &WorkerInfo {
        &self.info
    }

    /// Number of environments M hosted by the process.
    pub fn num_envs(&self) -> usize {
        self.info.num_envs
    }

    /// Process id of the running worker (`None` once closed or killed).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid)
    }

    /// Why the worker is unusable, if it is (call [`restart`](Self::restart)).
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// How many times [`restart`](Self::restart) started a fresh process.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Whether environment `i` has a running episode.
    pub fn is_running(&self, i: usize) -> bool {
        self.running.get(i).copied().unwrap_or(false)
    }

    /// Replaces the process by a fresh one with the same configuration (after a timeout or
    /// an exit, or at will). Every environment then needs a reset.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut proc) = self.proc.take() {
            proc.shutdown(Duration::ZERO);
        }
        self.running.iter_mut().for_each(|r| *r = false);
        self.pending_step = None;
        let (proc, info) = Self::start(&self.config)?;
        if info.obs_dim != self.info.obs_dim || info.action_dim != self.info.action_dim {
            let mut proc = proc;
            proc.shutdown(Duration::ZERO);
            return Err(WorkerError::Protocol(format!(
                "restarted worker changed its spaces: {info:?} vs {:?}",
                self.info
            ))
            .into());
        }
        self.proc = Some(proc);
        self.info = info;
        self.broken = None;
        self.closed = false;
        self.restarts += 1;
        Ok(())
    }

    /// Kills the process at once (no CLOSE); the worker is broken until restarted.
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.shutdown(Duration::ZERO);
        }
        self.running.iter_mut().for_each(|r| *r = false);
        self.pending_step = None;
        self.broken.get_or_insert_with(|| "killed".to_string());
    }

    /// Round trip with an empty message: a health check that returns the latency.
    pub fn ping(&mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.send_buf.clear();
        begin_frame(&mut self.send_buf, tag::PING);
        self.request("ping", tag::PONG)?;
        Ok(start.elapsed())
    }

    /// Closes the environments and ends the process. Idempotent.
    pub fn close(&mut self) -> anyhow::Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.running.iter_mut().for_each(|r| *r = false);
        let Some(mut proc) = self.proc.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        if self.broken.is_none() {
            let mut frame = Vec::new();
            begin_frame(&mut frame, tag::CLOSE);
            let timeout = self.config.timeout.min(Duration::from_secs(10));
            result = exchange(&mut proc, &self.config, &mut frame, &mut self.recv_buf, timeout, "close")
                .and_then(|_| expect_reply(&mut proc, &self.config, &self.recv_buf, tag::CLOSED).map(|_| ()));
        }
        proc.shutdown(Duration::from_secs(2));
        result.map_err(Into::into)
    }

    fn check_index(&self, i: usize) -> anyhow::Result<()> {
        if i >= self.num_envs() {
            return Err(EnvError::Invalid(format!(
                "environment index {i} out of range for a worker with {} environments",
                self.num_envs()
            ))
            .into());
        }
        Ok(())
    }

    /// Sends `self.send_buf` (a frame begun with [`begin_frame`]) and returns the body of
    /// the `want` reply. Marks the worker broken on transport failures.
    fn request(&mut self, what: &'static str, want: u8) -> anyhow::Result<&[u8]> {
        self.send(what)?;
        self.receive(what, want)
    }

    /// Writes `self.send_buf` without waiting for the reply ([`receive`](Self::receive) reads
    /// it): W workers can then compute in parallel.
    fn send(&mut self, what: &'static str) -> anyhow::Result<()> {
        if self.closed {
            return Err(WorkerError::Closed(self.config.env_id.clone()).into());
        }
        if let Some(reason) = &self.broken {
            return Err(WorkerError::Broken { env_id: self.config.env_id.clone(), reason: reason.clone() }.into());
        }
        let proc = self.proc.as_mut().expect("a worker that is neither closed nor broken has a process");
        let result = write_frame(proc, &self.config, &mut self.send_buf, what);
        result.map_err(|err| self.fail(err))
    }

    /// Reads the reply to the request sent last; returns the body of the `want` reply.
    fn receive(&mut self, what: &'static str, want: u8) -> anyhow::Result<&[u8]> {
        let Some(proc) = self.proc.as_mut() else {
            return Err(WorkerError::Broken {
                env_id: self.config.env_id.clone(),
                reason: self.broken.clone().unwrap_or_else(|| "no process".into()),
            }
            .into());
        };
        let result = read_frame(proc, &self.config, &mut self.recv_buf, self.config.timeout, what)
            .and_then(|_| expect_reply(proc, &self.config, &self.recv_buf, want).map(|_| ()));
        match result {
            Ok(()) => Ok(&self.recv_buf[1..]),
            Err(err) => Err(self.fail(err)),
        }
    }

    /// Records a failed request: transport failures make the worker broken (and end its
    /// process); a Python exception or a caller's mistake leaves it usable.
    fn fail(&mut self, err: WorkerError) -> anyhow::Error {
        if !matches!(err, WorkerError::Exception { .. } | WorkerError::User(_)) {
            // The stream can no longer be trusted: end the process now.
            let first_line = err.to_string().lines().next().unwrap_or_default().to_string();
            self.broken = Some(first_line);
            if let Some(mut proc) = self.proc.take() {
                proc.shutdown(Duration::ZERO);
            }
        }
        err.into()
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            // End of input makes a healthy worker close its environments and exit.
            proc.shutdown(Duration::from_secs(1));
        }
    }
}

/// Checks the reply's tag: `want` gives its body; `ERROR` becomes the matching error.
fn expect_reply<'a>(proc: &mut Proc, config: &WorkerConfig, buf: &'a [u8], want: u8) -> Result<&'a [u8], WorkerError> {
    match buf[0] {
        t if t == want => Ok(&buf[1..]),
        tag::ERROR if buf.len() >= 2 => {
            let message = String::from_utf8_lossy(&buf[2..]).into_owned();
            if buf[1] == tag::ERR_USER {
                Err(WorkerError::User(message))
            } else {
                Err(WorkerError::Exception { env_id: config.env_id.clone(), pid: proc.pid, message })
            }
        }
        t => Err(WorkerError::Protocol(format!("expected reply {want:#04x}, got {t:#04x}"))),
    }
}

#[cfg(test)]
mod tests;
