//! `mvp bench latency` and `mvp bench train`: MVP against QC, BFN and diffusion through the
//! same agent code, in one run, one thread.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use mvp_actor::{ActorConfig, DiffusionConfig, FlowConfig, MvpConfig};
use mvp_agent::config::{AgentConfig, Engine as StepEngine};
use mvp_agent::{Agent, TensorBatch};
use mvp_infer::Isa;
use mvp_infer::Precision;
use mvp_nn::{DeviceChoice, MatmulPrecision, MlpConfig, Runtime};
use mvp_replay::{ChunkBatch, ReplayBuffer};
use rand::SeedableRng;
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
    /// Only methods whose name contains one of these texts (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The imitation methods instead (MP1's comparison): one sample (N = 1), chunks of h = 4,
    /// no critic — MVP (MP1), flow (K = 10) and diffusion (K = 10 and the larger K).
    #[arg(long)]
    imitation: bool,
    /// Device: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// libtorch threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Cap the native kernels at this family (`engine.isa`): portable, avx2 or avx512; default
    /// the best this CPU runs.
    #[arg(long)]
    isa: Option<Isa>,
}

impl Common {
    /// Applies `--isa` to everything built from now on.
    fn apply_isa(&self) -> Result<Isa> {
        if let Some(isa) = self.isa.filter(|i| !i.runs_here()) {
            anyhow::bail!("--isa {isa}: this CPU runs up to {}", Isa::detected());
        }
        Isa::set_cap(self.isa);
        Ok(Isa::active())
    }
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
    /// Engines to measure, comma-separated: libtorch (the training code's acting path),
    /// libtorch-bf16 (the same networks converted to bfloat16), native-f32 and native-bf16
    /// (mvp-infer's packed AVX-512 kernels; MVP and flow actors only; bf16 needs AVX512-BF16).
    #[arg(long, value_delimiter = ',', default_value = "libtorch,native-f32,native-bf16")]
    engines: Vec<Engine>,
    /// Also draw the median latencies as a PNG bar chart here.
    #[arg(long)]
    png: Option<PathBuf>,
}

/// An implementation of the acting path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// The agent's own tch code, fp32.
    Libtorch,
    /// The agent's tch code with the acting networks in bfloat16.
    LibtorchBf16,
    /// mvp-infer, fp32.
    NativeF32,
    /// mvp-infer, bf16 inputs and weights with fp32 accumulation.
    NativeBf16,
}

