//! A vectorised environment: W Python worker processes × M environments each, stepped in
//! parallel, with automatic restarts of workers that die or hang.
//!
//! Parallelism comes from the processes, not from threads here: a step writes its request to
//! every worker first ([`PythonWorker::send_step`]) and only then reads the replies, so the W
//! workers compute at the same time.
//!
//! Environment `i` (numbered worker by worker) is seeded `seed + i` at its first reset; later
//! resets continue its generator, except after a restart of its worker, where the episode's
//! seed is derived from `(seed + i, episode)` so that runs stay reproducible.
//!
//! When a worker fails (exits, hangs past its deadline, or raises in `step`), each of its
//! environments that was stepping reports [`Outcome::Lost`]: the episode ends there as a
//! truncation and no transition is produced, so nothing half-made reaches a replay buffer.
//! The worker is restarted and its environments need a reset. [`VecEnv::restarts`] counts the
//! restarts; a worker that fails [`VecEnvConfig::max_consecutive_failures`] times in a row
//! without a good step in between is an error (a bug, not bad luck).

use crate::{EnvError, EnvSpec, Info, PythonWorker, Step, WorkerConfig};

/// How to build a [`VecEnv`].
#[derive(Debug, Clone)]
pub struct VecEnvConfig {
    /// Configuration of every worker (`num_envs` and `seeds` are set by the vector env).
    pub worker: WorkerConfig,
    /// Number of worker processes W.
    pub workers: usize,
    /// Environments per worker M.
    pub envs_per_worker: usize,
    /// Environment `i` is seeded `seed + i`.
    pub seed: u64,
    /// Failures of one worker in a row (no good step in between) before giving up.
    pub max_consecutive_failures: u32,
    /// Workers listening on TCP (`HOST:PORT`, one per worker, [`WorkerConfig::address`])
    /// instead of child processes; empty: child processes.
    pub addresses: Vec<String>,
    /// Workers placed as Ray actors ([`crate::RayWorkers`]) and reached over TCP, instead of
    /// child processes or fixed `addresses`.
    pub ray: Option<crate::RayConfig>,
}

impl VecEnvConfig {
    /// `workers` × `envs_per_worker` environments of `env_id`, seeded from `seed`.
    pub fn new(env_id: &str, workers: usize, envs_per_worker: usize, seed: u64) -> Self {
        let worker = WorkerConfig::new(env_id);
        Self { worker, workers, envs_per_worker, seed, max_consecutive_failures: 3, addresses: Vec::new(), ray: None }
    }
}

/// The result of stepping one environment of a [`VecEnv`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The environment stepped.
    Step(Step),
    /// Its worker failed during the step: the episode is over (a truncation without a last
    /// transition) and the environment needs a reset. The string says why.
    Lost(String),
}

/// W worker processes × M environments of one id. See the module documentation.
pub struct VecEnv {
    workers: Vec<PythonWorker>,
    config: VecEnvConfig,
    spec: EnvSpec,
    /// Resets done per environment (the episode counter used for derived seeds).
    episodes: Vec<u64>,
    /// Whether the next reset of an environment must be seeded (first reset, or after a
    /// restart of its worker).
    reseed: Vec<bool>,
    failures: Vec<u32>,
    restarts: u64,
    /// The supervisor of Ray-placed workers (dropped after them).
    ray: Option<crate::RayWorkers>,
}

impl std::fmt::Debug for VecEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VecEnv")
            .field("env_id", &self.spec.name)
            .field("workers", &self.workers.len())
            .field("envs_per_worker", &self.config.envs_per_worker)
            .field("restarts", &self.restarts)
            .field("ray", &self.ray)
            .finish()
    }
}

