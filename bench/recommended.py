"""Measure the recommended settings (embquant.codecs.recommended.SETTINGS) on
bench/quality.py's data with its measures: fitted schemes fit on --train vectors,
every setting is measured on --db others (relative squared error of the decoded
vectors, recall@10 of --queries held-out queries over them), bits per dimension
as stored (words and side values).

    .venv/bin/python bench/recommended.py

Prints one line per setting and the `_MEASURED` table that
service/embquant/codecs/recommended.py holds (paste it there when the numbers move).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support import corpus  # noqa: E402
from quality import embquant, recall_at_10  # noqa: E402

from embquant.codecs.recommended import SETTINGS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--db", type=int, default=4500)
    ap.add_argument("--queries", type=int, default=500)
    a = ap.parse_args()
    torch.manual_seed(0)
    x = corpus.minilm(a.train + a.db + a.queries)
    train, db, q = x[: a.train], x[a.train : a.train + a.db], x[a.train + a.db :]
    out = {}
    for budget, fitted, scheme, params, _ in SETTINGS:
        y, bits, secs = embquant(scheme, **params)(train, db)
        rel = float(((db - y) ** 2).sum() / (db**2).sum())
        rec = recall_at_10(db, y.astype(np.float32), q)
        out[(budget, fitted)] = (round(bits / db.shape[1], 3), float(f"{rel:.4g}"), round(rec, 3))
        kind = "fitted" if fitted else "oblivious"
        print(f"{budget} bits {kind:9s} {scheme} {params}: {bits / db.shape[1]:.3f} b/dim  rel.err {rel:.4g}  "
              f"recall@10 {rec:.3f}  {secs:.2f}s", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"\n# commit {commit}\n_MEASURED = {{")
    for k, v in out.items():
        print(f"    {k}: {v},")
    print("}")


if __name__ == "__main__":
    main()
