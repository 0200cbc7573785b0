"""Scoring throughput: scored (query, code) pairs per second of embquant's `score`
(top 10 per query) on packed codes, asymmetric path (numba: byte-table bounds then
exact scores of the rows that may count, for 1 and 2 bits; multiply-adds on decoded
levels; lookup tables for few queries) beside the exact path (decode then score) and
faiss, same data, same run (issue 10).

    .venv/bin/python bench/score.py [--quick] [--n N] [--q Q]

Data: N database vectors and Q queries, Gaussian, D = 384, unit-normalised, seed 0
(default Q = 1,000, N = 1,000,000; --quick: N = 100,000). Settings:

- 1 bit: embquant ``binary`` (scale=row) codes, asymmetric dot product of the float
  query against the +-a code (the bound kernel, then the levels kernel on the same
  codes: the same answer, both timed); faiss ``IndexBinaryFlat`` on the same sign bits, with
  the queries *binarised* too (Hamming distance: a symmetric, cruder estimate); and
  embquant's own Hamming first pass on its codes (`score.hamming_candidates`, the
  queries encoded with the codec), alone and followed by exact rescoring of 100 and
  1,000 candidates (`rescore(first_pass="hamming")`, /score's ``first_pass``); and a
  last table of both first passes on real MiniLM embeddings, rescored with the floats
  (recall per candidate pool);
- 2 bits: embquant ``lloyd`` 2-bit, the bound kernel and the levels kernel (faiss
  has no 2-bit scalar quantizer to set beside them);
- 1 bit, fitted: ``bitcodes`` (384 bits, a 5-iteration fit) with the dot product on
  its codes (the query projected onto the codebook), the bound and the levels kernel,
  and the exact path, on the first 100,000 rows only (its encode runs at about 20,000
  rows/s here);
- 4 bits: embquant ``lloyd`` 4-bit (Gaussian levels, rotation, one gain per row),
  asymmetric, and ``tcq`` 4-bit (its levels walked along each row's trellis); faiss
  ``IndexScalarQuantizer(QT_4bit, inner product)`` search (faiss scores the float query
  against its 4-bit codes).

The exact path (decode every chunk, then a float64 GEMM) is timed on a prefix of the
queries when it would take too long; pairs/s is then measured on that prefix. Every
call runs once to warm up (numba compiles) on a small prefix, then is timed once
with perf_counter. Threads: numba's and faiss's defaults (all cores). Measurement
only: nothing here asserts a speed.

A second table times each asymmetric kernel on its own (forced) for 1 to 64 queries
against the same codes: where the levels kernel starts to beat the tables is what
`score.dense_scan` picks by, and where the bound kernel beats both what
`score.fast_scan` does. A third times large k (rescoring pools), with the task sizes
`score` uses and with the short tasks it used before. tcq has one kernel (its levels
depend on each row's trellis path, walked 16 rows at a time), timed the same way.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "service"))
from embquant import codecs  # noqa: E402
from machine import cpu_model, cpu_vectors, nproc  # noqa: E402  (bench/machine.py: bench/ is the script's directory)

S = importlib.import_module("embquant.codecs.score")
K = 10
FEW = (1, 2, 4, 16, 64)  # query counts of the kernels-alone table
TOPKS = (10, 100, 400, 1000)  # k of the large-k table
TOPK_QUERIES = 64
BITCODES = {"num_bits": 384, "iterations": 5}  # 1 bit per dimension; a short fit
BITCODES_N = 100_000


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


#: candidates per query rescored after the Hamming first pass
RESCORE_POOLS = (100, 1000)


def minilm_rescoring() -> list[str]:
    """The two first passes on real embeddings: all-MiniLM-L6-v2 vectors of 600 real
    sentences (tests/support/corpus.py, as tests/api/test_score_rescore.py takes them),
    the first 100 as queries against the other 500, 1-bit ``binary rotate=true`` codes,
    cosine, recall@10 against exact float search, per candidate pool, rescored with
    the caller's float vectors."""
    sys.path.insert(0, str(ROOT))
    from tests.support import corpus

    m = corpus.minilm(600)
    x, q = torch.from_numpy(m[100:]), torch.from_numpy(m[:100])
    truth = np.argsort(-(m[:100].astype(np.float64) @ m[100:].astype(np.float64).T), axis=1, kind="stable")[:, :K]
    codec = codecs.fit("binary", {"rotate": True}, x)
    codes, side = codecs.encode(codec, x)
    out = ["## Rescoring on real embeddings", "",
           "all-MiniLM-L6-v2 embeddings of 600 real sentences (tests/support/corpus.py): 100 queries against the other "
           f"500, `binary rotate=true` codes, cosine, recall@{K} against exact float search; the candidates of each "
           "first pass rescored with the float vectors (`rescore(..., vectors=x)`, /score's `candidates` and "
           "`vectors`). A pool of 10 is the first pass alone.", "",
           "| candidates | first_pass=codes | first_pass=hamming |", "|---:|---:|---:|"]
    for pool in (10, 40, 100):
        r = [recall(rescore_idx(codec, q, codes, side, pool, x, fp), truth) for fp in ("codes", "hamming")]
        out.append(f"| {pool} | {r[0]:.3f} | {r[1]:.3f} |")
    return out + [""]


