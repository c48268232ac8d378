"""Robomimic tasks (lift, can, square) built with robosuite 1.5 from robomimic's `env_args`.

Environment ids (registered in Gymnasium's registry when this module is imported; make.py does):

| id                 | robosuite env      | horizon | obs dim |
|--------------------|--------------------|---------|---------|
| `robomimic/lift`   | `Lift`             | 300     | 19      |
| `robomimic/can`    | `PickPlaceCan`     | 300     | 23      |
| `robomimic/square` | `NutAssemblySquare`| 400     | 23      |

Construction follows robomimic's `EnvRobosuite`: the robosuite env is made from the
`env_kwargs` of an `env_args` dict, with renderers and cameras off and `ignore_done=True` (the
time limit is Gymnasium's). The built-in `env_args` are those of robomimic's v1.5 low-dim
proficient-human (ph) datasets (robosuite 1.4.1: Panda, OSC_POSE, control_freq 20,
reward_shaping False); the old single-part controller config is converted for robosuite 1.5
with `refactor_composite_controller_config`, as robomimic does. Constructor kwargs:
- `dataset`: path of a robomimic HDF5 file; its `data` attribute `env_args` is used instead;
- `env_args`: an `env_args` dict (or its JSON text), used instead of both.

Observation: float32, the low-dim keys flattened in the order robot0_eef_pos (3),
robot0_eef_quat (4, xyzw), robot0_gripper_qpos (2), object. `object` is laid out as in the
v1.5 datasets (robosuite 1.4.1): lift `cube_pos, cube_quat, gripper_to_cube_pos` (10); can and
square `<obj>_pos, <obj>_quat, <obj>_to_robot0_eef_pos, <obj>_to_robot0_eef_quat` (14).
robosuite 1.5's own `object-state` puts the two relative keys first for can and square; we keep
the dataset order so that a real dataset and the online env agree.

Reward: `success − 1` (−1 per step, 0 at success) — robosuite's sparse reward minus one.
`terminated` at success; `info['success']` on every reset and step.
Seeding: `reset(seed=s)` reseeds robosuite's own generator in place (object placement and
robot init noise), so the same seed gives the same initial state.
"""

import copy
import json
import logging

import gymnasium
import numpy as np

from mvp_envs.protocol import UserError

# Task name -> (robosuite env name, horizon, object observation keys in the v1.5 dataset order).
TASKS = {
    "lift": ("Lift", 300, ("cube_pos", "cube_quat", "gripper_to_cube_pos")),
    "can": (
        "PickPlaceCan",
        300,
        ("Can_pos", "Can_quat", "Can_to_robot0_eef_pos", "Can_to_robot0_eef_quat"),
    ),
    "square": (
        "NutAssemblySquare",
        400,
        (
            "SquareNut_pos",
            "SquareNut_quat",
            "SquareNut_to_robot0_eef_pos",
            "SquareNut_to_robot0_eef_quat",
        ),
    ),
}

# Robot keys of the flat observation, before `object`.
ROBOT_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")

# Low-dim keys written to a dataset's obs/ and next_obs/ groups besides `object` (those of
# robomimic's low_dim files that robosuite 1.5 still produces).
DATASET_OBS_KEYS = (
    "robot0_eef_pos",
    "robot0_eef_quat",
    "robot0_gripper_qpos",
    "robot0_gripper_qvel",
    "robot0_joint_pos",
    "robot0_joint_pos_cos",
    "robot0_joint_pos_sin",
    "robot0_joint_vel",
)

# The OSC_POSE controller of robomimic's v1.5 datasets (robosuite 1.4.1 single-part format).
_OSC_POSE = {
    "type": "OSC_POSE",
    "input_max": 1,
    "input_min": -1,
    "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
    "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
    "kp": 150,
    "damping_ratio": 1,
    "impedance_mode": "fixed",
    "kp_limits": [0, 300],
    "damping_ratio_limits": [0, 10],
    "position_limits": None,
    "orientation_limits": None,
    "uncouple_pos_ori": True,
    "control_delta": True,
    "interpolation": None,
    "ramp_ratio": 0.2,
}


def task_names():
    return sorted(TASKS)


def check_task(task):
    if task not in TASKS:
        raise UserError(f"unknown robomimic task '{task}'; known: {', '.join(task_names())}")
    return task


def default_env_args(task):
    """The `env_args` of robomimic's v1.5 low-dim ph dataset of `task` (a fresh dict)."""
    env_name = TASKS[check_task(task)][0]
    return {
        "env_name": env_name,
        "env_version": "1.4.1",
        "type": 1,  # robomimic's EnvType.ROBOSUITE_TYPE
        "env_kwargs": {
            "has_renderer": False,
            "has_offscreen_renderer": False,
            "ignore_done": True,
            "use_object_obs": True,
            "use_camera_obs": False,
            "control_freq": 20,
            "controller_configs": copy.deepcopy(_OSC_POSE),
            "robots": ["Panda"],
            "camera_depths": False,
            "camera_heights": 84,
            "camera_widths": 84,
            "reward_shaping": False,
        },
    }


