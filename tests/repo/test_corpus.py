"""The committed sentence list the tests and benchmarks embed (tests/support/corpus.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support import corpus


def test_committed_list_is_sorted_distinct_prose():
    pool = corpus.pool()
    assert len(pool) == 7338
    assert list(pool) == sorted(set(pool))
    for s in pool:
        assert 30 <= len(s) <= 300 and s[0].isalpha() and s[-1] in ".!?" and s == " ".join(s.split()), s


def test_sample_is_deterministic_and_seeded():
    a = corpus.sentences(50)
    assert a == corpus.sentences(50) and len(set(a)) == 50
    assert corpus.sentences(10) == a[:10]  # a prefix of the larger sample
    assert corpus.sentences(50, seed=1) != a


def test_asking_for_more_than_the_list_says_so():
    with pytest.raises(RuntimeError, match="7338 sentences"):
        corpus.sentences(7339)


def test_no_test_reaches_into_bench():
    # the tests' path: the repository root (for tests.support), never bench/
    bench = str(Path(corpus.__file__).resolve().parents[2] / "bench")
    assert bench not in sys.path
