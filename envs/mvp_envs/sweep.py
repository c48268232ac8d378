"""Sweeps of `mvp train` runs on a Ray cluster (`mvp sweep FILE`, which runs this module).

A sweep file (TOML) names a grid: configs × variants × seeds, each cell one run.

    out = "runs/sweep/lift"            # the runs' folder; on a cluster, a shared filesystem
    configs = ["configs/cpu/robomimic-lift.toml"]
    seeds = 3                          # seeds 0, 1, 2 (or a list: [0, 5])
    sets = ["schedule.eval_episodes=20"]   # --set overrides of every run
    cpus = 1                           # Ray resources of one run
    gpus = 0                           # default: 1 for a run whose config trains on CUDA, else 0
    attempts = 3                       # starts of one run before it counts as failed
    [variants]                         # name = its --set overrides
    mvp = ['agent.actor.kind="mvp"']
    qc = ['agent.actor.kind="flow"', "agent.actor.steps=10"]

Before anything starts, every run's config (with its overrides) is checked with `mvp train
--check`: a bad key stops the sweep with mvp's message. Each run is one Ray task asking for
`cpus` CPUs and `gpus` GPUs (without `gpus` in the file: one GPU for a run whose config trains
on CUDA, `runtime.device = "cuda"`, none otherwise) that runs the `mvp` binary as
a subprocess, in `<out>/<config>.<variant>__seed<s>/` (so `mvp report` groups runs by
`<config>.<variant>`). A run whose process dies is started again from its newest checkpoint
(`mvp train --resume`) up to `attempts` times; a task lost with its node is retried by Ray
(`max_retries`) and resumes the same way, since the run directory lives on the shared
filesystem. The subprocess dies with its Ray worker (PR_SET_PDEATHSIG), so a retried run never
has two writers. A finished run leaves `<out>/.sweep/<run>.json` with state "done" and is not
started again: re-running the same sweep after the driver died continues where it stopped.
Progress (queued, running, done, failed) goes to stderr every few seconds; a JSON summary to
stdout at the end.

Without `--address` Ray starts a local instance (a laptop); with it, the driver joins that
cluster (`ray start --head` on one node, `ray start --address=HEAD:PORT` on the others).
Depends on Ray (pinned in envs/requirements.txt) and the standard library.
"""

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib

KEYS = {"out", "configs", "seeds", "sets", "cpus", "gpus", "attempts", "variants"}


class SweepError(Exception):
    """A sweep file that cannot be run; the message says which key and what it needs."""


def load_grid(path):
    """The sweep of `path`: (settings, runs), each run {"name", "config", "sets", "seed"}."""
    with open(path, "rb") as f:
        try:
            spec = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise SweepError(f"{path}: {e}") from None
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise SweepError(f"{path}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(KEYS))}")
    if not isinstance(spec.get("out"), str) or not spec["out"]:
        raise SweepError(f"{path}: `out` must name the runs' folder")
    configs = spec.get("configs")
    if not isinstance(configs, list) or not configs or not all(isinstance(c, str) for c in configs):
        raise SweepError(f"{path}: `configs` must be a non-empty list of config files")
    for c in configs:
        if not os.path.isfile(c):
            raise SweepError(f"{path}: config {c} does not exist")
    seeds = spec.get("seeds", 1)
    seeds = list(range(seeds)) if isinstance(seeds, int) else seeds
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise SweepError(f"{path}: `seeds` must be a count ≥ 1 or a list of seeds ≥ 0")
    variants = spec.get("variants", {"base": []})
    if not isinstance(variants, dict) or not all(isinstance(v, list) for v in variants.values()):
        raise SweepError(f"{path}: `[variants]` maps names to lists of --set overrides")
    if int(spec.get("attempts", 3)) < 1:
        raise SweepError(f"{path}: `attempts` must be ≥ 1")
    settings = {
        "out": spec["out"],
        "cpus": float(spec.get("cpus", 1)),
        "gpus": float(spec["gpus"]) if "gpus" in spec else None,
        "attempts": int(spec.get("attempts", 3)),
    }
    common = list(spec.get("sets", []))
    runs = []
    for config in configs:
        stem = os.path.splitext(os.path.basename(config))[0]
        for variant, sets in variants.items():
            for seed in seeds:
                name = f"{stem}.{variant}__seed{seed}"
                runs.append({"name": name, "config": config, "sets": common + list(sets), "seed": seed})
    return settings, runs


def check_runs(settings, runs, mvp, root):
    """Checks every run's config with `mvp train --check` (once per config and overrides) and
    sets each run's GPU request: the file's `gpus`, else 1 where the resolved config trains on
    CUDA. Raises SweepError with mvp's message for a config that cannot run."""
    resolved = {}
    for run in runs:
        key = (run["config"], tuple(run["sets"]))
        if key not in resolved:
            cmd = [mvp, "--log", "warn", "train", "--check", "--config", run["config"]]
            for s in run["sets"]:
                cmd += ["--set", s]
            done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
            if done.returncode != 0:
                message = (done.stderr.strip() or done.stdout.strip()).removeprefix("error: ")
                raise SweepError(f"run {run['name']}: {message}")
            resolved[key] = tomllib.loads(done.stdout)
        device = str(resolved[key].get("runtime", {}).get("device", "cpu"))
        run["gpus"] = settings["gpus"] if settings["gpus"] is not None else float(device.startswith("cuda"))


