//! The offline-to-online training loop, flat (CleanRL/FQL style):
//! offline updates on the dataset → online: act (one chunk per query, executed open-loop) →
//! insert → (warm-up gate) → update × UTD → log / evaluate / checkpoint on named intervals.
//!
//! Steps are counted on one axis: `0..offline_steps` are gradient steps on the dataset, then
//! `offline_steps..offline_steps + online_steps` are environment steps. All randomness of step
//! `i` is derived from `(seed, i)` (libtorch's generator is re-seeded, the host generator is
//! created per step), so a resumed run repeats an uninterrupted one bit for bit on CPU.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mvp_envs::sparse_reward;
use mvp_logging::Logger;
use mvp_nn::checkpoint;
use mvp_replay::{ChunkBatch, Dataset, ReplayBuffer};
use mvp_rollout::Collector;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tch::{Device, Tensor};

use crate::agent::{Agent, TensorBatch};
use crate::config::TrainConfig;
use crate::eval::{evaluate, EvalResult};
use crate::progress::{step_seed, Progress, Summary};
use crate::run_dir;

/// Checkpoints of a run, in its directory.
pub const CHECKPOINTS: &str = "checkpoints";
const BUFFER_FILE: &str = "buffer.bin";

/// Loads the offline dataset the config names (see [`mvp_data::load`]), checked against the
/// environment ([`mvp_data::check_dataset`]), with `env.sparse` applied.
pub fn load_dataset(config: &TrainConfig, spec: &mvp_envs::EnvSpec) -> Result<Option<Dataset>> {
    let Some(mut data) = mvp_data::load(&config.data, &spec.name, config.run.seed)? else {
        return Ok(None);
    };
    mvp_data::check_dataset(&data, spec)?;
    if config.env.sparse {
        data.rewards.iter_mut().for_each(|r| *r = sparse_reward(*r));
    }
    Ok(Some(data))
}

/// A training run: the agent, its data, its environment and its outputs.
pub struct Trainer {
    config: TrainConfig,
    run_dir: PathBuf,
    agent: Agent,
    buffer: ReplayBuffer,
    has_dataset: bool,
    /// The training environments (E ≥ 1).
    collector: Collector,
    spec: mvp_envs::EnvSpec,
    eval_pool: Box<dyn mvp_rollout::EnvPool>,
    logger: Logger,
    progress: Progress,
    batch: ChunkBatch,
    device: Device,
}

impl Trainer {
    /// Starts a new run in a fresh run directory.
    pub fn new(config: TrainConfig) -> Result<Self> {
        let device = config.runtime.apply()?;
        let collector = make_collector(&config, None)?.0;
        let run_dir = run_dir::create(&config)?;
        Self::assemble(config, run_dir, collector, device)
    }

    /// Reopens `run_dir` and restores its latest checkpoint.
    pub fn resume(run_dir: &Path, overrides: &[String]) -> Result<Self> {
        let config = TrainConfig::load(Some(&run_dir.join(run_dir::CONFIG_FILE)), overrides)
            .with_context(|| format!("{} is not a run directory", run_dir.display()))?;
        let device = config.runtime.apply()?;
        let loaded: checkpoint::Loaded<Progress> = checkpoint::load_latest(&run_dir.join(CHECKPOINTS))?;
        // One environment continues its episode exactly where it can restore its state; see
        // `Collector::resume` for the rest.
        let (collector, cut) = make_collector(&config, Some(&loaded.meta))?;
        let mut t = Self::assemble(config, run_dir.to_path_buf(), collector, device)?;
        t.agent.load_state(&loaded.tensors, loaded.meta.optimizer_steps)?;
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
        let eval_pool = mvp_rollout::make_pool(&e.name, e.eval_envs, e.eval_workers, e.eval_seed_offset)?;
        let spec = collector.pool().spec().clone();
        tch::manual_seed(step_seed(config.run.seed, u64::MAX) as i64);
        let agent = Agent::new(spec.obs_dim, spec.action_dim, &config.agent, device);
        let mut buffer = ReplayBuffer::new(config.schedule.buffer_capacity, spec.obs_dim, spec.action_dim)?;
        let dataset = load_dataset(&config, &spec)?;
        let has_dataset = dataset.is_some();
        if let Some(d) = &dataset {
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
            collector,
            spec,
            eval_pool,
            logger,
            progress: Progress::default(),
            batch,
            device,
        })
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The replay buffer.
    pub fn buffer(&self) -> &ReplayBuffer {
        &self.buffer
    }

