"""The running node: listener, assembler, worker, outbox and status endpoints, wired from one Settings.

Each loop runs in its own thread with its own Store; all state is in SQLite, so stopping (or killing) the
process at any point and starting it again resumes where it was.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from node.assembler import Assembler
from node.audit import record_configuration
from node.config import ConfigError, DestinationSettings, Settings
from node.dicom_server import Listeners
from node.health import Check, progress_checks
from node.listener import ListenerDeps, Spool, start_listener
from node.delivery import open_destination
from node.delivery.outbox import Outbox
from node.pacs import study_instance_count
from node.resources import disk_space, low_space, watermark_bytes
from node.store import Store
from node.tls import http_context
from node.watchdog import Watchdog
from node.web import WebServer, start_web
from node.web.auth import ensure_api_token
from node.worker import Worker
from pipelines.base import Pipeline

log = logging.getLogger(__name__)


def default_loader(device: str, bundles_dir: Path | None = None) -> Callable[[str], Pipeline]:
    from pipelines.registry import load_pipeline

    return lambda name: load_pipeline(name, device=device, bundles_dir=bundles_dir)


def default_version_of(bundles_dir: Path | None = None) -> Callable[[str], str]:
    from pipelines.registry import pipeline_version

    return lambda name: pipeline_version(name, bundles_dir)


def check_routes(settings: Settings) -> None:
    """Every routed pipeline must be an installed bundle: fail at start-up, naming the key, rather than on the
    first study."""
    from pipelines.common.bundle_layout import BundleError
    from pipelines.registry import available_pipelines

    try:
        known = available_pipelines(settings.pipelines.bundles_dir)
    except BundleError as exc:
        raise ConfigError(f"pipelines.bundles_dir: {exc}") from exc
    for i, rule in enumerate(settings.routes):
        if rule.pipeline not in known:
            raise ConfigError(
                f"route[{i}].pipeline = {rule.pipeline!r} is not an installed pipeline: use one of {', '.join(known)}"
                f", or install it with 'dicom-ai-node pipelines install DIR --config FILE'"
            )


class Node:
    def __init__(
        self,
        settings: Settings,
        load_pipeline: Callable[[str], Pipeline] | None = None,
        version_of: Callable[[str], str] | None = None,
        fhir_client: Any = None,
    ) -> None:
        self.settings = settings
        self.data_dir = settings.node.data_dir
        self.db_path = self.data_dir / "node.db"
        self.load_pipeline = load_pipeline or default_loader(settings.node.device, settings.pipelines.bundles_dir)
        self.version_of = version_of or default_version_of(settings.pipelines.bundles_dir)
        self.fhir_client = fhir_client
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listener: Listeners | None = None
        self.web: WebServer | None = None
        self.pipelines_ready = threading.Event()
        self.worker: Worker | None = None  # set by the worker thread; /healthz asks it about abandoned runs

    def open_store(self) -> Store:
        return Store(self.db_path)

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self, preload: bool = True) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        store = self.open_store()
        released = store.release_leases_of_dead_owners(self.owner)
        if released:
            log.info("resuming %d job(s) left running by a previous process", released)
        self._reconcile_spool(store)
        if record_configuration(store, self.settings.source, self.settings.node.ae_title):
            log.warning("the configuration changed since the last start (audit record written)")
        store.close()
        deps = ListenerDeps(
            spool=Spool(self.data_dir / "spool"), open_store=self.open_store, routes=self.settings.routes,
            ingest=self.settings.ingest,
        )
        security = self.settings.security
        token = security.http.token
        if token is None:  # every endpoint but /healthz is behind a login or a token: the node makes its own
            token_path, token, made = ensure_api_token(self.data_dir)
            log.log(logging.WARNING if made else logging.INFO,
                    "API token for /api and /metrics: %s %s (set [security.http] token_file to choose one)",
                    "made at" if made else "read from", token_path)
        self.listener = start_listener(self.settings.node, deps, security)
        self.web = start_web(self.settings.node.host, self.settings.node.http_port, self.open_store, self.health,
                             token=token, ssl_context=http_context(security.http),
                             connection_stats=self.listener.book.stats, gauges=self.gauges,
                             web=self.settings.web, priority_rules=self.settings.priority_rules)
        self._spawn("assembler", self._assembler_loop)
        self._spawn("worker", lambda: self._worker_loop(preload))
        for destination in self.settings.destinations:  # one thread each: a destination down never holds up another
            self._spawn(f"outbox-{destination.name}", functools.partial(self._outbox_loop, destination))
        self._spawn("watchdog", self._watchdog_loop)

    def _reconcile_spool(self, store: Store) -> None:
        """Temp files are writes that were never acknowledged (the sender still has them): remove them.
        An indexed instance whose file is gone cannot be processed: say so loudly, once."""
        spool = self.data_dir / "spool"
        for tmp in spool.glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)
        missing = [r for r in store.db.query("SELECT path FROM instances") if not os.path.exists(r["path"])]
        if missing:
            log.error("%d indexed instance(s) have no spool file (was data_dir moved or cleaned?)", len(missing))

    def stop(self) -> None:
        self._stop.set()
        if self.listener is not None:
            self.listener.shutdown()
        if self.web is not None:
            self.web.shutdown()
            self.web.server_close()
        for t in self._threads:
            t.join(timeout=30)

    def serve_forever(self) -> None:
        # SIGTERM only sets the flag: the worker finishes its current job (or its lease expires) before exit.
        signal.signal(signal.SIGTERM, lambda _sig, _frame: self._stop.set())
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            log.info("stopping")
        finally:
            self.stop()

    def health(self) -> dict[str, Check]:
        """Each check True, or what is wrong with it (then /healthz answers 503)."""
        checks: dict[str, Check] = {t.name: t.is_alive() for t in self._threads}
        try:
            store = self.open_store()
            try:
                progress = progress_checks(store, self.settings.budgets, time.time())
            finally:
                store.close()
            checks["database"] = True
        except Exception as exc:
            checks["database"] = f"cannot read the database: {type(exc).__name__}: {exc}"
            progress = {}
        abandoned = self.worker.abandoned_runs() if self.worker is not None else []
        return {
            "listener": self.listener is not None, **checks, "pipelines_loaded": self.pipelines_ready.is_set(),
            **progress,
            "pipeline_threads": True if not abandoned else (
                f"{len(abandoned)} pipeline run(s) past their budget still executing ({'; '.join(abandoned)}); "
                "their jobs failed and the queue moved on, but only a restart stops them"),
            "disk_space": low_space(self.data_dir / "spool", self.settings.ingest) or True,
        }

    def gauges(self) -> dict[str, tuple[str, float]]:
        """Numbers for /metrics beside the database's: disk space of the spool and abandoned pipeline runs."""
        space = disk_space(self.data_dir / "spool")
        floor = watermark_bytes(space, self.settings.ingest)
        return {
            "ainode_spool_free_bytes": ("bytes free on the spool's filesystem", float(space.free_bytes)),
            "ainode_spool_watermark_bytes": ("stores are refused (0xA700) below this many free bytes", float(floor)),
            "ainode_spool_low_space": ("1 while free space is below the watermark", float(space.free_bytes < floor)),
            "ainode_pipeline_runs_abandoned": (
                "pipeline runs past their budget whose threads still execute",
                float(len(self.worker.abandoned_runs()) if self.worker is not None else 0)),
        }

    # -- loops ----------------------------------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=self._guard(name, target), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guard(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    target()
                    return
                except Exception:
                    log.exception("%s loop crashed; restarting it in 5 s", name)
                    self._stop.wait(5.0)
        return run

    def _assembler_loop(self) -> None:
        store = self.open_store()
        pacs = self.settings.pacs
        count = None
        if pacs is not None:
            ae_title = self.settings.node.ae_title
            count = lambda uid, own: study_instance_count(pacs, ae_title, uid, own)  # noqa: E731
        assembler = Assembler(store, self.settings, self.version_of, count)
        while not self._stop.is_set():
            assembler.tick()
            self._stop.wait(self.settings.assembly.poll_seconds)

    def _worker_loop(self, preload: bool) -> None:
        store = self.open_store()
        if preload:
            for rule in self.settings.routes:
                self.load_pipeline(rule.pipeline)  # model load before the first study, not during it
        self.pipelines_ready.set()
        worker = Worker(store, self.settings, self.load_pipeline, self.owner, self.fhir_client)
        self.worker = worker
        while not self._stop.is_set():
            if not worker.run_once():
                self._stop.wait(0.2)

    def _watchdog_loop(self) -> None:
        store = self.open_store()
        assembler = Assembler(store, self.settings, self.version_of)  # completion without asking the PACS
        watchdog = Watchdog(store, self.settings, lambda uid, why: assembler.complete(uid, why))
        while not self._stop.wait(self.settings.watchdog.interval_seconds):
            watchdog.tick()

    def _outbox_loop(self, destination: DestinationSettings) -> None:
        store = self.open_store()
        plugin = open_destination(destination, self.settings.node.ae_title, self.settings.priority_rules)
        outbox = Outbox(store, plugin, attempt_budget_seconds=self.settings.budgets.delivery_seconds)
        while not self._stop.is_set():
            if outbox.run_once() == 0:
                self._stop.wait(0.5)
