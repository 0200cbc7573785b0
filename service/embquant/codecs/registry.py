"""The scheme registry: every scheme module is listed in `SCHEME_MODULES` (one
short, greppable list), imported once on first use, and registers its schemes
with ``@register``, keyed by name (each with its own params type)."""

from __future__ import annotations

import functools
import importlib
from typing import Any

from pydantic import ValidationError

from ..errors import InvalidInput, UnknownScheme
from .base import Scheme, SchemeParams

#: The modules that define schemes. Adding a family: write its module, add it here.
SCHEME_MODULES = (
    "absmax", "affine", "binary", "bitcodes", "blockwise", "codebook", "distributional", "hqq", "lloyd", "tcq",
    "transform",
)

_REGISTRY: dict[str, Scheme] = {}
_loaded = False


def register(cls: type[Scheme]) -> type[Scheme]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"scheme {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in SCHEME_MODULES:
        importlib.import_module(f"{__package__}.{mod}")
    _loaded = True


def all_schemes() -> dict[str, Scheme]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_scheme(name: Any) -> Scheme:
    _load_all()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownScheme(f"unknown scheme {name!r}; known schemes: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def setting_warnings(scheme: Scheme, params: SchemeParams) -> list[str]:
    """What a scheme says about settings it accepts but that are for one use only
    (a scheme's optional ``warnings(params)``); /fit and /quantize answer them."""
    fn = getattr(scheme, "warnings", None)
    return list(fn(params)) if fn is not None else []


def _format_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "params"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


def parse_params(scheme: Scheme, params: Any) -> SchemeParams:
    if isinstance(params, scheme.Params):
        return params
    if not isinstance(params, dict):
        raise InvalidInput(f"params must be an object, got {type(params).__name__}")
    try:
        return scheme.Params.model_validate(params)
    except ValidationError as e:
        raise InvalidInput(f"invalid params for scheme {scheme.name!r}: {_format_validation(e)}") from None


def describe(scheme: Scheme) -> dict[str, Any]:
    """The /schemes entry: summary and parameters, generated from the Params model."""
    schema = scheme.Params.model_json_schema()
    props = schema.get("properties", {})
    out = {}
    for pname, f in scheme.Params.model_fields.items():
        p = dict(props.get(pname, {}))
        p.pop("title", None)
        entry: dict[str, Any] = {"default": f.default if f.default is not ... else None}
        if f.is_required():
            entry["required"] = True
        if "anyOf" in p:
            entry["type"] = [a.get("type", "enum") for a in p["anyOf"] if a]
            for a in p["anyOf"]:
                for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum"):
                    if k in a:
                        entry[k] = a[k]
        else:
            entry["type"] = p.get("type", "enum" if "enum" in p else "any")
        for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "description"):
            if k in p:
                entry[k] = p[k]
        if f.description and "description" not in entry:
            entry["description"] = f.description
        out[pname] = entry
    return {
        "name": scheme.name,
        "version": scheme.version,
        "summary": scheme.summary,
        "data_dependent": scheme.data_dependent,
        "params": out,
    }


@functools.cache
def schemes_document() -> dict[str, Any]:
    """The GET /schemes document, built once (the registry never changes at run time)."""
    from .packing import ALLOWED_BITS
    from .recommended import document

    return {
        "schemes": [describe(s) for s in all_schemes().values()],
        # one data-oblivious and one fitted setting per budget, with what each measured
        "recommended": document(),
        "packing": {
            "word": "int64, little-endian in binary form, two's complement",
            "rule": "v = 64 // bits symbols per word; symbol j of a row in word j // v at bit (j % v) * bits, "
            "least significant bits first; unused bits zero",
            "bits": list(ALLOWED_BITS),
        },
    }
