"""The logging edge: library warnings that quote patient values are redacted; repeats are rate-limited."""

from __future__ import annotations

import io
import logging
import warnings

from node.logs import REDACTED, RateLimitFilter, install, redact


def capture(burst: int = 10) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    install(handler, burst=burst, window=60.0)
    logger = logging.getLogger(f"pydicom.test{burst}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_quoted_values_are_redacted_in_messages_and_exceptions() -> None:
    assert redact("Invalid value for VR PN: 'Zzsecret^Patient'.") == f"Invalid value for VR PN: {REDACTED}."
    assert "PHI-987654" not in redact("raw b'\\x00PHI-987654' and \"PHI-987654\"")
    logger, stream = capture()
    logger.warning("Invalid value for VR %s: %r", "LO", "PHI-987654")
    try:
        raise ValueError("bad element value 'Zzsecret^Patient'")
    except ValueError:
        logger.exception("decoding failed")
    out = stream.getvalue()
    assert "PHI-987654" not in out and "Zzsecret" not in out and "ValueError" in out


def test_python_warnings_routed_through_logging_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    install(handler)
    py_warnings = logging.getLogger("py.warnings")
    py_warnings.addHandler(handler)
    logging.captureWarnings(False)  # an earlier setup_logging may have captured them already: start clean
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("Invalid value for VR AS: 'Zzsecret^Patient'", UserWarning)
    finally:
        logging.captureWarnings(False)
        py_warnings.removeHandler(handler)
    assert "Invalid value for VR AS" in stream.getvalue() and "Zzsecret" not in stream.getvalue()


def test_repeated_messages_are_rate_limited_and_the_drop_is_reported() -> None:
    logger, stream = capture(burst=3)
    for n in range(1000):
        logger.warning("Invalid value for VR DA: '%s'", f"2026{n:04d}")
    assert len(stream.getvalue().splitlines()) == 3
    limiter = next(f for f in logger.handlers[0].filters if isinstance(f, RateLimitFilter))
    limiter.window = 0.0  # the window has passed: the next record carries the count
    logger.warning("Invalid value for VR DA: '%s'", "20260101")
    assert "997 similar message(s) suppressed" in stream.getvalue().splitlines()[-1]
