"""The recommended settings: for each budget of 1, 2, 3, 4 and 8 bits per dimension,
one data-oblivious and one fitted (scheme, params) that docs/schemes.md stands behind,
with what they measured on real embeddings.

This is the one list: ``GET /schemes`` carries it (``recommended``), `/evaluate` with a
``bits`` budget compares the entries at or under the budget (`evaluate.recommended`),
docs/schemes.md explains each, and bench/recommended.py measures them.

Measured by ``python bench/recommended.py`` (bench/quality.py's data, split and
measures: all-MiniLM-L6-v2 embeddings of real sentences, unit norm, D = 384; fitted
schemes fit on 2,000 vectors, every setting is measured on 4,500 others with 500
held-out queries; bits per dimension count everything stored per vector, words and
side values). `MEASURED_BY` names the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The bit budgets the list covers (bits per dimension of the codes).
BUDGETS = (1, 2, 3, 4, 8)

#: The run the figures come from.
MEASURED_BY = (
    "python bench/recommended.py (bench/quality.py's data and measures: 2,000 fit / 4,500 measured / "
    "500 query all-MiniLM-L6-v2 embeddings, CPU), run on 2026-11-27 on commit bf51a4a plus transform trellis=true and this list"
)


@dataclass(frozen=True)
class Recommendation:
    budget: int  # bits per dimension of the codes
    fitted: bool  # learns from a sample (POST /fit) or data-oblivious
    scheme: str
    params: dict[str, Any]
    why: str
    #: as measured (bench/recommended.py): bits per dimension as stored, relative squared
    #: error of the decoded vectors, recall@10 of the decoded vectors
    bits_per_dim: float
    relative_squared_error: float
    recall_at_10: float

    def as_json(self) -> dict[str, Any]:
        return {
            "bits": self.budget,
            "kind": "fitted" if self.fitted else "data-oblivious",
            "scheme": self.scheme,
            "params": dict(self.params),
            "why": self.why,
            "measured": {
                "bits_per_dim": self.bits_per_dim,
                "relative_squared_error": self.relative_squared_error,
                "recall_at_10": self.recall_at_10,
                "data": "all-MiniLM-L6-v2, D=384, unit norm",
                "run": MEASURED_BY,
            },
        }


_UNIT = (
    " norm='unit' stores no gain, for unit-norm vectors (most embedding models); other vectors: "
    "norm='row' (+32 bits per vector)."
)

#: (budget, fitted, scheme, params, why): the settings; their figures are in `_MEASURED`.
SETTINGS: tuple[tuple[int, bool, str, dict[str, Any], str], ...] = (
    (1, False, "tcq", {"bits": 1, "norm": "unit"},
     "trellis-coded quantization after a seeded rotation: the row's levels chosen together along an 8-state "
     "trellis over twice lloyd's alphabet (Viterbi), 16% less error than the best scalar quantizer (lloyd, "
     "sign bits) at the same bits; no training. Its encode is a half (AVX-512) to a third (AVX2) as fast as lloyd's "
     "(bench/codecs.py): lloyd bits=1 norm='unit' is the fast choice." + _UNIT),
    (2, False, "tcq", {"bits": 2, "norm": "unit"},
     "as at 1 bit: 27% less error than lloyd's Gaussian Lloyd-Max levels, the optimal scalar quantizer "
     "(lloyd bits=2 norm='unit' encodes two to three times as fast)." + _UNIT),
    (3, False, "tcq", {"bits": 3, "norm": "unit"},
     "as at 1 bit; stored as 3.167 bits/dim (21 three-bit symbols per 64-bit word)." + _UNIT),
    (4, False, "tcq", {"bits": 4, "norm": "unit"},
     "a third less error than the Gaussian Lloyd-Max optimum of any scalar quantizer (lloyd, about 0.0094) "
     "without training, below faiss EDEN, SQ4 and distquant at the same bits (lloyd bits=4 norm='unit' "
     "encodes two to three times as fast)." + _UNIT),
    (8, False, "lloyd", {"bits": 8, "norm": "unit"},
     "near lossless: about a quarter of int8's error at the same bits, and no calibration." + _UNIT),
    (1, True, "transform", {"bits": 1, "trellis": True},
     "PCA basis, bits given to components by variance (reverse water-filling), and the components of each "
     "width coded together along tcq's trellis: the lowest error and best recall at 1 bit here, ahead of "
     "bitcodes (a fit of seconds to minutes), faiss PQ and OPQ; fits in about a second. trellis=false (one "
     "Lloyd-Max quantizer per component) encodes faster."),
    (2, True, "transform", {"bits": 2, "trellis": True},
     "as at 1 bit: ahead of bitcodes and faiss PQ and OPQ at 2 bits/dim."),
    (3, True, "transform", {"bits": 3, "trellis": True},
     "as at 1 bit; exactly 3 bits/dim (its symbols are single bits, so no word padding)."),
    (4, True, "transform", {"bits": 4, "trellis": True},
     "a third of lloyd's error at 4 bits when a sample of the collection can be fitted on."),
    (8, True, "lloyd", {"bits": 8, "norm": "unit", "mode": "fit_global"},
     "one level table fitted by 1-D k-means on the rotated sample: ties the data-oblivious lloyd (fitting "
     "no longer pays at 8 bits), ahead of transform bits=8 (4.4e-5, recall 0.993) and int8 (1.6e-4, 0.993) "
     "in the same data." + _UNIT),
)

#: bench/recommended.py's output: (bits per dimension as stored, relative squared error, recall@10).
_MEASURED: dict[tuple[int, bool], tuple[float, float, float]] = {
    (1, False): (1.0, 0.3037, 0.763),
    (2, False): (2.0, 0.08549, 0.869),
    (3, False): (3.167, 0.02342, 0.927),
    (4, False): (4.0, 0.00639, 0.962),
    (8, False): (8.0, 4.078e-05, 0.997),
    (1, True): (1.0, 0.1408, 0.816),
    (2, True): (2.0, 0.03877, 0.916),
    (3, True): (3.0, 0.01151, 0.945),
    (4, True): (4.0, 0.003193, 0.973),
    (8, True): (8.0, 4.09e-05, 0.997),
}

RECOMMENDED: tuple[Recommendation, ...] = tuple(
    Recommendation(b, f, name, params, why, *_MEASURED[(b, f)]) for b, f, name, params, why in SETTINGS
)


def document() -> list[dict[str, Any]]:
    """GET /schemes' ``recommended``: budget, then data-oblivious before fitted."""
    return [r.as_json() for r in sorted(RECOMMENDED, key=lambda r: (r.budget, r.fitted))]


def for_budget(budget: float, unit_norm: bool) -> list[tuple[str, dict[str, Any]]]:
    """The (scheme, params) of every entry whose budget is at most ``budget`` bits per
    dimension, as `/evaluate` compares them: ``norm="row"`` in place of ``"unit"``
    when the sample is not unit-norm (the entries assume unit-norm embeddings)."""
    out = []
    for r in sorted(RECOMMENDED, key=lambda r: (r.budget, r.fitted)):
        if r.budget > budget + 1e-9:
            continue
        params = dict(r.params)
        if params.get("norm") == "unit" and not unit_norm:
            params["norm"] = "row"
        out.append((r.scheme, params))
    return out
