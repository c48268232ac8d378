//! Where tensors live and how many threads libtorch may use.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::MatmulPrecision;

/// A device request from a config or the command line: `cpu`, `cuda`, `cuda:N` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA device N.
    Cuda(usize),
    /// CUDA device 0 when present, else the CPU.
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "cpu" => DeviceChoice::Cpu,
            "cuda" => DeviceChoice::Cuda(0),
            "auto" => DeviceChoice::Auto,
            s => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                Some(i) => DeviceChoice::Cuda(i),
                None => bail!("unknown device '{s}': expected cpu, cuda, cuda:N or auto"),
            },
        })
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceChoice::Auto => write!(f, "auto"),
        }
    }
}

impl DeviceChoice {
    /// Resolves the request; asking for CUDA where there is none is an error that says why.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cuda(i) => {
                let n = tch::Cuda::device_count() as usize;
                if n == 0 {
                    bail!(
                        "CUDA requested but not available (no GPU or driver, or the CPU build of libtorch; \
                         `mvp info` tells which): on a GPU machine run `MVP_CUDA=1 make setup` and rebuild"
                    );
                }
                if i >= n {
                    bail!("CUDA device {i} requested but only {n} present");
                }
                Ok(Device::Cuda(i))
            }
        }
    }
}

/// Tensor settings: the device, libtorch's thread count and the matmul precision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Runtime {
    /// Device for networks and batches.
    pub device: DeviceChoice,
    /// libtorch intra-op threads. 1 by default: on 2-vCPU machines two OpenMP threads stall
    /// at random by 5–100×, and one thread is also what benchmarks report.
    pub threads: usize,
    /// Number format of the networks' matrix products, `f32` (default) or `bf16` (bf16
    /// operands, fp32 weights, Adam and everything else; see [`MatmulPrecision`]).
    pub matmul: MatmulPrecision,
}

impl Default for Runtime {
    fn default() -> Self {
        Self { device: DeviceChoice::Cpu, threads: 1, matmul: MatmulPrecision::F32 }
    }
}

impl Runtime {
    /// Applies the thread count and, for the calling thread, the matmul precision; resolves
    /// the device.
    pub fn apply(&self) -> Result<Device> {
        if self.threads == 0 {
            bail!("runtime.threads must be at least 1");
        }
        tch::set_num_threads(self.threads as i32);
        self.matmul.set();
        self.device.resolve()
    }
}
