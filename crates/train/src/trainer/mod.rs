//! The offline-to-online training loop, flat (CleanRL/FQL style):
//! offline updates on the dataset → online: act (one chunk per query, executed open-loop) →
//! insert → (warm-up gate) → update × UTD → log / evaluate / checkpoint on named intervals.
//!
//! Steps are counted on one axis: `0..offline_steps` are gradient steps on the dataset, then
//! `offline_steps..offline_steps + online_steps` are environment steps. All randomness of step
//! `i` is derived from `(seed, i)` (libtorch's generator is re-seeded, the host generator is
//! created per step), so a resumed run repeats an uninterrupted one bit for bit on CPU.
//!
//! The loop is [`Trainer::run`]; each part around it has its own module: [`setup`] (new runs,
//! resume, the data and the environments), `collect` (acting and storing transitions),
//! `evaluation` (foreground and background evaluations, the best policy, videos, the plot),
//! `checkpoints` (periodic, final and on interrupt) and `clock` (wall-clock shares, the
//! progress bar and status line).

mod checkpoints;
mod clock;
mod collect;
mod evaluation;
pub mod setup;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use mvp_agent::agent::Metrics;
use mvp_agent::{Agent, TrainConfig};
use mvp_logging::Logger;
use mvp_replay::{ChunkBatch, ReplayBuffer};
use mvp_rollout::{AsyncCollector, Collector};
use rand::{rngs::StdRng, SeedableRng};

use crate::eval::BackgroundEval;
use crate::progress::{step_seed, Progress, Summary};
use clock::{Status, WallClock};
pub use setup::load_dataset;

/// Checkpoints of a run, in its directory.
pub const CHECKPOINTS: &str = "checkpoints";
/// The run-directory folder holding the policy of the best evaluation so far (an exported
/// policy: `mvp eval --policy RUN/best`).
pub const BEST: &str = "best";

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
    /// The networks of the pending evaluation where they are not the current ones (an
    /// evaluation an interrupt cut short, to be repeated).
    pending_snapshot: Option<mvp_infer::PolicyWeights>,
    /// Set by a signal handler (`stop_handle`): finish the step, checkpoint, end the run.
    stop: Arc<AtomicBool>,
}

impl Trainer {
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
        self.announce();
        let mut status = Status::new(total, self.progress.step);
        if let Some(step) = self.progress.pending_eval.take() {
            // The checkpoint's background evaluation did not finish before the run stopped.
            self.repeat_evaluation(step, step == total, &mut status.clock)?;
        }
        while self.progress.step < end {
            let i = self.progress.step;
            if i == s.offline_steps {
                status.new_phase(i);
            }
            tch::manual_seed((step_seed(self.config.run.seed, i) >> 1) as i64);
            let mut rng = StdRng::seed_from_u64(step_seed(self.config.run.seed, i));
            self.agent.set_num_samples(self.config.agent.num_samples_in(i < s.offline_steps));
            // Only the updates of logged steps compute the selection diagnostics.
            self.agent.set_diagnostics((i + 1).is_multiple_of(s.log_interval));
            let metrics = match i.checked_sub(s.offline_steps) {
                None => status.clock.updates(|| self.update(&mut rng, false))?,
                Some(online) => self.online_step(i, online, &mut rng, &mut status.clock)?,
            };
            self.progress.step = i + 1;
            let step = i + 1;
            if self.background_eval.as_ref().is_some_and(|b| b.is_finished()) {
                self.finish_background_eval(&mut status.clock)?;
            }
            if step.is_multiple_of(s.log_interval) && !metrics.is_empty() {
                self.log_step(step, end, &metrics, &mut status)?;
            }
            if (s.eval_interval > 0 && step.is_multiple_of(s.eval_interval)) || step == total {
                self.start_evaluation(step, step == total, &mut status.clock)?;
                status.show_success(self.progress.last_eval.as_ref());
            }
            if (s.checkpoint_interval > 0 && step.is_multiple_of(s.checkpoint_interval)) || step == total || step == end
            {
                self.save_checkpoint(step == end, &mut status.clock)?;
            }
            status.bar.set_position(step);
            if self.stop.load(Ordering::SeqCst) && step < end {
                self.checkpoint_on_interrupt(&mut status.clock)?;
                return self.finish(status, true);
            }
        }
        self.finish(status, false)
    }

    /// One step of the online phase: the E environments step together every E steps of the
    /// axis; once past the warm-up, `schedule.utd` updates. Episode statistics are logged when
    /// an episode ends, whatever the interval.
    fn online_step(&mut self, i: u64, online: u64, rng: &mut StdRng, clock: &mut WallClock) -> Result<Metrics> {
        let episode = clock.env_steps(|| match () {
            _ if !online.is_multiple_of(self.num_envs as u64) => Ok(Vec::new()),
            _ if self.config.env.async_collect => self.collect_async(online),
            _ => self.collect(online, rng),
        })?;
        let mut metrics = Vec::new();
        if online >= self.config.schedule.warmup_steps {
            metrics = clock.updates(|| {
                let mut m = Vec::new();
                for _ in 0..self.config.schedule.utd {
                    m = self.update(rng, true)?;
                }
                Ok(m)
            })?;
        }
        if !episode.is_empty() {
            self.logger.log(i + 1, &episode)?;
        }
        Ok(metrics)
    }

    /// One update on a batch from the buffer. Online, with `schedule.online_fraction ≥ 0`, that
    /// share of the batch comes from the online rows (the newest `progress.online_rows`).
    fn update(&mut self, rng: &mut StdRng, online: bool) -> Result<Metrics> {
        let a = &self.config.agent;
        let (gamma, share) = (a.critic.gamma as f32, self.config.schedule.online_fraction);
        if online && share >= 0.0 {
            let len = self.buffer.len();
            let split = len - (self.progress.online_rows as usize).min(len);
            self.buffer.sample_chunks_split(rng, a.batch_size, a.horizon, gamma, split, share, &mut self.batch)?;
        } else {
            self.buffer.sample_chunks(rng, a.batch_size, a.horizon, gamma, &mut self.batch)?;
        }
        self.agent.update(&self.batch)
    }

    /// Logs an update's metrics with the rate, the clock's shares and the buffer's size.
    fn log_step(&mut self, step: u64, end: u64, metrics: &Metrics, status: &mut Status) -> Result<()> {
        let mut scalars: Vec<(&str, f64)> = metrics.iter().map(|(n, t)| (*n, t.double_value(&[]))).collect();
        let sps = status.rate(step);
        scalars.push(("time/sps", sps));
        scalars.extend(status.clock.shares(status.elapsed()));
        scalars.push(("buffer/size", self.buffer.len() as f64));
        self.logger.log(step, &scalars)?;
        // Metrics files are readable while the run goes on.
        self.logger.flush()?;
        status.report(step, end, sps);
        Ok(())
    }

    /// Ends this invocation: the last background evaluation, the collector's thread, the
    /// wall-clock account and the event files.
    fn finish(&mut self, mut status: Status, interrupted: bool) -> Result<Summary> {
        self.finish_background_eval(&mut status.clock)?;
        if let Some(a) = self.async_collector.take() {
            self.collector = Some(a.stop()?);
        }
        let seconds = status.close();
        // Closing joins TensorBoard's writer thread: only then is the event file complete.
        self.logger.close()?;
        Ok(Summary {
            interrupted,
            run_dir: self.run_dir.clone(),
            steps: self.progress.step,
            eval: self.progress.last_eval.clone(),
            curve: self.progress.eval_history.clone(),
            offline_steps: self.config.schedule.offline_steps,
            seconds,
        })
    }
}
