"""What /healthz checks beyond "the threads are alive": no run past its budget, the queue moving, deliveries on time.

Each check is True or a sentence saying what is wrong, read from the database with the clock passed in (so a test
can move time); the web layer answers 503 and names the check when one is not True.
"""

from __future__ import annotations

from node.config import BudgetSettings
from node.store import Store

Check = bool | str


def progress_checks(store: Store, budgets: BudgetSettings, now: float) -> dict[str, Check]:
    checks: dict[str, Check] = {}
    running = store.running_runs()

    # A run the worker bounds by its budgets can only be this old when the worker itself is stuck outside them
    # (reading a file on a hung mount, writing results to a full disk): a stage stuck, whatever the thread says.
    limit = budgets.fhir_seconds + budgets.pipeline_seconds + budgets.stall_seconds
    late = [r for r in running if now - float(r["started_at"]) > limit]
    checks["runs_within_budget"] = True if not late else (
        f"{len(late)} run(s) running for more than {limit:g} s (budgets.fhir_seconds + pipeline_seconds + "
        f"stall_seconds), the oldest for {now - float(late[0]['started_at']):.0f} s")

    # Jobs waiting is normal while a run is on; jobs waiting with no run on and none started or finished lately
    # means the worker is not taking them.
    since = store.oldest_claimable_since()
    last = store.last_run_activity()
    waiting = now - since if since is not None else 0.0
    quiet = now - last if last is not None else waiting
    stalled = not running and waiting > budgets.stall_seconds and quiet > budgets.stall_seconds
    checks["queue_moving"] = True if not stalled else (
        f"a job has waited {waiting:.0f} s to be claimed and no run started or finished for {quiet:.0f} s "
        f"(budgets.stall_seconds = {budgets.stall_seconds:g})")

    overdue = store.overdue_deliveries(now - budgets.delivery_seconds - budgets.stall_seconds)
    checks["deliveries_on_time"] = True if not overdue else (
        f"{overdue} delivery(ies) due more than {budgets.delivery_seconds + budgets.stall_seconds:g} s ago and not "
        "attempted (budgets.delivery_seconds + stall_seconds)")
    return checks
