//! Behaviour cloning on synthetic conditional action laws that are known and multimodal,
//! to measure how well each generative policy represents them (`mvp bench expressiveness`).
//!
//! Each task draws states uniformly from [−1, 1]^S; for each state the action (chunk) comes
//! from an equal mixture of M well-separated modes whose positions move with the state, plus
//! isotropic Gaussian noise of std σ. Metrics on held-out states, per state then averaged:
//! - **energy distance** between policy samples and true samples (0 = same law);
//! - **mode coverage**: share of modes that receive at least a quarter of their fair share
//!   (1/M) of the samples;
//! - **between-modes share**: samples farther than `3σ√D` from every mode centre.

use std::time::Instant;

use mvp_nn::{Adam, AdamConfig};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::{ActorConfig, ChunkShape, GenerativePolicy};

/// A synthetic task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// 1-D action, two modes at ±0.6 shifted by 0.2·s, σ = 0.1.
    Bimodal1d,
    /// 2-D action, four modes on a ring of radius 0.6 rotating with the state.
    Ring2d,
    /// A chunk of h = 5 two-dimensional actions (10 numbers): three straight-line trajectories
    /// whose directions rotate with the state.
    Chunk10d,
}

impl Task {
    /// All tasks.
    pub const ALL: [Task; 3] = [Task::Bimodal1d, Task::Ring2d, Task::Chunk10d];

    /// State dimension.
    pub fn obs_dim(self) -> usize {
        match self {
            Task::Bimodal1d => 1,
            Task::Ring2d | Task::Chunk10d => 2,
        }
    }

    /// Shape of the generated chunk.
    pub fn shape(self) -> ChunkShape {
        match self {
            Task::Bimodal1d => ChunkShape { horizon: 1, action_dim: 1 },
            Task::Ring2d => ChunkShape { horizon: 1, action_dim: 2 },
            Task::Chunk10d => ChunkShape { horizon: 5, action_dim: 2 },
        }
    }

    /// Noise std around each mode (the 1-D modes are 12σ apart, the others ≥ 17σ).
    pub fn sigma(self) -> f64 {
        match self {
            Task::Bimodal1d => 0.1,
            Task::Ring2d | Task::Chunk10d => 0.05,
        }
    }

    /// Distance within which a sample counts as "at a mode": 3σ√D.
    pub fn near_radius(self) -> f64 {
        3.0 * self.sigma() * (self.shape().flat_dim() as f64).sqrt()
    }

    /// Mode centres for `obs [B, S]`: `[B, M, D]`.
    pub fn modes(self, obs: &Tensor) -> Tensor {
        let s0 = obs.select(1, 0).unsqueeze(1); // [B, 1]
        let opts = (obs.kind(), obs.device());
        match self {
            Task::Bimodal1d => {
                let signs = Tensor::from_slice(&[-0.6, 0.6]).to_kind(obs.kind()).to_device(obs.device()).unsqueeze(0);
                (signs + s0 * 0.2).unsqueeze(-1)
            }
            Task::Ring2d | Task::Chunk10d => {
                let m = if self == Task::Ring2d { 4 } else { 3 };
                let base = Tensor::arange(m, opts) * (2.0 * std::f64::consts::PI / m as f64);
                let phi = base.unsqueeze(0) + s0 * (std::f64::consts::PI / m as f64); // [B, M]
                let dir = Tensor::stack(&[phi.cos(), phi.sin()], -1); // [B, M, 2]
                if self == Task::Ring2d {
                    dir * 0.6
                } else {
                    let scale = (Tensor::arange(5, opts) + 1.0) * (0.8 / 5.0); // [5]
                    let chunk = dir.unsqueeze(2) * scale.view([1, 1, 5, 1]); // [B, M, 5, 2]
                    chunk.flatten(2, 3)
                }
            }
        }
    }

    /// States uniform in [−1, 1]^S.
    pub fn sample_obs(self, n: i64, device: Device) -> Tensor {
        Tensor::rand([n, self.obs_dim() as i64], (Kind::Float, device)) * 2.0 - 1.0
    }

    /// Draws from the true law at each state: `[B, D]`.
    pub fn sample_actions(self, obs: &Tensor) -> Tensor {
        let modes = self.modes(obs);
        let (b, m, d) = modes.size3().unwrap();
        let pick = Tensor::randint(m, [b, 1, 1], (Kind::Int64, obs.device())).expand([b, 1, d], false);
        let centre = modes.gather(1, &pick, false).squeeze_dim(1);
        &centre + centre.randn_like() * self.sigma()
    }
}

/// Quality of a policy's samples against the true law.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Mean energy distance over held-out states.
    pub energy_distance: f64,
    /// Mean share of modes covered.
    pub coverage: f64,
    /// Mean share of samples between modes.
    pub between: f64,
}

/// Measures `policy` on `states` held-out states with `per_state` samples each.
pub fn evaluate(task: Task, policy: &dyn GenerativePolicy, states: i64, per_state: i64, device: Device) -> Quality {
    EvalSet::new(task, states, per_state, device).quality(|obs, noise| policy.sample(obs, noise))
}

/// Held-out states, their repetitions, starting noise and true samples: one evaluation input
/// that several samplers (e.g. fp32 and bf16 versions of one policy) can be measured on.
pub struct EvalSet {
    task: Task,
    obs: Tensor,
    obs_rep: Tensor,
    noise: Tensor,
    truth: Tensor,
}

