"""Readers' feedback on AI results: the store's record (latest verdict per reader, acknowledgement timer, audit
trail), the rates with their Wilson intervals, and the web forms, the admin table and /metrics (TestClient)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from node.audit import FEEDBACK, to_audit_event
from node.feedback import REASON_MAX_CHARS, FeedbackError, Verdict, proportion, rates
from node.store import Store
from test_webapp import TOKEN, client, logged_in, node_db  # noqa: F401 (node_db: the fixture)

DISMISS_REASON = "skin fold over the lateral chest wall"


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval written out (Wilson 1927), to check scipy's against."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def finding_ids(store: Store, study_uid: str) -> dict[str, str]:
    """tracking_id -> finding_id of the study's current findings."""
    run_id = store.jobs(study_uid)[0]["current_run_id"]
    return {f["tracking_id"]: f["finding_id"] for f in store.findings_of_run(run_id)}


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (3, 10), (17, 40), (40, 40)])
def test_proportion_is_the_wilson_interval(k: int, n: int) -> None:
    p = proportion(k, n)
    low, high = wilson(k, n)
    assert (p.k, p.n) == (k, n) and p.value == pytest.approx(k / n)
    assert p.low == pytest.approx(max(0.0, low), abs=1e-9) and p.high == pytest.approx(min(1.0, high), abs=1e-9)
    assert p.low <= p.value <= p.high


def test_proportion_refuses_an_empty_sample() -> None:
    with pytest.raises(ValueError, match="n > 0"):
        proportion(0, 0)


def test_rates_count_each_finding_once_with_its_latest_verdict() -> None:
    rows = [
        ("p", "1.0", "r1/a", "rita", "dismissed"),
        ("p", "1.0", "r1/a", "rita", "confirmed"),  # rita changes her mind: only her latest counts
        ("p", "1.0", "r1/b", "rita", "dismissed"),
        ("p", "1.0", "r1/b", "adam", "confirmed"),  # readers disagree: the latest counts, and it is disputed
        ("p", "1.0", "r1/c", "adam", "dismissed"),
        ("p", "2.0", "r2/a", "rita", "dismissed"),  # another version: its own row
    ]
    by_version = {(r.pipeline, r.pipeline_version): r for r in rates(rows)}
    one = by_version["p", "1.0"]
    assert (one.reviewed, one.confirmed, one.dismissed, one.disputed) == (3, 2, 1, 1)
    assert (one.false_positive_rate.k, one.false_positive_rate.n) == (1, 3)
    assert (one.confirmation_rate.k, one.confirmation_rate.n) == (2, 3)
    assert one.false_positive_rate.low == pytest.approx(wilson(1, 3)[0])
    two = by_version["p", "2.0"]
    assert (two.reviewed, two.dismissed, two.false_positive_rate.value) == (1, 1, 1.0)
    # rita's second thoughts on b, after adam's: the latest is hers again, and they still disagree
    again = {(r.pipeline, r.pipeline_version): r for r in rates([*rows, ("p", "1.0", "r1/b", "rita", "dismissed")])}
    assert (again["p", "1.0"].confirmed, again["p", "1.0"].dismissed, again["p", "1.0"].disputed) == (1, 2, 1)


def test_store_records_verdicts_acknowledgement_and_audit(node_db: Path) -> None:  # noqa: F811
    store = Store(node_db)
    ids = finding_ids(store, "2.2.2")
    store.record_feedback("2.2.2", Verdict.CONFIRMED, "rita", finding_id=ids["lesion 2"], now=1000.0)
    store.record_feedback("2.2.2", Verdict.DISMISSED, "rita", finding_id=ids["lesion 2"], reason=DISMISS_REASON,
                          source="10.0.0.7", now=1010.0)
    store.record_feedback("2.2.2", Verdict.CONFIRMED, "adam", finding_id=ids["lesion 1"], now=1020.0)
    assert store.reads("2.2.2") == []  # confirming or dismissing is not acknowledging
    store.record_feedback("2.2.2", Verdict.ACKNOWLEDGED, "rita", now=1030.0)
    store.record_feedback("2.2.2", Verdict.ACKNOWLEDGED, "rita", now=1040.0)

    current = store.feedback_of_study("2.2.2")
    mine = [(v.username, v.tracking_id, v.verdict, v.reason) for v in current]
    assert mine == [("rita", "lesion 2", Verdict.DISMISSED, DISMISS_REASON), ("adam", "lesion 1", Verdict.CONFIRMED, ""),
                    ("rita", None, Verdict.ACKNOWLEDGED, "")]
    assert {v.finding_id for v in current if v.finding_id} == {ids["lesion 1"], ids["lesion 2"]}
    assert all(v.pipeline == "p" and v.pipeline_version == "1.0" for v in current)
    [read] = store.reads("2.2.2")
    assert read["acknowledged_at"] == 1030.0  # the first acknowledgement sets the worklist's timer

    [rate] = store.feedback_rates()
    assert (rate.pipeline, rate.pipeline_version, rate.reviewed, rate.confirmed, rate.dismissed) == ("p", "1.0", 2, 1, 1)
    assert store.feedback_counts() == {("p", "confirmed"): 2, ("p", "dismissed"): 1, ("p", "acknowledged"): 2}

    audit = store.audit_records(kind=FEEDBACK)
    assert [(a["actor"], a["outcome"], a["ts"]) for a in audit] == [
        ("rita", "confirmed", 1000.0), ("rita", "dismissed", 1010.0), ("adam", "confirmed", 1020.0),
        ("rita", "acknowledged", 1030.0), ("rita", "acknowledged", 1040.0)]
    dismissed = audit[1]
    detail = json.loads(dismissed["detail"])
    assert detail["tracking_id"] == "lesion 2" and detail["pipeline"] == "p" and detail["reason_given"] is True
    assert dismissed["study_uid"] == "2.2.2" and dismissed["source"] == "10.0.0.7"
    assert DISMISS_REASON not in str(audit) and "SYN-22" not in str(audit)  # free text and patient ID stay out
    event = to_audit_event(dismissed, "AINODE")
    assert event.type.code == "110111" and event.action == "C" and event.outcome == "0"
    who = event.agent[0].who
    assert who is not None and who.display == "rita" and event.agent[0].requestor is True


