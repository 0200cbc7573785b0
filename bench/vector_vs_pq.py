"""bitcodes against product quantization at equal bits per vector, on real
all-MiniLM-L6-v2 embeddings (tests/support/corpus.py). Prints a markdown table.

    .venv/bin/python bench/vector_vs_pq.py [--train 3000 --db 1000 --queries 500]

Train, database and query sets are disjoint slices of one deterministic corpus
sample. Each method is fitted on the train set; the database is encoded and
decoded; we report the relative squared error of the database and recall@10:
the overlap of the top-10 neighbours by inner product of each query against the
decoded database with the top 10 against the exact database. Fits are seeded,
so the table is reproducible (timings aside).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "service"))
sys.path.insert(0, str(ROOT))

from tests.support import corpus  # noqa: E402
from embquant import codecs  # noqa: E402


def relative_error(x: np.ndarray, y: np.ndarray) -> float:
    """Sum of squared errors over sum of squares."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    return float(((x - y) ** 2).sum() / (x**2).sum())


def recall_at_10(q: np.ndarray, db: np.ndarray, approx: np.ndarray) -> float:
    """Mean overlap of the exact and approximate top-10 (inner product)."""
    exact = np.argsort(-(q @ db.T), axis=1)[:, :10]
    found = np.argsort(-(q @ approx.T), axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found)]))


def run_pq(train, db, bits, opq=False):
    """faiss ProductQuantizer with M = bits / 8 subquantizers of 8 bits (optionally
    after a learned OPQ rotation)."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    d, m = train.shape[1], bits // 8
    t0 = time.perf_counter()
    rot = None
    if opq:
        rot = faiss.OPQMatrix(d, m)
        rot.train(train)
        train = rot.apply_py(train)
    pq = faiss.ProductQuantizer(d, m, 8)
    pq.cp.min_points_per_centroid = 1  # a small sample is deliberate: same for every method
    pq.train(np.ascontiguousarray(train))
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    z = rot.apply_py(db) if rot is not None else db
    y = pq.decode(pq.compute_codes(np.ascontiguousarray(z)))
    if rot is not None:
        y = rot.reverse_transform(y)
    return y, fit_s, time.perf_counter() - t0


def run_scheme(name, params, train, db):
    t0 = time.perf_counter()
    codec = codecs.fit(name, params, torch.from_numpy(train))
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes, side = codecs.encode(codec, torch.from_numpy(db))
    y = codecs.decode(codec, codes, side).numpy()
    return y, fit_s, time.perf_counter() - t0, codec.layout.bits_per_vector()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--db", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--sweeps", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--no-opq", action="store_true", help="skip the OPQ baseline")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    x = corpus.minilm(args.train + args.db + args.queries)
    train = np.ascontiguousarray(x[: args.train])
    db = np.ascontiguousarray(x[args.train : args.train + args.db])
    q = np.ascontiguousarray(x[args.train + args.db :])
    print(f"MiniLM-L6 embeddings, d={x.shape[1]}: train {len(train)}, database {len(db)}, queries {len(q)}; "
          f"torch threads {torch.get_num_threads()}\n")
    print("| bits/dim | method | bits/vector | rel. sq. error | recall@10 | fit s | encode+decode s |")
    print("|---|---|---|---|---|---|---|")
    for bits in (384, 768):
        rows = [("faiss PQ M=%d x 8" % (bits // 8), *run_pq(train, db, bits), bits)]
        if not args.no_opq:
            rows.append(("faiss OPQ+PQ M=%d x 8" % (bits // 8), *run_pq(train, db, bits, opq=True), bits))
        params = {"num_bits": bits, "iterations": args.iterations, "encode_sweeps": args.sweeps,
                  "max_seconds": args.max_seconds}
        rows.append((f"bitcodes ({args.iterations} it, {args.sweeps} sweeps)", *run_scheme("bitcodes", params, train, db)))
        for label, y, fit_s, enc_s, bpv in rows:
            print(f"| {bits / x.shape[1]:g} | {label} | {bpv} | {relative_error(db, y):.4f} | "
                  f"{recall_at_10(q, db, y):.3f} | {fit_s:.1f} | {enc_s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
