//! The dataset generators of the venv (`python -m mvp_envs.data_ogbench`,
//! `python -m mvp_envs.data_robomimic`, documented in `envs/README.md`): their arguments, their
//! command lines and one way to run them, shared by `mvp data` and by training runs that make a
//! missing dataset.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use mvp_envs::python_module_command;
use serde::{Deserialize, Serialize};

/// Arguments of the dataset generator `python -m mvp_envs.data_ogbench` (see
/// `envs/README.md`). Build with [`OgbenchGenerate::new`] and adjust the fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OgbenchGenerate {
    /// Dataset name, e.g. `cube-double-play-v0` (`play`: plan oracles; `noisy`: Markov
    /// oracles); a singletask id also works.
    pub env: String,
    /// Training episodes.
    pub episodes: usize,
    /// Output file `FILE.npz` (the validation split goes to `FILE-val.npz`).
    pub out: PathBuf,
    /// Parallel processes.
    pub workers: usize,
    /// Seed of the whole run (worker w gets child w of numpy's `SeedSequence(seed)`).
    pub seed: u64,
    /// Rows per episode (`None`: 1001, OGBench's value: 1000 transitions per episode).
    pub episode_length: Option<usize>,
    /// Validation episodes (`None`: max(1, episodes / 10)).
    pub val_episodes: Option<usize>,
}

impl OgbenchGenerate {
    /// `episodes` episodes of `env` into `out`, one worker, seed 0, OGBench's defaults.
    pub fn new(env: impl Into<String>, episodes: usize, out: impl Into<PathBuf>) -> Self {
        Self {
            env: env.into(),
            episodes,
            out: out.into(),
            workers: 1,
            seed: 0,
            episode_length: None,
            val_episodes: None,
        }
    }

    /// The command (venv interpreter, `envs/` on `PYTHONPATH`). Progress lines go to its
    /// stderr, a JSON summary to its stdout; exit status 2 is a usage error (one line).
    pub fn command(&self) -> Result<Command> {
        let mut cmd = python_module_command("mvp_envs.data_ogbench")?;
        // The generator runs in the project root: make the output path absolute first.
        let out = std::path::absolute(&self.out)?;
        cmd.arg("--env").arg(&self.env);
        cmd.arg("--episodes").arg(self.episodes.to_string());
        cmd.arg("--workers").arg(self.workers.to_string());
        cmd.arg("--seed").arg(self.seed.to_string());
        cmd.arg("--out").arg(out);
        if let Some(l) = self.episode_length {
            cmd.arg("--episode-length").arg(l.to_string());
        }
        if let Some(v) = self.val_episodes {
            cmd.arg("--val-episodes").arg(v.to_string());
        }
        Ok(cmd)
    }
}

/// Arguments of a scripted-demonstration generator that writes robomimic's low-dim HDF5 layout
/// (only successful episodes are kept): `python -m mvp_envs.data_robomimic` for robomimic's
/// tasks, `python -m mvp_envs.data_metaworld` for Meta-World's ([`RobomimicGenerate::metaworld`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobomimicGenerate {
    /// The generator's Python module.
    pub module: String,
    /// `lift`, `can` or `square`; a Meta-World task such as `door-open-v3`.
    pub task: String,
    /// Successful demonstrations to keep.
    pub episodes: usize,
    /// Output file (`.hdf5`).
    pub out: PathBuf,
    /// Parallel processes.
    pub workers: usize,
    /// Seed (episode i resets with seed + i).
    pub seed: u64,
    /// Gaussian action noise of the demonstrator.
    pub noise: f64,
    /// Meta-World only: keep point-cloud observations too (`--pointcloud`: the episodes run in
    /// `metaworld-pc/<task>`).
    #[serde(default)]
    pub pointcloud: bool,
}

impl RobomimicGenerate {
    /// `episodes` demonstrations of `task` into `out`, one worker, seed 0, no noise.
    pub fn new(task: impl Into<String>, episodes: usize, out: impl Into<PathBuf>) -> Self {
        let module = "mvp_envs.data_robomimic".into();
        Self {
            module,
            task: task.into(),
            episodes,
            out: out.into(),
            workers: 1,
            seed: 0,
            noise: 0.0,
            pointcloud: false,
        }
    }

    /// `episodes` demonstrations of Meta-World's `task` (e.g. `door-open-v3`) by its scripted
    /// policy into `out`, seed 0, no noise.
    pub fn metaworld(task: impl Into<String>, episodes: usize, out: impl Into<PathBuf>) -> Self {
        Self { module: "mvp_envs.data_metaworld".into(), ..Self::new(task, episodes, out) }
    }

    /// The command (venv interpreter, `envs/` on `PYTHONPATH`); progress goes to its stderr.
    pub fn command(&self) -> Result<Command> {
        let mut cmd = python_module_command(&self.module)?;
        cmd.args([
            "--task",
            &self.task,
            "--episodes",
            &self.episodes.to_string(),
            "--workers",
            &self.workers.to_string(),
        ]);
        cmd.args(["--seed", &self.seed.to_string(), "--noise", &self.noise.to_string()]);
        if self.pointcloud {
            cmd.arg("--pointcloud");
        }
        cmd.arg("--out").arg(std::path::absolute(&self.out)?);
        Ok(cmd)
    }
}

/// Runs a generator's `command` to completion, making the output's folder first. Progress
/// stays on stderr; `summary_to_stdout` = false drops the generator's JSON summary (training
/// runs), true passes it on (`mvp data`).
pub fn run_generator(mut command: Command, out: &Path, summary_to_stdout: bool) -> Result<()> {
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if !summary_to_stdout {
        command.stdout(Stdio::null());
    }
    let status = command.status().context("starting the dataset generator")?;
    if !status.success() {
        bail!("generating {} failed ({status}); see the generator's messages above", out.display());
    }
    Ok(())
}
