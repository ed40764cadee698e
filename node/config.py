"""TOML file -> one frozen Settings object, built once at start and passed down.

Every error names the key and says how to fix it; nothing else in the node reads the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.priority import DEFAULT_RULES, PriorityRule, parse_rules


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "AINODE"
    host: str = "127.0.0.1"
    port: int = 11112
    data_dir: Path = Path("./data")
    http_port: int = 8080
    log_level: str = "INFO"
    device: str = "auto"  # "auto", "cpu" or "cuda"


@dataclass(frozen=True)
class PacsSettings:
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class FhirSettings:
    base_url: str
    patient_identifier_system: str = ""  # empty: match the identifier value in any system
    lab_window_days: int = 365
    timeout_seconds: float = 5.0


@dataclass(frozen=True)
class AssemblySettings:
    quiet_seconds: float = 10.0
    poll_seconds: float = 0.5
    # a re-opened study is complete by PACS count only this long after its last instance (one re-run per trickle)
    reopen_debounce_seconds: float = 2.0


@dataclass(frozen=True)
class IngestSettings:
    own_results: str = "ignore"  # the node's own SR/SC coming back: "ignore" (acknowledge, keep nothing) or "store"
    resent_conflict: str = "keep-first"  # same SOP Instance UID, different content: "keep-first" or "replace"
    # how much of the pixel data the C-STORE handler checks: "off", "header" (sizes; for encapsulated syntaxes the
    # items, frames and codestream markers, without decoding) or "decode" (a full decode of every instance)
    check_pixels: str = "header"
    # low-space watermark on the spool's filesystem: below either, stores are refused with 0xA700 (0 turns one off)
    min_free_mb: float = 1024.0
    min_free_percent: float = 0.0


@dataclass(frozen=True)
class BudgetSettings:
    """Wall-clock budgets: past one, the stage degrades or fails with a coded reason and the queue moves on."""

    fhir_seconds: float = 30.0  # one clinical-context fetch, every request and every byte of it
    pipeline_seconds: float = 600.0  # one pipeline run
    delivery_seconds: float = 120.0  # one delivery attempt: association, every C-STORE, release
    # /healthz turns degraded when a run is this long past its budget, a claimable job has waited this long while
    # the worker did nothing, or a delivery is this long overdue
    stall_seconds: float = 300.0


@dataclass(frozen=True)
class WatchdogSettings:
    interval_seconds: float = 5.0
    # a receiving study this long past its quiet period is completed by the watchdog
    receiving_grace_seconds: float = 60.0
    # a job queued, running or sending without a state change for this long is resumed or failed with the reason
    job_stuck_seconds: float = 3600.0


@dataclass(frozen=True)
class OutboxSettings:
    max_attempts: int = 8
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 300.0


RESULT_KINDS = ("sr", "sc", "gsps", "ko")  # what the node writes: SR, SC overlays, presentation states, rejection notes
DESTINATION_TYPES = ("dimse", "stow-rs", "fhir", "hl7-mllp")
# what the worklist destinations read: the SR (they turn its findings into FHIR resources or an HL7 v2 message)
WORKLIST_KINDS = frozenset({"sr"})


@dataclass(frozen=True)
class DestinationSettings:
    """Where result objects go: a DICOM C-STORE SCP (``dimse``), a DICOMweb STOW-RS service (``stow-rs``), or, for
    worklists, a FHIR server (``fhir``: Task and DiagnosticReport) or an HL7 v2 MLLP receiver (``hl7-mllp``: ORU^R01).

    Each destination has its own outbox queue, retries and dead letter; ``kinds`` says which objects it receives.
    """

    name: str
    type: str
    kinds: frozenset[str]
    retry: OutboxSettings
    ae_title: str = ""  # dimse
    host: str = ""
    port: int = 0
    url: str = ""  # stow-rs: the DICOMweb base URL (the STOW-RS endpoint is <url>/studies); fhir: the FHIR base
    token: str | None = field(default=None, repr=False)  # stow-rs, fhir: bearer token, read from token_file
    token_file: Path | None = None
    patient_identifier_system: str = ""  # fhir: the system of the Patient identifier that is the DICOM PatientID
    sending_facility: str = ""  # hl7-mllp: MSH-4 (MSH-3 is the node's AE title)
    receiving_application: str = ""  # hl7-mllp: MSH-5
    receiving_facility: str = ""  # hl7-mllp: MSH-6

    def describe(self) -> str:
        """Where it is, without secrets: for logs, the audit trail and ``outbox list``."""
        if self.type == "dimse":
            return f"{self.ae_title}@{self.host}:{self.port}"
        if self.type == "hl7-mllp":
            return f"mllp://{self.host}:{self.port}"
        return self.url


@dataclass(frozen=True)
class PipelinesSettings:
    """Where the site's own bundles are installed (``dicom-ai-node pipelines install``), beside the shipped ones."""

    bundles_dir: Path = Path("./data/bundles")


