"""Quality versus bits: relative squared error and recall@10 on real embeddings,
for every embquant scheme and the reference libraries that install here, in one run.

Data: all-MiniLM-L6-v2 embeddings (384-d, unit norm) of real docstring sentences
(tests/support/corpus.py): a database of --db vectors and --queries held-out queries.
- relative squared error: sum ||x - y||^2 / sum ||x||^2 over the database;
- recall@10: for each (unquantized) query, the share of its true 10 nearest database
  vectors (inner product) found among the top 10 over the reconstructed database;
- bits/dim counts everything stored per vector: codes and side values (a shared
  codec is stored once per collection and not counted).
Fitted schemes (and faiss, and the int8 calibration) fit on a separate --train split of
the same corpus, never on the database they are measured on.

    make bench-quality      # or: .venv/bin/python bench/quality.py [--quick]
Writes docs/quality.md and docs/quality.png (shown in the README and docs/schemes.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support import corpus  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
warnings.filterwarnings("ignore")


# -- methods: each maps (train, db) to (reconstruction of db, bits per vector, fit+encode seconds)

def embquant(scheme: str, **params):
    def run(train, x):
        from embquant import codecs

        t = torch.from_numpy(x)
        t0 = time.perf_counter()
        codec = codecs.fit(scheme, params, torch.from_numpy(train))
        codes, side = codecs.encode(codec, t)
        secs = time.perf_counter() - t0
        y = codecs.decode(codec, codes, side).numpy()
        return y, codec.layout.bits_per_vector(), secs
    return run


def distquant_ref(k: int, beta=None):
    def run(train, x):
        import distquant

        t = torch.from_numpy(x.copy())
        t0 = time.perf_counter()
        q, info = distquant.quantize(t, k=k, beta=beta, packbits=False)
        y = distquant.dequantize(q.clone(), **info).numpy().reshape(x.shape)
        return y, k * x.shape[1], time.perf_counter() - t0
    return run


def faiss_sq(qtype: str, bits: int):
    def run(train, x):
        import faiss

        sq = faiss.ScalarQuantizer(x.shape[1], getattr(faiss.ScalarQuantizer, qtype))
        t0 = time.perf_counter()
        sq.train(train)
        codes = sq.compute_codes(x)
        secs = time.perf_counter() - t0
        return sq.decode(codes), bits * x.shape[1], secs
    return run


def faiss_pq(m: int):
    def run(train, x):
        import faiss

        pq = faiss.ProductQuantizer(x.shape[1], m, 8)
        t0 = time.perf_counter()
        pq.train(train)
        codes = pq.compute_codes(x)
        secs = time.perf_counter() - t0
        return pq.decode(codes), 8 * m, secs
    return run


@contextlib.contextmanager
def _quiet_stderr():
    """faiss's k-means warns once per iteration on 2,000 training rows (C++, fd 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def faiss_codec(make):
    """A faiss index used as a codec: train, sa_encode, sa_decode; bits per vector from
    its code size (EDEN, OPQ+PQ: issue 9's comparisons)."""
    def run(train, x):
        import faiss

        idx = make(faiss, x.shape[1])
        t0 = time.perf_counter()
        with _quiet_stderr():
            idx.train(np.ascontiguousarray(train))
        codes = idx.sa_encode(np.ascontiguousarray(x))
        secs = time.perf_counter() - t0
        return idx.sa_decode(codes), 8 * idx.sa_code_size(), secs
    return run


def _opq(faiss, d: int, m: int):
    """OPQ rotation then PQ with m 8-bit subquantizers; 10 OPQ iterations, not faiss's 50
    (each takes about 6 s at m=48 on this 2-core machine)."""
    idx = faiss.index_factory(d, f"OPQ{m},PQ{m}x8")
    faiss.downcast_VectorTransform(idx.chain.at(0)).niter = 10
    return idx


def bnb_blockwise(kind: str, block: int = 64):
    def run(train, x):
        import bitsandbytes.functional as F

        t = torch.from_numpy(x.copy()).reshape(-1)
        t0 = time.perf_counter()
        if kind == "dynamic8":
            q, st = F.quantize_blockwise(t, blocksize=block)
            y = F.dequantize_blockwise(q, st)
            bits = 8
        else:
            q, st = F.quantize_4bit(t, blocksize=block, quant_type=kind)
            y = F.dequantize_4bit(q, st)
            bits = 4
        secs = time.perf_counter() - t0
        return y.reshape(x.shape).float().numpy(), (bits + 32 / block) * x.shape[1], secs
    return run


def hqq_ref(nbits: int, group: int = 64):
    def run(train, x):
        from hqq.core.quantize import Quantizer

        t = torch.from_numpy(x.copy())
        t0 = time.perf_counter()
        q, meta = Quantizer.quantize(t, nbits=nbits, group_size=group, optimize=True, axis=1, bitpack=False, device="cpu")
        meta["compute_dtype"] = torch.float32
        y = Quantizer.dequantize(q, meta).float().reshape(x.shape).numpy()
        # fp16 scale and zero per group, as the package stores them
        return y, (nbits + 32 / group) * x.shape[1], time.perf_counter() - t0
    return run


