//! Pools built by name: [`make_pool`] (native or Python workers), [`make_remote_pool`] (workers
//! over TCP), [`make_ray_pool`] (Ray actors) and [`make_render_pool`] (one rendering worker).

use anyhow::{bail, Result};
use mvp_envs::{VecEnv, VecEnvConfig};

use crate::{with_history, EnvPool, LocalPool};

/// A pool of `num_envs` environments called `name`: native ones in this process, or Python
/// workers (as many as `max_workers` processes, the environments spread evenly; the pool
/// may round `num_envs` up to a multiple of the worker count). Environment `i` is seeded
/// `seed + i` at its first unseeded reset. `history` > 1 stacks that many observations
/// ([`HistoryPool`](crate::HistoryPool)).
pub fn make_pool(
    name: &str,
    num_envs: usize,
    max_workers: usize,
    seed: u64,
    history: usize,
) -> Result<Box<dyn EnvPool>> {
    let num_envs = num_envs.max(1);
    let pool: Box<dyn EnvPool> = if mvp_envs::NATIVE_ENVS.contains(&name) {
        let envs = (0..num_envs).map(|_| mvp_envs::make_native(name)).collect::<Result<Vec<_>>>()?;
        Box::new(LocalPool::new(envs)?)
    } else {
        let workers = max_workers.clamp(1, num_envs);
        let per_worker = num_envs.div_ceil(workers);
        Box::new(VecEnv::new(VecEnvConfig::new(name, workers, per_worker, seed))?)
    };
    Ok(with_history(pool, history))
}

/// A pool of `num_envs` environments called `name` hosted by workers already listening at
/// `addresses` (`python -m mvp_envs.worker --listen HOST:PORT`, one worker per address, the
/// environments spread evenly), connected over TCP; otherwise as [`make_pool`]. A worker whose
/// connection fails is reconnected (its environments are rebuilt) like a restarted process.
/// The workers serve only a client holding their shared `secret`.
pub fn make_remote_pool(
    name: &str,
    num_envs: usize,
    addresses: &[String],
    secret: mvp_envs::WorkerSecret,
    seed: u64,
    history: usize,
) -> Result<Box<dyn EnvPool>> {
    if addresses.is_empty() {
        bail!("a remote pool needs at least one worker address");
    }
    let workers = addresses.len().min(num_envs.max(1));
    let mut config = VecEnvConfig::new(name, workers, num_envs.max(1).div_ceil(workers), seed);
    config.addresses = addresses[..workers].to_vec();
    config.worker.secret = Some(secret);
    Ok(with_history(Box::new(VecEnv::new(config)?), history))
}

/// A pool of `num_envs` environments called `name` hosted by `workers` Ray actors placed as
/// `ray` says ([`mvp_envs::RayWorkers`]), connected over TCP; otherwise as [`make_pool`]. A
/// worker actor that Ray restarts is reconnected where it now serves (its environments are
/// rebuilt), like a restarted process.
pub fn make_ray_pool(
    name: &str,
    num_envs: usize,
    workers: usize,
    ray: mvp_envs::RayConfig,
    seed: u64,
    history: usize,
) -> Result<Box<dyn EnvPool>> {
    if mvp_envs::NATIVE_ENVS.contains(&name) {
        bail!("the native environment {name} runs in this process; Ray workers host Python environments");
    }
    let num_envs = num_envs.max(1);
    let workers = workers.clamp(1, num_envs);
    let mut config = VecEnvConfig::new(name, workers, num_envs.div_ceil(workers), seed);
    config.ray = Some(ray);
    Ok(with_history(Box::new(VecEnv::new(config)?), history))
}

/// One environment of `name` in its own worker process, rendering RGB frames of `[width,
/// height]` offscreen (for videos; [`record`](crate::record)), observations stacked `history`
/// deep. Native environments do not render.
pub fn make_render_pool(name: &str, size: [u32; 2], seed: u64, history: usize) -> Result<Box<dyn EnvPool>> {
    if mvp_envs::NATIVE_ENVS.contains(&name) {
        bail!("the native environment {name} does not render; videos need a MuJoCo environment (OGBench, robomimic)");
    }
    let mut config = VecEnvConfig::new(name, 1, 1, seed);
    config.worker.render = Some(size);
    Ok(with_history(Box::new(VecEnv::new(config)?), history))
}
