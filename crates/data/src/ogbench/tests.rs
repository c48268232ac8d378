//! Unit tests of the OGBench reader: singletask rewards, task JSON checks, the validation path.

use super::*;

fn cube_task() -> OgbenchTask {
    OgbenchTask::from_json(
        r#"{"env_id": "cube-double-play-singletask-task2-v0", "env_name": "cube-double-singletask-task2-v0",
        "dataset": "cube-double-play-v0", "family": "cube", "task_id": 2, "obs_dim": 37, "action_dim": 5,
        "nq": 28, "nv": 26, "max_episode_steps": 500, "num_cubes": 2, "num_buttons": 0,
        "cube_goals": [[0.35, 0.1, 0.02], [0.5, 0.1, 0.02]], "button_goals": [],
        "drawer_goal": null, "window_goal": null}"#,
    )
    .unwrap()
}

#[test]
fn cube_reward_counts_cubes_within_tolerance() {
    let task = cube_task();
    let mut qpos = vec![0.0f32; 28];
    qpos[14..17].copy_from_slice(&[0.35, 0.1, 0.02]);
    qpos[21..24].copy_from_slice(&[0.5, 0.1 + 0.05, 0.02]);
    assert_eq!(task.reward_and_success(&qpos, &[]), (-1.0, false));
    qpos[22] = 0.1 + 0.039;
    assert_eq!(task.reward_and_success(&qpos, &[]), (0.0, true));
    qpos[14] = 0.0;
    assert_eq!(task.reward_and_success(&qpos, &[]), (-1.0, false));
}

#[test]
fn scene_reward_counts_cube_buttons_drawer_and_window() {
    let task = OgbenchTask::from_json(
        r#"{"env_id": "scene-play-singletask-task3-v0", "env_name": "scene-singletask-task3-v0",
        "dataset": "scene-play-v0", "family": "scene", "task_id": 3, "obs_dim": 40, "action_dim": 5,
        "nq": 25, "nv": 24, "max_episode_steps": 750, "num_cubes": 1, "num_buttons": 2,
        "cube_goals": [[0.4, 0.15, 0.02]], "button_goals": [1, 1], "drawer_goal": -0.16, "window_goal": 0.0}"#,
    )
    .unwrap();
    assert_eq!(task.num_subgoals(), 5);
    let mut qpos = vec![0.0f32; 25];
    qpos[14..17].copy_from_slice(&[0.4, 0.15, 0.02]);
    qpos[14 + 7 + 2] = -0.13; // drawer within 0.04 of −0.16
    qpos[14 + 7 + 3] = 0.05; // window too far from 0.0
    assert_eq!(task.reward_and_success(&qpos, &[1, 0]), (-2.0, false));
    qpos[24] = 0.0;
    assert_eq!(task.reward_and_success(&qpos, &[1, 1]), (0.0, true));
}

#[test]
fn task_json_must_be_consistent() {
    let bad = r#"{"env_id": "x", "env_name": "x", "dataset": null, "family": "cube", "task_id": 1,
        "obs_dim": 28, "action_dim": 5, "nq": 21, "nv": 20, "max_episode_steps": 200, "num_cubes": 2,
        "num_buttons": 0, "cube_goals": [[0, 0, 0]], "button_goals": [], "drawer_goal": null, "window_goal": null}"#;
    let err = OgbenchTask::from_json(bad).unwrap_err().to_string();
    assert_eq!(err, "1 cube goals for 2 cubes");
}

#[test]
fn val_path_inserts_val_before_the_extension() {
    assert_eq!(
        ogbench_val_path(Path::new("/d/cube-double-play-v0.npz")),
        PathBuf::from("/d/cube-double-play-v0-val.npz")
    );
}
