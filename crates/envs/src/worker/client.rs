//! [`PythonWorker`]: one worker process hosting M environments, driven with batched requests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::process::{exchange, read_frame, write_frame, Proc};
use super::protocol::{begin_frame, put_u32, tag, BatchReset, BatchStep, Cursor, WorkerInfo, PROTOCOL_VERSION};
use super::WorkerError;
use crate::{EnvError, EnvSpec};

/// How to start a worker. Build it with [`WorkerConfig::new`] and adjust the public fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// Environment id: an OGBench singletask name (`cube-double-play-singletask-task2-v0`) or
    /// any registered Gymnasium id (`HalfCheetah-v5`).
    pub env_id: String,
    /// Number of environments M hosted by the process.
    pub num_envs: usize,
    /// Seeds of the first unseeded reset of each environment (length M), typically
    /// `seed + i`; `None` leaves unseeded resets to OS entropy.
    pub seeds: Option<Vec<u64>>,
    /// Overrides the registered time limit (required for environments without one).
    pub max_episode_steps: Option<usize>,
    /// Keyword arguments for the environment constructor, as a JSON object.
    pub env_kwargs: Option<serde_json::Value>,
    /// Deadline for each reply after the handshake.
    pub timeout: Duration,
    /// Deadline for the handshake (Python start, imports, environment construction).
    pub startup_timeout: Duration,
    /// Project root holding `.venv/` and `envs/`; `None`: [`project_root`].
    pub root: Option<PathBuf>,
    /// Interpreter; `None`: `$MVP_PYTHON`, else `<root>/.venv/bin/python`.
    pub python: Option<PathBuf>,
    /// Copy the worker's stderr to this process's stderr (also when `$MVP_WORKER_STDERR` is
    /// set); it is always kept for error messages.
    pub forward_stderr: bool,
    /// Busy-wait up to this long for each reply before blocking. On virtual machines a process
    /// blocked while the worker steps wakes about 0.1 ms late, which costs 10–15% of an
    /// OGBench step; spinning avoids it at the price of a busy core. `None`: 10 ms when this
    /// worker's processes leave a core free (see [`auto_spin`]), else no spinning.
    pub spin: Option<Duration>,
    /// Make the environments render RGB frames of `[width, height]` offscreen
    /// ([`PythonWorker::render`]); `None`: no renderer (faster to build).
    pub render: Option<[u32; 2]>,
    /// A worker already listening at `HOST:PORT` (`python -m mvp_envs.worker --listen
    /// HOST:PORT`, e.g. on another machine) instead of a child process: the same frames and
    /// handshake over TCP, connected within `startup_timeout`; a restart reconnects (the
    /// server builds fresh environments for every connection). `None`: a child process.
    pub address: Option<String>,
    /// A worker that may move (placed by Ray, [`crate::RayWorkers`]): its address is entry
    /// `.1` of this book, read again at every connection attempt; it takes precedence over
    /// `address`. Not serialised.
    #[serde(skip)]
    pub listed: Option<(crate::AddressBook, usize)>,
}

/// The default busy-wait per reply for `workers` worker processes: 10 ms (longer than one
/// OGBench or robosuite step) when the machine has more cores than workers, else none (a
/// spinning reader would take a core from a worker).
pub fn auto_spin(workers: usize) -> Duration {
    // `available_parallelism` reads cgroup files on Linux: ask once per process.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if workers < cores {
        Duration::from_millis(10)
    } else {
        Duration::ZERO
    }
}

impl WorkerConfig {
    /// Whether the worker is reached over TCP (an address, or a place in an address book).
    pub fn is_remote(&self) -> bool {
        self.address.is_some() || self.listed.is_some()
    }

