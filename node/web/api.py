"""The machine endpoints: /healthz (open), /metrics (Prometheus text) and /api/studies (JSON, no patient identifiers).

Their answers are those of the former standard-library server, byte for byte where monitoring parses them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from node.web.context import WebContext
from node.web.status import study_summaries

router = APIRouter()


def _context(request: Request) -> WebContext:
    context: WebContext = request.app.state.context
    return context


class PrettyJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        import json

        return json.dumps(content, indent=1).encode()


@router.get("/healthz")
def healthz(request: Request) -> Response:
    checks = dict(_context(request).health())
    ok = all(value is True for value in checks.values())
    return PrettyJSON({"ok": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(generate_latest, _context(request).registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/studies")
def api_studies(request: Request) -> Response:
    store = _context(request).open_store()
    try:
        return PrettyJSON(study_summaries(store))
    finally:
        store.close()