impl VecEnv {
    /// Starts the W workers (in parallel: each start imports Python packages and builds M
    /// environments, seconds each).
    pub fn new(mut config: VecEnvConfig) -> anyhow::Result<Self> {
        if config.workers == 0 || config.envs_per_worker == 0 {
            return Err(EnvError::Invalid(format!(
                "a vector env needs at least one worker and one environment per worker (got {} × {})",
                config.workers, config.envs_per_worker
            ))
            .into());
        }
        if !config.addresses.is_empty() && config.addresses.len() != config.workers {
            return Err(EnvError::Invalid(format!(
                "{} worker addresses for {} workers: give one address per worker",
                config.addresses.len(),
                config.workers
            ))
            .into());
        }
        if config.ray.is_some() && !config.addresses.is_empty() {
            return Err(EnvError::Invalid("workers either on Ray or at fixed addresses, not both".into()).into());
        }
        let ray = match &config.ray {
            Some(r) => {
                // Workers this process places itself serve only it: a secret of this run's own.
                config.worker.secret.get_or_insert_with(crate::WorkerSecret::generate);
                Some(crate::RayWorkers::start(r, config.workers, &config.worker)?)
            }
            None => None,
        };
        let m = config.envs_per_worker;
        let workers: Vec<PythonWorker> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..config.workers)
                .map(|w| {
                    let mut wc = config.worker.clone();
                    wc.num_envs = m;
                    wc.seeds = Some((0..m).map(|j| config.seed + (w * m + j) as u64).collect());
                    wc.spin.get_or_insert(crate::worker::auto_spin(config.workers));
                    if let Some(a) = config.addresses.get(w) {
                        wc.address = Some(a.clone());
                    }
                    if let Some(r) = &ray {
                        wc.listed = Some((r.book().clone(), w));
                    }
                    s.spawn(move || PythonWorker::spawn(wc))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("worker start thread panicked"))
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        let spec = workers[0].spec().clone();
        let n = config.workers * m;
        Ok(Self {
            workers,
            spec,
            episodes: vec![0; n],
            reseed: vec![true; n],
            failures: vec![0; config.workers],
            restarts: 0,
            config,
            ray,
        })
    }

    /// The environments' description.
    pub fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    /// Number of environments W × M.
    pub fn num_envs(&self) -> usize {
        self.episodes.len()
    }

    /// An RGB frame of environment `i` (the workers must render: [`WorkerConfig::render`]).
    pub fn render(&mut self, i: usize) -> anyhow::Result<crate::Frame> {
        let (w, j) = self.locate(i)?;
        self.workers[w].render(j)
    }

    /// Worker restarts so far.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// The workers (to read pids, or to kill one in a test).
    pub fn workers_mut(&mut self) -> &mut [PythonWorker] {
        &mut self.workers
    }

    fn locate(&self, i: usize) -> anyhow::Result<(usize, usize)> {
        if i >= self.num_envs() {
            return Err(EnvError::Invalid(format!(
                "environment index {i} out of range for a vector env of {}",
                self.num_envs()
            ))
            .into());
        }
        Ok((i / self.config.envs_per_worker, i % self.config.envs_per_worker))
    }

    /// Resets the listed environments and returns their first observations and infos in
    /// request order. `seeds[k]` seeds environment `envs[k]`; `None` (or an empty `seeds`)
    /// follows the vector env's own seeding (see the module documentation). A worker that
    /// fails during the reset is restarted and asked again.
    pub fn reset(&mut self, envs: &[usize], seeds: &[Option<u64>]) -> anyhow::Result<Vec<(Vec<f32>, Info)>> {
        if !seeds.is_empty() && seeds.len() != envs.len() {
            return Err(EnvError::Invalid(format!("{} seeds for {} environments", seeds.len(), envs.len())).into());
        }
        let mut out = vec![(Vec::new(), Info::default()); envs.len()];
        for w in 0..self.workers.len() {
            let rows: Vec<usize> = (0..envs.len()).filter(|&r| envs[r] / self.config.envs_per_worker == w).collect();
            if rows.is_empty() {
                continue;
            }
            let mut attempt = 0;
            let reply = loop {
                let mut items = Vec::with_capacity(rows.len());
                for &r in &rows {
                    let (_, j) = self.locate(envs[r])?;
                    let i = envs[r];
                    let given = seeds.get(r).copied().flatten();
                    let seed = given.or_else(|| {
                        self.reseed[i].then(|| {
                            let base = self.config.seed + i as u64;
                            if self.episodes[i] == 0 {
                                base
                            } else {
                                derived_seed(base, self.episodes[i])
                            }
                        })
                    });
                    items.push((j, seed));
                }
                match self.workers[w].reset_envs(&items) {
                    Ok(reply) => break reply,
                    Err(err) => {
                        attempt += 1;
                        if attempt >= self.config.max_consecutive_failures {
                            return Err(
                                err.context(format!("resetting environments of worker {w} failed {attempt} times"))
                            );
                        }
                        tracing::warn!("env worker {w} failed during reset: {err:#}; restarting it");
                        self.restart(w)?;
                    }
                }
            };
            let d = self.spec.obs_dim;
            for (k, &r) in rows.iter().enumerate() {
                let i = envs[r];
                self.episodes[i] += 1;
                self.reseed[i] = false;
                out[r] = (reply.obs[k * d..(k + 1) * d].to_vec(), Info { success: reply.success[k] });
            }
        }
        Ok(out)
    }