@dataclass(frozen=True)
class RouteRule:
    """Send studies whose instances match every pattern (DICOM keyword -> regex) to ``pipeline``."""

    pipeline: str
    patterns: dict[str, str] = field(default_factory=dict)


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class CallerRule:
    """A calling AE title the node accepts, optionally only from some hosts (empty ``hosts``: from any host)."""

    ae_title: str
    hosts: tuple[IpNetwork, ...] = ()


@dataclass(frozen=True)
class UserIdentitySettings:
    """DICOM user identity negotiation (username and passcode, PS3.7 D.3.3.7)."""

    users: dict[str, bytes] = field(repr=False)  # username -> passcode, read from users_file
    required: bool = True  # False: an offered identity is still checked, but none offered is accepted
    users_file: Path | None = None


@dataclass(frozen=True)
class DicomTlsSettings:
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # CAs whose client certificates are trusted
    verify_client: bool = True  # a client certificate signed by ca_file is required
    required: bool = True  # True: the DICOM port speaks TLS only; False: plain on node.port and TLS on ``port``
    port: int | None = None


@dataclass(frozen=True)
class HttpSecuritySettings:
    token: str | None = field(default=None, repr=False)  # bearer token for everything but /healthz
    token_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class SecuritySettings:
    """Who may connect and associate, and how long a connection may take to do so."""

    associate_timeout_seconds: float = 5.0  # TLS handshake and A-ASSOCIATE-RQ must arrive within this
    idle_timeout_seconds: float = 60.0  # an association silent (or stalled mid-PDU) this long is dropped
    max_associations: int = 32  # established at once; more: A-ASSOCIATE-RJ "local limit exceeded"
    max_connections_per_host: int = 16  # open connections from one source address; more: closed at once
    max_pending_connections: int = 64  # connections still negotiating; more: the oldest is closed
    require_called_ae_title: bool = False
    callers: tuple[CallerRule, ...] = ()  # empty: any calling AE title from any host
    user_identity: UserIdentitySettings | None = None
    tls: DicomTlsSettings | None = None
    http: HttpSecuritySettings = HttpSecuritySettings()


@dataclass(frozen=True)
class WebSettings:
    """The web application on node.http_port (node.web)."""

    # the site's viewer, "{study_uid}" replaced by the study's UID, e.g. OHIF's
    # "https://viewer.example.org/viewer?StudyInstanceUIDs={study_uid}"; None: no viewer link
    viewer_url: str | None = None
    session_hours: float = 12.0  # a login lasts this long
    # after this many wrong passwords for one account within login_lockout_minutes, its logins are refused (429)
    # until the window has passed; one address gets four times as many tries over all accounts
    login_max_failures: int = 5
    login_lockout_minutes: float = 15.0


@dataclass(frozen=True)
class Settings:
    node: NodeSettings
    pacs: PacsSettings | None
    fhir: FhirSettings | None
    assembly: AssemblySettings
    outbox: OutboxSettings
    routes: tuple[RouteRule, ...]
    source: Path | None = None
    ingest: IngestSettings = IngestSettings()
    watchdog: WatchdogSettings = WatchdogSettings()
    security: SecuritySettings = SecuritySettings()
    budgets: BudgetSettings = BudgetSettings()
    # where results go: [pacs] (unless its kinds = []) first, then every [[destination]]
    destinations: tuple[DestinationSettings, ...] = ()
    pipelines: PipelinesSettings = PipelinesSettings()
    web: WebSettings = WebSettings()
    # [[priority_rule]]: findings -> routine/urgent/asap/stat (node.priority); none in the file: DEFAULT_RULES
    priority_rules: tuple[PriorityRule, ...] = DEFAULT_RULES


ROUTE_KEYWORDS = ("Modality", "BodyPartExamined", "SOPClassUID", "SeriesDescription")


