"""FastPath's header lookup (`api.fast._Headers`): the routes read Content-Type and
Accept from the raw ASGI headers, case-insensitively, a repeated header as its last
value (as Admission's Content-Type check reads it)."""

from embquant.api.fast import _Headers


def test_lookup_is_case_insensitive_and_a_repeated_header_reads_as_its_last_value():
    h = _Headers([(b"content-type", b"application/json"), (b"accept", b"application/msgpack"),
                  (b"content-type", b"application/msgpack; charset=x")])
    assert h.get("Content-Type") == "application/msgpack; charset=x"
    assert h.get("accept") == "application/msgpack"
    assert h.get("authorization") is None
    assert h.get("x-missing", "fallback") == "fallback"


def test_values_are_latin_1():
    assert _Headers([(b"accept", "text/caf\u00e9".encode("latin-1"))]).get("accept") == "text/caf\u00e9"