    /// Steps the listed environments with `actions` (`[envs.len(), action_dim]`) in
    /// parallel across workers; outcomes come back in request order.
    pub fn step(&mut self, envs: &[usize], actions: &[f32]) -> anyhow::Result<Vec<Outcome>> {
        let a = self.spec.action_dim;
        if actions.len() != envs.len() * a {
            return Err(EnvError::ActionDim { expected: envs.len() * a, got: actions.len() }.into());
        }
        let w_count = self.workers.len();
        let mut rows_of: Vec<Vec<usize>> = vec![Vec::new(); w_count];
        for (r, &i) in envs.iter().enumerate() {
            let (w, _) = self.locate(i)?;
            rows_of[w].push(r);
        }
        // Send to every worker, then read every reply.
        let mut sent: Vec<Option<anyhow::Error>> = Vec::with_capacity(w_count);
        for (w, rows) in rows_of.iter().enumerate() {
            if rows.is_empty() {
                sent.push(None);
                continue;
            }
            let idx: Vec<usize> = rows.iter().map(|&r| envs[r] % self.config.envs_per_worker).collect();
            let act: Vec<f32> = rows.iter().flat_map(|&r| actions[r * a..(r + 1) * a].iter().copied()).collect();
            sent.push(self.workers[w].send_step(&idx, &act).err());
        }
        let mut out: Vec<Option<Outcome>> = vec![None; envs.len()];
        for (w, rows) in rows_of.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let result = match sent[w].take() {
                Some(err) => Err(err),
                None => self.workers[w].receive_step(),
            };
            match result {
                Ok(reply) => {
                    self.failures[w] = 0;
                    for (k, &r) in rows.iter().enumerate() {
                        out[r] = Some(Outcome::Step(reply.get(k)));
                    }
                }
                Err(err) if is_caller_error(&err) => return Err(err),
                Err(err) => {
                    let why = format!("{err:#}").lines().next().unwrap_or_default().to_string();
                    self.failures[w] += 1;
                    if self.failures[w] >= self.config.max_consecutive_failures {
                        return Err(err
                            .context(format!("env worker {w} failed {} times in a row; giving up", self.failures[w])));
                    }
                    tracing::warn!(
                        "env worker {w} failed during step ({why}); its episodes end as truncated and it restarts"
                    );
                    self.restart(w)?;
                    for &r in rows {
                        out[r] = Some(Outcome::Lost(why.clone()));
                    }
                }
            }
        }
        Ok(out.into_iter().map(|o| o.expect("every row answered")).collect())
    }

    /// Restarts worker `w` (also after a Python exception: its environments' state is
    /// unknown) and marks its environments for a seeded reset.
    fn restart(&mut self, w: usize) -> anyhow::Result<()> {
        self.workers[w].restart()?;
        self.restarts += 1;
        let m = self.config.envs_per_worker;
        self.reseed[w * m..(w + 1) * m].iter_mut().for_each(|r| *r = true);
        Ok(())
    }

    /// Closes every worker.
    pub fn close(&mut self) -> anyhow::Result<()> {
        let mut first = Ok(());
        for w in &mut self.workers {
            if let Err(e) = w.close() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// Errors that are the caller's mistake (bad index, bad action, stepping a finished episode):
/// no restart helps.
fn is_caller_error(err: &anyhow::Error) -> bool {
    err.downcast_ref::<EnvError>().is_some()
        || matches!(err.downcast_ref::<crate::WorkerError>(), Some(crate::WorkerError::User(_)))
}

/// Seed of episode `episode` of an environment whose base seed is `base` (SplitMix64).
fn derived_seed(base: u64, episode: u64) -> u64 {
    let mut z = base.wrapping_add(episode.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