def env_args_from_file(path, task="lift|can|square"):
    """The `env_args` dict stored in a robomimic HDF5 file (attribute `env_args` of `data`)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "data" not in f or "env_args" not in f["data"].attrs:
                raise UserError(f"{path}: no attribute 'env_args' on group 'data'; not a robomimic dataset")
            raw = f["data"].attrs["env_args"]
    except FileNotFoundError:
        raise UserError(
            f"robomimic dataset {path} not found; make it with `mvp data robomimic --task {task} "
            f"--episodes 200 --out {path}` (or use robomimic's low_dim.hdf5)"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read robomimic dataset {path}: {exc}") from None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    return json.loads(raw)


def resolve_env_args(task, dataset=None, env_args=None):
    """`env_args` for `task`: given, else from `dataset`, else the built-in defaults.

    Refuses `env_args` whose env_name is another task's.
    """
    if env_args is not None:
        args = json.loads(env_args) if isinstance(env_args, str) else copy.deepcopy(env_args)
        source = "env_args"
    elif dataset is not None:
        args = env_args_from_file(dataset, task)
        source = str(dataset)
    else:
        return default_env_args(task)
    want = TASKS[check_task(task)][0]
    if args.get("env_name") != want:
        raise UserError(
            f"{source} describes robosuite env '{args.get('env_name')}', but robomimic/{task} "
            f"is '{want}'; use the id of that task"
        )
    return args


def _errors_only(record):
    return record.levelno >= logging.ERROR


def _quiet_robosuite():
    # robosuite logs INFO/WARNING lines on import (macros file, optional packages) and per env
    # (controller config); errors still show. A logger filter, since robosuite sets the
    # logger's level itself when it is imported.
    logger = logging.getLogger("robosuite_logs")
    if _errors_only not in logger.filters:
        logger.addFilter(_errors_only)


def make_robosuite(env_args):
    """A robosuite env from `env_args`, as robomimic's EnvRobosuite builds it (low-dim only)."""
    _quiet_robosuite()
    import robosuite
    from robosuite.controllers.composite.composite_controller_factory import (
        refactor_composite_controller_config,
    )

    kwargs = copy.deepcopy(env_args.get("env_kwargs", {}))
    kwargs.update(
        has_renderer=False,
        has_offscreen_renderer=False,
        use_camera_obs=False,
        ignore_done=True,
        use_object_obs=True,
    )
    for key in ("camera_names", "camera_heights", "camera_widths", "camera_depths", "render_gpu_device_id"):
        kwargs.pop(key, None)
    robots = kwargs.get("robots", ["Panda"])
    robot = robots[0] if isinstance(robots, (list, tuple)) else robots
    if "controller_configs" in kwargs:
        # robosuite <= 1.4 single-part config -> 1.5 composite config (a no-op when it is one).
        kwargs["controller_configs"] = refactor_composite_controller_config(
            kwargs["controller_configs"], robot, ["right"]
        )
    return robosuite.make(env_args["env_name"], **kwargs)


def flat_obs(task, obs):
    """The flat low-dim observation (float64) from a robosuite observation dict."""
    return np.concatenate([np.asarray(obs[k], dtype=np.float64).ravel() for k in ROBOT_KEYS] + [object_obs(task, obs)])


def object_obs(task, obs):
    """robomimic's `object` key in the v1.5 dataset order (float64)."""
    return np.concatenate([np.asarray(obs[k], dtype=np.float64).ravel() for k in TASKS[task][2]])


class RobomimicEnv(gymnasium.Env):
    """A robomimic task as a Gymnasium env: see the module docstring."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task, dataset=None, env_args=None, render_mode=None, width=256, height=256, camera="agentview"):
        self.task = check_task(task)
        self.render_mode = render_mode
        self._render_size, self._camera, self._renderer = (int(width), int(height)), camera, None
        self.env_args = resolve_env_args(task, dataset, env_args)
        self.sim_env = make_robosuite(self.env_args)
        self.raw_obs = self.sim_env.reset()
        dim = flat_obs(self.task, self.raw_obs).shape[0]
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        low, high = self.sim_env.action_spec
        self.action_space = gymnasium.spaces.Box(
            np.asarray(low, np.float32), np.asarray(high, np.float32), dtype=np.float32
        )
        self._needs_reset = False  # the constructor's reset is a valid first episode

    def _obs(self):
        return flat_obs(self.task, self.raw_obs).astype(np.float32)

    def success(self):
        return bool(self.sim_env._check_success())

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            # In place: the placement samplers hold this very Generator object.
            fresh = np.random.default_rng(seed)
            self.sim_env.rng.bit_generator.state = fresh.bit_generator.state
        if self._needs_reset or seed is not None:
            self.raw_obs = self.sim_env.reset()
        self._needs_reset = True
        return self._obs(), {"success": self.success()}

    def step(self, action):
        self.raw_obs, _, _, _ = self.sim_env.step(np.asarray(action, dtype=np.float64))
        success = self.success()
        return self._obs(), float(success) - 1.0, success, False, {"success": success}

    def render(self):
        """An RGB frame from `camera` (robomimic's agentview), drawn offscreen by MuJoCo."""
        if self.render_mode != "rgb_array":
            return None
        import mujoco

        if self._renderer is None:
            width, height = self._render_size
            model = self.sim_env.sim.model._model
            # The model's offscreen buffer bounds the frame size.
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
            model.vis.global_.offheight = max(model.vis.global_.offheight, height)
            self._renderer = mujoco.Renderer(model, height=height, width=width)
            # Visual geoms only: robosuite puts collision geoms in group 0, as robomimic's
            # videos hide them.
            self._scene_option = mujoco.MjvOption()
            self._scene_option.geomgroup[0] = 0
        self._renderer.update_scene(self.sim_env.sim.data._data, camera=self._camera, scene_option=self._scene_option)
        return self._renderer.render().copy()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.sim_env.close()


def _register():
    for task, (_, horizon, _) in TASKS.items():
        env_id = f"robomimic/{task}"
        if env_id not in gymnasium.registry:
            gymnasium.register(
                env_id,
                entry_point="mvp_envs.robomimic:RobomimicEnv",
                kwargs={"task": task},
                max_episode_steps=horizon,
                disable_env_checker=True,
            )


_register()
