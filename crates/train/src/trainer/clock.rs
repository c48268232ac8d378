//! Where a run's wall clock goes, and what the user sees of it: the progress bar, or a status
//! line every 30 s where there is no terminal for one, and the closing account.

use std::time::Instant;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::eval::EvalResult;

/// Seconds spent in each part of the training loop (this process only).
#[derive(Debug, Default)]
pub(super) struct WallClock {
    updates: f64,
    env_steps: f64,
    pub(super) evaluation: f64,
    pub(super) checkpoints: f64,
}

impl WallClock {
    /// Runs `f`, counting its time as updates.
    pub(super) fn updates<T>(&mut self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let out = f();
        self.updates += t.elapsed().as_secs_f64();
        out
    }

    /// Runs `f`, counting its time as environment steps.
    pub(super) fn env_steps<T>(&mut self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let out = f();
        self.env_steps += t.elapsed().as_secs_f64();
        out
    }

    /// Each part's share of `total` seconds, as `time/<part>_share` metrics.
    pub(super) fn shares(&self, total: f64) -> [(&'static str, f64); 4] {
        let t = total.max(1e-9);
        [
            ("time/updates_share", self.updates / t),
            ("time/env_steps_share", self.env_steps / t),
            ("time/evaluation_share", self.evaluation / t),
            ("time/checkpoints_share", self.checkpoints / t),
        ]
    }
}

/// The clock of one invocation of [`super::Trainer::run`] and its display.
pub(super) struct Status {
    pub(super) bar: ProgressBar,
    pub(super) clock: WallClock,
    started: Instant,
    last_line: Instant,
    /// The step this invocation started from.
    first: u64,
    /// The step and time the current phase (offline, online) began in this invocation: the
    /// estimate of the time left uses this phase's rate.
    phase: (u64, Instant),
}

impl Status {
    /// A progress bar over `total` steps, at `step`.
    pub(super) fn new(total: u64, step: u64) -> Self {
        let bar = ProgressBar::new(total).with_position(step);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta} {msg}",
            )
            .expect("static template"),
        );
        let now = Instant::now();
        Self { bar, clock: WallClock::default(), started: now, last_line: now, first: step, phase: (step, now) }
    }

    /// A new phase begins at `step` (the online phase: slower steps than the offline ones).
    pub(super) fn new_phase(&mut self, step: u64) {
        self.phase = (step, Instant::now());
    }

    /// Seconds since this invocation started.
    pub(super) fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Steps per second of this invocation, at `step`.
    pub(super) fn rate(&self, step: u64) -> f64 {
        (step - self.first) as f64 / self.elapsed().max(1e-9)
    }

    /// Without a terminal for the progress bar (a log file, CI): a status line every 30 s,
    /// its estimate of the time left from the current phase's rate.
    pub(super) fn report(&mut self, step: u64, end: u64, sps: f64) {
        if self.bar.is_hidden() && self.last_line.elapsed().as_secs() >= 30 {
            self.last_line = Instant::now();
            let phase_rate = (step - self.phase.0) as f64 / self.phase.1.elapsed().as_secs_f64().max(1e-9);
            let eta = (end - step) as f64 / phase_rate.max(1e-9);
            tracing::info!("step {step}/{end}: {sps:.1} steps/s, about {:.0} min left", eta / 60.0);
        }
    }

    /// Shows the latest evaluation's success beside the bar.
    pub(super) fn show_success(&self, r: Option<&EvalResult>) {
        if let Some(r) = r {
            self.bar.set_message(format!("success {:.2}", r.success_rate));
        }
    }

    /// Clears the bar and logs where the wall clock went; returns the seconds this took.
    pub(super) fn close(self) -> f64 {
        self.bar.finish_and_clear();
        let seconds = self.elapsed();
        let shares = self.clock.shares(seconds);
        let parts: Vec<String> =
            shares.iter().map(|(k, v)| format!("{} {:.0}%", &k[5..k.len() - 6], 100.0 * v)).collect();
        tracing::info!("wall clock {seconds:.0} s: {}", parts.join(", "));
        seconds
    }
}
