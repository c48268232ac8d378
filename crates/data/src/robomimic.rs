//! Reader for robomimic low-dim HDF5 files (the `low_dim.hdf5` files users download, and those
//! written by `python -m mvp_envs.data_robomimic` / `mvp data robomimic`).
//!
//! Layout read (robomimic's): group `data` with attribute `env_args` (JSON text) and groups
//! `data/demo_<k>` holding `actions` [T, A], `rewards` [T], `dones` [T], `obs/<key>` and
//! `next_obs/<key>` ([T] or [T, d]); optional `mask/<filter>` datasets listing demo names as
//! byte strings. Other members (`states`, attributes such as `model_file`) are ignored.
//! Numbers of any HDF5 numeric type are converted to `f32`; boolean `dones` are accepted.
//!
//! What [`read_robomimic`] produces (the same conventions as the online env
//! `robomimic/<task>` of `envs/mvp_envs/robomimic.py`):
//! - observations: the low-dim keys concatenated per step in the order of
//!   [`RobomimicOptions::obs_keys`], by default [`ROBOMIMIC_OBS_KEYS`] (robot0_eef_pos,
//!   robot0_eef_quat, robot0_gripper_qpos, object); `next_observations` from `next_obs`;
//! - rewards: `r − 1` (−1 per step, 0 at success);
//! - masks (bootstrap): 0 where `dones = 1` or `r > 0` (success), else 1;
//! - terminals (episode end): 1 at the last step of each demo.
//!
//! Demos are read in the order of their numeric suffix (as robomimic sorts them), from every
//! `data/demo_*` group or from the list of a filter key ([`RobomimicFilter`]).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use hdf5::types::{FixedAscii, VarLenAscii, VarLenUnicode};

use mvp_replay::{Dataset, ReplayError};

/// Errors of the robomimic reader (one line each).
#[derive(Debug, thiserror::Error)]
pub enum RobomimicError {
    /// The file does not exist; `hint` says how to make it.
    #[error("dataset {path} not found; {hint}")]
    MissingFile {
        /// The file asked for.
        path: PathBuf,
        /// What to run (the `mvp data robomimic ...` command).
        hint: String,
    },
    /// The file lacks a group, dataset or key, or holds one of the wrong shape or type;
    /// `reason` names the HDF5 path and the shapes found and expected.
    #[error("robomimic file {path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An option is out of range (an empty key list, an unknown filter).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The arrays read do not form a dataset.
    #[error(transparent)]
    Dataset(#[from] ReplayError),
}

type Result<T, E = RobomimicError> = std::result::Result<T, E>;

/// Default observation keys, in the order the flat observation concatenates them.
pub const ROBOMIMIC_OBS_KEYS: [&str; 4] = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"];

/// Which demos of a file to read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RobomimicFilter {
    /// Every `data/demo_*` group.
    #[default]
    All,
    /// The demos listed in `mask/train`.
    Train,
    /// The demos listed in `mask/valid`.
    Valid,
    /// The demos listed in `mask/<name>` (robomimic also ships e.g. `20_percent_train`).
    Key(String),
}

impl RobomimicFilter {
    /// The `mask/` dataset name, or `None` for [`RobomimicFilter::All`].
    pub fn mask_key(&self) -> Option<&str> {
        match self {
            Self::All => None,
            Self::Train => Some("train"),
            Self::Valid => Some("valid"),
            Self::Key(k) => Some(k),
        }
    }
}

impl FromStr for RobomimicFilter {
    type Err = RobomimicError;

    /// `all`, `train`, `valid`, or any other mask name.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "all" => Self::All,
            "train" => Self::Train,
            "valid" => Self::Valid,
            "" => {
                return Err(RobomimicError::Invalid(
                    "empty robomimic filter key (use all, train, valid or a mask name)".into(),
                ))
            }
            other => Self::Key(other.to_string()),
        })
    }
}

