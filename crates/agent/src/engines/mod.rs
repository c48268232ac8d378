//! Which engine runs each step that has two — the TD target's generate-and-select (and with it
//! acting: collection, evaluation, videos), the critic's update, the actor's update — decided
//! once per agent, with the reason the start line prints.
//!
//! `libtorch` and `native` are honoured as asked (`native` fails with the config key where it
//! cannot run). `auto` picks the engine that is faster *at the run's own shapes on this CPU*:
//! [`calibrate`] times a few updates of two throwaway agents (every `auto` step on libtorch,
//! then on the native kernels) and keeps the per-step times in a cache file keyed by the CPU
//! model, the kernel family and the shapes, so a run pays for it once per machine and network
//! size (about a second at CPU sizes). Without timings — a run that skipped calibration, a
//! test — `auto` falls back to a rule taken from the same kind of measurement: the native
//! kernels win on AVX2 and AVX-512 CPUs, libtorch wins over the portable kernels (and over
//! NEON, where nothing was measured yet: calibration decides there).

mod calibrate;

use anyhow::{Context, Result};
use mvp_infer::Isa;
use serde::{Deserialize, Serialize};

pub use calibrate::{cached, calibrate, cpu_model, timed_update, Calibration};

use crate::config::{AgentConfig, Engine};
use crate::Agent;

/// A step with a libtorch and a native engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The TD target's generate-and-select, and acting.
    Select,
    /// The critic's TD update.
    Critic,
    /// The actor's update.
    Actor,
}

impl Step {
    /// Every step, in update order.
    pub const ALL: [Step; 3] = [Step::Select, Step::Critic, Step::Actor];

    /// The config key that chooses its engine.
    pub fn key(self) -> &'static str {
        match self {
            Step::Select => "agent.select_engine",
            Step::Critic => "agent.critic_engine",
            Step::Actor => "agent.actor_engine",
        }
    }

    /// What it is, in words.
    pub fn what(self) -> &'static str {
        match self {
            Step::Select => "TD-target selection and acting",
            Step::Critic => "critic update",
            Step::Actor => "actor update",
        }
    }

    /// The step an update phase (a profiling mark, [`Agent::set_profiler`]) belongs to;
    /// `None` for phases outside the three (Polyak averaging).
    pub fn of_phase(phase: &str) -> Option<Step> {
        if phase.starts_with("target: value") || phase.starts_with("critic:") {
            Some(Step::Critic)
        } else if phase.starts_with("target:") {
            Some(Step::Select)
        } else if phase.starts_with("actor:") {
            Some(Step::Actor)
        } else {
            None
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The step's engine in `config`.
    pub fn engine(self, config: &AgentConfig) -> Engine {
        match self {
            Step::Select => config.select_engine,
            Step::Critic => config.critic_engine,
            Step::Actor => config.actor_engine,
        }
    }

    fn set(self, config: &mut AgentConfig, engine: Engine) {
        match self {
            Step::Select => config.select_engine = engine,
            Step::Critic => config.critic_engine = engine,
            Step::Actor => config.actor_engine = engine,
        }
    }
}

/// One step's median time per update on each engine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepTimes {
    /// Milliseconds on libtorch.
    pub libtorch_ms: f64,
    /// Milliseconds on the native kernels.
    pub native_ms: f64,
}

/// The engine a step runs on, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The native kernels (else libtorch).
    pub native: bool,
    /// Why, in words, for the start line.
    pub why: String,
}

/// The decision for one step: `requested` is its config value, `can` whether its native
/// engine can run here (the reason where not), `times` the calibration's measurement at the
/// run's shapes where there is one, `isa` the native kernels' family.
pub fn decide(
    step: Step,
    requested: Engine,
    can: std::result::Result<(), String>,
    times: Option<StepTimes>,
    isa: Isa,
) -> Result<Choice> {
    let key = step.key();
    let choice = |native: bool, why: String| Ok(Choice { native, why });
    match (requested, can) {
        (Engine::Libtorch, _) => choice(false, format!("libtorch: set by {key}")),
        (Engine::Native, Ok(())) => choice(true, format!("native {isa}: set by {key}")),
        (Engine::Native, Err(why)) => {
            anyhow::bail!("config key `{key}`: the native {} cannot run: {why}; use auto or libtorch", step.what())
        }
        (Engine::Auto, Err(why)) => choice(false, format!("libtorch: the native kernels cannot run it ({why})")),
        (Engine::Auto, Ok(())) => {
            let rule = matches!(isa, Isa::Avx2 | Isa::Avx512);
            match times {
                Some(t) => {
                    let speedup = t.libtorch_ms / t.native_ms.max(1e-9);
                    let at = format!(
                        "at these shapes ({:.2} vs {:.2} ms per update, calibrated)",
                        t.native_ms, t.libtorch_ms
                    );
                    // Within the calibration's noise the rule decides.
                    let native = if (speedup - 1.0).abs() < TIE { rule } else { speedup > 1.0 };
                    match native {
                        true => choice(true, format!("native {isa}: {speedup:.1}× libtorch {at}")),
                        false => choice(false, format!("libtorch: native {isa} is {speedup:.2}× libtorch {at}")),
                    }
                }
                None if rule => {
                    choice(true, format!("native {isa}: the rule for {isa} CPUs (not calibrated at these shapes)"))
                }
                None => choice(
                    false,
                    format!(
                        "libtorch: the rule for {isa} kernels (slower than libtorch where measured; not calibrated)"
                    ),
                ),
            }
        }
    }
}

