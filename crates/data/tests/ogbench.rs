//! The OGBench dataset path end to end: our generator (`python -m mvp_envs.data_ogbench`)
//! writes files that OGBench's own loader reads; the Rust reader returns exactly what that
//! loader returns (observations, actions, next_observations, terminals, and the relabelled
//! rewards and masks at both timings); the online env and the dataset relabelling agree on
//! the reward timing. Needs the project's venv (`make setup`); each test takes a few seconds.

use std::path::{Path, PathBuf};
use std::process::Output;

use mvp_data::{
    load_ogbench_dataset, ogbench_val_path, OgbenchDataError, OgbenchGenerate, OgbenchNpz, OgbenchTask, RewardTiming,
};
use mvp_envs::{python_module_command, Env, WorkerConfig, WorkerEnv};
use serde_json::Value;

fn run_ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn last_json(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().rev().find(|l| l.starts_with('{')).expect("a JSON line")).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    let mut out = Vec::new();
    let mut push = |x: &Value| out.push(x.as_f64().unwrap() as f32);
    for x in v.as_array().unwrap() {
        match x.as_array() {
            Some(row) => row.iter().for_each(&mut push),
            None => push(x),
        }
    }
    out
}

fn generate(dir: &Path, dataset: &str, episodes: usize, workers: usize, length: usize) -> (PathBuf, Value) {
    let out = dir.join(format!("{dataset}.npz"));
    let mut job = OgbenchGenerate::new(dataset, episodes, &out);
    job.workers = workers;
    job.seed = 7;
    job.episode_length = Some(length);
    let stdout = run_ok(job.command().unwrap().output().unwrap(), "data_ogbench");
    (out, last_json(&stdout))
}

/// Generates a small dataset, loads it with OGBench's loader and with ours, and compares.
fn matches_ogbench_loader(dataset: &str, env_id: &str, episodes: usize, workers: usize, length: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (path, summary) = generate(dir.path(), dataset, episodes, workers, length);
    assert_eq!(summary["train_rows"], episodes * length);
    assert_eq!(summary["val_rows"], length, "default validation split: max(1, episodes / 10) episodes");
    assert!(ogbench_val_path(&path).is_file());

    let reference = python_module_command("mvp_envs.ogbench_reference")
        .unwrap()
        .args(["loader", path.to_str().unwrap(), env_id])
        .output()
        .unwrap();
    let r = last_json(&run_ok(reference, "ogbench_reference loader"));

    let task = OgbenchTask::query(env_id).unwrap();
    // The goal our task_info reports is the one OGBench's relabelling used.
    let goal = &r["goal"];
    let cube_goals: Vec<[f64; 3]> = serde_json::from_value(goal["cube_goals"].clone()).unwrap();
    assert_eq!(task.cube_goals, cube_goals);
    assert_eq!(task.button_goals, serde_json::from_value::<Vec<i64>>(goal["button_goals"].clone()).unwrap());
    assert_eq!(task.drawer_goal, goal["drawer_goal"].as_f64());

    let n = episodes * (length - 1);
    let cur = load_ogbench_dataset(&path, &task, RewardTiming::Current).unwrap();
    assert_eq!(cur.len(), n);
    assert_eq!(cur.observations, f32s(&r["observations"]));
    assert_eq!(cur.actions, f32s(&r["actions"]));
    assert_eq!(cur.next_observations, f32s(&r["next_observations"]));
    assert_eq!(cur.terminals, f32s(&r["terminals"]));
    assert_eq!(cur.rewards, f32s(&r["rewards"]), "Current timing = OGBench's loader");
    assert_eq!(cur.masks, f32s(&r["masks"]));

    let next = load_ogbench_dataset(&path, &task, RewardTiming::Next).unwrap();
    assert_eq!((&next.observations, &next.actions, &next.terminals), (&cur.observations, &cur.actions, &cur.terminals));
    assert_eq!(next.rewards, f32s(&r["rewards_next"]), "Next timing = OGBench's relabelling of s_{{t+1}}");
    assert_eq!(next.masks, f32s(&r["masks_next"]));
    // Within an episode, Next is Current shifted by one transition.
    for t in 0..n - 1 {
        if cur.terminals[t] == 0.0 {
            assert_eq!(next.rewards[t], cur.rewards[t + 1]);
        }
    }
    let terminal_rows = cur.terminals.iter().filter(|t| **t == 1.0).count();
    assert_eq!(terminal_rows, episodes);
}

#[test]
fn cube_double_matches_ogbench_loader() {
    matches_ogbench_loader("cube-double-play-v0", "cube-double-play-singletask-task2-v0", 3, 2, 200);
}

#[test]
fn puzzle_matches_ogbench_loader() {
    // Button states change often in play data, so the two timings really differ here.
    matches_ogbench_loader("puzzle-3x3-play-v0", "puzzle-3x3-play-singletask-task1-v0", 2, 1, 200);
}

#[test]
fn scene_matches_ogbench_loader() {
    matches_ogbench_loader("scene-play-v0", "scene-play-singletask-task2-v0", 2, 1, 150);
}

