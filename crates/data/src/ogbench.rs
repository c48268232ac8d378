//! OGBench dataset files (`.npz`) read into a [`Dataset`], with the singletask reward and mask
//! relabelling of OGBench's own loader.
//!
//! # File format
//!
//! `np.savez_compressed` (a zip of `.npy` arrays), as OGBench publishes them and as
//! `python -m mvp_envs.data_ogbench` writes them: `observations` f32 `[R, O]`, `actions` f32
//! `[R, A]`, `terminals` bool `[R]` (1 on the last row of each episode), `qpos` f32 `[R, nq]`,
//! `qvel` f32 and, for scene and puzzle, `button_states` i64 `[R, buttons]`. Row j of an
//! episode holds the state s_j *before* action a_j, and its qpos and button states.
//! The validation split sits beside it as `<name>-val.npz`. Other numeric dtypes are
//! converted; only the keys above are read (`qvel` is not needed).
//!
//! # What the loader builds (`ogbench.utils.load_dataset`, `compact_dataset=False`)
//!
//! The last row of each episode has no next state, so it is dropped: every row j with
//! `terminals[j] = 0` becomes the transition (s_j, a_j, s_{j+1}), and the new `terminals` is
//! the old flag of row j+1 (1 on the last transition of each episode). An episode of R rows
//! gives R − 1 transitions.
//!
//! # Singletask relabelling (`ogbench.relabel_utils.relabel_dataset`)
//!
//! For `<env>-<dataset>-singletask-task<k>-v0` the loader computes per state a list of
//! subgoal successes against the task's goal ([`OgbenchTask`], read from the environment):
//! cube i is placed when ‖qpos[14 + 7i .. +3] − goal_i‖ ≤ 0.04 (in f64); scene adds the
//! button states (equal to the goal's), the drawer (|qpos[d] − goal| ≤ 0.04, in f32) and the
//! window (qpos[d + 1], same test), with d = 14 + 7·cubes + buttons; puzzle uses the button
//! states only. reward = successes − subgoals (0 when solved, else negative), mask =
//! 1 − all(successes).
//!
//! # Reward timing ([`RewardTiming`])
//!
//! OGBench's loader evaluates the state s_j of the transition (s_j, a_j, s_{j+1}): the reward
//! and mask of the state *before* the action ([`RewardTiming::Current`]). Its singletask
//! environments do the same online (`success_timing='pre'`). Our convention — the one the
//! [`Dataset`] and [`crate::Step`] document — is that a transition carries the reward and
//! success of s_{j+1}, with mask 0 when s_{j+1} is a success: [`RewardTiming::Next`] (the
//! default) relabels from the qpos of row j+1, and our env worker builds OGBench singletask
//! environments with `success_timing='post'` (`envs/mvp_envs/make.py`), so both paths agree
//! (tested in `tests/ogbench_data.rs`).
//!
//! The code: `task` ([`OgbenchTask`] and the reward arithmetic), this file (the errors, the
//! stored arrays [`OgbenchNpz`] and the loader) and `tests`.

mod task;

use std::path::{Path, PathBuf};

use mvp_replay::Dataset;
use serde::{Deserialize, Serialize};

use crate::npz::{bad, NpzFile};

pub use task::{OgbenchTask, GOAL_TOLERANCE};

