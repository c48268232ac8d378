#!/usr/bin/env bash
# The probe of "anyone who reaches a worker's port is served", after: a listening worker (its
# secret made in a scratch config home) and four raw clients: no secret, a guessed one, the
# right one, and the right one's HELLO replayed on a new connection. Output: probe.txt here.
set -euo pipefail
cd "$(dirname "$0")/../.."
export XDG_CONFIG_HOME=$(mktemp -d) PYTHONPATH=envs
.venv/bin/python -m mvp_envs.worker --listen 127.0.0.1:5555 2>"$XDG_CONFIG_HOME/worker.log" &
WORKER=$!
trap 'kill $WORKER' EXIT
sleep 2
{
.venv/bin/python - <<'EOF'
import json, os, socket, struct
from mvp_envs import protocol as P
def frame(s, tag, body):
    s.sendall(struct.pack("<I", len(body) + 1) + bytes([tag]) + body)
def recv(s):
    n = struct.unpack("<I", s.recv(4))[0]; b = b""
    while len(b) < n: b += s.recv(n - len(b))
    return b[0], b[1:]
def connect():
    s = socket.create_connection(("127.0.0.1", 5555)); tag, nonce = recv(s)
    assert tag == P.CHALLENGE and len(nonce) == 32
    return s, nonce
hello = {"protocol": 3, "env_id": "Pendulum-v1", "num_envs": 1}
def say(what, reply):
    t, b = reply
    print(f"{what}: {'READY' if t == P.READY else b[1:].decode()}")
s, _ = connect(); frame(s, P.HELLO, json.dumps(hello).encode()); say("no secret", recv(s))
s, n = connect(); frame(s, P.HELLO, json.dumps({**hello, "auth": P.auth_answer(b"a-guessed-secret-123", n)}).encode()); say("guessed secret", recv(s))
secret = open(os.path.join(os.environ["XDG_CONFIG_HOME"], "mvp", "worker-secret")).read().strip().encode()
s, n = connect(); good = json.dumps({**hello, "auth": P.auth_answer(secret, n)}).encode(); frame(s, P.HELLO, good); say("right secret", recv(s)); s.close()
s, _ = connect(); frame(s, P.HELLO, good); say("the right HELLO replayed", recv(s))
EOF
sleep 1
echo "the worker's log:"
sed 's/^/  /' "$XDG_CONFIG_HOME/worker.log" | sed "s#$XDG_CONFIG_HOME#\$XDG_CONFIG_HOME#"
} | tee experiments/trust/probe.txt
