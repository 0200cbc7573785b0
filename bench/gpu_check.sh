#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (the `device` tool: H100/H200, python3 3.12
# with torch+CUDA, numba, numpy, scipy, httpx, msgpack, pyarrow, pytest; no network):
# the CUDA sections of bench/codecs.py and the suite (its tests on CUDA too), with
# everything written under $OUT, inside one call of about 8 minutes.
#
# Prepare here (CPU machine), from the repository root, with the project's venv:
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --prepare
#       # .gpu/minilm/: the suite's cached embeddings; .whl/: the service's cp312 wheels
#       # (fastapi, pydantic, orjson, uvicorn, opentelemetry-api...) via ../shared/tools/gpu-wheels.sh
# Then one call of the device tool:
#   run(command="bash bench/gpu_check.sh", carry=[".whl", ".gpu"], timeout_s=600)
# and read $OUT's files: env.txt, pytest.log (the failures first), throughput.md.
#
# Budget (seconds, overridable): GPU_CHECK_BENCH_S=140 for the benchmark (0: none; its CUDA
# rows took 96 s on an H100), GPU_CHECK_TEST_S=220 for pytest, GPU_CHECK_WORKERS=8 xdist
# workers where pytest-xdist is installed (on an H100's 16 cores, 14 workers ran about 2,700
# of the tests in 320 s, after the 90 s the CPU kernels took to compile). GPU_CHECK_TESTS
# picks the test folders (default: the Triton kernels' tests, then worker, api, codecs: in-process, so no server start-ups
# eat the budget). Nothing here asserts a speed.
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
  # the service's wheels for the device's Python 3.12, where the workplace's fetcher is
  # beside the checkout (fastapi 0.165 imports opentelemetry, which that machine lacks)
  wheels=../shared/tools/gpu-wheels.sh
  if [[ -x "$wheels" || -f "$wheels" ]]; then
    bash "$wheels" fastapi-offline httptools opentelemetry-api
  else
    echo "no $wheels here: fetch cp312 wheels of fastapi, fastapi-offline, starlette, pydantic, pydantic-core," \
         "pydantic-settings, python-dotenv, annotated-types, typing-inspection, orjson, uvicorn, httptools" \
         "and opentelemetry-api into .whl/ yourself"
  fi
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

# The CPU kernels compile once, in one process (numba's cache=True: the xdist workers then
# load them; eight workers compiling the same kernels at once take minutes), while the
# benchmark's CUDA rows run.
"$py" - > "$OUT/compile.log" 2>&1 <<'EOF' &
import time, torch
from embquant.codecs import kernels
from embquant.worker import device
t0 = time.perf_counter()
with kernels.in_this_thread("numba"):
    device.warm_up(torch.device("cpu"))
    # /score's kernels too (the serve warm-up leaves them to the first request): at stop 14
    # two tests were the first to use them in their xdist worker and compiled them there,
    # under 14 workers' load, past the 120 s per-test timeout (the likeliest cause)
    from embquant import codecs
    from embquant.codecs.score import rescore
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 64, generator=g)
    x = x / x.norm(dim=1, keepdim=True)
    for name, params in (("lloyd", {}), ("lloyd", {"bits": 3}), ("lloyd", {"norm": "unit"}), ("tcq", {}),
                         ("transform", {}), ("transform", {"trellis": True}), ("binary", {}), ("absmax", {}),
                         ("lloyd", {"center": True}), ("bitcodes", {"num_bits": 64, "iterations": 1})):
        c = codecs.fit(name, params, x)
        codes, side = codecs.encode(c, x)
        for nq in (1, 3, 40):  # few queries: the lookup tables; many: the dense scan
            for metric in ("dot", "cosine", "l2"):
                codecs.score(c, x[:nq], codes, side, 5, metric)
            codecs.score(c, x[:nq], codes, side, None, "dot")
            rescore(c, x[:nq], codes, side, 5, "dot", 20, None, "hamming" if name == "binary" else "codes")
print(f"CPU kernels compiled in {time.perf_counter() - t0:.0f} s")
EOF
compile_pid=$!

# the CUDA rows only, full shapes (the CPU rows are this repo's docs/throughput.md); the
# file is rewritten after each section, so a run stopped at its budget keeps what it measured
# (GPU_CHECK_BENCH_S=0: no benchmark, the suite only)
if (( ${GPU_CHECK_BENCH_S:-140} > 0 )); then
  timeout "${GPU_CHECK_BENCH_S:-140}" "$py" bench/codecs.py --devices cuda ${GPU_CHECK_BENCH_ARGS:-} --out "$OUT" > "$OUT/bench.log" 2>&1
  echo "bench exit: $?" | tee -a "$OUT/bench.log"
  grep -B2 -A60 "^## .*CUDA.*encode" "$OUT/throughput.md" 2>/dev/null | cut -c1-160 | head -90
fi
wait $compile_pid; cat "$OUT/compile.log"

# worker and API first: at stop 14 (an H100, 14 workers, 320 s) the codecs' tests took the
# whole budget and those never ran; and those that did not name a device ran on the CPU
# even there. tests/worker/test_on_each_device.py takes the device side, the batching
# worker and the API through every device present (device="cuda" on that machine).
# The Triton kernels' own tests go first (they compare the compiled kernels with the CPU
# reference; on a CPU machine they run in Triton's interpreter, which cannot check a GPU's rounding).
tests=${GPU_CHECK_TESTS:-tests/codecs/test_triton.py tests/worker tests/api tests/codecs}
# -v: one line per test in the log, so a run stopped at its budget still names its failures;
# -rfE lists them again at the end. pytest-xdist (on the device's image) spreads the tests
# over its cores; --timeout stops one hung test, not the run, and faulthandler prints every
# thread's stack of a test still running after 90 s (stop 14: two CPU-only tests ran into
# a 120 s timeout there, most likely compiling /score's kernels, which the compile step
# above did not cover then; it does now, and the timeout is 300 s). Each worker gets its share of the cores: torch's and
# numba's thread pools otherwise start one thread per core in every worker.
workers=${GPU_CHECK_WORKERS:-8}
share=$(( $(nproc) / workers )); (( share < 1 )) && share=1
export OMP_NUM_THREADS=$share MKL_NUM_THREADS=$share NUMBA_NUM_THREADS=$(( share < 2 ? 2 : share ))
par=(-o faulthandler_timeout=90)
"$py" -c "import xdist" 2>/dev/null && par+=(-n "$workers")
"$py" -c "import pytest_timeout" 2>/dev/null && par+=(--timeout 300)
timeout "${GPU_CHECK_TEST_S:-220}" "$py" -m pytest -v -rfE -p no:cacheprovider -p no:benchmark "${par[@]}" $tests > "$OUT/pytest.log" 2>&1
echo "pytest exit: $? (124: stopped at the time budget)" | tee -a "$OUT/pytest.log"
echo "tests passed: $(grep -c ' PASSED ' "$OUT/pytest.log"), skipped: $(grep -c ' SKIPPED ' "$OUT/pytest.log"), failed: $(grep -c ' FAILED ' "$OUT/pytest.log"), errors: $(grep -c ' ERROR ' "$OUT/pytest.log")"
grep -E ' (FAILED|ERROR) |^(FAILED|ERROR)|^E  ' "$OUT/pytest.log" | head -80 | cut -c1-300
tail -5 "$OUT/pytest.log" | cut -c1-300
