"""Reference values from OGBench's own code, for the tests of the Rust dataset reader
(crates/data/tests/ogbench.rs). Each command prints one JSON line.

    python -m mvp_envs.ogbench_reference loader DATASET.npz ENV_ID
        The dataset as `ogbench.make_env_and_datasets(ENV_ID, dataset_path=...)` returns it
        (observations, actions, next_observations, terminals, and the rewards and masks of
        OGBench's relabelling, which evaluates s_t), plus `rewards_next`/`masks_next`: OGBench's
        `relabel_dataset` applied to the qpos/button states of s_{t+1}, and `goal`: the task's
        goal as `mvp_envs.task_info` reports it.

    python -m mvp_envs.ogbench_reference episode ENV_ID SEED OUT.npz
        One episode of a cube-single singletask env made by `mvp_envs.make.make_env` (our
        timing: reward and success of s_{t+1}), driven by OGBench's CubePlanOracle until it
        succeeds or the time limit ends it. Writes the episode to OUT.npz in OGBench's dataset
        format (rows s_0 .. s_T, the last one terminal) and prints the f32 actions, the
        observations, and per step the rewards, terminated and success flags of our env
        (`*_post`) and of OGBench's registered env (`*_pre`, `success_timing='pre'`) replaying
        the same actions from the same seed.
"""

import json
import sys
import warnings

import numpy as np


def _floats(a):
    return np.asarray(a, dtype=np.float64).tolist()


def loader(path, env_id):
    import ogbench
    from ogbench.relabel_utils import relabel_dataset

    from mvp_envs.task_info import split_singletask_id, task_goal

    env, train, _ = ogbench.make_env_and_datasets(env_id, dataset_path=path, add_info=True)
    out = {k: _floats(train[k]) for k in ("observations", "actions", "next_observations", "terminals", "rewards", "masks")}
    goal = task_goal(env)  # the goal relabel_dataset used (its env.reset() set it)

    # The same relabelling on the next states: row t of the loaded dataset is raw row j, and
    # its next state is raw row j + 1.
    raw = np.load(path)
    keep = ~raw["terminals"].astype(bool)
    nxt = np.concatenate([[False], keep[:-1]])
    shifted = {"qpos": raw["qpos"][nxt]}
    if "button_states" in raw.files:
        shifted["button_states"] = raw["button_states"][nxt]
    relabel_dataset(split_singletask_id(env_id)[0], env, shifted)
    out["rewards_next"] = _floats(shifted["rewards"])
    out["masks_next"] = _floats(shifted["masks"])
    out["goal"] = goal
    return out


def episode(env_id, seed, out_path):
    import gymnasium
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    from mvp_envs.make import make_env
    from mvp_envs.task_info import split_singletask_id

    np.random.seed(seed)
    env = make_env(env_id)
    u = env.unwrapped
    assert u._num_cubes == 1, "the oracle episode is scripted for cube-single"

    def with_target(info):
        # The oracle expects data-collection keys; in task mode the target is the goal.
        info = dict(info)
        info["privileged/target_block"] = 0
        info["privileged/target_block_pos"] = u._data.mocap_pos[0].copy()
        info["privileged/target_block_yaw"] = np.array([0.0])
        return info

    ob, info = env.reset(seed=seed)
    agent = CubePlanOracle(env=env)
    agent.reset(ob, with_target(info))
    obs, qpos, qvel, actions = [ob], [info["qpos"]], [info["qvel"]], []
    post = {"rewards": [], "terminated": [], "success": []}
    while True:
        action = np.clip(agent.select_action(ob, with_target(info)), -1, 1).astype(np.float32)
        ob, r, te, tr, info = env.step(action)
        actions.append(action)
        obs.append(ob)
        qpos.append(info["qpos"])
        qvel.append(info["qvel"])
        post["rewards"].append(float(r))
        post["terminated"].append(bool(te))
        post["success"].append(bool(info["success"]))
        if te or tr:
            break

    # OGBench's registered env ('pre' timing) on the same actions.
    pre_env = gymnasium.make(split_singletask_id(env_id)[0])
    pre_env.reset(seed=seed)
    pre = {"rewards": [], "terminated": [], "success": []}
    for action in actions:
        _, r, te, tr, pinfo = pre_env.step(action)
        pre["rewards"].append(float(r))
        pre["terminated"].append(bool(te))
        pre["success"].append(bool(pinfo["success"]))

    rows = len(obs)
    np.savez_compressed(
        out_path,
        observations=np.asarray(obs, np.float32),
        actions=np.asarray(actions + [np.zeros_like(actions[0])], np.float32),
        terminals=np.arange(rows) == rows - 1,
        qpos=np.asarray(qpos, np.float32),
        qvel=np.asarray(qvel, np.float32),
    )
    return {
        "seed": seed,
        "actions": _floats(actions),
        "observations": _floats(obs),
        **{f"{k}_post": v for k, v in post.items()},
        **{f"{k}_pre": v for k, v in pre.items()},
    }


def main(argv=None):
    warnings.filterwarnings("ignore")
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "loader":
        out = loader(argv[1], argv[2])
    elif len(argv) == 4 and argv[0] == "episode":
        out = episode(argv[1], int(argv[2]), argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
