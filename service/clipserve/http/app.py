"""The litestar app factory and its lifespan: load models, serve, drain, stop."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Request
from litestar.di import Provide

from clipserve.engine.engine import Engine
from clipserve.http.exceptions import EXCEPTION_HANDLERS
from clipserve.http.json_values import check_values
from clipserve.http.lifecycle import Lifecycle
from clipserve.http.middleware import (
    bearer_auth,
    cancel_on_disconnect,
    default_model_header,
    request_metrics,
    request_tracing,
)
from clipserve.http.pages import open_in_schema, openapi_config, page_routes
from clipserve.http.routes import ROUTES
from clipserve.metrics import Metrics
from clipserve.models import ModelLoadError, add_model_configs, parse_spec
from clipserve.settings import Settings
from clipserve.tracing import Tracing
from clipserve.tracing_config import from_env as tracing_from_env

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, lifecycle: Lifecycle | None = None, tracing: Tracing | None = None
) -> Litestar:
    """Build the app; models load in the background once it starts (see /readyz). Tracing as
    the OTEL_* variables say unless given; ValueError for a setting that cannot work."""
    tracing = tracing or tracing_from_env(os.environ)
    if settings.model_config_dir:
        add_model_configs(settings.model_config_dir)
    specs = [parse_spec(s) for s in settings.model]
    lifecycle = lifecycle or Lifecycle()
    metrics = Metrics()
    engine = Engine(settings, specs, metrics, tracing)
    api_keys = settings.api_keys()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine.single_threaded_here()  # the event loop's thread
        loading = asyncio.create_task(_load(engine, lifecycle))
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.to_thread(engine.stop)
            await engine.aclose()
            await asyncio.to_thread(tracing.shutdown)  # the drained requests' last spans

    async def bound_json_values(request: Request) -> None:
        if request.method == "POST":  # read once here; the handler's decode reuses it
            await check_values(await request.body(), settings.max_items)

    app = Litestar(
        route_handlers=[*ROUTES, *page_routes(settings.playground)],
        before_request=bound_json_values,
        lifespan=[lifespan],
        dependencies={
            "engine": _provide(engine),
            "lifecycle": _provide(lifecycle),
            "metrics": _provide(metrics),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            *request_tracing(tracing),
            request_metrics(metrics),
            *bearer_auth(api_keys, settings.open_paths),
            # inside auth: a 401 names no model to a client without a key
            default_model_header(lambda: engine.default_model),
            cancel_on_disconnect,
        ],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=openapi_config(auth=bool(api_keys), playground=settings.playground),
    )
    if api_keys:
        open_in_schema(app, settings.open_paths)
    return app


def _provide(value: object) -> Provide:
    """Inject one object the app holds for its lifetime (no call per request in a thread)."""
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


async def _load(engine: Engine, lifecycle: Lifecycle) -> None:
    try:
        await asyncio.to_thread(engine.load)
    except ModelLoadError as exc:
        lifecycle.fail_start(str(exc))
    except Exception as exc:  # anything else is a bug, but must still stop start-up loudly
        log.exception("model loading crashed")
        lifecycle.fail_start(f"{type(exc).__name__}: {exc}")
