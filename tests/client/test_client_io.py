"""The client's file helpers: Codec.save/load, Encoded.to_bytes/from_bytes, and bulk
quantize (order, bounded in-flight chunks, retries, progress, resume) on a mock
transport."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time

import httpx
import msgpack
import numpy as np
import pytest

import embquant_client as ec
from embquant_client import _core, _models

CODEC = {"format_version": 1, "scheme": "toy", "scheme_version": 1, "dim": 3, "params": {}, "state": {}}
LAYOUT = {"bits": 4, "symbols": 3, "words": 2, "side": 1, "levels": 16, "bits_per_vector": 44}


def encoded(n=5, words=2, side=1, cid="c" * 64):
    rng = np.random.default_rng(n)
    codes = rng.integers(-2**63, 2**63 - 1, size=(n, words), dtype=np.int64)
    sv = rng.standard_normal((n, side)).astype(np.float32) if side else None
    return ec.Encoded(codes=codes, side=sv, codec=CODEC, shape=(n, 3),
                      layout={**LAYOUT, "words": words, "side": side}, codec_id=cid)


# -- Codec.save / load ------------------------------------------------------------------
def test_codec_save_load_round_trip(tmp_path):
    c = ec.Codec(codec=CODEC, layout=LAYOUT, codec_id="a" * 64)
    p = tmp_path / "codec.json"
    c.save(p)
    back = ec.Codec.load(p)
    assert back == c and back.dim == 3
    assert ec.Codec is ec.Fitted
    assert json.loads(p.read_text())["embquant_codec_file"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["codec.json"]  # no temporary left behind


def test_codec_save_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "codec.json"
    ec.Codec(codec=CODEC, layout=LAYOUT).save(p)
    before = p.read_bytes()

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(_models.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        ec.Codec(codec={**CODEC, "dim": 9}, layout=LAYOUT).save(p)
    assert p.read_bytes() == before  # the old file, whole
    assert [f.name for f in tmp_path.iterdir()] == ["codec.json"]


def test_codec_load_accepts_a_bare_codec_dict(tmp_path):
    p = tmp_path / "bare.json"
    p.write_text(json.dumps(CODEC))
    c = ec.Codec.load(p)
    assert c.codec == CODEC and c.layout == {} and c.codec_id is None


@pytest.mark.parametrize("text, msg", [
    ("{not json", "not JSON"),
    ("[1, 2]", "holds no codec"),
    ('{"embquant_codec_file": 2, "codec": {}}', "version 2"),
    ('{"embquant_codec_file": 1, "codec": {"scheme": "x"}}', "holds no codec"),
])
def test_codec_load_rejects_what_is_not_a_codec(tmp_path, text, msg):
    p = tmp_path / "c.json"
    p.write_text(text)
    with pytest.raises(ValueError, match=msg):
        ec.Codec.load(p)


# -- Encoded.to_bytes / from_bytes --------------------------------------------------------
@pytest.mark.parametrize("words, side", [(2, 1), (6, 0), (1, 12)])
def test_whole_bytes_round_trip(words, side):
    enc = encoded(7, words, side)
    data = enc.to_bytes()
    assert len(data) == 72 + 7 * (8 * words + 4 * side)
    back = ec.Encoded.from_bytes(data)
    assert np.array_equal(back.codes, enc.codes) and back.codes.dtype == np.int64
    if side:
        assert np.array_equal(back.side, enc.side) and back.side.dtype == np.float32
    else:
        assert back.side is None
    assert back.shape == (7, 3) and back.codec_id == enc.codec_id
    assert back.layout["words"] == words and back.layout["symbols"] == 3 and back.layout["bits"] == 4


def test_whole_bytes_layout_is_the_documented_one():
    """Header fields at their documented offsets, then per-row values: int64 words
    little-endian, then float32 side values little-endian."""
    enc = encoded(2, 2, 1)
    data = enc.to_bytes()
    assert data[:8] == b"EMBQCODE"
    version, hsize, bits, _, rows, dim, words, side, symbols = struct.unpack_from("<HHHHQIIII", data, 8)
    assert (version, hsize, bits, rows, dim, words, side, symbols) == (1, 72, 4, 2, 3, 2, 1, 3)
    assert data[40:72] == bytes.fromhex("c" * 64)
    row1 = data[72 + 20:72 + 40]
    assert struct.unpack("<qqf", row1) == (int(enc.codes[1, 0]), int(enc.codes[1, 1]), float(enc.side[1, 0]))


def test_per_row_bytes_round_trip_and_match_the_whole_form():
    enc = encoded(4, 2, 1)
    rows = enc.to_bytes(per_row=True)
    assert len(rows) == 4 and all(len(r) == 20 for r in rows)
    assert b"".join(rows) == enc.to_bytes()[72:]
    codec = ec.Codec(codec=CODEC, layout=enc.layout, codec_id=enc.codec_id)
    back = ec.Encoded.from_bytes(rows[1:3], codec=codec)
    assert np.array_equal(back.codes, enc.codes[1:3]) and np.array_equal(back.side, enc.side[1:3])
    assert back.shape == (2, 3) and back.codec == CODEC
    also = ec.Encoded.from_bytes(enc.row_bytes(), layout=enc.layout, dim=3)
    assert np.array_equal(also.codes, enc.codes)


def test_empty_encoded_round_trips():
    enc = encoded(0, 2, 1)
    back = ec.Encoded.from_bytes(enc.to_bytes())
    assert back.codes.shape == (0, 2) and back.side.shape == (0, 1)


@pytest.mark.parametrize("mangle, msg", [
    (lambda d: d[:50], "too short"),
    (lambda d: d[:-3], "truncated"),
    (lambda d: d + b"\0", "trailing bytes"),
    (lambda d: b"NOTCODES" + d[8:], "not encoded codes"),
    (lambda d: d[:8] + struct.pack("<H", 9) + d[10:], "version 9"),
])
def test_corrupt_whole_bytes_raise_value_error(mangle, msg):
    with pytest.raises(ValueError, match=msg):
        ec.Encoded.from_bytes(mangle(encoded(3).to_bytes()))


def test_bad_per_row_bytes_raise_value_error():
    enc = encoded(3)
    rows = enc.to_bytes(per_row=True)
    with pytest.raises(ValueError, match="row 1 has 19 bytes, the layout's rows are 20"):
        ec.Encoded.from_bytes([rows[0], rows[1][:-1]], layout=enc.layout)
    with pytest.raises(ValueError, match="need the codec's layout"):
        ec.Encoded.from_bytes(rows)
    with pytest.raises(ValueError, match="not bytes"):
        ec.Encoded.from_bytes(["abc"], layout=enc.layout)
    other = ec.Codec(codec=CODEC, layout=LAYOUT, codec_id="d" * 64)
    with pytest.raises(ValueError, match="made with codec c+, not d+"):
        ec.Encoded.from_bytes(enc.to_bytes(), codec=other)


# -- bulk quantize on a mock service ------------------------------------------------------
D = 4
BULK_CODEC = ec.Codec(codec={**CODEC, "dim": D}, layout={**LAYOUT, "words": 2, "side": 1}, codec_id="e" * 64)


def _arr(a):
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


class ToyService:
    """/quantize: codes (row id, 3 * row id) and side (the second value) of rows whose
    first value is their row id; /dequantize back. Records the rows each request
    carried; ``fail_at``: the request number answered 400 (not retried),
    ``flaky``: request numbers answered 503 once (retried)."""

    def __init__(self, fail_at=None, flaky=(), delay=None):
        self.sent: list[list[int]] = []
        self.fail_at, self.flaky, self.delay = fail_at, set(flaky), delay
        self.lock = threading.Lock()
        self.active = self.most_active = 0

    def __call__(self, request: httpx.Request):
        if request.url.path == "/limits":
            return httpx.Response(404, json={"error": {"type": "not_found", "message": "old"}})
        body = msgpack.unpackb(request.content, raw=False)
        with self.lock:
            n = len(self.sent) + 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if self.delay:
                time.sleep(self.delay(n))
            if n in self.flaky:
                self.flaky.discard(n)
                with self.lock:
                    self.sent.append([])
                return httpx.Response(503, json={"error": {"type": "unavailable", "message": "busy"}})
            if request.url.path == "/quantize":
                v = body["vectors"]
                x = np.frombuffer(v["data"], "<f4").reshape(v["shape"])
                with self.lock:
                    self.sent.append(x[:, 0].astype(int).tolist())
                if n == self.fail_at:
                    return httpx.Response(400, json={"error": {"type": "validation", "message": "boom"}})
                ids = x[:, 0].astype(np.int64)
                return httpx.Response(200, json={"codes": _arr(np.stack([ids, 3 * ids], 1)), "side": _arr(x[:, 1:2].copy()),
                                                 "shape": list(x.shape), "layout": BULK_CODEC.layout, "codec_id": "e" * 64})
            c = body["codes"]
            codes = np.frombuffer(c["data"], "<i8").reshape(c["shape"])
            side = np.frombuffer(body["side"]["data"], "<f4").reshape(body["side"]["shape"])
            with self.lock:
                self.sent.append(codes[:, 0].tolist())
            y = np.zeros((codes.shape[0], D), np.float32)
            y[:, 0], y[:, 1] = codes[:, 0], side[:, 0]
            return httpx.Response(200, json={"vectors": _arr(y), "shape": list(y.shape)})
        finally:
            with self.lock:
                self.active -= 1


def toy_client(service):
    return ec.Client("http://t", http_client=httpx.Client(transport=httpx.MockTransport(service), base_url="http://t"))


def rows(n, start=0):
    x = np.random.default_rng(n).standard_normal((n, D)).astype(np.float32)
    x[:, 0] = np.arange(start, start + n)
    return x


@pytest.fixture
def no_sleep(monkeypatch):
    monkeypatch.setattr(_core.random, "random", lambda: 1.0)
    monkeypatch.setattr("time.sleep", lambda s: None)


def test_bulk_keeps_order_with_answers_out_of_order():
    svc = ToyService(delay=lambda n: 0.02 * ((7 - n) % 4))  # later requests often answer first
    x = rows(1000)
    got = list(toy_client(svc).quantize_bulk(x, BULK_CODEC, chunk_rows=64, concurrency=4))
    assert [len(e) for e in got] == [64] * 15 + [40]
    codes = np.concatenate([e.codes for e in got])
    assert codes[:, 0].tolist() == list(range(1000)) and np.array_equal(codes[:, 1], 3 * codes[:, 0])
    assert np.array_equal(np.concatenate([e.side for e in got])[:, 0], x[:, 1])
    assert sorted(sum(svc.sent, [])) == list(range(1000))  # each row sent once
    assert 1 < svc.most_active <= 4


def test_bulk_is_lazy_and_bounded():
    """Blocks are read from the input only as the caller takes answers: at most
    ``concurrency`` (+1 being read) ahead of the one it holds."""
    svc = ToyService()
    taken = []

    def source():
        for i in range(50):
            taken.append(i)
            yield rows(10, 10 * i)

    it = toy_client(svc).quantize_bulk(source(), BULK_CODEC, chunk_rows=10, concurrency=3)
    first = next(it)
    assert first.codes[:, 0].tolist() == list(range(10))
    assert len(taken) <= 3 + 2
    rest = list(it)
    assert sum(len(e) for e in rest) == 490 and len(taken) == 50


def test_bulk_regroups_an_iterator_of_uneven_chunks_and_starts_at_a_row():
    svc = ToyService()
    chunks = [rows(7, 0), rows(30, 7), rows(1, 37), rows(62, 38)]
    got = list(toy_client(svc).quantize_bulk(iter(chunks), BULK_CODEC, chunk_rows=25, start_row=20, concurrency=2))
    assert [len(e) for e in got] == [25, 25, 25, 5]
    assert np.concatenate([e.codes for e in got])[:, 0].tolist() == list(range(20, 100))
    assert min(sum(svc.sent, [])) == 20  # rows before start_row were never sent


def test_bulk_retries_a_chunk_and_reports_progress(no_sleep):
    svc = ToyService(flaky={2, 5})
    seen = []
    got = list(toy_client(svc).quantize_bulk(rows(300), BULK_CODEC, chunk_rows=50, concurrency=2,
                                             progress=lambda done, total: seen.append((done, total))))
    assert np.concatenate([e.codes for e in got])[:, 0].tolist() == list(range(300))
    assert len(svc.sent) == 6 + 2  # two chunks retried once
    assert seen == [(50 * i, 300) for i in range(1, 7)]


def test_bulk_error_is_raised_in_order(no_sleep):
    svc = ToyService(fail_at=3)
    it = toy_client(svc).quantize_bulk(rows(300), BULK_CODEC, chunk_rows=50, concurrency=1)
    assert len(next(it)) == 50 and len(next(it)) == 50
    with pytest.raises(ec.BadRequestError, match="boom"):
        next(it)


def test_bulk_checks_the_codec_dimension_before_sending():
    svc = ToyService()
    with pytest.raises(ValueError, match="vectors have 5 dimensions, the codec was fitted for 4"):
        toy_client(svc).quantize_bulk(np.zeros((10, 5), np.float32), BULK_CODEC)
    assert svc.sent == []


def test_dequantize_bulk_round_trips_in_order():
    svc = ToyService()
    c = toy_client(svc)
    x = rows(230)
    enc = ec.Encoded(codes=np.stack([np.arange(230), 3 * np.arange(230)], 1), side=x[:, 1:2].copy(), codec=BULK_CODEC.codec,
                     shape=(230, D), layout=BULK_CODEC.layout, codec_id="e" * 64)
    y = np.concatenate(list(c.dequantize_bulk(enc, chunk_rows=40, concurrency=3)))
    assert np.array_equal(y[:, 0], np.arange(230)) and np.array_equal(y[:, 1], x[:, 1])


# -- files: resumable, never partial ------------------------------------------------------
def test_quantize_to_file_resumes_without_resending_done_rows(tmp_path, no_sleep):
    x = rows(500)
    src = tmp_path / "x.npy"
    np.save(src, x)
    out = tmp_path / "codes.npy"
    svc = ToyService(fail_at=4)  # the 4th block fails: 3 are on disk
    with pytest.raises(ec.BadRequestError):
        toy_client(svc).quantize_to_file(str(src), BULK_CODEC, out, chunk_rows=60, concurrency=1)
    assert not out.exists()  # never a partial file under the output's name
    state = json.loads((tmp_path / "codes.npy.embquant-resume.json").read_text())
    assert state["rows"] == 180
    svc2 = ToyService()
    seen = []
    res = toy_client(svc2).quantize_to_file(str(src), BULK_CODEC, out, chunk_rows=60, concurrency=3,
                                            progress=lambda d, t: seen.append((d, t)))
    assert res == {"rows": 500, "resumed_rows": 180, "codec_id": "e" * 64}
    assert min(sum(svc2.sent, [])) == 180 and len(sum(svc2.sent, [])) == 320  # no done row sent again
    assert seen[0] == (180, 500) and seen[-1] == (500, 500)
    got = np.load(out)
    assert got["codes"][:, 0].tolist() == list(range(500)) and np.array_equal(got["side"][:, 0], x[:, 1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npy", "x.npy"]  # spool and record gone


def test_a_changed_input_starts_again(tmp_path, no_sleep):
    src = tmp_path / "x.npy"
    np.save(src, rows(200))
    out = tmp_path / "codes.npz"
    with pytest.raises(ec.BadRequestError):
        toy_client(ToyService(fail_at=2)).quantize_to_file(str(src), BULK_CODEC, out, chunk_rows=50, concurrency=1)
    np.save(src, rows(120))  # not the file the record was made from
    svc = ToyService()
    res = toy_client(svc).quantize_to_file(str(src), BULK_CODEC, out, chunk_rows=50)
    assert res["resumed_rows"] == 0 and sorted(sum(svc.sent, [])) == list(range(120))
    z = np.load(out)
    assert z["codes"][:, 0].tolist() == list(range(120)) and str(z["codec_id"]) == "e" * 64
    assert json.loads(z["codec"].tobytes()) == BULK_CODEC.codec


def test_a_failure_before_any_row_leaves_nothing(tmp_path, no_sleep):
    src = tmp_path / "x.npy"
    np.save(src, rows(100))
    with pytest.raises(ec.BadRequestError):
        toy_client(ToyService(fail_at=1)).quantize_to_file(str(src), BULK_CODEC, tmp_path / "c.npy", chunk_rows=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_a_torn_spool_is_cut_back_to_the_recorded_rows(tmp_path):
    """Bytes past the rows the record holds (a block cut short) are dropped."""
    from embquant_client._bulk import Spool

    fp = {"input": 1}
    s = Spool(tmp_path / "o.npy", 4, fp)
    assert s.open() == 0
    s.append(b"aaaabbbb")
    s._f.write(b"cc")  # a crash mid-append: bytes on disk, not recorded
    s.close()
    s2 = Spool(tmp_path / "o.npy", 4, fp)
    assert s2.open() == 2 and s2.resumed
    s2.append(b"dddd")
    assert s2.read(0, 3) == b"aaaabbbbdddd"
    s2.close()
    assert Spool(tmp_path / "o.npy", 4, {"input": 2}).open() == 0  # another job: from scratch


def test_the_record_names_only_rows_synced_to_disk(tmp_path):
    from embquant_client._bulk import Spool

    s = Spool(tmp_path / "o.npy", 4, {"input": 1}, sync_s=3600)
    s.open()
    s.append(b"aaaabbbb")
    record = tmp_path / "o.npy.embquant-resume.json"
    assert json.loads(record.read_text())["rows"] == 0  # written, not yet synced: a kill now resends them
    s.sync()
    assert json.loads(record.read_text())["rows"] == 2
    s.append(b"cccc")
    s.close()  # an error or Ctrl-C closes the spool: what was written is synced and recorded
    assert json.loads(record.read_text())["rows"] == 3


def test_quantize_to_file_asks_a_bare_codec_its_layout_without_touching_the_input(tmp_path):
    """A codec with no layout (a bare codec dict): one probe row of noise tells the
    layout; an iterator input is read once, from its first row."""
    svc = ToyService()
    chunks = iter([rows(30, 0), rows(30, 30)])
    res = toy_client(svc).quantize_to_file(chunks, {**CODEC, "dim": D}, tmp_path / "c.npy", chunk_rows=25)
    assert res["rows"] == 60
    got = np.load(tmp_path / "c.npy")
    assert got["codes"][:, 0].tolist() == list(range(60))
    assert len(svc.sent) == 1 + 3 and len(svc.sent[0]) == 1  # the probe, then 25 + 25 + 10 rows


def test_cli_params_and_progress_bar(capsys):
    from embquant_client import _cli

    args = _cli._parser().parse_args(["fit", "x.npy", "--scheme", "lloyd", "--param", "bits=4", "--param",
                                      "rotate=false", "--param", "name=abc", "-o", "c.json"])
    assert dict(args.param) == {"bits": 4, "rotate": False, "name": "abc"}
    with pytest.raises(SystemExit):
        _cli._parser().parse_args(["fit", "x.npy", "--scheme", "s", "--param", "nokey", "-o", "c.json"])
    assert "--param takes key=value" in capsys.readouterr().err
    bar = _cli._Bar(True, "quantize")
    bar(100, 250)
    bar(250, 250)
    assert (bar.bar.n, bar.bar.total) == (250, 250)
    bar.close()
    assert "250/250" in capsys.readouterr().err
    quiet = _cli._Bar(False, "quantize")
    quiet(10, 20)
    assert quiet.bar is None and capsys.readouterr().err == ""


def test_cli_sends_the_api_key(monkeypatch, tmp_path, capsys):
    """--api-key, else EMBQUANT_API_KEY, goes as a Bearer token; a 401 ends in one line."""
    from embquant_client import _cli

    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, json={"error": {"type": "unauthorized", "message": "a valid API key is needed"}})

    real = httpx.Client
    monkeypatch.setattr("embquant_client._client.httpx.Client",
                        lambda **kw: real(transport=httpx.MockTransport(handler), **kw))
    np.save(tmp_path / "x.npy", rows(5))
    BULK_CODEC.save(tmp_path / "c.json")
    argv = ["quantize", str(tmp_path / "x.npy"), "--codec", str(tmp_path / "c.json"), "-o", str(tmp_path / "o.npy"),
            "--server", "http://t"]
    monkeypatch.setenv("EMBQUANT_API_KEY", "from-env")
    assert _cli.main(argv + ["--api-key", "from-flag"]) == 1
    assert _cli.main(argv) == 1
    # /limits (a refusal there falls back to default limits), then /quantize; a 401 is not retried
    assert seen == ["Bearer from-flag"] * 2 + ["Bearer from-env"] * 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(e.startswith("embquant-client: error: the service refused the request: 401 "
                                              "unauthorized: a valid API key is needed") for e in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "x.npy"]


def test_parquet_resume_skips_row_groups_and_keeps_ids_aligned(tmp_path, no_sleep):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x = rows(450)
    ids = [f"id{i}" for i in range(450)]
    src = tmp_path / "x.parquet"
    pq.write_table(pa.table({"doc": ids, "v": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), D)}), src,
                   row_group_size=100)
    out = tmp_path / "codes.parquet"
    with pytest.raises(ec.BadRequestError):  # 3 blocks of 70 done: row 210 is inside the third row group
        toy_client(ToyService(fail_at=4)).quantize_to_file(str(src), BULK_CODEC, out, chunk_rows=70, concurrency=1)
    svc = ToyService()
    res = toy_client(svc).quantize_to_file(str(src), BULK_CODEC, out, chunk_rows=70)
    assert res["resumed_rows"] == 210 and sorted(sum(svc.sent, [])) == list(range(210, 450))
    t = pq.read_table(out)
    assert t.column_names == ["doc", "codes", "side"] and t.column("doc").to_pylist() == ids
    codes = np.frombuffer(b"".join(t.column("codes").to_pylist()), "<i8").reshape(450, 2)
    assert codes[:, 0].tolist() == list(range(450))
    assert t.schema.metadata[b"embquant.codec_id"] == b"e" * 64


def test_a_second_job_on_the_same_output_is_refused(tmp_path):
    from embquant_client._bulk import Spool

    first = Spool(tmp_path / "o.npy", 4, {"input": 1})
    first.open()
    first.append(b"aaaa")
    with pytest.raises(ValueError, match=r"another job is writing .*o\.npy \(its spool is locked\)"):
        Spool(tmp_path / "o.npy", 4, {"input": 1}).open()
    first.close()
    again = Spool(tmp_path / "o.npy", 4, {"input": 1})
    assert again.open() == 1  # the lock went with the first job
    again.close()


def test_parquet_output_without_pyarrow_fails_before_any_request(tmp_path, monkeypatch):
    """A Parquet output needs pyarrow: without it the job stops with one clear error
    before it reads the input or sends anything (the import itself runs in a thread
    while the job encodes, `_io._arrow_soon`)."""
    from embquant_client import _io

    real = _io.importlib.util.find_spec
    monkeypatch.setattr(_io.importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))

    class NoClient:
        def __getattr__(self, name):
            raise AssertionError(f"the client was used ({name})")

    with pytest.raises(_io.InputError, match="Parquet needs pyarrow"):
        _io.quantize_file(NoClient(), np.zeros((4, 8), np.float32), {"scheme": "lloyd"}, tmp_path / "out.parquet")
    assert not list(tmp_path.iterdir())