/// Errors of the OGBench dataset reader (one line each).
#[derive(Debug, thiserror::Error)]
pub enum OgbenchDataError {
    /// The dataset file does not exist.
    #[error("OGBench dataset not found at {}; make it with `mvp data ogbench --env {dataset} --out {}` (OGBench's own files also work: put them there)", path.display(), path.display())]
    Missing {
        /// The file looked for.
        path: PathBuf,
        /// The dataset name to generate (e.g. `cube-double-play-v0`).
        dataset: String,
    },
    /// The file holds no array of this name.
    #[error("{}: no array `{key}` in the file (it holds: {}); is it an OGBench dataset?", path.display(), present.join(", "))]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The missing key.
        key: String,
        /// The keys the file has.
        present: Vec<String>,
    },
    /// An array's shape does not fit the environment (a dataset of another environment).
    #[error("{}: `{key}` has shape {got:?} but environment `{env_id}` needs {expected:?}; the file belongs to another environment: make one for this one with `mvp data ogbench --env {dataset} --out FILE.npz` and set data.path to it", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// The array.
        key: &'static str,
        /// The environment the dataset was loaded for.
        env_id: String,
        /// The dataset that environment uses (e.g. `cube-double-play-v0`).
        dataset: String,
        /// The shape the environment needs (`N` = rows in the file).
        expected: [usize; 2],
        /// The shape in the file.
        got: [usize; 2],
    },
    /// The file is not a readable npz/npy or its contents are inconsistent.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// When the relabelled reward and mask of a transition (s_t, a_t, s_{t+1}) are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewardTiming {
    /// On s_{t+1} (our convention, matching our online envs): r_t = reward(s_{t+1}),
    /// mask_t = 0 iff s_{t+1} is a success.
    #[default]
    Next,
    /// On s_t, exactly as OGBench's loader (`relabel_dataset`) does.
    Current,
}

/// The arrays of an OGBench `.npz` file as stored (rows = states, episodes back to back).
#[derive(Debug, Clone, PartialEq)]
pub struct OgbenchNpz {
    /// The file.
    pub path: PathBuf,
    /// Number of rows R.
    pub rows: usize,
    /// Observation width.
    pub obs_dim: usize,
    /// Action width.
    pub act_dim: usize,
    /// qpos width.
    pub nq: usize,
    /// Button count (0 without `button_states`).
    pub num_buttons: usize,
    /// `[R, obs_dim]`.
    pub observations: Vec<f32>,
    /// `[R, act_dim]`.
    pub actions: Vec<f32>,
    /// `[R]`: the episode ends with this row.
    pub terminals: Vec<bool>,
    /// `[R, nq]`.
    pub qpos: Vec<f32>,
    /// `[R, num_buttons]`, empty when the file has none.
    pub button_states: Vec<i64>,
}

impl OgbenchNpz {
    /// Reads `observations`, `actions`, `terminals`, `qpos` and, when `buttons` is true (or
    /// the file has it), `button_states`.
    pub fn read(path: &Path, buttons: bool) -> Result<Self, OgbenchDataError> {
        let mut zip = NpzFile::open(path)?;
        let obs = zip.array("observations")?;
        let rows = obs.rows(path, "observations")?;
        let obs_dim = obs.width();
        let actions = zip.array("actions")?;
        let terminals = zip.array("terminals")?;
        let qpos = zip.array("qpos")?;
        let want_buttons = buttons || zip.has("button_states");
        let button_states = if want_buttons { Some(zip.array("button_states")?) } else { None };
        for (key, a) in [("actions", &actions), ("terminals", &terminals), ("qpos", &qpos)]
            .into_iter()
            .chain(button_states.as_ref().map(|b| ("button_states", b)))
        {
            if a.rows(path, key)? != rows {
                return Err(OgbenchDataError::BadFile {
                    path: path.to_path_buf(),
                    reason: format!("`{key}` has {} rows but `observations` has {rows}", a.shape[0]),
                });
            }
        }
        if terminals.shape.len() != 1 {
            return Err(bad(path, format!("`terminals` has shape {:?}, expected [{rows}]", terminals.shape)));
        }
        let (num_buttons, button_states) = match button_states {
            Some(b) => (b.width(), b.to_i64(path, "button_states")?),
            None => (0, Vec::new()),
        };
        Ok(Self {
            path: path.to_path_buf(),
            rows,
            obs_dim,
            act_dim: actions.width(),
            nq: qpos.width(),
            num_buttons,
            observations: obs.to_f32(path, "observations")?,
            actions: actions.to_f32(path, "actions")?,
            terminals: terminals.to_bool(path, "terminals")?,
            qpos: qpos.to_f32(path, "qpos")?,
            button_states,
        })
    }