def st_ref(precision: str):
    def run(train, x):
        from sentence_transformers.util.quantization import quantize_embeddings

        t0 = time.perf_counter()
        if precision == "int8":
            q = quantize_embeddings(x, precision="int8", calibration_embeddings=train).astype(np.float32)
            lo, hi = train.min(0), train.max(0)
            step = (hi - lo) / 255
            y = lo + (q + 128) * step  # its own decoding: the lower bin edge
            bits = 8
        else:
            q = quantize_embeddings(x, precision="ubinary")
            signs = np.unpackbits(q, axis=1)[:, : x.shape[1]].astype(np.float32) * 2 - 1
            y = signs * np.abs(x).mean(1, keepdims=True)  # +-mean|x|: the best gain for signs
            bits = 1
        return y, bits * x.shape[1] + (32 if precision != "int8" else 0), time.perf_counter() - t0
    return run


def methods(quick: bool):
    m = []
    for b in (1, 2, 3, 4, 8):
        m.append((f"lloyd gaussian {b}b (rotated, data-oblivious)", "embquant", embquant("lloyd", bits=b)))
        m.append((f"lloyd gaussian {b}b norm=unit (no side value)", "embquant", embquant("lloyd", bits=b, norm="unit")))
        m.append((f"lloyd gaussian {b}b center=true (fitted mean)", "embquant", embquant("lloyd", bits=b, center=True)))
        m.append((f"lloyd fit_dim {b}b", "embquant", embquant("lloyd", bits=b, mode="fit_dim")))
        m.append((f"transform {b}b (fitted PCA + bit allocation)", "embquant", embquant("transform", bits=b)))
        m.append((f"transform {b}b trellis=true (PCA + allocation + trellis coding)", "embquant",
                  embquant("transform", bits=b, trellis=True)))
        m.append((f"tcq {b}b (trellis-coded, data-oblivious)", "embquant", embquant("tcq", bits=b)))
        m.append((f"tcq {b}b center=true (fitted mean)", "embquant", embquant("tcq", bits=b, center=True)))
        m.append((f"tcq fit {b}b center=true (fitted levels and mean)", "embquant",
                  embquant("tcq", bits=b, mode="fit", center=True)))
        m.append((f"distributional {b}b beta=None", "embquant", embquant("distributional", bits=b, beta=None)))
        m.append((f"distquant k={b} beta=None", "reference", distquant_ref(b)))
    for b in (2, 4, 8):
        m.append((f"absmax {b}b", "embquant", embquant("absmax", bits=b)))
        m.append((f"hqq {b}b g64", "embquant", embquant("hqq", bits=b, group_size=64)))
        m.append((f"hqq package {b}b g64", "reference", hqq_ref(b)))
        m.append((f"affine {b}b per vector", "embquant", embquant("affine", bits=b)))
    m += [
        ("codebook nf4", "embquant", embquant("codebook", table="nf4")),
        ("codebook dynamic 8b", "embquant", embquant("codebook", table="dynamic")),
        ("blockwise nf4 b64", "embquant", embquant("blockwise", table="nf4", block_size=64)),
        ("blockwise dynamic 8b b64", "embquant", embquant("blockwise", table="dynamic", block_size=64)),
        ("bnb nf4 b64", "reference", bnb_blockwise("nf4")),
        ("bnb fp4 b64", "reference", bnb_blockwise("fp4")),
        ("bnb dynamic 8b b64", "reference", bnb_blockwise("dynamic8")),
        ("int8 calibrated", "embquant", embquant("int8")),
        ("sentence-transformers int8", "reference", st_ref("int8")),
        ("binary (sign) 1b", "embquant", embquant("binary")),
        ("binary rotated 1b", "embquant", embquant("binary", rotate=True)),
        ("sentence-transformers binary", "reference", st_ref("binary")),
        ("faiss SQ4", "reference", faiss_sq("QT_4bit", 4)),
        ("faiss SQ8", "reference", faiss_sq("QT_8bit", 8)),
        ("faiss PQ 1 bit/dim (M=48)", "reference", faiss_pq(48)),
        ("faiss PQ 2 bits/dim (M=96)", "reference", faiss_pq(96)),
        ("faiss OPQ+PQ 1 bit/dim (M=48, 10 OPQ iterations)", "reference", faiss_codec(lambda f, d: _opq(f, d, 48))),
        ("faiss OPQ+PQ 2 bits/dim (M=96, 10 OPQ iterations)", "reference", faiss_codec(lambda f, d: _opq(f, d, 96))),
        *[(f"faiss EDEN {b} bits (rotation, mean, Lloyd-Max)", "reference",
           faiss_codec(lambda f, d, b=b: f.IndexEDEN(d, f.METRIC_L2, b))) for b in (1, 2, 4)],
        ("bitcodes 384 bits", "embquant", embquant("bitcodes", num_bits=384, iterations=8 if quick else 25, max_seconds=120)),
        ("bitcodes 768 bits", "embquant", embquant("bitcodes", num_bits=768, iterations=8 if quick else 25, max_seconds=120)),
    ]
    return m


