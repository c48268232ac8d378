//! `mvp bench ...`: speed and quality measurements. `jvp` (here), `latency`, `train` and
//! `gemm` (speed.rs), `env` (env.rs), `expressiveness` (expressiveness.rs). They reach the
//! native engine only through its public API (`mvp_infer::{NativePolicy, PackedLinear}` and
//! the agent's export).

mod env;
mod expressiveness;
mod speed;

use anyhow::Result;
use clap::Subcommand;
use mvp_nn::{jvp_autograd, ForwardJvp, Mlp, MlpConfig, Runtime};
use serde::Serialize;
use tch::{nn, Kind, Tensor};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Cost of a Jacobian-vector product relative to one forward pass (the MeanFlow target).
    Jvp {
        /// Batch size.
        #[arg(long, default_value_t = 256)]
        batch: i64,
        /// Input width (paper-sized actor: obs 40 + chunk 25 + 2 times ≈ 67).
        #[arg(long, default_value_t = 67)]
        input: i64,
        /// Output width (chunk 5×5).
        #[arg(long, default_value_t = 25)]
        output: i64,
        /// Timed repetitions of each operation.
        #[arg(long, default_value_t = 50)]
        iters: usize,
        /// libtorch threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Action latency of MVP against flow and diffusion policies.
    Latency(speed::LatencyArgs),
    /// Training iterations per second.
    Train(speed::TrainArgs),
    /// GEMM rate (GFLOP/s) of libtorch and of mvp-infer's kernels at the policy shapes.
    Gemm(speed::GemmArgs),
    /// Environment steps per second through the Python bridge against plain Python.
    Env(env::EnvArgs),
    /// Behaviour-cloning quality on known multimodal distributions.
    Expressiveness(expressiveness::Args),
}

/// Runs a benchmark subcommand.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Jvp { batch, input, output, iters, threads, json } => {
            let report = jvp(batch, input, output, iters, threads)?;
            println!("{}", report.markdown());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
            }
            Ok(())
        }
        BenchCommand::Latency(args) => speed::latency(args),
        BenchCommand::Train(args) => speed::train(args),
        BenchCommand::Gemm(args) => speed::gemm(args),
        BenchCommand::Env(args) => env::run(args),
        BenchCommand::Expressiveness(args) => expressiveness::run(args),
    }
}

#[derive(Debug, Serialize)]
struct JvpReport {
    batch: i64,
    input: i64,
    output: i64,
    hidden: Vec<usize>,
    threads: usize,
    /// Median milliseconds per call.
    forward_ms: f64,
    forward_jvp_ms: f64,
    forward_jvp_sg_ms: f64,
    double_backward_jvp_ms: f64,
}

impl JvpReport {
    fn markdown(&self) -> String {
        let row = |name: &str, ms: f64| format!("| {name} | {ms:.3} | {:.2}× |\n", ms / self.forward_ms);
        format!(
            "JVP cost, MLP {}→{:?}→{}, GELU, batch {}, {} thread(s), median of timed calls\n\n\
             | operation | ms | × forward |\n|---|---|---|\n{}{}{}{}",
            self.input,
            self.hidden,
            self.output,
            self.batch,
            self.threads,
            row("forward", self.forward_ms),
            row("forward + tangent (forward-mode, differentiable)", self.forward_jvp_ms),
            row("forward + tangent (forward-mode, stop-grad tangent)", self.forward_jvp_sg_ms),
            row("forward + JVP by double backward", self.double_backward_jvp_ms),
        )
    }
}

fn median_ms(iters: usize, f: impl FnMut()) -> f64 {
    speed::percentiles(speed::time_calls(3, iters, f)).0
}

fn jvp(batch: i64, input: i64, output: i64, iters: usize, threads: usize) -> Result<JvpReport> {
    let device = Runtime { threads, ..Runtime::default() }.apply()?;
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let cfg = MlpConfig::default();
    let mlp = Mlp::new(&vs.root(), input as usize, output as usize, &cfg);
    let x = Tensor::randn([batch, input], (Kind::Float, device));
    let v = Tensor::randn([batch, input], (Kind::Float, device));
    // Timings include the autograd graph the training step would build.
    let forward_ms = median_ms(iters, || {
        let _ = mlp.forward(&x);
    });
    let forward_jvp_ms = median_ms(iters, || {
        let _ = mlp.forward_jvp(&x, &v);
    });
    let forward_jvp_sg_ms = median_ms(iters, || {
        let _ = mlp.forward_jvp_sg(&x, &v);
    });
    let double_backward_jvp_ms = median_ms(iters, || {
        let _ = jvp_autograd(|x| mlp.forward(x), &x, &v);
    });
    Ok(JvpReport {
        batch,
        input,
        output,
        hidden: cfg.hidden,
        threads,
        forward_ms,
        forward_jvp_ms,
        forward_jvp_sg_ms,
        double_backward_jvp_ms,
    })
}
