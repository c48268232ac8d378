//! Batched requests of [`PythonWorker`]: resets, renders and steps (also split into
//! `send_step` / `receive_step`).

use super::PythonWorker;
use crate::worker::process::Proc;
use crate::worker::protocol::{begin_frame, put_u32, tag, BatchReset, BatchStep, Cursor};
use crate::worker::WorkerError;
use crate::EnvError;

impl PythonWorker {
    /// Resets the listed environments, `(index, seed)` each; `None` continues the
    /// environment's generator (its first reset uses [`WorkerConfig::seeds`](super::WorkerConfig::seeds) when given).
    /// Returns observations and success flags in request order.
    pub fn reset_envs(&mut self, items: &[(usize, Option<u64>)]) -> anyhow::Result<BatchReset> {
        for &(i, _) in items {
            self.check_index(i)?;
        }
        self.send_buf.clear();
        begin_frame(&mut self.send_buf, tag::RESET);
        put_u32(&mut self.send_buf, items.len());
        for &(i, seed) in items {
            put_u32(&mut self.send_buf, i);
            self.send_buf.push(seed.is_some() as u8);
            self.send_buf.extend_from_slice(&seed.unwrap_or(0).to_le_bytes());
        }
        // Whatever the outcome, these environments have no usable episode until it succeeds.
        for &(i, _) in items {
            self.running[i] = false;
        }
        let k = items.len();
        let obs_dim = self.info.obs_dim;
        let body = self.request("reset", tag::RESET_OK)?;
        let mut r = Cursor::new(body, "RESET_OK");
        r.count(k)?;
        let reply = BatchReset { obs: r.f32s(k * obs_dim)?, success: r.bools(k)? };
        r.finish()?;
        for &(i, _) in items {
            self.running[i] = true;
        }
        Ok(reply)
    }

    /// Resets every environment; `seeds` (length M) seeds them, `None` continues their
    /// generators.
    pub fn reset_all(&mut self, seeds: Option<&[u64]>) -> anyhow::Result<BatchReset> {
        let m = self.num_envs();
        if let Some(s) = seeds {
            if s.len() != m {
                return Err(EnvError::Invalid(format!("{} seeds for {m} environments", s.len())).into());
            }
        }
        let items: Vec<(usize, Option<u64>)> = (0..m).map(|i| (i, seeds.map(|s| s[i]))).collect();
        self.reset_envs(&items)
    }

    /// An RGB frame of environment `i` as it is now (the worker must have been configured with
    /// [`WorkerConfig::render`](super::WorkerConfig::render)).
    pub fn render(&mut self, i: usize) -> anyhow::Result<crate::Frame> {
        self.check_index(i)?;
        self.send_buf.clear();
        begin_frame(&mut self.send_buf, tag::RENDER);
        put_u32(&mut self.send_buf, i);
        let body = self.request("render", tag::RENDER_OK)?;
        let mut r = Cursor::new(body, "RENDER_OK");
        let (height, width) = (r.u32()?, r.u32()?);
        let bytes = height.checked_mul(width).and_then(|p| p.checked_mul(3));
        let bytes = bytes.ok_or_else(|| WorkerError::Protocol(format!("RENDER_OK: a {height}×{width} frame")))?;
        let rgb = r.take(bytes)?.to_vec();
        r.finish()?;
        Ok(crate::Frame { width, height, rgb })
    }

    /// Steps the listed environments with `actions` (row-major `[indices.len(), action_dim]`).
    /// Each listed environment must have a running episode; an environment whose step ends
    /// the episode must be reset before it steps again. Actions are clipped to the bounds.
    pub fn step_envs(&mut self, indices: &[usize], actions: &[f32]) -> anyhow::Result<BatchStep> {
        self.send_step(indices, actions)?;
        self.receive_step()
    }

    /// The descriptor the worker's replies arrive on (for waiting on several workers at once
    /// with `poll`); `None` when no process is running.
    pub fn reply_fd(&self) -> Option<std::os::fd::RawFd> {
        self.proc.as_ref().map(Proc::reply_fd)
    }

    /// The first half of [`step_envs`](Self::step_envs): checks and sends the request and
    /// returns at once, so that several workers step in parallel; [`receive_step`]
    /// (Self::receive_step) reads the reply. No other request may come in between.
    pub fn send_step(&mut self, indices: &[usize], actions: &[f32]) -> anyhow::Result<()> {
        if self.pending_step.is_some() {
            return Err(EnvError::Invalid("send_step called twice without receive_step".into()).into());
        }
        let a = self.info.action_dim;
        if actions.len() != indices.len() * a {
            return Err(EnvError::ActionDim { expected: indices.len() * a, got: actions.len() }.into());
        }
        for (j, &i) in indices.iter().enumerate() {
            self.check_index(i)?;
            if !self.running[i] {
                return Err(anyhow::Error::from(EnvError::NoEpisode)
                    .context(format!("environment {i} of worker `{}`", self.config.env_id)));
            }
            if indices[..j].contains(&i) {
                return Err(EnvError::Invalid(format!("environment {i} listed twice in one step")).into());
            }
            let row = &actions[j * a..(j + 1) * a];
            if row.iter().any(|x| !x.is_finite()) {
                return Err(EnvError::NonFiniteAction(row.to_vec()).into());
            }
        }
        self.send_buf.clear();
        begin_frame(&mut self.send_buf, tag::STEP);
        put_u32(&mut self.send_buf, indices.len());
        for &i in indices {
            put_u32(&mut self.send_buf, i);
        }
        for (n, &x) in actions.iter().enumerate() {
            let d = n % a;
            let x = x.clamp(self.info.action_low[d], self.info.action_high[d]);
            self.send_buf.extend_from_slice(&x.to_le_bytes());
        }
        for &i in indices {
            self.running[i] = false;
        }
        self.send("step")?;
        self.pending_step = Some(indices.to_vec());
        Ok(())
    }

    /// The second half of [`step_envs`](Self::step_envs): the reply to the last
    /// [`send_step`](Self::send_step), rows in its order.
    pub fn receive_step(&mut self) -> anyhow::Result<BatchStep> {
        let Some(indices) = self.pending_step.take() else {
            return Err(EnvError::Invalid("receive_step without send_step".into()).into());
        };
        let k = indices.len();
        let obs_dim = self.info.obs_dim;
        let body = self.receive("step", tag::STEP_OK)?;
        let mut r = Cursor::new(body, "STEP_OK");
        r.count(k)?;
        let obs = r.f32s(k * obs_dim)?;
        let reward = r.f32s(k)?;
        let terminated = r.bools(k)?;
        let truncated: Vec<bool> = r.bools(k)?;
        let success = r.bools(k)?;
        r.finish()?;
        // Gymnasium's TimeLimit may set both flags; ours are exclusive (see `Env`).
        let truncated: Vec<bool> = truncated.iter().zip(&terminated).map(|(&tr, &te)| tr && !te).collect();
        for (j, &i) in indices.iter().enumerate() {
            self.running[i] = !(terminated[j] || truncated[j]);
        }
        Ok(BatchStep { obs, reward, terminated, truncated, success })
    }

    /// Steps every environment (each must have a running episode); `actions` is
    /// `[M, action_dim]`.
    pub fn step_all(&mut self, actions: &[f32]) -> anyhow::Result<BatchStep> {
        let indices: Vec<usize> = (0..self.num_envs()).collect();
        self.step_envs(&indices, actions)
    }
}
