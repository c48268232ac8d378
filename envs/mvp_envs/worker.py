"""Environment worker server: hosts M environments in one process for a Rust parent.

Run as `python -m mvp_envs.worker` with `envs/` on PYTHONPATH; the parent writes requests to
its stdin and reads replies from its stdout (the protocol is in envs/README.md and
mvp_envs/protocol.py). Anything else that writes to stdout (a stray `print`, C libraries) is
sent to stderr instead, so it cannot corrupt the stream; stderr is free-form log text.

The worker never resets an environment on its own: after `terminated` or `truncated` the
parent sends a reset. It exits on CLOSE, on end of input (the parent closed the pipe or died),
and when its parent process disappears (a watchdog thread, for a worker stuck in a step).

`python -m mvp_envs.worker --listen HOST:PORT` serves the same protocol over TCP instead, for a
trainer on another machine (WorkerConfig.address on the Rust side): one connection at a time,
each with its own handshake and fresh environments, closed at CLOSE or when the connection
drops; then it waits for the next connection (so a trainer's restart is a reconnect). PORT 0
picks a free port; the first line on stderr says `listening on HOST:PORT`. Without an address
(`--listen`, or `--listen PORT`) it binds the loopback interface only.

A TCP worker serves only clients that hold its shared secret: every connection opens with a
CHALLENGE of 32 random bytes, and the HELLO must answer it with an HMAC of the secret
(`protocol.auth_answer`); a client without the secret, with a wrong one, or replaying an old
HELLO is refused with one line and the refusal is logged here. The secret comes from
`$MVP_WORKER_SECRET`, else from `--secret-file` (default `~/.config/mvp/worker-secret`, made
with 32 random bytes and mode 0600 when missing), never from the command line: give the trainer
the same file (`env.worker_secret_file`) or variable.
"""

import argparse
import json
import hmac
import os
import secrets
import signal
import socket
import sys
import threading
import time
import traceback

import numpy as np

from mvp_envs import protocol as P

SECRET_ENV = "MVP_WORKER_SECRET"

# Fault injection for tests and soak runs (`--fail-after-steps N`): the process exits abruptly,
# as if killed, when it has served N STEP requests.
_fail_after_steps = None
_steps_served = 0


class Channel:
    """Length-prefixed frames over two raw file descriptors."""

    def __init__(self, fd_in, fd_out):
        self._in = os.fdopen(fd_in, "rb", buffering=0)
        self._fd_out = fd_out

    def _read_exact(self, n):
        # Grown as the bytes arrive, so a length field alone never allocates: a peer that
        # announces a large frame has to send it.
        buf = bytearray()
        while len(buf) < n:
            chunk = self._in.read(min(n - len(buf), 1 << 20))
            if not chunk:
                return None
            buf += chunk
        return buf

    def recv(self, limit=P.MAX_FRAME):
        """The next payload, or None at end of input; a frame longer than `limit` is refused."""
        head = self._read_exact(4)
        if head is None:
            return None
        (n,) = P.U32.unpack(head)
        if n == 0 or n > limit:
            raise P.FrameError(f"bad frame length {n} (at most {limit} here)")
        return self._read_exact(n)

    def send(self, tag, *parts):
        body = b"".join(bytes(p) if not isinstance(p, bytes) else p for p in parts)
        data = P.U32.pack(len(body) + 1) + bytes((tag,)) + body
        view = memoryview(data)
        while view:
            k = os.write(self._fd_out, view)
            view = view[k:]

    def send_error(self, kind, message):
        self.send(P.ERROR, bytes((kind,)), message.encode("utf-8", "replace"))

    def close(self):
        self._in.close()
        os.close(self._fd_out)


