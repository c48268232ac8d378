//! `mvp bench expressiveness`: every policy trained with the same network and budget on the
//! synthetic multimodal tasks of [`mvp_actor::expressiveness`], over several seeds.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use mvp_actor::expressiveness::{self, Budget, EvalSet, RunResult, Task};
use mvp_actor::{ActorConfig, DiffusionConfig, FlowConfig, GenerativePolicy, MvpConfig, TimeSampler};
use mvp_nn::{MatmulPrecision, MlpConfig, Runtime, TimeFeatures};
use serde::Serialize;
use tch::{Device, Tensor};

/// Options of `mvp bench expressiveness`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Gradient steps per run.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Seeds per (task, policy).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Tasks (comma-separated): bimodal1d, ring2d, chunk10d.
    #[arg(long, value_delimiter = ',', default_value = "bimodal1d,ring2d,chunk10d")]
    tasks: Vec<String>,
    /// Hidden widths of every policy's network.
    #[arg(long, value_delimiter = ',', default_value = "256,256,256")]
    hidden: Vec<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    batch: i64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Denoising steps of the "large K" diffusion row.
    #[arg(long, default_value_t = 50)]
    diffusion_large_k: usize,
    /// Time sampler of the MVP rows: `logit_normal:MEAN:STD` or `uniform`.
    #[arg(long, default_value = "logit_normal:-0.4:1.0")]
    mvp_time_sampler: String,
    /// Adaptive loss-weighting power p of the MVP rows (0 = off).
    #[arg(long, default_value_t = 0.0)]
    mvp_adaptive_p: f64,
    /// Fourier time features for the MVP rows: number of frequencies (0 = raw times).
    #[arg(long, default_value_t = 0)]
    mvp_fourier: usize,
    /// Only rows whose label contains this text.
    #[arg(long)]
    only: Option<String>,
    /// libtorch threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Matmul precision of training and sampling: f32, or bf16 (bf16 operands, fp32 weights).
    #[arg(long, default_value = "f32")]
    matmul: MatmulPrecision,
    /// Write all runs and the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the markdown table here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn parse_sampler(s: &str) -> Result<TimeSampler> {
    let parts: Vec<&str> = s.split(':').collect();
    Ok(match parts.as_slice() {
        ["uniform"] => TimeSampler::Uniform,
        ["logit_normal", m, sd] => TimeSampler::LogitNormal { mean: m.parse()?, std: sd.parse()? },
        _ => anyhow::bail!("bad time sampler '{s}': expected uniform or logit_normal:MEAN:STD"),
    })
}

fn parse_task(s: &str) -> Result<Task> {
    Ok(match s {
        "bimodal1d" => Task::Bimodal1d,
        "ring2d" => Task::Ring2d,
        "chunk10d" => Task::Chunk10d,
        other => anyhow::bail!("unknown task '{other}': expected bimodal1d, ring2d or chunk10d"),
    })
}

/// The benchmark's rows: MVP λ = 1 and 0, flow K = 1 and 10, diffusion K = 10 and large K.
fn rows(net: &MlpConfig, large_k: usize, sampler: TimeSampler, adaptive_p: f64, fourier: usize) -> Vec<ActorConfig> {
    let time_features = if fourier == 0 {
        TimeFeatures::Raw
    } else {
        TimeFeatures::Fourier { n: fourier, max_freq: 2f64.powi(fourier as i32 - 1) }
    };
    let mvp = |l: f64| {
        ActorConfig::Mvp(MvpConfig {
            network: net.clone(),
            ivc_weight: l,
            time_sampler: sampler,
            adaptive_p,
            time_features,
            ..MvpConfig::default()
        })
    };
    let flow = |k| ActorConfig::Flow(FlowConfig { network: net.clone(), steps: k, ..FlowConfig::default() });
    let diff =
        |k| ActorConfig::Diffusion(DiffusionConfig { network: net.clone(), steps: k, ..DiffusionConfig::default() });
    vec![mvp(1.0), mvp(0.0), flow(1), flow(10), diff(10), diff(large_k)]
}

#[derive(Debug, Serialize)]
struct Summary {
    task: Task,
    policy: String,
    network_calls: usize,
    seeds: usize,
    energy_distance: (f64, f64),
    coverage: (f64, f64),
    between: (f64, f64),
    sample_ms: f64,
    train_seconds: f64,
    /// Energy distance of the same networks run in bf16 (native engine), when available.
    energy_distance_bf16: Option<(f64, f64)>,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, var.sqrt())
}