    /// Checks the widths against `task`; the error names the array and both shapes.
    pub fn check_task(&self, task: &OgbenchTask) -> Result<(), OgbenchDataError> {
        let mut checks = vec![
            ("observations", self.obs_dim, task.obs_dim),
            ("actions", self.act_dim, task.action_dim),
            ("qpos", self.nq, task.nq),
        ];
        if task.uses_buttons() {
            checks.push(("button_states", self.num_buttons, task.num_buttons));
        }
        for (key, got, want) in checks {
            if got != want {
                return Err(OgbenchDataError::Shape {
                    path: self.path.clone(),
                    key,
                    env_id: task.env_id.clone(),
                    dataset: task.dataset_name(),
                    expected: [self.rows, want],
                    got: [self.rows, got],
                });
            }
        }
        Ok(())
    }

    /// The transitions as OGBench's loader builds them, relabelled for `task` with `timing`.
    pub fn to_dataset(&self, task: &OgbenchTask, timing: RewardTiming) -> Result<Dataset, OgbenchDataError> {
        self.check_task(task)?;
        if self.rows > 0 && !self.terminals[self.rows - 1] {
            return Err(bad(
                &self.path,
                "the last row does not end an episode (`terminals` is 0 there); the file is truncated".into(),
            ));
        }
        let (o, a, q, b) = (self.obs_dim, self.act_dim, self.nq, self.num_buttons);
        let n = self.terminals.iter().filter(|t| !**t).count();
        let mut d = Dataset {
            obs_dim: o,
            act_dim: a,
            observations: Vec::with_capacity(n * o),
            actions: Vec::with_capacity(n * a),
            rewards: Vec::with_capacity(n),
            terminals: Vec::with_capacity(n),
            masks: Vec::with_capacity(n),
            next_observations: Vec::with_capacity(n * o),
        };
        for j in (0..self.rows).filter(|&j| !self.terminals[j]) {
            d.observations.extend_from_slice(&self.observations[j * o..(j + 1) * o]);
            d.actions.extend_from_slice(&self.actions[j * a..(j + 1) * a]);
            d.next_observations.extend_from_slice(&self.observations[(j + 1) * o..(j + 2) * o]);
            d.terminals.push(if self.terminals[j + 1] { 1.0 } else { 0.0 });
            let s = match timing {
                RewardTiming::Current => j,
                RewardTiming::Next => j + 1,
            };
            let buttons = if task.uses_buttons() { &self.button_states[s * b..(s + 1) * b] } else { &[][..] };
            let (reward, success) = task.reward_and_success(&self.qpos[s * q..(s + 1) * q], buttons);
            d.rewards.push(reward);
            d.masks.push(if success { 0.0 } else { 1.0 });
        }
        d.validate().map_err(|e| bad(&self.path, e.to_string()))?;
        Ok(d)
    }
}

/// Loads an OGBench dataset file for `task`: the transitions as OGBench's loader builds
/// them (observations, actions, next_observations, terminals = episode ends) with rewards and
/// masks relabelled for the task at `timing` ([`RewardTiming::Next`] for our convention).
///
/// Errors (one line each): a missing file names the `mvp data ogbench` command that makes it;
/// a dataset of another environment names the array and both shapes; a missing array names
/// the key.
pub fn load_ogbench_dataset(
    path: &Path,
    task: &OgbenchTask,
    timing: RewardTiming,
) -> Result<Dataset, OgbenchDataError> {
    if !path.exists() {
        return Err(OgbenchDataError::Missing { path: path.to_path_buf(), dataset: task.dataset_name() });
    }
    OgbenchNpz::read(path, task.uses_buttons())?.to_dataset(task, timing)
}

/// The validation split beside a dataset file: `x/name.npz` → `x/name-val.npz`.
pub fn ogbench_val_path(path: &Path) -> PathBuf {
    let s = path.to_string_lossy();
    match s.strip_suffix(".npz") {
        Some(stem) => PathBuf::from(format!("{stem}-val.npz")),
        None => PathBuf::from(format!("{s}-val.npz")),
    }
}

#[cfg(test)]
mod tests;
