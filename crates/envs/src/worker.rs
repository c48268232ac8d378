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

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Env, EnvError, EnvSpec, Info, Step};

/// Version of the wire protocol; the worker refuses a handshake with another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts (a guard against reading garbage as a length).
const MAX_FRAME: usize = 1 << 30;

/// Message tags (mirror of `envs/mvp_envs/protocol.py`).
mod tag {
    pub const HELLO: u8 = 0x01;
    pub const RESET: u8 = 0x02;
    pub const STEP: u8 = 0x03;
    pub const PING: u8 = 0x04;
    pub const CLOSE: u8 = 0x05;
    pub const READY: u8 = 0x81;
    pub const RESET_OK: u8 = 0x82;
    pub const STEP_OK: u8 = 0x83;
    pub const PONG: u8 = 0x84;
    pub const CLOSED: u8 = 0x85;
    pub const ERROR: u8 = 0xFF;
    /// Error kinds carried by an `ERROR` reply.
    pub const ERR_USER: u8 = 0;
}

/// Lines of the worker's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 40;

/// Errors of the Python worker bridge (wrapped in `anyhow::Error`; downcast to inspect them).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkerError {
    /// The venv's interpreter does not exist.
    #[error("Python env venv not found at {}; run `make setup`", .0.display())]
    VenvMissing(PathBuf),
    /// The `mvp_envs` package is not where the project root says.
    #[error("env worker package not found at {}; run from the mvp checkout or set MVP_ROOT to it", .0.display())]
    PackageMissing(PathBuf),
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
    #[error("env worker `{env_id}` (pid {pid}) did not answer {request} within {secs:.1} s and was killed; restart it")]
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
        }
    }
}

/// What the worker reported in its handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Protocol version of the worker.
    pub protocol: u32,
    /// The environment id.
    pub env_id: String,
    /// Number of environments hosted.
    pub num_envs: usize,
    /// Observation width.
    pub obs_dim: usize,
    /// Action width.
    pub action_dim: usize,
    /// Lower action bounds.
    pub action_low: Vec<f32>,
    /// Upper action bounds.
    pub action_high: Vec<f32>,
    /// Time limit of an episode.
    pub max_episode_steps: usize,
    /// The worker's process id.
    pub pid: u32,
    /// Python version.
    pub python: String,
    /// Versions of the key packages (gymnasium, mujoco, numpy, ogbench).
    #[serde(default)]
    pub versions: std::collections::BTreeMap<String, String>,
}

/// Result of a batched reset of K environments.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchReset {
    /// First observations, row-major `[K, obs_dim]`.
    pub obs: Vec<f32>,
    /// `info['success']` of each first state.
    pub success: Vec<bool>,
}

/// Result of a batched step of K environments (rows in request order).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchStep {
    /// Next observations, row-major `[K, obs_dim]`.
    pub obs: Vec<f32>,
    /// Rewards.
    pub reward: Vec<f32>,
    /// True terminal states (bootstrap mask 0).
    pub terminated: Vec<bool>,
    /// Time-limit ends (only where `terminated` is false).
    pub truncated: Vec<bool>,
    /// `info['success']` of each next state.
    pub success: Vec<bool>,
}

impl BatchStep {
    /// Row `k` as a [`Step`].
    pub fn get(&self, k: usize) -> Step {
        let d = self.obs.len() / self.reward.len().max(1);
        Step {
            obs: self.obs[k * d..(k + 1) * d].to_vec(),
            reward: self.reward[k],
            terminated: self.terminated[k],
            truncated: self.truncated[k],
            info: Info {
                success: self.success[k],
            },
        }
    }
}

