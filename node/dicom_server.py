"""The DICOM listening sockets, with the guards pynetdicom's server lacks: a limit of open connections per host,
a bound on connections still negotiating (the oldest is dropped for a new one), one deadline for the TLS handshake
and the A-ASSOCIATE-RQ, and an association limit that counts established associations only.

Access decisions come from ``node.access``; what an association does once established is ``node.listener``'s.
"""

from __future__ import annotations

import gc
import logging
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from node.access import (
    REASON_LOCAL_LIMIT_EXCEEDED, REASON_NO_REASON, REJECTED_PERMANENT, REJECTED_TRANSIENT, SOURCE_PRESENTATION,
    SOURCE_SERVICE_USER, OfferedIdentity, Rejection, check_association,
)
from node.config import SecuritySettings

log = logging.getLogger("node.dicom_server")


@dataclass(frozen=True)
class ConnectionLimits:
    associate_seconds: float  # from accept to an established association, TLS handshake included
    idle_seconds: float  # an established association stalled mid-PDU this long is dropped
    per_host: int
    pending: int
    associations: int

    @classmethod
    def of(cls, security: SecuritySettings) -> "ConnectionLimits":
        return cls(security.associate_timeout_seconds, security.idle_timeout_seconds,
                   security.max_connections_per_host, security.max_pending_connections, security.max_associations)


class Connection:
    """One accepted connection, as the book sees it (mutated only under the book's lock)."""

    __slots__ = ("host", "sock", "accepted_at", "admitted", "dropped")

    def __init__(self, host: str, sock: socket.socket, accepted_at: float) -> None:
        self.host = host
        self.sock = sock
        self.accepted_at = accepted_at
        self.admitted = False  # passed the access checks and holds an association slot
        self.dropped = False  # closed by the book (deadline or evicted), not by the peer


