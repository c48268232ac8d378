"""Environment workers placed as Ray actors (`env.remote = "ray"` on the Rust side).

    python -m mvp_envs.ray_workers --workers W [--cpus 1] [--address HEAD:PORT]

A trainer runs this module as a child process. It joins the Ray cluster at `--address` (or
starts a local Ray instance without it) and places W actors, each asking for `--cpus` CPUs,
spread over the cluster's nodes. Each actor serves the worker protocol over TCP on its node's
address (`mvp_envs.worker.serve_connections` on a thread of the actor's process: one connection
at a time, each with fresh environments), so the trainer speaks to it exactly as to
`python -m mvp_envs.worker --listen`; the Rust side knows nothing of Ray.

Ray restarts an actor whose process dies (`max_restarts = -1`), on the same node or, when the
node is lost, on another; an actor Ray gives up on is replaced by a new one. This supervisor
asks every actor where it serves a few times a second and prints one JSON line to stdout each
time a worker's address is new:

    {"worker": 0, "address": "10.0.0.7:41235", "pid": 4242, "node": "a1b2...", "generation": 1}

`generation` counts the placements of that worker (2 and up: it was replaced). The trainer
reconnects a worker whose connection broke to the address last printed for it (a restart on
its side, counted like any worker restart). The actors serve only a client holding the shared
secret that this module reads from `$MVP_WORKER_SECRET` (the trainer makes one per run and
passes it in its child's environment; see mvp_envs.worker). Everything else (Ray's messages, the actors' logs)
goes to stderr. The supervisor ends when its stdin closes or on SIGTERM (the trainer is done or
gone), and its actors end with it. Depends on Ray (pinned in envs/requirements.txt).
"""

import argparse
import ctypes
import json
import os
import signal
import socket
import sys
import threading
import time

POLL_SECONDS = 0.25


class EnvWorkerActor:
    """One environment worker: a TCP server on this node, serving on a daemon thread."""

    def __init__(self, secret):
        import ray

        from mvp_envs import worker

        self.host = ray.util.get_node_ip_address()
        self.server = socket.create_server((self.host, 0))
        self.port = self.server.getsockname()[1]
        self.node = ray.get_runtime_context().get_node_id()
        threading.Thread(target=worker.serve_connections, args=(self.server, secret), daemon=True).start()
        print(f"env worker listening on {self.host}:{self.port}", file=sys.stderr, flush=True)

    def where(self):
        return {"address": f"{self.host}:{self.port}", "pid": os.getpid(), "node": self.node}


def _die_with_parent():
    # Linux: this supervisor gets SIGTERM when the trainer that started it dies.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _check_reachable(address):
    """Fails at once, saying so, when nothing listens at a `HOST:PORT` address (ray.init
    would retry for minutes)."""
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit():
        return  # no address (a local instance) or "auto"
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise SystemExit(
            f"no Ray cluster at {address}: {e} (start one with `ray start --head --port={port}` there)"
        ) from None


def supervise(workers, cpus, address, publish, stop, poll=POLL_SECONDS):
    """Places `workers` actors and publishes every new address until `stop` is set."""
    import ray
    from ray.exceptions import RayActorError

    import mvp_envs
    from mvp_envs.worker import load_secret

    # The actors import mvp_envs: Ray ships the package to every node (the environments'
    # own packages, OGBench and the rest, must be installed there).
    runtime_env = {"py_modules": [mvp_envs]}
    secret = load_secret()  # before Ray starts: a missing secret fails at once
    _check_reachable(address)
    ray.init(address=address, include_dashboard=False, logging_level="WARNING", runtime_env=runtime_env)
    try:
        actor_class = ray.remote(EnvWorkerActor).options(
            num_cpus=cpus, max_restarts=-1, max_task_retries=-1, scheduling_strategy="SPREAD"
        )
        actors = [actor_class.remote(secret) for _ in range(workers)]
        last = [None] * workers
        generation = [0] * workers
        pending = {}
        while not stop.is_set():
            for i, actor in enumerate(actors):
                if i not in pending:
                    pending[i] = actor.where.remote()
            ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=poll)
            ready = set(ready)
            for i, ref in list(pending.items()):
                if ref not in ready:
                    continue  # still starting, or being restarted by Ray
                del pending[i]
                try:
                    where = ray.get(ref)
                except RayActorError as e:
                    if last[i] is None:  # it never served: its node cannot run it
                        raise SystemExit(f"env worker {i} cannot start on Ray: {e}") from None
                    # Ray gave up on a worker that served: a new actor takes its place.
                    print(f"env worker {i} lost ({str(e).splitlines()[0]}); placing a new one", file=sys.stderr)
                    actors[i] = actor_class.remote(secret)
                    last[i] = None
                    continue
                if where != last[i]:
                    last[i] = where
                    generation[i] += 1
                    publish({"worker": i, **where, "generation": generation[i]})
            stop.wait(poll)
    finally:
        ray.shutdown()


def main(argv=None):
    p = argparse.ArgumentParser(description="Environment workers as Ray actors, for an mvp trainer.")
    p.add_argument("--workers", type=int, required=True, help="number of worker actors")
    p.add_argument("--cpus", type=float, default=1.0, help="Ray CPUs of each worker actor")
    p.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local one)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.cpus < 0:
        p.error("--workers must be at least 1 and --cpus not negative")
    _die_with_parent()
    # Keep stdout for the address lines: everything printed by anything else goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def publish(line):
        out.write(json.dumps(line) + "\n")
        out.flush()

    stop = threading.Event()

    def watch_stdin():
        while os.read(0, 4096):  # unbuffered: no lock held at interpreter shutdown
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    supervise(args.workers, args.cpus, args.address, publish, stop)


if __name__ == "__main__":
    main()
