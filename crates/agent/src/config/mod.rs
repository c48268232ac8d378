//! The training configuration: serde structs with defaults in code, TOML files on top, and
//! `--set a.b=c` overrides on top of that. Validation happens once, in [`TrainConfig::load`],
//! and names the offending key.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mvp_actor::ActorConfig;
use mvp_critic::CriticConfig;
use mvp_data::DataConfig;
use mvp_nn::{AdamConfig, Runtime};
use serde::{Deserialize, Serialize};

mod overrides;
use overrides::apply_override;

/// Everything a training run needs. Each section is a TOML table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Naming, seeding and output.
    pub run: RunConfig,
    /// Device and libtorch threads.
    pub runtime: Runtime,
    /// The environment.
    pub env: EnvConfig,
    /// The offline dataset.
    pub data: DataConfig,
    /// The native engine's kernels.
    pub engine: EngineConfig,
    /// The agent: chunking, selection, actor and critic.
    pub agent: AgentConfig,
    /// Phases and intervals.
    pub schedule: ScheduleConfig,
}

/// Naming, seeding and output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Seed of everything (network init, sampling, environments as `seed + i`).
    pub seed: u64,
    /// Parent directory of run directories.
    pub out_dir: PathBuf,
    /// Run directory name; empty = `{env}__{actor}__{seed}__{unix time}`.
    pub name: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { seed: 0, out_dir: PathBuf::from("runs"), name: String::new() }
    }
}

/// The environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnvConfig {
    /// Environment id, e.g. `branch-reach-v0` (native) or an OGBench task.
    pub name: String,
    /// Map every non-zero reward to −1 (OGBench's `sparse` option).
    pub sparse: bool,
    /// Seed offset of evaluation environments, so they never share seeds with training's.
    pub eval_seed_offset: u64,
    /// Training environments E, stepped together every E steps of the schedule by one
    /// collector (one batched policy call for those that need a chunk; `schedule.utd` stays
    /// per environment step); episode k over all environments is reset with seed
    /// `run.seed + k`. E = 1 (the paper's setting) stores each transition at once and resumes
    /// exactly; E > 1 stores whole episodes, and a resumed run restarts the running ones.
    pub num_envs: usize,
    /// Python worker processes hosting the training environments (at most `num_envs`).
    pub workers: usize,
    /// Training environments hosted by workers listening on TCP (`HOST:PORT` each, started
    /// with `python -m mvp_envs.worker --listen HOST:PORT`, e.g. on other machines) instead
    /// of child processes; `workers` is then their count. Evaluation stays local.
    pub worker_addresses: Vec<String>,
    /// The file holding the shared secret of the workers at `worker_addresses` (they refuse a
    /// client without it): empty, `$MVP_WORKER_SECRET` when set, else
    /// `~/.config/mvp/worker-secret`, which `python -m mvp_envs.worker --listen` makes on its
    /// machine (copy it here). Ray workers get a secret of the run's own.
    pub worker_secret_file: String,
    /// Where the training environments' workers run: `local` (child processes, or
    /// `worker_addresses`), or `ray`: `workers` Ray actors, each asking for `ray_cpus` CPUs,
    /// spread over the cluster at `ray_address` and reached over TCP; a worker actor that dies
    /// is restarted by Ray (on another node if its node is lost) and reconnected here, counted
    /// as a worker restart. Evaluation stays local.
    pub remote: Remote,
    /// The Ray cluster of `remote = "ray"`: `HEAD:PORT`, `auto` (the cluster this machine
    /// joined with `ray start`), or empty: a local Ray instance started for the run.
    pub ray_address: String,
    /// Ray CPUs each worker actor asks for (`remote = "ray"`).
    pub ray_cpus: f64,
    /// Collect on a thread of its own during the online phase, so that environment steps
    /// overlap updates: collector step k + 2 acts with the networks after the learner's step k
    /// (one step staler than lockstep) on the native engine. An uninterrupted run repeats
    /// itself, but a resumed one starts new episodes (the thread's running ones are not in the
    /// checkpoint). Off (lockstep, exact resume) by default. Needs the native engine.
    pub async_collect: bool,
    /// Evaluation environments run at once (their chunks come from one batched policy call).
    pub eval_envs: usize,
    /// Python worker processes that host the evaluation environments (at most `eval_envs`).
    pub eval_workers: usize,
    /// Observations the policy and critics see at once: the last `obs_history` of the episode,
    /// oldest first, in the dataset and online alike (MP1: 2). 1: the current one.
    pub obs_history: usize,
}