/// Calibrated speed-ups within this much of 1 are ties, which the rule decides (the
/// calibration's repeats differ by up to ~15% on a shared 2-vCPU VM).
const TIE: f64 = 0.15;

/// The file in a run directory that records which engine each step ran on.
pub const RECORD_FILE: &str = "engines.json";

/// Writes which engine each step of `agent` runs on into `run_dir` (once: a resume keeps the
/// first start's record).
pub fn record(run_dir: &std::path::Path, agent: &Agent) -> Result<()> {
    let path = run_dir.join(RECORD_FILE);
    if path.exists() {
        return Ok(());
    }
    let plan = agent.engines();
    let engine = |native: bool| if native { Engine::Native } else { Engine::Libtorch };
    let record = serde_json::json!({
        "select": engine(plan.select.native),
        "critic": engine(plan.critic.native),
        "actor": engine(plan.actor.native),
        "isa": plan.isa.name(),
        "why": plan.describe(),
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&record)?).with_context(|| format!("writing {}", path.display()))
}

/// `config` with its `auto` steps set to the engines recorded in `run_dir` by the run's first
/// start; `None` where there is no (readable) record.
pub fn read_recorded(run_dir: &std::path::Path, config: &AgentConfig) -> Option<AgentConfig> {
    let text = std::fs::read(run_dir.join(RECORD_FILE)).ok()?;
    let record: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let mut c = config.clone();
    for (s, key) in [(Step::Select, "select"), (Step::Critic, "critic"), (Step::Actor, "actor")] {
        if s.engine(config) == Engine::Auto {
            s.set(&mut c, serde_json::from_value(record.get(key)?.clone()).ok()?);
        }
    }
    Some(c)
}

/// Whether a configuration leaves any step to `auto`.
pub fn has_auto(config: &AgentConfig) -> bool {
    Step::ALL.iter().any(|s| s.engine(config) == Engine::Auto)
}

#[cfg(test)]
mod tests {
    use super::calibrate::MEMORY;
    use super::*;
    use tch::Device;

    fn times(native_ms: f64, libtorch_ms: f64) -> Option<StepTimes> {
        Some(StepTimes { libtorch_ms, native_ms })
    }

    #[test]
    fn auto_takes_the_faster_engine_by_the_injected_timings() {
        let fast = decide(Step::Critic, Engine::Auto, Ok(()), times(1.0, 2.3), Isa::Avx2).unwrap();
        assert!(fast.native, "{}", fast.why);
        assert!(fast.why.contains("native avx2: 2.3× libtorch"), "{}", fast.why);
        let slow = decide(Step::Critic, Engine::Auto, Ok(()), times(3.0, 2.0), Isa::Avx512).unwrap();
        assert!(!slow.native, "{}", slow.why);
        assert!(slow.why.contains("0.67× libtorch"), "{}", slow.why);
        // The portable kernels win where the timings say so: the measurement decides, not the ISA.
        assert!(decide(Step::Select, Engine::Auto, Ok(()), times(1.0, 1.5), Isa::Portable).unwrap().native);
        // Within the calibration's noise (15%) the rule decides, either way.
        assert!(!decide(Step::Critic, Engine::Auto, Ok(()), times(6.13, 6.97), Isa::Portable).unwrap().native);
        assert!(decide(Step::Critic, Engine::Auto, Ok(()), times(1.05, 1.0), Isa::Avx2).unwrap().native);
    }

    #[test]
    fn without_timings_the_rule_follows_the_kernel_family() {
        assert!(decide(Step::Actor, Engine::Auto, Ok(()), None, Isa::Avx2).unwrap().native);
        assert!(decide(Step::Actor, Engine::Auto, Ok(()), None, Isa::Avx512).unwrap().native);
        assert!(!decide(Step::Actor, Engine::Auto, Ok(()), None, Isa::Portable).unwrap().native);
        assert!(!decide(Step::Actor, Engine::Auto, Ok(()), None, Isa::Neon).unwrap().native);
    }

    #[test]
    fn explicit_engines_are_kept_and_an_impossible_native_names_its_key() {
        let t = times(1.0, 9.0);
        assert!(!decide(Step::Select, Engine::Libtorch, Ok(()), t, Isa::Avx2).unwrap().native);
        assert!(decide(Step::Select, Engine::Native, Ok(()), times(9.0, 1.0), Isa::Portable).unwrap().native);
        let err = decide(Step::Actor, Engine::Native, Err("a point cloud".into()), t, Isa::Avx2).unwrap_err();
        assert!(err.to_string().contains("agent.actor_engine") && err.to_string().contains("a point cloud"), "{err}");
        let auto = decide(Step::Actor, Engine::Auto, Err("a point cloud".into()), t, Isa::Avx2).unwrap();
        assert!(!auto.native && auto.why.contains("a point cloud"), "{}", auto.why);
    }