/// Options of [`read_robomimic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobomimicOptions {
    /// Which demos to read (default: all).
    pub filter: RobomimicFilter,
    /// Observation keys concatenated per step, in this order (default [`ROBOMIMIC_OBS_KEYS`]).
    pub obs_keys: Vec<String>,
    /// Task (`lift`, `can`, `square`) named in the message for a missing file; guessed from
    /// the path when `None`.
    pub task: Option<String>,
}

impl Default for RobomimicOptions {
    fn default() -> Self {
        Self {
            filter: RobomimicFilter::All,
            obs_keys: ROBOMIMIC_OBS_KEYS.iter().map(|s| s.to_string()).collect(),
            task: None,
        }
    }
}

/// A robomimic file read into a [`Dataset`], with what else the trainer may need.
#[derive(Debug, Clone, PartialEq)]
pub struct RobomimicData {
    /// The transitions of the selected demos, back to back in demo order.
    pub dataset: Dataset,
    /// The `env_args` attribute of `data` (JSON text), if the file has one.
    pub env_args: Option<String>,
    /// Names of the demos read, in order.
    pub demos: Vec<String>,
    /// Number of transitions of each demo, in the same order.
    pub demo_lengths: Vec<usize>,
    /// Width of each observation key, in concatenation order.
    pub obs_key_dims: Vec<(String, usize)>,
}

impl RobomimicData {
    /// `env_name` from `env_args` (e.g. `Lift`, `PickPlaceCan`, `NutAssemblySquare`).
    pub fn env_name(&self) -> Option<String> {
        let args: serde_json::Value = serde_json::from_str(self.env_args.as_deref()?).ok()?;
        args.get("env_name")?.as_str().map(str::to_string)
    }
}

/// The command that makes a robomimic dataset at `path` (for "file not found" messages).
pub fn robomimic_make_command(path: &Path, task: Option<&str>) -> String {
    let guess = task.map(str::to_string).or_else(|| {
        let p = path.to_string_lossy().to_lowercase();
        ["square", "lift", "can"].iter().find(|t| p.contains(*t)).map(|t| t.to_string())
    });
    format!(
        "mvp data robomimic --task {} --episodes 200 --out {}",
        guess.as_deref().unwrap_or("lift|can|square"),
        path.display()
    )
}

/// Reads a robomimic low-dim HDF5 file (see the module docs for the conventions).
///
/// Errors name what is wrong: a missing file gives one line with the `mvp data robomimic ...`
/// command that makes it ([`RobomimicError::MissingFile`]); a missing group, dataset or key, or
/// an array of the wrong shape, gives [`RobomimicError::BadFile`] naming the HDF5 path and the
/// shapes found and expected.
pub fn read_robomimic(path: impl AsRef<Path>, options: &RobomimicOptions) -> Result<RobomimicData> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(RobomimicError::MissingFile {
            path: path.to_path_buf(),
            hint: format!(
                "make it with `{}` (or use robomimic's low_dim.hdf5)",
                robomimic_make_command(path, options.task.as_deref())
            ),
        });
    }
    if options.obs_keys.is_empty() {
        return Err(RobomimicError::Invalid("robomimic obs_keys is empty".into()));
    }
    Reader { path: path.to_path_buf() }.read(options)
}

struct Reader {
    path: PathBuf,
}

impl Reader {
    fn err(&self, reason: impl Into<String>) -> RobomimicError {
        RobomimicError::BadFile { path: self.path.clone(), reason: reason.into() }
    }

    fn group(&self, parent: &hdf5::Group, name: &str, full: &str) -> Result<hdf5::Group> {
        if !parent.link_exists(name) {
            let members = parent.member_names().unwrap_or_default();
            return Err(self.err(format!("missing group `{full}` (members of its parent: {})", list(&members))));
        }
        parent.group(name).map_err(|e| self.err(format!("`{full}` is not a readable group: {e}")))
    }

