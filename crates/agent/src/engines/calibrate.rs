//! The calibration `auto` decides by: a few timed updates of two throwaway agents at the
//! run's shapes, per step and engine, cached per CPU model, kernel family and shapes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use mvp_infer::Isa;
use mvp_replay::ChunkBatch;
use serde::{Deserialize, Serialize};
use tch::Device;

use super::{has_auto, Step, StepTimes};
use crate::agent::fill_synthetic;
use crate::config::{AgentConfig, Engine};
use crate::Agent;

/// Calibrations of this process, and a lock that keeps two from running at once.
pub(super) static MEMORY: Mutex<BTreeMap<String, Calibration>> = Mutex::new(BTreeMap::new());

/// What [`calibrate`] measured for one agent configuration on this CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Calibration {
    /// The steps calibrated (one bit per [`Step`]), timed or found unable to run natively.
    #[serde(default)]
    pub tried: u8,
    /// Per step, where both engines were timed.
    pub select: Option<StepTimes>,
    /// The critic's update.
    pub critic: Option<StepTimes>,
    /// The actor's update.
    pub actor: Option<StepTimes>,
    /// Seconds the last calibration of these shapes took.
    #[serde(default)]
    pub seconds: f64,
    /// Whether it was read from the cache rather than measured now.
    #[serde(skip)]
    pub cached: bool,
}

impl Calibration {
    /// The times of `step`.
    pub fn times(&self, step: Step) -> Option<StepTimes> {
        match step {
            Step::Select => self.select,
            Step::Critic => self.critic,
            Step::Actor => self.actor,
        }
    }

    /// One line for the log: each timed step's two engines and what it cost.
    pub fn summary(&self) -> String {
        let steps: Vec<String> = Step::ALL
            .iter()
            .filter_map(|&s| {
                self.times(s)
                    .map(|t| format!("{} {:.2} ms native, {:.2} ms libtorch", s.what(), t.native_ms, t.libtorch_ms))
            })
            .collect();
        let source = if self.cached { "from the cache".to_string() } else { format!("took {:.1} s", self.seconds) };
        format!("engine calibration ({source}): {}", steps.join("; "))
    }
}

/// The cache key of an agent configuration for `obs_dim` observations and `action_dim`
/// actions on this CPU with kernels of `isa`: everything that sets the shapes and the
/// arithmetic (the engines themselves and the learning rates left out).
fn cache_key(obs_dim: usize, action_dim: usize, config: &AgentConfig, isa: Isa) -> String {
    let mut c = config.clone();
    for s in Step::ALL {
        s.set(&mut c, Engine::Auto);
    }
    (c.actor_optim.lr, c.critic_optim.lr) = (0.0, 0.0);
    let shapes = serde_json::to_string(&c).unwrap_or_default();
    let matmul = mvp_nn::MatmulPrecision::current();
    format!("{} | {isa} | matmul {matmul} | {obs_dim}→{action_dim} | {shapes}", cpu_model())
}

/// The CPU's model name (`/proc/cpuinfo`), or the architecture where it cannot be read.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Where the calibration cache lives: `$MVP_CACHE_DIR`, else `$XDG_CACHE_HOME/mvp`, else
/// `~/.cache/mvp`.
fn cache_file() -> Option<PathBuf> {
    let dir = std::env::var_os("MVP_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("mvp")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mvp")))?;
    Some(dir.join("engine-calibration.json"))
}

fn read_cache() -> BTreeMap<String, Calibration> {
    cache_file()
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// The calibration of this configuration on this CPU, where one was measured (by this
/// process or an earlier one).
pub fn cached(obs_dim: usize, action_dim: usize, config: &AgentConfig) -> Option<Calibration> {
    let key = cache_key(obs_dim, action_dim, config, Isa::active());
    let memory = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = memory.get(&key) {
        return Some(Calibration { cached: true, ..c.clone() });
    }
    read_cache().remove(&key).map(|c| Calibration { cached: true, ..c })
}

/// Measures the `auto` steps of `config` on both engines at its shapes (unless this CPU's
/// cache has them) and remembers the result for [`Agent::new`]. Call it before seeding
/// libtorch's generator: it draws from it. Returns `None` where nothing is left to `auto`, the
/// networks are not on the CPU, or the throwaway agents fail (warned; `auto` takes the rule).
pub fn calibrate(
    obs_dim: usize,
    action_dim: usize,
    config: &AgentConfig,
    device: Device,
) -> Result<Option<Calibration>> {
    if !has_auto(config) || device != Device::Cpu || config.imitation {
        return Ok(None);
    }
    // Steps left to `auto` that no earlier calibration of these shapes timed (another run may
    // have left other steps to `auto`): only those are timed now, and added to the entry.
    let before = cached(obs_dim, action_dim, config);
    let tried = before.as_ref().map_or(0, |c| c.tried);
    let missing: Vec<Step> =
        Step::ALL.into_iter().filter(|&s| s.engine(config) == Engine::Auto && tried & s.bit() == 0).collect();
    if missing.is_empty() {
        return Ok(before);
    }
    let mut only = config.clone();
    for s in Step::ALL.into_iter().filter(|s| s.engine(config) == Engine::Auto && !missing.contains(s)) {
        s.set(&mut only, Engine::Libtorch);
    }
    let key = cache_key(obs_dim, action_dim, config, Isa::active());
    let start = Instant::now();
    let times = match time_steps(obs_dim, action_dim, &only) {
        Ok(t) => t,
        Err(e) => {
            // The throwaway agents failed (a diverging learning rate, say): the run itself
            // decides what to do about that; `auto` takes the rule.
            tracing::warn!("the engine calibration failed ({e:#}); `auto` follows the rule for {}", Isa::active());
            return Ok(before);
        }
    };
    let mut calibration = before.unwrap_or_default();
    for s in missing {
        calibration.tried |= s.bit();
        match s {
            Step::Select => calibration.select = times[0],
            Step::Critic => calibration.critic = times[1],
            Step::Actor => calibration.actor = times[2],
        }
    }
    (calibration.seconds, calibration.cached) = (start.elapsed().as_secs_f64(), false);
    MEMORY.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), calibration.clone());
    if let Err(e) = write_cache(&key, &calibration) {
        tracing::warn!("the engine calibration could not be cached ({e:#}); it will run again next time");
    }
    Ok(Some(calibration))
}

