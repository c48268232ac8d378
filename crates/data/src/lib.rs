//! Where offline datasets come from: every producer of a [`mvp_replay::Dataset`] in one crate.
//!
//! - [`load`]: the dataset a run's [`DataConfig`] names — an OGBench `.npz` or a robomimic
//!   `.hdf5` file (made first by the venv's generator when it is missing and the config asks
//!   for it), or the native demonstrator's episodes.
//! - [`load_ogbench_dataset`]: OGBench `.npz` files (official, or made by
//!   [`OgbenchGenerate`] = `python -m mvp_envs.data_ogbench`) read with `npyz`, with the
//!   singletask reward/mask relabelling of OGBench's loader for an [`OgbenchTask`] at a chosen
//!   [`RewardTiming`].
//! - [`read_robomimic`]: robomimic low-dim HDF5 files (robomimic's own, or made by
//!   [`RobomimicGenerate`] = `python -m mvp_envs.data_robomimic`): r − 1 rewards, masks 0 at
//!   success, terminals at the end of each demo, with a filter key (all/train/valid). Meta-World
//!   demonstrations (`python -m mvp_envs.data_metaworld`) use the same layout with the
//!   observation key `state` (`metaworld/<task>`) or `pointcloud` (`metaworld-pc/<task>`).
//! - [`generate_dataset`]: rolls out the noisy scripted demonstrator of the native
//!   `branch-reach-v0` ([`mvp_envs::BranchReachDemo`]) with [`DemoStats`].
//!
//! Depends on `mvp-replay` (the [`mvp_replay::Dataset`] type) and `mvp-envs` (the native
//! environment, the venv's Python for the generators and the task query), `npyz`/`zip` (npz),
//! `hdf5-metno` (which links the system libhdf5: `scripts/setup-debian.sh` installs it), `serde`,
//! `anyhow`, `thiserror` and `tracing` — never on tch.
#![warn(missing_docs)]

mod demo;
mod generate;
mod npz;
mod ogbench;
mod robomimic;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use mvp_replay::Dataset;
use serde::{Deserialize, Serialize};

pub use demo::{generate_dataset, DemoStats, DEFAULT_DEMO_NOISE_STD};
pub use generate::{run_generator, OgbenchGenerate, RobomimicGenerate};
pub use ogbench::{
    load_ogbench_dataset, ogbench_val_path, OgbenchDataError, OgbenchNpz, OgbenchTask, RewardTiming, GOAL_TOLERANCE,
};
pub use robomimic::{
    read_robomimic, robomimic_make_command, RobomimicData, RobomimicError, RobomimicFilter, RobomimicOptions,
    ROBOMIMIC_OBS_KEYS,
};

/// The offline dataset of a run (the `[data]` table of a training config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset file: an OGBench `.npz` (official or from `mvp data ogbench`; singletask
    /// rewards and masks are relabelled for `env.name`) or a robomimic `.hdf5`. Empty: the
    /// native environment's demonstrator makes one, or none for pure online training
    /// (`demo_episodes = 0`).
    pub path: PathBuf,
    /// When `path` does not exist: 0 = stop with an error that gives the command making it;
    /// N > 0 = make it now with N episodes (OGBench: the scripted oracles).
    pub generate_episodes: usize,
    /// Processes that generate a missing dataset in parallel.
    pub generate_workers: usize,
    /// Episodes of the native demonstrator when no file is given.
    pub demo_episodes: usize,
    /// Action noise of the native demonstrator.
    pub demo_noise: f64,
    /// Dataset actions outside the environment's action space: `clip` them (counted in a
    /// warning) or `refuse` the dataset.
    pub out_of_range_actions: OutOfRangeActions,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            generate_episodes: 0,
            generate_workers: 2,
            demo_episodes: 200,
            demo_noise: 0.3,
            out_of_range_actions: OutOfRangeActions::Clip,
        }
    }
}