impl Engine {
    fn label(self) -> &'static str {
        match self {
            Engine::Libtorch => "libtorch fp32",
            Engine::LibtorchBf16 => "libtorch bf16",
            Engine::NativeF32 => "native fp32",
            Engine::NativeBf16 => "native bf16",
        }
    }
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
    /// Matmul precisions to measure, e.g. f32,bf16 (bf16: bf16 operands, fp32 master weights;
    /// see `runtime.matmul`).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    matmul: Vec<MatmulPrecision>,
    /// Engines of the TD target's generate-and-select to measure (`agent.select_engine`):
    /// auto (what training picks: calibrated at these shapes), libtorch, native. Methods
    /// without a native path always use libtorch.
    #[arg(long, value_delimiter = ',', default_value = "libtorch,auto")]
    select: Vec<StepEngine>,
    /// The native selection's format (`agent.select_precision`): f32 or bf16; default bf16
    /// where the CPU has AVX512-BF16, else f32.
    #[arg(long)]
    select_precision: Option<MatmulPrecision>,
    /// Engines of the critic's TD update to measure (`agent.critic_engine`): auto (what
    /// training picks), libtorch, native.
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    critic: Vec<StepEngine>,
    /// Engines of the actor's update to measure (`agent.actor_engine`): auto (what training
    /// picks), libtorch, native.
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    actor: Vec<StepEngine>,
    /// Also time each phase of an update (median ms, FLOPs and GFLOP/s per phase) and print
    /// that table.
    #[arg(long)]
    profile: bool,
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
    let diff =
        |k| ActorConfig::Diffusion(DiffusionConfig { network: net.clone(), steps: k, ..DiffusionConfig::default() });
    let imitation = |actor: ActorConfig| AgentConfig { imitation: true, ..agent(actor, 1, 4) };
    if c.imitation {
        let mvp = ActorConfig::Mvp(MvpConfig { network: net.clone(), ..MvpConfig::default() });
        let all = vec![
            Method { name: "MVP/MP1 (1 step, N=1, h=4)".into(), config: imitation(mvp) },
            Method { name: "flow (K=10, N=1, h=4)".into(), config: imitation(flow(10)) },
            Method { name: "diffusion (K=10, N=1, h=4)".into(), config: imitation(diff(10)) },
            Method {
                name: format!("diffusion (K={}, N=1, h=4)", c.diffusion_large_k),
                config: imitation(diff(c.diffusion_large_k)),
            },
        ];
        return only(c, all);
    }
    let all = vec![
        Method {
            name: "MVP (1 step, N=32, h=5)".into(),
            config: agent(ActorConfig::Mvp(MvpConfig { network: net.clone(), ..MvpConfig::default() }), 32, 5),
        },
        Method { name: "QC (flow K=10, N=32, h=5)".into(), config: agent(flow(10), 32, 5) },
        Method { name: "BFN (flow K=10, N=4, h=1)".into(), config: agent(flow(10), 4, 1) },
        Method { name: "diffusion (K=10, N=32, h=5)".into(), config: agent(diff(10), 32, 5) },
        Method {
            name: format!("diffusion (K={}, N=32, h=5)", c.diffusion_large_k),
            config: agent(diff(c.diffusion_large_k), 32, 5),
        },
    ];
    only(c, all)
}

/// The methods `--only` keeps.
fn only(c: &Common, all: Vec<Method>) -> Vec<Method> {
    all.into_iter().filter(|m| c.only.is_empty() || c.only.iter().any(|o| m.name.contains(o.as_str()))).collect()
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
    let critic =
        if a.num_samples > 1 { mlp_flops(c.obs_dim + d, &c.hidden, 1) * a.critic.ensemble as f64 * n } else { 0.0 };
    actor + critic
}