def test_store_refuses_feedback_it_cannot_place(node_db: Path) -> None:  # noqa: F811
    store = Store(node_db)
    ids = finding_ids(store, "2.2.2")
    with pytest.raises(FeedbackError, match="no finding .* in study 1.1.1"):
        store.record_feedback("1.1.1", Verdict.DISMISSED, "rita", finding_id=ids["lesion 2"])  # another study's
    with pytest.raises(FeedbackError, match="send its finding_id"):
        store.record_feedback("2.2.2", Verdict.DISMISSED, "rita")
    with pytest.raises(FeedbackError, match="for the whole study"):
        store.record_feedback("2.2.2", Verdict.ACKNOWLEDGED, "rita", finding_id=ids["lesion 2"])
    with pytest.raises(FeedbackError, match=f"shorten it to {REASON_MAX_CHARS}"):
        store.record_feedback("2.2.2", Verdict.DISMISSED, "rita", finding_id=ids["lesion 2"],
                              reason="x" * (REASON_MAX_CHARS + 1))
    with pytest.raises(FeedbackError, match="no study 9.9.9"):
        store.record_feedback("9.9.9", Verdict.ACKNOWLEDGED, "rita")
    assert store.feedback_of_study("2.2.2") == [] and store.audit_records(kind=FEEDBACK) == []
    # a study the AI failed on can still be acknowledged: one row without a run
    [failed] = store.record_feedback("3.3.3", Verdict.ACKNOWLEDGED, "rita")
    assert failed.run_id is None and failed.pipeline is None


