"""OHIF Viewer 3 (the prebuilt @ohif/app bundle that deploy/viewer installs) served on a free loopback port, its
DICOMweb data source an Orthanc's /dicom-web/ behind a same-origin read-only proxy, for the demo and the viewer tests.

It serves OHIF's files, writes OHIF's app-config.js, and forwards DICOMweb GETs to Orthanc unchanged; it builds and
stores nothing. Same origin means no CORS set-up on Orthanc and no cross-origin warnings in OHIF.
"""

from __future__ import annotations

import json
import mimetypes
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
OHIF_DIST = REPO_ROOT / "deploy" / "viewer" / "dist"  # unpacked by deploy/setup.sh from deploy/viewer/ohif.pin
DICOMWEB_PREFIX = "/dicom-web"
DATA_SOURCE_NAME = "orthanc"

# The request headers a DICOMweb client's answer depends on; everything else (cookies, the browser's identity)
# stays on this side of the proxy.
_FORWARDED_REQUEST_HEADERS = ("accept", "range", "if-none-match", "if-modified-since")
_FORWARDED_RESPONSE_HEADERS = ("content-type", "etag", "last-modified", "content-range")
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}


class OhifError(RuntimeError):
    """OHIF cannot be served; the message says how to fix it."""


def app_config(data_source_name: str = DATA_SOURCE_NAME) -> str:
    """OHIF's app-config.js: one DICOMweb data source at this server's own /dicom-web, nothing that calls out.

    The roots are absolute URLs built from the page's origin (OHIF's DICOMweb client and image loader both take
    them as given), so the same file works whatever host name the viewer was opened with.
    """
    configuration: dict[str, Any] = {
        "friendlyName": "Orthanc (dicom-ai-node PACS)",
        "name": data_source_name,
        "qidoSupportsIncludeField": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "staticWado": False,
        "dicomUploadEnabled": False,  # the viewer is read-only: the proxy forwards GET and HEAD only
        "omitQuotationForMultipartRequest": True,
        "bulkDataURI": {"enabled": True},
    }
    config: dict[str, Any] = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        # OHIF's first-visit tour is a popup over the viewport: off, like the investigational-use notice below.
        "customizationService": {"ohif.tours": {"$set": []}},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        # OHIF's "investigational use" notice is a modal over the viewport on first visit; the demo states
        # "not for diagnostic use" in every result's series description instead.
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": data_source_name,
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": data_source_name,
                "configuration": configuration,
            }
        ],
    }
    return (
        "/** Written by node/localpeers/ohif.py: OHIF reads Orthanc through this server's /dicom-web proxy. */\n"
        f"window.config = {json.dumps(config, indent=1)};\n"
        "(function (source) {\n"
        f"  var root = window.location.origin + '{DICOMWEB_PREFIX}';\n"
        "  source.wadoUriRoot = root;\n"
        "  source.qidoRoot = root;\n"
        "  source.wadoRoot = root;\n"
        "})(window.config.dataSources[0].configuration);\n"
        # OHIF calls this on every failed image load and throws "handler is not a function" when it is missing.
        "window.config.httpErrorHandler = function (error) {\n"
        "  console.error('image or DICOMweb request failed:', error && (error.status || error.message || error));\n"
        "};\n"
    )


class _ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dist: Path, dicomweb_url: str) -> None:
        self.dist = dist.resolve()
        self.dicomweb_url = dicomweb_url.rstrip("/")
        self.config_js = app_config().encode()
        # Orthanc answers on loopback; a slow first WADO-RS answer (transcoding) is still well under a minute.
        self.upstream = httpx.Client(timeout=60.0)
        super().__init__(address, _Handler)
        self.host_and_port = f"{address[0]}:{self.server_address[1]}"

    def server_close(self) -> None:
        super().server_close()
        self.upstream.close()


