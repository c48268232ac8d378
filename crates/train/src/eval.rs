//! The evaluation protocol: greedy generate-and-select with the online critic, one query per
//! chunk executed open-loop (stopping at the episode's end; `schedule.eval_execute_steps`
//! executes only the first actions of each chunk), success read from the
//! environment's `info.success` at the end of each episode. Episode `i` is reset with seed
//! `seed + i`, a stream kept apart from training's. The episodes are spread over the
//! environments of a pool ([`mvp_rollout::evaluate`]); every environment that needs a chunk
//! is served by one batched call of the agent.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use mvp_nn::checkpoint;
use mvp_rollout::EnvPool;
use serde::{Deserialize, Serialize};

use crate::progress::{step_seed, Progress};
use mvp_agent::Agent;
use mvp_agent::TrainConfig;

/// Outcome of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Episodes run.
    pub episodes: usize,
    /// Share of episodes that ended in success.
    pub success_rate: f64,
    /// Mean undiscounted return.
    pub mean_return: f64,
    /// Mean episode length.
    pub mean_length: f64,
}

/// A trained agent read from a run directory for evaluation only (`mvp eval --run`): the run's
/// config (with overrides), the networks of one checkpoint and the evaluation environments —
/// no dataset, no replay buffer, no training environments.
pub struct RunEvaluation {
    config: TrainConfig,
    agent: Agent,
    pool: Box<dyn EnvPool>,
    step: u64,
}

impl RunEvaluation {
    /// Opens the checkpoint of `step` (default: the latest) in `run_dir` with `overrides`
    /// (e.g. `schedule.eval_episodes=100`).
    pub fn open(run_dir: &Path, step: Option<u64>, overrides: &[String]) -> Result<Self> {
        let config = run_config(run_dir, overrides)?;
        let device = config.runtime.apply()?;
        config.engine.apply()?;
        let e = &config.env;
        let pool = mvp_rollout::make_pool(&e.name, e.eval_envs, e.eval_workers, e.eval_seed_offset, e.obs_history)?;
        let dir = checkpoint_dir(run_dir, step)?;
        let (o, a) = (pool.spec().obs_dim, pool.spec().action_dim);
        let (agent, step) = load_agent(&dir, Some((o, a)), &config, device)?;
        Ok(Self { config, agent, pool, step })
    }

    /// The step of the checkpoint evaluated.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The evaluation protocol of the run's config with the libtorch networks.
    pub fn evaluate(&mut self) -> Result<EvalResult> {
        let (episodes, execute, seed) = self.config.eval_protocol();
        evaluate(&self.agent, self.pool.as_mut(), episodes, execute, seed)
    }

    /// Records `episodes` episodes of the checkpoint's policy (the run's protocol, `size`
    /// pixels) as GIFs in `dir`; `precision` None: the libtorch networks.
    pub fn record(
        &mut self,
        episodes: usize,
        size: [u32; 2],
        precision: Option<mvp_infer::Precision>,
        dir: &Path,
    ) -> Result<Vec<Video>> {
        let (_, execute, seed) = self.config.eval_protocol();
        let prefix = format!("step_{:010}", self.step);
        let env = (self.config.env.name.as_str(), self.config.env.obs_history);
        record_agent(&self.agent, precision, env, size, (episodes, execute, seed), dir, &prefix)
    }

    /// The same protocol on the native engine at `precision` (see [`evaluate_native`]).
    pub fn evaluate_native(&mut self, precision: mvp_infer::Precision) -> Result<EvalResult> {
        let (episodes, execute, seed) = self.config.eval_protocol();
        evaluate_native(&self.agent, self.pool.as_mut(), episodes, execute, seed, precision)
    }
}

/// Runs `episodes` evaluation episodes of `agent` over the environments of `pool`, executing
/// the first `execute` actions of each chunk (the chunk length h: all of it).
pub fn evaluate(
    agent: &Agent,
    pool: &mut dyn EnvPool,
    episodes: usize,
    execute: usize,
    seed: u64,
) -> Result<EvalResult> {
    run_episodes(agent.shape().horizon, pool, episodes, execute, seed, &mut |obs, k| agent.act_rows(obs, k))
}

