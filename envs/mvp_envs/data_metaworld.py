"""Scripted Meta-World demonstrations in robomimic's low-dim HDF5 layout.

    python -m mvp_envs.data_metaworld --task door-open-v3 --episodes 10 --out data/metaworld-door-open-v3-10.hdf5

Episode i runs `metaworld/<task>` (mvp_envs.metaworld_env: a random one of the task's 50
variations, drawn from seed S + i) with Meta-World's own scripted policy for the task, optionally
with Gaussian action noise, until success or 500 steps; only successful episodes are kept (MP1
uses 10 per task). Layout as mvp_envs.data_robomimic writes it: `data/demo_k/{actions [T, 4],
rewards [T] (1 at success, else 0: robomimic's convention; the reader and the online
environment both give r - 1), dones [T], obs/state [T, 39], next_obs/state [T, 39]}`,
`data.attrs["env_args"] = {"env_name": "metaworld/<task>", "type": "metaworld"}`, a 90/10
train/valid split in `mask/`. The Rust reader loads it with the single observation key `state`.
With `--pointcloud` the episodes run in `metaworld-pc/<task>` (mvp_envs.metaworld_env: 512 xyz
points of the `corner` depth camera, then the hand's xyz and the gripper opening) and each
observation is kept twice, as `obs/pointcloud [T, 1540]` and as `obs/state [T, 39]` (the scripted
policy acts on the state); the reader takes `pointcloud` for `metaworld-pc/` runs.
Prints a JSON summary on stdout; progress on stderr.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

# Before anything imports MuJoCo (Meta-World does): mvp_envs.make selects the offscreen GL
# backend that point clouds render with.
from mvp_envs.make import make_env


def run_episode(env, policy, seed, noise, rng):
    obs, _ = env.reset(seed=seed)
    base = env.unwrapped
    clouds = base.cloud is not None
    o, a, r, d, no, po, pno = [], [], [], [], [], [], []
    success = False
    for _ in range(env.spec.max_episode_steps if env.spec else 500):
        state = base.state
        # A copy: some scripted policies shift parts of the observation in place.
        act = np.asarray(policy.get_action(state.copy()), np.float64)
        if noise > 0:
            act = act + rng.normal(0.0, noise, act.shape)
        act = np.clip(act, -1.0, 1.0).astype(np.float32)
        nxt, rew, term, trunc, info = env.step(act)
        o.append(state)
        a.append(act)
        r.append(rew + 1.0)  # robomimic's convention: 1 at success, else 0 (the reader subtracts 1)
        d.append(bool(term))
        no.append(base.state)
        if clouds:
            po.append(obs)
            pno.append(nxt)
        obs = nxt
        if term or trunc:
            success = bool(info["success"])
            break
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    obs_keys, next_keys = {"state": f32(o)}, {"state": f32(no)}
    if clouds:
        obs_keys["pointcloud"], next_keys["pointcloud"] = f32(po), f32(pno)
    return {
        "actions": f32(a),
        "rewards": f32(r),
        "dones": np.asarray(d, np.int64),
        "obs": obs_keys,
        "next_obs": next_keys,
        "seed": seed,
        "success": success,
    }


def generate(task, n, out, seed=0, noise=0.0, pointcloud=False, log=sys.stderr):
    from mvp_envs.data_robomimic import write_file
    from mvp_envs.metaworld_env import expert

    env_name = f"{'metaworld-pc' if pointcloud else 'metaworld'}/{task}"
    env = make_env(env_name)
    policy = expert(task)
    rng = np.random.default_rng(seed)
    kept, tried, start = [], 0, time.time()
    while len(kept) < n and tried < 3 * n + 20:
        ep = run_episode(env, policy, seed + tried, noise, rng)
        tried += 1
        if ep["success"]:
            kept.append(ep)
    env.close()
    if len(kept) < n:
        raise SystemExit(f"error: {task}: only {len(kept)} of {n} episodes succeeded in {tried} tries; lower --noise")
    env_args = {"env_name": env_name, "type": "metaworld", "env_kwargs": {}}
    info = {"generator": "mvp_envs.data_metaworld", "task": task, "seed": seed, "noise": noise, "episodes": tried}
    info["pointcloud"] = bool(pointcloud)
    total = write_file(out, env_args, kept, seed, info)
    print(
        f"{task}: wrote {len(kept)} demos ({total} transitions; {len(kept)}/{tried} episodes successful) "
        f"to {out} in {time.time() - start:.1f} s",
        file=log,
        flush=True,
    )
    return {"demos": len(kept), "transitions": total, "episodes": tried, "successes": len(kept), "rate": len(kept) / tried}


def main(argv=None):
    p = argparse.ArgumentParser(description="Scripted Meta-World demonstrations (robomimic HDF5 layout).")
    p.add_argument("--task", required=True, help="a Meta-World v3 task, e.g. door-open-v3")
    p.add_argument("--episodes", type=int, required=True, help="successful demos in the file")
    p.add_argument("--out", required=True, help="output .hdf5 file (written atomically)")
    p.add_argument("--seed", type=int, default=0, help="episode i resets with seed S + i (default 0)")
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian action noise (default 0)")
    p.add_argument("--workers", type=int, default=1, help="accepted for symmetry; one process is enough")
    p.add_argument("--pointcloud", action="store_true", help="also keep point-cloud observations (metaworld-pc/)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error("--episodes must be at least 1")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        p.error(f"--out: directory {out_dir} does not exist")
    from mvp_envs.metaworld_env import check_task
    from mvp_envs.protocol import UserError

    try:
        check_task(args.task)
    except UserError as e:
        p.error(str(e))
    print(json.dumps(generate(args.task, args.episodes, args.out, args.seed, args.noise, args.pointcloud)))


if __name__ == "__main__":
    main()
