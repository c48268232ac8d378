//! The batch an update reads: the sampled host arrays ([`ChunkBatch`]), uploaded as tensors
//! ([`TensorBatch`]) only where a step runs on libtorch.

use std::cell::OnceCell;

use mvp_replay::ChunkBatch;
use tch::{Device, Tensor};

/// A batch of chunks as tensors on the agent's device (the QC/FQL batch contract).
#[derive(Debug)]
pub struct TensorBatch {
    /// s_k `[B, S]`.
    pub observations: Tensor,
    /// a_k..a_{k+h−1} flattened `[B, h·A]`.
    pub actions: Tensor,
    /// Discounted chunk reward R `[B]`.
    pub rewards: Tensor,
    /// Bootstrap mask m `[B]` (0 after a true terminal state; truncation keeps 1).
    pub masks: Tensor,
    /// Per-step validity `[B, h]` (0 after the episode ended inside the chunk).
    pub valid: Tensor,
    /// s_{k+h} `[B, S]`.
    pub next_observations: Tensor,
}

impl TensorBatch {
    /// `batch` windows of `horizon` steps with made-up values ([`fill_synthetic`]) on `device`:
    /// the shapes of a real batch, for timing (the engine calibration, the benchmarks).
    pub fn synthetic(batch: usize, horizon: usize, obs_dim: usize, act_dim: usize, device: Device) -> Self {
        let mut b = ChunkBatch::new(batch, horizon, obs_dim, act_dim);
        fill_synthetic(&mut b);
        Self::from_chunks(&b, device)
    }

    /// Copies a host batch to `device`.
    pub fn from_chunks(b: &ChunkBatch, device: Device) -> Self {
        let t = |v: &[f32], shape: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
        let (n, h) = (b.batch as i64, b.h as i64);
        Self {
            observations: t(&b.observations, &[n, b.obs_dim as i64]),
            actions: t(&b.actions, &[n, h * b.act_dim as i64]),
            rewards: t(&b.rewards, &[n]),
            masks: t(&b.masks, &[n]),
            valid: t(&b.valid, &[n, h]),
            next_observations: t(&b.next_observations, &[n, b.obs_dim as i64]),
        }
    }
}

/// A sampled batch as one update reads it: the host arrays, which the native steps read as
/// they are, and their tensors on the agent's device, made on first use by a libtorch step.
pub(crate) struct Batch<'a> {
    pub(crate) host: &'a ChunkBatch,
    device: Device,
    tensors: OnceCell<TensorBatch>,
}

impl<'a> Batch<'a> {
    pub(crate) fn new(host: &'a ChunkBatch, device: Device) -> Self {
        Self { host, device, tensors: OnceCell::new() }
    }

    /// The batch as tensors on the agent's device (uploaded on the first call).
    pub(crate) fn t(&self) -> &TensorBatch {
        self.tensors.get_or_init(|| TensorBatch::from_chunks(self.host, self.device))
    }

    /// Windows in the batch.
    pub(crate) fn rows(&self) -> usize {
        self.host.batch
    }
}

/// Fills `b` with fixed made-up values: observations in [−0.5, 0.5), the next observations
/// equal to them, actions in [−1, 1), rewards −1, every mask and step valid.
pub fn fill_synthetic(b: &mut ChunkBatch) {
    for (i, x) in b.observations.iter_mut().enumerate() {
        *x = ((i * 7919) % 997) as f32 / 997.0 - 0.5;
    }
    b.next_observations.copy_from_slice(&b.observations);
    for (i, x) in b.actions.iter_mut().enumerate() {
        *x = ((i * 104_729) % 1999) as f32 / 1000.0 - 1.0;
    }
    b.rewards.fill(-1.0);
    b.masks.fill(1.0);
    b.valid.fill(1.0);
}
