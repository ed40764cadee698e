"""Who is asking: people by a session cookie (local accounts, argon2id hashes, roles reader/admin), machines by the
configured bearer token. The ASGI middleware here guards every path but /healthz, /login and /static.

Pages answer an unauthenticated request with a redirect to /login, everything else with 401. The machine endpoints
(/api/*, /metrics) want the token or a logged-in person; a node without ``[security.http] token_file`` makes its own
token at first start (``ensure_api_token``: data_dir/api-token, readable by its owner only). Sessions live in the
store: logout and a password change end them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Awaitable, Callable, MutableMapping
from urllib.parse import quote

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.requests import HTTPConnection

from node.audit import WEB_LOGIN
from node.store import Store

SESSION_COOKIE = "ainode_session"
LOGIN_CSRF_COOKIE = "ainode_login_csrf"
OPEN_PATHS = ("/healthz", "/login")
# paths for people: a browser without a session is sent to the login form
PAGE_PREFIXES = ("/study/", "/admin")
# fetched by the pages' scripts: without a session 401, not a redirect the script cannot follow
PEOPLE_PREFIXES = ("/events", "/worklist/", "/logout")

_hasher = PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) parameters


class Role(StrEnum):
    READER = "reader"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role | None  # None: the machine token
    csrf: str = ""  # the session's token for its form posts


class AuthError(ValueError):
    """A bad account request (unknown role, empty password); the message names the fix."""


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise AuthError("the password must have at least 8 characters")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def parse_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise AuthError(f"unknown role {role!r}: use one of {', '.join(r.value for r in Role)}") from None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session(store: Store, username: str, hours: float, now: float) -> str:
    """Open a session; returns the cookie's value (the store keeps only its digest)."""
    token = secrets.token_urlsafe(32)
    store.open_session(token_digest(token), username, secrets.token_urlsafe(24), now + hours * 3600)
    return token


def login(store: Store, username: str, password: str) -> bool:
    """True when the account exists and the password is its own (the hash is checked either way: no timing hint)."""
    user = store.user(username)
    if user is None:
        verify_password(_DUMMY_HASH, password)
        return False
    return verify_password(user["password_hash"], password)


_DUMMY_HASH = _hasher.hash(secrets.token_hex(8))

API_TOKEN_FILE = "api-token"


def ensure_api_token(data_dir: Path) -> tuple[Path, str, bool]:
    """The node's own API token when the config names none: read from ``data_dir/api-token``, or made there (64 hex
    characters, mode 0600) at first start. Returns the file, the token and whether it was made now."""
    path = data_dir / API_TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16 or any(c.isspace() for c in token):
            raise ValueError(f"{path}: not a token the node made (one word of 16+ characters); delete the file and "
                             f"the node makes a new one at start") from None
        return path, token, False
    token = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path, token, True

SOURCE_FAILURE_FACTOR = 4  # one address may fail this many times the per-account limit (shared NAT, many users)


def login_throttled(store: Store, username: str, source: str, max_failures: int, window_seconds: float,
                    now: float) -> bool:
    """True when the account, or the address asking, has failed too often within the window: the login is refused
    without checking the password. The counts come from the audit trail, so a restart forgets nothing."""
    since = now - window_seconds
    return (store.failed_logins(WEB_LOGIN, since, actor=username[:64]) >= max_failures
            or store.failed_logins(WEB_LOGIN, since, source=source) >= max_failures * SOURCE_FAILURE_FACTOR)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AuthMiddleware:
    """Sets ``scope["state"]["principal"]`` or answers 401 / a redirect to /login itself."""

    def __init__(self, app: ASGIApp, open_store: Callable[[], Store], token: str | None) -> None:
        self.app = app
        self.open_store = open_store
        self.expected = f"Bearer {token}".encode() if token else None

    def _principal(self, conn: HTTPConnection) -> Principal | None:
        offered = (conn.headers.get("authorization") or "").strip().encode()
        if self.expected is not None and offered and hmac.compare_digest(offered, self.expected):
            return Principal("api-token", None)
        cookie = conn.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        store = self.open_store()
        try:
            session = store.session(token_digest(cookie))
        finally:
            store.close()
        if session is None:
            return None
        return Principal(session["username"], Role(session["role"]), session["csrf"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in OPEN_PATHS or path.startswith("/static/"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        principal = await anyio.to_thread.run_sync(self._principal, conn)
        page = path == "/" or path.startswith(PAGE_PREFIXES)
        people = page or path.startswith(PEOPLE_PREFIXES)
        person = principal is not None and principal.role is not None
        if (people and person) or (not people and principal is not None):
            scope.setdefault("state", {})["principal"] = principal
            await self.app(scope, receive, send)
        elif page and principal is None:
            target = path + ("?" + scope["query_string"].decode() if scope.get("query_string") else "")
            await _answer(send, 303, b"", [(b"location", f"/login?next={quote(target, safe='')}".encode())])
        else:
            body = json.dumps({"error": "log in at /login (people), or send 'Authorization: Bearer <token>' "
                                        "([security.http] token_file) for the machine endpoints"}).encode()
            await _answer(send, 401, body, [(b"content-type", b"application/json"),
                                            (b"www-authenticate", b'Bearer realm="dicom-ai-node"')])


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
