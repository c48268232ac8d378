//! A run's start: a new run directory or a resumed checkpoint, the environments, the engines,
//! the replay buffer with the dataset, and the start lines that say what will run.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mvp_agent::config::Remote;
use mvp_agent::{Agent, TrainConfig};
use mvp_envs::sparse_reward;
use mvp_logging::Logger;
use mvp_nn::checkpoint;
use mvp_replay::{ChunkBatch, Dataset, ReplayBuffer};
use mvp_rollout::Collector;
use tch::Device;

use super::{Trainer, CHECKPOINTS};
use crate::progress::{step_seed, Progress};
use crate::run_dir;

/// The replay buffer's file in a checkpoint (`schedule.save_buffer`).
pub(super) const BUFFER_FILE: &str = "buffer.bin";

/// Loads the offline dataset the config names (see [`mvp_data::load`]), checked against the
/// environment and for values a learner must not see ([`mvp_data::check_dataset`]). Its rewards are as the file holds them:
/// `env.sparse` applies where the replay buffer stores them.
pub fn load_dataset(config: &TrainConfig, spec: &mvp_envs::EnvSpec) -> Result<Option<Dataset>> {
    let Some(data) = mvp_data::load(&config.data, &spec.name, config.run.seed)? else {
        return Ok(None);
    };
    let mut data = data.with_history(config.env.obs_history);
    mvp_data::check_dataset(&mut data, spec, &config.data)?;
    Ok(Some(data))
}

impl Trainer {
    /// Starts a new run in a fresh run directory.
    pub fn new(config: TrainConfig) -> Result<Self> {
        let device = config.runtime.apply()?;
        config.engine.apply()?;
        let collector = make_collector(&config, None)?.0;
        let run_dir = run_dir::create(&config)?;
        Self::assemble(config, run_dir, collector, device)
    }

    /// Reopens `run_dir` and restores its latest checkpoint.
    pub fn resume(run_dir: &Path, overrides: &[String]) -> Result<Self> {
        Self::resume_from(run_dir, overrides, None)
    }

    /// [`Trainer::resume`] from the checkpoint of step `step` (`mvp train --resume-step`), e.g.
    /// the newest intact one when the latest is damaged; `None` = the latest.
    pub fn resume_from(run_dir: &Path, overrides: &[String], step: Option<u64>) -> Result<Self> {
        let config = TrainConfig::load(Some(&run_dir.join(run_dir::CONFIG_FILE)), overrides)
            .with_context(|| format!("{} is not a run directory", run_dir.display()))?;
        let device = config.runtime.apply()?;
        config.engine.apply()?;
        let root = run_dir.join(CHECKPOINTS);
        let loaded: checkpoint::Loaded<Progress> = match step {
            Some(step) => checkpoint::load(&root.join(checkpoint::step_name(step)))?,
            None => checkpoint::load_latest(&root)?,
        };
        // One environment continues its episode exactly where it can restore its state; see
        // `Collector::resume` for the rest.
        let (collector, cut) = make_collector(&config, Some(&loaded.meta))?;
        run_dir::truncate_metrics(run_dir, loaded.meta.step, loaded.meta.pending_eval)?;
        let mut t = Self::assemble(config, run_dir.to_path_buf(), collector, device)?;
        t.agent.load_state(&loaded.tensors, loaded.meta.optimizer_steps)?;
        let pending = loaded.dir.join(super::checkpoints::PENDING_POLICY);
        if pending.exists() {
            t.pending_snapshot = Some(mvp_infer::PolicyFile::load(&pending)?.weights);
        }
        let buffer_path = loaded.dir.join(BUFFER_FILE);
        if buffer_path.exists() {
            t.buffer.restore(&buffer_path)?;
        } else if loaded.meta.online_rows > 0 {
            tracing::warn!(
                "checkpoint has no replay buffer (schedule.save_buffer = false): the {} online transitions before it are lost",
                loaded.meta.online_rows
            );
        }
        t.progress = loaded.meta;
        if cut {
            // The environment cannot resume mid-episode: the stored part of the episode ends
            // as a truncation, and a new episode has started.
            t.buffer.end_episode();
            t.progress.episodes += 1;
        }
        // Acting and evaluation from a checkpoint of the offline phase use its candidate count.
        let offline = t.progress.step <= t.config.schedule.offline_steps;
        t.agent.set_num_samples(t.config.agent.num_samples_in(offline));
        tracing::info!("resumed {} at step {}", run_dir.display(), t.progress.step);
        Ok(t)
    }

    /// Records in the run's config.toml that the run continues from its current step with
    /// `overrides` (`mvp train --resume DIR --set ...`), so that a later plain `--resume`
    /// keeps them and the file describes how the run went on.
    pub fn record_overrides(&self, overrides: &[String]) -> Result<()> {
        if overrides.is_empty() {
            return Ok(());
        }
        let sets = overrides.iter().map(|o| format!("--set {o}")).collect::<Vec<_>>().join(" ");
        let note = format!("from step {} on with {sets}, git revision {}", self.progress.step, run_dir::git_revision());
        run_dir::write_config(&self.run_dir, &self.config, &note)
    }

