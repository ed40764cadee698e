"""The OHIF server without OHIF: a stand-in dist folder and a stand-in DICOMweb server that echoes what it got."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from node.localpeers.ohif import OhifError, OhifViewer, app_config


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"path": self.path, "host": self.headers.get("Host"),
                           "forwarded": self.headers.get("Forwarded"), "accept": self.headers.get("Accept"),
                           "cookie": self.headers.get("Cookie")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "upstream=1")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture()
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def viewer(tmp_path: Path, upstream: str) -> Iterator[OhifViewer]:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<html>ohif</html>")
    (dist / "app.bundle.js").write_text("console.log(1)")
    (dist / "codec.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("not for the browser")
    with OhifViewer(upstream, dist=dist) as running:
        yield running


def test_serves_the_bundle_with_spa_routes_and_nothing_outside_it(viewer: OhifViewer) -> None:
    with httpx.Client(base_url=viewer.url) as client:
        js = client.get("/app.bundle.js")
        assert (js.status_code, js.headers["content-type"], js.text) == (200, "text/javascript", "console.log(1)")
        assert client.get("/codec.wasm").headers["content-type"] == "application/wasm"
        for route in ("/", "/viewer", "/viewer/dicomweb"):
            assert client.get(route).text == "<html>ohif</html>", route
        # A missing asset is a 404, not index.html parsed as a script; nothing above the dist folder is served.
        assert client.get("/missing.bundle.js").status_code == 404
        assert client.get("/%2e%2e/secret.txt").status_code == 404
        assert client.get("/..%2fsecret.txt").status_code == 404
        assert client.head("/app.bundle.js").headers["content-length"] == "14"


def test_dicomweb_is_forwarded_read_only_with_this_server_as_host(viewer: OhifViewer) -> None:
    with httpx.Client(base_url=viewer.url) as client:
        r = client.get("/dicom-web/studies/1.2.3/metadata?includefield=all",
                       headers={"Accept": "application/dicom+json", "Cookie": "session=1"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"
        seen = r.json()
        assert seen["path"] == "/dicom-web/studies/1.2.3/metadata?includefield=all"
        host = viewer.url.removeprefix("http://")
        # Orthanc writes BulkDataURIs from the Host it was asked under: this server's, so they come back here.
        assert (seen["host"], seen["forwarded"]) == (host, f"host={host};proto=http")
        assert seen["accept"] == "application/dicom+json" and seen["cookie"] is None
        assert "set-cookie" not in r.headers
        assert client.post("/dicom-web/studies", content=b"x").status_code == 405
        assert client.delete("/dicom-web/studies/1.2.3").status_code == 405


def test_upstream_down_is_a_502(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("x")
    with OhifViewer("http://127.0.0.1:9/dicom-web", dist=dist) as running:
        assert httpx.get(f"{running.url}/dicom-web/studies").status_code == 502


def test_app_config_points_ohif_at_the_proxy_only(viewer: OhifViewer) -> None:
    config = httpx.get(f"{viewer.url}/app-config.js").text
    assert config == app_config()
    assert "window.location.origin + '/dicom-web'" in config
    assert "http" not in config.replace("httpErrorHandler", "")  # no absolute URL: nothing outside the viewer
    assert '"investigationalUseDialog": {\n  "option": "never"\n }' in config


def test_missing_bundle_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(OhifError, match="deploy/setup.sh"):
        OhifViewer("http://127.0.0.1:1/dicom-web", dist=tmp_path)
