"""Plain Python loop stepping one environment: the baseline the bridge is measured against.

    PYTHONPATH=envs .venv/bin/python -m mvp_envs.bench_plain ENV_ID [STEPS] [SEED]

Uniform random actions in the action bounds, an explicit reset at each episode end (as the
Rust side does), no bridge. Prints one JSON line: {"env_id", "steps", "seconds", "steps_per_s"}.
"""

import json
import sys
import time

import numpy as np

from mvp_envs.make import make_env


def main():
    env_id = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    env = make_env(env_id)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    env.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(steps):
        action = rng.uniform(low, high).astype(np.float32)
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    seconds = time.perf_counter() - start
    env.close()
    print(json.dumps({"env_id": env_id, "steps": steps, "seconds": seconds, "steps_per_s": steps / seconds}))


if __name__ == "__main__":
    main()