def _die_with_parent():
    # Linux: the run's process gets SIGKILL when the Ray worker running it dies.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _state_path(out, name):
    return os.path.join(out, ".sweep", f"{name}.json")


def _write_state(out, name, **state):
    path = _state_path(out, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def read_state(out, name):
    try:
        with open(_state_path(out, name)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def run_one(mvp, root, out, run, attempts):
    """Runs (or resumes) one run to its end in this process; returns its final state."""
    name = run["name"]
    run_dir = os.path.join(out, name)
    starts, resumes = 0, 0
    previous = read_state(out, name)
    if previous and previous.get("state") == "done":
        return previous
    while starts < attempts:
        has_checkpoint = os.path.isdir(os.path.join(run_dir, "checkpoints")) and any(
            d.startswith("step_") for d in os.listdir(os.path.join(run_dir, "checkpoints"))
        )
        if has_checkpoint:
            cmd = [mvp, "--log", "warn", "train", "--resume", run_dir]
            resumes += 1
        else:
            # Nothing to continue from (a start that died before its first checkpoint).
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = [mvp, "--log", "warn", "train", "--config", run["config"]]
            for s in run["sets"] + [f"run.seed={run['seed']}", f'run.out_dir="{out}"', f'run.name="{name}"']:
                cmd += ["--set", s]
        starts += 1
        _write_state(out, name, state="running", host=socket.gethostname(), pid=os.getpid(), starts=starts)
        log_path = os.path.join(out, ".sweep", f"{name}.log")
        with open(log_path, "a") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            rc = subprocess.run(cmd, cwd=root, stdout=log, stderr=log, preexec_fn=_die_with_parent).returncode
        if rc == 0:
            state = dict(state="done", host=socket.gethostname(), starts=starts, resumes=resumes)
            _write_state(out, name, **state)
            return state
    state = dict(state="failed", host=socket.gethostname(), starts=starts, resumes=resumes, last_exit=rc)
    _write_state(out, name, **state)
    return state


def sweep(settings, runs, mvp, root, address=None, progress_every=5.0, log=sys.stderr):
    import ray

    out = os.path.abspath(settings["out"])
    os.makedirs(os.path.join(out, ".sweep"), exist_ok=True)
    ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        task = ray.remote(run_one)
        todo = [r for r in runs if (read_state(out, r["name"]) or {}).get("state") != "done"]
        skipped = len(runs) - len(todo)
        pending = {
            task.options(num_cpus=settings["cpus"], num_gpus=r.get("gpus") or 0, max_retries=3).remote(
                mvp, root, out, r, settings["attempts"]
            ): r["name"]
            for r in todo
        }
        results = {}
        start, last = time.time(), 0.0
        print(
            f"sweep: {len(runs)} runs ({skipped} already done) on {ray.cluster_resources().get('CPU', 0):.0f} CPUs "
            f"in {out}",
            file=log,
            flush=True,
        )
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=progress_every)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    results[name] = ray.get(ref)
                except Exception as e:  # the task died more often than Ray retries it
                    results[name] = {"state": "failed", "error": str(e).splitlines()[0]}
                    _write_state(out, name, **results[name])
            if time.time() - last >= progress_every or not pending:
                last = time.time()
                states = [(read_state(out, n) or {}).get("state") for n in pending.values()]
                running = sum(s == "running" for s in states)
                done = skipped + sum(r["state"] == "done" for r in results.values())
                failed = sum(r["state"] == "failed" for r in results.values())
                print(
                    f"sweep: {len(pending) - running} queued, {running} running, {done} done, {failed} failed "
                    f"({time.time() - start:.0f} s)",
                    file=log,
                    flush=True,
                )
    finally:
        ray.shutdown()
    summary = {n: (read_state(out, n) or {"state": "unknown"}) for n in (r["name"] for r in runs)}
    return {"out": out, "runs": summary, "seconds": round(time.time() - start, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description="Run a sweep of mvp training runs as Ray tasks.")
    p.add_argument("file", help="the sweep's TOML file")
    p.add_argument("--mvp", required=True, help="the mvp binary every run uses")
    p.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--root", default=os.getcwd(), help="the working directory of the runs")
    args = p.parse_args(argv)
    mvp, root = os.path.abspath(args.mvp), os.path.abspath(args.root)
    try:
        settings, runs = load_grid(args.file)
        check_runs(settings, runs, mvp, root)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    result = sweep(settings, runs, mvp, root, args.address)
    print(json.dumps(result))
    if any(r.get("state") != "done" for r in result["runs"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
