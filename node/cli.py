"""The ``dicom-ai-node`` command: serve, process, status, pipelines (node/cli_pipelines.py), train, evaluate
(node/cli_evaluate.py) and demo.

Every command that reads a config takes ``--config FILE``; config errors print the key and the fix, exit 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import typer

from node.cli_train import train as train_command
from node.config import ConfigError, Settings, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="PACS-integrated DICOM AI node.")

ConfigOpt = typer.Option(..., "--config", "-c", help="TOML config file (see README: Configuration).")


def setup_logging(level: str = "INFO") -> None:
    """Our loggers at ``level``; libraries at WARNING: pynetdicom and highdicom log UIDs and attributes at INFO,
    MONAI logs per-call chatter on the root logger. Every record is redacted and rate-limited (node.logs)."""
    from node.logs import install

    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(threadName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Redaction and rate limit on every handler: library warnings quote raw (patient) values.
    for handler in logging.getLogger().handlers:
        install(handler)
    logging.captureWarnings(True)  # pydicom's UserWarnings go through the same handler, redacted
    for ours in ("node", "pipelines"):
        logging.getLogger(ours).setLevel(getattr(logging, level.upper(), logging.INFO))
    from node.dicom_server import ThrottledLibraryLog

    for handler in logging.getLogger().handlers:  # pynetdicom's records reach the root handler: filter them there
        if not any(isinstance(f, ThrottledLibraryLog) for f in handler.filters):
            handler.addFilter(ThrottledLibraryLog())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the text encoder ships in a package; never reach for a hub
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _settings(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        typer.echo(f"config error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def serve(config: Path = ConfigOpt) -> None:
    """Run the node: DICOM listener, assembly, pipelines, delivery to the PACS, status endpoints."""
    from node.service import Node, check_routes
    from node.tls import check_tls

    settings = _settings(config)
    setup_logging(settings.node.log_level)
    try:
        check_routes(settings)
        check_tls(settings)
    except ConfigError as exc:
        typer.echo(f"config error: {exc}", err=True)
        raise typer.Exit(2) from exc
    Node(settings).serve_forever()


@app.command()
def process(study_uid: str, config: Path = ConfigOpt) -> None:
    """Treat a study as complete now (the running node picks it up within a second)."""
    from node.store import Store

    settings = _settings(config)
    store = Store(settings.node.data_dir / "node.db")
    if not store.request_processing(study_uid):
        typer.echo("no such study in this node's database (nothing received for that Study Instance UID)", err=True)
        raise typer.Exit(1)
    typer.echo("queued: the node completes the study on its next assembly pass")


@app.command()
def reprocess(
    study_uid: str,
    config: Path = ConfigOpt,
    pipeline: str = typer.Option(None, "--pipeline", "-p", help="Only this pipeline (default: every routed one)."),
) -> None:
    """Run the study's pipelines again. Changed inputs (instances, labs, notes, bundle version) give an amended
    SR that references the one it replaces; unchanged inputs send nothing new."""
    from node.store import Store

    settings = _settings(config)
    routed = {rule.pipeline for rule in settings.routes}
    if pipeline is not None and pipeline not in routed:
        typer.echo(f"--pipeline {pipeline!r} is not routed by this config: use one of {', '.join(sorted(routed))}",
                   err=True)
        raise typer.Exit(2)
    store = Store(settings.node.data_dir / "node.db")
    if not store.request_processing(study_uid, reprocess=pipeline or "*"):
        typer.echo("no such study in this node's database (nothing received for that Study Instance UID)", err=True)
        raise typer.Exit(1)
    typer.echo(f"reprocess queued ({pipeline or 'every routed pipeline'}): the node re-runs it on its next pass")


@app.command()
def status(config: Path = ConfigOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """Counts by state, the latest studies and any dead-lettered deliveries."""
    from node.store import Store
    from node.web import study_summaries

    settings = _settings(config)
    store = Store(settings.node.data_dir / "node.db")
    studies = study_summaries(store, limit=20)
    dead = store.outbox_items("dead")
    if as_json:
        typer.echo(json.dumps({"counts": store.counts(), "studies": studies, "dead": dead}, indent=1))
        return
    for table, states in store.counts().items():
        typer.echo(f"{table:10s} " + ", ".join(f"{k}: {v}" for k, v in sorted(states.items())))
    for s in studies:
        typer.echo(f"{s['study_uid']}  {s['status']:12s} {s['instances']} inst  why: {s['reason']}")
        typer.echo(f"    completed: {s['completed_reason']}"
                   + (f"; re-opened {s['reopened']}x, last: {s['reopen_reason']}" if s["reopened"] else ""))
        for j in s["jobs"]:
            typer.echo(f"    {j['pipeline']} {j['state']} ({j['reason']}) findings={j['n_findings']} "
                       f"fhir={j['fhir_status']}")
            for r in j["runs"]:
                mark = "current" if r["current"] else r["state"]
                typer.echo(f"      run {r['run_id'].rsplit('#', 1)[-1]} {mark}: covers {len(r['covers'])} instance(s), "
                           f"SR {r['sr_sop_instance_uid'] or '-'}" + (f", amends {r['amends_sr']}" if r["amends_sr"] else ""))
    for item in dead:
        typer.echo(f"DEAD {item['destination']} {item['sop_instance_uid']}: {item['last_error']}")
    if dead:
        typer.echo("re-queue with: dicom-ai-node outbox retry --config FILE [--destination NAME]")


outbox_app = typer.Typer(no_args_is_help=True, help="Result objects waiting for, sent to or dead at each destination.")
app.add_typer(outbox_app, name="outbox")


@outbox_app.command("list")
def outbox_list(
    config: Path = ConfigOpt,
    state: str = typer.Option("dead", help="pending, sent, dead, or all."),
    destination: str | None = typer.Option(None, help="Only this destination (its name in the config)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Deliveries by state: each object's destination, attempts, next attempt and last error."""
    import time

    from node.store import Store

    if state not in ("pending", "sent", "dead", "all"):
        typer.echo(f"--state {state!r}: use pending, sent, dead or all", err=True)
        raise typer.Exit(2)
    settings = _settings(config)
    items = Store(settings.node.data_dir / "node.db").outbox_items(None if state == "all" else state, destination)
    if as_json:
        typer.echo(json.dumps(items, indent=1))
        return
    now = time.time()
    for item in items:
        due = "" if item["state"] != "pending" else f", next in {max(0.0, item['next_attempt_at'] - now):.0f} s"
        typer.echo(f"{item['state']:7s} {item['item_id']}  "
                   f"attempts={item['attempts']}{due}" + (f"  last error: {item['last_error']}"
                                                         if item["last_error"] else ""))
    typer.echo(f"{len(items)} item(s)")


