//! Evaluations during a run (in the foreground, or on a background thread while training goes
//! on), keeping the best policy so far, videos, and the learning-curve plot.

use std::time::Instant;

use anyhow::{Context, Result};

use super::clock::WallClock;
use super::{Trainer, BEST};
use crate::eval::{evaluate, evaluate_native, BackgroundEval, EvalResult};

impl Trainer {
    /// Runs the evaluation protocol on the evaluation environment.
    pub fn evaluate(&mut self) -> Result<EvalResult> {
        self.finish_background_eval(&mut WallClock::default())?;
        let (episodes, execute, seed) = self.config.eval_protocol_at(self.progress.step);
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
    pub(super) fn start_evaluation(&mut self, step: u64, foreground: bool, clock: &mut WallClock) -> Result<()> {
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
            let protocol = self.config.eval_protocol_at(step);
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

    /// Runs again the evaluation of `step` that the checkpoint records as pending: from the
    /// snapshot of its networks where the checkpoint kept one, else (an evaluation of the
    /// checkpoint's own step) as [`Trainer::start_evaluation`] does.
    pub(super) fn repeat_evaluation(&mut self, step: u64, foreground: bool, clock: &mut WallClock) -> Result<()> {
        let (Some(weights), Some(precision)) = (self.pending_snapshot.take(), self.agent.select_precision()) else {
            return self.start_evaluation(step, foreground, clock);
        };
        let pool = self.eval_pool.take().expect("no background evaluation runs at the start");
        let protocol = self.config.eval_protocol_at(step);
        let horizon = self.config.agent.horizon;
        self.background_eval = Some(BackgroundEval::start_from(weights, horizon, precision, pool, protocol, step)?);
        Ok(())
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
    pub(super) fn finish_background_eval(&mut self, clock: &mut WallClock) -> Result<()> {
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
}