impl Default for EnvConfig {
    fn default() -> Self {
        Self {
            name: "branch-reach-v0".into(),
            sparse: false,
            eval_seed_offset: 1_000_000,
            num_envs: 1,
            workers: 1,
            worker_addresses: Vec::new(),
            worker_secret_file: String::new(),
            remote: Remote::Local,
            ray_address: String::new(),
            ray_cpus: 1.0,
            async_collect: false,
            eval_envs: 1,
            eval_workers: 1,
            obs_history: 1,
        }
    }
}

/// The agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Action chunk length h (paper: 5).
    pub horizon: usize,
    /// Candidates per selection N (paper: 32; BFN: 4; 1 = no selection).
    pub num_samples: usize,
    /// Candidates per selection during the offline phase (acting, evaluation and TD targets);
    /// 0 = `num_samples`. A young critic trained only on dataset chunks rates candidates far
    /// from the data unreliably, and the argmax over many candidates finds its errors.
    pub offline_num_samples: usize,
    /// Share of each actor batch whose regression target is the selected chunk a* re-generated
    /// at the batch state (best of N by the online critic) instead of the stored chunk. 0 = QC's
    /// stored chunks; the MVP paper calls a* "the target action for policy training".
    pub selected_target_fraction: f64,
    /// Where the TD target's generate-and-select (N candidates at every next state of the
    /// batch, scored by the online critic) runs, and with it acting (collection, evaluation,
    /// videos): `auto` (the faster engine at the run's shapes on this CPU, measured at start-up
    /// and cached; see [`crate::engines`]), `libtorch`, or `native` (CPU, actors
    /// with a native path: MVP, and flow with raw time features). The native engine is
    /// re-packed from the current weights before every target and gets the same noise as
    /// libtorch would; in fp32 it selects the same chunks within rounding. It is most of an
    /// update's arithmetic at N = 32.
    pub select_engine: Engine,
    /// The native selection's number format: unset = bf16 where the CPU has AVX512-BF16 (the
    /// candidates and scores rounded; learning measured the same), else fp32; or `"f32"`,
    /// `"bf16"`.
    pub select_precision: Option<mvp_nn::MatmulPrecision>,
    /// Where the critic's TD update runs: `libtorch`, or `native`: the target members'
    /// values, the online members' forward and backward passes on the native kernels and
    /// Adam from their host gradients (CPU, GELU critics, Adam without weight decay or
    /// clipping; the same loss, tested against libtorch's gradients). The products follow
    /// `runtime.matmul`: fp32, or bf16 operands with fp32 sums on CPUs with AVX512-BF16.
    /// `auto` (the default): the faster engine at the run's shapes, as for selection.
    pub critic_engine: Engine,
    /// Where the actor's update runs: `libtorch`, or `native`: the generative loss (MeanFlow
    /// with its JVP and the IVC, or flow matching), its backward pass on the native kernels
    /// and Adam from the host gradients (CPU, MVP or flow actors with GELU networks on raw
    /// times, no point cloud, no CFG folding, adaptive weighting or dispersive loss; Adam
    /// without weight decay or clipping; the same loss and randomness, tested against
    /// libtorch's gradients; products in `runtime.matmul`'s format as for the critic). `auto`
    /// (the default): the faster engine at the run's shapes, as for selection.
    pub actor_engine: Engine,
    /// Imitation learning: the actor is trained on the dataset's chunks alone (behaviour
    /// cloning with the actor's generative loss), with no critic update, no TD target and no
    /// selection; needs `num_samples = 1` and no online phase. MP1-style runs.
    pub imitation: bool,
    /// Exponential moving average of the actor's weights for acting, evaluation and export
    /// (MP1, diffusion policies): after each actor update ema ← d·ema + (1 − d)·θ with this d;
    /// 0 = off (act with the trained weights). TD targets always use the trained actor.
    pub actor_ema: f64,
    /// Batch size.
    pub batch_size: usize,
    /// The generative actor (`kind = "mvp" | "flow" | "diffusion"` and its fields).
    pub actor: ActorConfig,
    /// The critic ensemble.
    pub critic: CriticConfig,
    /// Adam for the actor.
    pub actor_optim: AdamConfig,
    /// Adam for the critic.
    pub critic_optim: AdamConfig,
}

