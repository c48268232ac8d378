//! [`OgbenchTask`]: the goal and dimensions of one OGBench singletask manipulation environment,
//! and the singletask reward arithmetic (subgoals achieved in a state) that relabels a dataset.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use mvp_envs::python_module_command;

/// Distance within which a cube (or the drawer, or the window) counts as placed.
pub const GOAL_TOLERANCE: f64 = 0.04;
/// Index in qpos of the first object (after the arm's joints).
const QPOS_OBJ_START: usize = 14;
/// qpos entries per cube (position 3 + quaternion 4).
const QPOS_CUBE_LEN: usize = 7;

/// The goal of one OGBench singletask manipulation environment and its dimensions: what the
/// relabelling needs. Get it from the environment with [`OgbenchTask::query`]
/// (`python -m mvp_envs.task_info ENV_ID`); it serialises to the same JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OgbenchTask {
    /// The id asked for, e.g. `cube-double-play-singletask-task2-v0`.
    pub env_id: String,
    /// The Gymnasium id, e.g. `cube-double-singletask-task2-v0`.
    pub env_name: String,
    /// The dataset the id names (`cube-double-play-v0`); `None` for an id without the dataset
    /// word.
    pub dataset: Option<String>,
    /// `cube`, `scene` or `puzzle`.
    pub family: String,
    /// The task number (the default task resolved).
    pub task_id: u32,
    /// Observation width.
    pub obs_dim: usize,
    /// Action width.
    pub action_dim: usize,
    /// Width of qpos.
    pub nq: usize,
    /// Width of qvel.
    pub nv: usize,
    /// Time limit of the online environment.
    pub max_episode_steps: usize,
    /// Number of cubes.
    pub num_cubes: usize,
    /// Number of buttons (scene, puzzle).
    pub num_buttons: usize,
    /// Target position of each cube.
    pub cube_goals: Vec<[f64; 3]>,
    /// Target state (0/1) of each button.
    pub button_goals: Vec<i64>,
    /// Target drawer position (scene).
    pub drawer_goal: Option<f64>,
    /// Target window position (scene).
    pub window_goal: Option<f64>,
}

impl OgbenchTask {
    /// The dataset this environment trains on: the one its id names, else the play dataset
    /// of its family (`cube-double-singletask-task2-v0` → `cube-double-play-v0`).
    pub fn dataset_name(&self) -> String {
        self.dataset.clone().unwrap_or_else(|| {
            let s: Vec<&str> = self.env_name.split('-').collect();
            let pos = s.iter().position(|w| *w == "singletask").unwrap_or(s.len() - 1);
            format!("{}-play-{}", s[..pos].join("-"), s[s.len() - 1])
        })
    }

    /// Asks the environment for its task (runs `python -m mvp_envs.task_info ENV_ID` in the
    /// project's venv, about 2 s). Fails with the tool's one-line message for an id that is
    /// not an OGBench manipulation singletask id.
    pub fn query(env_id: &str) -> anyhow::Result<Self> {
        let out = python_module_command("mvp_envs.task_info")?.arg(env_id).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let line = stderr
                .lines()
                .rev()
                .find(|l| l.starts_with("error: "))
                .map(|l| l.trim_start_matches("error: ").to_string());
            match line {
                Some(msg) => anyhow::bail!("{msg}"),
                None => anyhow::bail!("mvp_envs.task_info {env_id} failed ({}):\n{stderr}", out.status),
            }
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
        Self::from_json(json).map_err(|e| anyhow::anyhow!("mvp_envs.task_info {env_id}: {e}"))
    }

    /// Parses the JSON of `mvp_envs.task_info` and checks that it is consistent.
    pub fn from_json(json: &str) -> anyhow::Result<Self> {
        let task: Self = serde_json::from_str(json)?;
        task.check()?;
        Ok(task)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            matches!(self.family.as_str(), "cube" | "scene" | "puzzle"),
            "family `{}` is not cube, scene or puzzle",
            self.family
        );
        anyhow::ensure!(
            self.cube_goals.len() == self.num_cubes,
            "{} cube goals for {} cubes",
            self.cube_goals.len(),
            self.num_cubes
        );
        anyhow::ensure!(
            self.button_goals.len() == self.num_buttons,
            "{} button goals for {} buttons",
            self.button_goals.len(),
            self.num_buttons
        );
        let scene = self.family == "scene";
        anyhow::ensure!(
            self.drawer_goal.is_some() == scene && self.window_goal.is_some() == scene,
            "drawer and window goals must be given for scene only"
        );
        anyhow::ensure!(self.qpos_needed() <= self.nq, "qpos of width {} is too short for the objects", self.nq);
        Ok(())
    }

    /// qpos entries that the relabelling reads.
    fn qpos_needed(&self) -> usize {
        let mut n = QPOS_OBJ_START + QPOS_CUBE_LEN * self.num_cubes;
        if self.family == "scene" {
            n += self.num_buttons + 2;
        }
        n
    }

    /// Whether the relabelling needs `button_states` (scene, puzzle).
    pub fn uses_buttons(&self) -> bool {
        self.num_buttons > 0
    }

    /// Number of subgoals (the most negative reward is minus this).
    pub fn num_subgoals(&self) -> usize {
        match self.family.as_str() {
            "scene" => self.num_cubes + self.num_buttons + 2,
            "puzzle" => self.num_buttons,
            _ => self.num_cubes,
        }
    }

    /// Number of subgoals achieved in one state, given its qpos row (length `nq`) and its
    /// button states (length `num_buttons`; empty for cube) — OGBench's arithmetic.
    pub fn achieved(&self, qpos: &[f32], buttons: &[i64]) -> usize {
        let mut n = 0;
        if self.family != "puzzle" {
            for (i, goal) in self.cube_goals.iter().enumerate() {
                let at = QPOS_OBJ_START + QPOS_CUBE_LEN * i;
                // numpy: norm(f64 goal − f32 qpos) = sqrt of the sum of squares, in f64.
                let mut sq = 0.0f64;
                for (k, g) in goal.iter().enumerate() {
                    let d = g - f64::from(qpos[at + k]);
                    sq += d * d;
                }
                n += usize::from(sq.sqrt() <= GOAL_TOLERANCE);
            }
        }
        if self.family != "cube" {
            n += buttons.iter().zip(&self.button_goals).filter(|(b, g)| b == g).count();
        }
        if let (Some(drawer), Some(window)) = (self.drawer_goal, self.window_goal) {
            let d = QPOS_OBJ_START + QPOS_CUBE_LEN * self.num_cubes + self.num_buttons;
            // numpy 1.x: f32 array − Python float stays f32, and so does the comparison.
            let tol = GOAL_TOLERANCE as f32;
            n += usize::from((qpos[d] - drawer as f32).abs() <= tol);
            n += usize::from((qpos[d + 1] - window as f32).abs() <= tol);
        }
        n
    }

    /// Reward and success of one state: (achieved − subgoals, all achieved).
    pub fn reward_and_success(&self, qpos: &[f32], buttons: &[i64]) -> (f32, bool) {
        let total = self.num_subgoals();
        let got = self.achieved(qpos, buttons);
        (got as f32 - total as f32, got == total)
    }

    /// Default place of this task's dataset in `dir`: `<dir>/<dataset>.npz`, as OGBench
    /// names its files (`~/.ogbench/data/cube-double-play-v0.npz`). `None` when the id has
    /// no dataset word.
    pub fn dataset_path(&self, dir: &Path) -> Option<PathBuf> {
        self.dataset.as_ref().map(|d| dir.join(format!("{d}.npz")))
    }
}
