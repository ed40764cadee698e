"""What the web application's routes share: how to open the store, the health checks, the metrics registry, the
[web] settings and a small cache of patient headers (read from the spool once per instance file)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from prometheus_client import CollectorRegistry

from node.config import WebSettings
from node.priority import DEFAULT_RULES, PriorityRule
from node.store import Store
from node.web.status import HealthCheck
from node.web.worklist import PatientHeader, read_patient_header


@dataclass
class HeaderCache:
    """Patient headers by instance path, the latest ``size`` kept (the worklist re-renders on every change)."""

    size: int = 2000
    _items: OrderedDict[str, PatientHeader | None] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, path: str) -> PatientHeader | None:
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return self._items[path]
        header = read_patient_header(path)
        with self._lock:
            self._items[path] = header
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return header


@dataclass(frozen=True)
class WebContext:
    open_store: Callable[[], Store]
    health: HealthCheck
    registry: CollectorRegistry
    web: WebSettings = WebSettings()
    priority_rules: tuple[PriorityRule, ...] = DEFAULT_RULES  # [[priority_rule]]: the worklist's order
    headers: HeaderCache = field(default_factory=HeaderCache)
    stopping: threading.Event = field(default_factory=threading.Event)  # ends the event streams at shutdown
