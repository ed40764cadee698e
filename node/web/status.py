"""What the machine endpoints report: /api/studies' summaries (no patient identifiers) and /metrics' collectors
(the node's queues and timings, the listeners' connections, readers' feedback and the rates it gives).

Both read the database at request time through a Store the caller opens; node.web.api serves them.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from node.dicom_server import ConnectionStats
from node.feedback import FeedbackRate
from node.store import Store


# check name -> True, or False / a sentence saying what is wrong
HealthCheck = Callable[[], Mapping[str, bool | str]]
# metric name -> (help, value), read at scrape time
Gauges = Callable[[], Mapping[str, tuple[str, float]]]


def study_summaries(store: Store, limit: int = 500) -> list[dict[str, Any]]:
    """Studies with their jobs and runs, and why each is where it is; without patient identifiers (the API is
    for operations, not for reading)."""
    out: list[dict[str, Any]] = []
    for s in store.studies(limit):
        jobs = [
            {
                "pipeline": j["pipeline"], "pipeline_version": j["pipeline_version"], "state": j["state"],
                "reason": j["state_reason"], "attempts": j["attempts"], "n_findings": j["n_findings"],
                "fhir_status": j["fhir_status"],
                "inputs_missing": [x for x in (j["inputs_missing"] or "").split(",") if x],
                "sr_sop_instance_uid": j["sr_sop_uid"], "timings": json.loads(j["timings"] or "{}"),
                "error": j["error"],
                "runs": [
                    {
                        "run_id": r["run_id"], "state": r["state"], "current": r["run_id"] == j["current_run_id"],
                        "started_at": r["started_at"], "finished_at": r["finished_at"],
                        "covers": json.loads(r["inputs"] or "[]"), "sr_sop_instance_uid": r["sr_sop_uid"],
                        "amends_sr": r["predecessor_sr_uid"], "detail": r["detail"],
                        "objects": [o["sop_instance_uid"] for o in store.results_of_run(r["run_id"])],
                    }
                    for r in store.runs(j["job_id"])
                ],
            }
            for j in store.jobs(s["study_uid"])
        ]
        own = store.study_instances(s["study_uid"], role="own-result")
        out.append(
            {
                "study_uid": s["study_uid"], "status": s["state"], "reason": s["state_reason"],
                "instances": s["instance_count"], "own_results_received": len(own),
                "expected_instances": s["expected_count"], "completed_reason": s["completed_reason"],
                "reopened": s["reopen_count"] or 0, "reopen_reason": s["reopen_reason"],
                "first_received_at": s["first_received_at"], "last_received_at": s["last_received_at"],
                "jobs": jobs,
            }
        )
    return out


class _StoreCollector:
    """Reads the database at scrape time, so the numbers are right after a restart too."""

    def __init__(self, open_store: Callable[[], Store], health: HealthCheck, gauges: Gauges | None) -> None:
        self.open_store = open_store
        self.health = health
        self.gauges = gauges

    def collect(self) -> Iterator[Any]:
        store = self.open_store()
        try:
            counts = store.counts()
            deliveries = store.deliveries_by_destination()
            timings = [json.loads(j["timings"] or "{}") for j in store.jobs() if j["timings"]]
            feedback = store.feedback_counts()
            feedback_rates = store.feedback_rates()
        finally:
            store.close()
        for table, name in (("studies", "studies"), ("jobs", "jobs"), ("outbox", "outbox_items")):
            g = GaugeMetricFamily(f"ainode_{name}", f"{table} by state", labels=["state"])
            for state, n in sorted(counts[table].items()):
                g.add_metric([state], n)
            yield g
        per_destination = GaugeMetricFamily("ainode_deliveries", "outbox items by destination and state",
                                            labels=["destination", "state"])
        for (destination, state), n in sorted(deliveries.items()):
            per_destination.add_metric([destination, state], n)
        yield per_destination
        yield GaugeMetricFamily("ainode_instances", "instances stored", value=counts["instances"]["total"])
        buckets = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]
        for stage in ("fhir_s", "inference_s", "results_s", "total_s"):
            values = [float(t[stage]) for t in timings if stage in t]
            cumulative = [(str(b), sum(v <= b for v in values)) for b in buckets] + [("+Inf", len(values))]
            yield HistogramMetricFamily(
                f"ainode_job_{stage[:-2]}_seconds", f"per-job {stage[:-2]} time",
                buckets=cumulative, sum_value=sum(values),
            )
        yield from _feedback_metrics(feedback, feedback_rates)
        checks = GaugeMetricFamily("ainode_health_check", "1 when the /healthz check passes", labels=["check"])
        for name, value in sorted(self.health().items()):
            checks.add_metric([name], float(value is True))
        yield checks
        for name, (text, number) in sorted((self.gauges() if self.gauges is not None else {}).items()):
            yield GaugeMetricFamily(name, text, value=number)


def _feedback_metrics(counts: Mapping[tuple[str, str], int], rates: list[FeedbackRate]) -> Iterator[Any]:
    """Readers' verdicts, and per pipeline version (those with feedback only) the rates with their 95% Wilson
    intervals: a rate is never published without its interval."""
    total = CounterMetricFamily("ainode_feedback", "readers' feedback on AI results (every verdict recorded)",
                                labels=["pipeline", "verdict"])
    for (pipeline, verdict), n in sorted(counts.items()):
        total.add_metric([pipeline, verdict], n)
    yield total
    reviewed = GaugeMetricFamily("ainode_feedback_findings_reviewed", "findings with a confirm or dismiss verdict",
                                 labels=["pipeline", "version"])
    families = {
        (kind, bound): GaugeMetricFamily(
            f"ainode_{kind}_rate{suffix}", f"{what}{text}", labels=["pipeline", "version"])
        for kind, what in (("false_positive", "dismissed / (confirmed + dismissed) findings"),
                           ("confirmation", "confirmed / (confirmed + dismissed) findings"))
        for bound, suffix, text in (("value", "", ""), ("low", "_ci_low", ": 95% Wilson interval, lower bound"),
                                    ("high", "_ci_high", ": 95% Wilson interval, upper bound"))
    }
    for rate in rates:
        labels = [rate.pipeline, rate.pipeline_version]
        reviewed.add_metric(labels, rate.reviewed)
        for kind, p in (("false_positive", rate.false_positive_rate), ("confirmation", rate.confirmation_rate)):
            families[kind, "value"].add_metric(labels, p.value)
            families[kind, "low"].add_metric(labels, p.low)
            families[kind, "high"].add_metric(labels, p.high)
    yield reviewed
    yield from families.values()


class _ConnectionCollector:
    """The DICOM listeners' connections now, and those the node closed or refused (flood, limits, access)."""

    def __init__(self, stats: Callable[[], ConnectionStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        now = self.stats()
        g = GaugeMetricFamily("ainode_dicom_connections", "open DICOM connections by state", labels=["state"])
        g.add_metric(["negotiating"], now.negotiating)
        g.add_metric(["associated"], now.associations)
        yield g
        c = CounterMetricFamily("ainode_dicom_connections_closed", "DICOM connections closed or refused by the node",
                                labels=["reason"])
        for reason, n in sorted(now.closed.items()):
            c.add_metric([reason], n)
        yield c


def metrics_registry(open_store: Callable[[], Store], health: HealthCheck,
                     connection_stats: Callable[[], ConnectionStats] | None = None,
                     gauges: Gauges | None = None) -> CollectorRegistry:
    """A registry that reads the database, the checks and the listeners' connections at each scrape."""
    registry = CollectorRegistry()
    registry.register(_StoreCollector(open_store, health, gauges))  # type: ignore[arg-type]
    if connection_stats is not None:
        registry.register(_ConnectionCollector(connection_stats))  # type: ignore[arg-type]
    return registry