/// What [`check_dataset`] does with actions outside the action space (`data.out_of_range_actions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutOfRangeActions {
    /// Clip them to the bounds and say how many.
    #[default]
    Clip,
    /// Stop with an error naming the first.
    Refuse,
}

/// The dataset `config` names for environment `env` (`None`: pure online training), made
/// first where the config says so; `seed` seeds generators and the native demonstrator.
pub fn load(config: &DataConfig, env: &str, seed: u64) -> Result<Option<Dataset>> {
    if !config.path.as_os_str().is_empty() {
        return load_file(config, env, seed).map(Some);
    }
    if config.demo_episodes == 0 {
        return Ok(None);
    }
    if !mvp_envs::NATIVE_ENVS.contains(&env) {
        bail!(
            "no offline dataset for `{env}`: set data.path to an OGBench .npz (made by `mvp data ogbench`, or set \
             data.generate_episodes to make it) or a robomimic .hdf5; for pure online training set \
             data.demo_episodes=0 and schedule.offline_steps=0"
        );
    }
    let (data, stats) = generate_dataset(env, config.demo_episodes, config.demo_noise as f32, seed)?;
    tracing::info!(
        "generated {} transitions from {} demonstrator episodes (success rate {:.2})",
        data.len(),
        config.demo_episodes,
        stats.success_rate()
    );
    Ok(Some(data))
}

/// Checks a dataset before training trusts it: its observation and action sizes must match
/// the environment's (the error shows both); a non-finite value or a flag outside its domain
/// stops the run naming the file, the array, the episode and the row ([`Dataset::audit`]);
/// actions outside the action space are clipped with a counted warning or refused
/// (`config.out_of_range_actions`); an unclosed last episode ends as a truncation, said so.
pub fn check_dataset(data: &mut Dataset, spec: &mvp_envs::EnvSpec, config: &DataConfig) -> Result<()> {
    if data.obs_dim != spec.obs_dim || data.act_dim != spec.action_dim {
        bail!(
            "dataset shapes do not match the environment: dataset observations [{}, {}] and actions [{}, {}], \
             environment {} observations [{}] and actions [{}]; was the dataset made for another environment?",
            data.len(),
            data.obs_dim,
            data.len(),
            data.act_dim,
            spec.name,
            spec.obs_dim,
            spec.action_dim
        );
    }
    let source = match config.path.as_os_str().is_empty() {
        true => "the demonstrator's dataset".to_string(),
        false => config.path.display().to_string(),
    };
    let audit = data.audit();
    if let Some(f) = audit.flaws.first() {
        bail!(
            "{source}: `{}` holds {} {} value(s), the first in episode {}, row {} (column {}); the file is damaged or \
             was written wrong: regenerate it or fix that row (`mvp data check` lists every problem)",
            f.key,
            f.count,
            f.what,
            f.first.episode,
            f.first.row,
            f.first.column
        );
    }
    if let Some(f) = mvp_replay::Audit::actions_outside(data, &spec.action_low, &spec.action_high) {
        let (c, at) = (f.first.column, f.first);
        let where_ = format!(
            "the first in episode {}, row {} (dimension {c}: {} outside [{}, {}])",
            at.episode,
            at.row,
            data.actions[at.row * data.act_dim + c],
            spec.action_low[c],
            spec.action_high[c]
        );
        match config.out_of_range_actions {
            OutOfRangeActions::Refuse => bail!(
                "{source}: {} action values lie outside the action space, {where_}; data.out_of_range_actions = \"clip\" \
                 clips them",
                f.count
            ),
            OutOfRangeActions::Clip => {
                let n = data.clip_actions(&spec.action_low, &spec.action_high);
                tracing::warn!(
                    "{source}: clipped {n} action values outside the action space, {where_}; \
                     data.out_of_range_actions = \"refuse\" stops instead"
                );
            }
        }
    }
    if audit.open_tail {
        let last = data.terminals.len() - 1;
        data.terminals[last] = 1.0;
        tracing::warn!("{source}: its last episode has no terminal row; it ends as a truncation at row {last}");
    }
    Ok(())
}

