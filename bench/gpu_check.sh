#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (the `device` tool: H100/H200, python3 3.12
# with torch+CUDA, numba, numpy, scipy, httpx, msgpack, pyarrow, pytest; no network):
# the suite's CUDA-parametrised tests and the CUDA sections of bench/codecs.py, with
# everything written under $OUT, inside one call of about 10 minutes.
#
# Prepare here (CPU machine), from the repository root:
#   bash ../shared/tools/gpu-wheels.sh          # .whl/: fastapi, pydantic, orjson, uvicorn...
#   bash bench/gpu_check.sh --prepare           # .gpu/minilm/: the suite's cached embeddings
# Then one call of the device tool:
#   run(command="bash bench/gpu_check.sh", carry=[".whl", ".gpu"], timeout_s=600)
# and read $OUT's files: env.txt, pytest.log (the failures first), throughput.md.
#
# Budget (seconds, overridable): GPU_CHECK_TEST_S=390 for pytest, GPU_CHECK_BENCH_S=150 for
# the benchmark. GPU_CHECK_TESTS picks the test folders (default: codecs, worker, api:
# in-process, so no server start-ups eat the budget). Nothing here asserts a speed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=${PYTHON:-python3}  # the device's python3 holds torch+CUDA

if [[ "${1:-}" == "--prepare" ]]; then
  # the embeddings the suite's fixtures ask for, so the model (not on that machine) is never loaded
  "$py" - <<'EOF'
import shutil
from pathlib import Path
from tests.support import corpus
dest = Path(".gpu/minilm")
dest.mkdir(parents=True, exist_ok=True)
for n in (600, 2000):
    corpus.minilm(n)  # computes or finds the cached file
    key = __import__("hashlib").sha1("\n".join(corpus.sentences(n)).encode()).hexdigest()[:16]
    shutil.copy(corpus.CACHE / f"minilm-{key}.npy", dest)
print("prepared", sorted(p.name for p in dest.iterdir()))
EOF
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  exit 0
fi

OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/env.txt"; exit 1; }
  export PYTHONPATH=/tmp/site:$root/service:$root/client
else
  export PYTHONPATH=$root/service:$root/client
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[[ -d .gpu/minilm ]] && export EMBQUANT_CORPUS_CACHE=$root/.gpu/minilm

{
  date -u
  nvidia-smi -L 2>&1 || echo "no nvidia-smi"
  "$py" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import embquant, embquant.api.app  # the service imports with the carried wheels
from embquant.codecs import kernels
print("embquant imports; CPU kernels:", kernels.set_backend("auto"))
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

tests=${GPU_CHECK_TESTS:-tests/codecs tests/worker tests/api}
# -rfE: failures and errors listed at the end; the log keeps all of it
timeout "${GPU_CHECK_TEST_S:-390}" "$py" -m pytest -q -rfE -p no:cacheprovider $tests > "$OUT/pytest.log" 2>&1
echo "pytest exit: $? (124: stopped at the time budget)" | tee -a "$OUT/pytest.log"
tail -40 "$OUT/pytest.log"

timeout "${GPU_CHECK_BENCH_S:-150}" "$py" bench/codecs.py --quick --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench exit: $?" | tee -a "$OUT/bench.log"
grep -A40 "^## .*CUDA" "$OUT/throughput.md" 2>/dev/null | head -60
