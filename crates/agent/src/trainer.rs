//! The offline-to-online training loop, flat (CleanRL/FQL style):
//! offline updates on the dataset → online: act (one chunk per query, executed open-loop) →
//! insert → (warm-up gate) → update × UTD → log / evaluate / checkpoint on named intervals.
//!
//! Steps are counted on one axis: `0..offline_steps` are gradient steps on the dataset, then
//! `offline_steps..offline_steps + online_steps` are environment steps. All randomness of step
//! `i` is derived from `(seed, i)` (libtorch's generator is re-seeded, the host generator is
//! created per step), so a resumed run repeats an uninterrupted one bit for bit on CPU.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mvp_envs::sparse_reward;
use mvp_logging::Logger;
use mvp_nn::checkpoint;
use mvp_replay::{ChunkBatch, Dataset, ReplayBuffer};
use mvp_rollout::{AsyncCollector, Collected, Collector, OwnedPolicy};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tch::{Device, Tensor};

use crate::agent::{Agent, TensorBatch};
use crate::config::{Remote, TrainConfig};
use crate::eval::{evaluate, evaluate_native, BackgroundEval, EvalResult};
use crate::progress::{step_seed, Progress, Summary};
use crate::run_dir;

/// Checkpoints of a run, in its directory.
pub const CHECKPOINTS: &str = "checkpoints";
/// The run-directory folder holding the policy of the best evaluation so far (an exported
/// policy: `mvp eval --policy RUN/best`).
pub const BEST: &str = "best";
const BUFFER_FILE: &str = "buffer.bin";

