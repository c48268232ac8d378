"""Builds one environment from an id: OGBench singletask names, robomimic tasks or any Gymnasium id.

Accepted ids:
- OGBench singletask names with the dataset word, as OGBench's own loader spells them:
  `cube-double-play-singletask-task2-v0` (built by `ogbench.make_env_and_datasets(...,
  env_only=True)`, which drops the dataset word).
- Robomimic tasks `robomimic/lift`, `robomimic/can`, `robomimic/square` (mvp_envs.robomimic;
  env_kwargs `dataset` = a robomimic HDF5 file whose `env_args` to use, or `env_args`).
- Meta-World v3 tasks `metaworld/reach-v3`, `metaworld/door-open-v3`, ... (mvp_envs.metaworld_env),
  and the same with point-cloud observations as `metaworld-pc/<task>`.
- Any id in Gymnasium's registry once `ogbench`, `mvp_envs.robomimic` and `mvp_envs.testing` are
  imported: `cube-double-singletask-task2-v0`, `HalfCheetah-v5`, `mvp_envs/Faulty-v0`, ...

Reward timing. OGBench registers its singletask environments with `success_timing='pre'`:
`step(a_t)` returns s_{t+1} but the reward, `terminated` and `info['success']` of s_t, the
state *before* the action (so an episode ends one step after the goal is reached). Our
convention is the usual one: the transition (s_t, a_t, r_t, s_{t+1}) carries the reward and
success of s_{t+1}, and `terminated` is set when s_{t+1} is a success. `make_env` therefore
builds OGBench singletask environments with `success_timing='post'` (unless `env_kwargs`
says otherwise), and the Rust dataset reader relabels datasets from the next state's qpos to
match (crates/data/src/ogbench.rs, `RewardTiming::Next`).
"""

import os

# Offscreen rendering (videos): MuJoCo picks its GL backend when it is first imported, and its
# default (GLFW) needs a display. EGL with Mesa renders in software on a machine without a GPU.
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402

# Registering imports: OGBench's ids and our test environments join Gymnasium's registry.
import ogbench  # noqa: E402
import mvp_envs.robomimic  # noqa: F401, E402  (registers robomimic/*; robosuite loads on first make)
import mvp_envs.metaworld_env  # noqa: F401, E402  (registers metaworld/<task>-v3)
import mvp_envs.testing  # noqa: F401, E402
from mvp_envs.protocol import UserError  # noqa: E402


def _ogbench_base_id(env_id):
    """`cube-single-play-singletask-task1-v0` -> `cube-single-singletask-task1-v0`, else None."""
    splits = env_id.split("-")
    if "singletask" not in splits:
        return None
    pos = splits.index("singletask")
    if pos < 2:
        return None
    return "-".join(splits[: pos - 1] + splits[pos:])


def _is_ogbench_singletask(gym_id):
    """Whether `gym_id` is registered by OGBench with a `success_timing` argument."""
    spec = gymnasium.registry.get(gym_id)
    if spec is None or not isinstance(spec.entry_point, str):
        return False
    return spec.entry_point.startswith("ogbench.") and "success_timing" in (spec.kwargs or {})


def make_env(env_id, max_episode_steps=None, env_kwargs=None, render=None):
    """Returns a Gymnasium env for `env_id` with a time limit, or raises UserError.

    OGBench singletask environments get `success_timing='post'` (module doc) unless
    `env_kwargs` sets `success_timing`.
    `max_episode_steps` overrides the registered time limit; an environment without one must
    be given it. `env_kwargs` go to the environment's constructor. `render` = [width, height]
    makes an environment whose `render()` returns RGB frames of that size, drawn offscreen by
    MuJoCo (`MUJOCO_GL`, default `egl`).
    """
    kwargs = dict(env_kwargs or {})
    if render is not None:
        width, height = (int(x) for x in render)
        kwargs.update(render_mode="rgb_array", width=width, height=height)
    if max_episode_steps:
        kwargs["max_episode_steps"] = int(max_episode_steps)
    base = _ogbench_base_id(env_id)
    gym_id = env_id if env_id in gymnasium.registry else base
    if gym_id is not None and _is_ogbench_singletask(gym_id):
        kwargs.setdefault("success_timing", "post")  # reward of s_{t+1}: see the module doc
    if env_id in gymnasium.registry:
        env = gymnasium.make(env_id, **kwargs)
    elif base is not None and base in gymnasium.registry:
        env = ogbench.make_env_and_datasets(env_id, env_only=True, **kwargs)
    else:
        raise UserError(
            f"unknown environment id '{env_id}': neither an OGBench singletask name such as "
            "'cube-double-play-singletask-task2-v0' nor a registered Gymnasium id such as "
            "'HalfCheetah-v5' or 'robomimic/lift'; check the spelling (list the ids with `.venv/bin/python -c "
            "\"import ogbench, gymnasium; print(*gymnasium.registry, sep=chr(10))\"`)"
        )
    check_spaces(env_id, env)
    if env.spec is None or not env.spec.max_episode_steps:
        env.close()
        raise UserError(
            f"environment '{env_id}' has no time limit; pass max_episode_steps in the handshake"
        )
    return env


def check_spaces(env_id, env):
    """Only flat Box observations and actions with finite action bounds travel over the bridge."""
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gymnasium.spaces.Box) or len(obs_space.shape) != 1:
        raise UserError(
            f"environment '{env_id}' has observation space {obs_space}; the worker supports flat "
            "Box observations only (wrap it with gymnasium.wrappers.FlattenObservation)"
        )
    if not isinstance(act_space, gymnasium.spaces.Box) or len(act_space.shape) != 1:
        raise UserError(
            f"environment '{env_id}' has action space {act_space}; the worker supports flat Box "
            "actions only"
        )
    if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        raise UserError(
            f"environment '{env_id}' has unbounded actions ({act_space}); the policies need "
            "finite action bounds"
        )
