//! `mvp report`: a results table and learning curves from a folder of runs.
//!
//! Every sub-folder of `--runs` that holds a `metrics.jsonl` is a run. Runs are grouped by
//! their folder name up to the last `__` (`mvp__seed0` and `mvp__seed1` form the group `mvp`).
//! Per run: the last value of the metric (default `eval/success`) and the wall time from the
//! run's start to its last record. Per group: mean ± std over runs, and the mean curve over
//! the steps that every run of the group logged.
//!
//! Writes `results.csv` (one row per run), `summary.md` (one row per group), `curves.csv`
//! (mean and std per logged step, with the mean seconds since the run's start),
//! `learning_curves.png` (against steps) and `learning_curves_wallclock.png` (against wall-clock
//! seconds) into `--out`, and prints the summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

/// Options of `mvp report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Folder whose sub-folders are run directories.
    #[arg(long)]
    runs: PathBuf,
    /// Metric to tabulate and plot.
    #[arg(long, default_value = "eval/success")]
    metric: String,
    /// Output folder (default: the runs folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Title of the plot.
    #[arg(long, default_value = "")]
    title: String,
}

impl ReportArgs {
    /// The default report of the runs in `runs`, written there.
    pub fn folder(runs: PathBuf) -> Self {
        Self { runs, metric: "eval/success".into(), out: None, title: String::new() }
    }
}

struct Run {
    group: String,
    name: String,
    /// (step, value, wall time of the record in seconds since the run's start).
    curve: Vec<(u64, f64, f64)>,
    seconds: f64,
}

fn read_run(dir: &Path, metric: &str) -> Result<Option<Run>> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (mut curve, mut first, mut last) = (Vec::new(), f64::NAN, f64::NAN);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("bad line in {}", path.display()))?;
        if let Some(t) = v["wall_time"].as_f64() {
            if first.is_nan() {
                first = t;
            }
            last = t;
        }
        if let (Some(step), Some(x)) = (v["step"].as_u64(), v[metric].as_f64()) {
            curve.push((step, x, v["wall_time"].as_f64().unwrap_or(f64::NAN)));
        }
    }
    if curve.is_empty() {
        return Ok(None);
    }
    // The run's start, when run.json has it (the first log comes after dataset loading).
    let started = std::fs::read(dir.join("run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["started_unix"].as_f64())
        .unwrap_or(first);
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let group = name.rsplit_once("__").map(|(g, _)| g.to_string()).unwrap_or_else(|| name.clone());
    for p in &mut curve {
        p.2 -= started;
    }
    Ok(Some(Run { group, name, curve, seconds: last - started }))
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Runs `mvp report`.
pub fn run(args: ReportArgs) -> Result<()> {
    let mut runs = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&args.runs)
        .with_context(|| format!("reading {}", args.runs.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("metrics.jsonl").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        if let Some(run) = read_run(&dir, &args.metric)? {
            runs.push(run);
        }
    }
    if runs.is_empty() {
        bail!("no run under {} logged `{}`", args.runs.display(), args.metric);
    }
    let out = args.out.clone().unwrap_or_else(|| args.runs.clone());
    std::fs::create_dir_all(&out)?;
    let mut csv = format!("group,run,final_{},seconds\n", args.metric.replace('/', "_"));
    for r in &runs {
        csv +=
            &format!("{},{},{},{:.0}\n", r.group, r.name, r.curve.last().map(|p| p.1).unwrap_or(f64::NAN), r.seconds);
    }
    std::fs::write(out.join("results.csv"), csv)?;

    let mut groups: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for r in &runs {
        groups.entry(r.group.as_str()).or_default().push(r);
    }
    let mut md = format!(
        "| group | runs | final {} (mean ± std) | per run | time per run (mean) |\n|---|---|---|---|---|\n",
        args.metric
    );
    let mut curves_csv = String::from("group,step,mean,std,runs,seconds\n");
    let (mut series, mut series_wall) = (Vec::new(), Vec::new());
    for (group, rs) in &groups {
        let finals: Vec<f64> = rs.iter().filter_map(|r| r.curve.last().map(|p| p.1)).collect();
        let (m, s) = mean_std(&finals);
        let each: Vec<String> = finals.iter().map(|x| format!("{x:.2}")).collect();
        let (t, _) = mean_std(&rs.iter().map(|r| r.seconds).collect::<Vec<_>>());
        md += &format!("| {group} | {} | {m:.3} ± {s:.3} | {} | {:.1} min |\n", rs.len(), each.join(", "), t / 60.0);
        // The mean curve over the steps every run of the group logged.
        let mut by_step: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
        for r in rs {
            for &(step, x, secs) in &r.curve {
                by_step.entry(step).or_default().push((x, secs));
            }
        }
        let (mut points, mut points_wall) = (Vec::new(), Vec::new());
        for (step, xs) in by_step.into_iter().filter(|(_, xs)| xs.len() == rs.len()) {
            let (m, s) = mean_std(&xs.iter().map(|p| p.0).collect::<Vec<_>>());
            let (secs, _) = mean_std(&xs.iter().map(|p| p.1).collect::<Vec<_>>());
            curves_csv += &format!("{group},{step},{m},{s},{},{secs:.1}\n", xs.len());
            points.push((step as f64, m));
            if secs.is_finite() {
                points_wall.push((secs, m));
            }
        }
        series.push((group.to_string(), points));
        series_wall.push((group.to_string(), points_wall));
    }
    std::fs::write(out.join("summary.md"), &md)?;
    std::fs::write(out.join("curves.csv"), curves_csv)?;
    let series_ref: Vec<(&str, Vec<(f64, f64)>)> = series.iter().map(|(g, p)| (g.as_str(), p.clone())).collect();
    let title = if args.title.is_empty() { format!("{} (mean over runs)", args.metric) } else { args.title.clone() };
    mvp_logging::plot_curves(out.join("learning_curves.png"), &title, &series_ref, "step", &args.metric)?;
    let wall_ref: Vec<(&str, Vec<(f64, f64)>)> = series_wall.iter().map(|(g, p)| (g.as_str(), p.clone())).collect();
    let x_label = "wall-clock seconds since the run's start (mean over runs)";
    mvp_logging::plot_curves(out.join("learning_curves_wallclock.png"), &title, &wall_ref, x_label, &args.metric)?;
    print!("{md}");
    println!(
        "\nwrote results.csv, summary.md, curves.csv, learning_curves.png and learning_curves_wallclock.png to {}",
        out.display()
    );
    Ok(())
}