def recall_at_10(db: np.ndarray, rec: np.ndarray, q: np.ndarray) -> float:
    true = np.argsort(-(q @ db.T), axis=1)[:, :10]
    got = np.argsort(-(q @ rec.T), axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(true, got)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--db", type=int, default=4500)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="1500 vectors, fewer iterations")
    ap.add_argument("--only", default="", help="run only methods whose label contains this")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from docs/quality.md")
    a = ap.parse_args()
    if a.replot:
        return replot()
    if a.quick:
        a.train, a.db, a.queries = 1500, 1500, 200
    torch.manual_seed(0)
    x = corpus.minilm(a.train + a.db + a.queries)
    train, db, q = x[: a.train], x[a.train : a.train + a.db], x[a.train + a.db :]
    rows = []
    for label, kind, fn in methods(a.quick):
        if a.only and a.only not in label:
            continue
        try:
            y, bits, secs = fn(train, db)
        except Exception as e:  # noqa: BLE001 - a missing reference package is reported, not fatal
            print(f"skip {label}: {type(e).__name__}: {str(e)[:120]}", flush=True)
            continue
        rel = float(((db - y) ** 2).sum() / (db**2).sum())
        rec = recall_at_10(db, y.astype(np.float32), q)
        rows.append((label, kind, bits / db.shape[1], rel, rec, secs))
        print(f"{label:48s} {bits / db.shape[1]:6.3f} b/dim  rel.err {rel:.5f}  recall@10 {rec:.3f}  {secs:.2f}s", flush=True)
    rows.sort(key=lambda r: (round(r[2], 1), r[3]))
    cmd = "python bench/quality.py " + " ".join(sys.argv[1:])
    md = [
        "# Quality versus bits",
        "",
        f"Real all-MiniLM-L6-v2 embeddings of docstring sentences: {a.db} database vectors, {a.queries} "
        f"queries, and {a.train} other vectors that fitted schemes train on; one run of `{cmd.strip()}` "
        "on CPU. Bits per dimension count codes and side values; recall@10 differences under about 0.006 are noise.",
        "",
        "| method | kind | bits/dim | rel. squared error | recall@10 | fit+encode s |",
        "|---|---|---|---|---|---|",
    ] + [f"| {l} | {k} | {b:.3f} | {e:.5f} | {r:.3f} | {s:.2f} |" for l, k, b, e, r, s in rows]
    DOCS.mkdir(exist_ok=True)
    (DOCS / "quality.md").write_text("\n".join(md) + "\n")
    plot(rows, DOCS / "quality.png", f"MiniLM, {a.db} vectors")
    print(f"wrote {DOCS / 'quality.md'} and {DOCS / 'quality.png'}")


def family(label: str) -> str:
    """The method without its bit width: points of one family are joined by a line."""
    f = re.sub(r"\(M=\d+\)|\d+ bits?(/dim)?|\b\d+b\b|k=\d+|\bnf4\b|\bfp4\b|dynamic 8b|\(.*?\)", "", label)
    return " ".join(f.split()) or label


def plot(rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams: dict[str, list] = {}
    for label, kind, b, e, r, _ in rows:
        fams.setdefault((family(label), kind), []).append((b, e, r))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6))
    colors = list(plt.get_cmap("tab20").colors) + list(plt.get_cmap("tab20b").colors)
    for i, ((fam, kind), pts) in enumerate(sorted(fams.items())):
        pts.sort()
        bs, es, rs = zip(*pts)
        style = dict(color=colors[(2 * i) % len(colors)], marker="o" if kind == "embquant" else "x",
                     linestyle="-" if kind == "embquant" else "--", linewidth=1, markersize=4)
        name = fam if kind == "embquant" else f"{fam} (ref)"
        ax1.plot(bs, es, label=name, **style)
        ax2.plot(bs, rs, **style)
    ax1.set_yscale("log")
    for ax, yl in ((ax1, "relative squared error"), (ax2, "recall@10")):
        ax.set_xlabel("bits per dimension (side values counted)")
        ax.set_ylabel(yl)
        ax.set_xlim(0.8, 9.2)
        ax.grid(alpha=0.3)
    ax2.set_ylim(0.7, 1.005)
    fig.legend(loc="center right", fontsize=7, frameon=False)
    fig.suptitle(f"{title}: embquant (solid, o) and reference libraries (dashed, x)")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=110)


def replot() -> None:
    """Redraw docs/quality.png from docs/quality.md (no measuring)."""
    rows = []
    for line in (DOCS / "quality.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[1] in ("embquant", "reference"):
            rows.append((cells[0], cells[1], float(cells[2]), float(cells[3]), float(cells[4]), float(cells[5])))
    plot(rows, DOCS / "quality.png", "MiniLM")


if __name__ == "__main__":
    main()
