"""Parsed codecs by content, so a collection's codec is parsed (and copied to the
device) once, not per request; bounded in entries and in bytes.

A codec's id is the SHA-256 of its JSON with sorted keys (64 hex digits): the same
codec has the same id on every replica, so requests may send ``codec_id`` instead
of the codec, and any replica that has seen the codec (or, with
``EMBQUANT_CODEC_DIR``, any replica sharing that directory, and a restarted one)
serves it. A replica that does not know an id answers 404 ``unknown_codec``; the
client then sends the codec once. With a directory, codecs are also kept there as
``<id>.json`` (written atomically, read back only when their hash matches their
name), oldest out beyond ``EMBQUANT_CODEC_DIR_BYTES``.

A codec's cost is its learned arrays plus what encoding and decoding derive from
them and keep on the codec (device copies, decoding plans): a ``transform`` codec of
dimension 2048 holds 16 MiB of basis and several times that once used. The cost of
an entry is measured again each time it is used, so a codec that grows once it
is used is accounted for at its next use, and least recently used entries leave
until both bounds hold (the entry just used always stays: the request needs it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import orjson
import torch

from .. import codecs
from ..errors import InvalidInput, PayloadTooLarge, UnknownCodec

log = logging.getLogger("embquant.api")
_ID = re.compile(r"[0-9a-f]{64}")


def codec_id(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def canonical(obj: Any) -> bytes:
    """The codec's JSON with sorted keys: what its id hashes."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as e:
        # orjson writes at most 254 levels of nesting; a codec has four
        why = "nested more than 254 levels deep" if "ecursion" in str(e) else str(e)
        raise InvalidInput(f"codec is not a JSON object of arrays and parameters: {why}") from None