def intended_use_routes(bundles_dir: Path | None = None) -> tuple[RouteRule, ...]:
    """The routes when the config has no [[route]]: every installed pipeline (shipped, and the site's in
    ``bundles_dir``), for the instances of its intended modalities whose Body Part Examined is absent or one it is
    made for (matched like the pipeline does: case and surrounding spaces ignored). The pipeline checks the rest of
    its intended use on each image itself."""
    from pipelines.common.bundle_layout import BundleError
    from pipelines.registry import installed_bundles

    try:
        bundles = installed_bundles(bundles_dir)
    except BundleError as exc:
        raise ConfigError(f"pipelines.bundles_dir: {exc}") from exc
    routes = []
    for name, bundle in sorted(bundles.items()):
        requirements = bundle.requirements
        use = requirements.intended_use
        modalities = use.modalities if use is not None else requirements.modalities
        patterns = {"Modality": "^(?:" + "|".join(map(re.escape, modalities)) + ")$"}
        if use is not None and use.body_parts:
            patterns["BodyPartExamined"] = r"(?i)^\s*(?:" + "|".join(map(re.escape, use.body_parts)) + r")?\s*$"
        routes.append(RouteRule(name, patterns))
    return tuple(routes)

_AE_RE = re.compile(r"^[ -~]{1,16}$")