/// Reads `config.path` (OGBench `.npz`; robomimic `.hdf5`), making it first when it is missing
/// and `generate_episodes > 0`.
fn load_file(config: &DataConfig, env: &str, seed: u64) -> Result<Dataset> {
    let path = &config.path;
    let (episodes, workers) = (config.generate_episodes, config.generate_workers);
    let missing = !path.exists() && episodes > 0;
    let announce = |what: &str| {
        tracing::info!("{} does not exist: generating {episodes} {what} with {workers} processes", path.display());
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("npz") => {
            let task = OgbenchTask::query(env).with_context(|| {
                format!(
                    "data.path {} is an OGBench file, but env.name `{env}` is not an OGBench singletask id",
                    path.display()
                )
            })?;
            if missing {
                let Some(dataset) = task.dataset.clone() else {
                    bail!("cannot generate a dataset for `{env}`: the id names no dataset (use e.g. cube-double-play-singletask-task2-v0)");
                };
                announce(&format!("episodes of {dataset}"));
                let generate = OgbenchGenerate { workers, seed, ..OgbenchGenerate::new(dataset, episodes, path) };
                run_generator(generate.command()?, path, false)?;
            }
            let data = load_ogbench_dataset(path, &task, RewardTiming::Next)?;
            tracing::info!(
                "loaded {} transitions from {} (rewards relabelled for task {})",
                data.len(),
                path.display(),
                task.task_id
            );
            Ok(data)
        }
        Some("hdf5" | "h5") if env.starts_with("metaworld/") || env.starts_with("metaworld-pc/") => {
            let (prefix, task) = env.split_once('/').expect("a metaworld id");
            let pointcloud = prefix == "metaworld-pc";
            if !path.exists() {
                if episodes == 0 {
                    bail!(
                        "data.path {} does not exist: make it with `mvp data metaworld --task {task} --episodes 10{} --out {0}` \
                         (or set data.generate_episodes)",
                        path.display(),
                        if pointcloud { " --pointcloud" } else { "" }
                    );
                }
                announce(&format!("scripted {task} demonstrations"));
                let generate =
                    RobomimicGenerate { seed, pointcloud, ..RobomimicGenerate::metaworld(task, episodes, path) };
                run_generator(generate.command()?, path, false)?;
            }
            let key = if pointcloud { "pointcloud" } else { "state" };
            let options = RobomimicOptions { obs_keys: vec![key.into()], ..Default::default() };
            let read = read_robomimic(path, &options)?;
            tracing::info!(
                "loaded {} transitions from {} Meta-World demos in {}",
                read.dataset.len(),
                read.demos.len(),
                path.display()
            );
            Ok(read.dataset)
        }
        Some("hdf5" | "h5") => {
            let task = env.strip_prefix("robomimic/");
            if missing {
                let task = task.with_context(|| {
                    format!(
                        "cannot generate {}: env.name `{env}` is not a robomimic task (robomimic/lift, can, square)",
                        path.display()
                    )
                })?;
                announce(&format!("scripted {task} demonstrations"));
                let generate = RobomimicGenerate { workers, seed, ..RobomimicGenerate::new(task, episodes, path) };
                run_generator(generate.command()?, path, false)?;
            }
            let options = RobomimicOptions { task: task.map(String::from), ..Default::default() };
            let read = read_robomimic(path, &options)?;
            tracing::info!(
                "loaded {} transitions from {} demos in {}",
                read.dataset.len(),
                read.demos.len(),
                path.display()
            );
            Ok(read.dataset)
        }
        _ => bail!(
            "data.path {}: unknown dataset format; expected an OGBench `.npz` or a robomimic `.hdf5` file",
            path.display()
        ),
    }
}
