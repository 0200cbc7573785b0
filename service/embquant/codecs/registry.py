"""The scheme registry. Every module in this package that is not private and not
core infrastructure is imported once, and registers its schemes with
``@register``; adding a family means adding a module, nothing else."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import ValidationError

from ..errors import InvalidInput, UnknownScheme
from .base import Scheme, SchemeParams

_REGISTRY: dict[str, Scheme] = {}
_INFRA = {"base", "registry", "packing", "rotation", "tables"}
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
    from . import __name__ as pkg, __path__ as path

    for mod in sorted(m.name for m in pkgutil.iter_modules(path)):
        if not mod.startswith("_") and mod not in _INFRA:
            importlib.import_module(f"{pkg}.{mod}")
    _loaded = True


def all_schemes() -> dict[str, Scheme]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_scheme(name: Any) -> Scheme:
    _load_all()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownScheme(f"unknown scheme {name!r}; known schemes: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


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
