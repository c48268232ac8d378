//! Which engine runs each step of an agent, decided once from the config, the CPU and the
//! calibration.

use anyhow::{bail, Result};
use mvp_infer::Precision;
use tch::Device;

use crate::config::AgentConfig;
use crate::engines::{Choice, Step};

/// Which engine runs each step of an agent, and why: resolved once, in [`Agent::new`], from
/// the config, the CPU and (for `auto`) the calibration of [`crate::engines::calibrate`].
#[derive(Debug, Clone)]
pub struct EnginePlan {
    /// TD-target selection and acting.
    pub select: Choice,
    /// The native selection's number format (where it runs natively).
    pub select_precision: Precision,
    /// The critic's update.
    pub critic: Choice,
    /// The actor's update.
    pub actor: Choice,
    /// The native kernels' family.
    pub isa: mvp_infer::Isa,
    /// The calibration the `auto` steps were decided by, where there was one.
    pub calibration: Option<crate::engines::Calibration>,
}

impl EnginePlan {
    /// The one place the engine keys are read: each step's config value, whether its native
    /// engine can run here (`can`, per [`Step::ALL`]: the reason where not), and for `auto` the
    /// calibration of these shapes on this CPU (or the rule where there is none).
    pub(super) fn resolve(
        config: &AgentConfig,
        isa: mvp_infer::Isa,
        select_precision: Precision,
        calibration: Option<crate::engines::Calibration>,
        can: [std::result::Result<(), String>; 3],
    ) -> Result<Self> {
        let [select, critic, actor] = can;
        let times = |s: Step| calibration.as_ref().and_then(|c| c.times(s));
        let decide = |s: Step, can| crate::engines::decide(s, s.engine(config), can, times(s), isa);
        Ok(Self {
            select: decide(Step::Select, select)?,
            select_precision,
            critic: decide(Step::Critic, critic)?,
            actor: decide(Step::Actor, actor)?,
            isa,
            calibration,
        })
    }

    /// The start line's account: per step, its engine and why.
    pub fn describe(&self) -> String {
        let precision = match self.select_precision {
            Precision::Bf16 => "bf16",
            Precision::F32 => "fp32",
        };
        let select = match self.select.native {
            true => self.select.why.replacen(
                &format!("native {}", self.isa),
                &format!("native {} {precision}", self.isa),
                1,
            ),
            false => self.select.why.clone(),
        };
        format!(
            "TD-target selection and acting: {select}; critic update: {}; actor update: {}",
            self.critic.why, self.actor.why
        )
    }
}

/// What every native update needs: the CPU and plain Adam; the products' format follows
/// `runtime.matmul` (bf16 on CPUs with AVX512-BF16).
pub(super) fn check_native_update(device: Device, optim: &mvp_nn::AdamConfig) -> Result<Precision> {
    if device != Device::Cpu {
        bail!("it runs on the CPU, the networks are on {device:?}");
    }
    if optim.weight_decay != 0.0 || optim.max_grad_norm.is_some() {
        bail!("its Adam step has no weight decay or gradient clipping");
    }
    match mvp_nn::MatmulPrecision::current() {
        mvp_nn::MatmulPrecision::F32 => Ok(Precision::F32),
        mvp_nn::MatmulPrecision::Bf16 if mvp_infer::Isa::active().has_bf16() => Ok(Precision::Bf16),
        mvp_nn::MatmulPrecision::Bf16 => bail!("runtime.matmul = \"bf16\" needs AVX512-BF16, which this CPU lacks"),
    }
}
