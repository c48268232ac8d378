//! The worker process: the venv's interpreter, spawning, the stderr tail, frame writes and
//! reads with deadlines; or, for a worker on another machine, a TCP connection to it carrying
//! the same frames.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::protocol::MAX_FRAME;
use super::{WorkerConfig, WorkerError};

/// Lines of the worker's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 40;

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
        let venv = python.parent().and_then(Path::parent).unwrap_or(&python).to_path_buf();
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
pub(crate) type StderrTail = Arc<Mutex<VecDeque<String>>>;

/// How requests reach a worker.
pub(super) enum Link {
    /// A child process: requests on its stdin, replies on its stdout.
    Pipes { child: Child, stdin: Option<ChildStdin>, stdout: ChildStdout },
    /// A worker listening on a TCP address (`python -m mvp_envs.worker --listen HOST:PORT`):
    /// requests and replies on one connection.
    Tcp { stream: TcpStream, address: String },
}

/// One running worker: a child process, or a connection to a remote one.
pub(super) struct Proc {
    pub(super) link: Link,
    pub(super) stderr_tail: StderrTail,
    pub(super) stderr_thread: Option<JoinHandle<()>>,
    /// The process id (a remote worker's as its handshake reports it; 0 before).
    pub(super) pid: u32,
}

impl Proc {
    /// The address of a remote worker's connection.
    pub(super) fn address(&self) -> Option<&str> {
        match &self.link {
            Link::Tcp { address, .. } => Some(address),
            Link::Pipes { .. } => None,
        }
    }

    /// Starts the worker of `config`: connects to `config.address`, or spawns a process.
    pub(super) fn open(config: &WorkerConfig) -> anyhow::Result<Proc> {
        match (&config.listed, &config.address) {
            (Some((book, i)), _) => Self::connect(|| book.get(*i), config.startup_timeout),
            (None, Some(address)) => Self::connect(|| Some(address.clone()), config.startup_timeout),
            (None, None) => Self::spawn(config),
        }
    }

