//! What the trainer tests share: one libtorch user at a time, and a tiny run config.
#![allow(dead_code)]

use std::path::Path;

use mvp_agent::TrainConfig;

/// libtorch's RNG is global: runs in one test process must not interleave.
pub static TORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

/// A tiny offline-to-online run on the native task.
pub fn tiny(out: &Path, name: &str, extra: &[&str]) -> TrainConfig {
    let mut o: Vec<String> = [
        "agent.batch_size=32",
        "agent.num_samples=4",
        "agent.actor.kind=\"mvp\"",
        "agent.actor.network.hidden=[32, 32]",
        "agent.critic.network.hidden=[32, 32]",
        "data.demo_episodes=20",
        "data.demo_noise=1.0",
        "schedule.offline_steps=40",
        "schedule.online_steps=60",
        "schedule.warmup_steps=10",
        "schedule.eval_interval=0",
        "schedule.eval_episodes=2",
        "schedule.log_interval=5",
        "schedule.checkpoint_interval=0",
        "schedule.buffer_capacity=5000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    o.push(format!("run.out_dir=\"{}\"", out.display()));
    o.push(format!("run.name=\"{name}\""));
    o.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &o).unwrap()
}

pub fn latest_checkpoint(run: &Path) -> std::path::PathBuf {
    let root = run.join("checkpoints");
    root.join(mvp_nn::checkpoint::latest(&root).expect("a checkpoint"))
}
