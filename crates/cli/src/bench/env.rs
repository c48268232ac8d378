//! `mvp bench env`: environment steps per second through the Python bridge (a [`VecEnv`] of
//! W workers) against a plain Python loop stepping the same environment in W processes.
//!
//! Both sides use uniform random actions and reset at episode ends; neither counts process
//! start-up. The plain loop is `envs/mvp_envs/bench_plain.py`.
//!
//! Two bridge modes: `lockstep` steps every environment together (`VecEnv::step`, what the
//! trainer's collector does, so each step waits for the slowest worker), `async` gives each
//! worker its next step as soon as its reply arrives (the bridge alone, no barrier). `tcp` is
//! lockstep with the workers listening on local TCP ports (`python -m mvp_envs.worker
//! --listen`) instead of pipes: the transport's own cost, for workers on other machines. `ray`
//! is lockstep with the workers placed as actors on a local Ray instance (`env.remote = "ray"`),
//! reached over TCP the same way (Ray's start and the actors' placement are not timed).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use mvp_envs::{Outcome, VecEnv, VecEnvConfig};
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Options of `mvp bench env`.
#[derive(Debug, Args)]
pub struct EnvArgs {
    /// Environment id (any id the worker accepts).
    #[arg(long, default_value = "cube-double-play-singletask-task2-v0")]
    env: String,
    /// Worker counts to measure, e.g. 1,2.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Environments per worker process.
    #[arg(long, default_value_t = 1)]
    envs_per_worker: usize,
    /// Timed steps per environment.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Bridge modes to measure: lockstep (VecEnv::step over all envs) and/or async (each worker
    /// stepped as soon as it replies).
    #[arg(long, value_delimiter = ',', default_value = "lockstep,async")]
    modes: Vec<Mode>,
    /// Rounds per worker count: each round runs the plain loop and then every bridge mode, so
    /// that a drift of the machine's speed (shared VMs drift by 5–10% over minutes) is spread
    /// over both sides instead of landing on one; figures are means over the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Write results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// How the bridge is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// All environments step together.
    Lockstep,
    /// Each worker steps on its own.
    Async,
    /// Lockstep, with the workers on TCP connections (local ports) instead of pipes.
    Tcp,
    /// Lockstep, with the workers as Ray actors (a local Ray instance), over TCP.
    Ray,
}

#[derive(Debug, Serialize)]
struct EnvRow {
    mode: Mode,
    workers: usize,
    envs_per_worker: usize,
    /// Mean over the rounds.
    bridge_steps_per_s: f64,
    /// Mean over the rounds.
    plain_steps_per_s: f64,
    /// 1 − bridge / plain of the means.
    overhead: f64,
    /// 1 − bridge / plain of each round.
    overhead_per_round: Vec<f64>,
}

/// `w` workers listening on free local ports for clients holding `secret` (given in their
/// environment), and their addresses; killed when dropped.
struct Listening(Vec<std::process::Child>);

