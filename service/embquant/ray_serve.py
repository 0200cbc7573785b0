"""embquant as a Ray Serve application (``pip install "embquant[ray]"``).

Each replica runs the same FastAPI app as ``embquant serve`` (`create_app`: the same
front layers, batching worker, one device thread and codecs); Ray's proxy spreads the
requests over the replicas, and Serve's autoscaler adds or removes replicas on the
requests each one has in flight (``target_ongoing_requests``)::

    serve run embquant.ray_serve:app                       # autoscaled 1-4 replicas
    serve run embquant.ray_serve:build_app replicas=2 device=cpu
    serve run embquant.ray_serve:build_app max_replicas=8 num_gpus=1 max_batch_rows=262144

Arguments of ``build_app`` (strings from the command line): ``replicas`` (a fixed
count; else ``min_replicas``/``max_replicas``, default 1/4, and
``target_ongoing_requests``, default 32), ``max_ongoing_requests`` (default 128: the
proxy queues the rest), ``num_cpus``/``num_gpus`` per replica (default 1/0; one GPU
each serves one device per replica), and any setting of `Settings` by its field name
(``device``, ``max_batch_rows``, ...), which overrides the EMBQUANT_* variables the
replicas see. Replicas are stateless: a codec id that a replica has not seen is
resolved from a shared EMBQUANT_CODEC_DIR, or the client resends the codec. Each
answer names its replica in the ``x-embquant-replica`` header.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from .api import create_app
from .settings import Settings

#: build_app's own arguments; any other key is a Settings field
DEPLOYMENT_ARGS = ("replicas", "min_replicas", "max_replicas", "target_ongoing_requests",
                   "max_ongoing_requests", "num_cpus", "num_gpus")
REPLICA_HEADER = b"x-embquant-replica"


class _NamedReplica:
    """The app, adding the replica's id to each HTTP answer's headers. Attributes are
    the app's (Serve installs its overload handlers through add_exception_handler)."""

    def __init__(self, app, replica: str):
        self._app = app
        self._replica = replica.encode()

    def __getattr__(self, name):
        return getattr(self._app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self._app(scope, receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, self._replica)]}
            await send(message)

        await self._app(scope, receive, named)


@serve.ingress()
class Embquant:
    """One replica: the service's app, started (worker warmed up) before it takes requests."""

    def __init__(self, settings: dict[str, Any] | None = None):
        self._settings = Settings(**(settings or {}))
        self._app = None

    def __serve_build_asgi_app__(self):
        self._app = create_app(self._settings, tune_gc=True)
        replica = serve.get_replica_context().replica_id.unique_id
        return _NamedReplica(self._app, replica)

    def check_health(self) -> None:
        """Serve's health check: the worker is up (its lifespan ran before this is called)."""
        if self._app is not None and not self._app.state.worker.ready:
            raise RuntimeError("embquant worker is not ready")


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """The application for ``serve run`` / ``serve.run`` (see the module's text)."""
    args = dict(args or {})
    dep = {k: args.pop(k) for k in DEPLOYMENT_ARGS if k in args}
    unknown = set(args) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"unknown build_app arguments {sorted(unknown)}: deployment arguments are "
                         f"{list(DEPLOYMENT_ARGS)}, the rest are embquant settings {sorted(Settings.model_fields)}")
    checked = Settings(**args)  # a bad value fails here, not in every replica
    settings = checked.model_dump(include=set(args))
    options: dict[str, Any] = {
        "max_ongoing_requests": int(dep.get("max_ongoing_requests", 128)),
        "ray_actor_options": {"num_cpus": float(dep.get("num_cpus", 1)), "num_gpus": float(dep.get("num_gpus", 0))},
        # the worker warms up its kernels at start (seconds with numba's cache)
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
        "graceful_shutdown_timeout_s": checked.graceful_timeout_s + 5,
    }
    if "replicas" in dep:
        options["num_replicas"] = int(dep["replicas"])
    else:
        options["autoscaling_config"] = {
            "min_replicas": int(dep.get("min_replicas", 1)),
            "max_replicas": int(dep.get("max_replicas", 4)),
            "target_ongoing_requests": float(dep.get("target_ongoing_requests", 32)),
        }
    return serve.deployment(Embquant, name="embquant").options(**options).bind(settings)


#: ``serve run embquant.ray_serve:app``: autoscaled, settings from EMBQUANT_* variables
app = build_app()
