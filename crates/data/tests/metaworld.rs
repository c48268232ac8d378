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

/// The table-top crop box of `metaworld-pc/` observations (mvp_envs.metaworld_env.PC_LOW/HIGH).
const CROP_LOW: [f32; 3] = [-0.5, 0.3, 0.005];
const CROP_HIGH: [f32; 3] = [0.5, 1.0, 0.6];

#[test]
fn point_cloud_observations_of_a_rendered_frame_are_cropped_sampled_and_repeatable() {
    let mut env = env("metaworld-pc/button-press-topdown-v3");
    assert_eq!(env.spec().obs_dim, 512 * 3 + 4, "512 xyz points, then hand xyz and gripper");
    let (obs, _) = env.reset(Some(3)).unwrap();
    let points: Vec<[f32; 3]> = obs[..1536].chunks(3).map(|p| [p[0], p[1], p[2]]).collect();
    for p in &points {
        assert!((0..3).all(|k| CROP_LOW[k] <= p[k] && p[k] <= CROP_HIGH[k]), "a point outside the crop box: {p:?}");
    }
    // Farthest-point sampling of a scene with thousands of visible points repeats none.
    let mut distinct = points.clone();
    distinct.sort_by(|a, b| a.partial_cmp(b).unwrap());
    distinct.dedup();
    assert_eq!(distinct.len(), 512, "repeated points");
    // The cloud is the world seen from the camera: the gripper is in it, near the hand's
    // reported position (the tool centre between the fingers).
    let hand = &obs[1536..1539];
    let nearest = points
        .iter()
        .map(|p| (0..3).map(|k| (p[k] - hand[k]).powi(2)).sum::<f32>().sqrt())
        .fold(f32::INFINITY, f32::min);
    assert!(nearest < 0.08, "no point within 8 cm of the hand at {hand:?} (nearest {nearest:.3} m)");
    // The same seed renders the same cloud, in the same order; moving the arm changes it.
    let (again, _) = env.reset(Some(3)).unwrap();
    assert_eq!(obs, again);
    let mut moved = again;
    for _ in 0..10 {
        moved = env.step(&[0.0, 0.0, 1.0, 0.0]).unwrap().obs;
    }
    assert!(moved[1538] > obs[1538] + 0.02, "the hand rose: {} -> {}", obs[1538], moved[1538]);
    assert_ne!(moved[..1536], obs[..1536], "the cloud follows the arm");
    env.close().unwrap();
}

#[test]
fn point_cloud_demonstrations_load_with_their_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("button-pc.hdf5");
    let generate = RobomimicGenerate {
        seed: 1,
        pointcloud: true,
        ..RobomimicGenerate::metaworld("button-press-topdown-v3", 1, &path)
    };
    run_generator(generate.command().unwrap(), &path, false).unwrap();
    let read = |key: &str| {
        let options = RobomimicOptions { obs_keys: vec![key.into()], ..Default::default() };
        read_robomimic(&path, &options).unwrap()
    };
    let (clouds, states) = (read("pointcloud"), read("state"));
    assert_eq!(clouds.env_name().as_deref(), Some("metaworld-pc/button-press-topdown-v3"));
    assert_eq!((clouds.dataset.obs_dim, states.dataset.obs_dim), (1540, 39));
    assert_eq!(clouds.dataset.len(), states.dataset.len());
    assert_eq!(clouds.dataset.actions, states.dataset.actions, "one episode, two views of it");
    // The cloud's agent part is the state's hand and gripper.
    for (c, s) in clouds.dataset.observations.chunks(1540).zip(states.dataset.observations.chunks(39)) {
        assert_eq!(c[1536..], s[..4]);
    }
}