/// [`evaluate`] with the acting networks run by the native engine (`mvp-infer`) at
/// `precision`: the deployment path, e.g. to check that bf16 acting keeps the success rate.
/// Its candidates' noise comes from the engine's own generator (seeded with `seed`).
pub fn evaluate_native(
    agent: &Agent,
    pool: &mut dyn EnvPool,
    episodes: usize,
    execute: usize,
    seed: u64,
    precision: mvp_infer::Precision,
) -> Result<EvalResult> {
    let native = agent.native_policy(precision, seed)?;
    run_native(native, agent.shape().horizon, pool, episodes, execute, seed)
}

fn run_native(
    mut native: mvp_infer::NativePolicy,
    horizon: usize,
    pool: &mut dyn EnvPool,
    episodes: usize,
    execute: usize,
    seed: u64,
) -> Result<EvalResult> {
    run_episodes(horizon, pool, episodes, execute, seed, &mut native_acting(&mut native))
}

/// An evaluation on its own thread: the acting networks as they are at its start, packed for
/// the native engine, and the evaluation environments, while training goes on
/// (`schedule.eval_background`). Its result does not depend on when it runs: the snapshot is
/// fixed and the engine's noise is seeded like [`evaluate_native`]'s.
pub struct BackgroundEval {
    step: u64,
    weights: mvp_infer::PolicyWeights,
    started: Instant,
    handle: JoinHandle<(Box<dyn EnvPool>, Result<EvalResult>)>,
}

impl BackgroundEval {
    /// Starts the protocol `(episodes, execute, seed)` of `agent` at training step `step` on
    /// `pool`, which comes back with the result.
    pub fn start(
        agent: &Agent,
        precision: mvp_infer::Precision,
        pool: Box<dyn EnvPool>,
        protocol: (usize, usize, u64),
        step: u64,
    ) -> Result<Self> {
        Self::start_from(agent.policy_weights()?, agent.shape().horizon, precision, pool, protocol, step)
    }

    /// [`BackgroundEval::start`] from a snapshot of the networks (`weights`, chunks of
    /// `horizon` actions): a resumed run repeats an evaluation its interrupt cut short.
    pub fn start_from(
        weights: mvp_infer::PolicyWeights,
        horizon: usize,
        precision: mvp_infer::Precision,
        mut pool: Box<dyn EnvPool>,
        (episodes, execute, seed): (usize, usize, u64),
        step: u64,
    ) -> Result<Self> {
        let native = mvp_infer::NativePolicy::new(&weights, precision, seed)?;
        let handle = std::thread::Builder::new().name(format!("eval-{step}")).spawn(move || {
            let r = run_native(native, horizon, pool.as_mut(), episodes, execute, seed);
            (pool, r)
        })?;
        Ok(Self { step, weights, started: Instant::now(), handle })
    }

    /// The training step whose networks it evaluates.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The networks it evaluates.
    pub fn weights(&self) -> &mvp_infer::PolicyWeights {
        &self.weights
    }

    /// Whether it has finished (joining then does not wait).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the result; returns the environments, the result, the evaluation's own
    /// seconds and the weights it evaluated.
    pub fn join(self) -> Result<(Box<dyn EnvPool>, EvalResult, f64, mvp_infer::PolicyWeights)> {
        let (pool, result) =
            self.handle.join().map_err(|_| anyhow::anyhow!("the evaluation thread of step {} panicked", self.step))?;
        let r = result.with_context(|| format!("evaluation of step {}", self.step))?;
        Ok((pool, r, self.started.elapsed().as_secs_f64(), self.weights))
    }
}

/// One recorded episode (see [`record_videos`]).
#[derive(Debug, Clone, Serialize)]
pub struct Video {
    /// The GIF file.
    pub path: PathBuf,
    /// Frames in it: the episode's steps + 1.
    pub frames: usize,
    /// Environment steps of the episode.
    pub length: usize,
    /// Whether it ended in success.
    pub success: bool,
    /// Frame width and height in pixels.
    pub size: [usize; 2],
    /// Eight evenly spaced frames side by side (`8·width × height` RGB), for TensorBoard.
    #[serde(skip)]
    pub strip: Vec<u8>,
}

