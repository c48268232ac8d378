//! The `mvp` command-line tool: training, evaluation, data generation, benchmarks, export.
//!
//! The top of the crate graph: it depends on `mvp-agent` and on the crates its commands use
//! directly (`data` for `mvp data`, `infer` for the benchmarks, `logging` for reports), plus
//! clap, tch and `tracing-subscriber`.

mod audit;
mod bench;
mod data_check;
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
        /// With --resume: continue from the checkpoint of this step instead (e.g. the newest
        /// intact one, when the latest is damaged).
        #[arg(long, requires = "resume")]
        resume_step: Option<u64>,
        /// Only read and check the config (file and --set overrides), print it resolved as
        /// TOML and exit: nothing is trained (`mvp sweep` checks every run this way first).
        #[arg(long, conflicts_with = "resume")]
        check: bool,
    },
    /// Evaluate a run's checkpoint (`--run`) or an exported policy (`--policy`): no dataset, no
    /// replay buffer, no training environments.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["run", "policy"])))]
    Eval {
        /// Run directory (its latest checkpoint, or --step).
        #[arg(long)]
        run: Option<PathBuf>,
        /// With --run: the checkpoint of this step.
        #[arg(long, requires = "run")]
        step: Option<u64>,
        /// A policy folder written by `mvp export` (or a run's `best/`), on the native engine
        /// with the environment and protocol it records.
        #[arg(long, conflicts_with_all = ["step", "overrides"])]
        policy: Option<PathBuf>,
        /// Number of evaluation episodes (default: the run's or the policy's protocol, 50).
        #[arg(long)]
        episodes: Option<usize>,
        /// Acting engine: libtorch (the training code; --run only) or native (mvp-infer, MVP
        /// and flow actors). Default: libtorch for --run, native for --policy.
        #[arg(long, value_enum)]
        engine: Option<mvp_agent::config::Engine>,
        /// The native engine's number format: f32, or bf16 (bf16 inputs and weights with fp32
        /// accumulation; CPUs with AVX512-BF16).
        #[arg(long, default_value = "f32")]
        precision: mvp_nn::MatmulPrecision,
        /// Also record this many episodes as GIF videos (MuJoCo environments: OGBench,
        /// robomimic), offscreen.
        #[arg(long, default_value_t = 0)]
        video: usize,
        /// Frame width and height of the videos.
        #[arg(long, value_delimiter = ',', default_values_t = [256, 256])]
        video_size: Vec<u32>,
        /// Where the videos go (default: `RUN/videos` or `POLICY/videos`).
        #[arg(long)]
        video_dir: Option<PathBuf>,
        /// With --run: override a setting of the run's config for this evaluation, e.g. `--set
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
    /// Export a run's trained policy (actor, critic members for selection, N) as a folder that
    /// acts without libtorch: policy.safetensors + policy.json (mvp-infer, envs/mvp_policy.py).
    Export {
        /// Run directory.
        #[arg(long)]
        run: PathBuf,
        /// The checkpoint of this step (default: the latest).
        #[arg(long)]
        step: Option<u64>,
        /// Output folder (created; files in it are replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a run directory: its checkpoint verifies, its replay buffer holds every online
    /// step once and joins no two episodes, its metrics repeat and miss nothing.
    Audit {
        /// Run directory.
        run: PathBuf,
        /// The checkpoint of this step (default: the latest).
        #[arg(long)]
        step: Option<u64>,
    },
    /// A results table and learning curves (PNG) from a folder of runs.
    Report(report::ReportArgs),
    /// A grid of training runs (configs × variants × seeds from a TOML file) as Ray tasks on a
    /// local Ray instance or an existing cluster; runs resume from their checkpoints after a
    /// failure; then `mvp report` of the runs.
    Sweep {
        /// The sweep file (see envs/mvp_envs/sweep.py for its keys).
        file: PathBuf,
        /// A Ray cluster to use (HEAD:PORT); default: start a local Ray instance.
        #[arg(long)]
        address: Option<String>,
    },
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
    /// What a dataset file holds, checked as a run would load it: episodes and lengths, the
    /// action range, non-finite values and bad flags (named by episode and row), and the
    /// successes per task (OGBench) or per episode.
    Check {
        /// The dataset (.npz or .hdf5).
        file: PathBuf,
        /// The environment a run would use it for (`env.name`), e.g. robomimic/lift or
        /// ogbench/cube-double-play-singletask-task2-v0.
        #[arg(long)]
        env: String,
    },
    /// Meta-World demonstrations (robomimic's HDF5 layout, observation key `state`) from
    /// Meta-World's scripted policies; only successful episodes are kept.
    Metaworld {
        /// A Meta-World v3 task, e.g. door-open-v3 (the env is `metaworld/<task>`).
        #[arg(long)]
        task: String,
        /// Successful demonstrations to keep (MP1: 10).
        #[arg(long, default_value_t = 10)]
        episodes: usize,
        /// Output file (.hdf5).
        #[arg(long)]
        out: PathBuf,
        /// Seed (episode i resets with seed + i).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Gaussian action noise of the scripted policy.
        #[arg(long, default_value_t = 0.0)]
        noise: f64,
        /// Keep point-cloud observations too (key `pointcloud`, for `metaworld-pc/<task>` runs):
        /// 512 xyz points of one depth camera and the hand's state.
        #[arg(long)]
        pointcloud: bool,
    },
}

fn train(
    config: Option<PathBuf>,
    overrides: Vec<String>,
    resume: Option<PathBuf>,
    resume_step: Option<u64>,
) -> anyhow::Result<()> {
    let mut trainer = match resume {
        Some(dir) => {
            if config.is_some() {
                anyhow::bail!("--resume uses the run's own config.toml; pass changes with --set instead of --config");
            }
            let trainer = mvp_train::Trainer::resume_from(&dir, &overrides, resume_step)?;
            trainer.record_overrides(&overrides)?;
            trainer
        }
        None => mvp_train::Trainer::new(mvp_agent::TrainConfig::load(config.as_deref(), &overrides)?)?,
    };
    // Safe stop: the first SIGINT/SIGTERM lets the current update finish, writes a checkpoint
    // and ends the run with the command that resumes it; a second one stops at once.
    let stop = trainer.stop_handle();
    ctrlc::set_handler(move || {
        if stop.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: stopping now, without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing this update and writing a checkpoint (interrupt again to stop at once)");
    })?;
    let summary = trainer.run()?;
    if summary.interrupted {
        let d = summary.run_dir.display();
        eprintln!("stopped at step {} with a checkpoint; continue with: mvp train --resume {d}", summary.steps);
        std::process::exit(130);
    }
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

/// `mvp sweep`: the Ray driver (`python -m mvp_envs.sweep`) runs the grid with this binary, then
/// the runs' report is written next to them.
fn sweep(file: PathBuf, address: Option<String>) -> anyhow::Result<()> {
    let mut cmd = mvp_envs::python_module_command("mvp_envs.sweep")?;
    cmd.arg(std::path::absolute(&file)?).arg("--mvp").arg(std::env::current_exe()?);
    cmd.arg("--root").arg(std::env::current_dir()?);
    if let Some(a) = address {
        cmd.arg("--address").arg(a);
    }
    let out = cmd.stderr(std::process::Stdio::inherit()).output()?;
    let summary: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(_) if out.status.code() == Some(2) => {
            anyhow::bail!("the sweep file {} was refused (above)", file.display())
        }
        Err(_) => anyhow::bail!("the sweep driver failed ({}); see its messages above", out.status),
    };
    let runs = summary["runs"].as_object().cloned().unwrap_or_default();
    let done = runs.values().filter(|r| r["state"] == "done").count();
    let dir = PathBuf::from(summary["out"].as_str().unwrap_or_default());
    println!(
        "sweep: {done} of {} runs done in {:.0} s, in {}",
        runs.len(),
        summary["seconds"].as_f64().unwrap_or(0.0),
        dir.display()
    );
    for (name, r) in &runs {
        let resumed = r["resumes"].as_u64().unwrap_or(0);
        println!(
            "  {name:<40} {:<7} starts {} (resumed {resumed}×) on {}",
            r["state"].as_str().unwrap_or("?"),
            r["starts"],
            r["host"]
        );
    }
    if done > 0 {
        report::run(report::ReportArgs::folder(dir.clone()))?;
    }
    anyhow::ensure!(
        done == runs.len(),
        "{} of {} runs did not finish; run the same sweep again to continue them",
        runs.len() - done,
        runs.len()
    );
    Ok(())
}

/// How `mvp eval` acts: the engine (`None`: the default of --run or --policy) and the native
/// engine's number format.
struct Acting {
    engine: Option<mvp_agent::config::Engine>,
    precision: mvp_nn::MatmulPrecision,
}

impl Acting {
    /// The native engine's format, or `None` for libtorch; `default` where no engine is named.
    fn native(&self, default: mvp_agent::config::Engine) -> Option<mvp_infer::Precision> {
        use mvp_agent::config::Engine;
        match (self.engine.unwrap_or(default), self.precision) {
            (Engine::Libtorch, _) => None,
            (_, mvp_nn::MatmulPrecision::F32) => Some(mvp_infer::Precision::F32),
            (_, mvp_nn::MatmulPrecision::Bf16) => Some(mvp_infer::Precision::Bf16),
        }
    }
}

/// What `mvp eval` is asked for besides the evaluation: videos.
struct VideoArgs {
    episodes: usize,
    size: [u32; 2],
    dir: Option<PathBuf>,
}

fn eval(
    run: Option<PathBuf>,
    step: Option<u64>,
    policy: Option<PathBuf>,
    episodes: Option<usize>,
    acting: Acting,
    video: VideoArgs,
    mut overrides: Vec<String>,
) -> anyhow::Result<()> {
    use mvp_agent::config::Engine;
    let (r, videos) = match (run, policy) {
        (Some(run), _) => {
            if let Some(n) = episodes {
                overrides.push(format!("schedule.eval_episodes={n}"));
            }
            let mut eval = mvp_train::RunEvaluation::open(&run, step, &overrides)?;
            tracing::info!("evaluating the checkpoint of step {}", eval.step());
            let precision = acting.native(Engine::Libtorch);
            let r = match precision {
                None => eval.evaluate()?,
                Some(p) => eval.evaluate_native(p)?,
            };
            let dir = video.dir.unwrap_or_else(|| run.join("videos"));
            let videos = match video.episodes {
                0 => Vec::new(),
                k => eval.record(k, video.size, precision, &dir)?,
            };
            (r, videos)
        }
        (None, Some(dir)) => {
            let file = mvp_infer::PolicyFile::load(&dir)?;
            let Some(precision) = acting.native(Engine::Native) else {
                anyhow::bail!("an exported policy runs on the native engine (--engine native), not libtorch");
            };
            let env = file.spec.metadata.get("env").and_then(|v| v.as_str()).unwrap_or("?").to_string();
            tracing::info!("evaluating the policy in {} on {env}", dir.display());
            let r = mvp_train::eval::evaluate_policy(&file, precision, episodes)?;
            let videos = match video.episodes {
                0 => Vec::new(),
                k => {
                    let out = video.dir.unwrap_or_else(|| dir.join("videos"));
                    mvp_train::eval::record_policy(&file, precision, k, video.size, &out)?
                }
            };
            (r, videos)
        }
        (None, None) => unreachable!("clap requires --run or --policy"),
    };
    println!("{}", serde_json::to_string_pretty(&r)?);
    for v in &videos {
        let outcome = if v.success { "success" } else { "no success" };
        println!("video {} ({} frames, {} steps, {outcome})", v.path.display(), v.frames, v.length);
    }
    Ok(())
}

fn export(run: PathBuf, step: Option<u64>, out: PathBuf) -> anyhow::Result<()> {
    let file = mvp_train::eval::export_run(&run, step, &[])?;
    file.save(&out)?;
    let s = &file.spec;
    let step = s.metadata.get("step").and_then(|v| v.as_u64()).unwrap_or_default();
    println!(
        "exported step {step} of {}: {} actor ({} network calls), N = {}, {} critic members → {}",
        run.display(),
        s.actor.kind,
        s.actor.steps,
        s.num_samples,
        s.critic.as_ref().map_or(0, |c| c.members),
        out.display()
    );
    println!("  evaluate: mvp eval --policy {}", out.display());
    println!("  Python:   envs/mvp_policy.py (NumPy only) loads it");
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train { config, overrides, check: true, .. } => {
            print!("{}", mvp_agent::TrainConfig::load(config.as_deref(), &overrides)?.to_toml()?);
            Ok(())
        }
        Command::Train { config, overrides, resume, resume_step, check: false } => {
            train(config, overrides, resume, resume_step)
        }
        Command::Eval { run, step, policy, episodes, engine, precision, video, video_size, video_dir, overrides } => {
            let [w, h] = video_size[..] else {
                anyhow::bail!("--video-size takes WIDTH,HEIGHT (e.g. 256,256), got {video_size:?}");
            };
            let video = VideoArgs { episodes: video, size: [w, h], dir: video_dir };
            eval(run, step, policy, episodes, Acting { engine, precision }, video, overrides)
        }
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
        Command::Data(DataCommand::Metaworld { task, episodes, out, seed, noise, pointcloud }) => {
            let g = mvp_data::RobomimicGenerate {
                seed,
                noise,
                pointcloud,
                ..mvp_data::RobomimicGenerate::metaworld(task, episodes, &out)
            };
            mvp_data::run_generator(g.command()?, &out, true)
        }
        Command::Data(DataCommand::Check { file, env }) => data_check::run(file, env),
        Command::Export { run, step, out } => export(run, step, out),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Report(args) => report::run(args),
        Command::Audit { run, step } => {
            if !audit::run(&run, step)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Sweep { file, address } => sweep(file, address),
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
        // Colour codes only for a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
