"""An exported mvp policy in NumPy: load the folder `mvp export` writes and act.

    from mvp_policy import Policy
    policy = Policy("exported/")          # policy.safetensors + policy.json
    chunk = policy.act(obs)               # obs [B, S] -> chunks [B, h, |A|]
    action = chunk[:, 0]                  # execute the first (or all h) actions

It computes what the Rust engine (`mvp-infer`) computes: for each observation N noise vectors
z ~ N(0, I) of width h*|A|; for i = k-1 .. 0, z <- z - u([obs, z, t, t - r]) / k with
t = (i+1)/k, r = i/k (one network call for MVP; a flow actor's input is [obs, z, t]); clip to
[-1, 1]; with N > 1 the candidate the critic members score highest (mean or minimum over
members) is returned. Given the same noise it returns the same chunks as the trained agent, to
float32 rounding. Needs NumPy only (the safetensors file is read directly). The weights file
is checked against the SHA-256 that policy.json records; a damaged file is refused.

Run as a script it acts on raw float32 files, which is how the Rust tests check it:

    python mvp_policy.py POLICY_DIR --obs OBS.f32 --noise NOISE.f32 --out CHUNKS.f32
"""

import argparse
import hashlib
import json
import math
import os
import struct

import numpy as np

FORMAT = "mvp-policy/2"
FORMAT_V1 = "mvp-policy/1"  # the same folder without the weights' checksum
_ERF = np.vectorize(math.erf, otypes=[np.float64])


def read_safetensors(path):
    """{name: float32 array} from a safetensors file (F32 tensors only)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"])
    return out


def _activation(name):
    if name == "gelu":
        return lambda x: 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)))
    if name == "silu":
        return lambda x: x / (1.0 + np.exp(-x))
    if name == "relu":
        return lambda x: np.maximum(x, 0.0)
    raise ValueError(f"activation {name!r} (gelu, silu or relu)")


class Mlp:
    """Linear -> activation -> [LayerNorm] per hidden layer, then a final Linear."""

    def __init__(self, tensors, prefix, spec):
        self.act = _activation(spec["activation"])
        self.layers = []
        for i, l in enumerate(spec["layers"]):
            w = tensors[f"{prefix}.l{i}.weight"].astype(np.float64)
            if w.shape != (l["in_dim"], l["out_dim"]):
                raise ValueError(f"{prefix}.l{i}.weight is {w.shape}, the spec says {l['in_dim'], l['out_dim']}")
            b = tensors[f"{prefix}.l{i}.bias"].astype(np.float64)
            norm = None
            if l["layer_norm"]:
                norm = (tensors[f"{prefix}.l{i}.norm_scale"].astype(np.float64), tensors[f"{prefix}.l{i}.norm_shift"].astype(np.float64))
            self.layers.append((w, b, norm))

    def __call__(self, x):
        for i, (w, b, norm) in enumerate(self.layers):
            x = x @ w + b
            if i + 1 < len(self.layers):
                x = self.act(x)
                if norm is not None:
                    mean = x.mean(axis=-1, keepdims=True)
                    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
                    x = (x - mean) / np.sqrt(var + 1e-5) * norm[0] + norm[1]
        return x


class Policy:
    """Generate-and-select with an exported policy's networks."""

    def __init__(self, folder, seed=0):
        with open(os.path.join(folder, "policy.json")) as f:
            self.spec = json.load(f)
        fmt = self.spec.get("format")
        if fmt not in (FORMAT, FORMAT_V1):
            raise ValueError(f"{folder}: format {fmt!r}, this module reads {FORMAT!r} and {FORMAT_V1!r}")
        weights = os.path.join(folder, "policy.safetensors")
        want = self.spec.get("weights_sha256")
        if want is None and fmt == FORMAT:
            raise ValueError(f"{folder}/policy.json: format {FORMAT!r} without weights_sha256")
        if want is not None:
            with open(weights, "rb") as f:
                got = hashlib.sha256(f.read()).hexdigest()
            if got != want.lower():
                raise ValueError(f"{weights}: damaged: its SHA-256 is {got}, policy.json records {want}")
        tensors = read_safetensors(weights)
        s = self.spec
        self.obs_dim, self.horizon, self.action_dim = s["obs_dim"], s["horizon"], s["action_dim"]
        self.chunk_dim = self.horizon * self.action_dim
        self.num_samples = max(1, s["num_samples"])
        self.kind, self.steps = s["actor"]["kind"], max(1, s["actor"]["steps"])
        if self.kind not in ("mean_velocity", "flow"):
            raise ValueError(f"actor kind {self.kind!r} (mean_velocity or flow)")
        self.actor = Mlp(tensors, "actor", s["actor"]["network"])
        critic = s.get("critic")
        self.critics = [] if critic is None else [Mlp(tensors, f"critic.{m}", critic["network"]) for m in range(critic["members"])]
        self.aggregate = None if critic is None else critic["aggregate"]
        if self.num_samples > 1 and not self.critics:
            raise ValueError("selection among N > 1 candidates needs a critic")
        self.rng = np.random.default_rng(seed)

    def candidates(self, obs, noise):
        """All candidates [B*N, D] and their scores [B*N] (None without selection)."""
        obs = np.asarray(obs, dtype=np.float64).reshape(-1, self.obs_dim)
        n = self.num_samples
        rows = np.repeat(obs, n, axis=0)
        z = np.asarray(noise, dtype=np.float64).reshape(len(rows), self.chunk_dim).copy()
        k = self.steps
        for i in reversed(range(k)):
            t, r = (i + 1) / k, i / k
            times = [t, t - r] if self.kind == "mean_velocity" else [t]
            tcol = np.broadcast_to(np.array(times), (len(rows), len(times)))
            z = z - self.actor(np.concatenate([rows, z, tcol], axis=1)) / k
        z = np.clip(z, -1.0, 1.0)
        if n == 1:
            return z, None
        q = np.stack([c(np.concatenate([rows, z], axis=1))[:, 0] for c in self.critics])
        scores = q.mean(axis=0) if self.aggregate == "mean" else q.min(axis=0)
        return z, scores

    def act(self, obs, noise=None):
        """Chunks [B, h, |A|] for observations [B, S]; noise [B*N, D] (default: drawn here)."""
        obs = np.asarray(obs, dtype=np.float64).reshape(-1, self.obs_dim)
        b, n = len(obs), self.num_samples
        if noise is None:
            noise = self.rng.standard_normal((b * n, self.chunk_dim))
        z, scores = self.candidates(obs, noise)
        if scores is not None:
            best = scores.reshape(b, n).argmax(axis=1)
            z = z.reshape(b, n, self.chunk_dim)[np.arange(b), best]
        return z.reshape(b, self.horizon, self.action_dim).astype(np.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("policy")
    p.add_argument("--obs", required=True, help="float32 file of B x S observations")
    p.add_argument("--noise", required=True, help="float32 file of B*N x D noise rows")
    p.add_argument("--out", required=True, help="float32 file for the B x D chunks")
    a = p.parse_args()
    policy = Policy(a.policy)
    obs = np.fromfile(a.obs, dtype="<f4")
    noise = np.fromfile(a.noise, dtype="<f4")
    policy.act(obs, noise).astype("<f4").tofile(a.out)


if __name__ == "__main__":
    main()
