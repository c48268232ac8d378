//! `mvp bench latency` and `mvp bench train`: MVP against QC, BFN and diffusion through the
//! same agent code, in one run, one thread.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use mvp_actor::{ActorConfig, DiffusionConfig, FlowConfig, MvpConfig};
use mvp_agent::config::AgentConfig;
use mvp_agent::{Agent, TensorBatch};
use mvp_nn::{DeviceChoice, MlpConfig, Runtime};
use mvp_replay::ChunkBatch;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// Options shared by both speed benchmarks.
#[derive(Debug, Args)]
pub struct Common {
    /// Observation size (cube-double: 37).
    #[arg(long, default_value_t = 37)]
    obs_dim: usize,
    /// Action size (OGBench: 5).
    #[arg(long, default_value_t = 5)]
    action_dim: usize,
    /// Hidden widths of actor and critics (paper: 512,512,512,512).
    #[arg(long, value_delimiter = ',', default_value = "512,512,512,512")]
    hidden: Vec<usize>,
    /// Larger denoising-step count of the second diffusion row.
    #[arg(long, default_value_t = 50)]
    diffusion_large_k: usize,
    /// Only methods whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Device: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// libtorch threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

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
    /// Run the acting networks in bfloat16 (AVX-512 bf16 on recent CPUs).
    #[arg(long)]
    bf16: bool,
}

/// Options of `mvp bench train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    common: Common,
    /// Batch size (paper: 256).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Timed iterations per method (after 3 warm-up iterations).
    #[arg(long, default_value_t = 10)]
    iters: usize,
}

/// A method of the comparison: a name and its agent settings.
struct Method {
    name: String,
    config: AgentConfig,
}

fn methods(c: &Common) -> Vec<Method> {
    let net = MlpConfig { hidden: c.hidden.clone(), ..MlpConfig::default() };
    let critic_net = MlpConfig { hidden: c.hidden.clone(), layer_norm: true, ..MlpConfig::default() };
    let agent = |actor: ActorConfig, n: usize, h: usize| {
        let mut a = AgentConfig { horizon: h, num_samples: n, actor, ..AgentConfig::default() };
        a.critic.network = critic_net.clone();
        a
    };
    let flow = |k| ActorConfig::Flow(FlowConfig { network: net.clone(), steps: k, ..FlowConfig::default() });
    let diff = |k| ActorConfig::Diffusion(DiffusionConfig { network: net.clone(), steps: k, ..DiffusionConfig::default() });
    let all = vec![
        Method { name: "MVP (1 step, N=32, h=5)".into(), config: agent(ActorConfig::Mvp(MvpConfig { network: net.clone(), ..MvpConfig::default() }), 32, 5) },
        Method { name: "QC (flow K=10, N=32, h=5)".into(), config: agent(flow(10), 32, 5) },
        Method { name: "BFN (flow K=10, N=4, h=1)".into(), config: agent(flow(10), 4, 1) },
        Method { name: "diffusion (K=10, N=32, h=5)".into(), config: agent(diff(10), 32, 5) },
        Method {
            name: format!("diffusion (K={}, N=32, h=5)", c.diffusion_large_k),
            config: agent(diff(c.diffusion_large_k), 32, 5),
        },
    ];
    all.into_iter().filter(|m| c.only.as_ref().is_none_or(|o| m.name.contains(o.as_str()))).collect()
}

/// Multiply-add FLOPs (2 per MAC) of an MLP per input row.
fn mlp_flops(input: usize, hidden: &[usize], output: usize) -> f64 {
    let mut widths = vec![input];
    widths.extend(hidden);
    widths.push(output);
    widths.windows(2).map(|w| 2.0 * (w[0] * w[1]) as f64).sum()
}

/// FLOPs of one generate-and-select call for one observation.
fn act_flops(c: &Common, m: &Method) -> f64 {
    let a = &m.config;
    let d = a.horizon * c.action_dim;
    let (calls, times) = match &a.actor {
        ActorConfig::Mvp(x) => (x.sampling_steps.max(1), 2),
        ActorConfig::Flow(x) => (x.steps.max(1), 1),
        ActorConfig::Diffusion(x) => (x.steps.max(1), 1),
    };
    let n = a.num_samples as f64;
    let actor = mlp_flops(c.obs_dim + d + times, &c.hidden, d) * calls as f64 * n;
    let critic = if a.num_samples > 1 { mlp_flops(c.obs_dim + d, &c.hidden, 1) * a.critic.ensemble as f64 * n } else { 0.0 };
    actor + critic
}

#[derive(Debug, Serialize)]
struct LatencyRow {
    method: String,
    network_calls: usize,
    mflop_per_action: f64,
    median_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    gflops: f64,
    batch_envs: i64,
    batch_median_ms: f64,
}

/// Median, p90 and p99 of `t`.
pub(crate) fn percentiles(mut t: Vec<f64>) -> (f64, f64, f64) {
    t.sort_by(f64::total_cmp);
    let at = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9), at(0.99))
}

