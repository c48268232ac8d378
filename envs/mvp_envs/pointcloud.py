"""Point-cloud observations from one depth camera, as DP3 and MP1 feed their policies.

A MuJoCo camera renders a depth image offscreen (EGL or OSMesa, see mvp_envs.make); every pixel
is back-projected to a world-frame point with the camera's pose and vertical field of view;
points outside an axis-aligned workspace box are dropped (the floor, the far walls, the robot's
base); farthest-point sampling then keeps a fixed number of them (512 for MP1), starting from the
point nearest the box's centre, so the same scene always gives the same cloud, in the same order.

    cloud = PointCloud(model, camera="corner", size=(128, 128), low=(-0.6, 0.3, -0.02), high=(0.6, 1.0, 0.6))
    points = cloud(data)        # float32 [512, 3], world coordinates (metres)

Uses NumPy, numba (the sampling loop) and MuJoCo's own renderer (`mujoco.Renderer`).
"""

import numba
import numpy as np


def backproject(depth, fovy_deg, cam_pos, cam_mat):
    """World-frame points [H*W, 3] of a MuJoCo depth image [H, W] (metres along the optical
    axis, row 0 at the top) seen from a camera at `cam_pos` with orientation `cam_mat` (3×3, its
    columns the camera's x, y, z axes in the world; MuJoCo cameras look along −z, y up)."""
    h, w = depth.shape
    f = 0.5 * h / np.tan(np.deg2rad(fovy_deg) / 2.0)
    u = np.arange(w, dtype=np.float64) + 0.5 - 0.5 * w
    v = np.arange(h, dtype=np.float64) + 0.5 - 0.5 * h
    uu, vv = np.meshgrid(u, v)
    d = depth.astype(np.float64)
    cam = np.stack([uu / f * d, -vv / f * d, -d], axis=-1).reshape(-1, 3)
    return cam @ np.asarray(cam_mat, np.float64).reshape(3, 3).T + np.asarray(cam_pos, np.float64)


def crop(points, low, high):
    """The points inside the box [low, high] (inclusive), in their order."""
    keep = np.all((points >= np.asarray(low)) & (points <= np.asarray(high)), axis=1)
    return points[keep]


def farthest_point_sample(points, k, start=0):
    """Indices of `k` points chosen greedily, each the farthest from those chosen before it,
    beginning with `start`. With fewer than `k` points, the chosen order repeats cyclically (so
    the result always has `k` rows); with none, an error."""
    n = len(points)
    if n == 0:
        raise ValueError("farthest-point sampling of an empty point set: is the crop box around the scene?")
    chosen = _fps(np.ascontiguousarray(points, np.float64), min(int(k), n), int(start))
    return np.resize(chosen, int(k))


def _fps_loop(points, k, start):
    n = points.shape[0]
    chosen = np.empty(k, np.int64)
    dist = np.full(n, np.inf)
    i = start
    for j in range(k):
        chosen[j] = i
        best, best_d = 0, -1.0
        for p in range(n):
            dx = points[p, 0] - points[i, 0]
            dy = points[p, 1] - points[i, 1]
            dz = points[p, 2] - points[i, 2]
            d = min(dist[p], dx * dx + dy * dy + dz * dz)
            dist[p] = d
            if d > best_d:
                best, best_d = p, d
        i = best
    return chosen


# Compiled once per machine (numba's cache beside this file): about 1 ms for 2,000 points → 512,
# against 40 ms for the same loop in NumPy calls.
_fps = numba.njit(cache=True)(_fps_loop)


class PointCloud:
    """A fixed-size point cloud of the scene seen by one camera of `model`: see the module doc."""

    def __init__(self, model, camera="corner", size=(128, 128), points=512, low=None, high=None):
        import mujoco

        self.model = model
        self.camera = camera if isinstance(camera, int) else mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if self.camera < 0:
            raise ValueError(f"the model has no camera {camera!r}")
        self.width, self.height = (int(x) for x in size)
        self.points = int(points)
        self.low = np.asarray(low if low is not None else [-np.inf] * 3, np.float64)
        self.high = np.asarray(high if high is not None else [np.inf] * 3, np.float64)
        self.renderer = mujoco.Renderer(model, height=self.height, width=self.width)
        self.renderer.enable_depth_rendering()

    def depth(self, data):
        """The camera's depth image [H, W] (metres)."""
        self.renderer.update_scene(data, camera=self.camera)
        return np.asarray(self.renderer.render(), np.float32)

    def __call__(self, data):
        cam = self.camera
        world = backproject(
            self.depth(data), self.model.cam_fovy[cam], data.cam_xpos[cam], data.cam_xmat[cam].reshape(3, 3)
        )
        inside = crop(world, self.low, self.high)
        centre = 0.5 * (np.clip(self.low, -1e3, 1e3) + np.clip(self.high, -1e3, 1e3))
        start = int(np.argmin(np.sum((inside - centre) ** 2, axis=1))) if len(inside) else 0
        return inside[farthest_point_sample(inside, self.points, start)].astype(np.float32)

    def close(self):
        self.renderer.close()