/// Where the training environments' workers run (`env.remote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Remote {
    /// Child processes of the trainer, or workers at `env.worker_addresses`.
    #[default]
    Local,
    /// Ray actors (`env.ray_address`, `env.ray_cpus`).
    Ray,
}

/// Where a step with two engines runs (`agent.select_engine`, `agent.critic_engine`,
/// `agent.actor_engine`, and the benchmarks' `--select`, `--critic`, `--actor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// The faster of the two at the run's shapes on this CPU (measured; see
    /// `mvp_agent::engines`), where the native one can run; else libtorch.
    #[default]
    Auto,
    /// libtorch: its tensors, autograd and the optimiser's tensor step.
    Libtorch,
    /// The native kernels (`mvp-infer`) and a host-gradient Adam step.
    Native,
}

/// The kernel family of the native engine (`engine.isa`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `auto` (the best this CPU runs), or a cap: `portable`, `avx2`, `avx512` (never above
    /// what the CPU has: asking for more is an error).
    pub isa: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { isa: "auto".into() }
    }
}

impl EngineConfig {
    /// The cap this config sets: `None` for `auto`. Fails naming the key and the allowed values,
    /// or where the CPU lacks the family.
    pub fn cap(&self) -> Result<Option<mvp_infer::Isa>> {
        if self.isa == "auto" {
            return Ok(None);
        }
        let isa: mvp_infer::Isa =
            self.isa.parse().map_err(|e| anyhow::anyhow!("config key `engine.isa`: {e}, or auto"))?;
        if !isa.runs_here() {
            bail!(
                "config key `engine.isa`: this CPU does not run {isa} (it runs up to {})",
                mvp_infer::Isa::detected()
            );
        }
        Ok(Some(isa))
    }

    /// Caps the native kernels of everything built from now on (`engine.isa`).
    pub fn apply(&self) -> Result<()> {
        mvp_infer::Isa::set_cap(self.cap()?);
        Ok(())
    }
}

impl AgentConfig {
    /// Candidates per selection in a phase: `offline_num_samples` (when set) offline,
    /// `num_samples` online.
    pub fn num_samples_in(&self, offline: bool) -> usize {
        if offline && self.offline_num_samples > 0 {
            self.offline_num_samples
        } else {
            self.num_samples
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            horizon: 5,
            num_samples: 32,
            offline_num_samples: 0,
            selected_target_fraction: 0.0,
            imitation: false,
            actor_ema: 0.0,
            select_engine: Engine::Auto,
            select_precision: None,
            critic_engine: Engine::Auto,
            actor_engine: Engine::Auto,
            batch_size: 256,
            actor: ActorConfig::default(),
            critic: CriticConfig::default(),
            actor_optim: AdamConfig::default(),
            critic_optim: AdamConfig::default(),
        }
    }
}

