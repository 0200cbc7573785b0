"""The example's queries and documents: real sentences (texts.py) in a seeded order,
the first `queries` held out as queries, the next `docs` stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import texts

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "bench" / "out" / "cache"  # ignored by git


def split(docs: int, queries: int) -> tuple[list[str], list[str]]:
    pool = texts.sentences(cache=CACHE)
    order = np.random.default_rng(0).permutation(len(pool))
    if docs + queries > len(pool):
        docs = len(pool) - queries
    picked = [pool[i] for i in order[:queries + docs]]
    return picked[:queries], picked[queries:]
