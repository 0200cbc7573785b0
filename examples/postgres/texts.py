"""Real text for the example: sentences from the docstrings of the Python packages
installed beside it (the standard library and site-packages), written by their
authors, not by this project. Read from the source files with `ast` (nothing is
imported or executed), in sorted file order, so one environment always gives the
same list. The project's own packages (embquant, embquant_client) are left out.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
import warnings
from pathlib import Path

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_SKIP_PARTS = {"tests", "test", "testing", "_vendor", "vendor", "embquant", "embquant_client", "examples"}


def _roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = []
    for key in ("stdlib", "purelib", "platlib"):
        p = Path(paths[key]).resolve()
        if p.is_dir() and p not in roots:
            roots.append(p)
    return roots


def _files():
    for root in _roots():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames
                                 if d not in _SKIP_PARTS and not d.endswith((".dist-info", ".egg-info"))
                                 and d != "site-packages" and d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py") and not name.startswith("test_"):
                    yield Path(dirpath) / name


def _docstrings(path: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _split(doc: str):
    for para in doc.split("\n\n"):
        lines = para.splitlines()
        if any(line.startswith((" ", ">>>", "..", "-", "*", "|", ":", "=")) for line in lines):
            continue  # code, tables, lists, directives
        for s in _SENT.split(para.replace("\n", " ")):
            s = " ".join(s.split())
            if (30 <= len(s) <= 300 and s[0].isupper() and s[-1] in ".!?" and "``" not in s
                    and "::" not in s and ">>>" not in s and sum(c.isalpha() for c in s) > 0.7 * len(s)):
                yield s


def sentences(limit: int | None = None, cache: Path | None = None) -> list[str]:
    """Distinct real sentences (30..300 characters), in the order first met, at
    most `limit`. With `cache`, the list is kept in a JSON file keyed by the
    interpreter's paths and `limit`."""
    key = hashlib.sha1(json.dumps([sys.version, [str(r) for r in _roots()], limit]).encode()).hexdigest()[:12]
    path = cache / f"sentences-{key}.json" if cache else None
    if path and path.exists():
        return json.loads(path.read_text())
    seen: dict[str, None] = {}
    for f in _files():
        for doc in _docstrings(f):
            for s in _split(doc):
                seen.setdefault(s, None)
        if limit is not None and len(seen) >= limit:
            break
    out = list(seen)[:limit]
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)
    return out
