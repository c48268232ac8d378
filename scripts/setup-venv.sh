#!/usr/bin/env bash
# Creates the Python venv of the environment workers in .venv/ from envs/requirements.txt, then
# adds envs/requirements-nodeps.txt without their declared dependencies (see that file).
#
#   scripts/setup-venv.sh        about 40-75 s on a fresh machine (PyPI downloads), ~1 GB
#
# Idempotent: does nothing (one line) when .venv/ was built from the current requirements file.
# A changed requirements file (or Python interpreter) rebuilds the venv from scratch instead of
# upgrading in place: switching one venv between mujoco 3 and 4 breaks it.
# PYTHON selects the interpreter that creates the venv (default python3). The pins need Python
# 3.11 or 3.12: scipy 1.17.1 requires 3.11+, and numpy 1.26.4 has no wheels for 3.13+.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQ="$ROOT/envs/requirements.txt"
REQ_NODEPS="$ROOT/envs/requirements-nodeps.txt"
PYTHON="${PYTHON:-python3}"
marker="$VENV/.mvp-requirements"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: '$PYTHON' not found; install Python 3.11 or 3.12, or set PYTHON=/path/to/python3" >&2
  exit 1
fi
py_version=$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))'; then
  echo "error: $PYTHON is Python $py_version; the pinned packages of envs/requirements.txt need Python 3.11 or 3.12" \
    "(scipy 1.17.1 needs 3.11+, numpy 1.26.4 has no wheels past 3.12): install one and set PYTHON=/path/to/python3.12" >&2
  exit 1
fi
want="$(cat "$REQ" "$REQ_NODEPS" | sha256sum | cut -d' ' -f1) python-$py_version"

if [[ -f "$marker" && "$(cat "$marker")" == "$want" && -x "$VENV/bin/python" ]]; then
  echo "python venv already up to date in .venv (envs/requirements*.txt unchanged)"
  exit 0
fi

start=$SECONDS
if [[ -e "$VENV" ]]; then
  echo "envs/requirements.txt or the interpreter changed: rebuilding .venv from scratch"
  rm -rf "$VENV"
fi
echo "creating .venv with Python $py_version and installing envs/requirements.txt"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$REQ_NODEPS"

# Smoke check: the pinned mujoco is the one imported, and OGBench registers its environments.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import gymnasium, metaworld, mujoco, ogbench  # noqa: F401  (ogbench registers its ids on import)
assert mujoco.__version__ == md.version("mujoco"), (mujoco.__version__, md.version("mujoco"))
assert "cube-single-singletask-task1-v0" in gymnasium.registry, "ogbench did not register its envs"
PY
# The marker is written last: an interrupted install is rebuilt on the next run.
echo "$want" > "$marker"
echo "python venv ready in .venv ($(( SECONDS - start )) s, $(du -sh "$VENV" | cut -f1))"