/// Milliseconds of each of `n` calls of `f`, after `warmup` untimed calls.
pub(crate) fn time_calls(warmup: usize, n: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warmup {
        f();
    }
    (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Runs `mvp bench latency`.
pub fn latency(args: LatencyArgs) -> Result<()> {
    let c = &args.common;
    let device = Runtime { device: c.device, threads: c.threads }.apply()?;
    let mut rows = Vec::new();
    for m in methods(c) {
        tch::manual_seed(0);
        let mut agent = Agent::new(c.obs_dim, c.action_dim, &m.config, device);
        let kind = if args.bf16 { Kind::BFloat16 } else { Kind::Float };
        agent.set_acting_kind(kind);
        let one = Tensor::randn([1, c.obs_dim as i64], (kind, device));
        let many = Tensor::randn([args.envs, c.obs_dim as i64], (kind, device));
        let (median, p90, p99) = percentiles(time_calls(20, args.calls, || {
            let _ = agent.act(&one);
            sync(device);
        }));
        let (batch_median, _, _) = percentiles(time_calls(20, (args.calls / 4).max(10), || {
            let _ = agent.act(&many);
            sync(device);
        }));
        let flops = act_flops(c, &m);
        let row = LatencyRow {
            network_calls: agent.actor().network_calls(),
            mflop_per_action: flops / 1e6,
            median_ms: median,
            p90_ms: p90,
            p99_ms: p99,
            gflops: flops / (median * 1e6),
            batch_envs: args.envs,
            batch_median_ms: batch_median,
            method: m.name,
        };
        tracing::info!("{}: median {:.3} ms", row.method, row.median_ms);
        rows.push(row);
    }
    let base = rows.iter().find(|r| r.method.starts_with("MVP")).map(|r| r.median_ms);
    println!(
        "Action latency (generate-and-select for one observation), {} thread(s), {:?}, {}, obs {}, action {}, \
         networks {:?}, {} timed calls after warm-up\n",
        c.threads,
        device,
        if args.bf16 { "bf16" } else { "fp32" },
        c.obs_dim,
        c.action_dim,
        c.hidden,
        args.calls
    );
    println!("| method | net calls | MFLOP/action | median ms | p90 ms | p99 ms | GFLOP/s | × MVP | {} envs: median ms |", args.envs);
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.3} | {:.3} | {:.3} | {:.1} | {:.2} | {:.3} |",
            r.method,
            r.network_calls,
            r.mflop_per_action,
            r.median_ms,
            r.p90_ms,
            r.p99_ms,
            r.gflops,
            base.map(|b| r.median_ms / b).unwrap_or(f64::NAN),
            r.batch_median_ms
        );
    }
    if let Some(p) = &c.json {
        std::fs::write(p, serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct TrainRow {
    method: String,
    batch: usize,
    median_ms_per_iter: f64,
    iters_per_s: f64,
}

/// A synthetic batch with the shapes of a real one (values do not matter for speed).
fn synthetic_batch(batch: usize, h: usize, c: &Common, device: Device) -> TensorBatch {
    let mut b = ChunkBatch::new(batch, h, c.obs_dim, c.action_dim);
    for (i, x) in b.observations.iter_mut().enumerate() {
        *x = ((i * 7919) % 997) as f32 / 997.0 - 0.5;
    }
    b.next_observations.copy_from_slice(&b.observations);
    for (i, x) in b.actions.iter_mut().enumerate() {
        *x = ((i * 104729) % 1999) as f32 / 1000.0 - 1.0;
    }
    b.rewards.fill(-1.0);
    b.masks.fill(1.0);
    b.valid.fill(1.0);
    TensorBatch::from_chunks(&b, device)
}

/// Runs `mvp bench train`.
pub fn train(args: TrainArgs) -> Result<()> {
    let c = &args.common;
    let device = Runtime { device: c.device, threads: c.threads }.apply()?;
    let mut rows = Vec::new();
    for m in methods(c) {
        tch::manual_seed(0);
        let mut config = m.config;
        config.batch_size = args.batch;
        let mut agent = Agent::new(c.obs_dim, c.action_dim, &config, device);
        let batch = synthetic_batch(args.batch, config.horizon, c, device);
        for _ in 0..3 {
            agent.update(&batch)?;
        }
        let mut t = Vec::with_capacity(args.iters);
        for _ in 0..args.iters {
            let s = Instant::now();
            agent.update(&batch)?;
            sync(device);
            t.push(s.elapsed().as_secs_f64() * 1e3);
        }
        let (median, _, _) = percentiles(t);
        tracing::info!("{}: {:.1} ms per iteration", m.name, median);
        rows.push(TrainRow { method: m.name, batch: args.batch, median_ms_per_iter: median, iters_per_s: 1e3 / median });
    }
    let base = rows.iter().find(|r| r.method.starts_with("MVP")).map(|r| r.iters_per_s);
    println!(
        "Training speed (one critic + actor update, TD target with N candidates), {} thread(s), {:?}, batch {}, \
         networks {:?}, median of {} iterations\n",
        c.threads, device, args.batch, c.hidden, args.iters
    );
    println!("| method | ms / iteration | iterations / s | MVP speed-up |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.2} | {:.2} |",
            r.method,
            r.median_ms_per_iter,
            r.iters_per_s,
            base.map(|b| b / r.iters_per_s).unwrap_or(f64::NAN)
        );
    }
    if let Some(p) = &c.json {
        std::fs::write(p, serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}