    fn dataset(&self, parent: &hdf5::Group, name: &str, full: &str) -> Result<hdf5::Dataset> {
        if !parent.link_exists(name) {
            let members = parent.member_names().unwrap_or_default();
            return Err(self.err(format!("missing dataset `{full}` (members of its parent: {})", list(&members))));
        }
        parent.dataset(name).map_err(|e| self.err(format!("`{full}` is not a readable dataset: {e}")))
    }

    /// Reads a numeric dataset as f32 with its shape.
    fn floats(&self, ds: &hdf5::Dataset, full: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let shape = ds.shape();
        match ds.read_raw::<f32>() {
            Ok(v) => Ok((v, shape)),
            Err(e) => match ds.read_raw::<bool>() {
                Ok(v) => Ok((v.into_iter().map(|b| b as u8 as f32).collect(), shape)),
                Err(_) => Err(self.err(format!("cannot read `{full}` as numbers: {e}"))),
            },
        }
    }

    /// Reads a 1-D array of `t` numbers.
    fn vector(&self, g: &hdf5::Group, name: &str, prefix: &str, t: usize) -> Result<Vec<f32>> {
        let full = format!("{prefix}/{name}");
        let (v, shape) = self.floats(&self.dataset(g, name, &full)?, &full)?;
        if shape != [t] && shape != [t, 1] {
            return Err(
                self.err(format!("`{full}` has shape {shape:?}, expected [{t}] (T = {t} rows of `{prefix}/actions`)"))
            );
        }
        Ok(v)
    }

    /// Reads a [t, d] (or [t]) array; `want` is the width required by earlier demos.
    fn matrix(
        &self,
        ds: &hdf5::Dataset,
        full: &str,
        t: usize,
        want: Option<usize>,
        what: &str,
    ) -> Result<(Vec<f32>, usize)> {
        let (v, shape) = self.floats(ds, full)?;
        let width = match shape.as_slice() {
            [n] if *n == t => 1,
            [n, d] if *n == t => *d,
            _ => {
                let w = want.map_or("d".to_string(), |w| w.to_string());
                return Err(self.err(format!("`{full}` has shape {shape:?}, expected [{t}, {w}] ({what})")));
            }
        };
        if let Some(w) = want {
            if w != width {
                return Err(self.err(format!(
                    "`{full}` has shape {shape:?}, expected [{t}, {w}] ({what}: width {w} as in the first demo read)"
                )));
            }
        }
        Ok((v, width))
    }

    fn env_args(&self, data: &hdf5::Group) -> Option<String> {
        let attr = data.attr("env_args").ok()?;
        if let Ok(s) = attr.read_scalar::<VarLenUnicode>() {
            return Some(s.as_str().to_string());
        }
        attr.read_scalar::<VarLenAscii>().ok().map(|s| s.as_str().to_string())
    }

    fn mask(&self, file: &hdf5::File, key: &str) -> Result<Vec<String>> {
        let full = format!("mask/{key}");
        let mask = self.group(file, "mask", "mask")?;
        let ds = self.dataset(&mask, key, &full)?;
        let names: Vec<String> = if let Ok(v) = ds.read_raw::<FixedAscii<1024>>() {
            v.iter().map(|s| s.as_str().to_string()).collect()
        } else if let Ok(v) = ds.read_raw::<VarLenUnicode>() {
            v.iter().map(|s| s.as_str().to_string()).collect()
        } else if let Ok(v) = ds.read_raw::<VarLenAscii>() {
            v.iter().map(|s| s.as_str().to_string()).collect()
        } else {
            return Err(self.err(format!(
                "`{full}` is not a list of demo names (byte strings); its type is {:?}",
                ds.dtype().and_then(|d| d.to_descriptor()).map(|d| d.to_string()).unwrap_or_default()
            )));
        };
        if names.is_empty() {
            return Err(self.err(format!("`{full}` lists no demos")));
        }
        Ok(names)
    }