    /// A real calibration times both engines of every `auto` step at the config's shapes,
    /// caches the result on disk, and agents built afterwards decide by it.
    #[test]
    fn calibration_times_both_engines_and_agents_decide_by_it() {
        let _rng = crate::native::TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        // SAFETY (edition 2024 wording): no other test of this binary reads the variable.
        std::env::set_var("MVP_CACHE_DIR", dir.path());
        let mut config = AgentConfig { batch_size: 16, num_samples: 4, ..AgentConfig::default() };
        config.critic.network.hidden = vec![32, 32];
        config.actor = mvp_actor::ActorConfig::Mvp(mvp_actor::MvpConfig {
            network: mvp_nn::MlpConfig { hidden: vec![32, 32], ..Default::default() },
            ..Default::default()
        });
        config.critic_engine = Engine::Libtorch; // not `auto`: not timed
        let c = calibrate(9, 2, &config, Device::Cpu).unwrap().expect("auto steps on the CPU are calibrated");
        assert!(!c.cached && c.seconds > 0.0);
        assert!(c.critic.is_none(), "an explicit engine is not timed");
        for t in [c.select.unwrap(), c.actor.unwrap()] {
            assert!(t.native_ms > 0.0 && t.libtorch_ms > 0.0, "{t:?}");
        }
        assert!(dir.path().join("engine-calibration.json").exists());
        assert!(c.summary().contains("took"), "{}", c.summary());
        let agent = Agent::new(9, 2, &config, Device::Cpu).unwrap();
        let plan = agent.engines();
        assert_eq!(plan.calibration.as_ref().map(|c| c.select), Some(c.select));
        assert!(plan.select.why.contains("calibrated") && plan.actor.why.contains("calibrated"), "{}", plan.describe());
        assert_eq!(plan.select, decide(Step::Select, Engine::Auto, Ok(()), c.select, plan.isa).unwrap());
        assert!(plan.critic.why.contains("set by agent.critic_engine"), "{}", plan.describe());
        // Another process finds it on disk.
        MEMORY.lock().unwrap().clear();
        assert!(cached(9, 2, &config).expect("read back from the cache file").cached);
        // A run that leaves the critic to `auto` as well times only the critic, and keeps the rest.
        let all_auto = AgentConfig { critic_engine: Engine::Auto, ..config.clone() };
        let merged = calibrate(9, 2, &all_auto, Device::Cpu).unwrap().unwrap();
        assert!(merged.critic.is_some() && merged.select == c.select && merged.actor == c.actor, "{merged:?}");
        assert!(calibrate(9, 2, &all_auto, Device::Cpu).unwrap().unwrap().cached, "nothing left to time");
        std::env::remove_var("MVP_CACHE_DIR");
    }

    /// A run records its engines once; a resume reads them back into its `auto` steps and
    /// leaves explicit ones alone.
    #[test]
    fn a_runs_engines_are_recorded_and_read_back_for_auto_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig { batch_size: 8, ..AgentConfig::default() };
        config.critic.network.hidden = vec![16];
        (config.select_engine, config.critic_engine, config.actor_engine) =
            (Engine::Libtorch, Engine::Native, Engine::Libtorch);
        let agent = Agent::new(5, 2, &config, Device::Cpu).unwrap();
        assert!(read_recorded(dir.path(), &config).is_none());
        record(dir.path(), &agent).unwrap();
        let auto = AgentConfig {
            select_engine: Engine::Auto,
            critic_engine: Engine::Auto,
            actor_engine: Engine::Native,
            ..config.clone()
        };
        let back = read_recorded(dir.path(), &auto).unwrap();
        assert_eq!(
            (back.select_engine, back.critic_engine, back.actor_engine),
            (Engine::Libtorch, Engine::Native, Engine::Native)
        );
        // The first record stays.
        let other = Agent::new(5, 2, &AgentConfig { critic_engine: Engine::Libtorch, ..config }, Device::Cpu).unwrap();
        record(dir.path(), &other).unwrap();
        assert_eq!(read_recorded(dir.path(), &auto).unwrap().critic_engine, Engine::Native);
    }

    #[test]
    fn update_phases_belong_to_their_steps() {
        assert_eq!(Step::of_phase("target: generate"), Some(Step::Select));
        assert_eq!(Step::of_phase("target: generate and score (native)"), Some(Step::Select));
        assert_eq!(Step::of_phase("target: pack weights"), Some(Step::Select));
        assert_eq!(Step::of_phase("target: value"), Some(Step::Critic));
        assert_eq!(Step::of_phase("critic: loss and backward (native)"), Some(Step::Critic));
        assert_eq!(Step::of_phase("actor: adam"), Some(Step::Actor));
        assert_eq!(Step::of_phase("polyak"), None);
    }
}