    /// One environment of `env_id`, default deadlines (60 s per reply, 180 s for the
    /// handshake), no seeds.
    pub fn new(env_id: impl Into<String>) -> Self {
        Self {
            env_id: env_id.into(),
            num_envs: 1,
            seeds: None,
            max_episode_steps: None,
            env_kwargs: None,
            timeout: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(180),
            root: None,
            python: None,
            forward_stderr: std::env::var_os("MVP_WORKER_STDERR").is_some(),
            spin: None,
            render: None,
            address: None,
            listed: None,
        }
    }
}

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
        let hello = serde_json::json!({
            "protocol": PROTOCOL_VERSION,
            "env_id": config.env_id,
            "num_envs": config.num_envs,
            "seeds": config.seeds,
            "max_episode_steps": config.max_episode_steps,
            "env_kwargs": config.env_kwargs,
            "render": config.render,
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

    /// Resets the listed environments, `(index, seed)` each; `None` continues the
    /// environment's generator (its first reset uses [`WorkerConfig::seeds`] when given).
    /// Returns observations and success flags in request order.
    pub fn reset_envs(&mut self, items: &[(usize, Option<u64>)]) -> anyhow::Result<BatchReset> {
        for &(i, _) in items {
            self.check_index(i)?;
        }
        self.send_buf.clear();
        begin_frame(&mut self.send_buf, tag::RESET);
        put_u32(&mut self.send_buf, items.len());
        for &(i, seed) in items {
            put_u32(&mut self.send_buf, i);
            self.send_buf.push(seed.is_some() as u8);
            self.send_buf.extend_from_slice(&seed.unwrap_or(0).to_le_bytes());
        }
        // Whatever the outcome, these environments have no usable episode until it succeeds.
        for &(i, _) in items {
            self.running[i] = false;
        }
        let k = items.len();
        let obs_dim = self.info.obs_dim;
        let body = self.request("reset", tag::RESET_OK)?;
        let mut r = Cursor::new(body, "RESET_OK");
        r.count(k)?;
        let reply = BatchReset { obs: r.f32s(k * obs_dim)?, success: r.bools(k)? };
        r.finish()?;
        for &(i, _) in items {
            self.running[i] = true;
        }
        Ok(reply)
    }

    /// Resets every environment; `seeds` (length M) seeds them, `None` continues their
    /// generators.
    pub fn reset_all(&mut self, seeds: Option<&[u64]>) -> anyhow::Result<BatchReset> {
        let m = self.num_envs();
        if let Some(s) = seeds {
            if s.len() != m {
                return Err(EnvError::Invalid(format!("{} seeds for {m} environments", s.len())).into());
            }
        }
        let items: Vec<(usize, Option<u64>)> = (0..m).map(|i| (i, seeds.map(|s| s[i]))).collect();
        self.reset_envs(&items)
    }

    /// An RGB frame of environment `i` as it is now (the worker must have been configured with
    /// [`WorkerConfig::render`]).
    pub fn render(&mut self, i: usize) -> anyhow::Result<crate::Frame> {
        self.check_index(i)?;
        self.send_buf.clear();
        begin_frame(&mut self.send_buf, tag::RENDER);
        put_u32(&mut self.send_buf, i);
        let body = self.request("render", tag::RENDER_OK)?;
        let mut r = Cursor::new(body, "RENDER_OK");
        let (height, width) = (r.u32()?, r.u32()?);
        let rgb = r.take(height * width * 3)?.to_vec();
        r.finish()?;
        Ok(crate::Frame { width, height, rgb })
    }

    /// Steps the listed environments with `actions` (row-major `[indices.len(), action_dim]`).
    /// Each listed environment must have a running episode; an environment whose step ends
    /// the episode must be reset before it steps again. Actions are clipped to the bounds.
    pub fn step_envs(&mut self, indices: &[usize], actions: &[f32]) -> anyhow::Result<BatchStep> {
        self.send_step(indices, actions)?;
        self.receive_step()
    }

    /// The descriptor the worker's replies arrive on (for waiting on several workers at once
    /// with `poll`); `None` when no process is running.
    pub fn reply_fd(&self) -> Option<std::os::fd::RawFd> {
        self.proc.as_ref().map(Proc::reply_fd)
    }

    /// The first half of [`step_envs`](Self::step_envs): checks and sends the request and
    /// returns at once, so that several workers step in parallel; [`receive_step`]
    /// (Self::receive_step) reads the reply. No other request may come in between.
    pub fn send_step(&mut self, indices: &[usize], actions: &[f32]) -> anyhow::Result<()> {
        if self.pending_step.is_some() {
            return Err(EnvError::Invalid("send_step called twice without receive_step".into()).into());
        }
        let a = self.info.action_dim;
        if actions.len() != indices.len() * a {
            return Err(EnvError::ActionDim { expected: indices.len() * a, got: actions.len() }.into());
        }
        for (j, &i) in indices.iter().enumerate() {
            self.check_index(i)?;
            if !self.running[i] {
                return Err(anyhow::Error::from(EnvError::NoEpisode)
                    .context(format!("environment {i} of worker `{}`", self.config.env_id)));
            }
            if indices[..j].contains(&i) {
                return Err(EnvError::Invalid(format!("environment {i} listed twice in one step")).into());
            }
            let row = &actions[j * a..(j + 1) * a];
            if row.iter().any(|x| !x.is_finite()) {
                return Err(EnvError::NonFiniteAction(row.to_vec()).into());
            }
        }
        self.send_buf.clear();
        begin_frame(&mut self.send_buf, tag::STEP);
        put_u32(&mut self.send_buf, indices.len());
        for &i in indices {
            put_u32(&mut self.send_buf, i);
        }
        for (n, &x) in actions.iter().enumerate() {
            let d = n % a;
            let x = x.clamp(self.info.action_low[d], self.info.action_high[d]);
            self.send_buf.extend_from_slice(&x.to_le_bytes());
        }
        for &i in indices {
            self.running[i] = false;
        }
        self.send("step")?;
        self.pending_step = Some(indices.to_vec());
        Ok(())
    }

    /// The second half of [`step_envs`](Self::step_envs): the reply to the last
    /// [`send_step`](Self::send_step), rows in its order.
    pub fn receive_step(&mut self) -> anyhow::Result<BatchStep> {
        let Some(indices) = self.pending_step.take() else {
            return Err(EnvError::Invalid("receive_step without send_step".into()).into());
        };
        let k = indices.len();
        let obs_dim = self.info.obs_dim;
        let body = self.receive("step", tag::STEP_OK)?;
        let mut r = Cursor::new(body, "STEP_OK");
        r.count(k)?;
        let obs = r.f32s(k * obs_dim)?;
        let reward = r.f32s(k)?;
        let terminated = r.bools(k)?;
        let truncated: Vec<bool> = r.bools(k)?;
        let success = r.bools(k)?;
        r.finish()?;
        // Gymnasium's TimeLimit may set both flags; ours are exclusive (see `Env`).
        let truncated: Vec<bool> = truncated.iter().zip(&terminated).map(|(&tr, &te)| tr && !te).collect();
        for (j, &i) in indices.iter().enumerate() {
            self.running[i] = !(terminated[j] || truncated[j]);
        }
        Ok(BatchStep { obs, reward, terminated, truncated, success })
    }

    /// Steps every environment (each must have a running episode); `actions` is
    /// `[M, action_dim]`.
    pub fn step_all(&mut self, actions: &[f32]) -> anyhow::Result<BatchStep> {
        let indices: Vec<usize> = (0..self.num_envs()).collect();
        self.step_envs(&indices, actions)
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
mod tests {
    use super::*;

    #[test]
    fn missing_venv_error_says_to_run_make_setup() {
        let dir = std::env::temp_dir().join(format!("mvp-no-venv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = WorkerConfig::new("cube-single-play-singletask-task1-v0");
        config.root = Some(dir.clone());
        config.python = None;
        if std::env::var_os("MVP_PYTHON").is_some() {
            return; // the interpreter comes from the environment, not from the root
        }
        let err = PythonWorker::spawn(config).unwrap_err();
        let msg = err.to_string();
        assert_eq!(msg, format!("Python env venv not found at {}; run `make setup`", dir.join(".venv").display()));
        assert!(matches!(err.downcast_ref::<WorkerError>(), Some(WorkerError::VenvMissing(_))));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn cursor_reads_little_endian_and_rejects_short_or_long_bodies() {
        let mut body = Vec::new();
        put_u32(&mut body, 2);
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2.0f32).to_le_bytes());
        body.extend_from_slice(&[1, 0]);
        let mut r = Cursor::new(&body, "test");
        r.count(2).unwrap();
        assert_eq!(r.f32s(2).unwrap(), vec![1.5, -2.0]);
        assert_eq!(r.bools(2).unwrap(), vec![true, false]);
        r.finish().unwrap();

        let mut r = Cursor::new(&body, "test");
        assert!(r.count(3).is_err());
        let mut r = Cursor::new(&body[..6], "test");
        r.count(2).unwrap();
        assert!(r.f32s(2).is_err());
        let r = Cursor::new(&body, "test");
        assert!(r.finish().is_err());
    }
}