class Worker:
    """The M environments of this process and the request handlers."""

    def __init__(self, hello):
        from mvp_envs.make import make_env  # imports gymnasium, ogbench: failures reach the parent

        version = hello.get("protocol")
        if version != P.PROTOCOL_VERSION:
            raise P.UserError(
                f"protocol version mismatch: the Rust side speaks {version}, this worker speaks "
                f"{P.PROTOCOL_VERSION}; the binary and envs/ come from different checkouts "
                "(rebuild, or point MVP_ROOT at the matching checkout)"
            )
        self.env_id = str(hello["env_id"])
        num_envs = int(hello.get("num_envs", 1))
        if num_envs < 1:
            raise P.UserError(f"num_envs must be at least 1, got {num_envs}")
        seeds = hello.get("seeds")
        if seeds is not None and len(seeds) != num_envs:
            raise P.UserError(f"{len(seeds)} seeds for {num_envs} environments")
        self.seeds = seeds
        self.envs = []
        try:
            for _ in range(num_envs):
                self.envs.append(
                    make_env(self.env_id, hello.get("max_episode_steps"), hello.get("env_kwargs"), hello.get("render"))
                )
        except BaseException:
            self.close()
            raise
        env = self.envs[0]
        self.obs_dim = int(env.observation_space.shape[0])
        self.action_dim = int(env.action_space.shape[0])
        self.max_episode_steps = int(env.spec.max_episode_steps)
        self.action_low = [float(x) for x in env.action_space.low]
        self.action_high = [float(x) for x in env.action_space.high]
        # Whether env i has been reset once: its first unseeded reset uses seeds[i].
        self.was_reset = [False] * num_envs

    def ready(self):
        import importlib.metadata as md

        versions = {}
        for pkg in ("gymnasium", "mujoco", "numpy", "ogbench", "robosuite"):
            try:
                versions[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                pass
        return {
            "protocol": P.PROTOCOL_VERSION,
            "env_id": self.env_id,
            "num_envs": len(self.envs),
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "action_low": self.action_low,
            "action_high": self.action_high,
            "max_episode_steps": self.max_episode_steps,
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "versions": versions,
        }

    def _index(self, i):
        if not 0 <= i < len(self.envs):
            raise P.UserError(f"environment index {i} out of range 0..{len(self.envs)}")
        return i

    def reset(self, body):
        k = _count(body, P.RESET_ITEM.size)
        obs = np.empty((k, self.obs_dim), dtype="<f4")
        success = np.zeros(k, dtype=np.uint8)
        off = 4
        for j in range(k):
            i, has_seed, seed = P.RESET_ITEM.unpack_from(body, off)
            off += P.RESET_ITEM.size
            i = self._index(i)
            if has_seed:
                s = seed
            elif not self.was_reset[i] and self.seeds is not None:
                s = self.seeds[i]
            else:
                s = None
            ob, info = self.envs[i].reset(seed=s)
            self.was_reset[i] = True
            obs[j] = ob
            success[j] = bool(info.get("success", False))
        return P.RESET_OK, (P.U32.pack(k), obs.tobytes(), success.tobytes())

    def step(self, body):
        k = _count(body, 4 + 4 * self.action_dim)
        idx = np.frombuffer(body, dtype="<u4", count=k, offset=4)
        actions = np.frombuffer(body, dtype="<f4", count=k * self.action_dim, offset=4 + 4 * k)
        # A writable copy: some environments modify the action they are given.
        actions = actions.reshape(k, self.action_dim).copy()
        obs = np.empty((k, self.obs_dim), dtype="<f4")
        reward = np.empty(k, dtype="<f4")
        terminated = np.zeros(k, dtype=np.uint8)
        truncated = np.zeros(k, dtype=np.uint8)
        success = np.zeros(k, dtype=np.uint8)
        for j in range(k):
            i = self._index(int(idx[j]))
            ob, r, te, tr, info = self.envs[i].step(actions[j])
            obs[j] = ob
            reward[j] = r
            terminated[j] = bool(te)
            truncated[j] = bool(tr)
            success[j] = bool(info.get("success", False))
        return P.STEP_OK, (
            P.U32.pack(k),
            obs.tobytes(),
            reward.tobytes(),
            terminated.tobytes(),
            truncated.tobytes(),
            success.tobytes(),
        )

    def render(self, body):
        if len(body) != 4:
            raise P.UserError(f"RENDER carries one u32, not {len(body)} bytes")
        (i,) = P.U32.unpack_from(body, 0)
        frame = self.envs[self._index(i)].render()
        if frame is None:
            raise P.UserError(f"environment '{self.env_id}' was not made for rendering (HELLO without \"render\")")
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise P.UserError(f"environment '{self.env_id}' rendered an array of shape {frame.shape}, not H x W x 3")
        return P.RENDER_OK, (P.U32.pack(frame.shape[0]), P.U32.pack(frame.shape[1]), frame.tobytes())

    def close(self):
        for env in self.envs:
            try:
                env.close()
            except Exception:
                traceback.print_exc(file=sys.stderr)
        self.envs = []


def _count(body, item_size):
    """The u32 count K at the start of a request body whose K items take `item_size` bytes each,
    checked against the body's length before anything is allocated for them."""
    if len(body) < 4:
        raise P.UserError(f"a request body of {len(body)} bytes has no count")
    (k,) = P.U32.unpack_from(body, 0)
    if len(body) != 4 + k * item_size:
        raise P.UserError(f"a request for {k} environments carries {len(body) - 4} bytes, not {k * item_size}")
    return k


def _watch_parent(parent_pid):
    """Exits when the parent is gone, even while the main thread is stuck in a step."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def default_secret_path():
    """`$XDG_CONFIG_HOME/mvp/worker-secret`, by default `~/.config/mvp/worker-secret`."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "mvp", "worker-secret")


def load_secret(path=None, create=False):
    """The shared secret of TCP workers and their trainer, as bytes: `$MVP_WORKER_SECRET`, else
    the stripped text of the file at `path` (default: `default_secret_path()`), which is made
    (32 random bytes in hex, mode 0600) when it is missing and `create` is set."""
    text = os.environ.get(SECRET_ENV)
    source = f"${SECRET_ENV}"
    if not text:
        path = path or default_secret_path()
        source = path
        if create and not os.path.exists(path):
            _make_secret_file(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise SystemExit(
                f"cannot read the worker secret at {path}: {e.strerror} (set {SECRET_ENV}, or copy the "
                "secret file of the machine that made it; `python -m mvp_envs.worker --listen` makes one)"
            ) from None
        if os.stat(path).st_mode & 0o077:
            print(f"warning: the worker secret {path} can be read by other users (chmod 600 it)", file=sys.stderr)
    secret = text.strip().encode("utf-8")
    if len(secret) < 16:
        raise SystemExit(f"the worker secret from {source} has {len(secret)} bytes; it needs at least 16")
    return secret


def _make_secret_file(path):
    """Writes a new secret to `path` atomically (a concurrent maker's file wins)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)
        print(f"made a new worker secret at {path}: the trainer needs the same one", file=sys.stderr, flush=True)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def _refusal(body, secret, nonce):
    """Why the HELLO `body` does not prove the secret for `nonce` (None: it does)."""
    try:
        answer = json.loads(bytes(body).decode("utf-8")).get("auth")
    except (ValueError, AttributeError):
        return "unreadable HELLO"
    if not isinstance(answer, str):
        return "no secret given (the HELLO has no auth)"
    if not hmac.compare_digest(answer, P.auth_answer(secret, nonce)):
        return "wrong secret, or a HELLO answering another connection's challenge"
    return None


def serve(channel, auth=None):
    """Answers requests until CLOSE or end of input. Returns the process exit status, or a
    string starting with "refused" when `auth` = (secret, nonce) is given (a TCP connection)
    and the first request is not a HELLO that proves the secret."""
    global _steps_served
    worker = None
    while True:
        try:
            # Before an authenticated handshake a TCP peer gets no more than a HELLO needs.
            payload = channel.recv(P.MAX_HELLO if auth is not None and worker is None else P.MAX_FRAME)
        except P.FrameError as e:
            if auth is not None and worker is None:
                return f"refused: {e}"
            raise
        if payload is None:
            break
        tag, body = payload[0], memoryview(payload)[1:]
        if auth is not None and worker is None:
            reason = "a request before the handshake" if tag != P.HELLO else _refusal(body, *auth)
            if reason is not None:
                channel.send_error(P.ERR_USER, f"refused by the env worker: {reason}")
                return f"refused: {reason}"
        try:
            if tag == P.HELLO:
                if worker is not None:
                    channel.send_error(P.ERR_USER, "HELLO sent twice; one worker serves one handshake")
                    continue
                worker = Worker(json.loads(bytes(body).decode("utf-8")))
                channel.send(P.READY, json.dumps(worker.ready()).encode("utf-8"))
            elif tag == P.PING:
                channel.send(P.PONG)
            elif tag == P.CLOSE:
                if worker is not None:
                    worker.close()
                channel.send(P.CLOSED)
                return 0
            elif worker is None:
                channel.send_error(P.ERR_USER, f"request {tag:#04x} before the HELLO handshake")
            elif tag == P.RESET:
                channel.send(*_flat(worker.reset(body)))
            elif tag == P.STEP:
                channel.send(*_flat(worker.step(body)))
                _steps_served += 1
                if _fail_after_steps is not None and _steps_served >= _fail_after_steps:
                    print(f"--fail-after-steps: exiting after {_steps_served} steps", file=sys.stderr, flush=True)
                    os._exit(3)
            elif tag == P.RENDER:
                channel.send(*_flat(worker.render(body)))
            else:
                channel.send_error(P.ERR_USER, f"unknown request tag {tag:#04x}")
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
            if isinstance(exc, P.UserError):
                channel.send_error(P.ERR_USER, str(exc))
            else:
                channel.send_error(P.ERR_EXCEPTION, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            if worker is None and tag == P.HELLO:
                return 2  # the handshake failed: nothing to serve
    if worker is not None:
        worker.close()
    return 0


def _flat(reply):
    tag, parts = reply
    return (tag, *parts)


def listen(address, secret):
    """Serves one TCP connection after another at `address` (HOST:PORT, :PORT or PORT; no host:
    the loopback interface) until killed."""
    host, _, port = address.rpartition(":")
    server = socket.create_server((host or "127.0.0.1", int(port)))
    bound = server.getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    serve_connections(server, secret)


def serve_connections(server, secret):
    """Serves one connection after another accepted on the listening socket `server`, each
    with fresh environments and only for a client proving `secret` (bytes), until killed
    (also the body of a Ray worker actor's thread)."""
    while True:
        conn, peer = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd_in, fd_out = os.dup(conn.fileno()), os.dup(conn.fileno())
        conn.close()
        channel = Channel(fd_in, fd_out)
        try:
            nonce = secrets.token_bytes(P.NONCE_BYTES)
            channel.send(P.CHALLENGE, nonce)
            status = serve(channel, auth=(secret, nonce))
        except (OSError, P.FrameError) as e:  # dropped or garbled mid-stream: the next one starts afresh
            status = f"connection lost ({e})"
        finally:
            channel.close()
        if isinstance(status, str) and status.startswith("refused"):
            print(f"refused connection from {peer[0]}:{peer[1]}: {status[len('refused: '):]}", file=sys.stderr, flush=True)
        else:
            print(f"connection from {peer[0]}:{peer[1]} served ({status})", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description="mvp environment worker (see the module doc)")
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        nargs="?",
        const="127.0.0.1:0",
        help="serve over TCP instead of stdin/stdout (no value or no host: the loopback interface)",
    )
    parser.add_argument(
        "--secret-file",
        metavar="PATH",
        help=f"the shared secret of --listen when ${SECRET_ENV} is not set (default: {default_secret_path()}, "
        "made when missing)",
    )
    parser.add_argument(
        "--fail-after-steps",
        type=int,
        metavar="N",
        help="fault injection for tests and soak runs: exit abruptly after serving N STEP requests",
    )
    args = parser.parse_args()
    global _fail_after_steps
    _fail_after_steps = args.fail_after_steps
    secret = load_secret(args.secret_file, create=True) if args.listen is not None else None
    # Ctrl-C in a terminal reaches the whole process group: the trainer handles it (it
    # checkpoints, then closes its workers), so a worker must not die of it first. A listening
    # worker has no trainer above it: Ctrl-C ends it.
    if args.listen is None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Keep the protocol stream private: fd 1 goes to a new descriptor, and fd 1 itself (and
    # sys.stdout) then points at stderr, so prints from any library cannot corrupt the stream.
    proto_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if args.listen is not None:
        os.close(proto_out)
        listen(args.listen, secret)
    proto_in = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    channel = Channel(proto_in, proto_out)
    sys.exit(serve(channel))


if __name__ == "__main__":
    main()
