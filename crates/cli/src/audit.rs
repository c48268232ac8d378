//! `mvp audit RUN`: whether a run directory is sound after whatever happened to it (worker
//! crashes, interrupts, a full disk, resumes): its checkpoint verifies, its replay buffer holds
//! every online step once and no transition that joins two episodes, and its metrics log no
//! value twice and miss no periodic row. Exit status 1 when something is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use mvp_agent::TrainConfig;
use mvp_nn::checkpoint;
use mvp_replay::ReplayBuffer;

/// Prints what it checks, one line each; `Ok(false)` when a check fails.
pub fn run(run_dir: &Path, step: Option<u64>) -> Result<bool> {
    let config = TrainConfig::load(Some(&run_dir.join("config.toml")), &[])
        .with_context(|| format!("{} is not a run directory", run_dir.display()))?;
    let root = run_dir.join("checkpoints");
    let name = match step {
        Some(s) => checkpoint::step_name(s),
        None => checkpoint::latest(&root).with_context(|| format!("no checkpoint in {}", root.display()))?,
    };
    let ckpt: checkpoint::Loaded<serde_json::Value> = checkpoint::load(&root.join(&name))?;
    let meta = &ckpt.meta;
    let number = |key: &str| meta[key].as_u64().with_context(|| format!("checkpoint {name} has no {key}"));
    let (at, online_rows) = (number("step")?, number("online_rows")?);
    let restarts = number("env_restarts").unwrap_or(0);
    println!(
        "{}: checkpoint {name} verified (step {at}; {} episodes online, {} worker restarts)",
        run_dir.display(),
        number("episodes").unwrap_or(0),
        restarts
    );
    let mut sound = true;
    let mut check = |ok: bool, line: String| {
        println!("  {} {line}", if ok { "ok  " } else { "FAIL" });
        sound &= ok;
    };

    let s = &config.schedule;
    let online_steps = at.saturating_sub(s.offline_steps);
    let buffer_file = ckpt.dir.join("buffer.bin");
    if !buffer_file.exists() {
        println!("  ---- no replay buffer in the checkpoint (schedule.save_buffer = false): buffer checks skipped");
    } else {
        let buffer = ReplayBuffer::load(&buffer_file)?;
        if config.env.num_envs == 1 {
            // A step whose worker died has no next observation, so no transition: the run
            // counts it as a restart (`env/restarts`) and ends the episode before it.
            check(
                online_rows + restarts == online_steps,
                format!(
                    "{online_rows} online transitions stored for {online_steps} online steps ({restarts} cut by a \
                     worker's death, which leaves no transition)"
                ),
            );
        } else {
            check(
                online_rows <= online_steps * config.env.num_envs as u64,
                format!(
                    "{online_rows} online transitions stored for {online_steps} steps of {} environments (running \
                     episodes are stored when they end)",
                    config.env.num_envs
                ),
            );
        }
        let dataset_rows = buffer.len() as u64 - online_rows.min(buffer.len() as u64);
        match dataset_len(&config)? {
            Some(n) if buffer.len() < buffer.capacity() => check(
                dataset_rows == n.min(s.buffer_capacity as u64),
                format!("{} rows in the buffer: the dataset's {n} and the online ones", buffer.len()),
            ),
            Some(_) => {
                println!("  ---- the buffer is full: older rows were replaced, the dataset count is not checked")
            }
            None if config.data.path.as_os_str().is_empty() => {
                println!("  ---- the dataset was made in memory, not read from a file: its rows are not counted")
            }
            None => {
                println!("  ---- the dataset file {} is gone: its rows are not counted", config.data.path.display())
            }
        }
        let joins = buffer.joins();
        let ends = buffer.episode_ends().iter().filter(|&&e| e).count();
        check(
            joins.is_empty(),
            format!(
                "{} transitions that join two episodes ({ends} episode ends){}",
                joins.len(),
                joins.first().map(|j| format!(", the first at row {j} from the oldest")).unwrap_or_default()
            ),
        );
    }

    // The online warm-up makes no update, so it logs no periodic row.
    let warmup = s.offline_steps + 1..=s.offline_steps + s.warmup_steps;
    let (twice, mut missing, rows) = metrics_gaps(&run_dir.join("metrics.jsonl"), s.log_interval, at)?;
    missing.retain(|step| !warmup.contains(step));
    check(
        twice.is_empty(),
        format!("{rows} metric rows: {} values logged twice at one step{}", twice.len(), first(&twice)),
    );
    check(
        missing.is_empty(),
        format!(
            "periodic rows every {} steps up to {at} (none in the warm-up): {} missing{}",
            s.log_interval,
            missing.len(),
            first(&missing)
        ),
    );
    Ok(sound)
}

fn first<T: std::fmt::Debug>(items: &[T]) -> String {
    items.first().map(|x| format!(" (the first: {x:?})")).unwrap_or_default()
}

/// The number of transitions in the run's dataset file, when it has one.
fn dataset_len(config: &TrainConfig) -> Result<Option<u64>> {
    if config.data.path.as_os_str().is_empty() || !config.data.path.exists() {
        return Ok(None);
    }
    let data = mvp_data::DataConfig { demo_episodes: 0, generate_episodes: 0, ..config.data.clone() };
    Ok(mvp_data::load(&data, &config.env.name, config.run.seed)?.map(|d| d.len() as u64))
}

/// In a metrics.jsonl up to step `until`: the (step, key) pairs logged more than once, the
/// multiples of `interval` with no periodic row (one with `time/sps`), and the rows read.
#[allow(clippy::type_complexity)]
fn metrics_gaps(path: &Path, interval: u64, until: u64) -> Result<(Vec<(u64, String)>, Vec<u64>, usize)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut seen: BTreeMap<(u64, String), usize> = BTreeMap::new();
    let mut periodic = BTreeSet::new();
    let mut rows = 0;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), i + 1))?;
        let step = row.get("step").and_then(|s| s.as_u64()).with_context(|| format!("line {} has no step", i + 1))?;
        if step > until {
            continue; // logged after the checkpoint audited
        }
        rows += 1;
        if row.contains_key("time/sps") {
            periodic.insert(step);
        }
        for key in row.keys().filter(|k| *k != "step" && *k != "wall_time") {
            *seen.entry((step, key.clone())).or_default() += 1;
        }
    }
    let twice = seen.into_iter().filter(|(_, n)| *n > 1).map(|(k, _)| k).collect();
    let missing = (1..=until / interval.max(1)).map(|k| k * interval).filter(|s| !periodic.contains(s)).collect();
    Ok((twice, missing, rows))
}