/// Phases and intervals, in gradient steps (offline) and environment steps (online).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Gradient steps on the dataset before going online (paper: 1M).
    pub offline_steps: u64,
    /// Environment steps online (paper: 1M).
    pub online_steps: u64,
    /// Online steps before updates start (paper: 5000); with no dataset these act at random.
    pub warmup_steps: u64,
    /// Updates per online environment step.
    pub utd: usize,
    /// Share of each online-phase batch drawn from transitions collected online (the rest from
    /// the dataset); negative = no split, windows drawn uniformly over the whole buffer (QC).
    pub online_fraction: f64,
    /// Steps between evaluations (0 = only at the end).
    pub eval_interval: u64,
    /// Episodes per evaluation (paper: 50).
    pub eval_episodes: usize,
    /// Episodes of the evaluation at the schedule's end (0 = `eval_episodes`): the points of
    /// a learning curve can take fewer episodes than the final figure.
    pub final_eval_episodes: usize,
    /// Actions of each chunk executed in evaluation before the policy is queried again:
    /// 0 = the whole chunk (h, open loop, as trained); 1 = receding horizon (closed loop).
    /// Training always executes whole chunks (the critic values whole chunks).
    pub eval_execute_steps: usize,
    /// Run evaluations on their own thread while training goes on: the acting networks are
    /// packed for the native engine at the evaluation's step (the precision of
    /// `agent.select_engine`) and its result is logged at that step when it finishes. Needs
    /// the native engine (MVP and flow actors on a CPU); otherwise evaluation stops training
    /// as it does with `false`. Training is the same either way (evaluation draws none of its
    /// randomness); the final evaluation always runs in the foreground.
    pub eval_background: bool,
    /// Episodes recorded as videos at each evaluation (0: none): GIFs in `<run>/videos/` and a
    /// strip of frames per episode in TensorBoard (`video/episode_K`). Rendering is offscreen
    /// in a separate worker (MuJoCo environments only) and costs about a frame's drawing per
    /// step; the episodes are extra, not the evaluation's.
    pub video_episodes: usize,
    /// Width and height of video frames in pixels.
    pub video_size: [u32; 2],
    /// Steps between metric logs.
    pub log_interval: u64,
    /// Steps between checkpoints (0 = only at the end).
    pub checkpoint_interval: u64,
    /// Checkpoints kept on disk.
    pub keep_checkpoints: usize,
    /// Save the replay buffer with each checkpoint, for an exact resume of the online phase.
    pub save_buffer: bool,
    /// Replay capacity in transitions (the dataset plus online data).
    pub buffer_capacity: usize,
    /// Stop after this many steps of the whole schedule (offline + online), as if
    /// interrupted; 0 = run to the end. Used to test resume.
    pub stop_after: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            offline_steps: 1_000_000,
            online_steps: 1_000_000,
            warmup_steps: 5_000,
            utd: 1,
            online_fraction: -1.0,
            eval_interval: 100_000,
            eval_episodes: 50,
            final_eval_episodes: 0,
            eval_execute_steps: 0,
            eval_background: true,
            video_episodes: 0,
            video_size: [256, 256],
            log_interval: 1_000,
            checkpoint_interval: 100_000,
            keep_checkpoints: 2,
            save_buffer: true,
            buffer_capacity: 3_000_000,
            stop_after: 0,
        }
    }
}

impl TrainConfig {
    /// The evaluation protocol: episodes, actions executed per chunk (`eval_execute_steps`, 0 =
    /// the chunk length) and the seed of the first episode (a stream apart from training's).
    pub fn eval_protocol(&self) -> (usize, usize, u64) {
        let s = &self.schedule;
        let execute = if s.eval_execute_steps == 0 { self.agent.horizon } else { s.eval_execute_steps };
        (s.eval_episodes, execute, self.env.eval_seed_offset + self.run.seed * 10_000)
    }

    /// [`TrainConfig::eval_protocol`] of the evaluation at `step`: the schedule's last step
    /// takes `schedule.final_eval_episodes` where set.
    pub fn eval_protocol_at(&self, step: u64) -> (usize, usize, u64) {
        let (episodes, execute, seed) = self.eval_protocol();
        let s = &self.schedule;
        match step == s.offline_steps + s.online_steps && s.final_eval_episodes > 0 {
            true => (s.final_eval_episodes, execute, seed),
            false => (episodes, execute, seed),
        }
    }