    /// Connects to a listening worker at `address()` (asked again at every attempt: a worker
    /// may move), trying again until `timeout` while nothing listens there yet (a worker being
    /// restarted on its machine) or it has no address yet.
    fn connect(address: impl Fn() -> Option<String>, timeout: Duration) -> anyhow::Result<Proc> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("the address resolves to nothing");
        let mut tried = String::from("(not placed yet)");
        loop {
            let Some(address) = address() else {
                if Instant::now() >= deadline {
                    return Err(
                        WorkerError::Connect { address: tried, reason: "the worker has no address".into() }.into()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            tried.clone_from(&address);
            let unreachable = |reason: String| WorkerError::Connect { address: address.to_string(), reason };
            for addr in address.to_socket_addrs().map_err(|e| unreachable(e.to_string()))? {
                // At most 5 s per attempt: a lost machine's address may be replaced meanwhile.
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(10), Duration::from_secs(5));
                match TcpStream::connect_timeout(&addr, left) {
                    Ok(stream) => {
                        stream.set_nodelay(true)?;
                        let link = Link::Tcp { stream, address: address.to_string() };
                        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
                        return Ok(Proc { link, stderr_tail, stderr_thread: None, pid: 0 });
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(unreachable(last).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(config: &WorkerConfig) -> anyhow::Result<Proc> {
        let mut cmd = python_module_command_in("mvp_envs.worker", config.root.as_deref(), config.python.as_deref())?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let python = PathBuf::from(cmd.get_program());
        let mut child =
            cmd.spawn().map_err(|e| WorkerError::Spawn { python: python.clone(), reason: e.to_string() })?;
        let pid = child.id();
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (stderr_tail, stderr_thread) = keep_stderr_tail(stderr, format!("env worker {pid}"), config.forward_stderr);
        let link = Link::Pipes { child, stdin: Some(stdin), stdout };
        Ok(Proc { link, stderr_tail, stderr_thread, pid })
    }

    /// The descriptor replies arrive on.
    pub(super) fn reply_fd(&self) -> RawFd {
        match &self.link {
            Link::Pipes { stdout, .. } => stdout.as_raw_fd(),
            Link::Tcp { stream, .. } => stream.as_raw_fd(),
        }
    }

    /// The exit status, waiting up to `wait` for the process to end (never for a remote
    /// worker: its process is not ours).
    pub(super) fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let Link::Pipes { child, .. } = &mut self.link else { return None };
        let deadline = Instant::now() + wait;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => return None,
            }
        }
    }

    /// The kept stderr lines, after giving the reader thread a moment to drain the pipe.
    pub(super) fn stderr_text(&mut self) -> String {
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
        tail_text(&self.stderr_tail)
    }

    /// Ends the process: closes its input (a healthy worker exits on end of input), waits
    /// up to `grace`, then kills it. Always reaps it. A remote worker's connection is closed
    /// (its server then closes that connection's environments and waits for the next one).
    pub(super) fn shutdown(&mut self, grace: Duration) {
        match &mut self.link {
            Link::Pipes { stdin, .. } => *stdin = None,
            Link::Tcp { stream, .. } => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        if self.wait_exit(grace).is_none() {
            if let Link::Pipes { child, .. } = &mut self.link {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(handle) = self.stderr_thread.take() {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

/// Reads a child's stderr on a thread of its own, keeping its last lines (and copying them to
/// ours, prefixed with `[label]`, when `forward`).
pub(crate) fn keep_stderr_tail(
    stderr: impl Read + Send + 'static,
    label: String,
    forward: bool,
) -> (StderrTail, Option<JoinHandle<()>>) {
    let stderr_tail: StderrTail = Arc::new(Mutex::new(VecDeque::new()));
    let tail = Arc::clone(&stderr_tail);
    let thread = std::thread::Builder::new()
        .name(format!("{label}-stderr"))
        .spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if forward {
                    eprintln!("[{label}] {line}");
                }
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        })
        .ok();
    (stderr_tail, thread)
}

/// The kept lines, indented, one per line.
pub(crate) fn tail_text(tail: &StderrTail) -> String {
    let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
    tail.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// Failure of one read with a deadline.
pub(super) enum ReadFail {
    Timeout,
    Eof,
    Io(std::io::Error),
}

/// Reads exactly `buf.len()` bytes from `src`, polling so that no read blocks past `deadline`;
/// until `spin_until` it polls without blocking (busy-waits).
pub(super) fn read_exact_deadline(
    src: &mut (impl Read + AsRawFd),
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
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let ms =
            if Instant::now() < spin_until { 0 } else { left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int };
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

/// Writes `frame` (patching its length) and reads one reply payload into `buf`.
pub(super) fn exchange(
    proc: &mut Proc,
    config: &WorkerConfig,
    frame: &mut [u8],
    buf: &mut Vec<u8>,
    timeout: Duration,
    what: &'static str,
) -> Result<(), WorkerError> {
    write_frame(proc, config, frame, what)?;
    read_frame(proc, config, buf, timeout, what)
}

/// Writes `frame` (a frame begun with [`begin_frame`]), patching its length.
pub(super) fn write_frame(
    proc: &mut Proc,
    config: &WorkerConfig,
    frame: &mut [u8],
    what: &'static str,
) -> Result<(), WorkerError> {
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    let out: &mut dyn Write = match &mut proc.link {
        Link::Pipes { stdin, .. } => stdin.as_mut().expect("stdin open while the worker runs"),
        Link::Tcp { stream, .. } => stream,
    };
    // One write per frame (a TCP connection then sends it in as few segments as it can).
    let written = out.write_all(frame).and_then(|_| out.flush());
    written.map_err(|e| died(proc, config, what, format!("write failed: {e}")))
}

/// Reads one reply payload into `buf`, waiting at most `timeout`.
pub(super) fn read_frame(
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
    read_reply(proc, &mut len, deadline, spin_until).map_err(|f| fail(proc, f))?;
    let n = u32::from_le_bytes(len) as usize;
    if n == 0 || n > MAX_FRAME {
        return Err(WorkerError::Protocol(format!("bad frame length {n} from the worker")));
    }
    buf.resize(n, 0);
    read_reply(proc, buf, deadline, spin_until).map_err(|f| fail(proc, f))
}

fn read_reply(proc: &mut Proc, buf: &mut [u8], deadline: Instant, spin_until: Instant) -> Result<(), ReadFail> {
    match &mut proc.link {
        Link::Pipes { stdout, .. } => read_exact_deadline(stdout, buf, deadline, spin_until),
        Link::Tcp { stream, .. } => read_exact_deadline(stream, buf, deadline, spin_until),
    }
}

/// A [`WorkerError::Died`] with the exit status and the stderr tail (for a remote worker: the
/// lost connection).
pub(super) fn died(proc: &mut Proc, config: &WorkerConfig, what: &'static str, detail: String) -> WorkerError {
    if let Link::Tcp { address, .. } = &proc.link {
        return WorkerError::Died {
            env_id: config.env_id.clone(),
            pid: proc.pid,
            request: what,
            status: format!("connection to {address} lost: {detail}"),
            stderr: "  (a remote worker's stderr stays on its machine)".into(),
        };
    }
    let status = match proc.wait_exit(Duration::from_secs(2)) {
        Some(s) => s.to_string(),
        None => format!("still running after {detail}"),
    };
    WorkerError::Died {
        env_id: config.env_id.clone(),
        pid: proc.pid,
        request: what,
        status,
        stderr: Some(proc.stderr_text()).filter(|t| !t.trim().is_empty()).unwrap_or_else(|| "  (none)".into()),
    }
}
