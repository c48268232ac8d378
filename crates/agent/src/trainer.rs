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
use mvp_envs::Env;
use mvp_logging::Logger;
use mvp_nn::checkpoint;
use mvp_replay::{ChunkBatch, Dataset, ReplayBuffer};
use mvp_rollout::Collector;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::agent::{Agent, TensorBatch};
use crate::config::TrainConfig;
use crate::eval::{evaluate, EvalResult};
use crate::run_dir;

const CHECKPOINTS: &str = "checkpoints";
const BUFFER_FILE: &str = "buffer.bin";

/// Counters and rollout state saved with each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Next step to run on the global axis.
    pub step: u64,
    /// Optimiser steps of actor and critic.
    pub optimizer_steps: [u64; 2],
    /// Online episodes started so far (environment seeds are `seed + episodes`).
    pub episodes: u64,
    /// Current observation of the online episode.
    pub obs: Vec<f32>,
    /// The chunk being executed, flattened `[h·A]`, and the index of its next action.
    pub chunk: Vec<f32>,
    /// Index of the next action of `chunk` to execute.
    pub next_action: usize,
    /// Return and length of the current online episode.
    pub episode_return: f64,
    /// Steps into the current online episode.
    pub episode_length: u64,
    /// The environment's own state for an exact mid-episode resume, when it can give one.
    pub env_state: Option<Vec<u8>>,
    /// The last evaluation.
    pub last_eval: Option<EvalResult>,
    /// Every evaluation so far as (step, success rate), for the learning curve.
    pub eval_history: Vec<(u64, f64)>,
    /// Times the training environment failed (a worker died, hung or raised) and was restarted.
    #[serde(default)]
    pub env_restarts: u64,
    /// Failures since the last good environment step (three in a row stop the run).
    #[serde(default)]
    pub env_failures_in_row: u32,
    /// Transitions stored from the online environments (the newest rows of the buffer).
    #[serde(default)]
    pub online_rows: u64,
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Steps completed.
    pub steps: u64,
    /// The final evaluation, if one ran.
    pub eval: Option<EvalResult>,
    /// Every evaluation of the run as (step, success rate), the learning curve.
    pub curve: Vec<(u64, f64)>,
    /// The step where the online phase starts.
    pub offline_steps: u64,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
}

