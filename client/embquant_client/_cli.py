"""embquant-client: fit a codec on a file, quantize a file with it, dequantize codes.

    embquant-client fit IN --scheme S [--param k=v ...] -o CODEC.json
    embquant-client quantize IN --codec CODEC.json -o OUT
    embquant-client dequantize OUT -o RECON
    embquant-client evaluate IN (--bits B | --candidate SCHEME[:K=V,...] ...)

IN: .npy (float, rows x dim) or Parquet (a list<float> or fixed_size_list<float>
column, --column). OUT: Parquet (codes, side values, the input's other columns, the
codec in its metadata), .npy or .npz; RECON: .npy or Parquet. Files are streamed in
blocks of --chunk-rows rows; an output appears under its name only when complete,
and a job cut short goes on where it stopped when run again. Errors end with one line
on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import _errors as E
from ._client import CHUNK_ROWS, DEFAULT_URL, Client
from ._io import InputError, dequantize_file, fit_rows, fit_sample, quantize_file

PROG = "embquant-client"


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param takes key=value, got {text!r}")
    try:
        return key, json.loads(value)  # 4 -> int, 0.5 -> float, true -> bool, [..] -> list
    except json.JSONDecodeError:
        return key, value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=None,
                        help=f"the service's URL (default: $EMBQUANT_URL, else {DEFAULT_URL})")
    common.add_argument("--api-key", default=None, help="API key (default: $EMBQUANT_API_KEY)")
    common.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    common.add_argument("--column", default=None,
                        help="the Parquet column of vectors (fit, quantize: found when there is one list column; "
                             "dequantize: the output's column, default 'embedding')")
    common.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help=f"rows per request (default {CHUNK_ROWS})")
    common.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bar even on a terminal")

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", parents=[common], help="fit a codec on (a sample of) a file")
    f.add_argument("input", metavar="IN")
    f.add_argument("--scheme", required=True)
    f.add_argument("--param", type=_param, action="append", default=[], metavar="K=V",
                   help="a scheme parameter (repeatable), e.g. --param bits=4")
    f.add_argument("--sample-rows", type=int, default=None,
                   help="rows to fit on, spread evenly over IN (default: as many as one request carries)")
    f.add_argument("-o", "--output", required=True, metavar="CODEC.json")
    q = sub.add_parser("quantize", parents=[common], help="encode a file with a codec")
    q.add_argument("input", metavar="IN")
    q.add_argument("--codec", required=True, metavar="CODEC.json")
    q.add_argument("-o", "--output", required=True, metavar="OUT")
    d = sub.add_parser("dequantize", parents=[common], help="decode a codes file back to vectors")
    d.add_argument("input", metavar="OUT")
    d.add_argument("--codec", default=None, metavar="CODEC.json",
                   help="the codec (default: the one the codes file holds)")
    d.add_argument("-o", "--output", required=True, metavar="RECON")
    e = sub.add_parser("evaluate", parents=[common],
                       help="compare codecs on a sample of a file (POST /evaluate): error, recall, speed, size")
    e.add_argument("input", metavar="IN")
    e.add_argument("--bits", type=float, default=None,
                   help="compare the service's recommended settings within this many bits per dimension")
    e.add_argument("--candidate", type=_candidate, action="append", default=[], metavar="SCHEME[:K=V,...]",
                   help="a setting to compare (repeatable), e.g. --candidate lloyd:bits=4,norm=unit")
    e.add_argument("--k", type=int, default=10, help="recall@k (default 10)")
    e.add_argument("--metric", default="dot", choices=("dot", "cosine", "l2"), help="default dot")
    e.add_argument("--sample-rows", type=int, default=None,
                   help="rows to evaluate on, spread evenly over IN (default: as many as the service takes)")
    e.add_argument("--json", action="store_true", help="print the answer as JSON, not a table")
    return p


def _candidate(text: str) -> tuple[str, dict[str, Any]]:
    scheme, _, rest = text.partition(":")
    if not scheme:
        raise argparse.ArgumentTypeError(f"--candidate takes SCHEME[:K=V,...], got {text!r}")
    return scheme, dict(_param(kv) for kv in rest.split(",") if kv)


def _client(args) -> Client:
    url = args.server or os.environ.get("EMBQUANT_URL") or DEFAULT_URL
    # --api-key, else the Client's own default, $EMBQUANT_API_KEY
    return Client(url, timeout=args.timeout, api_key=args.api_key)


class _Bar:
    """A tqdm bar on a terminal (stderr), nothing otherwise."""

    def __init__(self, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(desc=desc, unit="rows", unit_scale=True, file=sys.stderr, dynamic_ncols=True)

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is None:
            return
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _positive(args) -> None:
    if args.chunk_rows < 1:
        raise InputError(f"--chunk-rows must be at least 1, got {args.chunk_rows}")
    if args.concurrency < 1:
        raise InputError(f"--concurrency must be at least 1, got {args.concurrency}")


def run(args) -> int:
    _positive(args)
    tty = sys.stderr.isatty() and not args.quiet
    with _client(args) as c:
        if args.command == "fit":
            limits = c.limits()
            from ._io import open_vectors

            dim = open_vectors(args.input, args.column).dim
            rows = args.sample_rows or fit_rows(limits, dim, c._core.wire)
            x = fit_sample(args.input, rows, args.column)
            fitted = c.fit(x, args.scheme, **dict(args.param))
            fitted.save(args.output)
            if tty:
                print(f"fitted {args.scheme} on {x.shape[0]} rows; codec {fitted.codec_id} -> {args.output}",
                      file=sys.stderr)
            return 0
        if args.command == "evaluate":
            return _evaluate(c, args)
        bar = _Bar(tty, args.command)
        try:
            if args.command == "quantize":
                out = quantize_file(c, args.input, args.codec, args.output, column=args.column,
                                    chunk_rows=args.chunk_rows, concurrency=args.concurrency, progress=bar)
            else:
                out = dequantize_file(c, args.input, args.output, codec=args.codec, column=args.column or "embedding",
                                      chunk_rows=args.chunk_rows, concurrency=args.concurrency, progress=bar)
        finally:
            bar.close()
        if tty:
            resumed = f" (resumed after {out['resumed_rows']})" if out["resumed_rows"] else ""
            print(f"{out['rows']} rows{resumed} -> {args.output}", file=sys.stderr)
    return 0


def _evaluate(c: Client, args) -> int:
    if (args.bits is None) == (not args.candidate):
        raise InputError("give --bits or --candidate (one or more), one of them")
    if args.k < 1:
        raise InputError(f"--k must be at least 1, got {args.k}")
    from ._io import open_vectors

    limits = c.limits()
    dim = open_vectors(args.input, args.column).dim
    rows = args.sample_rows or min(limits.max_evaluate_rows, fit_rows(limits, dim, c._core.wire))
    x = fit_sample(args.input, rows, args.column)
    ev = c.evaluate(x, args.candidate or None, bits=args.bits, k=args.k, metric=args.metric)
    if args.json:
        print(json.dumps({"rows": ev.rows, "k": ev.k, "metric": ev.metric, "split": ev.split, "pareto": ev.pareto},
                         indent=2))
    else:
        print(ev)
    return 0


def _line(e: BaseException, args) -> str:
    url = getattr(args, "server", None) or os.environ.get("EMBQUANT_URL") or DEFAULT_URL
    if isinstance(e, E.APIConnectionError):
        why = str(e).removeprefix("could not reach the service: ")
        msg = f"could not reach the service at {url}: {why}"
    elif isinstance(e, E.APIStatusError):
        msg = f"the service refused the request: {e}"
    elif isinstance(e, OSError) and e.filename:
        msg = f"{e.filename}: {e.strerror or e}"
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split())  # one line


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to go on where it stopped", file=sys.stderr)
        return 130
    except (InputError, ValueError, E.EmbquantClientError, OSError) as e:
        print(f"{PROG}: error: {_line(e, args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
