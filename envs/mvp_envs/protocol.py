"""Wire format of the worker protocol (mirror of crates/envs/src/worker/protocol.rs; see envs/README.md).

Every message, in both directions, is one frame: a u32 little-endian payload length followed by
the payload; the payload's first byte is the message tag. Numbers are little-endian; arrays are
packed row-major without padding.
"""

import struct


class UserError(Exception):
    """A mistake of the caller (bad id, bad request): reported as one line (ERR_USER), no traceback."""


# Bump on any change to a layout below; the Rust side and the worker refuse a mismatch.
PROTOCOL_VERSION = 3

# A frame longer than this is refused (protects against reading garbage as a length).
MAX_FRAME = 1 << 30
# The longest frame a TCP worker reads before the handshake has proven the secret.
MAX_HELLO = 1 << 20


class FrameError(Exception):
    """A frame whose length field is out of bounds: the stream cannot be trusted any more."""

# Parent -> worker.
HELLO = 0x01  # JSON: {"protocol", "env_id", "num_envs", "seeds", "max_episode_steps", "env_kwargs", "render", "auth"}
RESET = 0x02  # u32 K, K x (u32 index, u8 has_seed, u64 seed)
STEP = 0x03  # u32 K, u32 index[K], f32 action[K*A]
PING = 0x04  # empty
CLOSE = 0x05  # empty
RENDER = 0x06  # u32 index (environments made with "render": [width, height] in HELLO)

# Worker -> parent.
READY = 0x81  # JSON: {"protocol", "env_id", "num_envs", "obs_dim", "action_dim", ...}
RESET_OK = 0x82  # u32 K, f32 obs[K*O], u8 success[K]
STEP_OK = 0x83  # u32 K, f32 obs[K*O], f32 reward[K], u8 terminated[K], u8 truncated[K], u8 success[K]
PONG = 0x84  # empty
CLOSED = 0x85  # empty
RENDER_OK = 0x86  # u32 height, u32 width, u8 rgb[H*W*3] (row-major, top row first)
CHALLENGE = 0x87  # u8 nonce[32]: the first frame of a TCP connection (see auth_answer)
ERROR = 0xFF  # u8 kind, utf-8 message (rest of the payload)

# Error kinds.
ERR_USER = 0  # a one-line message that says what to do (bad id, bad request)
ERR_EXCEPTION = 1  # a Python exception: message plus the full traceback

# A TCP connection is authenticated: its first frame, from the worker, is CHALLENGE with a fresh
# random nonce, and the HELLO must carry "auth": auth_answer(secret, nonce). A fresh nonce per
# connection means a recorded HELLO is refused when replayed. Pipes (a child process) need none.
NONCE_BYTES = 32
AUTH_CONTEXT = b"mvp-worker-hello/3"


def auth_answer(secret, nonce):
    """hex(HMAC-SHA256(secret, AUTH_CONTEXT || nonce)): the HELLO's proof of the shared secret."""
    import hashlib
    import hmac

    return hmac.new(secret, AUTH_CONTEXT + bytes(nonce), hashlib.sha256).hexdigest()


U32 = struct.Struct("<I")
RESET_ITEM = struct.Struct("<IBQ")