impl EvalSet {
    /// `states` held-out states with `per_state` samples each.
    pub fn new(task: Task, states: i64, per_state: i64, device: Device) -> Self {
        tch::no_grad(|| {
            let d = task.shape().flat_dim() as i64;
            let obs = task.sample_obs(states, device);
            let obs_rep = obs.repeat_interleave_self_int(per_state, 0, None); // [S·n, S]
            let noise = Tensor::randn([states * per_state, d], (Kind::Float, device));
            let truth = task.sample_actions(&obs_rep).view([states, per_state, d]);
            Self { task, obs, obs_rep, noise, truth }
        })
    }

    /// Quality of `sample(obs_rep, noise)` (one chunk per row).
    pub fn quality(&self, sample: impl FnOnce(&Tensor, &Tensor) -> Tensor) -> Quality {
        tch::no_grad(|| {
            let x = sample(&self.obs_rep, &self.noise).view(self.truth.size().as_slice());
            quality(self.task, &self.obs, &x, &self.truth)
        })
    }
}

/// Metrics of samples `x [S, n, D]` against true samples `y [S, n, D]` at states `obs [S, ·]`.
pub fn quality(task: Task, obs: &Tensor, x: &Tensor, y: &Tensor) -> Quality {
    let mean_dist =
        |a: &Tensor, b: &Tensor| Tensor::cdist(a, b, 2.0, None).mean_dim(&[1i64, 2][..], false, Kind::Float);
    let energy = (mean_dist(x, y) * 2.0 - mean_dist(x, x) - mean_dist(y, y)).mean(Kind::Float).double_value(&[]);
    let modes = task.modes(obs); // [S, M, D]
    let m = modes.size()[1];
    let dist = Tensor::cdist(x, &modes, 2.0, None); // [S, n, M]
    let (dmin, nearest) = dist.min_dim(2, false);
    let near = dmin.le(task.near_radius());
    let between = 1.0 - near.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    let onehot = nearest.one_hot(m).to_kind(Kind::Float) * near.unsqueeze(-1).to_kind(Kind::Float);
    let share = onehot.mean_dim(1, false, Kind::Float); // [S, M]
    let coverage = share.ge(0.25 / m as f64).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    Quality { energy_distance: energy, coverage, between }
}

/// Training budget and evaluation size of one benchmark run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Budget {
    /// Gradient steps.
    pub steps: usize,
    /// Batch size.
    pub batch: i64,
    /// Adam learning rate.
    pub lr: f64,
    /// Held-out states.
    pub eval_states: i64,
    /// Samples per held-out state.
    pub samples_per_state: i64,
}

impl Default for Budget {
    fn default() -> Self {
        Self { steps: 3000, batch: 256, lr: 1e-3, eval_states: 64, samples_per_state: 256 }
    }
}

/// One row of the benchmark: a policy on a task with one seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Task.
    pub task: Task,
    /// Policy label, e.g. `mvp(λ=1)`.
    pub policy: String,
    /// Seed.
    pub seed: u64,
    /// Sample quality.
    pub quality: Quality,
    /// Network calls per sample.
    pub network_calls: usize,
    /// Training wall time, seconds.
    pub train_seconds: f64,
    /// Median wall time to generate one chunk for one state, milliseconds.
    pub sample_ms: f64,
    /// Quality of the same trained network run in bf16 by the native engine, from the same
    /// states and noise (MVP and flow policies on CPUs with AVX512-BF16).
    pub quality_bf16: Option<Quality>,
}

/// Trains `config` on `task` from scratch and evaluates it; `native_bf16` gives the quality of
/// the same trained network run in bf16 by the native engine on the same states and noise
/// (`None` where there is none; the engine is not a dependency of this crate).
pub fn run(
    task: Task,
    config: &ActorConfig,
    seed: u64,
    budget: &Budget,
    device: Device,
    native_bf16: impl FnOnce(&dyn GenerativePolicy, &EvalSet) -> Option<Quality>,
) -> RunResult {
    tch::manual_seed(seed as i64);
    let vs = VarStore::new(device);
    let policy = config.build(&vs.root(), task.obs_dim(), task.shape());
    let mut adam = Adam::new(&vs, AdamConfig { lr: budget.lr, ..AdamConfig::default() });
    let start = Instant::now();
    for _ in 0..budget.steps {
        let obs = task.sample_obs(budget.batch, device);
        let act = task.sample_actions(&obs);
        let (loss, _) = policy.loss(&obs, &act, None);
        adam.backward_step(&loss);
    }
    let train_seconds = start.elapsed().as_secs_f64();
    let eval = EvalSet::new(task, budget.eval_states, budget.samples_per_state, device);
    let quality = eval.quality(|obs, noise| policy.sample(obs, noise));
    let quality_bf16 = native_bf16(policy.as_ref(), &eval);
    let obs = task.sample_obs(1, device);
    let noise = Tensor::randn([1, task.shape().flat_dim() as i64], (Kind::Float, device));
    let mut times: Vec<f64> = (0..60)
        .map(|_| {
            let s = Instant::now();
            let _ = policy.sample(&obs, &noise);
            s.elapsed().as_secs_f64() * 1e3
        })
        .skip(10)
        .collect();
    times.sort_by(f64::total_cmp);
    RunResult {
        task,
        policy: config.label(),
        seed,
        quality,
        network_calls: policy.network_calls(),
        train_seconds,
        sample_ms: times[times.len() / 2],
        quality_bf16,
    }
}