impl Listening {
    fn start(w: usize, secret: &mvp_envs::WorkerSecret) -> Result<(Self, Vec<String>)> {
        use std::io::BufRead;
        let (mut children, mut addresses) = (Vec::new(), Vec::new());
        for _ in 0..w {
            let mut cmd = mvp_envs::python_module_command("mvp_envs.worker")?;
            cmd.args(["--listen", "127.0.0.1:0"]).env(mvp_envs::SECRET_ENV, secret.expose());
            cmd.stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn()?;
            let mut stderr = std::io::BufReader::new(child.stderr.take().context("piped stderr")?);
            children.push(child);
            let mut first = String::new();
            stderr.read_line(&mut first)?;
            let address = first.trim().strip_prefix("listening on ").context("a listening worker's first line")?;
            addresses.push(address.to_string());
            // Keep draining its log, so that its writes never meet a closed pipe.
            std::thread::spawn(move || stderr.lines().map_while(Result::ok).for_each(drop));
        }
        Ok((Self(children), addresses))
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Steps a [`VecEnv`] of `w` workers (on pipes, on TCP connections with `Mode::Tcp`, Ray
/// actors with `Mode::Ray`) for `steps` steps per environment; returns steps/s.
fn bridge(args: &EnvArgs, w: usize, mode: Mode) -> Result<f64> {
    let mut config = VecEnvConfig::new(&args.env, w, args.envs_per_worker, 0);
    let _servers = if mode == Mode::Tcp {
        let secret = mvp_envs::WorkerSecret::generate();
        let (servers, addresses) = Listening::start(w, &secret)?;
        config.addresses = addresses;
        config.worker.secret = Some(secret);
        Some(servers)
    } else {
        None
    };
    if mode == Mode::Ray {
        // A share of this machine's cores each, so that every actor is placed.
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        config.ray = Some(mvp_envs::RayConfig { address: None, cpus_per_worker: (cores as f64 / w as f64).min(1.0) });
    }
    let mut venv = VecEnv::new(config)?;
    let n = venv.num_envs();
    let a = venv.spec().action_dim;
    let all: Vec<usize> = (0..n).collect();
    venv.reset(&all, &[])?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut actions = vec![0.0f32; n * a];
    let mut done = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..args.steps {
        actions.iter_mut().for_each(|x| *x = rng.random_range(-1.0..=1.0));
        done.clear();
        for (i, o) in venv.step(&all, &actions)?.into_iter().enumerate() {
            match o {
                Outcome::Step(s) if !s.done() => {}
                _ => done.push(i),
            }
        }
        if !done.is_empty() {
            venv.reset(&done, &[])?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    venv.close()?;
    Ok((args.steps * n) as f64 / secs)
}

/// Drives `w` workers independently for `steps × envs_per_worker` steps each: whichever replies
/// first gets its next request at once. Returns steps/s over all workers.
fn bridge_async(args: &EnvArgs, w: usize) -> Result<f64> {
    let m = args.envs_per_worker;
    let spin = mvp_envs::auto_spin(w);
    let mut workers = (0..w)
        .map(|i| {
            let mut c = mvp_envs::WorkerConfig::new(&args.env);
            c.num_envs = m;
            c.seeds = Some((0..m).map(|j| (i * m + j) as u64).collect());
            c.spin = Some(spin);
            mvp_envs::PythonWorker::spawn(c)
        })
        .collect::<Result<Vec<_>>>()?;
    let a = workers[0].spec().action_dim;
    let idx: Vec<usize> = (0..m).collect();
    for worker in &mut workers {
        worker.reset_all(None)?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut actions = vec![0.0f32; m * a];
    let mut left = vec![args.steps; w];
    let start = Instant::now();
    for worker in &mut workers {
        actions.iter_mut().for_each(|x| *x = rng.random_range(-1.0..=1.0));
        worker.send_step(&idx, &actions)?;
    }
    let mut in_flight = w;
    // Built once: the timed loop allocates nothing of its own per step.
    let mut fds: Vec<libc::pollfd> = workers
        .iter()
        .map(|wk| libc::pollfd { fd: wk.reply_fd().unwrap_or(-1), events: libc::POLLIN, revents: 0 })
        .collect();
    while in_flight > 0 {
        fds.iter_mut().for_each(|f| f.revents = 0);
        // Busy-wait first when a core is free (as the workers' own reader does), then block.
        let spin_until = Instant::now() + spin;
        loop {
            let timeout = if Instant::now() < spin_until { 0 } else { 60_000 };
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if rc < 0 {
                bail!("poll failed: {}", std::io::Error::last_os_error());
            }
            if rc > 0 {
                break;
            }
            if timeout > 0 {
                bail!("no env worker replied within 60 s");
            }
        }
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents == 0 || left[i] == 0 {
                continue;
            }
            let reply = workers[i].receive_step()?;
            left[i] -= 1;
            let done: Vec<(usize, Option<u64>)> =
                (0..m).filter(|&k| reply.terminated[k] || reply.truncated[k]).map(|k| (k, None)).collect();
            if !done.is_empty() {
                workers[i].reset_envs(&done)?;
            }
            if left[i] == 0 {
                in_flight -= 1;
            } else {
                actions.iter_mut().for_each(|x| *x = rng.random_range(-1.0..=1.0));
                workers[i].send_step(&idx, &actions)?;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for worker in &mut workers {
        worker.close()?;
    }
    Ok((args.steps * m * w) as f64 / secs)
}

/// Runs `w` plain Python loops at once, each stepping one environment for
/// `steps × envs_per_worker` steps; returns their summed steps/s.
fn plain(args: &EnvArgs, w: usize) -> Result<f64> {
    let steps = (args.steps * args.envs_per_worker).to_string();
    let children = (0..w)
        .map(|i| {
            let mut cmd = mvp_envs::python_module_command("mvp_envs.bench_plain")?;
            cmd.args([&args.env, &steps, &i.to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().context("starting the plain Python loop")
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = 0.0;
    for child in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "plain Python loop failed: {}",
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
            );
        }
        let line: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("reading the plain loop's JSON line")?;
        total += line["steps_per_s"].as_f64().context("steps_per_s missing")?;
    }
    Ok(total)
}

/// Runs `mvp bench env`.
pub fn run(args: EnvArgs) -> Result<()> {
    if args.rounds == 0 || args.steps == 0 || args.envs_per_worker == 0 || args.workers.contains(&0) {
        bail!("--rounds, --steps, --envs-per-worker and every --workers count must be at least 1");
    }
    let mut rows = Vec::new();
    for &w in &args.workers {
        let mut plains = Vec::with_capacity(args.rounds);
        let mut bridges = vec![Vec::with_capacity(args.rounds); args.modes.len()];
        for round in 1..=args.rounds {
            let plain = plain(&args, w)?;
            plains.push(plain);
            for (k, &mode) in args.modes.iter().enumerate() {
                let bridge = match mode {
                    Mode::Lockstep | Mode::Tcp | Mode::Ray => bridge(&args, w, mode)?,
                    Mode::Async => bridge_async(&args, w)?,
                };
                tracing::info!(
                    "{w} worker(s), round {round}/{}, {mode:?}: bridge {bridge:.0} steps/s, plain Python {plain:.0} \
                     steps/s ({:.1}%)",
                    args.rounds,
                    100.0 * (1.0 - bridge / plain)
                );
                bridges[k].push(bridge);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let plain = mean(&plains);
        for (&mode, b) in args.modes.iter().zip(&bridges) {
            let bridge = mean(b);
            rows.push(EnvRow {
                mode,
                workers: w,
                envs_per_worker: args.envs_per_worker,
                bridge_steps_per_s: bridge,
                plain_steps_per_s: plain,
                overhead: 1.0 - bridge / plain,
                overhead_per_round: b.iter().zip(&plains).map(|(b, p)| 1.0 - b / p).collect(),
            });
        }
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "Environment steps per second, `{}`, random actions, {} steps per environment, {} envs per worker, {cores} cores, \
         means of {} rounds\n",
        args.env, args.steps, args.envs_per_worker, args.rounds
    );
    println!(
        "| mode | workers | bridge steps/s | plain Python steps/s (same number of processes) | bridge overhead | \
         overhead per round | bridge scaling vs 1 worker |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let base = rows.iter().find(|b| b.mode == r.mode).map(|b| b.bridge_steps_per_s / b.workers as f64);
        let per_round: Vec<String> = r.overhead_per_round.iter().map(|o| format!("{:.1}", 100.0 * o)).collect();
        println!(
            "| {:?} | {} | {:.0} | {:.0} | {:.1}% | {}% | {:.2}× |",
            r.mode,
            r.workers,
            r.bridge_steps_per_s,
            r.plain_steps_per_s,
            100.0 * r.overhead,
            per_round.join(" / "),
            base.map(|b| r.bridge_steps_per_s / b).unwrap_or(f64::NAN)
        );
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}
