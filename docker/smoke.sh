#!/usr/bin/env bash
# Build an image from a clean clone of the repository and check the container serves:
# non-root with a home, no secret in its environment, ready in seconds (kernels compiled
# at build time), a client round trip whose codes and decoded vectors equal the codecs
# run in-process here, its HEALTHCHECK turning healthy, a clean stop on SIGTERM.
#
#   docker/smoke.sh [cpu|gpu] [REPO]     # REPO: default the repository this script is in
#
# Needs docker (on the project's machines: ../shared/tools/docker-standin.sh first) and
# this repository's .venv (embquant and embquant-client, for the in-process comparison).
# The torch wheel: a torch==X+cpu wheel that this machine's pip finds (a local wheel
# folder, or PyTorch's CPU index) is put into the clone's docker/wheels/; the gpu image
# takes PyPI's torch. Environment: TAG (default embquant:smoke-FLAVOUR), KEEP_IMAGE=1
# keeps the image, BUILD_ARGS (extra `docker build` arguments), IMAGE=name: check an
# image already built instead (no clone, no build; kept).
set -euo pipefail
FLAVOUR=${1:-cpu}
HERE=$(cd "$(dirname "$0")/.." && pwd)
REPO=${2:-$HERE}
PY=${PYTHON:-$HERE/.venv/bin/python}
TAG=${IMAGE:-${TAG:-embquant:smoke-$FLAVOUR}}
[ -z "${IMAGE:-}" ] || KEEP_IMAGE=1
DOCKER=${DOCKER:-docker}
TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=//p' "$HERE/docker/Dockerfile.$FLAVOUR")
work=$(mktemp -d /tmp/embquant-smoke.XXXX)
name=embquant-smoke-$$
cleanup() {
  $DOCKER rm -f "$name" >/dev/null 2>&1 || true
  $DOCKER volume rm -f "$name" >/dev/null 2>&1 || true
  [ "${KEEP_IMAGE:-0}" = 1 ] || $DOCKER rmi -f "$TAG" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${IMAGE:-}" ]; then
  echo "== image $IMAGE (no build)"
else
echo "== clean clone of $REPO"
git clone -q --depth 1 "file://$REPO" "$work/src"
if [ "$FLAVOUR" = cpu ]; then
  # the CPU wheel from what this machine's pip reaches; else the build tries PyTorch's index
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
      --timeout 15 --retries 1 --extra-index-url https://download.pytorch.org/whl/cpu \
      -d "$work/src/docker/wheels" "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
    || echo "   no local torch ${TORCH_VERSION}+cpu wheel: the build fetches it from PyTorch's CPU index"
fi

echo "== docker build ($FLAVOUR)"
t0=$(date +%s)
# shellcheck disable=SC2086
$DOCKER build -q --network=host -f "$work/src/docker/Dockerfile.$FLAVOUR" -t "$TAG" ${BUILD_ARGS:-} "$work/src" >/dev/null
echo "   built in $(( $(date +%s) - t0 )) s"
fi
echo "   size $($DOCKER image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"

port=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
echo "== docker run (port $port, read-only root, no GPU)"
# as k8s.yaml runs it: a read-only root, /tmp and numba's cache writable, the cache
# holding the image's compiled kernels (docker fills a new named volume from the image,
# as k8s.yaml's init container does)
$DOCKER run -d --name "$name" --network=host -e EMBQUANT_PORT="$port" -e EMBQUANT_HOST=127.0.0.1 \
    --read-only --tmpfs /tmp -v "$name:/home/embquant/.cache" "$TAG" >/dev/null

"$PY" - "$port" "$name" "$DOCKER" "$FLAVOUR" <<'EOF'
import json, subprocess, sys, time

import httpx
import numpy as np
import torch

from embquant import codecs
from embquant_client import Client

port, name, docker, flavour = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
url = f"http://127.0.0.1:{port}"


def sh(*args):
    return subprocess.run([docker, *args], check=True, capture_output=True, text=True).stdout.strip()


def logs():
    return subprocess.run([docker, "logs", name], capture_output=True, text=True).stdout + \
        subprocess.run([docker, "logs", name], capture_output=True, text=True).stderr


t0 = time.monotonic()
while True:
    if sh("inspect", "-f", "{{.State.Running}}", name) != "true":
        sys.exit("container exited:\n" + logs())
    try:
        r = httpx.get(url + "/readyz", timeout=2)
        if r.status_code == 200:
            break
    except httpx.HTTPError:
        pass
    if time.monotonic() - t0 > 300:
        sys.exit("not ready in 300 s:\n" + logs())
    time.sleep(0.2)
ready_s = time.monotonic() - t0
ready = r.json()
print(f"   ready in {ready_s:.1f} s: {ready}")
assert ready["device"] == "cpu", ready
if flavour == "gpu":  # no GPU here: the image's auto falls back and says why
    assert ready["device_requested"] == "auto" and ready["device_note"], ready
    assert f"EMBQUANT_DEVICE=auto: running on the CPU: {ready['device_note']}" in logs(), logs()
# the image's kernels were compiled at build time: a start far below a compile (~45-80 s here)
assert ready_s < 30, f"{ready_s:.0f} s to ready: were the kernels compiled into the image?"

user = sh("exec", name, "sh", "-c", "id -u; id -g; echo $HOME; test -w $HOME/.cache && echo writable")
uid, gid, home, writable = user.split("\n")
assert uid == "10001" and gid == "10001" and home == "/home/embquant" and writable == "writable", user
env = json.loads(sh("inspect", "-f", "{{json .Config.Env}}", name))
secretish = [e for e in env if any(w in e.split("=")[0].upper() for w in ("KEY", "TOKEN", "SECRET", "PASSWORD"))]
assert not secretish, secretish
print(f"   user {uid}:{gid} home {home}; env without secrets: {len(env)} variables")

rng = np.random.default_rng(11)
x = rng.standard_normal((500, 96)).astype(np.float32)
with Client(url, max_retries=0) as c:
    fitted = c.fit(x[:200], "lloyd", bits=2)
    enc = c.quantize(x, codec=fitted)
    y = c.dequantize(enc)
    own = c.quantize(x[:50], "absmax", bits=4, include_codec=True)
codec = codecs.codec_from_json(fitted.codec)
assert codec.to_json() == codecs.fit("lloyd", {"bits": 2}, torch.from_numpy(x[:200])).to_json()
codes, side = codecs.encode(codec, torch.from_numpy(x))
assert np.array_equal(enc.codes, codes.numpy())
assert side is None or np.array_equal(enc.side, side.numpy())
assert np.array_equal(y, codecs.decode(codec, codes, side).numpy())
c2 = codecs.codec_from_json(own.codec)
codes2, side2 = codecs.encode(c2, torch.from_numpy(x[:50]))
assert np.array_equal(own.codes, codes2.numpy()) and np.array_equal(own.side, side2.numpy())
print("   round trip: fit lloyd 2-bit, quantize 500 x 96, dequantize, absmax fit-and-encode:"
      " equal to the codecs in-process")

t0 = time.monotonic()
while sh("inspect", "-f", "{{.State.Health.Status}}", name) != "healthy":
    if time.monotonic() - t0 > 60:
        sys.exit("HEALTHCHECK not healthy in 60 s: " + sh("inspect", "-f", "{{json .State.Health}}", name))
    time.sleep(1)
print("   HEALTHCHECK: healthy")
EOF

echo "== docker stop (SIGTERM)"
$DOCKER stop -t 30 "$name" >/dev/null
code=$($DOCKER inspect -f '{{.State.ExitCode}}' "$name")
$DOCKER logs "$name" 2>&1 | grep -q drained || { $DOCKER logs "$name" 2>&1 | tail -20; echo "no drain in the log"; exit 1; }
[ "$code" = 0 ] || { echo "exit code $code"; exit 1; }
echo "   exited 0 after draining"
echo "smoke OK: $TAG"
