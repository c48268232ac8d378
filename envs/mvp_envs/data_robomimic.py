"""Generates a robomimic-format low-dim dataset with the scripted demonstrators.

    python -m mvp_envs.data_robomimic --task lift|can|square --episodes N --out FILE.hdf5
        [--workers W] [--seed S] [--noise X] [--keep-failed]

Episode i (i = 0, 1, ...) resets the env with seed S + i and draws its action noise from a
generator seeded with (S, i), so a file depends on S, N and X only, not on W. By default only
successful episodes are kept: episodes run in order until N of them succeeded (the file holds
N demos; at most 3N + 20 episodes are tried). With --keep-failed the file holds the first N
episodes, successful or not. Every episode ends at success or at the task's horizon.

The file has robomimic's layout (what robomimic's dataset_states_to_obs.py writes):
- `data` attrs `total` (transitions in the file) and `env_args` (JSON, indent 4);
- `data/demo_<k>` (k = 0..N−1) with attrs `num_samples` (T) and `model_file` (MJCF XML), and
  datasets `actions` [T, 7], `rewards` [T] (1.0 at success, else 0.0), `dones` [T] (1 at
  success or at the last step), `states` [T, D] (MuJoCo state before each action),
  `obs/<key>` and `next_obs/<key>` [T, ·] (float64);
- `mask/train`, `mask/valid`: byte strings of demo names, a seeded 90/10 split (at least one
  valid demo when there are two or more).
Extra: `data` attr `mvp_generator` (JSON: task, seed, noise, episodes tried, successes) and a
`seed` attr per demo. The file is written to FILE.tmp-<pid> and renamed at the end.

Progress goes to stderr, one line at most every 2 s:
    lift: 12/50 demos, 13 episodes (92% success), 392 steps, 4.1 s, ETA 13 s
and a last line `lift: wrote 50 demos (...) to FILE`.
"""

import argparse
import json
import multiprocessing
import os
import sys
import time

import numpy as np

from mvp_envs.robomimic import DATASET_OBS_KEYS, TASKS, RobomimicEnv, object_obs

_ENV = None  # the env of this worker process


def _obs_dict(task, raw):
    out = {k: np.asarray(raw[k], dtype=np.float64).copy() for k in DATASET_OBS_KEYS}
    out["object"] = object_obs(task, raw)
    return out


def run_episode(task, seed, index, noise, env=None):
    """One demonstrator episode: a dict of arrays and flags (see the module docstring)."""
    from mvp_envs.robomimic_demos import make_demonstrator

    env = env if env is not None else _ENV
    env.reset(seed=seed + index)
    sim = env.sim_env
    rng = np.random.default_rng([seed, index])
    demo = make_demonstrator(task, sim, noise=noise, rng=rng)
    demo.reset(env.raw_obs)
    horizon = TASKS[task][1]
    states, actions, rewards, obs, next_obs = [], [], [], [], []
    success = False
    for _ in range(horizon):
        states.append(np.asarray(sim.sim.get_state().flatten(), dtype=np.float64))
        obs.append(_obs_dict(task, env.raw_obs))
        action = demo.act(env.raw_obs)
        _, _, terminated, _, info = env.step(action)
        actions.append(np.asarray(action, dtype=np.float64))
        success = bool(info["success"])
        rewards.append(1.0 if success else 0.0)
        next_obs.append(_obs_dict(task, env.raw_obs))
        if terminated:
            break
    t = len(actions)
    dones = np.zeros(t, dtype=np.int64)
    dones[-1] = 1
    dones[np.asarray(rewards) > 0] = 1
    keys = list(obs[0])
    return {
        "index": index,
        "seed": seed + index,
        "success": success,
        "actions": np.stack(actions),
        "rewards": np.asarray(rewards, dtype=np.float64),
        "dones": dones,
        "states": np.stack(states),
        "obs": {k: np.stack([o[k] for o in obs]) for k in keys},
        "next_obs": {k: np.stack([o[k] for o in next_obs]) for k in keys},
        "model_file": sim.sim.model.get_xml(),
    }


def _init_worker(task, env_args):
    global _ENV
    _ENV = RobomimicEnv(task, env_args=env_args)


def _run(job):
    task, seed, index, noise = job
    return run_episode(task, seed, index, noise)


def episodes(task, env_args, seed, noise, workers, max_episodes):
    """Yields episode results in index order (0, 1, ...), computed by `workers` processes."""
    jobs = ((task, seed, i, noise) for i in range(max_episodes))
    if workers <= 1:
        _init_worker(task, env_args)
        for job in jobs:
            yield _run(job)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(task, env_args)) as pool:
        yield from pool.imap(_run, jobs)
        pool.terminate()


