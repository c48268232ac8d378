"""Scripted demonstrators for the robomimic tasks: state machines over object poses.

Each demonstrator drives the OSC_POSE controller (7-D delta action: position offset scaled by
0.05 m, rotation offset as an axis-angle scaled by 0.5 rad, gripper −1 open / +1 closed) with a
proportional servo towards waypoints computed from the observation dict (end-effector pose,
object pose) plus a few constants of the scene read once per episode (table height, the goal
bin of the can, the square peg). The gripper stays pointing down; its yaw follows the object.

- lift: above the cube (fingers aligned with its faces) → down → close → up.
- can: above the can → down → close → straight up to a carrying height → over the can's
  quadrant of bin 2 → down → open → up (success needs the gripper away from the can).
- square: plan the wrist turns (see `SquareDemo.plan_turns`) → above the free part of the
  nut's handle (fingers across it) → down → close → straight up above the peg → nut centre
  over the peg with the nut's square aligned to it → down the peg (lifted again if it jams).

Phases that wait for a pose have step budgets; a lost grasp (the object not following the
gripper) sends the machine back to the approach. `noise` adds Gaussian noise of that standard deviation to every
action component (then clipped to [−1, 1]); the executed (noisy) action is what a dataset records.

    demo = make_demonstrator("lift", env.sim_env, noise=0.05, rng=np.random.default_rng(0))
    action = demo.act(env.raw_obs)        # after each env.reset() call demo.reset(env.raw_obs)
"""

import math

import numpy as np

POS_SCALE = 0.05  # metres per unit action (OSC output_max of the position part)
ROT_SCALE = 0.5  # radians per unit action (OSC output_max of the rotation part)
OPEN, CLOSED = -1.0, 1.0


def quat_to_mat(q):
    """Rotation matrix of a unit quaternion in robosuite's xyzw order."""
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def yaw_of_quat(q):
    """Yaw (rotation about world z) of the object's x axis."""
    r = quat_to_mat(q)
    return math.atan2(r[1, 0], r[0, 0])


def wrap(angle, period):
    """`angle` shifted by multiples of `period` into [−period/2, period/2)."""
    return (angle + period / 2) % period - period / 2


class Servo:
    """Proportional OSC servo on the end-effector position and the gripper's yaw.

    At `reset` it measures, in the end-effector body frame, the finger axis (from one finger
    to the other) and the approach axis (pointing down at the initial pose). The rotation
    command keeps the approach axis at world −z and turns the finger axis to a requested yaw.
    """

    def __init__(self, sim_env, pos_gain=2.0, rot_gain=1.0):
        self.env = sim_env
        self.pos_gain = pos_gain
        self.rot_gain = rot_gain
        names = sim_env.sim.model.body_names
        self._left = sim_env.sim.model.body_name2id(next(n for n in names if n.endswith("leftfinger")))
        self._right = sim_env.sim.model.body_name2id(next(n for n in names if n.endswith("rightfinger")))

    def reset(self, obs):
        # Body ids change after a hard reset (the model is reloaded): look them up again.
        model = self.env.sim.model
        names = model.body_names
        self._left = model.body_name2id(next(n for n in names if n.endswith("leftfinger")))
        self._right = model.body_name2id(next(n for n in names if n.endswith("rightfinger")))
        rot = quat_to_mat(obs["robot0_eef_quat"])
        finger = self.env.sim.data.body_xpos[self._left] - self.env.sim.data.body_xpos[self._right]
        finger = finger - finger[2] * np.array([0.0, 0.0, 1.0])
        self.finger_local = rot.T @ (finger / np.linalg.norm(finger))
        self.down_local = rot.T @ np.array([0.0, 0.0, -1.0])
        self._yaw = None
        self._yaw = self.finger_yaw(obs)

    def finger_yaw(self, obs):
        """Current yaw of the finger axis, unwrapped (continuous over the episode, so that
        it counts whole turns of the wrist); physically defined modulo π."""
        f = quat_to_mat(obs["robot0_eef_quat"]) @ self.finger_local
        raw = math.atan2(f[1], f[0])
        if self._yaw is not None:
            raw = self._yaw + wrap(raw - self._yaw, 2 * math.pi)
        self._yaw = raw
        return raw

    def action(self, obs, target_pos, target_yaw, grip, period=math.pi):
        """Action moving towards `target_pos` with finger yaw `target_yaw` (mod `period`)."""
        err = np.asarray(target_pos) - obs["robot0_eef_pos"]
        a_pos = np.clip(self.pos_gain * err / POS_SCALE, -1.0, 1.0)
        rot = quat_to_mat(obs["robot0_eef_quat"])
        tilt = np.cross(rot @ self.down_local, np.array([0.0, 0.0, -1.0]))
        dyaw = 0.0 if target_yaw is None else wrap(target_yaw - self.finger_yaw(obs), period)
        a_rot = np.clip(self.rot_gain * (tilt + np.array([0.0, 0.0, dyaw])) / ROT_SCALE, -1.0, 1.0)
        return np.concatenate([a_pos, a_rot, [grip]])


