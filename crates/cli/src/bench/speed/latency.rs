//! `mvp bench latency`: the time to act on one observation (and on a batch of environments),
//! per method and acting engine.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use mvp_agent::config::Engine;
use mvp_agent::Agent;
use mvp_infer::Precision;
use mvp_nn::{MatmulPrecision, Runtime};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{act_flops, methods, percentiles, sync, time_calls, Common};

/// Options of `mvp bench latency`.
#[derive(Debug, Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    /// Timed calls per method (after warm-up).
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Environments served per call in the batched measurement.
    #[arg(long, default_value_t = 16)]
    envs: i64,
    /// Acting engines to measure, comma-separated (the values of `agent.select_engine`):
    /// libtorch (the training code's acting path), native (mvp-infer's packed kernels; MVP and
    /// flow actors only), auto (the engine training would pick).
    #[arg(long, value_delimiter = ',', default_value = "libtorch,native")]
    engines: Vec<Engine>,
    /// Number formats to measure each engine in, comma-separated: f32, bf16 (libtorch: the
    /// networks converted to bfloat16; native: bf16 inputs and weights with fp32 accumulation,
    /// on CPUs with AVX512-BF16).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    precisions: Vec<MatmulPrecision>,
    /// Also draw the median latencies as a PNG bar chart here.
    #[arg(long)]
    png: Option<PathBuf>,
}

/// One acting path measured: an engine in a number format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
struct Acting {
    engine: Engine,
    precision: MatmulPrecision,
}

impl Acting {
    fn label(self) -> &'static str {
        match (self.engine, self.precision) {
            (Engine::Native, MatmulPrecision::F32) => "native fp32",
            (Engine::Native, MatmulPrecision::Bf16) => "native bf16",
            (_, MatmulPrecision::F32) => "libtorch fp32",
            (_, MatmulPrecision::Bf16) => "libtorch bf16",
        }
    }
}

#[derive(Debug, Serialize)]
struct LatencyRow {
    method: String,
    engine: Acting,
    network_calls: usize,
    mflop_per_action: f64,
    median_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    gflops: f64,
    batch_envs: i64,
    batch_median_ms: f64,
}

impl LatencyRow {
    /// The method without its settings, for chart labels ("MVP", "diffusion K=50").
    fn short_name(&self) -> String {
        match self.method.split(" (").next().unwrap_or(&self.method) {
            "diffusion" => format!("diffusion K={}", self.network_calls),
            short => short.to_string(),
        }
    }
}

/// The acting paths `--engines` × `--precisions` names for `agent` (`auto` resolved to the
/// engine its plan chose for acting).
fn acting_paths(args: &LatencyArgs, agent: &Agent) -> Vec<Acting> {
    let mut out = Vec::new();
    for &engine in &args.engines {
        let engine = match engine {
            Engine::Auto if agent.selects_natively() => Engine::Native,
            Engine::Auto => Engine::Libtorch,
            e => e,
        };
        for &precision in &args.precisions {
            let path = Acting { engine, precision };
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    out
}

/// Timings of one method on one engine: (single-observation samples, batched median), or
/// `None` when the engine cannot run the method here.
fn time_engine(
    args: &LatencyArgs,
    agent: &mut Agent,
    acting: Acting,
    device: Device,
) -> Result<Option<(Vec<f64>, f64)>> {
    let c = &args.common;
    let batch_calls = (args.calls / 4).max(10);
    match acting.engine {
        Engine::Libtorch | Engine::Auto => {
            let kind = if acting.precision == MatmulPrecision::Bf16 { Kind::BFloat16 } else { Kind::Float };
            agent.set_acting_kind(kind);
            let one = Tensor::randn([1, c.obs_dim as i64], (kind, device));
            let many = Tensor::randn([args.envs, c.obs_dim as i64], (kind, device));
            let single = time_calls(20, args.calls, || {
                let _ = agent.act(&one);
                sync(device);
            });
            let (batch, _, _) = percentiles(time_calls(20, batch_calls, || {
                let _ = agent.act(&many);
                sync(device);
            }));
            agent.set_acting_kind(Kind::Float);
            Ok(Some((single, batch)))
        }
        Engine::Native => {
            if device != Device::Cpu {
                return Ok(None);
            }
            let precision = if acting.precision == MatmulPrecision::Bf16 { Precision::Bf16 } else { Precision::F32 };
            let mut policy = match agent.native_policy(precision, 0) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("{}: {e:#}", acting.label());
                    return Ok(None);
                }
            };
            let d = policy.chunk_dim();
            let one: Vec<f32> = (0..c.obs_dim).map(|i| ((i * 37) % 11) as f32 / 11.0 - 0.5).collect();
            let many: Vec<f32> =
                (0..args.envs as usize * c.obs_dim).map(|i| ((i * 37) % 11) as f32 / 11.0 - 0.5).collect();
            let (mut out_one, mut out_many) = (vec![0.0; d], vec![0.0; args.envs as usize * d]);
            let single = time_calls(20, args.calls, || policy.act(&one, &mut out_one));
            let (batch, _, _) = percentiles(time_calls(20, batch_calls, || policy.act(&many, &mut out_many)));
            Ok(Some((single, batch)))
        }
    }
}

