"""The web application through FastAPI's TestClient: who gets in (login form, session cookie, bearer token, roles),
the worklist's order, badges, reasons and filters, the patient only on the worklist, and a study's page (findings,
overlay, viewer link, the "opened" timer)."""

from __future__ import annotations

import dataclasses
import html
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from node.config import WebSettings
from node.store import JobPlan, RunOutcome, Store
from node.web.app import create_app
from node.web.auth import hash_password
from node.web.context import WebContext
from node.web.status import metrics_registry
from node_fakes import TO_PACS, cr_dataset, write_cr
from test_store import inst

TOKEN = "t" * 32
MALIGNANT = {"class_value": "86049000", "class_scheme": "SCT", "class_meaning": "Malignant neoplasm, primary"}
BENIGN = {"class_value": "3898006", "class_scheme": "SCT", "class_meaning": "Neoplasm, benign"}


def finding(n: int, probability: float, coded: dict[str, str]) -> dict[str, object]:
    return {"tracking_uid": f"2.25.{n}", "tracking_id": f"lesion {n}", "probability": probability,
            "sop_instance_uid": "1.1", "frame_number": 1, **coded}


def analysed(store: Store, study: str, sop: str, arrived: float, findings: list[dict[str, object]],
             tmp_path: Path, overlay: bool = False) -> None:
    """A study received at ``arrived`` and analysed by pipeline p 1.0 with ``findings``."""
    source = write_cr(tmp_path / f"{sop}.dcm", cr_dataset(study, 1, patient_id=f"SYN-{sop}"))
    store.index_instance(dataclasses.replace(inst(sop, study), path=str(source)), now=arrived)
    store.complete_study(study, "quiet", [JobPlan("p", "1.0", (sop,))], now=arrived + 1)
    job = store.claim_job("w", 60, now=arrived + 2)
    assert job is not None and job["study_uid"] == study
    objects: tuple[tuple[str, str, str, str], ...] = ((f"9.{sop}", "9.9", "sr", str(tmp_path / "sr.dcm")),)
    if overlay:
        sc = tmp_path / f"sc-{sop}.dcm"
        sc.with_suffix(".png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 16)
        objects += ((f"8.{sop}", "9.8", "sc", str(sc)),)
    summary = {"timings": {"total_s": 1.0}, "fhir_status": "ok", "n_findings": len(findings),
               "inputs_missing": [], "sr_sop_uid": f"9.{sop}", "findings": findings}
    assert store.finish_run(job["run_id"], RunOutcome("d" + sop, objects, False, summary), [],
                            now=arrived + 30) is not None


@pytest.fixture()
def node_db(tmp_path: Path) -> Path:
    """Four studies, in arrival order: no finding (1), malignant (2), failed (3), no pipeline (4); one reader, one
    admin."""
    db = tmp_path / "node.db"
    store = Store(db)
    analysed(store, "1.1.1", "11", 100.0, [], tmp_path)
    analysed(store, "2.2.2", "22", 200.0, [finding(1, 0.4, BENIGN), finding(2, 0.9, MALIGNANT)], tmp_path,
             overlay=True)
    store.index_instance(inst("33", "3.3.3"), now=300.0)
    store.complete_study("3.3.3", "quiet", [JobPlan("p", "1.0", ("33",))], now=301.0)
    job = store.claim_job("w", 60, now=302.0)
    assert job is not None
    store.fail_run(job["run_id"], "pipeline p: CUDA out of memory", retry=False, now=303.0)
    store.index_instance(inst("44", "4.4.4", routed=()), now=400.0)
    store.complete_study("4.4.4", "quiet", [], now=401.0)
    store.add_user("rita", hash_password("reader-password"), "reader")
    store.add_user("adam", hash_password("admin-password"), "admin")
    store.close()
    return db


def client(db: Path, token: str | None = TOKEN, viewer_url: str | None = None) -> TestClient:
    open_store = lambda: Store(db)  # noqa: E731
    health = lambda: {"database": True}  # noqa: E731
    context = WebContext(open_store, health, metrics_registry(open_store, health),
                         WebSettings(viewer_url=viewer_url))
    return TestClient(create_app(context, token), follow_redirects=False)


def logged_in(db: Path, name: str, password: str, **kwargs: str | None) -> TestClient:
    c = client(db, **kwargs)
    form = c.get("/login?next=/")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    r = c.post("/login", data={"username": name, "password": password, "csrf": csrf.group(1), "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    return c


def test_unauthenticated_pages_redirect_and_api_answers_401(node_db: Path) -> None:
    c = client(node_db)
    assert c.get("/healthz").status_code == 200
    for page in ("/", "/study/2.2.2", "/admin"):
        r = c.get(page)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    for api in ("/api/studies", "/metrics", "/events", "/worklist/rows", "/study/2.2.2/overlay/8.22.png"):
        assert c.get(api).status_code in (401, 303), api
    assert c.get("/api/studies").status_code == 401
    assert c.get("/api/studies", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # the machine token opens the machine endpoints, not the pages
    assert c.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    assert c.post("/logout").status_code == 401


def test_login_failures_and_csrf(node_db: Path) -> None:
    c = client(node_db)
    form = c.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    wrong = c.post("/login", data={"username": "rita", "password": "nope-nope", "csrf": csrf.group(1)})
    assert wrong.status_code == 401 and "wrong password" in wrong.text
    assert "ainode_session" not in wrong.headers.get("set-cookie", "")
    from node.audit import WEB_LOGIN, to_audit_event

    store = Store(node_db)
    failed = store.audit_records(kind=WEB_LOGIN)
    assert [(r["actor"], r["outcome"]) for r in failed] == [("rita", "wrong-credentials")]
    event = to_audit_event(failed[0], "AINODE")
    assert event.type.code == "110114" and event.outcome == "4"
    assert "nope-nope" not in str(failed)  # the password typed is not recorded
    stranger = client(node_db)  # a cross-site form post has no login cookie of ours
    forged = stranger.post("/login", data={"username": "rita", "password": "reader-password", "csrf": "x"})
    assert forged.status_code == 403 and "ainode_session" not in forged.headers.get("set-cookie", "")


def test_repeated_wrong_passwords_lock_the_account_for_the_window_and_success_resets(node_db: Path) -> None:
    c = client(node_db)

    def attempt(name: str, password: str) -> int:
        form = c.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        r = c.post("/login", data={"username": name, "password": password, "csrf": csrf.group(1)})
        return r.status_code

    assert [attempt("adam", "wrong-password") for _ in range(4)] == [401] * 4
    assert attempt("adam", "admin-password") == 303  # a success starts the count again
    assert [attempt("rita", "wrong-password") for _ in range(5)] == [401] * 5
    form = c.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    locked = c.post("/login", data={"username": "rita", "password": "reader-password", "csrf": csrf.group(1)})
    assert locked.status_code == 429 and "Too many failed logins" in locked.text
    assert int(locked.headers["retry-after"]) == 900 and "ainode_session" not in locked.headers.get("set-cookie", "")
    assert attempt("adam", "admin-password") == 303  # another account is not locked with it
    store = Store(node_db)
    try:
        from node.audit import WEB_LOGIN
        assert [r["outcome"] for r in store.audit_records(kind=WEB_LOGIN)][-2:] == ["throttled", "success"]
        # the window passes: the stored failures are 16 minutes old
        store.db.execute("UPDATE audit SET ts = ts - 960")
        store.db.conn.commit()
    finally:
        store.close()
    assert attempt("rita", "reader-password") == 303


def test_reader_cannot_reach_admin_and_logout_ends_the_session(node_db: Path) -> None:
    reader = logged_in(node_db, "rita", "reader-password")
    assert reader.get("/").status_code == 200
    assert reader.get("/admin").status_code == 403
    csrf = re.search(r'name="csrf" value="([^"]+)"', reader.get("/").text)
    assert csrf is not None
    assert reader.post("/admin/users", data={"username": "eve", "password": "x" * 10, "role": "admin",
                                             "csrf": csrf.group(1)}).status_code == 403
    assert reader.post("/logout", data={"csrf": "forged"}).status_code == 403  # CSRF token checked
    assert reader.post("/logout", data={"csrf": csrf.group(1)}).status_code == 303
    assert reader.get("/").status_code == 303  # the cookie's session is gone from the store

    admin = logged_in(node_db, "adam", "admin-password")
    page = admin.get("/admin")
    assert page.status_code == 200 and "rita" in page.text and "argon2" not in page.text
    assert "<title>Admin - dicom-ai-node</title>" in page.text and page.text.count('class="feedback-rates"') == 1
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    added = admin.post("/admin/users", data={"username": "ruth", "password": "ruth-password", "role": "reader",
                                             "csrf": csrf.group(1)})
    assert added.status_code == 303
    assert logged_in(node_db, "ruth", "ruth-password").get("/admin").status_code == 403


def test_worklist_order_badges_reasons_and_patient(node_db: Path) -> None:
    c = logged_in(node_db, "rita", "reader-password")
    page = c.get("/").text
    order = re.findall(r'data-study-uid="([^"]+)" data-priority="([^"]+)" data-status="([^"]+)"', page)
    # malignant first although it arrived second; then by arrival; the failed and unrouted studies stay listed
    assert order == [("2.2.2", "urgent", "done"), ("1.1.1", "routine", "done"), ("3.3.3", "routine", "failed"),
                     ("4.4.4", "routine", "not analysed")]
    assert "Malignant neoplasm, primary" in page and "p = 0.90; p 1.0; 2 findings" in page
    assert "CUDA out of memory" in page
    assert "badge-no-finding" in page and "badge-failed" in page and "badge-not-analysed" in page
    assert "Synthetic Patient" in page and "SYN-22" in page  # the patient, on this page only
    assert "result 30 s" in page  # arrival -> result
    failed_only = c.get("/worklist/rows?status=failed").text
    assert "3.3.3" in failed_only and "2.2.2" not in failed_only
    assert "No study matches" in c.get("/worklist/rows?modality=MR").text
    assert 'urgent: rule "malignant, likely"' in html.unescape(page)  # the site rule that set the priority
    urgent_only = c.get("/worklist/rows?priority=urgent").text
    assert "2.2.2" in urgent_only and "1.1.1" not in urgent_only
    bad = c.get("/worklist/rows?priority=soon")
    assert bad.status_code == 400 and "routine, urgent, asap, stat" in bad.text
    assert c.get("/worklist/rows?status=bogus").status_code == 400
    api = client(node_db).get("/api/studies", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert "SYN-22" not in api and "Synthetic" not in api


def test_study_page_findings_overlay_viewer_and_opened(node_db: Path) -> None:
    viewer = "http://viewer.example/viewer?StudyInstanceUIDs={study_uid}"
    c = logged_in(node_db, "rita", "reader-password", viewer_url=viewer)
    page = c.get("/study/2.2.2")
    assert page.status_code == 200
    assert "lesion 2" in page.text and "0.90" in page.text and "Neoplasm, benign" in page.text
    assert 'href="http://viewer.example/viewer?StudyInstanceUIDs=2.2.2"' in page.text
    assert "/study/2.2.2/overlay/8.22.png" in page.text
    assert "SYN-22" not in page.text and "Synthetic" not in page.text  # no patient identifiers here
    png = c.get("/study/2.2.2/overlay/8.22.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert c.get("/study/1.1.1/overlay/8.22.png").status_code == 404  # not that study's overlay
    assert c.get("/study/9.9.9").status_code == 404
    assert "opened" in c.get("/").text  # the worklist's timer: result -> opened
    assert "No finding." in c.get("/study/1.1.1").text


def test_without_a_token_the_machine_endpoints_want_a_person(node_db: Path) -> None:
    """No open mode: without a token (the node always has one: its own, when the config names none) /api/studies and
    /metrics answer 401 to a stranger and 200 to a logged-in person."""
    assert client(node_db, token=None).get("/api/studies").status_code == 401
    assert client(node_db, token=None).get("/metrics").status_code == 401
    c = logged_in(node_db, "rita", "reader-password", token=None)
    assert c.get("/api/studies").status_code == 200 and c.get("/metrics").status_code == 200


def test_a_node_without_token_file_makes_its_own_token_once(tmp_path: Path) -> None:
    from node.web.auth import ensure_api_token

    path, token, made = ensure_api_token(tmp_path)
    assert made and len(token) == 64 and path.stat().st_mode & 0o777 == 0o600
    assert ensure_api_token(tmp_path) == (path, token, False)  # the same token after a restart
    path.write_text("x\n")
    with pytest.raises(ValueError, match="delete the file"):
        ensure_api_token(tmp_path)


def test_web_config_names_the_fix(tmp_path: Path) -> None:
    from node.config import ConfigError, parse_settings

    ok = parse_settings({"web": {"viewer_url": "https://v.example/viewer?StudyInstanceUIDs={study_uid}"}})
    assert ok.web.viewer_url is not None and ok.web.session_hours == 12.0
    with pytest.raises(ConfigError, match=r"web.viewer_url .* with \{study_uid\} in it"):
        parse_settings({"web": {"viewer_url": "https://v.example/viewer"}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_settings({"web": {"viewer": "x"}})


@pytest.mark.timeout(30)  # no change event: the stream only sends heartbeats, and the test would wait
def test_events_say_when_a_study_changes(node_db: Path) -> None:
    c = logged_in(node_db, "rita", "reader-password")
    context: WebContext = c.app.state.context  # type: ignore[attr-defined]
    with c.stream("GET", "/events") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.iter_lines()
        assert next(lines) == "retry: 2000"
        store = Store(node_db)
        store.index_instance(inst("55", "5.5.5"), now=500.0)  # a new study arrives
        store.close()
        event = next(line for line in lines if line.startswith("event:"))  # the next one: within a second
        assert event == "event: change"
        context.stopping.set()  # what shutdown does: the stream ends