    fn read(&self, options: &RobomimicOptions) -> Result<RobomimicData> {
        let file = hdf5::File::open(&self.path).map_err(|e| self.err(format!("cannot open as HDF5: {e}")))?;
        let data = self.group(&file, "data", "data")?;
        let env_args = self.env_args(&data);
        let mut demos = match options.filter.mask_key() {
            None => {
                let names: Vec<String> = data
                    .member_names()
                    .map_err(|e| self.err(format!("cannot list `data`: {e}")))?
                    .into_iter()
                    .filter(|n| n.starts_with("demo_"))
                    .collect();
                if names.is_empty() {
                    return Err(self.err("`data` holds no `demo_*` groups"));
                }
                names
            }
            Some(key) => self.mask(&file, key)?,
        };
        // robomimic orders demos by the number after `demo_`.
        demos.sort_by_key(|n| (n.strip_prefix("demo_").and_then(|k| k.parse::<u64>().ok()), n.clone()));

        let keys = &options.obs_keys;
        let mut key_dims: Vec<Option<usize>> = vec![None; keys.len()];
        let mut act_dim: Option<usize> = None;
        let (mut obs, mut next_obs, mut actions) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rewards, mut masks, mut terminals) = (Vec::new(), Vec::new(), Vec::new());
        let mut lengths = Vec::with_capacity(demos.len());
        for name in &demos {
            let prefix = format!("data/{name}");
            let g = self.group(&data, name, &prefix)?;
            let full = format!("{prefix}/actions");
            let ads = self.dataset(&g, "actions", &full)?;
            let t = match ads.shape().as_slice() {
                [t, _] | [t] => *t,
                s => return Err(self.err(format!("`{full}` has shape {s:?}, expected [T, A]"))),
            };
            if t == 0 {
                return Err(self.err(format!("`{full}` is empty: demo {name} has no steps")));
            }
            let (a, w) = self.matrix(&ads, &full, t, act_dim, "actions")?;
            act_dim = Some(w);
            actions.extend_from_slice(&a);
            let r = self.vector(&g, "rewards", &prefix, t)?;
            let d = self.vector(&g, "dones", &prefix, t)?;
            for (i, (&ri, &di)) in r.iter().zip(&d).enumerate() {
                rewards.push(ri - 1.0);
                masks.push(if di != 0.0 || ri > 0.0 { 0.0 } else { 1.0 });
                terminals.push(if i + 1 == t { 1.0 } else { 0.0 });
            }
            let mut parts = Vec::with_capacity(2);
            for group in ["obs", "next_obs"] {
                let gpath = format!("{prefix}/{group}");
                let og = self.group(&g, group, &gpath)?;
                let mut cols = Vec::with_capacity(keys.len());
                for (k, key) in keys.iter().enumerate() {
                    let full = format!("{gpath}/{key}");
                    let (v, w) =
                        self.matrix(&self.dataset(&og, key, &full)?, &full, t, key_dims[k], "observation key")?;
                    key_dims[k] = Some(w);
                    cols.push((v, w));
                }
                parts.push(cols);
            }
            let width: usize = key_dims.iter().map(|w| w.unwrap_or(0)).sum();
            for (cols, out) in parts.iter().zip([&mut obs, &mut next_obs]) {
                out.reserve(t * width);
                for i in 0..t {
                    for (v, w) in cols {
                        out.extend_from_slice(&v[i * w..(i + 1) * w]);
                    }
                }
            }
            lengths.push(t);
        }
        let obs_dim = key_dims.iter().map(|w| w.unwrap_or(0)).sum();
        let dataset = Dataset::new(obs_dim, act_dim.unwrap_or(0), obs, actions, rewards, terminals, masks, next_obs)?;
        Ok(RobomimicData {
            dataset,
            env_args,
            demos,
            demo_lengths: lengths,
            obs_key_dims: keys.iter().cloned().zip(key_dims.into_iter().map(|w| w.unwrap_or(0))).collect(),
        })
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    const MAX: usize = 12;
    let mut s = names.iter().take(MAX).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > MAX {
        s.push_str(&format!(", ... ({} in all)", names.len()));
    }
    s
}