def nbytes(obj: Any, _depth: int = 0) -> int:
    """Bytes held by the arrays and tensors in ``obj`` (dicts, lists, tuples of them)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if _depth > 4:
        return 0
    if isinstance(obj, dict):
        try:
            values = list(obj.values())  # the device thread may add entries meanwhile
        except RuntimeError:
            return 0
        return sum(nbytes(v, _depth + 1) for v in values)
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v, _depth + 1) for v in obj)
    return 0


def codec_cost(codec: codecs.Codec) -> int:
    # On the CPU the device copies share the state's memory and count twice: an
    # over-estimate, which errs on the bounded side.
    return nbytes(dict(codec.state)) + nbytes(codec._cache)


class CodecCache:
    def __init__(self, entries: int = 256, max_bytes: int = 256 << 20, *, max_dim: int | None = None,
                 max_codec_bytes: int | None = None, directory: str | None = None, dir_bytes: int = 1 << 30):
        self.entries = entries
        self.max_bytes = max_bytes
        self.max_dim = max_dim
        self.max_codec_bytes = max_codec_bytes
        self._d: OrderedDict[str, codecs.Codec] = OrderedDict()
        self._cost: dict[str, tuple[int, int]] = {}  # id -> (bytes, derived entries measured)
        self.bytes = 0
        # large bodies are parsed in the thread pool: several threads may be here at once
        self._lock = threading.Lock()
        # codecs given by scheme name with codecs.learns False: (name, params, dim) -> (codec, id)
        self._named: OrderedDict[tuple, tuple[codecs.Codec, str]] = OrderedDict()
        # (name, params as sent, dim) -> its key in _named: a repeated by-name request
        # skips parsing its params (`named_as_sent`)
        self._sent: OrderedDict[tuple, tuple] = OrderedDict()
        self.directory = directory
        self.dir_bytes = dir_bytes
        if directory:
            os.makedirs(directory, exist_ok=True)

    def __len__(self) -> int:
        return len(self._d)

    def get(self, obj: dict[str, Any]) -> codecs.Codec:
        return self.resolve(obj)[0]

    def resolve(self, obj: dict[str, Any]) -> tuple[codecs.Codec, str]:
        """The parsed codec for its JSON form, and its id; raises InvalidInput (or
        PayloadTooLarge) with a message for anything malformed, too deep, too wide or
        too large."""
        if isinstance(obj, dict) and self.max_dim is not None:
            dim = obj.get("dim")
            if isinstance(dim, int) and not isinstance(dim, bool) and dim > self.max_dim:
                raise InvalidInput(f"codec dim {dim} exceeds the limit of {self.max_dim} dimensions (EMBQUANT_MAX_DIM)")
        blob = canonical(obj)
        if self.max_codec_bytes is not None and len(blob) > self.max_codec_bytes:
            raise PayloadTooLarge(
                f"codec of {len(blob)} bytes exceeds the limit of {self.max_codec_bytes} bytes (EMBQUANT_MAX_CODEC_BYTES)"
            )
        key = codec_id(blob)
        c = self._lookup(key)
        if c is not None:
            return c, key
        c = codecs.codec_from_json(obj)  # outside the lock: parsing may take a while
        self._store(key, blob)
        return self._insert(key, c), key

    def by_id(self, key: Any) -> tuple[codecs.Codec, str]:
        """The codec with this id, from memory or the codec directory; UnknownCodec (404)
        when this replica does not hold it."""
        if not isinstance(key, str) or not _ID.fullmatch(key):
            raise InvalidInput("codec_id must be 64 lower-case hex digits (the id a /fit or /quantize answer gave)")
        c = self._lookup(key)
        if c is not None:
            return c, key
        blob = self._load(key)
        if blob is None:
            raise UnknownCodec(
                f"codec {key} is not known to this replica (never sent here, or evicted): send the codec itself "
                "once, as \"codec\"; the answer gives its id again"
            )
        c = codecs.codec_from_json(orjson.loads(blob))
        return self._insert(key, c), key

    def add(self, codec: codecs.Codec) -> str:
        """Keep a codec this replica fitted; returns its id."""
        blob = canonical(codec.to_json())
        key = codec_id(blob)
        if self.max_codec_bytes is None or len(blob) <= self.max_codec_bytes:
            self._store(key, blob)
            self._insert(key, codec)
        return key

    @staticmethod
    def _sent_key(name: Any, raw: Any, dim: int) -> tuple | None:
        try:
            return (name, orjson.dumps(raw, option=orjson.OPT_SORT_KEYS), dim)
        except TypeError:  # bytes or other values JSON has no form for: not remembered
            return None

    def named_as_sent(self, name: Any, raw: Any, dim: int) -> tuple[codecs.Codec, str] | None:
        """The codec an earlier by-name request with this very scheme name and params
        resolved to (`named`), without parsing the params again; None if none did."""
        rk = self._sent_key(name, raw, dim)
        if rk is None:
            return None
        with self._lock:
            k = self._sent.get(rk)
            hit = None if k is None else self._named.get(k)
            if hit is not None:
                self._named.move_to_end(k)
        if hit is not None and self._lookup(hit[1]) is None:
            self._insert(hit[1], hit[0])
        return hit

    def named(self, scheme: codecs.Scheme, params: codecs.SchemeParams, dim: int,
              sent: tuple[Any, Any] | None = None) -> tuple[codecs.Codec, str]:
        """The codec of a scheme that learns nothing (``codecs.learns(scheme, params)`` False),
        resolved once per (scheme, params, dim): such requests then batch like
        requests that send a codec. ``sent``: the request's scheme name and params as
        it sent them, remembered for `named_as_sent`."""
        k = (scheme.name, orjson.dumps(params.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS), dim)
        rk = None if sent is None else self._sent_key(sent[0], sent[1], dim)
        if rk is not None:
            with self._lock:
                self._sent[rk] = k
                while len(self._sent) > self.entries:
                    self._sent.popitem(last=False)
        with self._lock:
            hit = self._named.get(k)
            if hit is not None:
                self._named.move_to_end(k)
        if hit is None:
            c = codecs.fit(scheme, params, torch.zeros(1, dim))
            blob = canonical(c.to_json())
            hit = (c, codec_id(blob))
            self._store(hit[1], blob)
            with self._lock:
                hit = self._named.setdefault(k, hit)
                while len(self._named) > self.entries:
                    self._named.popitem(last=False)
        # its id is answered, so later requests may send it: keep it among the codecs by id
        if self._lookup(hit[1]) is None:
            self._insert(hit[1], hit[0])
        return hit

    def _lookup(self, key: str) -> codecs.Codec | None:
        with self._lock:
            c = self._d.get(key)
            if c is not None:
                self._d.move_to_end(key)
                self._account(key, c)
            return c

    def _insert(self, key: str, c: codecs.Codec) -> codecs.Codec:
        with self._lock:
            c = self._d.setdefault(key, c)
            self._d.move_to_end(key)
            self._account(key, c)
        return c

    # -- the codec directory -------------------------------------------------------
    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key + ".json")

    def _load(self, key: str) -> bytes | None:
        if not self.directory:
            return None
        try:
            with open(self._path(key), "rb") as f:
                blob = f.read()
        except OSError:
            return None
        if codec_id(blob) != key:  # a torn or altered file is not that codec
            log.warning("codec file %s does not match its name; ignored", self._path(key))
            return None
        return blob

    def _store(self, key: str, blob: bytes) -> None:
        if not self.directory or os.path.exists(self._path(key)):
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, self._path(key))
            self._trim_dir()
        except OSError as e:  # a full or read-only disk costs the restart cache, not the request
            log.warning("could not keep codec %s in %s: %s", key, self.directory, e)

    def _trim_dir(self) -> None:
        files = []
        with os.scandir(self.directory) as it:
            for e in it:
                if e.name.endswith(".json") and e.is_file():
                    st = e.stat()
                    files.append((st.st_mtime, st.st_size, e.path))
        total = sum(f[1] for f in files)
        for _, size, path in sorted(files):
            if total <= self.dir_bytes:
                break
            try:
                os.remove(path)
                total -= size
            except OSError:
                pass

    def _account(self, key: str, codec: codecs.Codec) -> None:
        # A codec's derived state only grows, one entry at a time, and an entry once
        # made is not resized: measure again only when the number of entries changed
        # (a lookup is on every request's path; measuring is not free).
        n = len(codec._cache)
        prev, seen = self._cost.get(key, (0, -1))
        if n != seen:
            cost = codec_cost(codec)
            self.bytes += cost - prev
            self._cost[key] = (cost, n)
        while len(self._d) > 1 and (len(self._d) > self.entries or self.bytes > self.max_bytes):
            old, _ = self._d.popitem(last=False)
            self.bytes -= self._cost.pop(old, (0, -1))[0]
