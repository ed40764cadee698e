"""Assembler and router: completion by PACS count, by quiet timer, by manual trigger; routing by TOML rules."""

from __future__ import annotations

import json
from pathlib import Path

from node.assembler import Assembler
from node.config import RouteRule
from node.router import instances_for, pipelines_for
from node.store import Store
from test_store import inst

from node_fakes import settings


def make(tmp_path: Path, count: int | None | Exception, quiet: float = 10.0) -> tuple[Store, Assembler, list[str]]:
    store = Store(tmp_path / "db")
    asked: list[str] = []

    def count_in_pacs(study_uid: str, own_series: set[str]) -> int | None:
        asked.append(study_uid)
        if isinstance(count, Exception):
            raise count
        return count

    s = settings(tmp_path, assembly={"quiet_seconds": quiet})
    return store, Assembler(store, s, lambda name: "1.0", count_in_pacs), asked


def test_complete_when_pacs_count_reached(tmp_path: Path) -> None:
    store, assembler, asked = make(tmp_path, count=2)
    store.index_instance(inst("1.1"), now=100.0)
    assert assembler.tick(now=100.5) == []
    store.index_instance(inst("1.2"), now=101.0)
    assert assembler.tick(now=101.1) == ["1.2.3"]
    assert asked == ["1.2.3"], "the PACS count is asked once and remembered"
    study = store.study("1.2.3")
    assert study is not None and study["state"] == "processing" and "reached" in study["completed_reason"]
    assert [j["pipeline"] for j in store.jobs("1.2.3")] == ["radiograph-lesion"]


def test_quiet_timer_when_pacs_does_not_know_the_study(tmp_path: Path) -> None:
    store, assembler, _ = make(tmp_path, count=None, quiet=2.0)
    store.index_instance(inst("1.1"), now=100.0)
    assert assembler.tick(now=101.9) == []
    assert assembler.tick(now=102.1) == ["1.2.3"]


def test_pacs_outage_falls_back_to_quiet_timer(tmp_path: Path) -> None:
    store, assembler, _ = make(tmp_path, count=ConnectionError("refused"), quiet=2.0)
    store.index_instance(inst("1.1"), now=100.0)
    assert assembler.tick(now=102.5) == ["1.2.3"]


def test_manual_trigger_completes_at_once(tmp_path: Path) -> None:
    store, assembler, _ = make(tmp_path, count=None, quiet=3600.0)
    store.index_instance(inst("1.1"), now=100.0)
    assert assembler.tick(now=101.0) == []
    assert store.request_processing("1.2.3")
    assert assembler.tick(now=101.5) == ["1.2.3"]
    assert not store.request_processing("9.9.9")


def test_unrouted_study_is_recorded_as_no_pipeline(tmp_path: Path) -> None:
    store, assembler, _ = make(tmp_path, count=None, quiet=1.0)
    store.index_instance(inst("1.1", modality="MR", routed=()), now=100.0)
    assert assembler.tick(now=102.0) == ["1.2.3"]
    study = store.study("1.2.3")
    assert study is not None and study["state"] == "no-pipeline"
    # the status says what came in, so imaging IT sees why nothing ran (no identifiers: modality and body part)
    assert study["state_reason"] == "no routing rule matched (MR FEMUR: 1 instance)"
    assert store.jobs("1.2.3") == []


def test_rules_match_on_every_pattern_and_select_instances() -> None:
    routes = (
        RouteRule("bone", {"Modality": "^(CR|DX)$", "BodyPartExamined": "(?i)femur"}),
        RouteRule("chest", {"Modality": "^CR$", "SeriesDescription": "(?i)chest"}),
    )
    rows = [
        {"modality": "CR", "body_part": "FEMUR", "series_description": "FEMUR AP", "sop_class_uid": "1"},
        {"modality": "CR", "body_part": "CHEST", "series_description": "Chest PA", "sop_class_uid": "1"},
        {"modality": "SR", "body_part": "", "series_description": "report", "sop_class_uid": "2"},
    ]
    assert pipelines_for(rows, routes) == ["bone", "chest"]
    assert instances_for("bone", rows, routes) == [rows[0]]
    assert instances_for("chest", rows, routes) == [rows[1]]
    assert pipelines_for(rows[2:], routes) == []


