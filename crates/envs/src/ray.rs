//! Environment workers placed on a Ray cluster: [`RayWorkers`] runs `python -m
//! mvp_envs.ray_workers` (the Python side owns everything Ray), which places one Ray actor per
//! worker and prints where each one serves the worker protocol over TCP; this side keeps those
//! addresses in an [`AddressBook`] that the workers' connections read when they (re)connect.
//! So a worker actor that Ray restarts, on its node or on another, is a reconnect here.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::worker::{keep_stderr_tail, python_module_command_in, tail_text, StderrTail};
use crate::WorkerConfig;

/// Where each of W remote workers serves now (`HOST:PORT`, `None` before it is placed),
/// updated while they move. Clones share the same book.
#[derive(Clone, Default)]
pub struct AddressBook(Arc<(Mutex<Vec<Option<String>>>, Condvar)>);

impl AddressBook {
    /// An empty book for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self(Arc::new((Mutex::new(vec![None; workers]), Condvar::new())))
    }

    /// Worker `i`'s address now.
    pub fn get(&self, i: usize) -> Option<String> {
        self.0 .0.lock().unwrap_or_else(|e| e.into_inner()).get(i).cloned().flatten()
    }

    /// Records that worker `i` now serves at `address`.
    pub fn set(&self, i: usize, address: String) {
        let mut book = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        if i >= book.len() {
            book.resize(i + 1, None);
        }
        book[i] = Some(address);
        self.0 .1.notify_all();
    }

    /// Waits until every worker has an address, or `timeout`; whether they all have one.
    fn wait_complete(&self, timeout: Duration, mut give_up: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut book = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        while book.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || give_up() {
                return false;
            }
            book =
                self.0 .1.wait_timeout(book, left.min(Duration::from_millis(200))).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

impl PartialEq for AddressBook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for AddressBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0 .0.lock().unwrap_or_else(|e| e.into_inner()).iter()).finish()
    }
}

/// How to place workers on Ray.
#[derive(Debug, Clone, PartialEq)]
pub struct RayConfig {
    /// An existing cluster (`HEAD:PORT`, or `auto` for the one this machine belongs to);
    /// `None`: a local Ray instance started for the run.
    pub address: Option<String>,
    /// Ray CPUs each worker actor asks for.
    pub cpus_per_worker: f64,
}

/// W worker actors on Ray, supervised by a `python -m mvp_envs.ray_workers` child process
/// that ends (with its actors) when this is dropped.
pub struct RayWorkers {
    child: Child,
    stdin: Option<ChildStdin>,
    book: AddressBook,
    stderr_tail: StderrTail,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RayWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RayWorkers").field("pid", &self.child.id()).field("addresses", &self.book).finish()
    }
}

/// A line of the supervisor's stdout.
#[derive(serde::Deserialize)]
struct Placement {
    worker: usize,
    address: String,
    pid: u32,
    node: String,
    generation: u64,
}

impl RayWorkers {
    /// Places `workers` actors (interpreter, project root and shared secret as in `template`)
    /// and waits until each serves, within `template.startup_timeout`. Errors name the cluster
    /// and carry the supervisor's last messages (Ray not installed, cluster unreachable, not enough CPUs).
    pub fn start(config: &RayConfig, workers: usize, template: &WorkerConfig) -> anyhow::Result<Self> {
        let mut cmd =
            python_module_command_in("mvp_envs.ray_workers", template.root.as_deref(), template.python.as_deref())?;
        cmd.args(["--workers", &workers.to_string(), "--cpus", &config.cpus_per_worker.to_string()]);
        if let Some(a) = &config.address {
            cmd.args(["--address", a]);
        }
        // The actors' secret travels in the supervisor's environment, never on its command line.
        let secret = template.secret.as_ref().context("Ray env workers need a shared secret (WorkerConfig.secret)")?;
        cmd.env(crate::SECRET_ENV, secret.expose());
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot start python -m mvp_envs.ray_workers")?;
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let book = AddressBook::new(workers);
        let (stderr_tail, stderr_thread) =
            keep_stderr_tail(stderr.expect("piped"), "ray workers".into(), template.forward_stderr);
        let mut threads: Vec<_> = stderr_thread.into_iter().collect();
        let b = book.clone();
        threads.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout.expect("piped")).lines().map_while(Result::ok) {
                let p = match serde_json::from_str::<Placement>(&line) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!("ray_workers: unreadable line {line:?}: {e}");
                        continue;
                    }
                };
                let (w, g, node) = (p.worker, p.generation, &p.node);
                let at = format!("{} (process {}, node {node:.8})", p.address, p.pid);
                if g <= 1 {
                    tracing::info!("env worker {w} on Ray at {at}");
                } else {
                    tracing::warn!("env worker {w} was replaced on Ray (placement {g}): now at {at}");
                }
                b.set(w, p.address);
            }
        }));
        let mut this = Self { child, stdin, book, stderr_tail, threads };
        let mut exited = None;
        let placed = this.book.wait_complete(template.startup_timeout, || {
            exited = exited.or_else(|| this.child.try_wait().ok().flatten());
            exited.is_some()
        });
        if !placed {
            let what = match exited {
                Some(s) => format!("the supervisor exited ({s})"),
                None => format!("not all of them were serving after {:?}", template.startup_timeout),
            };
            // Let the stderr thread read the supervisor's last words.
            std::thread::sleep(Duration::from_millis(200));
            bail!(
                "cannot place {workers} env workers on Ray ({}): {what}; its last messages:\n{}",
                config.address.as_deref().unwrap_or("a local instance"),
                tail_text(&this.stderr_tail)
            );
        }
        Ok(this)
    }

    /// The workers' current addresses.
    pub fn book(&self) -> &AddressBook {
        &self.book
    }
}

impl Drop for RayWorkers {
    /// Closes the supervisor's input (it then shuts its actors down), waits a few seconds,
    /// then kills it.
    fn drop(&mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