fn summarise(runs: &[RunResult]) -> Vec<Summary> {
    // Runs of one (task, policy) are adjacent; keep their order of appearance.
    let mut groups: Vec<Vec<&RunResult>> = Vec::new();
    for r in runs {
        match groups.last_mut() {
            Some(g) if g[0].task == r.task && g[0].policy == r.policy => g.push(r),
            _ => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let f = |pick: fn(&RunResult) -> f64| mean_std(&g.iter().map(|r| pick(r)).collect::<Vec<_>>());
            Summary {
                task: g[0].task,
                policy: g[0].policy.clone(),
                network_calls: g[0].network_calls,
                seeds: g.len(),
                energy_distance: f(|r| r.quality.energy_distance),
                coverage: f(|r| r.quality.coverage),
                between: f(|r| r.quality.between),
                sample_ms: f(|r| r.sample_ms).0,
                train_seconds: f(|r| r.train_seconds).0,
                energy_distance_bf16: g
                    .iter()
                    .map(|r| r.quality_bf16.map(|q| q.energy_distance))
                    .collect::<Option<Vec<f64>>>()
                    .map(|v| mean_std(&v)),
            }
        })
        .collect()
}

fn markdown(summary: &[Summary], args: &Args) -> String {
    let mut s = format!(
        "Expressiveness: behaviour cloning on known multimodal laws; network {:?} GELU, {} steps, batch {}, \
         lr {}, {} seeds (mean ± std), {} matmuls in training, 1 thread. Lower energy distance and between-modes share are better; \
         coverage 1 = every mode gets its share.\n\n\
         The bf16 column runs the same trained networks in bfloat16 (native engine) on the same states and noise.\n\n\
         | task | policy | calls | energy distance | energy distance, bf16 | mode coverage | between modes | ms / chunk (batch 1) |\n\
         |---|---|---|---|---|---|---|---|\n",
        args.hidden, args.steps, args.batch, args.lr, args.seeds, args.matmul
    );
    for r in summary {
        s += &format!(
            "| {:?} | {} | {} | {:.4} ± {:.4} | {} | {:.3} ± {:.3} | {:.3} ± {:.3} | {:.3} |\n",
            r.task,
            r.policy,
            r.network_calls,
            r.energy_distance.0,
            r.energy_distance.1,
            r.energy_distance_bf16.map(|(m, s)| format!("{m:.4} ± {s:.4}")).unwrap_or_else(|| "–".into()),
            r.coverage.0,
            r.coverage.1,
            r.between.0,
            r.between.1,
            r.sample_ms
        );
    }
    s
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    let device = Runtime { threads: args.threads, matmul: args.matmul, ..Runtime::default() }.apply()?;
    let tasks = args.tasks.iter().map(|t| parse_task(t)).collect::<Result<Vec<_>>>()?;
    let net = MlpConfig { hidden: args.hidden.clone(), ..MlpConfig::default() };
    let budget = Budget { steps: args.steps, batch: args.batch, lr: args.lr, ..Budget::default() };
    let configs: Vec<ActorConfig> = rows(
        &net,
        args.diffusion_large_k,
        parse_sampler(&args.mvp_time_sampler)?,
        args.mvp_adaptive_p,
        args.mvp_fourier,
    )
    .into_iter()
    .filter(|c| args.only.as_ref().is_none_or(|o| c.label().contains(o.as_str())))
    .collect();
    let total = tasks.len() * configs.len() * args.seeds as usize;
    let mut runs = Vec::with_capacity(total);
    for &task in &tasks {
        for config in &configs {
            for seed in 0..args.seeds {
                let r = expressiveness::run(task, config, seed, &budget, device, |policy, eval| {
                    native_bf16(task, policy, eval)
                });
                tracing::info!(
                    "[{}/{total}] {:?} {} seed {seed}: energy {:.4}, coverage {:.3}, between {:.3}, {:.1} s",
                    runs.len() + 1,
                    task,
                    r.policy,
                    r.quality.energy_distance,
                    r.quality.coverage,
                    r.quality.between,
                    r.train_seconds
                );
                runs.push(r);
            }
        }
    }
    let summary = summarise(&runs);
    let table = markdown(&summary, &args);
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({ "budget": budget, "hidden": args.hidden, "runs": runs, "summary": summary });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Quality of `policy` run by the native engine in bf16 from the same states and noise; `None`
/// when the policy has no native path or the CPU lacks bf16.
fn native_bf16(task: Task, policy: &dyn GenerativePolicy, eval: &EvalSet) -> Option<expressiveness::Quality> {
    let chunk_dim = task.shape().flat_dim();
    let weights = mvp_agent::export::policy_weights(policy, None, task.obs_dim(), chunk_dim, 1).ok()?;
    let mut native = mvp_infer::NativePolicy::new(&weights, mvp_infer::Precision::Bf16, 0).ok()?;
    Some(eval.quality(|obs, noise| {
        let host = |t: &Tensor| Vec::<f32>::try_from(&t.to_device(Device::Cpu).contiguous().view([-1])).expect("f32");
        let (o, n) = (host(obs), host(noise));
        let mut out = vec![0.0; n.len()];
        native.act_with_noise(&o, &n, &mut out);
        Tensor::from_slice(&out).view([-1, chunk_dim as i64]).to_device(obs.device())
    }))
}
