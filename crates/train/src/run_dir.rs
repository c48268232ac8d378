//! A run's directory: its name, the resolved config.toml (the one writer of that file, for new
//! runs and for resumes with overrides) and run.json (seed, commit, command, start time).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mvp_nn::checkpoint;

use mvp_agent::TrainConfig;

/// The resolved config of a run, in its directory.
pub const CONFIG_FILE: &str = "config.toml";

/// Creates the run directory of a new run (`run.out_dir/run.name`, or
/// `{env}__{actor}__{seed}__{unix time}` without a name) with its config.toml and run.json;
/// refuses a directory that already holds a run.
pub fn create(config: &TrainConfig) -> Result<PathBuf> {
    let name = if config.run.name.is_empty() {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let actor: String = config
            .agent
            .actor
            .label()
            .replace('λ', "lambda")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect();
        // `robomimic/lift` names a task, not a folder.
        format!("{}__{actor}__{}__{secs}", config.env.name.replace('/', "-"), config.run.seed)
    } else {
        config.run.name.clone()
    };
    let run_dir = config.run.out_dir.join(name);
    if run_dir.join(CONFIG_FILE).exists() {
        bail!(
            "run directory {} already holds a run; resume it with `mvp train --resume {}` or choose another run.name",
            run_dir.display(),
            run_dir.display()
        );
    }
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    write_run_files(&run_dir, config)?;
    Ok(run_dir)
}

fn write_run_files(run_dir: &Path, config: &TrainConfig) -> Result<()> {
    let rev = git_revision();
    write_config(run_dir, config, &format!("git revision {rev}"))?;
    let meta = serde_json::json!({
        "seed": config.run.seed,
        "git_revision": rev,
        "command": std::env::args().collect::<Vec<_>>(),
        "started_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    });
    checkpoint::write_atomically(&run_dir.join("run.json"), serde_json::to_vec_pretty(&meta)?.as_slice())?;
    Ok(())
}

/// Writes the resolved `config` as the run's config.toml, under a header line with its seed
/// and `note`.
pub fn write_config(run_dir: &Path, config: &TrainConfig, note: &str) -> Result<()> {
    let text = config.to_toml()?;
    let header = format!("# Resolved config of this run. seed = {}, {note}\n", config.run.seed);
    checkpoint::write_atomically(&run_dir.join(CONFIG_FILE), format!("{header}{text}").as_bytes())
}

/// The commit the binary runs from (`git rev-parse HEAD`), or "unknown".
pub fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Before a resumed run logs again: drops the rows of `metrics.jsonl` and `metrics.csv` that
/// the stopped run logged after its checkpoint of step `step` (the resumed run logs those steps
/// again), and the evaluation rows of step `pending_eval` (an evaluation the resumed run
/// repeats). TensorBoard needs nothing: it discards the events of a file's steps that a later
/// event of a lower step orphans.
pub fn truncate_metrics(run_dir: &Path, step: u64, pending_eval: Option<u64>) -> Result<()> {
    let keep = |s: u64, eval: bool| s <= step && !(eval && Some(s) == pending_eval);
    let jsonl = run_dir.join("metrics.jsonl");
    if let Ok(text) = std::fs::read_to_string(&jsonl) {
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            let row: Option<serde_json::Value> = serde_json::from_str(line).ok();
            let s = row.as_ref().and_then(|r| r["step"].as_u64());
            let eval = row.as_ref().is_some_and(|r| r.get("eval/success").is_some());
            if s.is_some_and(|s| keep(s, eval)) {
                out.push_str(line);
                out.push('\n');
            }
        }
        if out.len() != text.len() {
            checkpoint::write_atomically(&jsonl, out.as_bytes())?;
        }
    }
    let csv = run_dir.join("metrics.csv");
    if let Ok(text) = std::fs::read_to_string(&csv) {
        let mut out = String::with_capacity(text.len());
        for (i, line) in text.lines().enumerate() {
            let mut fields = line.split(',');
            let s = fields.next().and_then(|f| f.parse::<u64>().ok());
            let eval = fields.nth(1).is_some_and(|name| name.starts_with("eval/"));
            if i == 0 || s.is_some_and(|s| keep(s, eval)) {
                out.push_str(line);
                out.push('\n');
            }
        }
        if out.len() != text.len() {
            checkpoint::write_atomically(&csv, out.as_bytes())?;
        }
    }
    Ok(())
}