def _table(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table, e.g. '[{name}]' on its own line followed by keys")
    return value


def _get(table: dict[str, Any], section: str, key: str, kind: type, default: Any = None, required: bool = False) -> Any:
    if key not in table:
        if required:
            raise ConfigError(f"{section}.{key} is required: add '{key} = ...' under [{section}]")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{section}.{key} must be a {kind.__name__}, got {value!r}: fix the value in the config file")
    return value


def _port(table: dict[str, Any], section: str, key: str, default: int | None, required: bool = False) -> int:
    value = _get(table, section, key, int, default, required)
    if not 1 <= value <= 65535:
        raise ConfigError(f"{section}.{key} = {value} is not a TCP port: use a number from 1 to 65535")
    return int(value)


def _ae(table: dict[str, Any], section: str, default: str | None, required: bool = False) -> str:
    value = _get(table, section, "ae_title", str, default, required)
    if not _AE_RE.match(value) or value.strip() == "" or "\\" in value:
        raise ConfigError(f"{section}.ae_title = {value!r} is not a valid AE title: use 1-16 printable ASCII characters, no backslash")
    return str(value)


def _known(table: dict[str, Any], section: str, keys: set[str]) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ConfigError(f"[{section}] has unknown key(s) {', '.join(unknown)}: known keys are {', '.join(sorted(keys))}")


def parse_settings(raw: dict[str, Any], base_dir: Path | None = None, source: Path | None = None) -> Settings:
    """Validate a parsed TOML document. Relative ``data_dir`` is resolved against ``base_dir``."""
    _known(raw, "top level",
           {"node", "pacs", "fhir", "assembly", "ingest", "outbox", "watchdog", "route", "security", "budgets",
            "destination", "pipelines", "web", "priority_rule"})
    n = _table(raw, "node")
    _known(n, "node", {"ae_title", "host", "port", "data_dir", "http_port", "log_level", "device"})
    data_dir = Path(_get(n, "node", "data_dir", str, "./data"))
    if not data_dir.is_absolute() and base_dir is not None:
        data_dir = base_dir / data_dir
    device = _get(n, "node", "device", str, "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"node.device = {device!r}: use \"auto\", \"cpu\" or \"cuda\"")
    log_level = _get(n, "node", "log_level", str, "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"node.log_level = {log_level!r}: use DEBUG, INFO, WARNING or ERROR")
    node = NodeSettings(
        ae_title=_ae(n, "node", "AINODE"),
        host=_get(n, "node", "host", str, "127.0.0.1"),
        port=_port(n, "node", "port", 11112),
        data_dir=data_dir,
        http_port=_get(n, "node", "http_port", int, 8080),
        log_level=log_level,
        device=device,
    )
    if not 0 <= node.http_port <= 65535:
        raise ConfigError(f"node.http_port = {node.http_port}: use 0 (off) or a TCP port from 1 to 65535")

    pacs = None
    if "pacs" in raw:
        p = _table(raw, "pacs")
        _known(p, "pacs", {"ae_title", "host", "port", "kinds"})
        pacs = PacsSettings(
            ae_title=_ae(p, "pacs", None, required=True),
            host=_get(p, "pacs", "host", str, required=True),
            port=_port(p, "pacs", "port", None, required=True),
        )

    fhir = None
    if "fhir" in raw:
        f = _table(raw, "fhir")
        _known(f, "fhir", {"base_url", "patient_identifier_system", "lab_window_days", "timeout_seconds"})
        base_url = _get(f, "fhir", "base_url", str, required=True)
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"fhir.base_url = {base_url!r} must start with http:// or https://, e.g. \"http://ehr.example.org/fhir/R4\"")
        fhir = FhirSettings(
            base_url=base_url.rstrip("/"),
            patient_identifier_system=_get(f, "fhir", "patient_identifier_system", str, ""),
            lab_window_days=_get(f, "fhir", "lab_window_days", int, 365),
            timeout_seconds=_get(f, "fhir", "timeout_seconds", float, 5.0),
        )
        if fhir.lab_window_days < 0:
            raise ConfigError("fhir.lab_window_days must be >= 0 (days before the study date in which labs count)")

    a = _table(raw, "assembly")
    _known(a, "assembly", {"quiet_seconds", "poll_seconds", "reopen_debounce_seconds"})
    assembly = AssemblySettings(
        quiet_seconds=_get(a, "assembly", "quiet_seconds", float, 10.0),
        poll_seconds=_get(a, "assembly", "poll_seconds", float, 0.5),
        reopen_debounce_seconds=_get(a, "assembly", "reopen_debounce_seconds", float, 2.0),
    )
    if assembly.quiet_seconds <= 0:
        raise ConfigError("assembly.quiet_seconds must be > 0 (seconds without a new instance before a study counts as complete)")
    if assembly.reopen_debounce_seconds < 0:
        raise ConfigError("assembly.reopen_debounce_seconds must be >= 0 (seconds after a re-opened study's last instance)")

    ing = _table(raw, "ingest")
    _known(ing, "ingest", {"own_results", "resent_conflict", "check_pixels", "min_free_mb", "min_free_percent"})
    ingest = IngestSettings(
        own_results=_get(ing, "ingest", "own_results", str, "ignore"),
        resent_conflict=_get(ing, "ingest", "resent_conflict", str, "keep-first"),
        check_pixels=_get(ing, "ingest", "check_pixels", str, "header"),
        min_free_mb=_get(ing, "ingest", "min_free_mb", float, 1024.0),
        min_free_percent=_get(ing, "ingest", "min_free_percent", float, 0.0),
    )
    if ingest.check_pixels not in ("off", "header", "decode"):
        raise ConfigError(f"ingest.check_pixels = {ingest.check_pixels!r}: use \"off\", \"header\" or \"decode\"")
    if ingest.min_free_mb < 0:
        raise ConfigError("ingest.min_free_mb must be >= 0 (MB that must stay free on the spool's filesystem; 0: off)")
    if not 0 <= ingest.min_free_percent < 100:
        raise ConfigError("ingest.min_free_percent must be from 0 (off) to below 100 (percent of the spool's filesystem)")
    if ingest.own_results not in ("ignore", "store"):
        raise ConfigError(f"ingest.own_results = {ingest.own_results!r}: use \"ignore\" or \"store\"")
    if ingest.resent_conflict not in ("keep-first", "replace"):
        raise ConfigError(f"ingest.resent_conflict = {ingest.resent_conflict!r}: use \"keep-first\" or \"replace\"")

    w = _table(raw, "watchdog")
    _known(w, "watchdog", {"interval_seconds", "receiving_grace_seconds", "job_stuck_seconds"})
    watchdog = WatchdogSettings(
        interval_seconds=_get(w, "watchdog", "interval_seconds", float, 5.0),
        receiving_grace_seconds=_get(w, "watchdog", "receiving_grace_seconds", float, 60.0),
        job_stuck_seconds=_get(w, "watchdog", "job_stuck_seconds", float, 3600.0),
    )
    for key in ("interval_seconds", "receiving_grace_seconds", "job_stuck_seconds"):
        if getattr(watchdog, key) <= 0:
            raise ConfigError(f"watchdog.{key} must be > 0 (seconds)")

    o = _table(raw, "outbox")
    _known(o, "outbox", {"max_attempts", "backoff_seconds", "backoff_max_seconds"})
    outbox = OutboxSettings(
        max_attempts=_get(o, "outbox", "max_attempts", int, 8),
        backoff_seconds=_get(o, "outbox", "backoff_seconds", float, 2.0),
        backoff_max_seconds=_get(o, "outbox", "backoff_max_seconds", float, 300.0),
    )
    if outbox.max_attempts < 1:
        raise ConfigError("outbox.max_attempts must be >= 1")

    b = _table(raw, "budgets")
    _known(b, "budgets", {"fhir_seconds", "pipeline_seconds", "delivery_seconds", "stall_seconds"})
    budgets = BudgetSettings(
        fhir_seconds=_get(b, "budgets", "fhir_seconds", float, 30.0),
        pipeline_seconds=_get(b, "budgets", "pipeline_seconds", float, 600.0),
        delivery_seconds=_get(b, "budgets", "delivery_seconds", float, 120.0),
        stall_seconds=_get(b, "budgets", "stall_seconds", float, 300.0),
    )
    for key in ("fhir_seconds", "pipeline_seconds", "delivery_seconds", "stall_seconds"):
        if getattr(budgets, key) <= 0:
            raise ConfigError(f"budgets.{key} must be > 0 (seconds of wall-clock time)")

    pl = _table(raw, "pipelines")
    _known(pl, "pipelines", {"bundles_dir"})
    bundles_dir = Path(_get(pl, "pipelines", "bundles_dir", str, str(data_dir / "bundles")))
    if not bundles_dir.is_absolute() and base_dir is not None:
        bundles_dir = base_dir / bundles_dir
    if bundles_dir.exists() and not bundles_dir.is_dir():
        raise ConfigError(f"pipelines.bundles_dir = {str(bundles_dir)!r} is a file: name a folder (it is created by "
                          "'dicom-ai-node pipelines install')")
    pipelines = PipelinesSettings(bundles_dir=bundles_dir)
    routes = intended_use_routes(bundles_dir)
    if "route" in raw:
        rules = raw["route"]
        if not isinstance(rules, list):
            raise ConfigError("route must be an array of tables: write each rule as '[[route]]' with pipeline = \"...\"")
        parsed = []
        for i, rule in enumerate(rules):
            section = f"route[{i}]"
            _known(rule, section, {"pipeline", *ROUTE_KEYWORDS})
            pipeline = _get(rule, section, "pipeline", str, required=True)
            patterns = {k: _get(rule, section, k, str) for k in ROUTE_KEYWORDS if k in rule}
            for k, pattern in patterns.items():
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(f"{section}.{k} = {pattern!r} is not a valid regular expression ({exc})") from exc
            parsed.append(RouteRule(pipeline, patterns))
        routes = tuple(parsed)
    security = _security(raw, node, base_dir)
    destinations = _destinations(raw, pacs, outbox, base_dir)
    return Settings(node=node, pacs=pacs, fhir=fhir, assembly=assembly, outbox=outbox, routes=routes, source=source,
                    ingest=ingest, watchdog=watchdog, security=security, budgets=budgets, destinations=destinations,
                    pipelines=pipelines, web=_web(raw), priority_rules=_priority_rules(raw))


def _priority_rules(raw: dict[str, Any]) -> tuple[PriorityRule, ...]:
    if "priority_rule" not in raw:
        return DEFAULT_RULES
    try:
        return parse_rules(raw["priority_rule"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def _kinds(table: dict[str, Any], section: str) -> frozenset[str]:
    value = _get(table, section, "kinds", list, list(RESULT_KINDS))
    unknown = [k for k in value if k not in RESULT_KINDS]
    if unknown or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{section}.kinds = {value!r}: list some of {', '.join(map(repr, RESULT_KINDS))} "
                          "(sr: the report, sc: overlays, gsps: presentation states, ko: rejection notes of amended "
                          "results)")
    return frozenset(value)


def _worklist_kinds(table: dict[str, Any], section: str) -> frozenset[str]:
    """A worklist destination (fhir, hl7-mllp) reads the SR only: kinds defaults to, and may only be, ["sr"]."""
    if "kinds" not in table:
        return WORKLIST_KINDS
    value = table["kinds"]
    if value != ["sr"]:
        raise ConfigError(f"{section}.kinds = {value!r}: a {table.get('type')} destination takes the SR only; write "
                          "kinds = [\"sr\"] or leave kinds out")
    return WORKLIST_KINDS


def _retry(table: dict[str, Any], section: str, defaults: OutboxSettings) -> OutboxSettings:
    retry = OutboxSettings(
        max_attempts=_get(table, section, "max_attempts", int, defaults.max_attempts),
        backoff_seconds=_get(table, section, "backoff_seconds", float, defaults.backoff_seconds),
        backoff_max_seconds=_get(table, section, "backoff_max_seconds", float, defaults.backoff_max_seconds),
    )
    if retry.max_attempts < 1:
        raise ConfigError(f"{section}.max_attempts must be >= 1 (attempts before an object is dead-lettered)")
    if retry.backoff_seconds < 0 or retry.backoff_max_seconds < retry.backoff_seconds:
        raise ConfigError(f"{section}: need 0 <= backoff_seconds <= backoff_max_seconds (seconds between attempts)")
    return retry


def _destinations(raw: dict[str, Any], pacs: PacsSettings | None, outbox: OutboxSettings,
                  base_dir: Path | None) -> tuple[DestinationSettings, ...]:
    """[pacs] is a C-STORE destination named "pacs" (unless its kinds = []); [[destination]] tables add more."""
    out: list[DestinationSettings] = []
    if pacs is not None:
        kinds = _kinds(_table(raw, "pacs"), "pacs")
        if kinds:
            out.append(DestinationSettings(name="pacs", type="dimse", kinds=kinds, retry=outbox,
                                           ae_title=pacs.ae_title, host=pacs.host, port=pacs.port))
    tables = raw.get("destination", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("destination must be an array of tables: write each as '[[destination]]' with name, type "
                          "and the keys of its type")
    common = {"name", "type", "kinds", "max_attempts", "backoff_seconds", "backoff_max_seconds"}
    for i, t in enumerate(tables):
        section = f"destination[{i}]"
        name = _get(t, section, "name", str, required=True)
        if not _NAME_RE.match(name):
            raise ConfigError(f"{section}.name = {name!r}: use 1-32 lower-case letters, digits, '-' or '_', "
                              "e.g. \"archive\"")
        section = f"destination {name!r}"
        if any(d.name == name for d in out):
            raise ConfigError(f"{section}: the name is used twice" + (
                " ([pacs] is the destination \"pacs\": rename this one, or set [pacs] kinds = [])"
                if name == "pacs" else ": give each [[destination]] its own name"))
        kind = _get(t, section, "type", str, required=True)
        if kind == "dimse":
            _known(t, section, common | {"ae_title", "host", "port"})
            out.append(DestinationSettings(
                name=name, type=kind, kinds=_kinds(t, section), retry=_retry(t, section, outbox),
                ae_title=_ae(t, section, None, required=True), host=_get(t, section, "host", str, required=True),
                port=_port(t, section, "port", None, required=True),
            ))
        elif kind in ("stow-rs", "fhir"):
            _known(t, section, common | {"url", "token_file"} | ({"patient_identifier_system"} if kind == "fhir" else set()))
            url = _get(t, section, "url", str, required=True)
            if not url.startswith(("http://", "https://")):
                example = "https://pacs.example.org/dicom-web\" (the DICOMweb base URL)" if kind == "stow-rs" else \
                    "https://ehr.example.org/fhir/R4\" (the FHIR base URL)"
                raise ConfigError(f"{section}.url = {url!r} must start with http:// or https://, e.g. \"{example}")
            token_file = _file(t, section, "token_file", base_dir, secret=True)
            token = token_file.read_text(encoding="utf-8").strip() if token_file is not None else None
            if token_file is not None and (not token or any(c.isspace() for c in token)):
                raise ConfigError(f"{section}.token_file {token_file}: the file must hold one bearer token")
            out.append(DestinationSettings(
                name=name, type=kind, kinds=_kinds(t, section) if kind == "stow-rs" else _worklist_kinds(t, section),
                retry=_retry(t, section, outbox), url=url.rstrip("/"), token=token, token_file=token_file,
                patient_identifier_system=_get(t, section, "patient_identifier_system", str, ""),
            ))
        elif kind == "hl7-mllp":
            _known(t, section, common | {"host", "port", "sending_facility", "receiving_application",
                                         "receiving_facility"})
            hl7_fields = {key: _get(t, section, key, str, "") for key in
                          ("sending_facility", "receiving_application", "receiving_facility")}
            for key, value in hl7_fields.items():
                if any(c in value for c in "|^~\\&\r\n") or len(value) > 180:
                    raise ConfigError(f"{section}.{key} = {value!r}: HL7 v2 names take no |, ^, ~, \\, & or line "
                                      "breaks (and at most 180 characters), e.g. \"RADIOLOGY\"")
            out.append(DestinationSettings(
                name=name, type=kind, kinds=_worklist_kinds(t, section), retry=_retry(t, section, outbox),
                host=_get(t, section, "host", str, required=True), port=_port(t, section, "port", None, required=True),
                **hl7_fields,
            ))
        else:
            raise ConfigError(f"{section}.type = {kind!r}: use \"dimse\" (C-STORE), \"stow-rs\" (DICOMweb), "
                              "\"fhir\" (FHIR Task and DiagnosticReport) or \"hl7-mllp\" (HL7 v2 ORU^R01 over MLLP)")
    return tuple(out)


def _file(table: dict[str, Any], section: str, key: str, base_dir: Path | None, secret: bool = False) -> Path | None:
    """A file named in the config: relative to the config file, must exist; a secret must not be world-readable."""
    value = _get(table, section, key, str)
    if value is None:
        return None
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(f"{section}.{key} = {value!r}: no such file ({path}); create it or fix the path")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{section}.{key} = {value!r}: {path} is not readable by this user; fix its owner or mode")
    if secret and path.stat().st_mode & stat.S_IROTH:
        raise ConfigError(f"{section}.{key} = {value!r}: {path} is readable by every user; run 'chmod o-r {path}'")
    return path


def _positive(table: dict[str, Any], section: str, key: str, kind: type, default: Any) -> Any:
    value = _get(table, section, key, kind, default)
    if value <= 0:
        raise ConfigError(f"{section}.{key} must be > 0, got {value!r}: fix the value in the config file")
    return value


def _callers(raw: Any) -> tuple[CallerRule, ...]:
    if not isinstance(raw, list):
        raise ConfigError("security.caller must be an array of tables: write each as '[[security.caller]]' with ae_title = \"...\"")
    rules = []
    for i, entry in enumerate(raw):
        section = f"security.caller[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{section} must be a table with ae_title = \"...\" and optional hosts = [\"10.0.0.5\"]")
        _known(entry, section, {"ae_title", "hosts"})
        hosts_raw = _get(entry, section, "hosts", list, [])
        hosts = []
        for host in hosts_raw:
            try:
                hosts.append(ipaddress.ip_network(str(host), strict=False))
            except ValueError as exc:
                raise ConfigError(
                    f"{section}.hosts: {host!r} is not an IP address or network; use e.g. \"10.0.0.5\" or "
                    "\"10.0.0.0/24\" (host names are not resolved: DNS is not access control)"
                ) from exc
        rules.append(CallerRule(_ae(entry, section, None, required=True), tuple(hosts)))
    return tuple(rules)


def _users(path: Path, section: str) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, passcode = line.partition(":")
        if not sep or not name.strip() or not passcode:
            raise ConfigError(f"{section}.users_file {path} line {number}: write 'username:passcode' (both non-empty)")
        users[name.strip()] = passcode.encode()
    if not users:
        raise ConfigError(f"{section}.users_file {path} lists no user: add lines 'username:passcode'")
    return users


def _security(raw: dict[str, Any], node: NodeSettings, base_dir: Path | None) -> SecuritySettings:
    s = _table(raw, "security")
    _known(s, "security", {
        "associate_timeout_seconds", "idle_timeout_seconds", "max_associations", "max_connections_per_host",
        "max_pending_connections", "require_called_ae_title", "caller", "user_identity", "tls", "http",
    })
    user_identity = None
    if "user_identity" in s:
        u = _table(s, "user_identity")
        _known(u, "security.user_identity", {"required", "users_file"})
        if "users_file" not in u:
            raise ConfigError("security.user_identity.users_file is required: name a file of 'username:passcode' lines")
        users_file = _file(u, "security.user_identity", "users_file", base_dir, secret=True)
        assert users_file is not None
        user_identity = UserIdentitySettings(
            users=_users(users_file, "security.user_identity"),
            required=_get(u, "security.user_identity", "required", bool, True), users_file=users_file,
        )

    tls = None
    if "tls" in s:
        t = _table(s, "tls")
        section = "security.tls"
        _known(t, section, {"cert_file", "key_file", "ca_file", "verify_client", "required", "port"})
        for key in ("cert_file", "key_file"):
            if key not in t:
                raise ConfigError(f"{section}.{key} is required: add '{key} = \"/path/to/file.pem\"' under [{section}]")
        verify_client = _get(t, section, "verify_client", bool, True)
        ca_file = _file(t, section, "ca_file", base_dir)
        if verify_client and ca_file is None:
            raise ConfigError(f"{section}.ca_file is required while verify_client = true: name the CA file (PEM) that "
                              "signs your modalities' certificates, or set verify_client = false")
        required = _get(t, section, "required", bool, True)
        port = _port(t, section, "port", None) if "port" in t else None
        if required and port is not None and port != node.port:
            raise ConfigError(f"{section}.port = {port}: with required = true TLS is spoken on node.port; remove "
                              "port, or set required = false to keep plain DICOM on node.port beside TLS on port")
        if not required and (port is None or port == node.port):
            raise ConfigError(f"{section}.port is required and must differ from node.port when required = false "
                              "(plain DICOM stays on node.port, TLS listens on port, e.g. 2762)")
        cert_file = _file(t, section, "cert_file", base_dir)
        key_file = _file(t, section, "key_file", base_dir, secret=True)
        assert cert_file is not None and key_file is not None
        tls = DicomTlsSettings(cert_file=cert_file, key_file=key_file, ca_file=ca_file, verify_client=verify_client,
                               required=required, port=None if required else port)

    h = _table(s, "http")
    _known(h, "security.http", {"token_file", "cert_file", "key_file"})
    token_file = _file(h, "security.http", "token_file", base_dir, secret=True)
    token = None
    if token_file is not None:
        token = token_file.read_text(encoding="utf-8").strip()
        if len(token) < 16 or any(c.isspace() for c in token):
            raise ConfigError(f"security.http.token_file {token_file}: the token must be one word of at least 16 "
                              "characters, e.g. the output of 'openssl rand -hex 32'")
    http_cert = _file(h, "security.http", "cert_file", base_dir)
    http_key = _file(h, "security.http", "key_file", base_dir, secret=True)
    if (http_cert is None) != (http_key is None):
        raise ConfigError("security.http.cert_file and security.http.key_file go together: set both for HTTPS, or neither")

    settings = SecuritySettings(
        associate_timeout_seconds=_positive(s, "security", "associate_timeout_seconds", float, 5.0),
        idle_timeout_seconds=_positive(s, "security", "idle_timeout_seconds", float, 60.0),
        max_associations=_positive(s, "security", "max_associations", int, 32),
        max_connections_per_host=_positive(s, "security", "max_connections_per_host", int, 16),
        max_pending_connections=_positive(s, "security", "max_pending_connections", int, 64),
        require_called_ae_title=_get(s, "security", "require_called_ae_title", bool, False),
        callers=_callers(s.get("caller", [])),
        user_identity=user_identity,
        tls=tls,
        http=HttpSecuritySettings(token=token, token_file=token_file, cert_file=http_cert, key_file=http_key),
    )
    return settings


def _web(raw: dict[str, Any]) -> WebSettings:
    w = _table(raw, "web")
    _known(w, "web", {"viewer_url", "session_hours", "login_max_failures", "login_lockout_minutes"})
    viewer_url = _get(w, "web", "viewer_url", str, None)
    if viewer_url is not None and (not viewer_url.startswith(("http://", "https://")) or "{study_uid}" not in viewer_url):
        raise ConfigError(f"web.viewer_url = {viewer_url!r} must be an http(s) URL with {{study_uid}} in it, e.g. "
                          "\"https://viewer.example.org/viewer?StudyInstanceUIDs={study_uid}\"")
    return WebSettings(viewer_url=viewer_url, session_hours=_positive(w, "web", "session_hours", float, 12.0),
                       login_max_failures=_positive(w, "web", "login_max_failures", int, 5),
                       login_lockout_minutes=_positive(w, "web", "login_lockout_minutes", float, 15.0))


def load_settings(path: Path) -> Settings:
    """Read and validate a TOML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}; pass an existing file with --config") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return parse_settings(raw, base_dir=path.resolve().parent, source=path)
