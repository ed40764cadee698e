"""The node's web application on ``http_port``: pages for people (worklist, study, admin), machine endpoints
(/healthz, /metrics, /api/studies). app: the FastAPI app and its uvicorn thread; auth: accounts, sessions, token;
api and pages: the routes; worklist: status, priority and order; status: summaries and metrics."""

from node.web.app import WebServer, create_app, start_web
from node.web.status import study_summaries

__all__ = ["WebServer", "create_app", "start_web", "study_summaries"]