    fn assemble(config: TrainConfig, run_dir: PathBuf, collector: Collector, device: Device) -> Result<Self> {
        let e = &config.env;
        let eval_pool =
            mvp_rollout::make_pool(&e.name, e.eval_envs, e.eval_workers, e.eval_seed_offset, e.obs_history)?;
        let spec = collector.pool().spec().clone();
        let num_envs = collector.num_envs();
        // The engines of `auto` steps: those the run's first start chose (a resume keeps them,
        // whatever the shared calibration cache says since), else calibrated now. Calibration
        // draws from libtorch's generator: before the seed.
        let recorded = mvp_agent::engines::read_recorded(&run_dir, &config.agent);
        if recorded.is_none() {
            if let Some(c) = mvp_agent::engines::calibrate(spec.obs_dim, spec.action_dim, &config.agent, device)? {
                tracing::info!("{}", c.summary());
            }
        }
        tch::manual_seed(step_seed(config.run.seed, u64::MAX) as i64);
        let agent = match recorded.map(|a| Agent::new(spec.obs_dim, spec.action_dim, &a, device)) {
            Some(Ok(agent)) => agent,
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!("the engines of the run's first start cannot run here ({e:#}); choosing anew");
                    tch::manual_seed(step_seed(config.run.seed, u64::MAX) as i64);
                }
                Agent::new(spec.obs_dim, spec.action_dim, &config.agent, device)?
            }
        };
        mvp_agent::engines::record(&run_dir, &agent)?;
        let mut buffer = ReplayBuffer::new(config.schedule.buffer_capacity, spec.obs_dim, spec.action_dim)?;
        if config.env.sparse {
            buffer.map_rewards(sparse_reward);
        }
        let dataset = load_dataset(&config, &spec)?;
        let has_dataset = dataset.is_some();
        if let Some(d) = &dataset {
            if d.len() > config.schedule.buffer_capacity {
                tracing::warn!(
                    "the dataset's {} transitions exceed schedule.buffer_capacity = {}: only its last {} are used, and \
                     online transitions replace the oldest of those",
                    d.len(),
                    config.schedule.buffer_capacity,
                    config.schedule.buffer_capacity
                );
            }
            buffer.extend_from_dataset(d)?;
        }
        if !has_dataset && config.schedule.offline_steps > 0 {
            bail!(
                "schedule.offline_steps = {} but there is no dataset (data.demo_episodes = 0 and no data.path)",
                config.schedule.offline_steps
            );
        }
        let logger = Logger::for_run_dir(&run_dir)?;
        let a = &config.agent;
        let batch = ChunkBatch::new(a.batch_size, a.horizon, spec.obs_dim, spec.action_dim);
        Ok(Self {
            config,
            run_dir,
            agent,
            buffer,
            has_dataset,
            collector: Some(collector),
            async_collector: None,
            num_envs,
            spec,
            eval_pool: Some(eval_pool),
            background_eval: None,
            logger,
            progress: Progress::default(),
            batch,
            pending_snapshot: None,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The start lines: the schedule, and each step's engine and why.
    pub(super) fn announce(&self) {
        let s = &self.config.schedule;
        let a = &self.config.agent;
        let candidates = match (a.num_samples_in(true), a.num_samples) {
            (off, on) if off != on && s.offline_steps > 0 => format!("N = {off} offline, {on} online"),
            (_, on) => format!("N = {on}"),
        };
        tracing::info!(
            "run {}: {} offline steps, {} online steps, evaluation every {} steps over {} episodes \
             (greedy generate-and-select, {candidates}, seeds from {})",
            self.run_dir.display(),
            s.offline_steps,
            s.online_steps,
            s.eval_interval,
            s.eval_episodes,
            self.config.env.eval_seed_offset
        );
        let background = s.eval_background && self.agent.select_precision().is_some();
        let critic = match self.config.agent.imitation {
            true => "; no critic update (imitation)".to_string(),
            false => String::new(),
        };
        tracing::info!(
            "engines ({} kernels on {}): {}{critic}; evaluations {}",
            self.agent.engines().isa,
            mvp_agent::engines::cpu_model(),
            self.agent.engines().describe(),
            if background { "in the background while training goes on" } else { "stop training while they run" }
        );
    }
}

/// The training environments of `config` (`env.num_envs` in up to `env.workers` processes)
/// and their collector: new, or continuing the episodes saved in `progress` (with whether a
/// stored episode was cut, see [`Collector::resume`]).
fn make_collector(config: &TrainConfig, progress: Option<&Progress>) -> Result<(Collector, bool)> {
    let (e, h, seed) = (&config.env, config.agent.horizon, config.run.seed);
    let pool = match e.remote {
        Remote::Ray => {
            if !e.worker_addresses.is_empty() {
                bail!("env.remote = \"ray\" places the workers itself; leave env.worker_addresses empty");
            }
            let address = (!e.ray_address.is_empty()).then(|| e.ray_address.clone());
            let ray = mvp_envs::RayConfig { address, cpus_per_worker: e.ray_cpus };
            mvp_rollout::make_ray_pool(&e.name, e.num_envs, e.workers, ray, seed, e.obs_history)?
        }
        Remote::Local if e.worker_addresses.is_empty() => {
            mvp_rollout::make_pool(&e.name, e.num_envs, e.workers, seed, e.obs_history)?
        }
        Remote::Local => {
            let file = (!e.worker_secret_file.is_empty()).then(|| Path::new(&e.worker_secret_file));
            let secret = mvp_envs::WorkerSecret::resolve(file)?;
            mvp_rollout::make_remote_pool(&e.name, e.num_envs, &e.worker_addresses, secret, seed, e.obs_history)?
        }
    };
    match progress {
        Some(Progress { collector: Some(state), .. }) => Collector::resume(pool, h, seed, state),
        // A checkpoint without the collector's state (written before it was saved): a
        // running online episode cannot continue, it ends as a truncation.
        Some(p) if p.online_rows > 0 => Ok((Collector::new(pool, h, seed, p.episodes + 1)?, true)),
        Some(p) => Ok((Collector::new(pool, h, seed, p.episodes)?, false)),
        None => Ok((Collector::new(pool, h, seed, 0)?, false)),
    }
}
