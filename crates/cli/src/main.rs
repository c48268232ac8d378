//! The `mvp` command-line tool: training, evaluation, data generation, benchmarks, export.
//!
//! The top of the crate graph: it depends on `mvp-agent` and on the crates its commands use
//! directly (`data` for `mvp data`, `infer` for the benchmarks, `logging` for reports), plus
//! clap, tch and `tracing-subscriber`.

mod bench;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Mean velocity policy: one-step generative RL, offline-to-online.
#[derive(Debug, Parser)]
#[command(name = "mvp", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info`, `debug`, `mvp=trace`.
    #[arg(long, global = true, default_value = "info", env = "MVP_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train an agent (offline, online, or offline-to-online).
    Train {
        /// TOML config file (optional with --resume: the run's own config is used).
        #[arg(long, required_unless_present = "resume")]
        config: Option<PathBuf>,
        /// Override a config value, e.g. `--set agent.num_samples=8` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Continue the run in this directory from its latest checkpoint.
        #[arg(long)]
        resume: Option<PathBuf>,
    },
    /// Evaluate a run's latest checkpoint.
    Eval {
        /// Run directory.
        #[arg(long)]
        run: PathBuf,
        /// Number of evaluation episodes.
        #[arg(long, default_value_t = 50)]
        episodes: usize,
        /// Acting engine: libtorch (the training code), native-f32 or native-bf16 (mvp-infer,
        /// MVP and flow actors; bf16 needs AMX or AVX512-BF16).
        #[arg(long, value_enum, default_value = "libtorch")]
        engine: EvalEngine,
        /// Override a setting of the run's config for this evaluation, e.g. `--set
        /// agent.num_samples=1` (no selection) or `--set agent.actor.sampling_steps=4` (the same
        /// MVP network sampled in 4 steps) (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Generate datasets with scripted demonstrators.
    #[command(subcommand)]
    Data(DataCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Export a trained actor for deployment.
    Export {
        /// Run directory.
        #[arg(long)]
        run: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// A results table and learning curves (PNG) from a folder of runs.
    Report(report::ReportArgs),
    /// Print the libtorch build, devices and thread settings.
    Info,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// An OGBench play dataset (npz) from the scripted oracles.
    Ogbench {
        /// Dataset name, e.g. cube-double-play-v0 (play: plan oracles; noisy: Markov oracles).
        #[arg(long)]
        env: String,
        /// Training episodes (OGBench's official play datasets: 1000 of 1000 steps).
        #[arg(long, default_value_t = 1000)]
        episodes: usize,
        /// Output file FILE.npz; the validation split goes to FILE-val.npz.
        #[arg(long)]
        out: PathBuf,
        /// Parallel processes.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Rows per episode (OGBench: 1001).
        #[arg(long)]
        episode_length: Option<usize>,
        /// Validation episodes (default: a tenth of --episodes, at least 1).
        #[arg(long)]
        val_episodes: Option<usize>,
    },
    /// A robomimic-format dataset (HDF5) from scripted demonstrators.
    Robomimic {
        /// lift, can or square.
        #[arg(long)]
        task: String,
        /// Successful demonstrations to keep.
        #[arg(long, default_value_t = 200)]
        episodes: usize,
        /// Output file (robomimic's low-dim HDF5 layout).
        #[arg(long)]
        out: PathBuf,
        /// Parallel processes.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Seed (episode i resets with seed + i).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Gaussian action noise of the demonstrator.
        #[arg(long, default_value_t = 0.0)]
        noise: f64,
    },
}

/// Says that a command exists in the interface but not yet in the code, and which issue
/// tracks it.
fn not_implemented(what: &str, issue: u32) -> anyhow::Result<()> {
    anyhow::bail!("`mvp {what}` is not implemented yet (tracked in issue #{issue})")
}

fn train(config: Option<PathBuf>, overrides: Vec<String>, resume: Option<PathBuf>) -> anyhow::Result<()> {
    let mut trainer = match resume {
        Some(dir) => {
            if config.is_some() {
                anyhow::bail!("--resume uses the run's own config.toml; pass changes with --set instead of --config");
            }
            let trainer = mvp_agent::Trainer::resume(&dir, &overrides)?;
            trainer.record_overrides(&overrides)?;
            trainer
        }
        None => mvp_agent::Trainer::new(mvp_agent::TrainConfig::load(config.as_deref(), &overrides)?)?,
    };
    let summary = trainer.run()?;
    if !summary.curve.is_empty() {
        println!("learning curve (evaluation success; online from step {}):", summary.offline_steps);
        println!("  {:>9}  {:>7}", "step", "success");
        for (step, success) in &summary.curve {
            let phase = if *step <= summary.offline_steps { "offline" } else { "online" };
            println!("  {step:>9}  {success:>7.3}  {phase}");
        }
    }
    println!("wall time {:.1} min", summary.seconds / 60.0);
    match &summary.eval {
        Some(e) => println!(
            "evaluation after {} steps: success rate {:.3} over {} episodes (mean return {:.2})",
            summary.steps, e.success_rate, e.episodes, e.mean_return
        ),
        None => println!("stopped after {} steps", summary.steps),
    }
    let d = summary.run_dir.display();
    println!("run directory: {d}");
    println!("  learning curve  {d}/learning_curve.png");
    println!("  metrics         {d}/metrics.csv (and metrics.jsonl)");
    println!("  TensorBoard     tensorboard --logdir {d}/tb");
    println!("  checkpoints     {d}/checkpoints (resume: mvp train --resume {d}; evaluate: mvp eval --run {d})");
    Ok(())
}

/// The engines `mvp eval` can act with.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EvalEngine {
    /// The training code (tch).
    Libtorch,
    /// mvp-infer in fp32.
    NativeF32,
    /// mvp-infer in bf16.
    NativeBf16,
}

fn eval(run: PathBuf, episodes: usize, engine: EvalEngine, mut overrides: Vec<String>) -> anyhow::Result<()> {
    overrides.push(format!("schedule.eval_episodes={episodes}"));
    let mut run = mvp_agent::RunEvaluation::open(&run, &overrides)?;
    tracing::info!("evaluating the checkpoint of step {}", run.step());
    let r = match engine {
        EvalEngine::Libtorch => run.evaluate()?,
        EvalEngine::NativeF32 => run.evaluate_native(mvp_infer::Precision::F32)?,
        EvalEngine::NativeBf16 => run.evaluate_native(mvp_infer::Precision::Bf16)?,
    };
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train { config, overrides, resume } => train(config, overrides, resume),
        Command::Eval { run, episodes, engine, overrides } => eval(run, episodes, engine, overrides),
        Command::Data(DataCommand::Ogbench { env, episodes, out, workers, seed, episode_length, val_episodes }) => {
            let g = mvp_data::OgbenchGenerate {
                workers,
                seed,
                episode_length,
                val_episodes,
                ..mvp_data::OgbenchGenerate::new(env, episodes, &out)
            };
            // Progress goes to stderr; the generator's JSON summary is our stdout.
            mvp_data::run_generator(g.command()?, &out, true)
        }
        Command::Data(DataCommand::Robomimic { task, episodes, out, workers, seed, noise }) => {
            let g = mvp_data::RobomimicGenerate {
                workers,
                seed,
                noise,
                ..mvp_data::RobomimicGenerate::new(task, episodes, &out)
            };
            mvp_data::run_generator(g.command()?, &out, true)
        }
        Command::Export { .. } => not_implemented("export", 7),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Report(args) => report::run(args),
        Command::Info => {
            println!("mvp {}", env!("CARGO_PKG_VERSION"));
            println!("libtorch threads: {}", tch::get_num_threads());
            // Whether libtorch's CUDA library is in the process tells a CPU build (or a binary
            // linked before `MVP_CUDA=1 make setup`) from a machine without a GPU or driver.
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
            let cuda_lib = if maps.contains("libtorch_cuda.so") {
                "loaded"
            } else {
                "not loaded (CPU build; on a GPU machine run `MVP_CUDA=1 make setup`, then `cargo build --release`)"
            };
            println!("libtorch CUDA library: {cuda_lib}");
            println!("cuda available: {} ({} devices)", tch::Cuda::is_available(), tch::Cuda::device_count());
            println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
