//! Checkpoints: periodic and final ones (after the background evaluation they must not lose),
//! the one written on an interrupt, and the guard that never lets a non-finite state replace
//! the last good one.

use std::time::Instant;

use anyhow::{bail, Result};
use mvp_nn::checkpoint;

use super::clock::WallClock;
use super::setup::BUFFER_FILE;
use super::{Trainer, CHECKPOINTS};

/// The folder in a checkpoint holding the networks of an evaluation an interrupt cut short,
/// when they are not the checkpoint's own.
pub(super) const PENDING_POLICY: &str = "pending_eval";

impl Trainer {
    /// Writes a checkpoint of the current step. A background evaluation of an earlier step is
    /// finished first; one of this step is recorded as pending (a resumed run repeats it) unless
    /// `last` (this invocation's final checkpoint), where it is finished too.
    pub(super) fn save_checkpoint(&mut self, last: bool, clock: &mut WallClock) -> Result<()> {
        let t = Instant::now();
        if last || self.background_eval.as_ref().is_some_and(|b| b.step() < self.progress.step) {
            self.finish_background_eval(clock)?;
        }
        self.progress.pending_eval = self.background_eval.as_ref().map(|b| b.step());
        self.write_checkpoint()?;
        clock.checkpoints += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// The checkpoint of a stop by signal: without waiting for a background evaluation (its
    /// thread ends with the process). It is recorded as pending and repeated by the resumed
    /// run: one of this step with the checkpoint's networks, one of an earlier step with its
    /// own networks, kept in the checkpoint as a policy folder ([`PENDING_POLICY`]).
    pub(super) fn checkpoint_on_interrupt(&mut self, clock: &mut WallClock) -> Result<()> {
        let t = Instant::now();
        self.progress.pending_eval = None;
        let mut snapshot = None;
        if let Some(b) = self.background_eval.take() {
            self.progress.pending_eval = Some(b.step());
            if b.step() != self.progress.step {
                snapshot = Some(b.weights().clone());
                tracing::info!("the evaluation of step {} was still running: the resumed run repeats it", b.step());
            }
        }
        self.pending_snapshot = snapshot;
        let written = self.write_checkpoint();
        self.pending_snapshot = None;
        written?;
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
        let pending = match &self.pending_snapshot {
            Some(w) => Some(
                mvp_infer::PolicyFile::new(w.clone(), self.config.agent.horizon, Default::default())
                    .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        };
        checkpoint::save_with(&root, &name, &tensors, &self.progress, |dir| {
            if let Some(b) = buffer {
                b.save(dir.join(BUFFER_FILE))?;
            }
            if let Some(p) = &pending {
                p.save(&dir.join(PENDING_POLICY))?;
            }
            Ok(())
        })?;
        checkpoint::prune(&root, self.config.schedule.keep_checkpoints)?;
        Ok(())
    }
}
