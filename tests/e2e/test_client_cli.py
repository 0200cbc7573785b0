"""End to end: the embquant-client command against a real server, checked against the
codecs run in-process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import embquant_client as ec
from embquant import codecs
from embquant_client._cli import main

D = 48


class Run:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(server, *args, check=True):
    """The command, in this process (a subprocess costs a second of imports each)."""
    out, err = io.StringIO(), io.StringIO()
    old = os.environ.get("EMBQUANT_URL")
    os.environ["EMBQUANT_URL"] = server.url
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(args))
    finally:
        if old is None:
            os.environ.pop("EMBQUANT_URL", None)
        else:
            os.environ["EMBQUANT_URL"] = old
    p = Run(rc, out.getvalue(), err.getvalue())
    if check:
        assert p.returncode == 0, p.stderr
    return p


def in_process(codec_json, x):
    c = codecs.codec_from_json(codec_json)
    codes, side = codecs.encode(c, torch.from_numpy(x))
    y = codecs.decode(c, codes, side)
    return codes.numpy(), None if side is None else side.numpy(), y.numpy()


def rows_quantized(server) -> float:
    m = re.search(r'embquant_rows_total\{op="quantize"\} ([0-9.e+]+)', httpx.get(server.url + "/metrics").text)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    x = np.random.default_rng(3).standard_normal((3000, D)).astype(np.float32)
    np.save(d / "x.npy", x)
    ids = np.arange(3000, dtype=np.int64) * 7
    names = pa.array([f"doc-{i}" for i in range(3000)])
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), D)
    pq.write_table(pa.table({"id": ids, "emb": fixed, "name": names}), d / "x.parquet", row_group_size=700)
    pq.write_table(pa.table({"id": ids, "emb": pa.array(list(x), type=pa.list_(pa.float32()))}), d / "xl.parquet")
    return d, x, ids


@pytest.fixture(scope="module")
def codec(server, data):
    d, x, _ = data
    p = cli(server, "fit", str(d / "x.npy"), "--scheme", "lloyd", "--param", "bits=4", "-o", str(d / "codec.json"))
    assert p.stderr == "" and p.stdout == ""  # quiet off a terminal
    return ec.Codec.load(d / "codec.json")


def test_fit_writes_a_codec_the_service_knows(server, codec, data):
    assert codec.codec["scheme"] == "lloyd" and codec.codec["params"]["bits"] == 4 and codec.dim == D
    assert len(codec.codec_id) == 64 and codec.layout["words"] == D * 4 // 64


def test_npy_to_parquet_to_npy_matches_in_process(server, codec, data):
    d, x, _ = data
    out, recon = d / "codes.parquet", d / "recon.npy"
    cli(server, "quantize", str(d / "x.npy"), "--codec", str(d / "codec.json"), "-o", str(out), "--chunk-rows", "700")
    codes, side, y = in_process(codec.codec, x)
    t = pq.read_table(out)
    assert t.schema.field("codes").type == pa.binary(8 * codes.shape[1])
    got = np.frombuffer(b"".join(t.column("codes").to_pylist()), dtype="<i8").reshape(codes.shape)
    assert np.array_equal(got, codes)
    assert np.array_equal(np.array(t.column("side").to_pylist(), dtype=np.float32), side)
    meta = t.schema.metadata
    assert meta[b"embquant.codec_id"].decode() == codec.codec_id
    assert json.loads(meta[b"embquant.codec"]) == codec.codec
    cli(server, "dequantize", str(out), "-o", str(recon), "--chunk-rows", "1000")  # the file's own codec
    assert np.array_equal(np.load(recon), y)
    assert sorted(p.name for p in d.iterdir() if "embquant" in p.name or ".tmp-" in p.name) == []


@pytest.mark.parametrize("src", ["x.parquet", "xl.parquet"])
def test_parquet_ids_carried_in_order(server, codec, data, src):
    d, x, ids = data
    out = d / f"codes-{src}"
    cli(server, "quantize", str(d / src), "--codec", str(d / "codec.json"), "-o", str(out), "--column", "emb",
        "--chunk-rows", "256", "--concurrency", "3")
    codes, _, y = in_process(codec.codec, x)
    t = pq.read_table(out)
    assert t.column("id").to_pylist() == ids.tolist()
    if src == "x.parquet":
        assert t.column_names == ["id", "name", "codes", "side"] and t.column("name")[2999].as_py() == "doc-2999"
    got = np.frombuffer(b"".join(t.column("codes").to_pylist()), dtype="<i8").reshape(codes.shape)
    assert np.array_equal(got, codes)
    recon = d / f"recon-{src}"
    cli(server, "dequantize", str(out), "-o", str(recon), "--column", "vec")
    r = pq.read_table(recon)
    assert r.column("id").to_pylist() == ids.tolist()
    assert np.array_equal(np.array(r.column("vec").to_pylist(), dtype=np.float32), y)


def test_npz_and_npy_outputs(server, codec, data):
    d, x, _ = data
    codes, side, y = in_process(codec.codec, x)
    cli(server, "quantize", str(d / "x.npy"), "--codec", str(d / "codec.json"), "-o", str(d / "c.npz"))
    z = np.load(d / "c.npz", allow_pickle=False)
    assert np.array_equal(z["codes"], codes) and np.array_equal(z["side"], side)
    assert str(z["codec_id"]) == codec.codec_id
    cli(server, "quantize", str(d / "x.npy"), "--codec", str(d / "codec.json"), "-o", str(d / "c.npy"))
    a = np.load(d / "c.npy", allow_pickle=False)
    assert np.array_equal(a["codes"], codes) and np.array_equal(a["side"], side)
    enc = ec.Encoded.from_bytes(a.view(np.uint8).reshape(len(a), -1), codec=codec)  # the per-row byte form
    assert np.array_equal(enc.codes, codes)
    p = cli(server, "dequantize", str(d / "c.npy"), "-o", str(d / "r.npy"), check=False)
    assert p.returncode == 1 and "pass --codec" in p.stderr  # a .npy does not hold its codec
    cli(server, "dequantize", str(d / "c.npy"), "--codec", str(d / "codec.json"), "-o", str(d / "r.npy"))
    assert np.array_equal(np.load(d / "r.npy"), y)
    cli(server, "dequantize", str(d / "c.npz"), "-o", str(d / "r2.npy"))
    assert np.array_equal(np.load(d / "r2.npy"), y)


def _bad_inputs(d):
    x = np.random.default_rng(5).standard_normal((50, D)).astype(np.float32)
    rag = [list(v) for v in x]
    rag[17] = rag[17][:-1]
    pq.write_table(pa.table({"emb": pa.array(rag, type=pa.list_(pa.float32()))}), d / "ragged.parquet")
    nan = x.copy()
    nan[31, 5] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "d32.npy", x[:, :32].copy())


@pytest.mark.parametrize("args, msg", [
    (["quantize", "x.parquet", "--column", "nope"], r"x\.parquet has no column 'nope' \(its columns: id, emb, name\)"),
    (["quantize", "ragged.parquet"], r"ragged lists in column 'emb': row 17 has 47 values, row 0 has 48"),
    (["quantize", "nan.npy"], r"nan\.npy: row 31 holds NaN or infinity"),
    (["quantize", "d32.npy"], r"the input's vectors have 32 dimensions, the codec was fitted for 48"),
    (["quantize", "x.npy", "--server", "http://127.0.0.1:9"], r"could not reach the service at http://127\.0\.0\.1:9"),
    (["fit", "x.npy", "--scheme", "nosuch"], r"unknown scheme 'nosuch'"),
])
def test_bad_input_one_line_and_no_output(server, codec, data, args, msg):
    d, _, _ = data
    _bad_inputs(d)
    out = d / "bad-out.parquet"
    argv = [str(d / a) if a.endswith((".npy", ".parquet")) else a for a in args]
    argv += ["-o", str(out if args[0] == "quantize" else d / "bad-codec.json")]
    if args[0] == "quantize":
        argv += ["--codec", str(d / "codec.json")]
    p = cli(server, *argv, check=False)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("embquant-client: error: "), p.stderr
    assert re.search(msg, p.stderr), p.stderr
    assert not [f for f in d.iterdir() if f.name.startswith(("bad-out", "bad-codec"))]


def test_killed_mid_run_resumes_without_sending_done_rows(server, codec, tmp_path):
    """The command as a process of its own, killed with SIGKILL mid-run."""
    n = 30_000
    x = np.random.default_rng(9).standard_normal((n, D)).astype(np.float32)
    src, out = tmp_path / "big.npy", tmp_path / "big.parquet"
    np.save(src, x)
    record = tmp_path / "big.parquet.embquant-resume.json"
    before = rows_quantized(server)
    e = {**os.environ, "EMBQUANT_URL": server.url}
    proc = subprocess.Popen([sys.executable, "-m", "embquant_client._cli", "quantize", str(src), "--codec",
                             codec_path(codec, tmp_path),
                             "-o", str(out), "--chunk-rows", "200", "--concurrency", "1"], env=e,
                            stderr=subprocess.PIPE)
    done = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads(record.read_text())["rows"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done > 0:  # the first record (rows on disk are recorded every 0.5 s)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job ended before it could be killed: make it longer"
    assert not out.exists()  # only the spool: never a partial file under the output's name
    done = json.loads(record.read_text())["rows"]
    assert 0 < done < n and done % 200 == 0
    first = rows_quantized(server) - before
    p = cli(server, "quantize", str(src), "--codec", codec_path(codec, tmp_path), "-o", str(out),
            "--chunk-rows", "200", "--concurrency", "3")
    assert p.returncode == 0
    second = rows_quantized(server) - before - first
    assert second == n - done  # the rows the record held were not sent again
    codes, side, _ = in_process(codec.codec, x)
    t = pq.read_table(out)
    got = np.frombuffer(b"".join(t.column("codes").to_pylist()), dtype="<i8").reshape(codes.shape)
    assert np.array_equal(got, codes)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["big.npy", "big.parquet", "codec.json"]


def codec_path(codec, d) -> str:
    p = d / "codec.json"
    if not p.exists():
        codec.save(p)
    return str(p)


def test_library_quantize_bulk_matches_in_process(server, codec, data):
    _, x, _ = data
    seen = []
    with ec.Client(server.url) as c:
        parts = list(c.quantize_bulk(np.load(data[0] / "x.npy", mmap_mode="r"), codec, chunk_rows=500, concurrency=3,
                                     progress=lambda done, total: seen.append((done, total))))
        y = np.concatenate(list(c.dequantize_bulk(iter(parts), codec, concurrency=2)))
    codes, side, ref = in_process(codec.codec, x)
    assert np.array_equal(np.concatenate([p.codes for p in parts]), codes)
    assert np.array_equal(np.concatenate([p.side for p in parts]), side)
    assert np.array_equal(y, ref)
    assert seen == [(500 * i, 3000) for i in range(1, 7)]


def test_async_quantize_bulk_matches_in_process(server, codec, data):
    """AsyncClient.quantize_bulk: blocks in order from a memory map or an iterator of
    uneven chunks, progress after each, the same codes as in-process; a loop that stops
    early leaves no task running."""
    import asyncio

    _, x, _ = data
    seen = []

    async def main():
        async with ec.AsyncClient(server.url) as ac:
            parts = [p async for p in ac.quantize_bulk(np.load(data[0] / "x.npy", mmap_mode="r"), codec,
                                                       chunk_rows=500, concurrency=3,
                                                       progress=lambda done, total: seen.append((done, total)))]
            chunks = (x[lo:lo + 333] for lo in range(0, 3000, 333))
            again = [p async for p in ac.quantize_bulk(chunks, codec, chunk_rows=700, start_row=100)]
            gen = ac.quantize_bulk(x, codec, chunk_rows=100, concurrency=4)
            first = await gen.__anext__()
            await gen.aclose()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            return parts, again, first, others

    parts, again, first, others = asyncio.run(main())
    codes, side, _ = in_process(codec.codec, x)
    assert np.array_equal(np.concatenate([p.codes for p in parts]), codes)
    assert np.array_equal(np.concatenate([p.side for p in parts]), side)
    assert seen == [(500 * i, 3000) for i in range(1, 7)]
    assert [p.codes.shape[0] for p in again] == [700, 700, 700, 700, 100]
    assert np.array_equal(np.concatenate([p.codes for p in again]), codes[100:])
    assert np.array_equal(first.codes, codes[:100])
    assert others == []


def test_readme_library_example_runs(server, codec, tmp_path, monkeypatch):
    """The README's bulk example, as pasted, in a folder holding its two files."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "quantize_bulk" in b]
    x = np.random.default_rng(1).standard_normal((700, D)).astype(np.float32)
    np.save(tmp_path / "emb.npy", x)
    codec.save(tmp_path / "codec.json")
    monkeypatch.chdir(tmp_path)
    out = subprocess.run([sys.executable, "-c", code.replace("http://127.0.0.1:8000", server.url)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["700", "700"]  # one block: progress(done, total)
    codes, _, _ = in_process(codec.codec, x)
    t = pq.read_table(tmp_path / "codes.parquet")
    assert np.array_equal(np.frombuffer(b"".join(t.column("codes").to_pylist()), "<i8").reshape(codes.shape), codes)


def test_evaluate_compares_settings_on_a_sample(server, data):
    """embquant-client evaluate: the service's table for --candidate settings (or the
    recommended ones within --bits), on rows spread over the file; --json for scripts."""
    d, x, _ = data
    p = cli(server, "evaluate", str(d / "x.parquet"), "--candidate", "lloyd:bits=4,norm=row",
            "--candidate", "absmax:bits=8", "--sample-rows", "900", "--k", "5", "--json")
    out = json.loads(p.stdout)
    assert out["k"] == 5 and [r["scheme"] for r in out["rows"]] == ["lloyd", "absmax"]
    assert out["rows"][0]["params"] == {"bits": 4, "norm": "row"}
    assert out["split"]["fit_rows"] + out["split"]["measured_rows"] + out["split"]["queries"] <= 900
    for r in out["rows"]:
        assert 0 < r["relative_squared_error"] < 0.05 and 0 < r["recall"] <= 1
    assert out["rows"][1]["relative_squared_error"] < out["rows"][0]["relative_squared_error"]  # 8 bits beat 4
    table = cli(server, "evaluate", str(d / "x.npy"), "--bits", "2", "--sample-rows", "600").stdout
    assert "setting" in table and "recall@10" in table and "tcq bits=2" in table
    bad = cli(server, "evaluate", str(d / "x.npy"), check=False)
    assert bad.returncode == 1 and "give --bits or --candidate" in bad.stderr