/// Frames of a video strip.
pub const STRIP_FRAMES: usize = 8;

/// Records `episodes` episodes of `policy` on one rendering environment `env` (frames of
/// `size`, episode k reset with seed `seed + k`, executing `execute` actions per chunk of
/// `horizon`) and writes each as `dir/{prefix}_ep{k}.gif` at 20 frames per second.
#[allow(clippy::too_many_arguments)]
pub fn record_videos(
    env: &str,
    history: usize,
    size: [u32; 2],
    (episodes, execute, seed): (usize, usize, u64),
    horizon: usize,
    policy: &mut mvp_rollout::Policy<'_>,
    dir: &Path,
    prefix: &str,
) -> Result<Vec<Video>> {
    let mut pool = mvp_rollout::make_render_pool(env, size, seed, history)?;
    let recorded = mvp_rollout::record(pool.as_mut(), horizon, execute, episodes, seed, policy);
    pool.close()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut videos = Vec::new();
    for (k, (stats, frames)) in recorded?.into_iter().enumerate() {
        let (w, h) = frames.first().map(|f| (f.width, f.height)).context("an episode without frames")?;
        let path = dir.join(format!("{prefix}_ep{k}.gif"));
        let n = mvp_logging::write_gif(&path, w, h, frames.iter().map(|f| f.rgb.as_slice()), 20)?;
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.rgb.as_slice()).collect();
        let strip = mvp_logging::frame_strip(w, h, &refs, STRIP_FRAMES);
        videos.push(Video { path, frames: n, length: stats.length, success: stats.success, size: [w, h], strip });
    }
    Ok(videos)
}

/// Records `episodes` episodes of an exported policy as GIFs in `dir` (the environment and
/// protocol its metadata records, `size` pixels).
pub fn record_policy(
    file: &mvp_infer::PolicyFile,
    precision: mvp_infer::Precision,
    episodes: usize,
    size: [u32; 2],
    dir: &Path,
) -> Result<Vec<Video>> {
    let p = PolicyProtocol::of(file)?;
    let mut native = mvp_infer::NativePolicy::new(&file.weights, precision, p.seed)?;
    let prefix = format!("step_{:010}", p.step);
    let (protocol, mut policy) = ((episodes, p.execute, p.seed), native_acting(&mut native));
    record_videos(&p.env, p.history, size, protocol, file.spec.horizon, &mut policy, dir, &prefix)
}

/// The environment and evaluation protocol an exported policy records ([`policy_metadata`]).
struct PolicyProtocol {
    env: String,
    history: usize,
    envs: usize,
    workers: usize,
    seed_offset: u64,
    episodes: usize,
    execute: usize,
    seed: u64,
    step: u64,
}

impl PolicyProtocol {
    fn of(file: &mvp_infer::PolicyFile) -> Result<Self> {
        let meta = &file.spec.metadata;
        let env = meta.get("env").and_then(|v| v.as_str()).context("the policy names no environment (metadata.env)")?;
        let num = |key: &str, default: u64| meta.get(key).and_then(|v| v.as_u64()).unwrap_or(default);
        let seed_offset = num("eval_seed_offset", 0);
        Ok(Self {
            env: env.to_string(),
            history: num("obs_history", 1) as usize,
            envs: num("eval_envs", 1) as usize,
            workers: num("eval_workers", 1) as usize,
            seed_offset,
            episodes: num("eval_episodes", 50) as usize,
            execute: num("eval_execute_steps", file.spec.horizon as u64) as usize,
            seed: num("eval_seed", seed_offset),
            step: num("step", 0),
        })
    }
}

