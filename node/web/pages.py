"""The pages for people: login/logout, the worklist (/, live over server-sent events), a study's page (/study/UID:
overlays, findings, viewer link, readers' feedback: node.web.feedback takes its forms) and /admin (accounts, the
AI feedback rates; admins only).

Server-rendered (Jinja2). Form posts carry a CSRF token: the session's own once logged in, a double-submit cookie
on the login form. The patient's name and ID are rendered on the worklist only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from node.audit import WEB_LOGIN
from node.priority import Priority
from node.web import auth
from node.web.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Principal, Role
from node.web.context import WebContext
from node.web.worklist import AiStatus, duration, worklist, worklist_row

router = APIRouter()
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters["duration"] = lambda pair: duration(*pair)
templates.env.filters["clock"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""

SSE_POLL_SECONDS = 1.0
SSE_HEARTBEAT_SECONDS = 15.0


def _context(request: Request) -> WebContext:
    context: WebContext = request.app.state.context
    return context


def person(request: Request) -> Principal:
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None or principal.role is None:  # the middleware lets only people here; a second lock
        raise HTTPException(401, "log in at /login")
    return principal


def admin(user: Principal = Depends(person)) -> Principal:
    if user.role != Role.ADMIN:
        raise HTTPException(403, f"{user.name} is a {user.role}: this page is for admins")
    return user


def _check_csrf(user: Principal, offered: str) -> None:
    if not offered or not secrets.compare_digest(offered, user.csrf):
        raise HTTPException(403, "the form is stale (CSRF token does not match): reload the page and try again")


def _safe_next(target: str) -> str:
    return target if target.startswith("/") and not target.startswith("//") else "/"


# -- login ---------------------------------------------------------------------------------------------------------

def _login_form(request: Request, next_path: str, error: str = "", status_code: int = 200) -> Response:
    csrf = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(request, "login.html", {"csrf": csrf, "next": _safe_next(next_path),
                                                                  "error": error}, status_code=status_code)
    response.set_cookie(LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/login")
    return response


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:  # noqa: A002 (the query parameter's name)
    return _login_form(request, next)


@router.post("/login")
def login_submit(request: Request, username: str = Form(""), password: str = Form(""), csrf: str = Form(""),
                 next: str = Form("/")) -> Response:  # noqa: A002
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not csrf or not expected or not secrets.compare_digest(csrf, expected):
        return _login_form(request, next, "The form expired: please log in again.", 403)
    context = _context(request)
    source = request.client.host if request.client else ""
    store = context.open_store()
    try:
        window = context.web.login_lockout_minutes * 60
        if auth.login_throttled(store, username, source, context.web.login_max_failures, window, time.time()):
            store.audit(WEB_LOGIN, "throttled", actor=username[:64], source=source)
            response = _login_form(request, next, "Too many failed logins: try again in "
                                   f"{context.web.login_lockout_minutes:g} minutes, or ask an admin.", 429)
            response.headers["Retry-After"] = str(int(window))
            return response
        ok = auth.login(store, username, password)
        store.audit(WEB_LOGIN, "success" if ok else "wrong-credentials", actor=username[:64], source=source)
        if not ok:
            return _login_form(request, next, "Unknown user name or wrong password.", 401)
        token = auth.new_session(store, username, context.web.session_hours, time.time())
    finally:
        store.close()
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, token, max_age=int(context.web.session_hours * 3600), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, csrf: str = Form(""), user: Principal = Depends(person)) -> Response:
    _check_csrf(user, csrf)
    store = _context(request).open_store()
    try:
        store.close_session(auth.token_digest(request.cookies.get(SESSION_COOKIE, "")))
    finally:
        store.close()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- worklist ------------------------------------------------------------------------------------------------------

def _min_priority(priority: str) -> Priority | None:
    if not priority:
        return None
    try:
        return Priority.parse(priority)
    except ValueError as exc:
        raise HTTPException(400, f"priority={exc}") from None


def _rows(request: Request, status: str | None, modality: str | None, priority: str = "") -> list[Any]:
    context = _context(request)
    if status and status not in {s.value for s in AiStatus}:
        raise HTTPException(400, f"status={status!r}: use one of {', '.join(s.value for s in AiStatus)}")
    store = context.open_store()
    try:
        return worklist(store, context.headers, status=status or None, modality=modality or None,
                        rules=context.priority_rules, min_priority=_min_priority(priority))
    finally:
        store.close()


@router.get("/", response_class=HTMLResponse)
def worklist_page(request: Request, status: str = "", modality: str = "", priority: str = "",
                  user: Principal = Depends(person)) -> Response:
    rows = _rows(request, status, modality, priority)
    return templates.TemplateResponse(request, "worklist.html", {
        "user": user, "rows": rows, "status": status, "modality": modality, "statuses": [s.value for s in AiStatus],
        "priority": priority, "priorities": [p.code for p in Priority], "now": time.time()})


@router.get("/worklist/rows", response_class=HTMLResponse)
def worklist_rows(request: Request, status: str = "", modality: str = "", priority: str = "",
                  user: Principal = Depends(person)) -> Response:
    """The table's rows alone: what the page's script swaps in when the events say something changed."""
    return templates.TemplateResponse(request, "_rows.html", {"rows": _rows(request, status, modality, priority),
                                                              "status": status, "modality": modality,
                                                              "priority": priority, "now": time.time()})


@router.get("/events")
async def events(request: Request, user: Principal = Depends(person)) -> Response:
    """Server-sent events: ``change`` whenever a study or job changed (the database polled once a second)."""
    context = _context(request)

    async def stream() -> AsyncIterator[str]:
        # one connection for the stream's life (used by one thread at a time: each poll is awaited)
        store = await run_in_threadpool(context.open_store)
        try:
            last = await run_in_threadpool(store.change_mark)
            quiet = 0.0
            yield "retry: 2000\n\n"
            while not await request.is_disconnected() and not context.stopping.is_set():
                await asyncio.sleep(SSE_POLL_SECONDS)
                now = await run_in_threadpool(store.change_mark)
                if now != last:
                    last, quiet = now, 0.0
                    yield f"event: change\ndata: {now[0]}\n\n"
                else:
                    quiet += SSE_POLL_SECONDS
                    if quiet >= SSE_HEARTBEAT_SECONDS:
                        quiet = 0.0
                        yield ": still here\n\n"
        finally:
            store.close()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# -- a study ---------------------------------------------------------------------------------------------------------

@router.get("/study/{study_uid}", response_class=HTMLResponse)
def study_page(request: Request, study_uid: str, user: Principal = Depends(person)) -> Response:
    context = _context(request)
    store = context.open_store()
    try:
        study = store.study(study_uid)
        if study is None:
            raise HTTPException(404, f"no study {study_uid} on this node: see the worklist at /")
        store.record_opened(study_uid, user.name)
        # the study description from the header; the patient's name and ID stay on the worklist
        row = dataclasses.replace(worklist_row(store, study, context.headers, context.priority_rules), patient=None)
        runs: list[dict[str, Any]] = []
        for job in store.jobs(study_uid):
            run = store.current_run(job["job_id"])
            runs.append({
                "job": job, "run": run,
                "findings": store.findings_of_run(run["run_id"]) if run is not None else [],
                "overlays": [r["sop_instance_uid"] for r in store.results_of_run(run["run_id"])
                             if r["kind"] == "sc" and Path(r["path"]).with_suffix(".png").exists()]
                if run is not None else [],
            })
        feedback = store.feedback_of_study(study_uid)  # each reader's current verdicts (node.web.feedback)
    finally:
        store.close()
    viewer = context.web.viewer_url.format(study_uid=study_uid) if context.web.viewer_url else None
    return templates.TemplateResponse(request, "study.html", {
        "user": user, "row": row, "runs": runs, "viewer_url": viewer, "now": time.time(), "feedback": feedback})


@router.get("/study/{study_uid}/overlay/{sop_instance_uid}.png")
def overlay(request: Request, study_uid: str, sop_instance_uid: str,
            user: Principal = Depends(person)) -> Response:
    store = _context(request).open_store()
    try:
        result = store.result_object(study_uid, sop_instance_uid)
    finally:
        store.close()
    png = Path(result["path"]).with_suffix(".png") if result is not None and result["kind"] == "sc" else None
    if png is None or not png.exists():
        raise HTTPException(404, "no such overlay for this study")
    return FileResponse(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


# -- admin ---------------------------------------------------------------------------------------------------------

@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request, user: Principal = Depends(admin), error: str = "") -> Response:
    store = _context(request).open_store()
    try:
        users = store.users()
        feedback_rates = store.feedback_rates()
    finally:
        store.close()
    return templates.TemplateResponse(request, "admin.html", {"user": user, "users": users, "error": error,
                                                              "roles": [r.value for r in Role],
                                                              "feedback_rates": feedback_rates})


@router.post("/admin/users")
def admin_add_user(request: Request, username: str = Form(""), password: str = Form(""), role: str = Form(""),
                   csrf: str = Form(""), user: Principal = Depends(admin)) -> Response:
    _check_csrf(user, csrf)
    try:
        if not username.strip():
            raise auth.AuthError("give the account a user name")
        password_hash = auth.hash_password(password)
        checked = auth.parse_role(role)
    except auth.AuthError as exc:
        return admin_page(request, user, str(exc))
    store = _context(request).open_store()
    try:
        store.add_user(username.strip(), password_hash, checked.value)
    finally:
        store.close()
    return RedirectResponse("/admin", status_code=303)
