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
    try:
        app = create_app(settings)
    except DeviceUnavailable as e:  # EMBQUANT_DEVICE=cuda where CUDA cannot run: one line, no traceback
        print(f"embquant: {e}", file=sys.stderr)
        return 2
    grace = settings.graceful_timeout_s if args.graceful_timeout is None else args.graceful_timeout
    # One process per device. On SIGTERM uvicorn stops accepting and finishes in-flight
    # requests for up to `grace` seconds, then runs the lifespan shutdown that drains
    # the worker; the worker hears of the signal at once (fits stop, new work gets 503).
    server = _server_class()(uvicorn.Config(app, **uvicorn_options(settings, grace)))
    server.on_exit = lambda: app.state.worker.begin_shutdown(grace)
    server.run()
    return 0


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