def test_reopened_study_asks_the_pacs_again_and_debounces(tmp_path: Path) -> None:
    store, assembler, asked = make(tmp_path, count=2, quiet=10.0)
    store.index_instance(inst("1.1"), now=100.0)
    store.index_instance(inst("1.2"), now=100.1)
    assert assembler.tick(now=100.2) == ["1.2.3"]
    store.db.execute("UPDATE jobs SET state = 'sent'")
    store.db.execute("UPDATE studies SET state = 'sent'")
    store.index_instance(inst("1.3"), now=110.0)  # late, routed: re-opens; the PACS now counts 2 (< 3)
    assert store.study("1.2.3")["expected_count"] is None  # type: ignore[index]
    assert assembler.tick(now=110.1) == [] and len(asked) == 2, "the count is asked again after a re-open"


def test_reopened_study_complete_by_count_only_after_the_debounce(tmp_path: Path) -> None:
    store, assembler, _ = make(tmp_path, count=3, quiet=10.0)
    store.index_instance(inst("1.1"), now=100.0)
    store.index_instance(inst("1.2"), now=100.1)
    assert assembler.tick(now=111.0) == ["1.2.3"]
    store.db.execute("UPDATE jobs SET state = 'sent'")
    store.db.execute("UPDATE studies SET state = 'sent'")
    store.index_instance(inst("1.3"), now=120.0)
    assert assembler.tick(now=120.5) == [], "count reached, but the trickle may go on: wait the debounce"
    assert assembler.tick(now=122.1) == ["1.2.3"]
    assert [j["generation"] for j in store.jobs("1.2.3")] == [2]


def test_pacs_count_of_only_our_own_results_means_unknown(tmp_path: Path) -> None:
    store, assembler, asked = make(tmp_path, count=0, quiet=2.0)
    store.index_instance(inst("1.1"), now=100.0)
    assert assembler.tick(now=100.5) == []
    assert store.study("1.2.3")["expected_count"] is None  # type: ignore[index]
    assert assembler.tick(now=102.5) == ["1.2.3"]


def test_an_instance_indexed_while_the_study_completes_is_never_left_out_of_its_run(tmp_path: Path) -> None:
    """The race CI found: the study's instances were read, then one more was indexed (the study still receiving,
    so nothing re-opened it), then the study completed with plans that lacked it. Planning now happens inside
    the completion transaction: the late writer waits, and then either is in the plans or re-opens the study."""
    import threading

    store = Store(tmp_path / "db")
    other = Store(tmp_path / "db")  # the listener's connection
    store.index_instance(inst("1.1"), now=100.0)
    writer: list[threading.Thread] = []

    def version_of(name: str) -> str:  # called while the plans are made
        if not writer:
            writer.append(threading.Thread(target=lambda: other.index_instance(inst("1.2"))))
            writer[0].start()
            writer[0].join(0.5)  # it gets in now if nothing holds the lock (the old order); else it waits
        return "1.0"

    assembler = Assembler(store, settings(tmp_path, assembly={"quiet_seconds": 10.0}), version_of)
    assert assembler.complete("1.2.3", "no new instance for 10 s")
    writer[0].join(30)
    study = store.study("1.2.3")
    job = store.jobs("1.2.3")[0]
    assert study is not None
    covered = "1.2" in json.loads(job["inputs"])
    reopened = study["state"] == "receiving" and int(study["reopen_count"]) == 1
    assert covered or reopened, f"instance 1.2 neither planned nor re-opening: {study['state']}, {job['inputs']}"
    store.close()
    other.close()