/// [`record_videos`] of `agent`'s networks on the native engine at `precision` (None: the
/// libtorch networks).
pub(crate) fn record_agent(
    agent: &Agent,
    precision: Option<mvp_infer::Precision>,
    (env, history): (&str, usize),
    size: [u32; 2],
    protocol: (usize, usize, u64),
    dir: &Path,
    prefix: &str,
) -> Result<Vec<Video>> {
    let horizon = agent.shape().horizon;
    match precision {
        Some(p) => {
            let mut native = agent.native_policy(p, protocol.2)?;
            let mut policy = native_acting(&mut native);
            record_videos(env, history, size, protocol, horizon, &mut policy, dir, prefix)
        }
        None => {
            let mut policy = |obs: &[f32], k| agent.act_rows(obs, k);
            record_videos(env, history, size, protocol, horizon, &mut policy, dir, prefix)
        }
    }
}

/// The native engine as a rollout policy: `k` observations → `k` chunks.
fn native_acting(native: &mut mvp_infer::NativePolicy) -> impl FnMut(&[f32], usize) -> Result<Vec<f32>> + '_ {
    let d = native.chunk_dim();
    move |obs, k| {
        let mut out = vec![0.0; k * d];
        native.act(obs, &mut out);
        Ok(out)
    }
}

fn run_config(run_dir: &Path, overrides: &[String]) -> Result<TrainConfig> {
    TrainConfig::load(Some(&run_dir.join(crate::run_dir::CONFIG_FILE)), overrides)
        .with_context(|| format!("{} is not a run directory", run_dir.display()))
}

/// The checkpoint folder of `step` in `run_dir`, or its latest complete one.
fn checkpoint_dir(run_dir: &Path, step: Option<u64>) -> Result<PathBuf> {
    let root = run_dir.join(crate::trainer::CHECKPOINTS);
    let name = match step {
        Some(s) => checkpoint::step_name(s),
        None => checkpoint::latest(&root).with_context(|| format!("no complete checkpoint in {}", root.display()))?,
    };
    let dir = root.join(&name);
    if !dir.is_dir() {
        let mut have: Vec<String> = std::fs::read_dir(&root)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        have.retain(|n| n.starts_with("step_"));
        have.sort();
        anyhow::bail!("no checkpoint {name} in {} (there are: {})", root.display(), have.join(", "));
    }
    Ok(dir)
}

/// The networks of the checkpoint in `dir` (verified on reading), acting with the candidate
/// count of its phase, and its step. `dims` gives the observation and action widths, or `None`
/// to read them from the checkpoint's tensors ([`checkpoint_dims`]).
fn load_agent(
    dir: &Path,
    dims: Option<(usize, usize)>,
    config: &TrainConfig,
    device: tch::Device,
) -> Result<(Agent, u64)> {
    let loaded: checkpoint::Loaded<Progress> = checkpoint::load(dir)?;
    let (obs_dim, action_dim) = match dims {
        Some(d) => d,
        None => checkpoint_dims(&loaded, config.agent.horizon)?,
    };
    // The same generator state as a resumed run's (the networks' initialisation draws).
    tch::manual_seed(step_seed(config.run.seed, u64::MAX) as i64);
    let mut agent = Agent::new(obs_dim, action_dim, &config.agent, device)?;
    agent.load_state(&loaded.tensors, [0, 0])?;
    let step = loaded.meta.step;
    // A checkpoint of the offline phase acts with the offline candidate count.
    agent.set_num_samples(config.agent.num_samples_in(step <= config.schedule.offline_steps));
    Ok((agent, step))
}

/// Observation and action widths of the networks of a checkpoint, read from the critic's first
/// layer (`[E, S + h·|A|, H]`) and the actor's last (`[H, h·|A|]`), so that exporting needs no
/// environment.
fn checkpoint_dims(loaded: &checkpoint::Loaded<Progress>, horizon: usize) -> Result<(usize, usize)> {
    let shape = |name: &str| loaded.tensors.get(name).map(|t| t.size());
    let critic_in = shape("critic/l0.weight").and_then(|s| s.get(1).copied());
    let last = (0..).take_while(|i| shape(&format!("actor/l{i}.weight")).is_some()).last();
    let chunk = last.and_then(|i| shape(&format!("actor/l{i}.weight"))).and_then(|s| s.last().copied());
    match (critic_in, chunk) {
        (Some(c), Some(d)) if d > 0 && c > d && (d as usize).is_multiple_of(horizon) => {
            Ok(((c - d) as usize, d as usize / horizon))
        }
        _ => anyhow::bail!(
            "{}: cannot read the observation and action widths (an MLP actor and critic are expected)",
            loaded.dir.display()
        ),
    }
}