/// Derives a 64-bit seed for step `i` of run `seed` (SplitMix64 finaliser).
pub fn step_seed(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Loads the offline dataset the config names (see [`mvp_data::load`]), checked against the
/// environment, with `env.sparse` applied.
pub fn load_dataset(config: &TrainConfig, spec: &mvp_envs::EnvSpec) -> Result<Option<Dataset>> {
    let Some(mut data) = mvp_data::load(&config.data, &spec.name, config.run.seed)? else {
        return Ok(None);
    };
    check_dataset(&data, spec)?;
    if config.env.sparse {
        data.rewards.iter_mut().for_each(|r| *r = sparse_reward(*r));
    }
    Ok(Some(data))
}

/// OGBench's `sparse` option (`env.sparse`): every non-zero reward becomes −1, so a step
/// earns 0 only when the whole task is solved. Applied to datasets and online rewards alike.
pub fn sparse_reward(r: f32) -> f32 {
    if r != 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// A dataset must match the environment's observation and action sizes; the error shows both.
pub fn check_dataset(data: &Dataset, spec: &mvp_envs::EnvSpec) -> Result<()> {
    if data.obs_dim != spec.obs_dim || data.act_dim != spec.action_dim {
        bail!(
            "dataset shapes do not match the environment: dataset observations [{}, {}] and actions [{}, {}], \
             environment {} observations [{}] and actions [{}]; was the dataset made for another environment?",
            data.len(),
            data.obs_dim,
            data.len(),
            data.act_dim,
            spec.name,
            spec.obs_dim,
            spec.action_dim
        );
    }
    Ok(())
}

/// Where online data comes from: one environment stepped in this loop (exact resume), or E
/// environments of a [`Collector`] (`env.num_envs > 1`).
enum Online {
    Single(Box<dyn Env>),
    Vector(Collector),
}

/// A training run: the agent, its data, its environment and its outputs.
pub struct Trainer {
    config: TrainConfig,
    run_dir: PathBuf,
    agent: Agent,
    buffer: ReplayBuffer,
    has_dataset: bool,
    /// The training environment(s).
    online: Online,
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
        let online = make_online(&config, 0)?;
        let run_dir = run_dir::create(&config)?;
        let mut t = Self::assemble(config, run_dir, online, device)?;
        t.start_episode()?;
        Ok(t)
    }

    /// Reopens `run_dir` and restores its latest checkpoint.
    pub fn resume(run_dir: &Path, overrides: &[String]) -> Result<Self> {
        let config = TrainConfig::load(Some(&run_dir.join(run_dir::CONFIG_FILE)), overrides)
            .with_context(|| format!("{} is not a run directory", run_dir.display()))?;
        let device = config.runtime.apply()?;
        let loaded: checkpoint::Loaded<Progress> = checkpoint::load_latest(&run_dir.join(CHECKPOINTS))?;
        // A vector collector restarts its episodes (with fresh seeds): the transitions it had
        // staged in unfinished episodes are not in the checkpoint.
        let online = make_online(&config, loaded.meta.episodes)?;
        let mut t = Self::assemble(config, run_dir.to_path_buf(), online, device)?;
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
        // Acting and evaluation from a checkpoint of the offline phase use its candidate count.
        let offline = t.progress.step <= t.config.schedule.offline_steps;
        t.agent.set_num_samples(t.config.agent.num_samples_in(offline));
        if t.progress.step > t.config.schedule.offline_steps && matches!(t.online, Online::Single(_)) {
            match t.progress.env_state.clone() {
                Some(state) => t.single().restore(&state)?,
                None => {
                    // The environment cannot resume mid-episode: the stored part of the
                    // episode ends as a truncation, and a new episode starts.
                    if t.progress.episode_length > 0 {
                        t.buffer.end_episode();
                        t.progress.episodes += 1;
                        t.progress.episode_return = 0.0;
                        t.progress.episode_length = 0;
                    }
                    t.start_episode()?;
                    t.progress.chunk.clear();
                }
            }
        } else if matches!(t.online, Online::Single(_)) {
            // A checkpoint of the offline phase: the environment has not stepped yet; reset it
            // as a new run does (same seed), so the online phase starts where it would have.
            t.start_episode()?;
        }
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

    fn assemble(config: TrainConfig, run_dir: PathBuf, online: Online, device: Device) -> Result<Self> {
        let e = &config.env;
        let eval_pool = mvp_rollout::make_pool(&e.name, e.eval_envs, e.eval_workers, e.eval_seed_offset)?;
        let spec = match &online {
            Online::Single(env) => env.spec().clone(),
            Online::Vector(c) => c.pool().spec().clone(),
        };
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
            online,
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
                let episode = match &self.online {
                    Online::Single(_) => self.env_step(online, &mut rng)?,
                    // E environments step together every E steps of the axis.
                    Online::Vector(c) if online.is_multiple_of(c.num_envs() as u64) => {
                        self.collect(online, &mut rng)?
                    }
                    Online::Vector(_) => Vec::new(),
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

    /// One online environment step; returns episode metrics when an episode ended.
    fn env_step(&mut self, online_step: u64, rng: &mut StdRng) -> Result<Vec<(&'static str, f64)>> {
        let a_dim = self.spec.action_dim;
        if self.progress.next_action * a_dim >= self.progress.chunk.len() {
            self.progress.chunk = if !self.has_dataset && online_step < self.config.schedule.warmup_steps {
                let n = self.config.agent.horizon * a_dim;
                (0..n).map(|_| rng.random_range(-1.0f32..=1.0)).collect()
            } else {
                let obs =
                    Tensor::from_slice(&self.progress.obs).view([1, -1]).to_device(self.device).to_kind(Kind::Float);
                Vec::<f32>::try_from(self.agent.act(&obs).view([-1]).to_device(Device::Cpu))?
            };
            self.progress.next_action = 0;
        }
        let at = self.progress.next_action * a_dim;
        self.progress.next_action += 1;
        let action = &self.progress.chunk[at..at + a_dim];
        let Online::Single(env) = &mut self.online else { unreachable!("env_step needs a single environment") };
        let step = match env.step(action) {
            Ok(step) => step,
            Err(err) => return self.lose_episode(err),
        };
        self.progress.env_failures_in_row = 0;
        let reward = if self.config.env.sparse { sparse_reward(step.reward) } else { step.reward };
        self.buffer.push(&self.progress.obs, action, reward, &step.obs, step.done(), step.mask())?;
        self.progress.online_rows += 1;
        self.progress.episode_return += reward as f64;
        self.progress.episode_length += 1;
        let mut out = Vec::new();
        if step.done() {
            out.push(("train/episode_return", self.progress.episode_return));
            out.push(("train/episode_length", self.progress.episode_length as f64));
            out.push(("train/episode_success", step.info.success as u8 as f64));
            self.progress.episodes += 1;
            self.progress.episode_return = 0.0;
            self.progress.episode_length = 0;
            self.progress.chunk.clear();
            self.start_episode()?;
        } else {
            self.progress.obs = step.obs;
        }
        Ok(out)
    }

    /// Resets the training environment for episode `progress.episodes` (seed `seed +
    /// episodes`), restarting a failed worker once if needed.
    fn start_episode(&mut self) -> Result<()> {
        if matches!(self.online, Online::Vector(_)) {
            return Ok(()); // the collector starts its own episodes
        }
        let seed = self.config.run.seed + self.progress.episodes;
        let (obs, _) = match self.single().reset(Some(seed)) {
            Ok(r) => r,
            Err(err) if self.single().recover()? => {
                tracing::warn!("environment reset failed ({err:#}); retrying after a restart");
                self.progress.env_restarts += 1;
                self.single().reset(Some(seed))?
            }
            Err(err) => return Err(err),
        };
        self.progress.obs = obs;
        Ok(())
    }

    /// A failed environment step: restart the environment (its worker), end the stored part
    /// of the episode as a truncation (so that no sampled window joins it to the next
    /// episode), count the restart and start a new episode. Three failures in a row, or an
    /// environment that cannot recover, stop the run with the error.
    fn lose_episode(&mut self, err: anyhow::Error) -> Result<Vec<(&'static str, f64)>> {
        self.progress.env_failures_in_row += 1;
        if self.progress.env_failures_in_row >= 3 || !self.single().recover()? {
            return Err(err.context(format!(
                "environment step failed at online episode {} ({} failures in a row)",
                self.progress.episodes, self.progress.env_failures_in_row
            )));
        }
        self.progress.env_restarts += 1;
        tracing::warn!(
            "environment failed ({}); restarted (restart {}), the episode ends as truncated",
            format!("{err:#}").lines().next().unwrap_or_default(),
            self.progress.env_restarts
        );
        if self.progress.episode_length > 0 {
            self.buffer.end_episode();
        }
        self.progress.episodes += 1;
        self.progress.episode_return = 0.0;
        self.progress.episode_length = 0;
        self.progress.chunk.clear();
        self.start_episode()?;
        Ok(vec![("env/restarts", self.progress.env_restarts as f64)])
    }

    /// The single training environment (`env.num_envs = 1`).
    fn single(&mut self) -> &mut dyn Env {
        match &mut self.online {
            Online::Single(env) => env.as_mut(),
            Online::Vector(_) => unreachable!("single-environment path used with env.num_envs > 1"),
        }
    }

    /// One step of the E environments of the collector (`env.num_envs > 1`): released
    /// episodes go into the buffer whole; returns episode metrics (means over the episodes
    /// that ended).
    fn collect(&mut self, online_step: u64, rng: &mut StdRng) -> Result<Vec<(&'static str, f64)>> {
        let Online::Vector(collector) = &mut self.online else { unreachable!("collect needs a collector") };
        let random = !self.has_dataset && online_step < self.config.schedule.warmup_steps;
        let (agent, device) = (&self.agent, self.device);
        let width = self.config.agent.horizon * self.spec.action_dim;
        let mut policy = |obs: &[f32], k: usize| -> Result<Vec<f32>> {
            if random {
                return Ok((0..k * width).map(|_| rng.random_range(-1.0f32..=1.0)).collect());
            }
            let o = Tensor::from_slice(obs).view([k as i64, -1]).to_device(device).to_kind(Kind::Float);
            Ok(Vec::<f32>::try_from(agent.act(&o).view([-1]).to_device(Device::Cpu))?)
        };
        let got = collector.step(&mut policy)?;
        let sparse = self.config.env.sparse;
        for t in &got.ready {
            let reward = if sparse { sparse_reward(t.reward) } else { t.reward };
            self.buffer.push(&t.obs, &t.action, reward, &t.next_obs, t.terminal, t.mask)?;
        }
        self.progress.online_rows += got.ready.len() as u64;
        let mut out = Vec::new();
        if got.lost > 0 {
            self.progress.env_restarts += got.lost as u64;
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
        let seed = self.eval_seed();
        let (episodes, execute) = (self.config.schedule.eval_episodes, self.eval_execute());
        evaluate(&self.agent, self.eval_pool.as_mut(), episodes, execute, seed)
    }

    /// Actions of each chunk executed in evaluation before the next query.
    fn eval_execute(&self) -> usize {
        match self.config.schedule.eval_execute_steps {
            0 => self.config.agent.horizon,
            k => k,
        }
    }

    /// Seed of the first evaluation episode (a stream apart from training's).
    fn eval_seed(&self) -> u64 {
        self.config.env.eval_seed_offset + self.config.run.seed * 10_000
    }

    /// The evaluation protocol with the native acting engine at `precision` (see
    /// [`crate::eval::evaluate_native`]); same episodes and seeds as [`Trainer::evaluate`].
    pub fn evaluate_native(&mut self, precision: mvp_infer::Precision) -> Result<EvalResult> {
        let seed = self.eval_seed();
        let (episodes, execute) = (self.config.schedule.eval_episodes, self.eval_execute());
        crate::eval::evaluate_native(&self.agent, self.eval_pool.as_mut(), episodes, execute, seed, precision)
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
        self.progress.env_state = match &self.online {
            Online::Single(env) => env.snapshot(),
            Online::Vector(_) => None,
        };
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

/// The training environment(s) of `config`: one (the exact-resume path), or a collector over
/// `env.num_envs` environments in up to `env.workers` processes, seeded from `run.seed +
/// episodes_before`.
fn make_online(config: &TrainConfig, episodes_before: u64) -> Result<Online> {
    let e = &config.env;
    if e.num_envs <= 1 {
        return Ok(Online::Single(mvp_envs::make(&e.name)?));
    }
    let seed = config.run.seed + episodes_before;
    let pool = mvp_rollout::make_pool(&e.name, e.num_envs, e.workers, seed)?;
    Ok(Online::Vector(Collector::new(pool, config.agent.horizon, seed)?))
}