    /// Runs the schedule to its end (or to `schedule.stop_after`), then checkpoints.
    pub fn run(&mut self) -> Result<Summary> {
        let s = self.config.schedule.clone();
        let total = s.offline_steps + s.online_steps;
        let end = if s.stop_after > 0 { s.stop_after.min(total) } else { total };
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
        let bar = ProgressBar::new(total).with_position(self.progress.step);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta} {msg}",
            )
            .expect("static template"),
        );
        let started = Instant::now();
        let mut last_status = started;
        let first = self.progress.step;
        while self.progress.step < end {
            let i = self.progress.step;
            tch::manual_seed((step_seed(self.config.run.seed, i) >> 1) as i64);
            let mut rng = StdRng::seed_from_u64(step_seed(self.config.run.seed, i));
            let mut metrics: Vec<(&'static str, Tensor)> = Vec::new();
            self.agent.set_num_samples(self.config.agent.num_samples_in(i < s.offline_steps));
            if i < s.offline_steps {
                metrics = self.update(&mut rng, false)?;
            } else {
                let online = i - s.offline_steps;
                // E environments step together every E steps of the axis.
                let episode = if online.is_multiple_of(self.collector.num_envs() as u64) {
                    self.collect(online, &mut rng)?
                } else {
                    Vec::new()
                };
                if online >= s.warmup_steps {
                    for _ in 0..s.utd {
                        metrics = self.update(&mut rng, true)?;
                    }
                }
                // Episode statistics are logged when an episode ends, whatever the interval.
                if !episode.is_empty() {
                    self.logger.log(i + 1, &episode)?;
                }
            }
            self.progress.step = i + 1;
            let step = i + 1;
            if step.is_multiple_of(s.log_interval) && !metrics.is_empty() {
                let mut scalars: Vec<(&str, f64)> = metrics.iter().map(|(n, t)| (*n, t.double_value(&[]))).collect();
                let sps = (step - first) as f64 / started.elapsed().as_secs_f64().max(1e-9);
                scalars.push(("time/sps", sps));
                scalars.push(("buffer/size", self.buffer.len() as f64));
                self.logger.log(step, &scalars)?;
                // Metrics files are readable while the run goes on.
                self.logger.flush()?;
                if bar.is_hidden() && last_status.elapsed().as_secs() >= 30 {
                    // No terminal for the progress bar (a log file, CI): a status line instead.
                    last_status = Instant::now();
                    let eta = (end - step) as f64 / sps.max(1e-9);
                    tracing::info!("step {step}/{end}: {sps:.1} steps/s, about {:.0} min left", eta / 60.0);
                }
            }
            let is_end = step == total;
            if (s.eval_interval > 0 && step.is_multiple_of(s.eval_interval)) || is_end {
                let r = self.evaluate()?;
                bar.set_message(format!("success {:.2}", r.success_rate));
                tracing::info!(
                    "step {step}: evaluation success {:.3}, return {:.2} over {} episodes",
                    r.success_rate,
                    r.mean_return,
                    r.episodes
                );
                self.logger.log(
                    step,
                    &[("eval/success", r.success_rate), ("eval/return", r.mean_return), ("eval/length", r.mean_length)],
                )?;
                self.progress.eval_history.push((step, r.success_rate));
                self.progress.last_eval = Some(r);
                self.logger.flush()?;
                self.plot_learning_curve();
            }
            if (s.checkpoint_interval > 0 && step.is_multiple_of(s.checkpoint_interval)) || is_end || step == end {
                self.save_checkpoint()?;
            }
            bar.set_position(step);
        }
        bar.finish_and_clear();
        // Closing joins TensorBoard's writer thread: only then is the event file complete.
        self.logger.close()?;
        Ok(Summary {
            run_dir: self.run_dir.clone(),
            steps: self.progress.step,
            eval: self.progress.last_eval.clone(),
            curve: self.progress.eval_history.clone(),
            offline_steps: s.offline_steps,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// One update on a batch from the buffer. Online, with `schedule.online_fraction ≥ 0`, that
    /// share of the batch comes from the online rows (the newest `progress.online_rows`).
    fn update(&mut self, rng: &mut StdRng, online: bool) -> Result<Vec<(&'static str, Tensor)>> {
        let a = &self.config.agent;
        let (gamma, share) = (a.critic.gamma as f32, self.config.schedule.online_fraction);
        if online && share >= 0.0 {
            let len = self.buffer.len();
            let split = len - (self.progress.online_rows as usize).min(len);
            self.buffer.sample_chunks_split(rng, a.batch_size, a.horizon, gamma, split, share, &mut self.batch)?;
        } else {
            self.buffer.sample_chunks(rng, a.batch_size, a.horizon, gamma, &mut self.batch)?;
        }
        let batch = TensorBatch::from_chunks(&self.batch, self.device);
        self.agent.update(&batch)
    }

    /// One step of the E environments of the collector: released transitions go into the
    /// buffer (with E > 1 whole episodes); returns episode metrics (means over the episodes
    /// that ended). Before updates start without a dataset, chunks are uniform at random.
    fn collect(&mut self, online_step: u64, rng: &mut StdRng) -> Result<Vec<(&'static str, f64)>> {
        let random = !self.has_dataset && online_step < self.config.schedule.warmup_steps;
        let agent = &self.agent;
        let width = self.config.agent.horizon * self.spec.action_dim;
        let mut policy = |obs: &[f32], k: usize| -> Result<Vec<f32>> {
            if random {
                return Ok((0..k * width).map(|_| rng.random_range(-1.0f32..=1.0)).collect());
            }
            agent.act_rows(obs, k)
        };
        let got = self.collector.step(&mut policy)?;
        if got.cut_stored_episode {
            self.buffer.end_episode();
        }
        let sparse = self.config.env.sparse;
        for t in &got.ready {
            let reward = if sparse { sparse_reward(t.reward) } else { t.reward };
            self.buffer.push(&t.obs, &t.action, reward, &t.next_obs, t.terminal, t.mask)?;
        }
        self.progress.online_rows += got.ready.len() as u64;
        let mut out = Vec::new();
        if got.lost > 0 {
            self.progress.env_restarts += got.lost as u64;
            self.progress.episodes += got.lost as u64;
            out.push(("env/restarts", self.progress.env_restarts as f64));
        }
        if !got.finished.is_empty() {
            let n = got.finished.len() as f64;
            out.push(("train/episode_return", got.finished.iter().map(|e| e.ret).sum::<f64>() / n));
            out.push(("train/episode_length", got.finished.iter().map(|e| e.length as f64).sum::<f64>() / n));
            out.push(("train/episode_success", got.finished.iter().filter(|e| e.success).count() as f64 / n));
            self.progress.episodes += got.finished.len() as u64;
        }
        Ok(out)
    }

    /// Runs the evaluation protocol on the evaluation environment.
    pub fn evaluate(&mut self) -> Result<EvalResult> {
        let (episodes, execute, seed) = self.config.eval_protocol();
        evaluate(&self.agent, self.eval_pool.as_mut(), episodes, execute, seed)
    }

    /// Writes `learning_curve.png` (evaluation success against steps); a plotting failure is
    /// reported but does not stop training.
    fn plot_learning_curve(&self) {
        let points: Vec<(f64, f64)> = self.progress.eval_history.iter().map(|&(s, r)| (s as f64, r)).collect();
        let label = self.config.agent.actor.label();
        let title = format!(
            "{} on {} (offline until step {})",
            label, self.config.env.name, self.config.schedule.offline_steps
        );
        let path = self.run_dir.join("learning_curve.png");
        if let Err(e) =
            mvp_logging::plot_curves(&path, &title, &[(label.as_str(), points)], "step", "evaluation success rate")
        {
            tracing::warn!("could not plot {}: {e:#}", path.display());
        }
    }

    fn save_checkpoint(&mut self) -> Result<()> {
        let (tensors, steps) = self.agent.state();
        // A diverged update can leave non-finite parameters before any loss shows it: never
        // let such a state replace the last good checkpoint.
        if let Some((name, _)) = tensors.iter().find(|(_, t)| t.isfinite().all().int64_value(&[]) == 0) {
            bail!(
                "non-finite values in `{name}` at step {}; stopping, the last good checkpoint is kept",
                self.progress.step
            );
        }
        self.progress.optimizer_steps = steps;
        self.progress.collector = Some(self.collector.state());
        let root = self.run_dir.join(CHECKPOINTS);
        let name = format!("step_{:010}", self.progress.step);
        let buffer = self.config.schedule.save_buffer.then_some(&self.buffer);
        checkpoint::save_with(&root, &name, &tensors, &self.progress, |dir| match buffer {
            Some(b) => Ok(b.save(dir.join(BUFFER_FILE))?),
            None => Ok(()),
        })?;
        checkpoint::prune(&root, self.config.schedule.keep_checkpoints)?;
        Ok(())
    }
}

/// The training environments of `config` (`env.num_envs` in up to `env.workers` processes)
/// and their collector: new, or continuing the episodes saved in `progress` (with whether a
/// stored episode was cut, see [`Collector::resume`]).
fn make_collector(config: &TrainConfig, progress: Option<&Progress>) -> Result<(Collector, bool)> {
    let (e, h, seed) = (&config.env, config.agent.horizon, config.run.seed);
    let pool = mvp_rollout::make_pool(&e.name, e.num_envs, e.workers, seed)?;
    match progress {
        Some(Progress { collector: Some(state), .. }) => Collector::resume(pool, h, seed, state),
        // A checkpoint without the collector's state (written before it was saved): a
        // running online episode cannot continue, it ends as a truncation.
        Some(p) if p.online_rows > 0 => Ok((Collector::new(pool, h, seed, p.episodes + 1)?, true)),
        Some(p) => Ok((Collector::new(pool, h, seed, p.episodes)?, false)),
        None => Ok((Collector::new(pool, h, seed, 0)?, false)),
    }
}