def rescore_idx(codec, q, codes, side, pool, x, first_pass):
    return S.rescore(codec, q, codes, side, K, "cosine", pool, vectors=x, first_pass=first_pass)[1].numpy()


def recall(found, truth) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--q", type=int, default=1000)
    ap.add_argument("--exact-queries", type=int, default=None, help="queries the exact path is timed on")
    ap.add_argument("--out", default=None, help="markdown file to write (default docs/score.md; --quick: none)")
    a = ap.parse_args()
    n = a.n or (100_000 if a.quick else 1_000_000)
    nq, dim = a.q, 384
    eq = min(nq, a.exact_queries or (20 if a.quick else 10))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((nq, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    xt, qt = torch.from_numpy(x), torch.from_numpy(q)
    # ground truth on a few queries (float brute force): the recall column
    nt = min(nq, 100)
    truth = torch.from_numpy(q[:nt] @ x.T).topk(K, dim=1).indices.numpy()
    rows = []
    kernel_rows = []
    topk_rows = []

    import faiss

    for bits, name, params in ((1, "binary", {}), (2, "lloyd", {"bits": 2}), (4, "lloyd", {"bits": 4}),
                               (4, "tcq", {"bits": 4})):
        codec = codecs.fit(name, params, xt[:20_000])
        codes, side = codecs.encode(codec, xt)
        assert S.score_path(codec) == "asymmetric"
        for warm in (2, 64):  # compile both kernels (tables for few queries, levels for many)
            S.score(codec, qt[:warm], codes[:5000], None if side is None else side[:5000], K, "dot")
        st = {}
        t, (_, idx) = timed(lambda: S.score(codec, qt, codes, side, K, "dot", stats=st))
        extra = f", {st['rescored'] / nq:.0f} rows per query scored exactly" if "rescored" in st else ""
        rows.append((f"{bits}", f"embquant {name} {params} asymmetric (float query x codes; {st['kernel']} kernel"
                     f"{extra})", nq * n / t, t, recall(idx[:nt].numpy(), truth)))
        if st["kernel"] == "bound":  # the same answer by the levels kernel, beside it
            old = S.FAST_MAX_K
            S.FAST_MAX_K = 0
            try:
                t, (_, idx2) = timed(lambda: S.score(codec, qt, codes, side, K, "dot"))
            finally:
                S.FAST_MAX_K = old
            same = "the same top 10" if torch.equal(idx, idx2) else "A DIFFERENT TOP 10"
            rows.append((f"{bits}", f"embquant {name} {params} asymmetric, levels kernel (bound kernel off; {same})",
                         nq * n / t, t, recall(idx2[:nt].numpy(), truth)))
        t, (_, idx) = timed(lambda: S.score_exact(codec, qt[:eq], codes, side, K, "dot"))
        rows.append((f"{bits}", f"embquant {name} exact (decode then score), {eq} queries", eq * n / t, t,
                     recall(idx[: min(eq, nt)].numpy(), truth[: min(eq, nt)])))
        if name == "tcq":  # faiss SQ4's row is lloyd's, on the same data; tcq has one kernel
            for nqs in FEW:  # its levels, walked along each row's trellis 16 rows at a time
                S.score(codec, qt[:nqs], codes[:5000], side[:5000], K, "dot")
                t = min(timed(lambda: S.score(codec, qt[:nqs], codes, side, K, "dot"))[0] for _ in range(2))
                kernel_rows.append(("4 (tcq)", nqs, None, nqs * n / t, None, "levels (tcq: the only one)"))
            continue
        if bits == 2:  # no faiss index scores 2-bit codes; the kernels alone below
            pass
        elif bits == 1:
            xb = np.packbits(x > 0, axis=1)  # the same sign bits (numpy's bit order, as faiss wants)
            qb = np.packbits(q > 0, axis=1)
            index = faiss.IndexBinaryFlat(dim)
            index.add(xb)
            index.search(qb[:2], K)
            t, (_, idx) = timed(lambda: index.search(qb, K))
            rows.append(("1", "faiss IndexBinaryFlat (Hamming, queries binarised too)", nq * n / t, t,
                         recall(idx[:nt], truth)))
            # embquant's Hamming first pass (the queries encoded with the codec, then the
            # fewest differing bits), alone and as the first pass of a rescored search
            S.rescore(codec, qt[:2], codes[:5000], side[:5000], K, "dot", 100, first_pass="hamming")  # compile
            t, idx = timed(lambda: S.hamming_candidates(codec, qt, codes, side, K))
            rows.append(("1", "embquant binary Hamming alone (`hamming_candidates`, top 10)", nq * n / t, t,
                         recall(idx[:nt].numpy(), truth)))
            for m in RESCORE_POOLS:
                t, (_, idx) = timed(lambda: S.rescore(codec, qt, codes, side, K, "dot", m, first_pass="hamming"))
                rows.append(("1", f"embquant binary `first_pass=hamming`, {m} candidates rescored (decoded)",
                             nq * n / t, t, recall(idx[:nt].numpy(), truth)))
        else:
            index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_4bit, faiss.METRIC_INNER_PRODUCT)
            index.train(x[:20_000])
            index.add(x)
            index.search(q[:2], K)
            t, (_, idx) = timed(lambda: index.search(q, K))
            rows.append(("4", "faiss IndexScalarQuantizer QT_4bit (float query x codes)", nq * n / t, t,
                         recall(idx[:nt], truth)))

        # each kernel alone, few queries: the crossover `dense_scan` is set by
        for nqs in FEW:
            got = []
            for kernel in ("tables", "levels", "bound"):
                saved = {a: getattr(S, a) for a in ("DENSE_MIN", "FAST_MAX_K", "FAST_BITS", "FAST_MIN_QUERIES")}
                if kernel == "bound":  # forced, whatever the count: what the choice is made by
                    S.FAST_BITS, S.FAST_MIN_QUERIES = {1: None, 2: None, 4: None}, 1
                else:
                    S.FAST_MAX_K, S.DENSE_MIN = 0, (1 << 30 if kernel == "tables" else 0)
                try:
                    S.score(codec, qt[:nqs], codes[:5000], None if side is None else side[:5000], K, "dot")
                    st = {}
                    t = min(timed(lambda: S.score(codec, qt[:nqs], codes, side, K, "dot", stats=st))[0]
                            for _ in range(2))
                    assert st["kernel"] == kernel, (kernel, st)
                finally:
                    for a_, v in saved.items():
                        setattr(S, a_, v)
                got.append(nqs * n / t)
            exact_rows = st["rescored"] / nqs  # the bound kernel's: rows scored exactly per query
            st = {}
            S.score(codec, qt[:nqs], codes[:2000], None if side is None else side[:2000], K, "dot", stats=st)
            kernel_rows.append((bits, nqs, got[0], got[1], f"{got[2]:.3g} ({exact_rows:,.0f})", st["kernel"]))

        if name in ("binary", "lloyd") and bits in (1, 4):  # large k: /score's rescoring pools
            for k in TOPKS:
                got = []
                for variant in ("picked", "short tasks", "levels"):
                    saved = {a_: getattr(S, a_) for a_ in ("FAST_BITS", "FAST_TASKS_PER_THREAD")}
                    if variant == "short tasks":  # tasks of TASK_ROWS rows, as before long tasks
                        S.FAST_TASKS_PER_THREAD = 1 << 30
                    if variant == "levels":
                        S.FAST_BITS = {}
                    try:
                        st = {}
                        t = timed(lambda: S.score(codec, qt[:TOPK_QUERIES], codes, side, k, "dot", stats=st))[0]
                    finally:
                        for a_, v in saved.items():
                            setattr(S, a_, v)
                    got.append((TOPK_QUERIES * n / t, st["kernel"]))
                topk_rows.append((bits, k, got))

    # bitcodes (1 bit per dimension, fitted): the dot product on its codes, the query
    # projected onto the codebook; its encode is slow, so on the first BITCODES_N rows
    nb = min(n, BITCODES_N)
    codec = codecs.fit("bitcodes", BITCODES, xt[:20_000])
    codes, _ = codecs.encode(codec, xt[:nb])
    S.score(codec, qt[:2], codes[:5000], None, K, "dot")
    truth_b = torch.from_numpy(q[:nt] @ x[:nb].T).topk(K, dim=1).indices.numpy()
    for fast in (True, False):
        saved = S.FAST_MAX_K
        S.FAST_MAX_K = saved if fast else 0
        try:
            st = {}
            t, (_, idx) = timed(lambda: S.score(codec, qt, codes, None, K, "dot", stats=st))
        finally:
            S.FAST_MAX_K = saved
        rows.append(("1", f"embquant bitcodes {BITCODES} asymmetric dot (N={nb:,}; {st['kernel']} kernel)",
                     nq * nb / t, t, recall(idx[:nt].numpy(), truth_b)))
    t, (_, idx) = timed(lambda: S.score_exact(codec, qt[:eq], codes, None, K, "dot"))
    rows.append(("1", f"embquant bitcodes exact (decode then score; N={nb:,}), {eq} queries", eq * nb / t, t,
                 recall(idx[: min(eq, nt)].numpy(), truth_b[: min(eq, nt)])))

    cmd = "python bench/score.py " + " ".join(sys.argv[1:])
    lines = ["# Scoring throughput (/score's kernels, issue 10)", "",
             f"Scoring throughput, top-{K} dot product, D={dim}, Q={nq} x N={n:,} (unit Gaussian, seed 0); "
             f"{cpu_model()} ({cpu_vectors() or platform.machine()}), {nproc()} cores, faiss {faiss.__version__}, "
             f"numba threads default; {time.strftime('%Y-%m-%d %H:%M %Z')}.", "", f"Command: `{cmd.strip()}`", "",
             f"| bits | method | pairs/s | seconds | recall@10 vs float (first {nt} queries; exact path: first "
             f"{min(eq, nt)}) |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {b} | {m} | {pps:.3g} | {t:.2f} | {r:.3f} |" for b, m, pps, t, r in rows]

    def pps(start: str) -> float:
        return next(r[2] for r in rows if r[1].startswith(start))

    flat, sq4 = pps("faiss IndexBinaryFlat"), pps("faiss IndexScalarQuantizer")
    lines += ["", "Ratios: " + "; ".join(
        f"{label} {pps(start) / ref:.2f}x faiss" for start, ref, label in (
            ("embquant binary {} asymmetric (", flat, "1-bit embquant asymmetric"),
            ("embquant binary {} asymmetric, levels", flat, "1-bit embquant asymmetric by the levels kernel"),
            ("embquant binary Hamming alone", flat, "1-bit embquant Hamming alone"),
            (f"embquant binary `first_pass=hamming`, {RESCORE_POOLS[0]} ", flat,
             f"1-bit Hamming + {RESCORE_POOLS[0]} rescored"),
            ("embquant lloyd {'bits': 4} asymmetric", sq4, "4-bit embquant asymmetric"),
            ("embquant tcq {'bits': 4} asymmetric", sq4, "4-bit tcq asymmetric"))), ""]
    lines += ["## Asymmetric kernels alone, few queries", "",
              f"Same codes (N={n:,}), top-{K} dot product, best of 2 runs each, each kernel forced (the bound "
              "kernel at 4 bits for any query count too); `picked`: the kernel `score` chooses for that query "
              "count (`score.fast_scan`, then `score.dense_scan`).", "",
              "| bits | queries | tables pairs/s | levels pairs/s | bound pairs/s (rows per query scored exactly) | picked |",
              "|---:|---:|---:|---:|---:|---|"]

    def g3(v):
        return "-" if v is None else v if isinstance(v, str) else f"{v:.3g}"

    lines += [f"| {b} | {q_} | {g3(t_)} | {g3(l_)} | {g3(f_)} | {p_} |" for b, q_, t_, l_, f_, p_ in kernel_rows]
    lines.append("")
    lines += ["## Large k", "",
              f"{TOPK_QUERIES} queries x N={n:,} codes, top k dot product (a rescoring pool: /score's `candidates` "
              "defaults to 400), one run each: the kernel `score` picks with its long tasks (a few per thread); the "
              f"same kernel with tasks of `TASK_ROWS` ({S.TASK_ROWS:,}) rows; and the levels kernel (long tasks).", "",
              "| bits | k | picked pairs/s | same, short tasks | levels kernel |", "|---:|---:|---|---|---|"]
    for b, k, got in topk_rows:
        lines.append(f"| {b} | {k} | " + " | ".join(f"{p:.3g} ({kn})" for p, kn in got) + " |")
    lines.append("")
    lines += minilm_rescoring()
    text = "\n".join(lines)
    print(text)
    out = a.out if a.out is not None else (None if a.quick else ROOT / "docs" / "score.md")
    if out:
        Path(out).write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