/// The project root: `$MVP_ROOT`, else the nearest ancestor of the current directory that
/// holds `envs/mvp_envs/worker.py`, else the checkout this crate was built from, else the
/// current directory.
pub fn project_root() -> PathBuf {
    if let Some(root) = std::env::var_os("MVP_ROOT") {
        return PathBuf::from(root);
    }
    let marker = Path::new("envs/mvp_envs/worker.py");
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    if let Some(dir) = cwd.ancestors().find(|d| d.join(marker).is_file()) {
        return dir.to_path_buf();
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if built.join(marker).is_file() {
        return built.canonicalize().unwrap_or(built);
    }
    cwd
}

/// A command that runs `python -m <module>` from the project's venv, as the env workers are
/// started: interpreter `$MVP_PYTHON`, else `<root>/.venv/bin/python` (root: [`project_root`]),
/// `envs/` on `PYTHONPATH`, the project root as working directory, and one numerical thread
/// (`OMP_NUM_THREADS` etc. = 1 unless already set). Use it for the Python tools, e.g.
/// `python_module_command("mvp_envs.data_ogbench")?.args([...])`.
///
/// Errors: [`WorkerError::VenvMissing`] (says to run `make setup`) or
/// [`WorkerError::PackageMissing`].
pub fn python_module_command(module: &str) -> anyhow::Result<Command> {
    python_module_command_in(module, None, None)
}

/// [`python_module_command`] with an explicit root and interpreter (`None`: the defaults).
pub(crate) fn python_module_command_in(
    module: &str,
    root: Option<&Path>,
    python: Option<&Path>,
) -> anyhow::Result<Command> {
    let mut cmd = python_command_in(root, python)?;
    cmd.args(["-m", module]);
    Ok(cmd)
}

/// The project's Python interpreter set up as for [`python_module_command`], with no
/// arguments yet (for `-c CODE` and the like).
pub fn python_command() -> anyhow::Result<Command> {
    python_command_in(None, None)
}

fn python_command_in(root: Option<&Path>, python: Option<&Path>) -> anyhow::Result<Command> {
    let root = root.map(Path::to_path_buf).unwrap_or_else(project_root);
    let python = match (python, std::env::var_os("MVP_PYTHON")) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => root.join(".venv/bin/python"),
    };
    if !python.exists() {
        let venv = python
            .parent()
            .and_then(Path::parent)
            .unwrap_or(&python)
            .to_path_buf();
        return Err(WorkerError::VenvMissing(venv).into());
    }
    let envs_dir = root.join("envs");
    if !envs_dir.join("mvp_envs/worker.py").is_file() {
        return Err(WorkerError::PackageMissing(envs_dir.join("mvp_envs")).into());
    }
    let mut pythonpath = envs_dir.into_os_string();
    if let Some(old) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        pythonpath.push(":");
        pythonpath.push(old);
    }
    let mut cmd = Command::new(&python);
    cmd.current_dir(&root).env("PYTHONPATH", pythonpath);
    // One numerical thread per process unless the caller chose otherwise: workers are
    // many and cores are few (two OpenMP threads per process stall at random on 2-vCPU machines).
    for var in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            cmd.env(var, "1");
        }
    }
    Ok(cmd)
}

/// Keeps the last lines of the worker's stderr (and optionally copies them to ours).
type StderrTail = Arc<Mutex<VecDeque<String>>>;

/// One running worker process.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr_tail: StderrTail,
    stderr_thread: Option<JoinHandle<()>>,
    pid: u32,
}