/// Runs `mvp bench latency`.
pub fn latency(args: LatencyArgs) -> Result<()> {
    let c = &args.common;
    let device = Runtime { device: c.device, threads: c.threads, ..Runtime::default() }.apply()?;
    let isa = c.apply_isa()?;
    tracing::info!("native engine: {isa} kernels");
    let mut rows = Vec::new();
    for m in methods(c) {
        tch::manual_seed(0);
        let mut agent = Agent::new(c.obs_dim, c.action_dim, &m.config, device)?;
        let flops = act_flops(c, &m);
        for engine in acting_paths(&args, &agent) {
            let Some((single, batch_median)) = time_engine(&args, &mut agent, engine, device)? else { continue };
            let (median, p90, p99) = percentiles(single);
            let row = LatencyRow {
                method: m.name.clone(),
                engine,
                network_calls: agent.actor().network_calls(),
                mflop_per_action: flops / 1e6,
                median_ms: median,
                p90_ms: p90,
                p99_ms: p99,
                gflops: flops / (median * 1e6),
                batch_envs: args.envs,
                batch_median_ms: batch_median,
            };
            tracing::info!("{} [{}]: median {:.3} ms", row.method, engine.label(), row.median_ms);
            rows.push(row);
        }
    }
    let mvp = |e: Acting| rows.iter().find(|r| r.method.starts_with("MVP") && r.engine == e).map(|r| r.median_ms);
    println!(
        "Action latency (generate-and-select for one observation), {} thread(s), {:?}, obs {}, action {}, \
         networks {:?}, {} timed calls after warm-up\n",
        c.threads, device, c.obs_dim, c.action_dim, c.hidden, args.calls
    );
    println!("| method | engine | net calls | MFLOP/action | median ms | p90 ms | p99 ms | GFLOP/s | × MVP (same engine) | {} envs: median ms |", args.envs);
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.3} | {:.3} | {:.3} | {:.1} | {:.2} | {:.3} |",
            r.method,
            r.engine.label(),
            r.network_calls,
            r.mflop_per_action,
            r.median_ms,
            r.p90_ms,
            r.p99_ms,
            r.gflops,
            mvp(r.engine).map(|b| r.median_ms / b).unwrap_or(f64::NAN),
            r.batch_median_ms
        );
    }
    let qc = |e: Acting| rows.iter().find(|r| r.method.starts_with("QC") && r.engine == e).map(|r| r.median_ms);
    let fastest_mvp =
        rows.iter().filter(|r| r.method.starts_with("MVP")).min_by(|a, b| a.median_ms.total_cmp(&b.median_ms));
    if let (Some(q), Some(f)) = (qc(Acting { engine: Engine::Libtorch, precision: MatmulPrecision::F32 }), fastest_mvp)
    {
        println!(
            "\nQC as the training code runs it (libtorch fp32, {q:.3} ms) ÷ MVP {} ({:.3} ms) = {:.1}×",
            f.engine.label(),
            f.median_ms,
            q / f.median_ms
        );
    }
    if let Some(p) = &c.json {
        std::fs::write(p, serde_json::to_vec_pretty(&rows)?)?;
    }
    if let Some(p) = &args.png {
        let mut categories: Vec<String> = Vec::new();
        for r in &rows {
            if !categories.contains(&r.short_name()) {
                categories.push(r.short_name());
            }
        }
        let mut paths: Vec<Acting> = Vec::new();
        for r in &rows {
            if !paths.contains(&r.engine) {
                paths.push(r.engine);
            }
        }
        let series: Vec<(&str, Vec<f64>)> = paths
            .iter()
            .map(|&e| {
                let ms =
                    |cat: &String| rows.iter().find(|r| r.engine == e && r.short_name() == *cat).map(|r| r.median_ms);
                (e.label(), categories.iter().map(|cat| ms(cat).unwrap_or(f64::NAN)).collect())
            })
            .collect();
        let title = "Action latency, one observation (median ms, log scale)";
        mvp_logging::plot_bars_log(p, title, &categories, &series, "ms per action")?;
        println!("chart: {}", p.display());
    }
    Ok(())
}