/// The reward timing convention: one oracle episode stepped online through our worker bridge
/// gives, at every step, the reward and success that the reader relabels from the next
/// state's qpos (RewardTiming::Next); OGBench's registered env ('pre') gives the Current ones.
#[test]
fn online_rewards_equal_relabelled_rewards_of_the_next_state() {
    let env_id = "cube-single-play-singletask-task1-v0";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("episode.npz");
    let seed = 3u64;
    let out = python_module_command("mvp_envs.ogbench_reference")
        .unwrap()
        .args(["episode", env_id, &seed.to_string(), path.to_str().unwrap()])
        .output()
        .unwrap();
    let e = last_json(&run_ok(out, "ogbench_reference episode"));
    let actions = f32s(&e["actions"]);
    let steps = actions.len() / 5;
    let flags = |k: &str| -> Vec<bool> { e[k].as_array().unwrap().iter().map(|x| x.as_bool().unwrap()).collect() };
    assert!(flags("terminated_post")[steps - 1], "the oracle episode must reach the goal");

    // Online, through the Rust bridge, replaying the oracle's actions from the same seed.
    let mut config = WorkerConfig::new(env_id);
    config.seeds = Some(vec![seed]);
    let mut env = WorkerEnv::new(config).unwrap();
    let (obs0, _) = env.reset(Some(seed)).unwrap();
    let observations = f32s(&e["observations"]);
    assert_eq!(obs0, observations[..28], "same start state");
    let mut online = Vec::new();
    for t in 0..steps {
        let step = env.step(&actions[t * 5..(t + 1) * 5]).unwrap();
        assert_eq!(step.obs, observations[(t + 1) * 28..(t + 2) * 28], "same trajectory at step {t}");
        online.push(step);
    }
    env.close().unwrap();

    let task = OgbenchTask::query(env_id).unwrap();
    let next = load_ogbench_dataset(&path, &task, RewardTiming::Next).unwrap();
    assert_eq!(next.len(), steps);
    for (t, step) in online.iter().enumerate() {
        assert_eq!(step.reward, next.rewards[t], "reward at step {t}");
        assert_eq!(step.mask(), next.masks[t], "mask at step {t}");
        assert_eq!(step.info.success, next.masks[t] == 0.0, "success at step {t}");
    }
    let last = online.last().unwrap();
    assert!(last.terminated && last.info.success && last.reward == 0.0);
    assert!(online[..steps - 1].iter().all(|s| !s.terminated && s.reward == -1.0));

    // OGBench's own env reports the state before the action, like its loader.
    let cur = load_ogbench_dataset(&path, &task, RewardTiming::Current).unwrap();
    assert_eq!(f32s(&e["rewards_pre"]), cur.rewards);
    assert!(!flags("terminated_pre")[steps - 1], "'pre' ends the episode one step late");
    assert_ne!(next.rewards, cur.rewards);
}

#[test]
fn errors_name_the_command_the_key_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let task = OgbenchTask::query("cube-double-play-singletask-task2-v0").unwrap();

    let missing = dir.path().join("cube-double-play-v0.npz");
    let err = load_ogbench_dataset(&missing, &task, RewardTiming::Next).unwrap_err();
    assert!(matches!(err, OgbenchDataError::Missing { .. }));
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(msg.contains(&format!("mvp data ogbench --env cube-double-play-v0 --out {}", missing.display())), "{msg}");
    assert_eq!(task.dataset_path(dir.path()), Some(missing));

    // A cube-single dataset loaded for cube-double.
    let (single, _) = generate(dir.path(), "cube-single-play-v0", 1, 1, 20);
    let err = load_ogbench_dataset(&single, &task, RewardTiming::Next).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, OgbenchDataError::Shape { .. }), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert!(msg.contains("`observations` has shape [20, 28]"), "{msg}");
    assert!(msg.contains("needs [20, 37]"), "{msg}");
    assert!(msg.contains("mvp data ogbench --env cube-double-play-v0"), "says how to make the right one: {msg}");

    // A file without qpos.
    let stripped = dir.path().join("no-qpos.npz");
    let script = format!(
        "import numpy as np; f = np.load({src:?}); np.savez({dst:?}, **{{k: f[k] for k in f.files if k != 'qpos'}})",
        src = single.to_str().unwrap(),
        dst = stripped.to_str().unwrap()
    );
    let py = python_module_command("mvp_envs.task_info").unwrap();
    let out = std::process::Command::new(py.get_program()).args(["-c", &script]).output().unwrap();
    run_ok(out, "strip qpos");
    let err = OgbenchNpz::read(&stripped, false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, OgbenchDataError::MissingKey { ref key, .. } if key == "qpos"), "{msg}");
    assert!(msg.contains("no array `qpos`"), "{msg}");

    // Not a zip file.
    let junk = dir.path().join("junk.npz");
    std::fs::write(&junk, b"not a zip").unwrap();
    let err = OgbenchNpz::read(&junk, false).unwrap_err();
    assert!(err.to_string().contains("not an npz (zip) file"), "{err}");

    // Task lookups for ids that are not manipulation singletask ids fail in one line.
    let err = OgbenchTask::query("antmaze-large-navigate-singletask-v0").unwrap_err().to_string();
    assert!(err.contains("is not an OGBench manipulation singletask id"), "{err}");
}

#[test]
fn generator_rejects_bad_arguments_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let job = OgbenchGenerate::new("humanoidmaze-medium-navigate-v0", 1, dir.path().join("x.npz"));
    let out = job.command().unwrap().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().starts_with("error: 'humanoidmaze-medium-navigate-v0' is not"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// Reading speed of a large file: `MVP_OGBENCH_FILE=path/cube-double-play-v0.npz cargo test
/// --release -p mvp-data --test ogbench -- --ignored --nocapture load_speed`.
#[test]
#[ignore]
fn load_speed() {
    let path = PathBuf::from(std::env::var("MVP_OGBENCH_FILE").expect("set MVP_OGBENCH_FILE"));
    let env_id = std::env::var("MVP_OGBENCH_ENV").unwrap_or("cube-double-play-singletask-task2-v0".into());
    let task = OgbenchTask::query(&env_id).unwrap();
    let start = std::time::Instant::now();
    let d = load_ogbench_dataset(&path, &task, RewardTiming::Next).unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!("{}: {} transitions in {secs:.2} s ({:.0} transitions/s)", path.display(), d.len(), d.len() as f64 / secs);
}