impl Proc {
    fn spawn(config: &WorkerConfig) -> anyhow::Result<Proc> {
        let mut cmd = python_module_command_in(
            "mvp_envs.worker",
            config.root.as_deref(),
            config.python.as_deref(),
        )?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let python = PathBuf::from(cmd.get_program());
        let mut child = cmd.spawn().map_err(|e| WorkerError::Spawn {
            python: python.clone(),
            reason: e.to_string(),
        })?;
        let pid = child.id();
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_tail: StderrTail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr_tail);
        let forward = config.forward_stderr;
        let stderr_thread = std::thread::Builder::new()
            .name(format!("env-worker-{pid}-stderr"))
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if forward {
                        eprintln!("[env worker {pid}] {line}");
                    }
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            })
            .ok();
        Ok(Proc {
            child,
            stdin: Some(stdin),
            stdout,
            stderr_tail,
            stderr_thread,
            pid,
        })
    }

    /// The exit status, waiting up to `wait` for the process to end.
    fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => return None,
            }
        }
    }

    /// The kept stderr lines, after giving the reader thread a moment to drain the pipe.
    fn stderr_text(&mut self) -> String {
        if let Some(handle) = self.stderr_thread.take() {
            let deadline = Instant::now() + Duration::from_millis(500);
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                self.stderr_thread = Some(handle);
            }
        }
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Ends the process: closes its input (a healthy worker exits on end of input), waits
    /// up to `grace`, then kills it. Always reaps it.
    fn shutdown(&mut self, grace: Duration) {
        self.stdin = None;
        if self.wait_exit(grace).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(handle) = self.stderr_thread.take() {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

/// Failure of one read with a deadline.
enum ReadFail {
    Timeout,
    Eof,
    Io(std::io::Error),
}

/// Reads exactly `buf.len()` bytes from `src`, polling so that no read blocks past `deadline`;
/// until `spin_until` it polls without blocking (busy-waits).
fn read_exact_deadline(
    src: &mut ChildStdout,
    buf: &mut [u8],
    deadline: Instant,
    spin_until: Instant,
) -> Result<(), ReadFail> {
    let fd = src.as_raw_fd();
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadFail::Timeout);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = if Instant::now() < spin_until { 0 } else { left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds = 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ReadFail::Io(err));
        }
        if rc == 0 {
            if ms == 0 {
                std::hint::spin_loop();
            }
            continue; // the deadline check above ends the loop
        }
        match src.read(&mut buf[filled..]) {
            Ok(0) => return Err(ReadFail::Eof),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadFail::Io(e)),
        }
    }
    Ok(())
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
                return Err(EnvError::Invalid(format!(
                    "{} seeds for {} environments",
                    seeds.len(),
                    config.num_envs
                ))
                .into());
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

    /// Spawns a process and runs the handshake; kills the process on failure.
    fn start(config: &WorkerConfig) -> anyhow::Result<(Proc, WorkerInfo)> {
        let mut proc = Proc::spawn(config)?;
        let hello = serde_json::json!({
            "protocol": PROTOCOL_VERSION,
            "env_id": config.env_id,
            "num_envs": config.num_envs,
            "seeds": config.seeds,
            "max_episode_steps": config.max_episode_steps,
            "env_kwargs": config.env_kwargs,
        });
        let result = (|| -> Result<WorkerInfo, WorkerError> {
            let mut frame = Vec::new();
            begin_frame(&mut frame, tag::HELLO);
            frame.extend_from_slice(hello.to_string().as_bytes());
            let mut buf = Vec::new();
            exchange(
                &mut proc,
                config,
                &frame,
                &mut buf,
                config.startup_timeout,
                "the handshake",
            )?;
            let body = expect_reply(&mut proc, config, &buf, tag::READY)?;
            let info: WorkerInfo = serde_json::from_slice(body)
                .map_err(|e| WorkerError::Protocol(format!("bad READY message: {e}")))?;
            let valid = info.protocol == PROTOCOL_VERSION
                && info.num_envs == config.num_envs
                && info.obs_dim > 0
                && info.action_dim > 0
                && info.action_low.len() == info.action_dim
                && info.action_high.len() == info.action_dim;
            if !valid {
                return Err(WorkerError::Protocol(format!(
                    "inconsistent READY message: {info:?}"
                )));
            }
            Ok(info)
        })();
        match result {
            Ok(info) => Ok((proc, info)),
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
            self.send_buf
                .extend_from_slice(&seed.unwrap_or(0).to_le_bytes());
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
        let reply = BatchReset {
            obs: r.f32s(k * obs_dim)?,
            success: r.bools(k)?,
        };
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
                return Err(
                    EnvError::Invalid(format!("{} seeds for {m} environments", s.len())).into(),
                );
            }
        }
        let items: Vec<(usize, Option<u64>)> = (0..m).map(|i| (i, seeds.map(|s| s[i]))).collect();
        self.reset_envs(&items)
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
        self.proc.as_ref().map(|p| p.stdout.as_raw_fd())
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
            return Err(EnvError::ActionDim {
                expected: indices.len() * a,
                got: actions.len(),
            }
            .into());
        }
        for (j, &i) in indices.iter().enumerate() {
            self.check_index(i)?;
            if !self.running[i] {
                return Err(anyhow::Error::from(EnvError::NoEpisode).context(format!(
                    "environment {i} of worker `{}`",
                    self.config.env_id
                )));
            }
            if indices[..j].contains(&i) {
                return Err(
                    EnvError::Invalid(format!("environment {i} listed twice in one step")).into(),
                );
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
        let truncated: Vec<bool> = truncated
            .iter()
            .zip(&terminated)
            .map(|(&tr, &te)| tr && !te)
            .collect();
        for (j, &i) in indices.iter().enumerate() {
            self.running[i] = !(terminated[j] || truncated[j]);
        }
        Ok(BatchStep {
            obs,
            reward,
            terminated,
            truncated,
            success,
        })
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
            result = exchange(
                &mut proc,
                &self.config,
                &frame,
                &mut self.recv_buf,
                timeout,
                "close",
            )
            .and_then(|_| {
                expect_reply(&mut proc, &self.config, &self.recv_buf, tag::CLOSED).map(|_| ())
            });
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
            return Err(WorkerError::Broken {
                env_id: self.config.env_id.clone(),
                reason: reason.clone(),
            }
            .into());
        }
        let proc = self
            .proc
            .as_mut()
            .expect("a worker that is neither closed nor broken has a process");
        let result = write_frame(proc, &self.config, &self.send_buf, what);
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

/// Starts a frame in `buf`: a length placeholder and the tag.
fn begin_frame(buf: &mut Vec<u8>, tag: u8) {
    buf.extend_from_slice(&[0, 0, 0, 0, tag]);
}

fn put_u32(buf: &mut Vec<u8>, x: usize) {
    buf.extend_from_slice(&(x as u32).to_le_bytes());
}

/// Writes `frame` (patching its length) and reads one reply payload into `buf`.
fn exchange(
    proc: &mut Proc,
    config: &WorkerConfig,
    frame: &[u8],
    buf: &mut Vec<u8>,
    timeout: Duration,
    what: &'static str,
) -> Result<(), WorkerError> {
    write_frame(proc, config, frame, what)?;
    read_frame(proc, config, buf, timeout, what)
}

/// Writes `frame` (a frame begun with [`begin_frame`]), patching its length.
fn write_frame(
    proc: &mut Proc,
    config: &WorkerConfig,
    frame: &[u8],
    what: &'static str,
) -> Result<(), WorkerError> {
    let len = (frame.len() - 4) as u32;
    let stdin = proc
        .stdin
        .as_mut()
        .expect("stdin open while the worker runs");
    let written = stdin
        .write_all(&len.to_le_bytes())
        .and_then(|_| stdin.write_all(&frame[4..]))
        .and_then(|_| stdin.flush());
    written.map_err(|e| died(proc, config, what, format!("write failed: {e}")))
}

/// Reads one reply payload into `buf`, waiting at most `timeout`.
fn read_frame(
    proc: &mut Proc,
    config: &WorkerConfig,
    buf: &mut Vec<u8>,
    timeout: Duration,
    what: &'static str,
) -> Result<(), WorkerError> {
    let now = Instant::now();
    let deadline = now + timeout;
    let spin_until = now + config.spin.unwrap_or_default(); // set at spawn
    let fail = |proc: &mut Proc, f: ReadFail| match f {
        ReadFail::Timeout => WorkerError::Timeout {
            env_id: config.env_id.clone(),
            pid: proc.pid,
            request: what,
            secs: timeout.as_secs_f64(),
        },
        ReadFail::Eof => died(proc, config, what, "end of output".into()),
        ReadFail::Io(e) => died(proc, config, what, format!("read failed: {e}")),
    };
    let mut len = [0u8; 4];
    read_exact_deadline(&mut proc.stdout, &mut len, deadline, spin_until).map_err(|f| fail(proc, f))?;
    let n = u32::from_le_bytes(len) as usize;
    if n == 0 || n > MAX_FRAME {
        return Err(WorkerError::Protocol(format!(
            "bad frame length {n} from the worker"
        )));
    }
    buf.resize(n, 0);
    read_exact_deadline(&mut proc.stdout, buf, deadline, spin_until).map_err(|f| fail(proc, f))
}

/// A [`WorkerError::Died`] with the exit status and the stderr tail.
fn died(proc: &mut Proc, config: &WorkerConfig, what: &'static str, detail: String) -> WorkerError {
    let status = match proc.wait_exit(Duration::from_secs(2)) {
        Some(s) => s.to_string(),
        None => format!("still running after {detail}"),
    };
    WorkerError::Died {
        env_id: config.env_id.clone(),
        pid: proc.pid,
        request: what,
        status,
        stderr: proc.stderr_text(),
    }
}

/// Checks the reply's tag: `want` gives its body; `ERROR` becomes the matching error.
fn expect_reply<'a>(
    proc: &mut Proc,
    config: &WorkerConfig,
    buf: &'a [u8],
    want: u8,
) -> Result<&'a [u8], WorkerError> {
    match buf[0] {
        t if t == want => Ok(&buf[1..]),
        tag::ERROR if buf.len() >= 2 => {
            let message = String::from_utf8_lossy(&buf[2..]).into_owned();
            if buf[1] == tag::ERR_USER {
                Err(WorkerError::User(message))
            } else {
                Err(WorkerError::Exception {
                    env_id: config.env_id.clone(),
                    pid: proc.pid,
                    message,
                })
            }
        }
        t => Err(WorkerError::Protocol(format!(
            "expected reply {want:#04x}, got {t:#04x}"
        ))),
    }
}