#[derive(Debug, Serialize)]
struct LatencyRow {
    method: String,
    engine: Engine,
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

/// Timings of one method on one engine: (single-observation samples, batched median), or
/// `None` when the engine cannot run the method here.
fn time_engine(
    args: &LatencyArgs,
    agent: &mut Agent,
    engine: Engine,
    device: Device,
) -> Result<Option<(Vec<f64>, f64)>> {
    let c = &args.common;
    let batch_calls = (args.calls / 4).max(10);
    match engine {
        Engine::Libtorch | Engine::LibtorchBf16 => {
            let kind = if engine == Engine::LibtorchBf16 { Kind::BFloat16 } else { Kind::Float };
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
        Engine::NativeF32 | Engine::NativeBf16 => {
            if device != Device::Cpu {
                return Ok(None);
            }
            let precision = if engine == Engine::NativeBf16 { Precision::Bf16 } else { Precision::F32 };
            let mut policy = match agent.native_policy(precision, 0) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("{}: {e:#}", engine.label());
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
        for &engine in &args.engines {
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
    let mvp = |e: Engine| rows.iter().find(|r| r.method.starts_with("MVP") && r.engine == e).map(|r| r.median_ms);
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
    let qc = |e: Engine| rows.iter().find(|r| r.method.starts_with("QC") && r.engine == e).map(|r| r.median_ms);
    let fastest_mvp =
        rows.iter().filter(|r| r.method.starts_with("MVP")).min_by(|a, b| a.median_ms.total_cmp(&b.median_ms));
    if let (Some(q), Some(f)) = (qc(Engine::Libtorch), fastest_mvp) {
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
        let series: Vec<(&str, Vec<f64>)> = args
            .engines
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

#[derive(Debug, Serialize)]
struct TrainRow {
    method: String,
    matmul: MatmulPrecision,
    /// The engine the TD target's selection ran on.
    select: String,
    /// The engine the critic's update ran on.
    critic: String,
    /// The engine the actor's update ran on.
    actor: String,
    batch: usize,
    median_ms_per_iter: f64,
    iters_per_s: f64,
    /// Median ms per phase of an update, with `--profile`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    phases: Vec<PhaseRow>,
}

#[derive(Debug, Serialize)]
struct PhaseRow {
    phase: String,
    median_ms: f64,
    /// Multiply-add FLOPs (2 per MAC) of the phase's matrix products, where counted.
    gflop: Option<f64>,
}

/// GFLOP of the matrix products of each phase of one update (forward = 1×, backward = 2× the
/// forward's MACs; the JVP adds a forward's worth, IVC another forward).
fn phase_gflop(c: &Common, config: &AgentConfig, batch: usize) -> Vec<(&'static str, f64)> {
    let d = config.horizon * c.action_dim;
    let (calls, times) = match &config.actor {
        ActorConfig::Mvp(x) => (x.sampling_steps.max(1), 2),
        ActorConfig::Flow(x) => (x.steps.max(1), 1),
        ActorConfig::Diffusion(x) => (x.steps.max(1), 1),
    };
    let n = config.num_samples as f64;
    let b = batch as f64;
    let actor = mlp_flops(c.obs_dim + d + times, &c.hidden, d);
    let critic = mlp_flops(c.obs_dim + d, &c.hidden, 1) * config.critic.ensemble as f64;
    // The actor loss: MVP = forward with JVP (2 forwards) + IVC forward; flow/diffusion: 1.
    let actor_loss = match &config.actor {
        ActorConfig::Mvp(x) => actor * if x.ivc_weight > 0.0 { 3.0 } else { 2.0 },
        _ => actor,
    };
    let actor_backward = match &config.actor {
        ActorConfig::Mvp(x) => actor * if x.ivc_weight > 0.0 { 4.0 } else { 2.0 },
        _ => 2.0 * actor,
    };
    let g = 1e-9;
    let generate = actor * calls as f64 * n * b * g;
    let score = if config.num_samples > 1 { critic * n * b * g } else { 0.0 };
    vec![
        ("target: generate", generate),
        ("target: score", score),
        ("target: generate and score (native)", generate + score),
        ("target: value", critic * b * g),
        ("critic: loss", critic * b * g),
        ("actor: loss", actor_loss * b * g),
        ("critic: backward", 2.0 * critic * b * g),
        ("critic: loss and backward (native)", 3.0 * critic * b * g),
        ("actor: loss and backward (native)", (actor_loss + actor_backward) * b * g),
        ("actor: backward", actor_backward * b * g),
    ]
}

/// Runs `mvp bench train`.
pub fn train(args: TrainArgs) -> Result<()> {
    let c = &args.common;
    let mut rows: Vec<TrainRow> = Vec::new();
    let mut timed: Vec<Timed> = Vec::new();
    let mut device = Device::Cpu;
    c.apply_isa()?;
    for &matmul in &args.matmul {
        device = Runtime { device: c.device, threads: c.threads, matmul }.apply()?;
        for m in methods(c) {
            let mut engines = Vec::new();
            for &s in &args.select {
                for &c in &args.critic {
                    engines.extend(args.actor.iter().map(|&a| (s, c, a)));
                }
            }
            for (select, critic, actor) in engines {
                let mut config = m.config.clone();
                config.batch_size = args.batch;
                config.select_engine = select;
                config.select_precision = args.select_precision;
                config.critic_engine = critic;
                config.actor_engine = actor;
                // `auto` decides as training does: by the calibration at these shapes.
                if let Some(cal) = mvp_agent::engines::calibrate(c.obs_dim, c.action_dim, &config, device)? {
                    tracing::info!("{}: {}", m.name, cal.summary());
                }
                tch::manual_seed(0);
                let mut agent = match Agent::new(c.obs_dim, c.action_dim, &config, device) {
                    Ok(a) => a,
                    Err(e) if [select, critic, actor].contains(&StepEngine::Native) => {
                        tracing::warn!("{}: skipped: {e:#}", m.name);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let plan = agent.engines();
                tracing::info!("{}: {}", m.name, plan.describe());
                let native = |on: bool| if on { format!("native {}", plan.isa) } else { "libtorch".to_string() };
                let used = match (agent.selects_natively(), plan.select_precision) {
                    (true, Precision::Bf16) => format!("{} bf16", native(true)),
                    (true, Precision::F32) => format!("{} f32", native(true)),
                    (false, _) => native(false),
                };
                let (critic_used, actor_used) = (native(agent.critic_natively()), native(agent.actor_natively()));
                let used = used.as_str();
                if rows.iter().any(|r| {
                    r.method == m.name
                        && r.matmul == matmul
                        && r.select == used
                        && r.critic == critic_used
                        && r.actor == actor_used
                }) {
                    continue; // e.g. auto = libtorch for an actor without a native path
                }
                // As in training, where only the logged updates (1 in 100 or more) compute them.
                agent.set_diagnostics(false);
                let batch = TensorBatch::synthetic(args.batch, config.horizon, c.obs_dim, c.action_dim, device);
                for _ in 0..3 {
                    agent.update(&batch)?;
                }
                rows.push(TrainRow {
                    method: m.name.clone(),
                    matmul,
                    select: used.to_string(),
                    critic: critic_used,
                    actor: actor_used,
                    batch: args.batch,
                    median_ms_per_iter: f64::NAN,
                    iters_per_s: f64::NAN,
                    phases: Vec::new(),
                });
                timed.push(Timed { agent, config, batch, totals: Vec::new(), phases: Vec::new() });
            }
        }
    }
    // Every row is timed in turn, in TRAIN_ROUNDS rounds: this machine's speed drifts within
    // seconds, and interleaving spreads the drift over all rows alike.
    let mut sampler = Sampler::new(c, args.batch)?;
    for round in 0..TRAIN_ROUNDS {
        let n = args.iters / TRAIN_ROUNDS + usize::from(round < args.iters % TRAIN_ROUNDS);
        for (t, row) in timed.iter_mut().zip(&rows) {
            row.matmul.set();
            t.time(n, args.profile.then_some(&mut sampler), device)?;
        }
    }
    let gflop_of = |config: &AgentConfig| phase_gflop(c, config, args.batch);
    for (t, row) in timed.into_iter().zip(&mut rows) {
        let (median, _, _) = percentiles(t.totals);
        let gflop = gflop_of(&t.config);
        row.median_ms_per_iter = median;
        row.iters_per_s = 1e3 / median;
        row.phases = t
            .phases
            .into_iter()
            .map(|(phase, times)| PhaseRow {
                phase: phase.to_string(),
                median_ms: percentiles(times).0,
                gflop: gflop.iter().find(|(p, _)| *p == phase).map(|(_, g)| *g),
            })
            .collect();
        tracing::info!(
            "{} ({} matmuls, {} selection, {} critic update, {} actor update): {:.1} ms per iteration",
            row.method,
            row.matmul,
            row.select,
            row.critic,
            row.actor,
            median
        );
    }
    MatmulPrecision::F32.set();
    println!(
        "Training speed (one critic + actor update, TD target with N candidates), {} thread(s), {:?}, batch {}, \
         networks {:?}, median of {} iterations\n",
        c.threads, device, args.batch, c.hidden, args.iters
    );
    println!(
        "| method | matmuls | TD-target selection | critic update | actor update | ms / iteration | iterations / s | \
         MVP speed-up (same engines) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| {
                b.matmul == r.matmul
                    && b.select == r.select
                    && b.critic == r.critic
                    && b.actor == r.actor
                    && b.method.starts_with("MVP")
            })
            .map(|b| b.iters_per_s);
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.2} | {:.2} |",
            r.method,
            r.matmul,
            r.select,
            r.critic,
            r.actor,
            r.median_ms_per_iter,
            r.iters_per_s,
            base.map(|b| b / r.iters_per_s).unwrap_or(f64::NAN)
        );
    }
    if args.profile {
        println!("\nWhere the time of one update goes (median ms per phase; GFLOP/s of its matrix products)\n");
        for r in &rows {
            println!(
                "{} ({} matmuls, {} selection, {} critic update, {} actor update): {:.1} ms per update",
                r.method, r.matmul, r.select, r.critic, r.actor, r.median_ms_per_iter
            );
            println!("| phase | ms | share | GFLOP | GFLOP/s |");
            println!("|---|---|---|---|---|");
            let total: f64 = r.phases.iter().map(|p| p.median_ms).sum();
            for p in &r.phases {
                let (gflop, rate) = match p.gflop {
                    Some(g) if g > 0.0 => (format!("{g:.3}"), format!("{:.0}", g / (p.median_ms * 1e-3))),
                    _ => ("".into(), "".into()),
                };
                println!(
                    "| {} | {:.2} | {:.0}% | {gflop} | {rate} |",
                    p.phase,
                    p.median_ms,
                    100.0 * p.median_ms / total
                );
            }
            println!();
        }
    }
    if let Some(p) = &c.json {
        std::fs::write(p, serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}

/// Rounds of `mvp bench train`: the timed iterations of every row are split into this many
/// rounds, run in turn.
const TRAIN_ROUNDS: usize = 5;

/// One row of `mvp bench train` being timed: its agent (warmed up), the batch it updates on,
/// and the times so far (ms per update, and per phase with `--profile`).
struct Timed {
    agent: Agent,
    config: AgentConfig,
    batch: TensorBatch,
    totals: Vec<f64>,
    phases: Vec<(&'static str, Vec<f64>)>,
}

impl Timed {
    /// Times `n` more updates; with a sampler, each phase too, including drawing a batch from
    /// a replay buffer and copying it into tensors.
    fn time(&mut self, n: usize, mut sampler: Option<&mut Sampler>, device: Device) -> Result<()> {
        let profile = sampler.is_some();
        for _ in 0..n {
            if let Some(s) = sampler.as_deref_mut() {
                let start = Instant::now();
                s.sample(self.config.horizon, device)?;
                record(&mut self.phases, "batch: sample and copy", start.elapsed().as_secs_f64() * 1e3);
            }
            let mut last = Instant::now();
            let update_start = last;
            let phases = &mut self.phases;
            self.agent.update_marked(&self.batch, &mut |phase| {
                if profile {
                    sync(device);
                    record(phases, phase, last.elapsed().as_secs_f64() * 1e3);
                    last = Instant::now();
                }
            })?;
            sync(device);
            self.totals.push(update_start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    }
}

/// A replay buffer of the size of a 100-episode play dataset, to time drawing a batch.
struct Sampler {
    buffer: ReplayBuffer,
    host: ChunkBatch,
    rng: rand::rngs::StdRng,
    batch: usize,
}

impl Sampler {
    fn new(c: &Common, batch: usize) -> Result<Self> {
        let mut buffer = ReplayBuffer::new(100_000, c.obs_dim, c.action_dim)?;
        let mut row = ChunkBatch::new(1, 1, c.obs_dim, c.action_dim);
        mvp_agent::agent::fill_synthetic(&mut row);
        for i in 0..100_000 {
            buffer.push(
                &row.observations,
                &row.actions[..c.action_dim],
                -1.0,
                &row.next_observations,
                i % 1000 == 999,
                1.0,
            )?;
        }
        let host = ChunkBatch::new(batch, 1, c.obs_dim, c.action_dim);
        Ok(Self { buffer, host, rng: rand::rngs::StdRng::seed_from_u64(0), batch })
    }

    fn sample(&mut self, horizon: usize, device: Device) -> Result<()> {
        if self.host.h != horizon {
            self.host = ChunkBatch::new(self.batch, horizon, self.host.obs_dim, self.host.act_dim);
        }
        self.buffer.sample_chunks(&mut self.rng, self.batch, horizon, 0.99, &mut self.host)?;
        drop(TensorBatch::from_chunks(&self.host, device));
        Ok(())
    }
}

fn record(phases: &mut Vec<(&'static str, Vec<f64>)>, phase: &'static str, ms: f64) {
    match phases.iter_mut().find(|(p, _)| *p == phase) {
        Some((_, t)) => t.push(ms),
        None => phases.push((phase, vec![ms])),
    }
}

/// Options of `mvp bench gemm`.
#[derive(Debug, Args)]
pub struct GemmArgs {
    /// Row counts (batch 32 = the N candidates of one observation; 512 = 16 environments).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,256,512,2048,8192")]
    rows: Vec<usize>,
    /// Inner and output width (the hidden layers: 512).
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Seconds of timing per measurement.
    #[arg(long, default_value_t = 0.3)]
    seconds: f64,
    /// Distinct weight matrices cycled through, one per call: 1 keeps the weights in cache;
    /// 12 is the working set of one MVP action at paper size (actor and two critics, 4 layers
    /// each, 12 MB in fp32), which does not fit in L2 and streams from L3 as acting does.
    #[arg(long, default_value_t = 1)]
    matrices: usize,
    /// Kernel families of the native fp32 columns; default every one this CPU runs.
    #[arg(long, value_delimiter = ',')]
    isa: Vec<Isa>,
    /// Write results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct GemmRow {
    rows: usize,
    dim: usize,
    libtorch_f32: f64,
    libtorch_bf16: f64,
    /// GFLOP/s of the native fp32 kernels, per family (its name).
    native_f32: Vec<(String, f64)>,
    native_bf16: Option<f64>,
}

/// GFLOP/s of `f`, which multiplies `rows × dim` by `dim × dim`, over about `seconds`.
fn gflops(rows: usize, dim: usize, seconds: f64, mut f: impl FnMut()) -> f64 {
    let flop = 2.0 * (rows * dim * dim) as f64;
    for _ in 0..3 {
        f();
    }
    let s = Instant::now();
    f();
    let once = s.elapsed().as_secs_f64().max(1e-7);
    let n = ((seconds / once) as usize).clamp(5, 1_000_000);
    let (median, _, _) = percentiles(time_calls(0, n, f));
    flop / (median * 1e-3) / 1e9
}

/// Rounds of `mvp bench gemm`: each engine is timed this many times, in turn.
const ROUNDS: usize = 5;

/// Runs `mvp bench gemm` (one thread, CPU).
pub fn gemm(args: GemmArgs) -> Result<()> {
    Runtime { device: DeviceChoice::Cpu, threads: 1, ..Runtime::default() }.apply()?;
    let d = args.dim;
    let w: Vec<f32> = (0..d * d).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let bias = vec![0.0f32; d];
    let m = args.matrices.max(1);
    let isas = if args.isa.is_empty() { Isa::available() } else { args.isa.clone() };
    if let Some(isa) = isas.iter().find(|i| !i.runs_here()) {
        anyhow::bail!("--isa {isa}: this CPU runs up to {}", Isa::detected());
    }
    let packed: Vec<_> = (0..m).map(|_| mvp_infer::PackedLinear::new(d, d, &w, &bias, Precision::F32)).collect();
    let packed16: Option<Vec<_>> = mvp_infer::has_avx512_bf16()
        .then(|| (0..m).map(|_| mvp_infer::PackedLinear::new(d, d, &w, &bias, Precision::Bf16)).collect());
    let wt: Vec<Tensor> = (0..m).map(|_| Tensor::from_slice(&w).view([d as i64, d as i64])).collect();
    let wt16: Vec<Tensor> = wt.iter().map(|t| t.to_kind(Kind::BFloat16)).collect();
    let (stride_in, stride_out) = (packed[0].in_stride(), packed[0].out_stride());
    let next = std::cell::Cell::new(0usize);
    let pick = || {
        next.set((next.get() + 1) % m);
        next.get()
    };
    let mut rows_out = Vec::new();
    for &rows in &args.rows {
        // The kernels compute whole blocks of rows (8 for fp32; bf16 on AMX tiles: 32).
        let r8 = rows.div_ceil(packed[0].row_block()) * packed[0].row_block();
        let block16 = packed16.as_ref().map_or(1, |p| p[0].row_block());
        let r16 = rows.div_ceil(block16) * block16;
        let a: Vec<f32> = (0..r16.max(r8) * stride_in).map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5).collect();
        let at = Tensor::from_slice(&a[..rows * d]).view([rows as i64, d as i64]);
        let at16 = at.to_kind(Kind::BFloat16);
        let out = vec![0.0f32; r16.max(r8) * stride_out];
        // Every engine measured in turn, ROUNDS times, and the median of each kept: this
        // machine's speed drifts within seconds, and interleaving spreads the drift over all.
        let layers: Vec<Vec<_>> =
            isas.iter().map(|&isa| packed.iter().map(|p| p.clone().with_isa(isa)).collect()).collect();
        let a16: Vec<u16> = a.iter().map(|&x| mvp_infer::to_bf16(x)).collect();
        let out = std::cell::RefCell::new(out);
        let mut engines: Vec<Box<dyn FnMut() + '_>> =
            vec![Box::new(|| drop(at.mm(&wt[pick()]))), Box::new(|| drop(at16.mm(&wt16[pick()])))];
        for l in &layers {
            engines.push(Box::new(|| l[pick()].forward_f32(&a, r8, &mut out.borrow_mut())));
        }
        if let Some(p) = &packed16 {
            engines.push(Box::new(|| p[pick()].forward_bf16(&a16, r16, &mut out.borrow_mut())));
        }
        let mut samples = vec![Vec::new(); engines.len()];
        for _ in 0..ROUNDS {
            for (f, s) in engines.iter_mut().zip(&mut samples) {
                s.push(gflops(rows, d, args.seconds / ROUNDS as f64, &mut **f));
            }
        }
        drop(engines);
        let mut medians = samples.into_iter().map(|s| percentiles(s).0);
        let (libtorch_f32, libtorch_bf16) = (medians.next().unwrap_or(0.0), medians.next().unwrap_or(0.0));
        let native_f32: Vec<(String, f64)> =
            isas.iter().map(|i| (i.to_string(), medians.next().unwrap_or(0.0))).collect();
        let native_bf16 = medians.next();
        tracing::info!("rows {rows}: libtorch {libtorch_f32:.1}, native {native_f32:?} GFLOP/s");
        rows_out.push(GemmRow { rows, dim: d, libtorch_f32, libtorch_bf16, native_f32, native_bf16 });
    }
    println!("GEMM [rows × {d}] · [{d} × {d}], {m} weight matrices cycled, one thread, GFLOP/s (median call)\n");
    let bf16_kernel = packed16.as_ref().map_or("native bf16".to_string(), |p| format!("native {}", p[0].kernel()));
    let native_heads: String = isas.iter().map(|i| format!(" native fp32 {i} |")).collect();
    println!("| rows | libtorch fp32 | libtorch bf16 |{native_heads} {bf16_kernel} | best native / libtorch fp32 |");
    println!("|---|---|---|{}---|---|", "---|".repeat(isas.len()));
    for r in &rows_out {
        let b16 = r.native_bf16.map(|v| format!("{v:.1}")).unwrap_or_else(|| "no AVX512-BF16".into());
        let natives: String = r.native_f32.iter().map(|(_, g)| format!(" {g:.1} |")).collect();
        let best = r.native_f32.iter().map(|(_, g)| *g).fold(0.0, f64::max);
        println!(
            "| {} | {:.1} | {:.1} |{natives} {} | {:.2} |",
            r.rows,
            r.libtorch_f32,
            r.libtorch_bf16,
            b16,
            best / r.libtorch_f32
        );
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&rows_out)?)?;
    }
    Ok(())
}