def split_train_valid(names, seed):
    """A seeded 90/10 split of demo names (at least one valid demo when there are two)."""
    order = list(names)
    np.random.default_rng(seed).shuffle(order)
    n_valid = max(1, int(round(0.1 * len(order)))) if len(order) >= 2 else 0
    valid = sorted(order[:n_valid], key=lambda s: int(s.split("_")[1]))
    train = sorted(order[n_valid:], key=lambda s: int(s.split("_")[1]))
    return train, valid


def write_file(path, env_args, demos, seed, generator_info):
    """Writes `demos` in robomimic's layout to `path` atomically (tmp file + rename)."""
    import h5py

    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            total = 0
            names = []
            for k, ep in enumerate(demos):
                name = f"demo_{k}"
                names.append(name)
                g = data.create_group(name)
                t = len(ep["actions"])
                total += t
                g.attrs["num_samples"] = t
                g.attrs["model_file"] = ep.get("model_file", "")
                g.attrs["seed"] = ep["seed"]
                for key in ("actions", "rewards", "dones", "states"):
                    if key in ep:
                        g.create_dataset(key, data=ep[key])
                for group in ("obs", "next_obs"):
                    sub = g.create_group(group)
                    for key, arr in ep[group].items():
                        sub.create_dataset(key, data=arr)
            data.attrs["total"] = total
            data.attrs["env_args"] = json.dumps(env_args, indent=4)
            data.attrs["mvp_generator"] = json.dumps(generator_info)
            train, valid = split_train_valid(names, seed)
            f.create_dataset("mask/train", data=np.array(train, dtype="S"))
            f.create_dataset("mask/valid", data=np.array(valid, dtype="S"))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return total


def generate(task, n, out, workers=1, seed=0, noise=0.0, keep_failed=False, log=sys.stderr):
    """Runs the demonstrator and writes the file; returns a summary dict."""
    from mvp_envs.robomimic import default_env_args

    env_args = default_env_args(task)
    max_episodes = n if keep_failed else 3 * n + 20
    kept, tried, successes, steps = [], 0, 0, 0
    start = last = time.time()
    for ep in episodes(task, env_args, seed, noise, workers, max_episodes):
        tried += 1
        successes += ep["success"]
        if ep["success"] or keep_failed:
            kept.append(ep)
            steps += len(ep["actions"])
        now = time.time()
        if len(kept) >= n or now - last >= 2.0:
            last = now
            eta = (now - start) / max(len(kept), 1) * (n - len(kept))
            print(
                f"{task}: {len(kept)}/{n} demos, {tried} episodes ({100.0 * successes / tried:.0f}% success), "
                f"{steps} steps, {now - start:.1f} s, ETA {eta:.0f} s",
                file=log,
                flush=True,
            )
        if len(kept) >= n:
            break
    if len(kept) < n:
        raise SystemExit(
            f"error: {task}: only {len(kept)} of {n} episodes succeeded in {tried} tries; "
            "lower --noise or use --keep-failed"
        )
    info = {
        "generator": "mvp_envs.data_robomimic",
        "task": task,
        "seed": seed,
        "noise": noise,
        "episodes": tried,
        "successes": successes,
        "kept": "all" if keep_failed else "successful",
    }
    total = write_file(out, env_args, kept, seed, info)
    rate = successes / tried
    print(
        f"{task}: wrote {len(kept)} demos ({total} transitions, "
        f"{'all episodes' if keep_failed else 'successful episodes only'}; "
        f"{successes}/{tried} episodes successful = {100.0 * rate:.1f}%) to {out} "
        f"in {time.time() - start:.1f} s",
        file=log,
        flush=True,
    )
    return {"demos": len(kept), "transitions": total, "episodes": tried, "successes": successes, "rate": rate}


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m mvp_envs.data_robomimic",
        description="Scripted robomimic demonstrations in robomimic's HDF5 layout. By default only "
        "successful episodes are kept (the file holds N successful demos).",
    )
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--episodes", type=int, required=True, help="demos in the file (N)")
    p.add_argument("--out", required=True, help="output .hdf5 file (written atomically)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--seed", type=int, default=0, help="episode i resets with seed S + i (default 0)")
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian action noise (default 0)")
    p.add_argument(
        "--keep-failed",
        action="store_true",
        help="keep the first N episodes whether or not they succeed (measures the success rate)",
    )
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error("--episodes must be at least 1")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.noise < 0:
        p.error("--noise must be >= 0")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        p.error(f"--out: directory {out_dir} does not exist")
    generate(args.task, args.episodes, args.out, args.workers, args.seed, args.noise, args.keep_failed)


if __name__ == "__main__":
    main()