class Demonstrator:
    """Base: a phase machine with per-phase step budgets and optional action noise."""

    def __init__(self, sim_env, noise=0.0, rng=None):
        self.env = sim_env
        self.noise = float(noise)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.servo = Servo(sim_env)

    def reset(self, obs):
        self.servo.reset(obs)
        self.phase = "approach"
        self.steps_in_phase = 0
        self.grip = OPEN
        self.hold_yaw = None
        self.scene(obs)

    def scene(self, obs):
        """Reads the constants of the episode (subclasses)."""

    def go(self, phase):
        self.phase = phase
        self.steps_in_phase = 0

    def act(self, obs):
        action = self.plan(obs)
        self.steps_in_phase += 1
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, size=action.shape)
        return np.clip(action, -1.0, 1.0)

    def plan(self, obs):
        raise NotImplementedError


def _near(a, b, tol):
    return bool(np.all(np.abs(np.asarray(a) - np.asarray(b)) < tol))


class LiftDemo(Demonstrator):
    """Lift the cube above the table."""

    def scene(self, obs):
        self.table_z = float(self.env.model.mujoco_arena.table_offset[2])

    def plan(self, obs):
        cube = obs["cube_pos"]
        eef = obs["robot0_eef_pos"]
        # Fingers across a pair of faces: the cube is symmetric under quarter turns.
        yaw = yaw_of_quat(obs["cube_quat"])
        if self.phase == "approach":
            target = cube + np.array([0.0, 0.0, 0.06])
            a = self.servo.action(obs, target, yaw, OPEN, period=math.pi / 2)
            if _near(eef, target, 0.012) and abs(wrap(yaw - self.servo.finger_yaw(obs), math.pi / 2)) < 0.1:
                self.go("descend")
            return a
        if self.phase == "descend":
            target = cube + np.array([0.0, 0.0, -0.005])
            a = self.servo.action(obs, target, yaw, OPEN, period=math.pi / 2)
            if _near(eef, target, 0.01) or self.steps_in_phase > 30:
                self.hold_yaw = self.servo.finger_yaw(obs)
                self.go("grasp")
            return a
        if self.phase == "grasp":
            a = self.servo.action(obs, cube + np.array([0.0, 0.0, -0.005]), self.hold_yaw, CLOSED)
            if self.steps_in_phase >= 8:
                self.go("lift")
            return a
        # lift
        target = np.array([cube[0], cube[1], self.table_z + 0.15])
        a = self.servo.action(obs, target, self.hold_yaw, CLOSED)
        if self.steps_in_phase > 10 and np.linalg.norm(cube - eef) > 0.03:
            self.go("approach")  # dropped: try again
        return a