def _shut(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: the latter drops the TLS object under a reading thread.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the peer or by pynetdicom


class ConnectionBook:
    """Open connections per host, those not yet admitted (oldest first) and admitted associations; shared by the
    node's listeners, every decision under one lock."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._per_host: dict[str, int] = {}
        self._pending: OrderedDict[Connection, None] = OrderedDict()
        self._admitted = 0
        self._closed: dict[str, int] = {}  # why the node closed or refused connections, for /metrics

    def note(self, reason: str) -> None:
        with self._lock:
            self._closed[reason] = self._closed.get(reason, 0) + 1

    def open(self, sock: socket.socket, host: str, now: float) -> tuple[Connection | None, Connection | None]:
        """(the new connection or None when its host is at its limit, a connection evicted to make room)."""
        with self._lock:
            if self._per_host.get(host, 0) >= self.limits.per_host:
                self._closed["per-host-limit"] = self._closed.get("per-host-limit", 0) + 1
                return None, None
            conn = Connection(host, sock, now)
            self._per_host[host] = self._per_host.get(host, 0) + 1
            self._pending[conn] = None
            evicted = None
            if len(self._pending) > self.limits.pending:
                # The oldest negotiating connection goes: a real sender negotiates in milliseconds, an idle
                # flood socket waits for its deadline, so under a flood the victim is nearly always the flood.
                evicted, _ = self._pending.popitem(last=False)
                evicted.dropped = True
                self._closed["evicted"] = self._closed.get("evicted", 0) + 1
                _shut(evicted.sock)
            return conn, evicted

    def replace_socket(self, conn: Connection, sock: socket.socket) -> None:
        with self._lock:
            conn.sock = sock

    def admit(self, conn: Connection) -> bool:
        """Take an association slot; False when ``max_associations`` are established already."""
        with self._lock:
            if conn.admitted:
                return True
            if self._admitted >= self.limits.associations:
                return False
            conn.admitted = True
            self._admitted += 1
            self._pending.pop(conn, None)
            return True

    def drop(self, conn: Connection) -> None:
        """Close a connection that missed its deadline (the threads serving it then end on their own)."""
        with self._lock:
            conn.dropped = True
            self._pending.pop(conn, None)
            _shut(conn.sock)

    def close(self, conn: Connection) -> None:
        """The connection is over: forget it and close its socket."""
        with self._lock:
            self._pending.pop(conn, None)
            left = self._per_host.get(conn.host, 1) - 1
            if left > 0:
                self._per_host[conn.host] = left
            else:
                self._per_host.pop(conn.host, None)
            if conn.admitted:
                self._admitted -= 1
                conn.admitted = False
            _shut(conn.sock)
        conn.sock.close()

    def stats(self) -> ConnectionStats:
        with self._lock:
            return ConnectionStats(open=sum(self._per_host.values()), negotiating=len(self._pending),
                                   associations=self._admitted, closed=dict(self._closed))


@dataclass(frozen=True)
class ConnectionStats:
    """What the book holds now, and how many connections it closed or refused, by reason (for /metrics)."""

    open: int
    negotiating: int
    associations: int
    closed: dict[str, int]


class _Throttle:
    """Lets a key through at most once per interval and counts what it held back meanwhile."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}

    def passes(self, key: str) -> tuple[bool, int]:
        """(whether to log now, how many were held back since the last one logged)."""
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(key, (-self.interval, 0))
            if now - last < self.interval:
                self._seen[key] = (last, held + 1)
                return False, held + 1
            if len(self._seen) > 4096:  # many distinct hosts: forget them rather than grow without bound
                self._seen.clear()
            self._seen[key] = (now, 0)
            return True, held


class ThrottledLog:
    """At most one warning per key per interval, with a count of those held back: a flood must not flood the log."""

    def __init__(self, interval: float = 10.0) -> None:
        self._throttle = _Throttle(interval)

    def warning(self, key: str, message: str, *args: Any) -> None:
        passes, held = self._throttle.passes(key)
        if passes:
            suffix = f" ({held} more like this in the last {self._throttle.interval:g} s)" if held else ""
            log.warning(message + suffix, *args)


class ThrottledLibraryLog(logging.Filter):
    """A handler filter for pynetdicom's records: each message template at most once per interval (other loggers'
    records pass). pynetdicom logs every broken connection at ERROR with a traceback: under a flood, dozens of
    lines a second."""

    def __init__(self, library: str = "pynetdicom", interval: float = 10.0) -> None:
        super().__init__()
        self.library = library
        self._throttle = _Throttle(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != self.library and not record.name.startswith(self.library + "."):
            return True
        passes, held = self._throttle.passes(f"{record.name}:{record.msg}")
        if passes and held:
            record.msg = f"{record.msg} ({held} more like this in the last {self._throttle.interval:g} s)"
        return passes


def handle_requested(event: evt.Event, security: SecuritySettings, own_ae_title: str, book: ConnectionBook,
                     conn: Connection, throttled: ThrottledLog) -> None:
    """EVT_REQUESTED: the access checks, then an association slot; a refusal is an A-ASSOCIATE-RJ."""
    assoc: Association = event.assoc
    rejection: Rejection | None
    try:
        request = assoc.requestor.primitive
        assert request is not None
        item = assoc.requestor.user_identity
        identity = None if item is None else OfferedIdentity(
            int(item.user_identity_type or 0), bytes(item.primary_field or b""), bytes(item.secondary_field or b""))
        rejection = check_association(security, own_ae_title, str(request.calling_ae_title),
                                      str(request.called_ae_title), conn.host, identity)
        if rejection is None and not book.admit(conn):
            rejection = Rejection(REJECTED_TRANSIENT, SOURCE_PRESENTATION, REASON_LOCAL_LIMIT_EXCEEDED,
                                  f"{book.limits.associations} associations are established already")
    except Exception as exc:  # pynetdicom swallows a notification handler's exception: fail closed here instead
        rejection = Rejection(REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON,
                              f"access check failed ({type(exc).__name__})")
    if rejection is None:
        return
    book.note("association-limit" if rejection.source == SOURCE_PRESENTATION else "rejected")
    throttled.warning(f"reject {conn.host} {rejection.why}", "association from %s refused: %s", conn.host,
                      rejection.why)
    assoc.acse.send_reject(rejection.result, rejection.source, rejection.reason)
    assoc.kill()  # what pynetdicom does after its own rejections: waits for the DUL to send the A-ASSOCIATE-RJ


class _SharedContexts(list):  # type: ignore[type-arg]
    """The server's presentation contexts, shared by its associations instead of deep-copied for each one.

    pynetdicom deep-copies them per connection: 171 contexts x 45 transfer syntaxes cost about 60 ms of CPU per
    connection, which a flood turns into the whole CPU. Nothing changes them after start, and negotiation only
    reads them."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "_SharedContexts":
        return self


class _AssociationFactory(RequestHandler):
    """pynetdicom's request handler, reduced to building the Association: the server starts it once guarded."""

    assoc: Association

    def handle(self) -> None:
        self.assoc = self._create_association()


class GuardedServer(ThreadedAssociationServer):
    """An association server that takes the TLS handshake off the accept loop (pynetdicom does it there, so one
    silent client stops every accept) and applies a ``ConnectionBook``."""

    request_queue_size = 128  # socketserver's 5: a burst of flood connections would leave a real SYN waiting

    def __init__(self, ae: AE, address: tuple[str, int], ae_title: str, contexts: list[Any],
                 ssl_context: ssl.SSLContext | None = None, evt_handlers: list[Any] | None = None, *,
                 book: ConnectionBook, security: SecuritySettings) -> None:
        self.book = book
        self.security = security
        self.throttled = ThrottledLog()
        self._last_gc = time.monotonic()
        super().__init__(ae, address, ae_title, contexts, ssl_context, evt_handlers,
                         request_handler=_AssociationFactory)

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        return self.socket.accept()  # no TLS here: the handshake runs in the connection's own thread

    def process_request(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        conn, evicted = self.book.open(request, host, time.monotonic())
        if conn is None:
            self.throttled.warning(f"limit {host}", "connection from %s closed: %d connections from it are open "
                                   "([security] max_connections_per_host)", host, self.book.limits.per_host)
            self.shutdown_request(request)
            return
        if evicted is not None:
            self.throttled.warning("evicted", "connection from %s closed before negotiating: %d connections are "
                                   "negotiating ([security] max_pending_connections)", evicted.host,
                                   self.book.limits.pending)
        threading.Thread(target=self._serve, args=(conn, client_address), name=f"conn-{host}", daemon=True).start()

    def service_actions(self) -> None:
        # pynetdicom runs a full gc.collect() every 60 passes of the accept loop (for association threads it saw
        # linger): 30 s when idle, but many times a second under a flood, in a process that holds torch's objects.
        if time.monotonic() - self._last_gc > 30:
            self._last_gc = time.monotonic()
            gc.collect()

    def _serve(self, conn: Connection, client_address: Any) -> None:
        deadline = conn.accepted_at + self.book.limits.associate_seconds
        try:
            sock = self._handshake(conn, deadline)
            if sock is None or not self._request_arrives(conn, sock, deadline):
                return
            sock.settimeout(self.book.limits.idle_seconds)  # a stall mid-PDU ends the association
            assoc = _AssociationFactory(sock, client_address, self).assoc
            assoc.bind(evt.EVT_REQUESTED, handle_requested,
                       [self.security, self.ae_title, self.book, conn, self.throttled])
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": client_address})
            assoc.start()
            while assoc.is_alive() and not assoc.is_established:
                if time.monotonic() >= deadline:
                    self.throttled.warning(f"slow {conn.host}", "connection from %s closed: no association within "
                                           "%.0f s ([security] associate_timeout_seconds)", conn.host,
                                           self.book.limits.associate_seconds)
                    self.book.note("associate-timeout")
                    self.book.drop(conn)
                    break
                assoc.join(0.05)
            assoc.join()
        except Exception:
            log.exception("connection from %s failed", conn.host)
        finally:
            self.book.close(conn)

    def _handshake(self, conn: Connection, deadline: float) -> socket.socket | None:
        if self.ssl_context is None:
            return conn.sock
        try:
            tls = self.ssl_context.wrap_socket(conn.sock, server_side=True, do_handshake_on_connect=False)
            self.book.replace_socket(conn, tls)
            tls.settimeout(max(deadline - time.monotonic(), 0.01))
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self.book.note("tls-handshake")
            self.throttled.warning(f"tls {conn.host} {reason}", "TLS handshake with %s failed: %s", conn.host, reason)
            return None
        return tls

    def _request_arrives(self, conn: Connection, sock: socket.socket, deadline: float) -> bool:
        """Wait for the first bytes before pynetdicom builds an Association: its reactor polls an idle socket
        a thousand times a second, which a few dozen silent connections would turn into a busy CPU."""
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            ready, _, _ = select.select([sock], [], [], max(deadline - time.monotonic(), 0))
        except (OSError, ValueError):
            return False
        if not ready and not conn.dropped:
            self.book.note("associate-timeout")
            self.throttled.warning(f"slow {conn.host}", "connection from %s closed: nothing received within %.0f s "
                                   "([security] associate_timeout_seconds)", conn.host,
                                   self.book.limits.associate_seconds)
        if not ready or conn.dropped:
            return False
        if not isinstance(sock, ssl.SSLSocket):
            try:
                first = sock.recv(1, socket.MSG_PEEK)
            except OSError:
                return False
            if first == b"":  # the peer has gone already
                return False
            if first != b"\x01":  # not an A-ASSOCIATE-RQ (port scans, HTTP, TLS to a plain port): close at once
                self.book.note("not-dicom")
                self.throttled.warning(f"garbage {conn.host}", "connection from %s closed: it did not start with an "
                                       "A-ASSOCIATE-RQ", conn.host)
                return False
        return True


@dataclass(frozen=True)
class Listeners:
    """The node's DICOM listening servers (one, or plain beside TLS); ``shutdown()`` stops accepting on all."""

    servers: tuple[GuardedServer, ...]
    book: ConnectionBook

    def shutdown(self) -> None:
        for server in self.servers:
            server.shutdown()


def serve(ae: AE, address: tuple[str, int], security: SecuritySettings, handlers: list[Any],
          book: ConnectionBook, ssl_context: ssl.SSLContext | None) -> GuardedServer:
    """Start one guarded server in a background thread (what ``AE.start_server(block=False)`` does)."""
    server = ae.make_server(address, ssl_context=ssl_context, evt_handlers=handlers, server_class=GuardedServer,
                            book=book, security=security)
    assert isinstance(server, GuardedServer)
    server.contexts = _SharedContexts(server.contexts)
    threading.Thread(target=server.serve_forever, name=f"dicom-accept-{address[1]}", daemon=True).start()
    ae._servers.append(server)  # AssociationServer.shutdown() removes itself from this list
    return server