    /// Reads `file` (if any), applies `KEY=VALUE` overrides, deserialises and validates.
    /// Errors name the key: unknown keys list the allowed ones.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut value: toml::Value = match file {
            Some(f) => {
                let text = std::fs::read_to_string(f).with_context(|| format!("reading config {}", f.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", f.display()))?
            }
            None => toml::Value::Table(Default::default()),
        };
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let config: TrainConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("config key `{path}`: {}", e.into_inner())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that types alone do not express.
    pub fn validate(&self) -> Result<()> {
        let a = &self.agent;
        let check = |ok: bool, key: &str, allowed: &str| -> Result<()> {
            if ok {
                Ok(())
            } else {
                bail!("config key `{key}` is out of range: allowed {allowed}")
            }
        };
        check(a.horizon >= 1, "agent.horizon", "an integer ≥ 1")?;
        check(a.num_samples >= 1, "agent.num_samples", "an integer ≥ 1")?;
        check(a.batch_size >= 1, "agent.batch_size", "an integer ≥ 1")?;
        check((0.0..1.0).contains(&a.actor_ema), "agent.actor_ema", "0 (off) or a decay in (0, 1)")?;
        check((0.0..=1.0).contains(&a.selected_target_fraction), "agent.selected_target_fraction", "[0, 1]")?;
        check(a.critic.ensemble >= 1, "agent.critic.ensemble", "an integer ≥ 1")?;
        check((0.0..=1.0).contains(&a.critic.tau), "agent.critic.tau", "0 ≤ τ ≤ 1")?;
        check((0.0..1.0).contains(&a.critic.gamma), "agent.critic.gamma", "0 ≤ γ < 1")?;
        check(a.actor_optim.lr > 0.0, "agent.actor_optim.lr", "> 0")?;
        check(a.critic_optim.lr > 0.0, "agent.critic_optim.lr", "> 0")?;
        if let ActorConfig::Mvp(m) = &a.actor {
            check(m.ivc_weight >= 0.0, "agent.actor.ivc_weight", "λ ≥ 0")?;
            check((0.0..=1.0).contains(&m.equal_time_fraction), "agent.actor.equal_time_fraction", "[0, 1]")?;
            check((0.0..=1.0).contains(&m.one_step_fraction), "agent.actor.one_step_fraction", "[0, 1]")?;
            check(m.dispersive_weight >= 0.0, "agent.actor.dispersive_weight", "≥ 0")?;
            check(m.dispersive_tau > 0.0, "agent.actor.dispersive_tau", "τ > 0")?;
            let hidden = m.network.hidden.len();
            check(
                m.dispersive_layer < hidden,
                "agent.actor.dispersive_layer",
                "a hidden layer index below the network's depth",
            )?;
        }
        let s = &self.schedule;
        if a.imitation {
            let n = a.num_samples_in(true).max(a.num_samples);
            check(n == 1, "agent.num_samples", "1 with agent.imitation = true (no critic selects)")?;
            check(s.online_steps == 0, "schedule.online_steps", "0 with agent.imitation = true")?;
            check(
                a.selected_target_fraction == 0.0,
                "agent.selected_target_fraction",
                "0 with agent.imitation = true",
            )?;
        }
        check(s.utd >= 1, "schedule.utd", "an integer ≥ 1")?;
        check(s.online_fraction <= 1.0, "schedule.online_fraction", "a share in [0, 1], or negative for no split")?;
        check(s.eval_episodes >= 1, "schedule.eval_episodes", "an integer ≥ 1")?;
        check(
            s.eval_execute_steps <= a.horizon,
            "schedule.eval_execute_steps",
            "0 (whole chunks) or 1..=agent.horizon",
        )?;
        check(
            s.video_size.iter().all(|&x| (16..=2048).contains(&x)),
            "schedule.video_size",
            "[width, height], each 16..=2048 pixels",
        )?;
        check(s.log_interval >= 1, "schedule.log_interval", "an integer ≥ 1")?;
        check(s.keep_checkpoints >= 1, "schedule.keep_checkpoints", "an integer ≥ 1")?;
        check(s.buffer_capacity >= a.batch_size + a.horizon, "schedule.buffer_capacity", "≥ batch_size + horizon")?;
        check(self.runtime.threads >= 1, "runtime.threads", "an integer ≥ 1")?;
        self.engine.cap()?;
        check(self.data.generate_workers >= 1, "data.generate_workers", "an integer ≥ 1")?;
        check(self.env.num_envs >= 1, "env.num_envs", "an integer ≥ 1")?;
        check(self.env.workers >= 1, "env.workers", "an integer ≥ 1")?;
        check(self.env.eval_envs >= 1, "env.eval_envs", "an integer ≥ 1")?;
        check(self.env.eval_workers >= 1, "env.eval_workers", "an integer ≥ 1")?;
        check(self.env.obs_history >= 1, "env.obs_history", "an integer ≥ 1")?;
        check(self.env.ray_cpus >= 0.0 && self.env.ray_cpus.is_finite(), "env.ray_cpus", "a CPU count ≥ 0")?;
        Ok(())
    }

    /// The config as TOML (what a run's config.toml holds below its header line).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("serialising the resolved config")
    }
}