class CanDemo(Demonstrator):
    """Pick the can from bin 1 and drop it into its quadrant of bin 2."""

    CARRY_Z = 1.0  # carrying height of the gripper (the can's bottom clears the bin walls)

    def scene(self, obs):
        env = self.env
        # Aim 80% of the way from bin 2's centre to the centre of the can's quadrant: inside
        # the quadrant with a margin of 0.2 bin sizes to its inner edges, and a less stretched
        # arm than at the quadrant's centre (the far corner of the workspace).
        centre = np.array(env.bin2_pos[:2], dtype=np.float64)
        quadrant = np.array(env.target_bin_placements[env.object_id][:2], dtype=np.float64)
        self.goal = centre + 0.8 * (quadrant - centre)
        self.bin_z = float(env.bin2_pos[2])
        self.yaw = self.servo.finger_yaw(obs)  # a cylinder: keep the initial yaw

    def plan(self, obs):
        can = obs["Can_pos"]
        eef = obs["robot0_eef_pos"]
        y = self.yaw
        if self.phase == "approach":
            target = can + np.array([0.0, 0.0, 0.08])
            a = self.servo.action(obs, target, y, OPEN)
            if _near(eef, target, 0.012):
                self.go("descend")
            return a
        if self.phase == "descend":
            target = can + np.array([0.0, 0.0, 0.01])
            a = self.servo.action(obs, target, y, OPEN)
            if _near(eef, target, 0.01) or self.steps_in_phase > 30:
                self.go("grasp")
            return a
        if self.phase == "grasp":
            a = self.servo.action(obs, can + np.array([0.0, 0.0, 0.01]), y, CLOSED)
            if self.steps_in_phase >= 8:
                self.go("lift")
                self.lift_xy = eef[:2].copy()
            return a
        holding = np.linalg.norm(can - eef) < 0.04
        if self.phase in ("lift", "carry", "lower") and self.steps_in_phase > 5 and not holding:
            self.go("approach")  # dropped on the way: pick it up again
            return self.servo.action(obs, eef, y, OPEN)
        if self.phase == "lift":
            target = np.array([self.lift_xy[0], self.lift_xy[1], self.CARRY_Z])
            a = self.servo.action(obs, target, y, CLOSED)
            if eef[2] > self.CARRY_Z - 0.03:
                self.go("carry")
            return a
        if self.phase == "carry":
            target = np.array([self.goal[0], self.goal[1], self.CARRY_Z])
            a = self.servo.action(obs, target, y, CLOSED)
            if _near(eef, target, 0.02):
                self.go("lower")
            return a
        if self.phase == "lower":
            target = np.array([self.goal[0], self.goal[1], self.bin_z + 0.12])
            a = self.servo.action(obs, target, y, CLOSED)
            if _near(eef, target, 0.015) or self.steps_in_phase > 25:
                self.go("release")
            return a
        if self.phase == "release":
            a = self.servo.action(obs, eef, y, OPEN)
            if self.steps_in_phase >= 6:
                self.go("retreat")
            return a
        # retreat: up and away from the can (success needs the gripper > 4.2 cm from it)
        target = np.array([self.goal[0], self.goal[1], self.CARRY_Z])
        return self.servo.action(obs, target, y, OPEN)