/// Little-endian reader over a reply body.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WorkerError> {
        let end = self.pos + n;
        if end > self.buf.len() {
            return Err(WorkerError::Protocol(format!(
                "{} reply too short: {} bytes, needed {end}",
                self.what,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn count(&mut self, expected: usize) -> Result<(), WorkerError> {
        let k = u32::from_le_bytes(self.take(4)?.try_into().unwrap()) as usize;
        if k != expected {
            return Err(WorkerError::Protocol(format!(
                "{} reply for {k} environments, expected {expected}",
                self.what
            )));
        }
        Ok(())
    }

    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, WorkerError> {
        Ok(self
            .take(4 * n)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }

    fn bools(&mut self, n: usize) -> Result<Vec<bool>, WorkerError> {
        Ok(self.take(n)?.iter().map(|&b| b != 0).collect())
    }

    fn finish(&self) -> Result<(), WorkerError> {
        if self.pos != self.buf.len() {
            return Err(WorkerError::Protocol(format!(
                "{} reply has {} trailing bytes",
                self.what,
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }
}

/// One real environment behind its own Python worker process (M = 1), as an [`Env`].
#[derive(Debug)]
pub struct WorkerEnv {
    worker: PythonWorker,
}

impl WorkerEnv {
    /// Starts a worker for `config.env_id` with one environment (`num_envs` is forced to 1;
    /// `seeds`, if given, must hold one seed).
    pub fn new(mut config: WorkerConfig) -> anyhow::Result<Self> {
        config.num_envs = 1;
        Ok(Self {
            worker: PythonWorker::spawn(config)?,
        })
    }

    /// A worker for `env_id` with the default configuration.
    pub fn make(env_id: &str) -> anyhow::Result<Self> {
        Self::new(WorkerConfig::new(env_id))
    }

    /// The underlying worker (pid, restart, ping, ...).
    pub fn worker(&mut self) -> &mut PythonWorker {
        &mut self.worker
    }
}

impl Env for WorkerEnv {
    fn spec(&self) -> &EnvSpec {
        self.worker.spec()
    }

    fn reset(&mut self, seed: Option<u64>) -> anyhow::Result<(Vec<f32>, Info)> {
        let r = self.worker.reset_envs(&[(0, seed)])?;
        Ok((
            r.obs,
            Info {
                success: r.success[0],
            },
        ))
    }

    fn step(&mut self, action: &[f32]) -> anyhow::Result<Step> {
        if action.len() != self.worker.spec().action_dim {
            return Err(EnvError::ActionDim {
                expected: self.worker.spec().action_dim,
                got: action.len(),
            }
            .into());
        }
        if !self.worker.is_running(0) {
            return Err(EnvError::NoEpisode.into());
        }
        Ok(self.worker.step_envs(&[0], action)?.get(0))
    }

    fn recover(&mut self) -> anyhow::Result<bool> {
        tracing::warn!(
            "restarting env worker `{}` after: {}",
            self.worker.spec().name,
            self.worker.broken().unwrap_or("a Python exception")
        );
        self.worker.restart()?;
        Ok(true)
    }

    fn close(&mut self) -> anyhow::Result<()> {
        self.worker.close()
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
        assert_eq!(
            msg,
            format!(
                "Python env venv not found at {}; run `make setup`",
                dir.join(".venv").display()
            )
        );
        assert!(matches!(
            err.downcast_ref::<WorkerError>(),
            Some(WorkerError::VenvMissing(_))
        ));
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
