//! Integration tests of the Python worker bridge on real OGBench environments.
//!
//! They need the project's venv (`.venv/`, built by `make setup`): without it they fail with
//! that instruction instead of being skipped. `mvp_envs/Faulty-v0` (envs/mvp_envs/testing.py)
//! provides exceptions, hangs and crashes on demand.

use std::time::{Duration, Instant};

use mvp_envs::{Env, PythonWorker, WorkerConfig, WorkerEnv, WorkerError};
use rand::{Rng, SeedableRng};

const CUBE_SINGLE: &str = "cube-single-play-singletask-task1-v0";
const FAULTY: &str = "mvp_envs/Faulty-v0";

/// Starts a worker or fails the test with the bridge's own message (e.g. "run `make setup`").
fn spawn(config: WorkerConfig) -> PythonWorker {
    PythonWorker::spawn(config).unwrap_or_else(|e| panic!("{e:#}"))
}

fn env(env_id: &str) -> WorkerEnv {
    WorkerEnv::make(env_id).unwrap_or_else(|e| panic!("{e:#}"))
}

fn random_action(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
    (0..dim).map(|_| rng.random_range(-1.0f32..=1.0)).collect()
}

#[test]
fn cube_single_handshake_reports_design_dims() {
    let mut env = env(CUBE_SINGLE);
    let spec = env.spec().clone();
    assert_eq!(spec.name, CUBE_SINGLE);
    assert_eq!((spec.obs_dim, spec.action_dim), (28, 5), "OGBench cube-single: obs 28, action 5");
    assert_eq!(spec.action_low, vec![-1.0; 5]);
    assert_eq!(spec.action_high, vec![1.0; 5]);
    assert_eq!(spec.max_episode_steps, 200);
    let info = env.worker().info().clone();
    assert_eq!(info.versions.get("mujoco").map(String::as_str), Some("3.3.7"));
    assert_eq!(info.versions.get("ogbench").map(String::as_str), Some("1.2.2"));
    env.close().unwrap();
}

#[test]
fn cube_single_random_steps_give_sane_rewards_and_flags() {
    let mut env = env(CUBE_SINGLE);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let (obs, info) = env.reset(Some(0)).unwrap();
    assert_eq!(obs.len(), 28);
    assert!(!info.success);
    let (mut t, mut episodes) = (0usize, 0usize);
    for _ in 0..300 {
        let step = env.step(&random_action(&mut rng, 5)).unwrap();
        t += 1;
        assert_eq!(step.obs.len(), 28);
        assert!(step.obs.iter().all(|x| x.is_finite()), "{:?}", step.obs);
        // cube-single has one subgoal: reward = successes - 1 is -1 or 0.
        assert!(step.reward == -1.0 || step.reward == 0.0, "reward {}", step.reward);
        assert!(!(step.terminated && step.truncated));
        if step.terminated {
            assert!(step.info.success, "terminated without success");
        }
        assert_eq!(step.truncated, !step.terminated && t == 200, "time limit at step {t}");
        if step.done() {
            // No auto-reset: stepping on is an error until reset.
            assert!(env.step(&[0.0; 5]).is_err());
            env.reset(None).unwrap();
            episodes += 1;
            t = 0;
        }
    }
    assert!(episodes >= 1, "300 random steps cross the 200-step limit");
    env.close().unwrap();
}

#[test]
fn reset_with_seed_is_deterministic_and_batches_agree() {
    // Two environments in one worker; handshake seeds 11 and 12 drive the first reset.
    let mut config = WorkerConfig::new(CUBE_SINGLE);
    config.num_envs = 2;
    config.seeds = Some(vec![11, 12]);
    let mut w = spawn(config);
    let first = w.reset_all(None).unwrap();
    assert_eq!(first.obs.len(), 2 * 28);
    assert_ne!(first.obs[..28], first.obs[28..], "different seeds, different starts");

    let same = w.reset_all(Some(&[11, 11])).unwrap();
    assert_eq!(same.obs[..28], first.obs[..28], "same seed → same first obs");
    assert_eq!(same.obs[..28], same.obs[28..]);

    // Same seed and same actions → same trajectory, in both environments of the batch.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..20 {
        let a = random_action(&mut rng, 5);
        let both: Vec<f32> = a.iter().chain(a.iter()).copied().collect();
        let s = w.step_all(&both).unwrap();
        assert_eq!(s.obs[..28], s.obs[28..]);
        assert_eq!(s.reward[0], s.reward[1]);
    }
    // Step a subset: only environment 1.
    let s = w.step_envs(&[1], &[0.0; 5]).unwrap();
    assert_eq!((s.obs.len(), s.reward.len()), (28, 1));
    w.close().unwrap();
    assert!(w.reset_all(None).is_err(), "closed worker refuses requests");
}