class SquareDemo(Demonstrator):
    """Pick the square nut by its handle and drop it over the square peg."""

    # Grasp point in the nut's frame: the handle spans x 0.029..0.079 (square-nut.xml) and the
    # nut's wall reaches x 0.044; grasp the free part so the fingers do not touch the wall.
    HANDLE = np.array([0.065, 0.0, 0.0])

    def scene(self, obs):
        env = self.env
        peg = np.array(env.sim.data.body_xpos[env.peg1_body_id], dtype=np.float64)
        self.peg_xy = peg[:2]
        self.peg_top = peg[2] + 0.1  # the peg geom's half-height is 0.1
        self.table_z = float(env.table_offset[2])
        self.stuck = 0
        self.target_psi = None
        self.grasp_yaw = None

    def plan_turns(self, psi, obs):
        """Chooses the grasp yaw and the nut's placement yaw (once per approach).

        The fingers go across the handle (finger yaw ψ ± π/2: two choices, half a turn
        apart) and the nut is placed at a quarter turn (the square fits the peg in all four)
        whose handle does not point away from the robot (+x: a stretched arm). Among these,
        the plan with the least total wrist turn whose last joint (which turns opposite to the
        finger yaw) stays within ±2.4 rad of its range [−2.9, 2.9]."""
        fy = self.servo.finger_yaw(obs)
        q7 = float(obs["robot0_joint_pos"][-1])
        plans = []
        for grasp in (psi + math.pi / 2, psi - math.pi / 2):
            d_grasp = wrap(grasp - fy, 2 * math.pi)
            for place in (math.pi / 2, math.pi, -math.pi / 2):
                d_place = wrap(place - psi, 2 * math.pi)
                q_grasp, q_place = q7 - d_grasp, q7 - d_grasp - d_place
                over = max(0.0, abs(q_grasp) - 2.4) + max(0.0, abs(q_place) - 2.4)
                cost = 10.0 * over + abs(d_grasp) + abs(d_place)
                plans.append((cost, fy + d_grasp, place))
        best = min(plans)
        return best[1], best[2]

    def plan(self, obs):
        nut = obs["SquareNut_pos"]
        rot = quat_to_mat(obs["SquareNut_quat"])
        psi = math.atan2(rot[1, 0], rot[0, 0])
        handle = nut + rot @ self.HANDLE
        eef = obs["robot0_eef_pos"]
        if self.phase == "approach" and self.steps_in_phase == 0:
            self.grasp_yaw, self.target_psi = self.plan_turns(psi, obs)
        # Fingers across the handle (along the nut's y axis), turned the planned way.
        grasp_yaw = self.grasp_yaw + wrap(psi + math.pi / 2 - self.grasp_yaw, math.pi)
        if self.phase == "approach":
            target = handle + np.array([0.0, 0.0, 0.06])
            a = self.servo.action(obs, target, grasp_yaw, OPEN, period=4 * math.pi)
            if _near(eef, target, 0.01) and abs(wrap(grasp_yaw - self.servo.finger_yaw(obs), math.pi)) < 0.08:
                self.go("descend")
            return a
        if self.phase == "descend":
            target = handle + np.array([0.0, 0.0, -0.003])
            a = self.servo.action(obs, target, grasp_yaw, OPEN, period=4 * math.pi)
            if _near(eef, target, 0.006) or self.steps_in_phase > 30:
                self.go("grasp")
            return a
        if self.phase == "grasp":
            a = self.servo.action(obs, handle + np.array([0.0, 0.0, -0.003]), grasp_yaw, CLOSED, period=4 * math.pi)
            if self.steps_in_phase >= 8:
                self.go("lift")
                self.lift_xy = eef[:2].copy()
            return a
        holding = np.linalg.norm(handle - eef) < 0.03
        if self.phase in ("lift", "carry", "lower") and not holding:
            self.go("approach")  # lost the nut: pick it up again
            return self.servo.action(obs, eef + np.array([0.0, 0.0, 0.05]), None, OPEN)
        # Turn the nut to its chosen quarter turn (the peg is axis-aligned).
        dpsi = wrap(self.target_psi - psi, 2 * math.pi)
        yaw = self.servo.finger_yaw(obs) + dpsi
        shift = np.append(self.peg_xy - nut[:2], 0.0)
        if self.phase == "lift":
            # Straight up from the grasp, no turn yet (turning low near the robot folds the
            # arm into its joint limits).
            target = np.array([self.lift_xy[0], self.lift_xy[1], self.peg_top + 0.05])
            a = self.servo.action(obs, target, None, CLOSED)
            if eef[2] > self.peg_top + 0.03:
                self.go("carry")
            return a
        if self.phase == "carry":
            target = eef + shift
            target[2] = self.peg_top + 0.05
            a = self.servo.action(obs, target, yaw, CLOSED, period=4 * math.pi)
            if np.all(np.abs(shift[:2]) < 0.004) and abs(dpsi) < 0.05 and abs(eef[2] - target[2]) < 0.02:
                self.go("lower")
                self.stuck = 0
            return a
        if self.phase == "lower":
            target = eef + shift
            target[2] = eef[2] - 0.02
            a = self.servo.action(obs, target, yaw, CLOSED, period=4 * math.pi)
            if nut[2] < self.table_z + 0.035:
                self.go("release")
            elif nut[2] > self.peg_top - 0.03:
                # Still at the top of the peg: jammed if it stops going down.
                self.stuck = self.stuck + 1 if self.steps_in_phase > 10 and self.last_z - nut[2] < 0.001 else 0
                if self.stuck > 5:
                    self.go("lift")  # up again where it is, then align afresh
                    self.lift_xy = eef[:2].copy()
            self.last_z = nut[2]
            return a
        if self.phase == "release":
            a = self.servo.action(obs, eef, None, OPEN)
            if self.steps_in_phase >= 6:
                self.go("retreat")
            return a
        # retreat: straight up, away from the nut (success needs the gripper > 4.2 cm from it)
        return self.servo.action(obs, np.array([eef[0], eef[1], self.peg_top + 0.05]), None, OPEN)


DEMONSTRATORS = {"lift": LiftDemo, "can": CanDemo, "square": SquareDemo}


def make_demonstrator(task, sim_env, noise=0.0, rng=None):
    """The scripted demonstrator of `task` for the robosuite env `sim_env`."""
    return DEMONSTRATORS[task](sim_env, noise=noise, rng=rng)
