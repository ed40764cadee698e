"""An HL7 v2 receiver for the tests: hl7apy's MLLP server on a free loopback port, keeping every ORU^R01 it gets and
answering with an ACK built by hl7apy (AA, or the code and text a test sets; or no answer at all)."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message


class MllpListener:
    """``with MllpListener() as ris: ... ris.port ... ris.messages`` (parsed ORU^R01s, in order of arrival)."""

    def __init__(self) -> None:
        self.received: list[str] = []  # ER7 text of each message, as it came
        self.ack_code = "AA"
        self.ack_text = ""
        self.silent = False  # True: read the message, never answer
        self._lock = threading.Lock()
        listener = self

        class Handler(AbstractHandler):  # type: ignore[misc]
            def reply(self) -> str:
                return listener._reply(str(self.incoming_message))

        self.server = MLLPServer("127.0.0.1", 0, {"ORU^R01^ORU_R01": (Handler,)}, timeout=10)
        self.server.daemon_threads = True  # a handler told to stay silent must not hold up the test's end
        self.server.block_on_close = False
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="mllp-listener", daemon=True)

    def _reply(self, er7: str) -> str:
        with self._lock:
            self.received.append(er7)
        if self.silent:
            time.sleep(2)
            return ""
        incoming = parse_message(er7, find_groups=False)
        ack = Message("ACK", version="2.5.1")
        ack.msh.msh_3 = "TEST-RIS"
        ack.msh.msh_9 = "ACK^R01^ACK"
        ack.msh.msh_10 = f"ack-{len(self.received)}"
        ack.msh.msh_11 = "P"
        ack.msa.msa_1 = self.ack_code
        ack.msa.msa_2 = incoming.msh.msh_10.value
        if self.ack_text:
            ack.msa.msa_3 = self.ack_text
        return "\x0b" + str(ack.to_er7()) + "\x1c\x0d"

    @property
    def messages(self) -> list[Any]:
        with self._lock:
            return [parse_message(text, find_groups=True) for text in self.received]

    def __enter__(self) -> "MllpListener":
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
