//! The wire format of the worker protocol, one to one with `envs/mvp_envs/protocol.py`: frame
//! building, message tags, the reply reader and the decoded replies.

use serde::{Deserialize, Serialize};

use super::WorkerError;
use crate::{Info, Step};

/// Version of the wire protocol; the worker refuses a handshake with another version.
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest frame either side accepts (a guard against reading garbage as a length).
pub(super) const MAX_FRAME: usize = 1 << 30;

/// Message tags (mirror of `envs/mvp_envs/protocol.py`).
pub(super) mod tag {
    pub const HELLO: u8 = 0x01;
    pub const RESET: u8 = 0x02;
    pub const STEP: u8 = 0x03;
    pub const PING: u8 = 0x04;
    pub const CLOSE: u8 = 0x05;
    pub const RENDER: u8 = 0x06;
    pub const READY: u8 = 0x81;
    pub const RESET_OK: u8 = 0x82;
    pub const STEP_OK: u8 = 0x83;
    pub const PONG: u8 = 0x84;
    pub const CLOSED: u8 = 0x85;
    pub const RENDER_OK: u8 = 0x86;
    pub const CHALLENGE: u8 = 0x87;
    pub const ERROR: u8 = 0xFF;
    /// Error kinds carried by an `ERROR` reply.
    pub const ERR_USER: u8 = 0;
}

/// What the worker reported in its handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Protocol version of the worker.
    pub protocol: u32,
    /// The environment id.
    pub env_id: String,
    /// Number of environments hosted.
    pub num_envs: usize,
    /// Observation width.
    pub obs_dim: usize,
    /// Action width.
    pub action_dim: usize,
    /// Lower action bounds.
    pub action_low: Vec<f32>,
    /// Upper action bounds.
    pub action_high: Vec<f32>,
    /// Time limit of an episode.
    pub max_episode_steps: usize,
    /// The worker's process id.
    pub pid: u32,
    /// Python version.
    pub python: String,
    /// Versions of the key packages (gymnasium, mujoco, numpy, ogbench).
    #[serde(default)]
    pub versions: std::collections::BTreeMap<String, String>,
}

/// Result of a batched reset of K environments.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchReset {
    /// First observations, row-major `[K, obs_dim]`.
    pub obs: Vec<f32>,
    /// `info['success']` of each first state.
    pub success: Vec<bool>,
}

/// Result of a batched step of K environments (rows in request order).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchStep {
    /// Next observations, row-major `[K, obs_dim]`.
    pub obs: Vec<f32>,
    /// Rewards.
    pub reward: Vec<f32>,
    /// True terminal states (bootstrap mask 0).
    pub terminated: Vec<bool>,
    /// Time-limit ends (only where `terminated` is false).
    pub truncated: Vec<bool>,
    /// `info['success']` of each next state.
    pub success: Vec<bool>,
}

impl BatchStep {
    /// Row `k` as a [`Step`].
    pub fn get(&self, k: usize) -> Step {
        let d = self.obs.len() / self.reward.len().max(1);
        Step {
            obs: self.obs[k * d..(k + 1) * d].to_vec(),
            reward: self.reward[k],
            terminated: self.terminated[k],
            truncated: self.truncated[k],
            info: Info { success: self.success[k] },
        }
    }
}

/// Starts a frame in `buf`: a length placeholder and the tag.
pub(super) fn begin_frame(buf: &mut Vec<u8>, tag: u8) {
    buf.extend_from_slice(&[0, 0, 0, 0, tag]);
}

pub(super) fn put_u32(buf: &mut Vec<u8>, x: usize) {
    buf.extend_from_slice(&(x as u32).to_le_bytes());
}

/// Little-endian reader over a reply body.
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], WorkerError> {
        let end = match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => end,
            _ => {
                return Err(WorkerError::Protocol(format!(
                    "{} reply too short: {} bytes, needed {} more after byte {}",
                    self.what,
                    self.buf.len(),
                    n,
                    self.pos
                )))
            }
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(super) fn count(&mut self, expected: usize) -> Result<(), WorkerError> {
        let k = u32::from_le_bytes(self.take(4)?.try_into().unwrap()) as usize;
        if k != expected {
            return Err(WorkerError::Protocol(format!(
                "{} reply for {k} environments, expected {expected}",
                self.what
            )));
        }
        Ok(())
    }

    pub(super) fn u32(&mut self) -> Result<usize, WorkerError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()) as usize)
    }

    pub(super) fn f32s(&mut self, n: usize) -> Result<Vec<f32>, WorkerError> {
        let bytes = n.checked_mul(4).ok_or_else(|| WorkerError::Protocol(format!("{}: {n} floats", self.what)))?;
        Ok(self.take(bytes)?.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    }

    pub(super) fn bools(&mut self, n: usize) -> Result<Vec<bool>, WorkerError> {
        Ok(self.take(n)?.iter().map(|&b| b != 0).collect())
    }

    pub(super) fn finish(&self) -> Result<(), WorkerError> {
        if self.pos != self.buf.len() {
            return Err(WorkerError::Protocol(format!(
                "{} reply has {} trailing bytes",
                self.what,
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }
}