/// Loads the offline dataset the config names (see [`mvp_data::load`]), checked against the
/// environment ([`mvp_data::check_dataset`]), with `env.sparse` applied.
pub fn load_dataset(config: &TrainConfig, spec: &mvp_envs::EnvSpec) -> Result<Option<Dataset>> {
    let Some(data) = mvp_data::load(&config.data, &spec.name, config.run.seed)? else {
        return Ok(None);
    };
    let mut data = data.with_history(config.env.obs_history);
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
    /// The training environments (E ≥ 1); moved to `async_collector` while it runs.
    collector: Option<Collector>,
    /// The collector on its own thread (`env.async_collect`), from the first online step on.
    async_collector: Option<AsyncCollector>,
    num_envs: usize,
    spec: mvp_envs::EnvSpec,
    /// The evaluation environments; lent to a background evaluation while one runs.
    eval_pool: Option<Box<dyn mvp_rollout::EnvPool>>,
    background_eval: Option<BackgroundEval>,
    logger: Logger,
    progress: Progress,
    batch: ChunkBatch,
    device: Device,
    /// Set by a signal handler (`stop_handle`): finish the step, checkpoint, end the run.
    stop: Arc<AtomicBool>,
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
        let recorded = crate::engines::read_recorded(&run_dir, &config.agent);
        if recorded.is_none() {
            if let Some(c) = crate::engines::calibrate(spec.obs_dim, spec.action_dim, &config.agent, device)? {
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
        crate::engines::record(&run_dir, &agent)?;
        let mut buffer = ReplayBuffer::new(config.schedule.buffer_capacity, spec.obs_dim, spec.action_dim)?;
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
            device,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A flag that, once set (e.g. from a SIGINT handler), makes [`Trainer::run`] finish the
    /// current step, write a checkpoint and return with `interrupted`.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
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
        let background = s.eval_background && self.agent.select_precision().is_some();
        let critic = match self.config.agent.imitation {
            true => "; no critic update (imitation)".to_string(),
            false => String::new(),
        };
        tracing::info!(
            "engines ({} kernels on {}): {}{critic}; evaluations {}",
            self.agent.engines().isa,
            crate::engines::cpu_model(),
            self.agent.engines().describe(),
            if background { "in the background while training goes on" } else { "stop training while they run" }
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
        // Seconds of this process spent in each part of the loop.
        let mut clock = WallClock::default();
        let mut interrupted = false;
        if let Some(step) = self.progress.pending_eval.take() {
            // The checkpoint's background evaluation did not finish before the run stopped.
            self.start_evaluation(step, step == total, &mut clock)?;
        }
        let first = self.progress.step;
        while self.progress.step < end {
            let i = self.progress.step;
            tch::manual_seed((step_seed(self.config.run.seed, i) >> 1) as i64);
            let mut rng = StdRng::seed_from_u64(step_seed(self.config.run.seed, i));
            let mut metrics: Vec<(&'static str, Tensor)> = Vec::new();
            self.agent.set_num_samples(self.config.agent.num_samples_in(i < s.offline_steps));
            // Only the updates of logged steps compute the selection diagnostics.
            self.agent.set_diagnostics((i + 1).is_multiple_of(s.log_interval));
            if i < s.offline_steps {
                let t = Instant::now();
                metrics = self.update(&mut rng, false)?;
                clock.updates += t.elapsed().as_secs_f64();
            } else {
                let online = i - s.offline_steps;
                // E environments step together every E steps of the axis.
                let t = Instant::now();
                let episode = if !online.is_multiple_of(self.num_envs as u64) {
                    Vec::new()
                } else if self.config.env.async_collect {
                    self.collect_async(online)?
                } else {
                    self.collect(online, &mut rng)?
                };
                clock.env_steps += t.elapsed().as_secs_f64();
                if online >= s.warmup_steps {
                    let t = Instant::now();
                    for _ in 0..s.utd {
                        metrics = self.update(&mut rng, true)?;
                    }
                    clock.updates += t.elapsed().as_secs_f64();
                }
                // Episode statistics are logged when an episode ends, whatever the interval.
                if !episode.is_empty() {
                    self.logger.log(i + 1, &episode)?;
                }
            }
            self.progress.step = i + 1;
            let step = i + 1;
            if self.background_eval.as_ref().is_some_and(|b| b.is_finished()) {
                self.finish_background_eval(&mut clock)?;
            }
            if step.is_multiple_of(s.log_interval) && !metrics.is_empty() {
                let mut scalars: Vec<(&str, f64)> = metrics.iter().map(|(n, t)| (*n, t.double_value(&[]))).collect();
                let sps = (step - first) as f64 / started.elapsed().as_secs_f64().max(1e-9);
                scalars.push(("time/sps", sps));
                scalars.extend(clock.shares(started.elapsed().as_secs_f64()));
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
                self.start_evaluation(step, is_end, &mut clock)?;
                if let Some(r) = &self.progress.last_eval {
                    bar.set_message(format!("success {:.2}", r.success_rate));
                }
            }
            if (s.checkpoint_interval > 0 && step.is_multiple_of(s.checkpoint_interval)) || is_end || step == end {
                let t = Instant::now();
                self.save_checkpoint(step == end, &mut clock)?;
                clock.checkpoints += t.elapsed().as_secs_f64();
            }
            bar.set_position(step);
            if self.stop.load(Ordering::SeqCst) && step < end {
                self.checkpoint_on_interrupt(&mut clock)?;
                interrupted = true;
                break;
            }
        }
        self.finish_background_eval(&mut clock)?;
        if let Some(a) = self.async_collector.take() {
            self.collector = Some(a.stop()?);
        }
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            "wall clock {seconds:.0} s: {}",
            clock
                .shares(seconds)
                .iter()
                .map(|(k, v)| format!("{} {:.0}%", &k[5..k.len() - 6], 100.0 * v))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Closing joins TensorBoard's writer thread: only then is the event file complete.
        self.logger.close()?;
        Ok(Summary {
            interrupted,
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
        let got = self.collector.as_mut().expect("the collector is here in lockstep mode").step(&mut policy)?;
        self.store(got)
    }

    /// [`Trainer::collect`] with the collector on its own thread (`env.async_collect`): takes the
    /// transitions of its next step, after giving it the policy of the step after (the networks
    /// as they are now, on the native engine), so that it steps while this thread updates.
    fn collect_async(&mut self, online_step: u64) -> Result<Vec<(&'static str, f64)>> {
        let c = online_step / self.num_envs as u64;
        if self.async_collector.is_none() {
            let collector = self.collector.take().expect("the collector starts on its thread once");
            let (first, second) = (self.owned_policy(c)?, self.owned_policy(c + 1)?);
            self.async_collector = Some(AsyncCollector::start(collector, first, second)?);
        } else {
            let policy = self.owned_policy(c + 1)?;
            self.async_collector.as_mut().expect("started above").send(policy)?;
        }
        let got = self.async_collector.as_mut().expect("started above").next()?;
        self.store(got)
    }

    /// The acting policy of collector step `c` as a value for the collector's thread: the
    /// current networks on the native engine, or uniform chunks during a warm-up without data;
    /// its noise seeded from (run seed, c).
    fn owned_policy(&self, c: u64) -> Result<OwnedPolicy> {
        let seed = step_seed(self.config.run.seed ^ 0xA5A5_5A5A, c);
        let width = self.config.agent.horizon * self.spec.action_dim;
        let warmup = self.config.schedule.warmup_steps / self.num_envs as u64;
        if !self.has_dataset && c < warmup {
            let mut rng = StdRng::seed_from_u64(seed);
            return Ok(Box::new(move |_: &[f32], k: usize| {
                Ok((0..k * width).map(|_| rng.random_range(-1.0f32..=1.0)).collect())
            }));
        }
        let precision = self.agent.select_precision().context(
            "config key `env.async_collect` needs the native engine for acting (MVP or flow actors on a CPU, \
             agent.select_engine auto or native-*)",
        )?;
        let mut native = self.agent.native_policy(precision, seed)?;
        Ok(Box::new(move |obs: &[f32], k: usize| {
            let mut out = vec![0.0; k * width];
            native.act(obs, &mut out);
            Ok(out)
        }))
    }

    /// Puts a collector step's released transitions into the buffer; returns its episode metrics.
    fn store(&mut self, got: Collected) -> Result<Vec<(&'static str, f64)>> {
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
        self.finish_background_eval(&mut WallClock::default())?;
        let (episodes, execute, seed) = self.config.eval_protocol();
        let pool = self.eval_pool.as_mut().expect("no background evaluation holds the pool");
        // The engine of the TD target's selection, as in a background evaluation.
        match self.agent.select_precision() {
            Some(precision) => evaluate_native(&self.agent, pool.as_mut(), episodes, execute, seed, precision),
            None => evaluate(&self.agent, pool.as_mut(), episodes, execute, seed),
        }
    }

    /// Evaluates the networks of `step`: on a background thread where it can
    /// (`schedule.eval_background`, a native acting path) unless `foreground`, else here. A
    /// background evaluation still running is finished first, so results arrive in step order.
    fn start_evaluation(&mut self, step: u64, foreground: bool, clock: &mut WallClock) -> Result<()> {
        self.finish_background_eval(clock)?;
        if self.config.schedule.video_episodes > 0 {
            let t = Instant::now();
            // Videos are a view of the run, not part of it: a renderer that fails stops them only.
            if let Err(e) = self.record_videos(step) {
                tracing::warn!("step {step}: no videos ({e:#})");
            }
            clock.evaluation += t.elapsed().as_secs_f64();
        }
        let precision = self.agent.select_precision().filter(|_| self.config.schedule.eval_background && !foreground);
        if let Some(precision) = precision {
            let pool = self.eval_pool.take().expect("no background evaluation holds the pool");
            let protocol = self.config.eval_protocol();
            self.background_eval = Some(BackgroundEval::start(&self.agent, precision, pool, protocol, step)?);
            return Ok(());
        }
        let t = Instant::now();
        let r = self.evaluate()?;
        let seconds = t.elapsed().as_secs_f64();
        clock.evaluation += seconds;
        // The networks are exported only for a new best; actors without a native path
        // (diffusion) have no exportable weights, so no best policy.
        let weights = (r.success_rate > self.best_success()).then(|| self.agent.policy_weights().ok()).flatten();
        self.record_evaluation(step, r, seconds, "", weights)
    }

    /// Records `schedule.video_episodes` episodes of the current networks (the evaluation
    /// protocol, on the selection engine) as GIFs in `<run>/videos/` and frame strips in
    /// TensorBoard.
    fn record_videos(&mut self, step: u64) -> Result<()> {
        let s = &self.config.schedule;
        let (_, execute, seed) = self.config.eval_protocol();
        let protocol = (s.video_episodes, execute, seed);
        let (dir, prefix) = (self.run_dir.join("videos"), format!("step_{step:010}"));
        let env = (self.config.env.name.as_str(), self.config.env.obs_history);
        let (size, precision) = (s.video_size, self.agent.select_precision());
        let videos = crate::eval::record_agent(&self.agent, precision, env, size, protocol, &dir, &prefix)?;
        for (k, v) in videos.iter().enumerate() {
            let [_, h] = v.size;
            self.logger.log_image(&format!("video/episode_{k}"), step, v.strip.len() / (3 * h), h, &v.strip)?;
        }
        let ok = videos.iter().filter(|v| v.success).count();
        tracing::info!("step {step}: {} videos ({ok} successes) in {}", videos.len(), dir.display());
        Ok(())
    }

    /// Waits for the background evaluation, if one runs, and records its result.
    fn finish_background_eval(&mut self, clock: &mut WallClock) -> Result<()> {
        let Some(b) = self.background_eval.take() else {
            return Ok(());
        };
        let (step, waited) = (b.step(), Instant::now());
        let (pool, r, seconds, weights) = b.join()?;
        clock.evaluation += waited.elapsed().as_secs_f64();
        self.eval_pool = Some(pool);
        self.record_evaluation(step, r, seconds, ", in the background", Some(weights))
    }

    /// Logs an evaluation of the networks of `step` (`weights`, when they have a native form)
    /// and keeps them as the run's best policy when no earlier evaluation scored as high.
    fn record_evaluation(
        &mut self,
        step: u64,
        r: EvalResult,
        seconds: f64,
        how: &str,
        weights: Option<mvp_infer::PolicyWeights>,
    ) -> Result<()> {
        if let (Some(w), true) = (weights, r.success_rate > self.best_success()) {
            self.save_best(w, step, &r)?;
        }
        tracing::info!(
            "step {step}: evaluation success {:.3}, return {:.2} over {} episodes ({seconds:.1} s{how})",
            r.success_rate,
            r.mean_return,
            r.episodes
        );
        self.logger.log(
            step,
            &[
                ("eval/success", r.success_rate),
                ("eval/return", r.mean_return),
                ("eval/length", r.mean_length),
                ("eval/seconds", seconds),
            ],
        )?;
        self.progress.eval_history.push((step, r.success_rate));
        self.progress.last_eval = Some(r);
        self.logger.flush()?;
        self.plot_learning_curve();
        Ok(())
    }

    /// The highest evaluation success so far (−∞ before the first).
    fn best_success(&self) -> f64 {
        self.progress.eval_history.iter().map(|e| e.1).fold(f64::NEG_INFINITY, f64::max)
    }

    /// Writes the policy evaluated at `step` to `best/` (an exported policy folder, as `mvp
    /// export` writes), replacing the previous best whole.
    fn save_best(&self, weights: mvp_infer::PolicyWeights, step: u64, r: &EvalResult) -> Result<()> {
        let mut meta = crate::eval::policy_metadata(&self.config, &self.run_dir, step);
        meta.insert("eval_success".into(), r.success_rate.into());
        let file = mvp_infer::PolicyFile::new(weights, self.config.agent.horizon, meta).map_err(anyhow::Error::msg)?;
        let (best, tmp) = (self.run_dir.join(BEST), self.run_dir.join(format!("{BEST}.tmp")));
        let _ = std::fs::remove_dir_all(&tmp);
        file.save(&tmp)?;
        let _ = std::fs::remove_dir_all(&best);
        std::fs::rename(&tmp, &best).with_context(|| format!("moving {} to {}", tmp.display(), best.display()))?;
        let (success, dir) = (r.success_rate, best.display());
        tracing::info!("step {step}: best evaluation so far ({success:.3}); its policy: mvp eval --policy {dir}");
        Ok(())
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

    /// Writes a checkpoint of the current step. A background evaluation of an earlier step is
    /// finished first; one of this step is recorded as pending (a resumed run repeats it) unless
    /// `last` (this invocation's final checkpoint), where it is finished too.
    fn save_checkpoint(&mut self, last: bool, clock: &mut WallClock) -> Result<()> {
        if last || self.background_eval.as_ref().is_some_and(|b| b.step() < self.progress.step) {
            self.finish_background_eval(clock)?;
        }
        self.progress.pending_eval = self.background_eval.as_ref().map(|b| b.step());
        self.write_checkpoint()
    }

    /// The checkpoint of a stop by signal: without waiting for a background evaluation (its
    /// thread ends with the process). One of this step is recorded as pending and repeated by
    /// the resumed run; one of an earlier step is lost, and said so.
    fn checkpoint_on_interrupt(&mut self, clock: &mut WallClock) -> Result<()> {
        let t = Instant::now();
        self.progress.pending_eval = None;
        if let Some(b) = self.background_eval.take() {
            if b.step() == self.progress.step {
                self.progress.pending_eval = Some(b.step());
            } else {
                tracing::warn!("the evaluation of step {} was still running and is lost", b.step());
            }
        }
        self.write_checkpoint()?;
        clock.checkpoints += t.elapsed().as_secs_f64();
        tracing::info!("interrupted: checkpoint of step {} written", self.progress.step);
        Ok(())
    }

    fn write_checkpoint(&mut self) -> Result<()> {
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
        // The collector's thread is ahead of the learner: its episodes restart on resume.
        self.progress.collector = self.collector.as_ref().map(|c| c.state());
        let root = self.run_dir.join(CHECKPOINTS);
        let name = checkpoint::step_name(self.progress.step);
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
        Remote::Local => mvp_rollout::make_remote_pool(&e.name, e.num_envs, &e.worker_addresses, seed, e.obs_history)?,
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

/// Seconds spent in each part of the training loop (this process only).
#[derive(Debug, Default)]
struct WallClock {
    updates: f64,
    env_steps: f64,
    evaluation: f64,
    checkpoints: f64,
}

impl WallClock {
    /// Each part's share of `total` seconds, as `time/<part>_share` metrics.
    fn shares(&self, total: f64) -> [(&'static str, f64); 4] {
        let t = total.max(1e-9);
        [
            ("time/updates_share", self.updates / t),
            ("time/env_steps_share", self.env_steps / t),
            ("time/evaluation_share", self.evaluation / t),
            ("time/checkpoints_share", self.checkpoints / t),
        ]
    }
}