@outbox_app.command("retry")
def outbox_retry(
    item_ids: list[str] = typer.Argument(None, help="Item ids as 'outbox list' shows them (destination/SOP UID); "
                                                    "none: every dead item."),
    config: Path = ConfigOpt,
    destination: str | None = typer.Option(None, help="Only this destination's dead items."),
) -> None:
    """Queue dead-lettered deliveries again (after fixing the destination); the running node sends them."""
    from node.store import Store

    settings = _settings(config)
    names = {d.name for d in settings.destinations}
    if destination is not None and destination not in names:
        typer.echo(f"--destination {destination!r} is not in this config: use one of {', '.join(sorted(names))}",
                   err=True)
        raise typer.Exit(2)
    n = Store(settings.node.data_dir / "node.db").retry_dead(destination, tuple(item_ids or ()))
    typer.echo(f"{n} delivery(ies) queued again")


@app.command("retry-dead", hidden=True)
def retry_dead(config: Path = ConfigOpt) -> None:
    """Same as 'outbox retry' with no arguments (kept for scripts written against earlier versions)."""
    outbox_retry(item_ids=[], config=config, destination=None)


@app.command()
def audit(
    config: Path = ConfigOpt,
    since_hours: float = typer.Option(24.0, help="Records of the last N hours."),
    fhir: bool = typer.Option(False, "--fhir", help="A FHIR Bundle of AuditEvents instead of one JSON line each."),
    transaction: bool = typer.Option(False, help="With --fhir: a transaction Bundle to POST to an audit repository."),
) -> None:
    """The audit trail: associations, EHR reads, results sent, configuration (no patient names or IDs)."""
    import time

    from node.audit import export_bundle
    from node.store import Store

    settings = _settings(config)
    rows = Store(settings.node.data_dir / "node.db").audit_records(since=time.time() - since_hours * 3600)
    if fhir:
        typer.echo(export_bundle(rows, settings.node.ae_title, as_transaction=transaction).model_dump_json(indent=1))
        return
    for row in rows:
        typer.echo(json.dumps(row))


@app.command()
def export(
    study_uid: str,
    out: Path = typer.Option(..., "--out", help="A new (or empty) folder to write the study to."),
    config: Path = ConfigOpt,
    identified: bool = typer.Option(False, "--identified", help="Keep patient identifiers (default: de-identify)."),
    seed: str = typer.Option(None, help="Seed for a repeatable de-identification (same seed, same pseudonyms)."),
) -> None:
    """Research export: the study's instances and current results, de-identified with dicognito unless
    --identified; audited."""
    from node.export import export_study
    from node.store import Store

    settings = _settings(config)
    try:
        summary = export_study(Store(settings.node.data_dir / "node.db"), study_uid, out,
                               deidentify=not identified, seed=seed)
    except (LookupError, FileExistsError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{summary.instances} instance(s) and {summary.results} result object(s) written to {out}"
               f" ({'de-identified' if summary.deidentified else 'WITH patient identifiers'})")


from node.cli_pipelines import pipelines_app  # noqa: E402  (its own module; registered here)

app.add_typer(pipelines_app, name="pipelines")

from node.cli_users import users_app  # noqa: E402  (its own module; registered here)

app.add_typer(users_app, name="users")


app.command("train")(train_command)  # its own module: node/cli_train.py


@app.command()
def demo(
    once: bool = typer.Option(False, "--once", help="Exit after the first study: 0 only if its results are in Orthanc."),
    workdir: Path = typer.Option(Path("demo-output"), help="Where the demo keeps its data, logs and PNG."),
) -> None:
    """Start Orthanc, the FHIR engine with the demo patient and the node; have Orthanc send a study; show results."""
    from node.demo import run_demo

    setup_logging()
    raise typer.Exit(run_demo(workdir, once=once))


from node.cli_evaluate import evaluate_command  # noqa: E402  (its own module; torch loads only when it runs)

app.command("evaluate")(evaluate_command)

if __name__ == "__main__":
    app()
