"""Generates OGBench manipulation datasets with the scripted oracles shipped in the ogbench wheel.

    python -m mvp_envs.data_ogbench --env cube-double-play-v0 --episodes 1000 --workers 2 \\
        --out data/cube-double-play-v0.npz [--seed 0] [--episode-length 1001] [--val-episodes K]

OGBench's datasets cannot be downloaded here, but the wheel ships the oracles that produced them.
This module is our own driver for them, following OGBench's collection protocol:

- the goal-conditioned env (`cube-double-v0` for `cube-double-play-v0`) is made with
  `mode='data_collection'`, `terminate_at_goal=False` and a time limit of `--episode-length`
  steps (1001 by default: 1000 transitions per episode once the loader drops the last row);
- 'play' datasets use the plan oracles (`oracles.plan.*`, action noise 0.1, smoothing 0.5);
  'noisy' datasets use the Markov oracles (`oracles.markov.*`, min norm 0.4) plus Gaussian action
  noise with a per-episode level xi ~ U(0, 0.1), scaled (1, 1, 1, 3, 10) per action dimension;
- the oracle is chosen by `info['privileged/target_task']` (cube: cube; scene: cube, button,
  drawer, window; puzzle: button with the gripper always closed); when it says `done`, the env
  draws a new target with `set_new_target(p_stack=...)` and the oracle for that target resets;
- the cube-stacking probability p_stack is drawn per episode (single 0, double U(0, 0.25),
  triple U(0.05, 0.35), quadruple U(0.1, 0.5), octuple U(0, 0.35));
- scene episodes where the cube leaves the visible table (y >= 0.29, or y <= -0.3 outside the
  drawer's height band) are discarded and collected again;
- every step stores the observation *before* the action, the clipped action, `terminals` (the
  episode ends with this step), and `qpos`, `qvel` (and `button_states`) of that same state
  (`info['prev_qpos']` ...).

Files: `np.savez_compressed` with `observations` f32 [N, O], `actions` f32 [N, 5], `terminals`
bool [N], `qpos` f32, `qvel` f32, and `button_states` i64 for scene and puzzle — the layout that
`ogbench.utils.load_dataset` reads. `--out FILE.npz` gets the first `--episodes` episodes and
`FILE-val.npz` the next `--val-episodes` (default max(1, episodes // 10)). Both are written to a
temporary file and renamed (the validation file first).

Parallelism: `--workers W` processes; episodes are split into W contiguous blocks, and worker w
seeds numpy's global generator (the oracles draw from it) and its env from child w of
`numpy.random.SeedSequence(seed)`. The same (seed, W) gives the same files.

Progress goes to stderr every few seconds:
`[data_ogbench] 12/110 episodes, 12012/110110 transitions, 830 transitions/s, ETA 118 s`.
The last line on stdout is a JSON summary (paths, counts, seconds, transitions/s).
Exit status: 0 on success, 2 on a usage error (one line on stderr), 1 when a worker fails.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import queue as queue_mod  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

FAMILIES = ("cube", "scene", "puzzle")
DATASET_TYPES = ("play", "noisy")
TAG = "[data_ogbench]"


class UsageError(Exception):
    """A mistake in the arguments: reported as one line, exit status 2."""


def parse_dataset_name(name):
    """`cube-double-play-v0` (or `cube-double-play-singletask-task2-v0`) -> dict with
    `dataset` (`cube-double-play-v0`), `env_id` (`cube-double-v0`), `family`, `kind`."""
    splits = name.split("-")
    if "singletask" in splits:
        pos = splits.index("singletask")
        splits = splits[:pos] + splits[-1:]
    if len(splits) < 3 or splits[-2] not in DATASET_TYPES:
        raise UsageError(
            f"'{name}' is not an OGBench manipulation dataset name: expected "
            "<env>-<play|noisy>-v0, e.g. cube-double-play-v0"
        )
    family = splits[0]
    if family not in FAMILIES:
        raise UsageError(
            f"'{name}': only the manipulation families {', '.join(FAMILIES)} (state "
            "observations) can be generated here; locomotion and visual datasets have no "
            "scripted oracle in the ogbench wheel"
        )
    return {
        "dataset": "-".join(splits),
        "env_id": "-".join(splits[:-2] + splits[-1:]),
        "family": family,
        "kind": splits[-2],
    }


def val_path_for(path):
    """`x/cube-double-play-v0.npz` -> `x/cube-double-play-v0-val.npz` (as OGBench's loader)."""
    return path[: -len(".npz")] + "-val.npz"


def p_stack_for(env_id, rng):
    """Per-episode probability that a new cube target is stacked on another cube."""
    for word, (lo, hi) in (
        ("single", (0.0, 0.0)),
        ("double", (0.0, 0.25)),
        ("triple", (0.05, 0.35)),
        ("quadruple", (0.1, 0.5)),
        ("octuple", (0.0, 0.35)),
    ):
        if word in env_id.split("-"):
            return 0.0 if hi == 0.0 else rng.uniform(lo, hi)
    return 0.5


def make_oracles(env, family, kind, noise, smoothing, min_norm):
    """The oracle for each value of `info['privileged/target_task']`."""
    if kind == "play":
        from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
        from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
        from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

        kw = dict(env=env, noise=noise, noise_smoothing=smoothing)
        if family == "cube":
            return {"cube": CubePlanOracle(**kw)}
        if family == "scene":
            return {
                "cube": CubePlanOracle(**kw),
                "button": ButtonPlanOracle(**kw),
                "drawer": DrawerPlanOracle(**kw),
                "window": WindowPlanOracle(**kw),
            }
        return {"button": ButtonPlanOracle(gripper_always_closed=True, **kw)}

    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle

    kw = dict(env=env, min_norm=min_norm)
    if family == "cube":
        return {"cube": CubeMarkovOracle(**kw)}
    if family == "scene":
        return {
            "cube": CubeMarkovOracle(max_step=100, **kw),
            "button": ButtonMarkovOracle(**kw),
            "drawer": DrawerMarkovOracle(**kw),
            "window": WindowMarkovOracle(**kw),
        }
    return {"button": ButtonMarkovOracle(gripper_always_closed=True, **kw)}


def scene_episode_healthy(qpos):
    """False when the scene's cube left the visible table (not counting the drawer)."""
    xyz = qpos[:, 14:17]
    if (xyz[:, 1] >= 0.29).any():
        return False
    outside_drawer = (xyz[:, 1] <= -0.3) & ((xyz[:, 2] < 0.06) | (xyz[:, 2] > 0.08))
    return not outside_drawer.any()


def run_episode(env, oracles, spec, cfg, buffers, first_seed):
    """Collects one episode into `buffers` (preallocated rows); returns the number of rows."""
    rng = np.random  # the oracles draw from numpy's global generator, so we do too
    ob, info = env.reset(seed=first_seed)
    p_stack = p_stack_for(spec["env_id"], rng)
    markov = spec["kind"] == "noisy"
    if markov:
        xi = rng.uniform(0.0, cfg["noise"])
        noise_scale = np.array([xi, xi, xi, 3.0 * xi, 10.0 * xi])
    agent = oracles[info["privileged/target_task"]]
    agent.reset(ob, info)
    has_buttons = "button_states" in buffers
    n = 0
    done = False
    while not done:
        if cfg["p_random_action"] > 0 and rng.rand() < cfg["p_random_action"]:
            action = env.action_space.sample()
        else:
            action = np.asarray(agent.select_action(ob, info), dtype=np.float64)
            if markov:
                action = action + rng.normal(0.0, noise_scale, action.shape)
        action = np.clip(action, -1.0, 1.0)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = bool(terminated or truncated)
        if agent.done:
            agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
            agent = oracles[agent_info["privileged/target_task"]]
            agent.reset(agent_ob, agent_info)
        if n == len(buffers["terminals"]):
            raise RuntimeError(f"episode longer than its time limit of {n} steps")
        buffers["observations"][n] = ob
        buffers["actions"][n] = action
        buffers["terminals"][n] = done
        buffers["qpos"][n] = info["prev_qpos"]
        buffers["qvel"][n] = info["prev_qvel"]
        if has_buttons:
            buffers["button_states"][n] = info["prev_button_states"]
        ob = next_ob
        n += 1
    return n


def collect(worker, num_episodes, seed_state, spec, cfg, out_path, messages):
    """Worker process: collects `num_episodes` episodes and saves them to `out_path` (.npz)."""
    try:
        quiet_warnings()
        import gymnasium
        import ogbench  # noqa: F401  (registers the environments)

        env_seed, np_seed = (int(x) for x in seed_state)
        np.random.seed(np_seed)
        env = gymnasium.make(
            spec["env_id"],
            terminate_at_goal=False,
            mode="data_collection",
            max_episode_steps=cfg["episode_length"],
        )
        oracles = make_oracles(
            env, spec["family"], spec["kind"], cfg["noise"], cfg["noise_smoothing"], cfg["min_norm"]
        )
        u = env.unwrapped
        length = cfg["episode_length"]
        buffers = {
            "observations": np.zeros((length, env.observation_space.shape[0]), np.float32),
            "actions": np.zeros((length, env.action_space.shape[0]), np.float32),
            "terminals": np.zeros(length, bool),
            "qpos": np.zeros((length, u._data.qpos.shape[0]), np.float32),
            "qvel": np.zeros((length, u._data.qvel.shape[0]), np.float32),
        }
        if hasattr(u, "_cur_button_states"):
            buffers["button_states"] = np.zeros((length, len(u._cur_button_states)), np.int64)
        episodes = []
        first_seed = env_seed
        while len(episodes) < num_episodes:
            n = run_episode(env, oracles, spec, cfg, buffers, first_seed)
            first_seed = None  # later resets continue the env's generator
            if spec["family"] == "scene" and not scene_episode_healthy(buffers["qpos"][:n]):
                messages.put(("retry", worker, n))
                continue
            episodes.append({k: v[:n].copy() for k, v in buffers.items()})
            messages.put(("episode", worker, n))
        arrays = {k: np.concatenate([e[k] for e in episodes]) for k in buffers} if episodes else {}
        episode_lengths = np.array([len(e["terminals"]) for e in episodes], np.int64)
        with open(out_path, "wb") as f:
            np.savez(f, episode_lengths=episode_lengths, **arrays)
        env.close()
        messages.put(("done", worker, 0))
    except BaseException:
        messages.put(("error", worker, traceback.format_exc()))


def quiet_warnings():
    """Silences the harmless warnings of every env construction (float32 Box bounds, no display)."""
    warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")
    warnings.filterwarnings("ignore", message=".*DISPLAY environment variable.*")


def split_counts(total, workers):
    """Contiguous blocks of episodes, one per worker (sizes differ by at most one)."""
    return [(w + 1) * total // workers - w * total // workers for w in range(workers)]


def save_npz(path, arrays):
    """np.savez_compressed to a temporary file beside `path`, then rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        return tmp
    except BaseException:
        os.unlink(tmp)
        raise


def format_eta(seconds):
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


def generate(args):
    spec = parse_dataset_name(args.env)
    if not args.out.endswith(".npz"):
        raise UsageError(f"--out must end with .npz (the validation split goes to FILE-val.npz), got '{args.out}'")
    if args.episodes < 1 or args.workers < 1 or args.episode_length < 2:
        raise UsageError("--episodes and --workers must be at least 1, --episode-length at least 2")
    val_episodes = max(1, args.episodes // 10) if args.val_episodes is None else args.val_episodes
    if val_episodes < 0:
        raise UsageError("--val-episodes must be at least 0")

    quiet_warnings()
    import gymnasium
    import ogbench  # noqa: F401

    if spec["env_id"] not in gymnasium.registry:
        raise UsageError(f"'{args.env}': OGBench has no environment '{spec['env_id']}'")

    out = args.out
    val_out = val_path_for(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    total_episodes = args.episodes + val_episodes
    workers = min(args.workers, total_episodes)
    cfg = {
        "episode_length": args.episode_length,
        "noise": args.noise,
        "noise_smoothing": args.noise_smoothing,
        "min_norm": args.min_norm,
        "p_random_action": args.p_random_action,
    }
    oracle = (
        f"plan oracles, noise {args.noise}, smoothing {args.noise_smoothing}"
        if spec["kind"] == "play"
        else f"markov oracles, min norm {args.min_norm}, action noise xi ~ U(0, {args.noise})"
    )
    print(
        f"{TAG} {spec['dataset']} (env {spec['env_id']}): {args.episodes} + {val_episodes} "
        f"episodes of {args.episode_length} steps, {workers} workers, seed {args.seed}, "
        f"{oracle} -> {out}",
        file=sys.stderr,
        flush=True,
    )

    counts = split_counts(total_episodes, workers)
    seeds = [c.generate_state(2) for c in np.random.SeedSequence(args.seed).spawn(workers)]
    expected = total_episodes * args.episode_length
    scratch = tempfile.mkdtemp(prefix=".tmp-data-ogbench-", dir=os.path.dirname(os.path.abspath(out)))
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    parts = [os.path.join(scratch, f"worker{w}.npz") for w in range(workers)]
    procs = [
        ctx.Process(
            target=collect,
            args=(w, counts[w], seeds[w], spec, cfg, parts[w], messages),
            daemon=True,
        )
        for w in range(workers)
    ]
    start = time.monotonic()
    try:
        for p in procs:
            p.start()
        episodes_done = transitions = retries = 0
        finished = set()
        last_report = start
        while len(finished) < workers:
            try:
                kind, w, payload = messages.get(timeout=0.5)
            except queue_mod.Empty:
                for w, p in enumerate(procs):
                    if w not in finished and not p.is_alive() and messages.empty():
                        raise RuntimeError(f"worker {w} exited with status {p.exitcode} without a result")
                kind = None
            if kind == "episode":
                episodes_done += 1
                transitions += payload
            elif kind == "retry":
                retries += 1
            elif kind == "done":
                finished.add(w)
            elif kind == "error":
                raise RuntimeError(f"worker {w} failed:\n{payload}")
            now = time.monotonic()
            if now - last_report >= args.progress_every or (kind == "done" and len(finished) == workers):
                last_report = now
                rate = transitions / max(now - start, 1e-9)
                eta = (expected - transitions) / rate if rate > 0 else None
                print(
                    f"{TAG} {episodes_done}/{total_episodes} episodes, {transitions}/{expected} "
                    f"transitions, {rate:.0f} transitions/s, ETA {format_eta(eta)}"
                    + (f" ({retries} scene episodes discarded)" if retries else ""),
                    file=sys.stderr,
                    flush=True,
                )
        for p in procs:
            p.join()
        collect_s = time.monotonic() - start

        loaded = [np.load(path) for path in parts]
        keys = [k for k in loaded[0].files if k != "episode_lengths"]
        lengths = np.concatenate([f["episode_lengths"] for f in loaded])
        data = {k: np.concatenate([f[k] for f in loaded]) for k in keys}
        train_rows = int(lengths[: args.episodes].sum())
        train = {k: v[:train_rows] for k, v in data.items()}
        val = {k: v[train_rows:] for k, v in data.items()}
        tmp_val = save_npz(val_out, val)
        tmp_train = save_npz(out, train)
        os.replace(tmp_val, val_out)
        os.replace(tmp_train, out)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        shutil.rmtree(scratch, ignore_errors=True)

    seconds = time.monotonic() - start
    summary = {
        "dataset": spec["dataset"],
        "env_id": spec["env_id"],
        "train": out,
        "val": val_out,
        "train_episodes": args.episodes,
        "val_episodes": val_episodes,
        "train_rows": train_rows,
        "val_rows": int(len(val["terminals"])),
        "workers": workers,
        "seed": args.seed,
        "collect_seconds": round(collect_s, 3),
        "seconds": round(seconds, 3),
        "transitions_per_s": round(int(lengths.sum()) / collect_s, 1),
    }
    print(
        f"{TAG} wrote {out} ({train_rows} rows) and {val_out} ({summary['val_rows']} rows) in "
        f"{seconds:.1f} s ({summary['transitions_per_s']:.0f} transitions/s while collecting)",
        file=sys.stderr,
        flush=True,
    )
    print(json.dumps(summary), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mvp_envs.data_ogbench",
        description="Generate an OGBench manipulation dataset (and its -val split) with the "
        "scripted oracles of the ogbench wheel.",
    )
    parser.add_argument("--env", required=True, help="dataset name, e.g. cube-double-play-v0")
    parser.add_argument("--episodes", type=int, required=True, help="training episodes")
    parser.add_argument("--out", required=True, help="output FILE.npz (validation: FILE-val.npz)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episode-length", type=int, default=1001, help="steps (rows) per episode")
    parser.add_argument("--val-episodes", type=int, default=None, help="default max(1, episodes // 10)")
    parser.add_argument("--noise", type=float, default=0.1, help="action noise level")
    parser.add_argument("--noise-smoothing", type=float, default=0.5, help="plan oracles' noise smoothing")
    parser.add_argument("--min-norm", type=float, default=0.4, help="markov oracles' minimum action norm")
    parser.add_argument("--p-random-action", type=float, default=0.0, help="probability of a uniform action")
    parser.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    try:
        generate(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