#[test]
fn unknown_env_id_gives_one_line_error() {
    let err = PythonWorker::spawn(WorkerConfig::new("cube-sextuple-play-singletask-task1-v0")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(!msg.contains('\n'), "one line expected: {msg}");
    assert!(msg.contains("unknown environment id 'cube-sextuple-play-singletask-task1-v0'"), "{msg}");
    assert!(msg.contains("check the spelling"), "{msg}");
    assert!(matches!(err.downcast_ref::<WorkerError>(), Some(WorkerError::User(_))), "{err:?}");
}

#[test]
fn python_exception_traceback_reaches_rust_and_worker_survives() {
    let mut env = env(FAULTY);
    env.reset(Some(0)).unwrap();
    let err = env.step(&[0.95, 0.0]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ValueError: deliberate failure in FaultyEnv.step"), "{msg}");
    assert!(msg.contains("Traceback (most recent call last)"), "{msg}");
    assert!(msg.contains("testing.py"), "{msg}");
    assert!(matches!(err.downcast_ref::<WorkerError>(), Some(WorkerError::Exception { .. })));
    // The process is still usable; the failed environment needs a reset first.
    assert!(env.step(&[0.0, 0.0]).is_err());
    env.reset(None).unwrap();
    let step = env.step(&[0.0, -0.95]).unwrap();
    assert!(step.terminated && step.info.success && step.reward == 0.0);
    env.close().unwrap();
}

#[test]
fn hung_worker_times_out_and_restarts() {
    let mut config = WorkerConfig::new(FAULTY);
    config.timeout = Duration::from_millis(1500);
    let mut w = spawn(config);
    let old_pid = w.pid().unwrap();
    w.reset_all(Some(&[0])).unwrap();
    let start = Instant::now();
    let err = w.step_all(&[-0.95, 0.0]).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10), "timeout not honoured: {:?}", start.elapsed());
    assert!(matches!(err.downcast_ref::<WorkerError>(), Some(WorkerError::Timeout { .. })), "{err:#}");
    assert!(w.broken().is_some());
    let again = w.reset_all(None).unwrap_err();
    assert!(matches!(again.downcast_ref::<WorkerError>(), Some(WorkerError::Broken { .. })), "{again:#}");

    w.restart().unwrap();
    assert_eq!(w.restarts(), 1);
    assert_ne!(w.pid().unwrap(), old_pid);
    w.reset_all(Some(&[0])).unwrap();
    w.step_all(&[0.0, 0.0]).unwrap();
    w.close().unwrap();
}

#[test]
fn crashed_worker_reports_its_exit_status() {
    let mut w = spawn(WorkerConfig::new(FAULTY));
    w.reset_all(Some(&[0])).unwrap();
    let err = w.step_all(&[0.0, 0.95]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(matches!(err.downcast_ref::<WorkerError>(), Some(WorkerError::Died { .. })), "{msg}");
    assert!(msg.contains("exit status: 3"), "{msg}");
}

// Bridge overhead against a plain Python loop is a benchmark, not a test: it becomes
// `mvp bench env` (issue #5), which will use envs/mvp_envs/bench_plain.py as the baseline.

#[test]
fn vector_env_steps_workers_in_parallel_and_restarts_a_killed_one() {
    use mvp_envs::{Outcome, VecEnv, VecEnvConfig};
    let mut venv = VecEnv::new(VecEnvConfig::new(CUBE_SINGLE, 2, 2, 100)).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(venv.num_envs(), 4);
    let all: Vec<usize> = (0..4).collect();
    let first = venv.reset(&all, &[]).unwrap();
    // Environment i is seeded seed + i: the same first state as a lone env seeded so.
    let mut lone = env(CUBE_SINGLE);
    let (obs1, _) = lone.reset(Some(101)).unwrap();
    assert_eq!(first[1].0, obs1);
    assert_ne!(first[0].0, first[1].0);

    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for _ in 0..20 {
        let actions: Vec<f32> = (0..4).flat_map(|_| random_action(&mut rng, 5)).collect();
        for o in venv.step(&all, &actions).unwrap() {
            assert!(matches!(o, Outcome::Step(ref s) if s.obs.len() == 28), "{o:?}");
        }
    }
    // kill -9 worker 1 (environments 2 and 3): their episodes are lost, the others step on.
    let pid = venv.workers_mut()[1].pid().unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(100));
    let actions: Vec<f32> = (0..4).flat_map(|_| random_action(&mut rng, 5)).collect();
    let out = venv.step(&all, &actions).unwrap();
    assert!(matches!(out[0], Outcome::Step(_)) && matches!(out[1], Outcome::Step(_)), "{out:?}");
    assert!(matches!(out[2], Outcome::Lost(_)) && matches!(out[3], Outcome::Lost(_)), "{out:?}");
    assert_eq!(venv.restarts(), 1);
    assert_ne!(venv.workers_mut()[1].pid(), Some(pid));
    // After a reset the restarted environments step again.
    venv.reset(&[2, 3], &[]).unwrap();
    let actions: Vec<f32> = (0..4).flat_map(|_| random_action(&mut rng, 5)).collect();
    assert!(venv.step(&all, &actions).unwrap().iter().all(|o| matches!(o, Outcome::Step(_))));
    venv.close().unwrap();
}
