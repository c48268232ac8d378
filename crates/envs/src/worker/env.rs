//! [`WorkerEnv`]: one real environment behind its own worker process, as an [`Env`].

use super::{PythonWorker, WorkerConfig};
use crate::{Env, EnvError, EnvSpec, Info, Step};

/// One real environment behind its own Python worker process (M = 1), as an [`Env`].
#[derive(Debug)]
pub struct WorkerEnv {
    worker: PythonWorker,
}

impl WorkerEnv {
    /// Starts a worker for `config.env_id` with one environment (`num_envs` is forced to 1;
    /// `seeds`, if given, must hold one seed).
    pub fn new(mut config: WorkerConfig) -> anyhow::Result<Self> {
        config.num_envs = 1;
        Ok(Self { worker: PythonWorker::spawn(config)? })
    }

    /// A worker for `env_id` with the default configuration.
    pub fn make(env_id: &str) -> anyhow::Result<Self> {
        Self::new(WorkerConfig::new(env_id))
    }

    /// The underlying worker (pid, restart, ping, ...).
    pub fn worker(&mut self) -> &mut PythonWorker {
        &mut self.worker
    }
}

impl Env for WorkerEnv {
    fn spec(&self) -> &EnvSpec {
        self.worker.spec()
    }

    fn reset(&mut self, seed: Option<u64>) -> anyhow::Result<(Vec<f32>, Info)> {
        let r = self.worker.reset_envs(&[(0, seed)])?;
        Ok((r.obs, Info { success: r.success[0] }))
    }

    fn step(&mut self, action: &[f32]) -> anyhow::Result<Step> {
        if action.len() != self.worker.spec().action_dim {
            return Err(EnvError::ActionDim { expected: self.worker.spec().action_dim, got: action.len() }.into());
        }
        if !self.worker.is_running(0) {
            return Err(EnvError::NoEpisode.into());
        }
        Ok(self.worker.step_envs(&[0], action)?.get(0))
    }

    fn recover(&mut self) -> anyhow::Result<bool> {
        tracing::warn!(
            "restarting env worker `{}` after: {}",
            self.worker.spec().name,
            self.worker.broken().unwrap_or("a Python exception")
        );
        self.worker.restart()?;
        Ok(true)
    }

    fn close(&mut self) -> anyhow::Result<()> {
        self.worker.close()
    }
}