def test_feedback_needs_a_person_and_the_session_csrf_token(node_db: Path) -> None:  # noqa: F811
    store = Store(node_db)
    lesion = finding_ids(store, "2.2.2")["lesion 2"]
    form = {"verdict": "dismissed", "finding_id": lesion, "reason": DISMISS_REASON}
    anonymous = client(node_db)
    r = anonymous.post("/study/2.2.2/feedback", data={**form, "csrf": "x"})
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    machine = anonymous.post("/study/2.2.2/feedback", data={**form, "csrf": "x"},
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert machine.status_code == 401  # the API token is not a reader
    reader = logged_in(node_db, "rita", "reader-password")
    assert reader.post("/study/2.2.2/feedback", data=form).status_code == 403  # no token
    assert reader.post("/study/2.2.2/feedback", data={**form, "csrf": "forged"}).status_code == 403
    assert store.feedback_of_study("2.2.2") == [] and store.audit_records(kind=FEEDBACK) == []


def test_reader_dismisses_and_acknowledges_admin_sees_the_rate(node_db: Path) -> None:  # noqa: F811
    reader = logged_in(node_db, "rita", "reader-password")
    page = reader.get("/study/2.2.2").text
    assert "Acknowledge AI result" in page and page.count("Dismiss as false positive") == 2
    assert page.count(">Confirm<") == 2
    csrf = csrf_of(page)
    lesion = finding_ids(Store(node_db), "2.2.2")["lesion 2"]
    assert f'data-finding-id="{lesion}"' in page

    admin = logged_in(node_db, "adam", "admin-password")
    assert "No feedback on AI findings yet." in admin.get("/admin").text

    r = reader.post("/study/2.2.2/feedback", data={"verdict": "dismissed", "finding_id": lesion,
                                                   "reason": DISMISS_REASON, "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/study/2.2.2#feedback"
    page = reader.get("/study/2.2.2").text
    row = page[page.index(f'data-finding-id="{lesion}"'):]
    row = row[:row.index("</tr>")]
    assert "Dismissed as false positive" in row and "<strong>rita</strong>" in row and DISMISS_REASON in row

    rates = admin.get("/admin").text
    table = rates[rates.index("AI feedback by pipeline"):]
    assert '<tr data-pipeline="p" data-version="1.0"><td>p</td><td>1.0</td>' in table
    assert "<td>1</td><td>0</td><td>1</td><td>0</td>" in table  # reviewed, confirmed, dismissed, disputed
    low, _ = wilson(1, 1)
    assert f"1 of 1 (100%; 95% CI {100 * low:.0f}-100%)" in table  # the FP rate, 21-100%
    assert f"0 of 1 (0%; 95% CI 0-{100 - 100 * low:.0f}%)" in table  # the confirmation rate

    assert "acknowledged" not in reader.get("/worklist/rows").text
    r = reader.post("/study/2.2.2/feedback", data={"verdict": "acknowledged", "csrf": csrf})
    assert r.status_code == 303
    page = reader.get("/study/2.2.2").text
    assert "AI result acknowledged by <strong>rita</strong>" in page
    assert "Acknowledge AI result" not in page  # once is enough for her
    assert "Acknowledge AI result" in admin.get("/study/2.2.2").text  # not for the others
    worklist = reader.get("/worklist/rows").text
    assert re.search(r"acknowledged \d+ s after", worklist)  # the timer opened -> acknowledged

    kinds = [(a["actor"], a["outcome"]) for a in Store(node_db).audit_records(kind=FEEDBACK)]
    assert kinds == [("rita", "dismissed"), ("rita", "acknowledged")]


def test_feedback_errors_name_the_fix(node_db: Path) -> None:  # noqa: F811
    reader = logged_in(node_db, "rita", "reader-password")
    csrf = csrf_of(reader.get("/study/2.2.2").text)
    lesion = finding_ids(Store(node_db), "2.2.2")["lesion 2"]
    bogus = reader.post("/study/2.2.2/feedback", data={"verdict": "maybe", "finding_id": lesion, "csrf": csrf})
    assert bogus.status_code == 400 and "unknown verdict 'maybe'" in bogus.text
    elsewhere = reader.post("/study/1.1.1/feedback", data={"verdict": "confirmed", "finding_id": lesion, "csrf": csrf})
    assert elsewhere.status_code == 400 and "reload the study's page" in elsewhere.text
    long = reader.post("/study/2.2.2/feedback", data={"verdict": "dismissed", "finding_id": lesion, "csrf": csrf,
                                                      "reason": "x" * 600})
    assert long.status_code == 400 and "shorten it to 500" in long.text
    assert reader.post("/study/9.9.9/feedback", data={"verdict": "acknowledged", "csrf": csrf}).status_code == 404


def test_metrics_publish_feedback_and_rates_with_intervals(node_db: Path) -> None:  # noqa: F811
    machine = client(node_db)
    before = machine.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert "ainode_false_positive_rate{" not in before  # only pipelines with feedback
    store = Store(node_db)
    ids = finding_ids(store, "2.2.2")
    store.record_feedback("2.2.2", Verdict.DISMISSED, "rita", finding_id=ids["lesion 2"])
    store.record_feedback("2.2.2", Verdict.CONFIRMED, "rita", finding_id=ids["lesion 1"])
    store.record_feedback("2.2.2", Verdict.ACKNOWLEDGED, "rita")
    text = machine.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    lines = set(text.splitlines())
    assert 'ainode_feedback_total{pipeline="p",verdict="dismissed"} 1.0' in lines
    assert 'ainode_feedback_total{pipeline="p",verdict="confirmed"} 1.0' in lines
    assert 'ainode_feedback_total{pipeline="p",verdict="acknowledged"} 1.0' in lines
    assert 'ainode_feedback_findings_reviewed{pipeline="p",version="1.0"} 2.0' in lines
    assert 'ainode_false_positive_rate{pipeline="p",version="1.0"} 0.5' in lines
    assert 'ainode_confirmation_rate{pipeline="p",version="1.0"} 0.5' in lines
    low, high = wilson(1, 2)
    value = re.search(r'^ainode_false_positive_rate_ci_low\{pipeline="p",version="1.0"\} (\S+)$', text, re.M)
    assert value is not None and float(value.group(1)) == pytest.approx(low)
    value = re.search(r'^ainode_confirmation_rate_ci_high\{pipeline="p",version="1.0"\} (\S+)$', text, re.M)
    assert value is not None and float(value.group(1)) == pytest.approx(high)
