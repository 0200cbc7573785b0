"""embquant codes in a real PostgreSQL, end to end (`make example-postgres`).

Starts a throwaway PostgreSQL in a temporary directory (pgtemp.py) and, unless
--server is given, an `embquant serve` on a free port; embeds real sentences with
all-MiniLM-L6-v2 (texts.py, embed.py; cached under bench/out/cache); fits a codec once
and stores it in a table; ingests the documents through the service (codes as bytea,
a 1-bit sketch as bit(D)); answers held-out queries with a Hamming first pass in SQL
and a rescoring of the candidates from their codes; prints recall@10 against exact
float search, storage per vector and queries/s. Everything it started is stopped at
exit, on an error too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402

import corpus_split  # noqa: E402
import embed  # noqa: E402
import flow  # noqa: E402
import pgtemp  # noqa: E402
from embquant_client import Client, EmbquantClientError  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Service:
    """`embquant serve` on a free 127.0.0.1 port, stopped with SIGTERM on exit."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "EMBQUANT_HOST": "127.0.0.1", "EMBQUANT_PORT": str(port), "EMBQUANT_DEVICE": "cpu"}
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "embquant.cli", "serve"], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"embquant serve exited with {self.proc.returncode}:\n"
                                   f"{self.log.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("embquant serve was not ready in 300 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def parse_params(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def arguments(description: str, batch_help: str) -> argparse.ArgumentParser:
    """The command line both examples take (examples/lancedb/example.py adds --db)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--docs", type=int, default=100_000, help="documents to store (default 100,000)")
    ap.add_argument("--queries", type=int, default=1000, help="held-out query sentences (default 1,000)")
    ap.add_argument("--scheme", default="transform", help="codec of the stored codes (default transform)")
    ap.add_argument("--param", action="append", default=[], metavar="K=V",
                    help="codec parameter, JSON value (default bits=4)")
    ap.add_argument("--fit-rows", type=int, default=10_000, help="documents the codec is fitted on")
    ap.add_argument("--candidates", type=lambda v: [int(c) for c in v.split(",")], default=[100, 200, 400, 800],
                    help="first-pass candidates per query, comma-separated (default 100,200,400,800)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--metric", choices=("cosine", "dot"), default="cosine",
                    help="rescoring against the decoded candidates (default cosine: the vectors are unit norm)")
    ap.add_argument("--batch", type=int, default=32, help=batch_help)
    ap.add_argument("--server", default=os.environ.get("EMBQUANT_URL"),
                    help="use this embquant service instead of starting one (or EMBQUANT_URL)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    return ap


def parse(ap: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, dict]:
    """The arguments, checked, and the codec's params."""
    a = ap.parse_args(argv)
    if a.docs < 1 or a.queries < 1 or a.k < 1 or a.batch < 1:
        ap.error("--docs, --queries, --k and --batch must be at least 1")
    if min(a.candidates) < a.k:
        ap.error(f"--candidates must each be at least --k ({a.k})")
    return a, parse_params(a.param) or {"bits": 4}


def main(argv=None) -> int:
    a, params = parse(arguments(__doc__.splitlines()[0], "queries per SQL statement and /dequantize call"), argv)

    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop Postgres and the service.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    queries_txt, docs_txt = corpus_split.split(a.docs, a.queries)
    log(f"corpus: {len(docs_txt):,} documents and {len(queries_txt):,} held-out queries, real sentences from the "
        f"docstrings of the installed Python packages (texts.py)")
    allv = embed.embed(queries_txt + docs_txt, corpus_split.CACHE, log=log)
    q, x = allv[:len(queries_txt)], allv[len(queries_txt):]
    log(f"embedded with all-MiniLM-L6-v2: {x.shape[0]:,} x {x.shape[1]} float32")

    service = None
    try:
        if a.server:
            url = a.server
        else:
            service = Service()
            url = service.url
            log(f"embquant serve on {url}")
        with pgtemp.TempPostgres(log=log) as pg, psycopg.connect(pg.conninfo) as conn, \
                Client(url, timeout=600) as client:
            return run(a, params, conn, client, q, x)
    finally:
        if service is not None:
            service.stop()


def run(a, params, conn, client, q, x) -> int:
    flow.create_schema(conn, x.shape[1])
    # (a) fit once, on a sample of the collection, and keep the codecs in a table
    sample = x[np.random.default_rng(1).choice(len(x), min(a.fit_rows, len(x)), replace=False)]
    t0 = time.perf_counter()
    codec, sketch = flow.fit_codecs(client, sample, a.scheme, params)
    flow.store_codec(conn, "codes", codec)
    flow.store_codec(conn, "sketch", sketch)
    conn.commit()
    log(f"fitted {a.scheme} {params} on {len(sample):,} rows in {time.perf_counter() - t0:.1f} s; "
        f"codecs stored in table codecs")

    # (b) ingest through the service with the client
    t0 = time.perf_counter()
    n = flow.ingest(conn, client, x, codec, sketch, log=log)
    t_ingest = time.perf_counter() - t0
    log(f"ingested {n:,} rows in {t_ingest:.1f} s ({n / t_ingest:,.0f} rows/s, quantize + COPY)")

    # (c) answer queries: codecs read back from the table, Hamming in SQL, rescoring
    codec, sketch = flow.load_codec(conn, "codes"), flow.load_codec(conn, "sketch")
    truth = flow.exact_top(x, q, a.k)  # exact float search, for (d)
    flow.search(conn, client, q[:a.batch], codec, sketch, k=a.k, candidates=a.candidates[0], batch=a.batch)  # warm
    runs = flow.timed_runs(lambda qq, m, tr: flow.search(conn, client, qq, codec, sketch, k=a.k, candidates=m,
                                                         batch=a.batch, metric=a.metric, truth=tr),
                           q, truth, a.candidates)

    # (d) measure
    st = flow.storage(conn)
    res = {
        "docs": n, "queries": len(q), "dim": x.shape[1], "scheme": a.scheme, "params": params,
        "code_bits_per_dim": 8 * st["codes_bytes"] / x.shape[1], "k": a.k, "batch": a.batch, "metric": a.metric, "runs": runs,
        "ingest_rows_per_s": n / t_ingest, "float32_bytes": 4 * x.shape[1], **st,
        "postgres": conn.execute("SHOW server_version").fetchone()[0],
    }
    print()
    print(f"documents {n:,} x {x.shape[1]} (all-MiniLM-L6-v2), {len(q):,} held-out queries, PostgreSQL {res['postgres']}")
    print(f"codes     {a.scheme} {params}: {st['codes_bytes']:.0f} bytes ({res['code_bits_per_dim']:.2f} bits/dim) "
          f"+ sketch bit({x.shape[1]}) {st['sketch_bytes']:.0f} bytes + id 8 = "
          f"{st['codes_bytes'] + st['sketch_bytes'] + 8:.0f} bytes per vector; float32 {4 * x.shape[1]:,} bytes")
    print(f"on disk   {st['heap_bytes_per_row']:.0f} bytes per row (table), {st['total_bytes_per_row']:.0f} with the "
          f"primary key index")
    print(f"ingest    {res['ingest_rows_per_s']:,.0f} rows/s (codes and sketches through the service, COPY)")
    print(f"search    Hamming candidates in SQL, rescored from their codes by {a.metric} "
          f"({a.batch} queries per statement):")
    flow.print_runs(runs, a.k)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (EmbquantClientError, psycopg.Error, RuntimeError) as e:  # incl. pgtemp.PostgresUnavailable
        print(f"example.py: error: {e}", file=sys.stderr)
        sys.exit(1)
