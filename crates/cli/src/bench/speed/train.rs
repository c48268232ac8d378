//! `mvp bench train`: updates per second per method, engine combination and matmul
//! precision, optionally phase by phase.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use mvp_actor::ActorConfig;
use mvp_agent::config::{AgentConfig, Engine as StepEngine};
use mvp_agent::Agent;
use mvp_infer::Precision;
use mvp_nn::{MatmulPrecision, Runtime};
use mvp_replay::{ChunkBatch, ReplayBuffer, Transition};
use rand::SeedableRng;
use serde::Serialize;
use tch::Device;

use super::{methods, mlp_flops, percentiles, sync, Common};

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
        ActorConfig::Fql(_) => (1, 0),
    };
    let n = config.num_samples as f64;
    let b = batch as f64;
    let actor = mlp_flops(c.obs_dim + d + times, &c.hidden, d);
    let critic = mlp_flops(c.obs_dim + d, &c.hidden, 1) * config.critic.ensemble as f64;
    // The actor loss: MVP = forward with JVP (2 forwards) + IVC forward; flow/diffusion: 1.
    let actor_loss = match &config.actor {
        ActorConfig::Mvp(x) => actor * if x.ivc_weight > 0.0 { 3.0 } else { 2.0 },
        // FQL: the flow's loss, its K-step sample (the distillation target) and μ, twice
        // (distillation and Q term); the critic's pass of the Q term is not counted.
        ActorConfig::Fql(x) => actor * (1 + x.flow_steps.max(1) + 2) as f64,
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
                let mut batch = ChunkBatch::new(args.batch, config.horizon, c.obs_dim, c.action_dim);
                mvp_agent::agent::fill_synthetic(&mut batch);
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
    batch: ChunkBatch,
    totals: Vec<f64>,
    phases: Vec<(&'static str, Vec<f64>)>,
}

impl Timed {
    /// Times `n` more updates (each copies its batch to the device where a libtorch step
    /// reads it); with a sampler, each phase too, including drawing a batch from a replay
    /// buffer.
    fn time(&mut self, n: usize, mut sampler: Option<&mut Sampler>, device: Device) -> Result<()> {
        for _ in 0..n {
            if let Some(s) = sampler.as_deref_mut() {
                let start = Instant::now();
                s.sample(self.config.horizon)?;
                record(&mut self.phases, "batch: sample", start.elapsed().as_secs_f64() * 1e3);
            }
            let start = Instant::now();
            if sampler.is_some() {
                for (phase, ms) in mvp_agent::engines::timed_update(&mut self.agent, &self.batch)? {
                    record(&mut self.phases, phase, ms);
                }
            } else {
                self.agent.update(&self.batch)?;
            }
            sync(device);
            self.totals.push(start.elapsed().as_secs_f64() * 1e3);
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
            buffer.push(&Transition::new(
                &row.observations,
                &row.actions[..c.action_dim],
                -1.0,
                &row.next_observations,
                i % 1000 == 999,
                1.0,
            ))?;
        }
        let host = ChunkBatch::new(batch, 1, c.obs_dim, c.action_dim);
        Ok(Self { buffer, host, rng: rand::rngs::StdRng::seed_from_u64(0), batch })
    }

    fn sample(&mut self, horizon: usize) -> Result<()> {
        if self.host.h != horizon {
            self.host = ChunkBatch::new(self.batch, horizon, self.host.obs_dim, self.host.act_dim);
        }
        self.buffer.sample_chunks(&mut self.rng, self.batch, horizon, 0.99, &mut self.host)?;
        Ok(())
    }
}

fn record(phases: &mut Vec<(&'static str, Vec<f64>)>, phase: &'static str, ms: f64) {
    match phases.iter_mut().find(|(p, _)| *p == phase) {
        Some((_, t)) => t.push(ms),
        None => phases.push((phase, vec![ms])),
    }
}
