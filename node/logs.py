"""The logging edge: every record leaves the process without patient data, and repeated bad input cannot flood it.

Libraries quote raw values in their warnings (pydicom: ``Invalid value for VR PN: 'Doe^Jane'``), and malformed
input is exactly when they do, so redaction happens here, on the handler, for every logger (ours included) and
for Python warnings routed into logging: quoted and byte-string literals become ``<redacted>``. Our own messages
name studies by hashed UIDs and never quote values, so they lose nothing.
"""

from __future__ import annotations

import logging
import re
import threading
import time

REDACTED = "<redacted>"
# b'...', '...', "..." (non-greedy, single line) and anything after "value" keywords pydicom uses unquoted.
_QUOTED = re.compile(r"""b?'[^'\n]*'|b?"[^"\n]*"|\bvalue\s*[:=]\s*\S+""", re.IGNORECASE)
_MAX_CHARS = 400


def redact(text: str) -> str:
    """``text`` with every quoted or byte-string literal replaced, truncated to a bounded length."""
    cleaned = _QUOTED.sub(REDACTED, text)
    return cleaned if len(cleaned) <= _MAX_CHARS else cleaned[:_MAX_CHARS] + "..."


class RedactingFilter(logging.Filter):
    """Freezes each record's message (and exception text) in redacted form before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            exc = record.exc_info[1]
            # The type and a redacted message; never the traceback's local values or the raw exception text.
            record.msg += f" [{type(exc).__name__}: {redact(str(exc))}]" if exc is not None else ""
            record.exc_info = None
            record.exc_text = None
        if record.stack_info:
            record.stack_info = None
        return True


class RateLimitFilter(logging.Filter):
    """At most ``burst`` records per distinct (logger, redacted message) per ``window`` seconds; the next record
    after a window with suppressions says how many were dropped. Runs after ``RedactingFilter``, so messages that
    differ only in a quoted value count as the same message."""

    def __init__(self, burst: int = 10, window: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], list[float]] = {}  # key -> [window start, count, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.window:
                suppressed = int(entry[2]) if entry is not None else 0
                self._seen[key] = [now, 1, 0]
                if len(self._seen) > 10_000:  # bounded memory under a flood of distinct messages
                    self._seen = {key: self._seen[key]}
                if suppressed:
                    record.msg = f"{record.msg} ({suppressed} similar message(s) suppressed in the last {self.window:g} s)"
                return True
            entry[1] += 1
            if entry[1] <= self.burst:
                return True
            entry[2] += 1
            return False


def install(handler: logging.Handler, burst: int = 10, window: float = 60.0) -> None:
    """Put the redaction and the rate limit on ``handler`` (order matters: redact first)."""
    handler.addFilter(RedactingFilter())
    handler.addFilter(RateLimitFilter(burst, window))
