"""Prints, as one JSON line, what the Rust dataset reader needs to relabel an OGBench dataset
for one singletask environment:

    python -m mvp_envs.task_info cube-double-play-singletask-task2-v0

The reward arithmetic itself lives in Rust (crates/data/src/ogbench.rs); this module only
reads the task's goal out of the environment, the same way OGBench's `relabel_dataset` does
(after an `env.reset()` in task mode): the cube targets are the mocap positions, then the target
button states and the drawer and window target positions (scene). Singletask environments
place the cubes without permutation, so the goal does not depend on the reset's seed.

JSON keys: `env_id` (as given), `env_name` (the Gymnasium id), `dataset` (the dataset the
singletask id names, e.g. `cube-double-play-v0`; null when the id has no dataset word),
`family` (cube | scene | puzzle), `task_id`, `obs_dim`, `action_dim`, `nq`, `nv`,
`max_episode_steps`, `num_cubes`, `num_buttons`, `cube_goals` ([[x, y, z]] per cube),
`button_goals` ([0/1] per button), `drawer_goal`, `window_goal` (floats or null).

Exit status 2 with one line on stderr for an id that is not an OGBench manipulation singletask
environment.
"""

import json
import sys
import warnings

FAMILIES = ("cube", "scene", "puzzle")


def split_singletask_id(env_id):
    """`cube-double-play-singletask-task2-v0` -> (`cube-double-singletask-task2-v0`,
    `cube-double-play-v0`); an id without the dataset word gives (id, None); None if the id
    is not a singletask id."""
    splits = env_id.split("-")
    if "singletask" not in splits:
        return None
    pos = splits.index("singletask")
    if pos >= 2 and splits[pos - 1] in ("play", "noisy", "navigate", "stitch", "explore"):
        return "-".join(splits[: pos - 1] + splits[pos:]), "-".join(splits[:pos] + splits[-1:])
    return env_id, None


def task_goal(env):
    """The goal of a singletask manipulation env that has been reset (task mode)."""
    u = env.unwrapped
    num_cubes = int(getattr(u, "_num_cubes", 0))
    num_buttons = int(getattr(u, "_num_buttons", 0))
    goal = {
        "num_cubes": num_cubes,
        "num_buttons": num_buttons,
        "cube_goals": [[float(x) for x in u._data.mocap_pos[i]] for i in range(num_cubes)],
        "button_goals": [int(b) for b in u._target_button_states] if num_buttons else [],
        "drawer_goal": None,
        "window_goal": None,
    }
    if hasattr(u, "_target_drawer_pos"):
        goal["drawer_goal"] = float(u._target_drawer_pos)
        goal["window_goal"] = float(u._target_window_pos)
    return goal


def task_info(env_id):
    """The JSON-ready description of `env_id`; raises ValueError with a one-line message."""
    warnings.filterwarnings("ignore")
    import gymnasium
    import ogbench  # noqa: F401  (registers the environments)

    split = split_singletask_id(env_id)
    family = env_id.split("-")[0]
    if split is None or family not in FAMILIES:
        raise ValueError(
            f"'{env_id}' is not an OGBench manipulation singletask id such as "
            "'cube-double-play-singletask-task2-v0' (families: cube, scene, puzzle)"
        )
    env_name, dataset = split
    if env_name not in gymnasium.registry:
        raise ValueError(f"'{env_id}': OGBench has no environment '{env_name}'")
    env = gymnasium.make(env_name)
    env.reset(seed=0)
    u = env.unwrapped
    info = {
        "env_id": env_id,
        "env_name": env_name,
        "dataset": dataset,
        "family": family,
        "task_id": int(u._reward_task_id),
        "obs_dim": int(env.observation_space.shape[0]),
        "action_dim": int(env.action_space.shape[0]),
        "nq": int(u._data.qpos.shape[0]),
        "nv": int(u._data.qvel.shape[0]),
        "max_episode_steps": int(env.spec.max_episode_steps),
    }
    info.update(task_goal(env))
    env.close()
    return info


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mvp_envs.task_info ENV_ID", file=sys.stderr)
        return 2
    try:
        info = task_info(argv[0])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