fn write_cache(key: &str, calibration: &Calibration) -> Result<()> {
    let file = cache_file().context("no cache directory (set MVP_CACHE_DIR)")?;
    let dir = file.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut all = read_cache();
    all.insert(key.to_string(), calibration.clone());
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&tmp, &all)?;
    tmp.persist(&file).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// Both engines' median milliseconds per update of each `auto` step of `config` (`None` for
/// steps not timed, or where the native engine cannot run them), from throwaway agents updated
/// on a synthetic batch of the run's shapes: one with every `auto` step on libtorch, one with
/// them on the native kernels (or, where that agent cannot be built, one per step). The agents
/// are timed in turn, round after round, so that a drift of the machine's speed (a shared VM's
/// neighbours, a process starting) falls on both engines alike.
fn time_steps(obs_dim: usize, action_dim: usize, config: &AgentConfig) -> Result<[Option<StepTimes>; 3]> {
    let auto: Vec<Step> = Step::ALL.into_iter().filter(|s| s.engine(config) == Engine::Auto).collect();
    let with = |native: &[Step]| {
        let mut c = config.clone();
        for &s in &auto {
            s.set(&mut c, if native.contains(&s) { Engine::Native } else { Engine::Libtorch });
        }
        c
    };
    let mut variants = vec![(Vec::new(), Variant::new(obs_dim, action_dim, &with(&[]))?)];
    match Variant::new(obs_dim, action_dim, &with(&auto)) {
        Ok(v) => variants.push((auto.clone(), v)),
        Err(_) => {
            for &s in &auto {
                if let Ok(v) = Variant::new(obs_dim, action_dim, &with(&[s])) {
                    variants.push((vec![s], v));
                }
            }
        }
    }
    for _ in 0..ROUNDS {
        for (_, v) in &mut variants {
            v.time(PER_ROUND)?;
        }
    }
    let mut out = [None; 3];
    let libtorch = variants[0].1.medians();
    for (native, v) in &variants[1..] {
        let times = v.medians();
        for &s in native {
            out[s.index()] = Some(StepTimes { libtorch_ms: libtorch[s.index()], native_ms: times[s.index()] });
        }
    }
    Ok(out)
}

/// One update of `agent` on `batch`, timed phase by phase (by the agent's profiler; on a GPU
/// each phase waits for the device): each phase's name and milliseconds, in order.
pub fn timed_update(agent: &mut Agent, batch: &ChunkBatch) -> Result<Vec<(&'static str, f64)>> {
    let marks: Arc<Mutex<Vec<(&'static str, Instant)>>> = Arc::default();
    let (sink, device) = (marks.clone(), agent.device());
    agent.set_profiler(Some(Box::new(move |phase| {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        sink.lock().expect("no panic holds it").push((phase, Instant::now()))
    })));
    let start = Instant::now();
    let done = agent.update(batch);
    agent.set_profiler(None);
    done?;
    let marks = std::mem::take(&mut *marks.lock().expect("no panic holds it"));
    let mut last = start;
    Ok(marks
        .into_iter()
        .map(|(phase, at)| {
            let ms = (at - last).as_secs_f64() * 1e3;
            last = at;
            (phase, ms)
        })
        .collect())
}

/// Warm-up updates per agent, then rounds of updates timed per agent.
const WARMUP: usize = 2;
const ROUNDS: usize = 3;
const PER_ROUND: usize = 2;

/// One throwaway agent of a calibration, its batch, and the milliseconds of each step per
/// timed update.
struct Variant {
    agent: Agent,
    batch: ChunkBatch,
    times: [Vec<f64>; 3],
}

impl Variant {
    fn new(obs: usize, act: usize, config: &AgentConfig) -> Result<Self> {
        let mut agent = Agent::new(obs, act, config, Device::Cpu)?;
        agent.set_diagnostics(false);
        let mut batch = ChunkBatch::new(config.batch_size, config.horizon, obs, act);
        fill_synthetic(&mut batch);
        for _ in 0..WARMUP {
            agent.update(&batch)?;
        }
        Ok(Self { agent, batch, times: Default::default() })
    }

    /// Times `n` more updates, step by step (by the update's profiling marks).
    fn time(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            let mut sums = [0.0f64; 3];
            for (phase, ms) in timed_update(&mut self.agent, &self.batch)? {
                if let Some(s) = Step::of_phase(phase) {
                    sums[s.index()] += ms;
                }
            }
            for (all, s) in self.times.iter_mut().zip(sums) {
                all.push(s);
            }
        }
        Ok(())
    }

    fn medians(&self) -> [f64; 3] {
        self.times.clone().map(|mut t| {
            t.sort_by(f64::total_cmp);
            t.get(t.len() / 2).copied().unwrap_or(f64::NAN)
        })
    }
}
