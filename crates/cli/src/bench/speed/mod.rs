//! The speed benchmarks: `mvp bench latency` and `mvp bench train` (MVP against QC, BFN and
//! diffusion through the same agent code, in one run, one thread) and `mvp bench gemm` (the
//! native kernels against libtorch's products). This module holds what they share: the
//! common options, the methods compared and the timing helpers.

mod gemm;
mod latency;
mod train;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use mvp_actor::{ActorConfig, DiffusionConfig, FlowConfig, MvpConfig};
use mvp_agent::config::AgentConfig;
use mvp_infer::Isa;
use mvp_nn::{DeviceChoice, MlpConfig};
use tch::Device;

pub use gemm::{gemm, GemmArgs};
pub use latency::{latency, LatencyArgs};
pub use train::{train, TrainArgs};

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
        ActorConfig::Fql(_) => (1, 0),
    };
    let n = a.num_samples as f64;
    let actor = mlp_flops(c.obs_dim + d + times, &c.hidden, d) * calls as f64 * n;
    let critic =
        if a.num_samples > 1 { mlp_flops(c.obs_dim + d, &c.hidden, 1) * a.critic.ensemble as f64 * n } else { 0.0 };
    actor + critic
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