class _Handler(BaseHTTPRequestHandler):
    server: _ViewerServer
    protocol_version = "HTTP/1.1"  # keep-alive: OHIF loads a hundred files and many frames per page
    timeout = 30

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def do_POST(self) -> None:  # noqa: N802
        # The body is not read, so the connection cannot carry another request.
        self.close_connection = True
        self._send(405, b"read-only viewer: only GET and HEAD\n", "text/plain", head=False,
                   extra={"Allow": "GET, HEAD", "Connection": "close"})

    do_PUT = do_DELETE = do_POST  # noqa: N815

    def _answer(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if path == DICOMWEB_PREFIX or path.startswith(DICOMWEB_PREFIX + "/"):
            self._proxy(head)
        elif path == "/app-config.js":
            self._send(200, self.server.config_js, "text/javascript", head)
        else:
            self._static(path, head)

    def _proxy(self, head: bool) -> None:
        target = self.server.dicomweb_url + self.path[len(DICOMWEB_PREFIX):]
        headers = {name: value for name, value in self.headers.items() if name.lower() in _FORWARDED_REQUEST_HEADERS}
        # Orthanc writes absolute BulkDataURIs from the request's host: this server's, so they come back here.
        host = self.headers.get("Host") or self.server.host_and_port
        headers["Forwarded"] = f"host={host};proto=http"
        headers["Host"] = host
        try:
            upstream = self.server.upstream.request("HEAD" if head else "GET", target, headers=headers)
        except httpx.HTTPError as exc:
            self._send(502, f"Orthanc did not answer: {type(exc).__name__}\n".encode(), "text/plain", head)
            return
        extra = {k: v for k, v in upstream.headers.items() if k.lower() in _FORWARDED_RESPONSE_HEADERS}
        content_type = extra.pop("content-type", "application/octet-stream")
        self._send(upstream.status_code, upstream.content, content_type, head, extra)

    def _static(self, path: str, head: bool) -> None:
        dist = self.server.dist
        candidate = (dist / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(dist):
            self._send(404, b"not found\n", "text/plain", head)
            return
        if not candidate.is_file():
            if Path(path).suffix:
                # A missing asset is a 404, not index.html: HTML parsed as a script hides the real error.
                self._send(404, b"not found\n", "text/plain", head)
                return
            candidate = dist / "index.html"  # a route of the single-page app (/viewer, /viewer/dicomweb, ...)
        content_type = _TYPES.get(candidate.suffix) or mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(candidate.stat().st_size))
        self.end_headers()
        if not head:
            with candidate.open("rb") as f:
                shutil.copyfileobj(f, self.wfile)

    def _send(self, code: int, body: bytes, content_type: str, head: bool, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # request lines carry Study Instance UIDs: not logged


class OhifViewer:
    """``with OhifViewer(f"{pacs.url}/dicom-web") as viewer: page.goto(viewer.study_url(study_uid))``"""

    def __init__(self, dicomweb_url: str, dist: Path = OHIF_DIST, host: str = "127.0.0.1", port: int = 0) -> None:
        if not (dist / "index.html").is_file():
            raise OhifError(f"OHIF's bundle is not at {dist}: unpack it with 'bash deploy/setup.sh' "
                            "(deploy/viewer/ohif.pin names the tarball)")
        self.dist = dist
        self.dicomweb_url = dicomweb_url
        self.host = host
        self.port = port
        self.url = ""
        self._server: _ViewerServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "OhifViewer":
        self._server = _ViewerServer((self.host, self.port), self.dist, self.dicomweb_url)
        self.port = int(self._server.server_address[1])
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def study_url(self, study_uid: str, series_uid: str | None = None) -> str:
        """OHIF's default (longitudinal) viewer on one study; with ``series_uid``, that series in the first viewport."""
        url = f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"
        return url + (f"&initialSeriesInstanceUID={series_uid}" if series_uid else "")

    def __enter__(self) -> "OhifViewer":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
