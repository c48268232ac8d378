"""Environments that misbehave on purpose, to test the bridge's error paths.

`mvp_envs/Faulty-v0`: observation [t, a0, a1] (3 floats), action 2-D in [-1, 1], 10 steps.
The action chooses the fault:
- a0 > 0.9: `step` raises `ValueError("deliberate failure ...")` (a traceback for the parent);
- a0 < -0.9: `step` sleeps for an hour (a hung worker);
- a1 > 0.9: the process exits at once with status 3 (a crashed worker);
- a1 < -0.9: success: reward 0 and `terminated`;
- otherwise reward -1.
"""

import os
import time

import gymnasium
import numpy as np


class FaultyEnv(gymnasium.Env):
    """See the module docstring."""

    def __init__(self):
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (3,), np.float64)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        start = self.np_random.uniform(-1.0, 1.0)
        return np.array([start, 0.0, 0.0]), {}

    def step(self, action):
        a0, a1 = float(action[0]), float(action[1])
        if a0 > 0.9:
            raise ValueError(f"deliberate failure in FaultyEnv.step (action {a0:.2f}, {a1:.2f})")
        if a0 < -0.9:
            time.sleep(3600.0)
        if a1 > 0.9:
            os._exit(3)
        self._t += 1
        success = a1 < -0.9
        reward = 0.0 if success else -1.0
        return np.array([float(self._t), a0, a1]), reward, success, False, {"success": success}


if "mvp_envs/Faulty-v0" not in gymnasium.registry:
    gymnasium.register("mvp_envs/Faulty-v0", entry_point=FaultyEnv, max_episode_steps=10)
