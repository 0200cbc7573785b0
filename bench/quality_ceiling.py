"""How far issue 9's quality targets are from what this data allows: where the fitted
`transform` (PCA, bit allocation, trellis coding) loses to the Shannon bound, measured
on the corpus and splits of bench/quality.py.

    .venv/bin/python bench/quality_ceiling.py      # about a minute; writes docs/quality-ceiling.md

Three measurements, each at 1, 2, 3 and 4 bits per dimension:

1. The recommended fitted setting (`transform` trellis=true) fitted on the 2,000 training
   rows (as in bench/quality.py), and fitted on the 4,500 database rows it is measured on
   (in-sample: the most its fit could know, an upper bound on what more training rows
   could buy), relative squared error and recall@10 of the decoded database.
2. An estimate of entropy-coded scalar quantization (ECSQ) in the same PCA basis, the
   usual way past fixed-rate coding: one uniform step for every component, each row's
   step the finest of a grid (8 per octave) whose ideal code length fits the row's budget
   less 24 bits (the entropy coder's flush and the step's index), with code lengths
   ``-log2 p`` from a Gaussian of each component's (Ledoit-Wolf) variance, probabilities
   floored at 2**-12, reconstruction at each cell's Gaussian centroid. No coder is run:
   the lengths are ideal, so the figures are a little better than a real coder would give.
3. The Shannon bound of a Gaussian with the database's own covariance (reverse
   water-filling over its eigenvalues), relative to the database's energy.

Measurement only: nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import recall_at_10  # noqa: E402  (the same measure as bench/quality.py)
from tests.support import corpus  # noqa: E402

DOCS = ROOT / "docs"
BITS = (1, 2, 3, 4)


def rse(db: np.ndarray, y: np.ndarray) -> float:
    return float(((db.astype(np.float64) - y) ** 2).sum() / (db.astype(np.float64) ** 2).sum())


def transform(fit_on: np.ndarray, db: np.ndarray, bits: int) -> np.ndarray:
    from embquant import codecs

    codec = codecs.fit("transform", {"bits": bits, "trellis": True}, torch.from_numpy(fit_on))
    codes, side = codecs.encode(codec, torch.from_numpy(db))
    return codecs.decode(codec, codes, side).numpy()


def ecsq(train: np.ndarray, db: np.ndarray, bits: int, overhead: int = 24, per_octave: int = 8) -> np.ndarray:
    from scipy.stats import norm

    from embquant.codecs.transform import _klt

    mu, v, lam, _raw = _klt(train.astype(np.float64), True)
    sig = np.sqrt(np.maximum(lam, 1e-24))
    z = (db.astype(np.float64) - mu) @ v
    d = z.shape[1]
    budget = bits * d - overhead
    k = 96
    m = np.arange(-k, k + 1)
    steps = np.exp(np.mean(np.log(sig))) * 2.0 ** (-bits) / 4 * 2.0 ** (np.arange(8 * per_octave) / per_octave)
    rec = np.full_like(z, np.nan)
    rows = np.arange(d)[None, :]
    for step in steps[::-1]:  # coarse to fine: each row ends with the finest step that fits
        lo = (m - 0.5)[None, :] * step / sig[:, None]
        hi = (m + 0.5)[None, :] * step / sig[:, None]
        p = norm.cdf(hi) - norm.cdf(lo)
        cen = np.where(p > 1e-12, sig[:, None] * (norm.pdf(lo) - norm.pdf(hi)) / np.maximum(p, 1e-300),
                       m[None, :] * step)
        cost = -np.log2(np.maximum(p, 2.0 ** -12) / np.maximum(p, 2.0 ** -12).sum(1, keepdims=True))
        idx = np.clip(np.rint(z / step), -k, k).astype(np.int64) + k
        fits = cost[rows, idx].sum(1) <= budget
        rec[fits] = cen[rows, idx][fits]
    if np.isnan(rec).any():
        raise RuntimeError("a row fits no step of the grid: widen it")
    return rec @ v.T + mu


def shannon(db: np.ndarray, bits: int) -> float:
    lam = np.clip(np.linalg.eigvalsh(np.cov(db.T.astype(np.float64))), 0, None)
    energy = (db.astype(np.float64) ** 2).sum(1).mean()
    lo, hi = 1e-15, float(lam.max())
    for _ in range(200):  # the water level whose rate is bits * D
        th = (lo * hi) ** 0.5
        if 0.5 * np.log2(np.maximum(lam / th, 1)).sum() > bits * db.shape[1]:
            lo = th
        else:
            hi = th
    return float(np.minimum(lam, th).sum() / energy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DOCS / "quality-ceiling.md"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    x = corpus.minilm(7000)
    train, db, q = x[:2000], x[2000:6500], x[6500:]
    rows = []
    for bits in BITS:
        held = transform(train, db, bits)
        ins = transform(db, db, bits)
        ec = ecsq(train, db, bits)
        rows.append((bits, rse(db, held), recall_at_10(db, held, q), rse(db, ins), recall_at_10(db, ins, q),
                     rse(db, ec), recall_at_10(db, ec.astype(np.float32), q), shannon(db, bits)))
        print(*(f"{v:.5f}" if isinstance(v, float) else v for v in rows[-1]), flush=True)
    lines = [
        "# How far the quality targets are from what the data allows",
        "",
        f"Written by `python bench/quality_ceiling.py` ({time.perf_counter() - t0:.0f} s, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}). Data as in bench/quality.py: all-MiniLM-L6-v2 "
        "embeddings of real docstring sentences, 2,000 training rows, a database of 4,500, 500 queries. "
        "Relative squared error (rse) over the database and recall@10 of the decoded database against "
        "exact search; recall differences under about 0.006 are noise. See the script's docstring for "
        "what each column is.",
        "",
        "| bits/dim | transform trellis, fitted on the 2,000 training rows: rse / recall@10 | the same fitted on the "
        "database itself (in-sample) | ECSQ estimate, ideal code lengths, fitted on the training rows | "
        "Shannon bound (Gaussian, the database's covariance) |",
        "|---|---|---|---|---|",
    ]
    for b, r1, c1, r2, c2, r3, c3, sh in rows:
        lines.append(f"| {b} | {r1:.5f} / {c1:.3f} | {r2:.5f} / {c2:.3f} | {r3:.5f} / {c3:.3f} | {sh:.5f} |")
    lines += [
        "",
        "Issue 9 asks, fitted: at 4 bits rse <= 0.0030 and recall@10 >= 0.975; recall@10 >= 0.93 at 2 bits "
        "and >= 0.85 at 1 bit. Fitted on the very rows it is measured on, the same scheme does not reach "
        "the 1- and 2-bit recall asked, so more training rows alone cannot; entropy coding "
        "(variable-length codes inside each row's fixed budget) gains at 4 bits only, by the margin "
        "shown, before a real coder's losses.",
        "",
    ]
    Path(a.out).write_text("\n".join(lines))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
