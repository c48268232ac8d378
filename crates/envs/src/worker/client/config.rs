//! [`WorkerConfig`]: how to start a worker (interpreter, environments, deadlines, spinning), and
//! [`auto_spin`], the default busy-wait per reply.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// ([`PythonWorker::render`](super::PythonWorker::render)); `None`: no renderer (faster to build).
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
    /// The shared secret that a worker reached over TCP asks for in its handshake (required
    /// then; a child process needs none). Never serialised.
    #[serde(skip)]
    pub secret: Option<crate::WorkerSecret>,
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
            secret: None,
        }
    }
}
