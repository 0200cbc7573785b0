"""`embquant serve` starts the service; `embquant schemes` lists the schemes; `embquant warm`
compiles the CPU kernels ahead of the first start."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from .api import create_app
    from .settings import LOG_LEVELS, Settings
    from .worker.device import DeviceUnavailable

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "device": args.device}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        print(f"embquant: invalid settings: {e}", file=sys.stderr)
        return 2
    # A number, not a name: logging knows no "TRACE" (uvicorn's level 5) by name.
    level = LOG_LEVELS[settings.log_level]
    logging.addLevelName(LOG_LEVELS["trace"], "TRACE")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    grace = settings.graceful_timeout_s if args.graceful_timeout is None else args.graceful_timeout
    if settings.workers > 1:
        return _serve_processes(settings, overrides, grace)
    try:
        app = create_app(settings, tune_gc=True)
    except DeviceUnavailable as e:  # EMBQUANT_DEVICE=cuda where CUDA cannot run: one line, no traceback
        print(f"embquant: {e}", file=sys.stderr)
        return 2
    # One process per device. On SIGTERM uvicorn stops accepting and finishes in-flight
    # requests for up to `grace` seconds, then runs the lifespan shutdown that drains
    # the worker; the worker hears of the signal at once (fits stop, new work gets 503).
    server = _server_class()(uvicorn.Config(app, **uvicorn_options(settings, grace)))
    server.on_exit = lambda: app.state.worker.begin_shutdown(grace)
    server.run()
    return 0


def _serve_processes(settings, overrides: dict, grace: float) -> int:
    """EMBQUANT_WORKERS > 1: this process binds the socket and keeps that many server
    processes (spawned, each `_process_main`) serving on it; a SIGTERM or SIGINT is passed
    on to them, each drains as a single server does, and this one waits for them. A
    process that dies is replaced; one that exits 2 at start (a device it cannot use)
    stops them all."""
    import multiprocessing
    import os
    import shutil
    import signal
    import tempfile
    import time

    import uvicorn

    log = logging.getLogger("embquant.cli")
    socks = _listeners(settings.host, settings.port, settings.workers)
    if socks is None:  # no SO_REUSEPORT balancing here: one socket, every process accepts on it
        socks = [uvicorn.Config(app=None, host=settings.host, port=settings.port).bind_socket()] * settings.workers
    own_dir = metrics_dir = None
    if settings.codec_dir is None:  # codec ids must resolve in whichever process answers
        own_dir = tempfile.mkdtemp(prefix="embquant-codecs-")
        os.environ["EMBQUANT_CODEC_DIR"] = own_dir
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # /metrics of any process covers them all
        metrics_dir = tempfile.mkdtemp(prefix="embquant-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # the CPU kernels' threads split between the processes, so they do not oversubscribe the cores
    per = str(max(1, (os.cpu_count() or 1) // settings.workers))
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, per)
    ctx = multiprocessing.get_context("spawn")
    stopping = []

    def start(i: int):
        p = ctx.Process(target=_process_main, args=(overrides, grace, socks[i]), daemon=False)
        p.start()
        return p

    def on_signal(sig, frame):
        stopping.append(sig)
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    procs = [start(i) for i in range(settings.workers)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("%d server processes on http://%s:%d (pids %s; codec dir %s)", settings.workers, settings.host,
             settings.port, ", ".join(str(p.pid) for p in procs), os.environ.get("EMBQUANT_CODEC_DIR"))
    rc = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for i, p in enumerate(procs):
                if p.is_alive() or stopping:
                    continue
                if p.exitcode == 2:  # refused to start (device): the others will too
                    rc = 2
                    on_signal(signal.SIGTERM, None)
                    break
                log.warning("server process %d exited (%s); starting another", p.pid, p.exitcode)
                _metrics_process_dead(p.pid)
                procs[i] = start(i)  # on the same socket: connections queued on it wait for it
        deadline = time.monotonic() + grace + 15
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
    finally:
        for sock in set(socks):
            sock.close()
        for d in (own_dir, metrics_dir):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
    return rc


def _metrics_process_dead(pid: int) -> None:
    """Drop a dead server process's gauges from the multiprocess metrics (its counters
    stay: they never go back)."""
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid)
    except OSError:
        pass


def _listeners(host: str, port: int, n: int):
    """``n`` listening sockets on one address with SO_REUSEPORT, one per server process, so
    that Linux spreads new connections over the processes (by a hash of each connection's
    addresses). With one shared socket, whichever process accepted first took them: all 256
    of a wrk run's connections went to one of two processes. None where SO_REUSEPORT does
    not balance (not Linux) or cannot be set."""
    import socket
    import sys

    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    out: list = []
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            port = s.getsockname()[1]  # port 0: the others take the one the first got
            # listening now: connections queue here while a process starts or is replaced
            s.listen(2048)
            s.set_inheritable(True)
    except OSError as e:
        for s in out:
            s.close()
        # one shared socket instead (its bind reports an address in use as uvicorn does)
        logging.getLogger("embquant.cli").warning("no SO_REUSEPORT listeners (%s): one shared socket", e)
        return None
    return out


def _process_main(overrides: dict, grace: float, sock) -> None:
    """One of `_serve_processes`' servers: the single-process server on a shared socket."""
    import os

    import uvicorn

    from .api import create_app
    from .settings import LOG_LEVELS, Settings
    from .worker.device import DeviceUnavailable

    settings = Settings(**overrides)
    logging.addLevelName(LOG_LEVELS["trace"], "TRACE")
    logging.basicConfig(level=LOG_LEVELS[settings.log_level],
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        app = create_app(settings, tune_gc=True)
    except DeviceUnavailable as e:
        print(f"embquant: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    server = _server_class()(uvicorn.Config(app, **uvicorn_options(settings, grace)))
    server.on_exit = lambda: app.state.worker.begin_shutdown(grace)
    server.run(sockets=[sock])


def _server_class():
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, telling the worker when a shutdown signal arrives."""

        on_exit = None

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            if self.on_exit is not None:
                try:
                    asyncio.get_running_loop().call_soon_threadsafe(self.on_exit)
                except RuntimeError:  # no loop running (yet): nothing in flight to tell
                    pass

    return Server


def uvicorn_options(settings, graceful_timeout: float | None = None) -> dict:
    """uvicorn's keyword arguments from the settings: the connection limits live here.
    uvloop and httptools are used when installed (they are dependencies)."""
    from .api.connections import protocol_class

    return dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        loop="auto",
        # no X-Forwarded-* rewriting: the service never reads the client's address
        proxy_headers=False,
        timeout_graceful_shutdown=settings.graceful_timeout_s if graceful_timeout is None else graceful_timeout,
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.limit_concurrency or None,
        http=protocol_class(settings.header_timeout_s),
    )


def _schemes(args: argparse.Namespace) -> int:
    from .codecs import schemes_document

    json.dump(schemes_document(), sys.stdout, indent=2)
    print()
    return 0


def _warm(args: argparse.Namespace) -> int:
    """Compile (or load from numba's on-disk cache) the CPU kernels the service uses,
    so the first start after an install, or a container, does not pay for it."""
    import time

    import torch

    from .codecs import kernels
    from .worker.device import warm_up

    t0 = time.perf_counter()
    active = kernels.set_backend("auto")
    warm_up(torch.device("cpu"))
    print(f"embquant: CPU kernels ({active}) ready in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="embquant", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="start the HTTP service (settings from EMBQUANT_* env vars)")
    s.add_argument("--host", default=None, help="default 127.0.0.1 (EMBQUANT_HOST)")
    s.add_argument("--port", type=int, default=None, help="default 8000 (EMBQUANT_PORT)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="default auto (EMBQUANT_DEVICE)")
    s.add_argument("--graceful-timeout", type=float, default=None,
                   help="seconds to finish in-flight work on SIGTERM (EMBQUANT_GRACEFUL_TIMEOUT_S, default 20)")
    s.set_defaults(fn=_serve)
    sc = sub.add_parser("schemes", help="print every scheme and its parameters as JSON")
    sc.set_defaults(fn=_schemes)
    w = sub.add_parser("warm", help="compile the CPU kernels into numba's cache (done at image build time)")
    w.set_defaults(fn=_warm)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
