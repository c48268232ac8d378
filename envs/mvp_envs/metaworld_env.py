"""Meta-World v3 tasks as single-task Gymnasium environments: `metaworld/<task>` (e.g.
`metaworld/reach-v3`, one of Meta-World's 50 `ALL_V3_ENVIRONMENTS`).

Each reset draws one of the task's 50 training variations (object and goal positions, as
Meta-World's MT1 benchmark defines them) with the environment's own generator, so a seeded
reset is reproducible. Observations are Meta-World's 39-d state (float32); actions 4-d in
[-1, 1]; episodes end at success (`terminated`, with `info["success"]` as Meta-World reports
it) or after 500 steps. The reward is sparse like the other manipulation tasks here: 0 at
success, else -1 (Meta-World's shaped reward is in `info["shaped_reward"]`). `render()` draws
the `corner` camera (MP1's and Meta-World's usual view) offscreen when made with
`render_mode="rgb_array"`. `expert(task)` is Meta-World's scripted policy for the task.

`metaworld-pc/<task>` (or `observation="pointcloud"`) replaces the state by what MP1 and DP3 see:
`points` xyz points (default 512) of one depth camera (`pc_camera`, default `corner`, rendered
offscreen at `pc_size`, default 128×128), cropped to the box `pc_low`..`pc_high` (default the
table-top workspace, the table itself excluded) and farthest-point sampled (mvp_envs.pointcloud),
followed by the agent's own state (hand xyz and gripper opening, the state's first 4 entries):
float32 [points·3 + 4], the points first. The full state stays in `self.state` (the scripted
experts act on it).
"""

import gymnasium
import numpy as np

MAX_EPISODE_STEPS = 500
AGENT_STATE_DIM = 4  # hand xyz, gripper opening: the state's first entries
# The table-top workspace in world coordinates (metres): the objects and the gripper, without
# the table surface (z = 0), the walls and the robot's base.
PC_LOW = (-0.5, 0.3, 0.005)
PC_HIGH = (0.5, 1.0, 0.6)


def task_names():
    import metaworld

    return list(metaworld.ALL_V3_ENVIRONMENTS)


def check_task(task):
    names = task_names()
    if task not in names:
        from mvp_envs.protocol import UserError

        raise UserError(f"unknown Meta-World task {task!r}: expected one of {', '.join(names)}")
    return task


def expert(task):
    """Meta-World's scripted policy for `task`: `expert(task).get_action(obs)`."""
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[check_task(task)]()


class MetaWorldEnv(gymnasium.Env):
    """One Meta-World task: see the module docstring."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        task,
        render_mode=None,
        width=256,
        height=256,
        camera="corner",
        observation="state",
        points=512,
        pc_camera="corner",
        pc_size=(128, 128),
        pc_low=PC_LOW,
        pc_high=PC_HIGH,
    ):
        import metaworld

        from mvp_envs.protocol import UserError

        if observation not in ("state", "pointcloud"):
            raise UserError(f"observation={observation!r}: expected 'state' or 'pointcloud'")
        self.task = check_task(task)
        benchmark = metaworld.MT1(self.task, seed=0)
        self.variations = list(benchmark.train_tasks)
        self.render_mode = render_mode
        self.env = benchmark.train_classes[self.task](
            render_mode=render_mode, camera_name=camera, width=int(width), height=int(height)
        )
        self.env.set_task(self.variations[0])
        self.state = None
        self.cloud = None
        shape = self.env.observation_space.shape
        if observation == "pointcloud":
            from mvp_envs.pointcloud import PointCloud

            self.cloud = PointCloud(self.env.model, pc_camera, pc_size, points, pc_low, pc_high)
            shape = (int(points) * 3 + AGENT_STATE_DIM,)
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, shape, np.float32)
        self.action_space = gymnasium.spaces.Box(
            np.asarray(self.env.action_space.low, np.float32), np.asarray(self.env.action_space.high, np.float32)
        )

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        variation = self.variations[int(self.np_random.integers(len(self.variations)))]
        self.env.set_task(variation)
        obs, _ = self.env.reset(seed=None if seed is None else int(seed))
        return self._observe(obs), {"success": False}

    def step(self, action):
        obs, shaped, _, _, info = self.env.step(np.asarray(action, np.float64))
        success = bool(info.get("success", 0.0))
        info = {"success": success, "shaped_reward": float(shaped)}
        return self._observe(obs), float(success) - 1.0, success, False, info

    def _observe(self, state):
        self.state = np.asarray(state, np.float32)
        if self.cloud is None:
            return self.state
        points = self.cloud(self.env.data)
        return np.concatenate([points.reshape(-1), self.state[:AGENT_STATE_DIM]])

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        frame = self.env.render()
        # Meta-World's offscreen frames come out upside down.
        return np.ascontiguousarray(frame[::-1])

    def close(self):
        if self.cloud is not None:
            self.cloud.close()
        self.env.close()


def _register():
    try:
        names = task_names()
    except ImportError:  # Meta-World not installed: the other environments still work
        return
    for task in names:
        for prefix, observation in (("metaworld", "state"), ("metaworld-pc", "pointcloud")):
            env_id = f"{prefix}/{task}"
            if env_id not in gymnasium.registry:
                gymnasium.register(
                    env_id,
                    entry_point="mvp_envs.metaworld_env:MetaWorldEnv",
                    kwargs={"task": task, "observation": observation},
                    max_episode_steps=MAX_EPISODE_STEPS,
                    disable_env_checker=True,
                )


_register()