/// What an exported policy records about where it came from and how to evaluate it: the
/// environment and the run's evaluation protocol, so that `mvp eval --policy` repeats it.
pub fn policy_metadata(config: &TrainConfig, run_dir: &Path, step: u64) -> serde_json::Map<String, serde_json::Value> {
    let (episodes, execute, seed) = config.eval_protocol();
    let e = &config.env;
    let revision = std::fs::read(run_dir.join("run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["git_revision"].as_str().map(String::from));
    let json = serde_json::json!({
        "env": e.name,
        "obs_history": e.obs_history,
        "eval_envs": e.eval_envs,
        "eval_workers": e.eval_workers,
        "eval_seed_offset": e.eval_seed_offset,
        "eval_episodes": episodes,
        "eval_execute_steps": execute,
        "eval_seed": seed,
        "run": run_dir.display().to_string(),
        "step": step,
        "git_revision": revision,
    });
    json.as_object().cloned().unwrap_or_default()
}

/// The checkpoint of `step` (default: the latest) of `run_dir` as an exported policy
/// (`mvp export`). Reads only the run's config and that checkpoint.
pub fn export_run(run_dir: &Path, step: Option<u64>, overrides: &[String]) -> Result<mvp_infer::PolicyFile> {
    let config = run_config(run_dir, overrides)?;
    let dir = checkpoint_dir(run_dir, step)?;
    let (agent, step) = load_agent(&dir, None, &config, tch::Device::Cpu)?;
    let weights = agent.policy_weights().context("exporting the actor")?;
    mvp_infer::PolicyFile::new(weights, config.agent.horizon, policy_metadata(&config, run_dir, step))
        .map_err(anyhow::Error::msg)
}

/// Evaluates an exported policy on the native engine (`mvp eval --policy`): the environment and
/// protocol recorded in its metadata, `episodes` episodes if given. With the same protocol it
/// repeats `mvp eval --run` on the native engine at the same precision.
pub fn evaluate_policy(
    file: &mvp_infer::PolicyFile,
    precision: mvp_infer::Precision,
    episodes: Option<usize>,
) -> Result<EvalResult> {
    let p = PolicyProtocol::of(file)?;
    let mut pool = mvp_rollout::make_pool(&p.env, p.envs, p.workers, p.seed_offset, p.history)?;
    anyhow::ensure!(
        pool.spec().obs_dim == file.spec.obs_dim && pool.spec().action_dim == file.spec.action_dim,
        "{} has observations of {} and actions of {}, the policy expects {} and {}",
        p.env,
        pool.spec().obs_dim,
        pool.spec().action_dim,
        file.spec.obs_dim,
        file.spec.action_dim
    );
    let native = mvp_infer::NativePolicy::new(&file.weights, precision, p.seed)?;
    run_native(native, file.spec.horizon, pool.as_mut(), episodes.unwrap_or(p.episodes), p.execute, p.seed)
}

fn run_episodes(
    horizon: usize,
    pool: &mut dyn EnvPool,
    episodes: usize,
    execute: usize,
    seed: u64,
    policy: &mut mvp_rollout::Policy<'_>,
) -> Result<EvalResult> {
    let eps = mvp_rollout::evaluate(pool, horizon, execute, episodes, seed, policy)?;
    let n = episodes.max(1) as f64;
    Ok(EvalResult {
        episodes,
        success_rate: eps.iter().filter(|e| e.success).count() as f64 / n,
        mean_return: eps.iter().map(|e| e.ret).sum::<f64>() / n,
        mean_length: eps.iter().map(|e| e.length as f64).sum::<f64>() / n,
    })
}
