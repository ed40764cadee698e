"""The web application on ``http_port`` (FastAPI, served by uvicorn in a thread of the node).

``start_web`` keeps the contract of the former standard-library server: it returns once the port listens, and the
returned server's ``shutdown()`` stops it. TLS is the node's own context (node.tls); asyncio does each handshake
without holding up other clients.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path
from typing import Callable

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from node.config import WebSettings
from node.dicom_server import ConnectionStats
from node.priority import DEFAULT_RULES, PriorityRule
from node.store import Store
from node.web import api, feedback, pages
from node.web.auth import AuthMiddleware
from node.web.context import WebContext
from node.web.status import Gauges, HealthCheck, metrics_registry

log = logging.getLogger(__name__)

STARTUP_SECONDS = 30.0


def create_app(context: WebContext, token: str | None = None) -> FastAPI:
    app = FastAPI(title="dicom-ai-node", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.context = context
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(feedback.router)
    app.mount("/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static")

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        detail = exc.detail if isinstance(exc, HTTPException) and exc.detail != "Not Found" else (
            f"no such endpoint {request.url.path}; try /, /healthz, /metrics, /api/studies")
        return JSONResponse({"error": detail}, status_code=404)

    app.add_middleware(AuthMiddleware, open_store=context.open_store, token=token)  # type: ignore[arg-type]
    return app


class WebServer:
    """uvicorn in a daemon thread; ``shutdown()`` ends open event streams and stops it."""

    def __init__(self, server: uvicorn.Server, context: WebContext) -> None:
        self.server = server
        self.context = context
        self.thread = threading.Thread(target=server.run, name="http", daemon=True)

    @property
    def port(self) -> int:
        sockets = [s for srv in getattr(self.server, "servers", []) for s in srv.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else self.server.config.port

    def shutdown(self) -> None:
        self.context.stopping.set()
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def server_close(self) -> None:
        """(the former server's second call at stop: nothing left to close)"""


def start_web(host: str, port: int, open_store: Callable[[], Store], health: HealthCheck,
              token: str | None = None, ssl_context: ssl.SSLContext | None = None,
              connection_stats: Callable[[], ConnectionStats] | None = None,
              gauges: Gauges | None = None, web: WebSettings | None = None,
              priority_rules: tuple[PriorityRule, ...] = DEFAULT_RULES) -> WebServer:
    """Serve the web application in a background thread. The machine endpoints want ``token`` (None: only a
    logged-in person gets them); pages always want a logged-in person."""
    context = WebContext(open_store=open_store, health=health,
                         registry=metrics_registry(open_store, health, connection_stats, gauges),
                         web=web or WebSettings(), priority_rules=priority_rules)
    config = uvicorn.Config(create_app(context, token), host=host, port=port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=2, lifespan="off", loop="asyncio")
    config.load()
    config.ssl = ssl_context  # the node's own context (node.tls), not uvicorn's from file names
    server = uvicorn.Server(config)
    web_server = WebServer(server, context)
    web_server.thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started and web_server.thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise OSError(f"the web application did not start on {host}:{port} (is node.http_port in use?)")
    log.info("web application on %s://%s:%d (/, /healthz, /metrics, /api/studies; %s)",
             "https" if ssl_context is not None else "http", host, web_server.port,
             "API token required but for /healthz" if token else "no API token: /api and /metrics for logged-in "
             "people only")
    return web_server

