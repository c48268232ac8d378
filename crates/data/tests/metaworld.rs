//! Meta-World tasks through the Python worker, and scripted demonstrations
//! (`mvp data metaworld` = `python -m mvp_envs.data_metaworld`) read by the Rust reader and
//! replayed in the online environment to success.
//!
//! They need the project's venv (`.venv/`, `make setup`, which installs Meta-World 3.1.1);
//! without it they fail with that instruction instead of being skipped.

use mvp_data::{read_robomimic, run_generator, RobomimicGenerate, RobomimicOptions};
use mvp_envs::{Env, WorkerConfig, WorkerEnv};

fn env(env_id: &str) -> WorkerEnv {
    WorkerEnv::new(WorkerConfig::new(env_id)).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn a_meta_world_task_steps_through_the_worker() {
    let mut env = env("metaworld/reach-v3");
    let spec = env.spec().clone();
    assert_eq!((spec.obs_dim, spec.action_dim, spec.max_episode_steps), (39, 4, 500));
    assert_eq!((spec.action_low.clone(), spec.action_high.clone()), (vec![-1.0; 4], vec![1.0; 4]));
    let (obs0, info) = env.reset(Some(11)).unwrap();
    assert!(!info.success && obs0.len() == 39);
    for i in 0..20 {
        let a = [0.5 * ((i % 3) as f32 - 1.0), 0.3, -0.2, 0.0];
        let step = env.step(&a).unwrap();
        assert_eq!(step.obs.len(), 39);
        assert!(step.reward == -1.0 || (step.reward == 0.0 && step.terminated), "sparse reward: {}", step.reward);
    }
    // Same seed, same task variation and initial state; another seed, another variation.
    let (again, _) = env.reset(Some(11)).unwrap();
    assert_eq!(obs0, again);
    let (other, _) = env.reset(Some(12)).unwrap();
    assert_ne!(obs0, other);
    env.close().unwrap();
    let err = format!("{:#}", WorkerEnv::new(WorkerConfig::new("metaworld/no-such-task-v3")).unwrap_err());
    assert!(err.contains("no-such-task-v3"), "{err}");
}

#[test]
fn generated_demonstrations_load_and_replay_to_success() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("door-open.hdf5");
    let generate = RobomimicGenerate { seed: 5, ..RobomimicGenerate::metaworld("door-open-v3", 2, &path) };
    run_generator(generate.command().unwrap(), &path, false).unwrap();
    let options = RobomimicOptions { obs_keys: vec!["state".into()], ..Default::default() };
    let data = read_robomimic(&path, &options).unwrap();
    assert_eq!(data.demos.len(), 2);
    assert_eq!(data.env_name().as_deref(), Some("metaworld/door-open-v3"));
    let ds = &data.dataset;
    assert_eq!((ds.obs_dim, ds.act_dim), (39, 4));
    // Demo 0 is episode 0 of --seed 5 (the scripted policy succeeds on the first try): reset
    // with that seed, the stored actions reach success at the last step and not before.
    let t = data.demo_lengths[0];
    let mut env = env("metaworld/door-open-v3");
    let (obs, _) = env.reset(Some(5)).unwrap();
    assert_eq!(obs, ds.observations[..39].to_vec(), "initial observation");
    for i in 0..t {
        let step = env.step(&ds.actions[i * 4..(i + 1) * 4]).unwrap();
        let stored = &ds.next_observations[i * 39..(i + 1) * 39];
        let gap = step.obs.iter().zip(stored).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(gap < 1e-4, "step {i}: online obs differs from next_obs by {gap}");
        assert_eq!(step.info.success, i + 1 == t, "step {i} of {t}");
        assert_eq!(step.reward, ds.rewards[i], "step {i}");
    }
    env.close().unwrap();
}
