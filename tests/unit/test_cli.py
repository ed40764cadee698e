"""The command line: config errors exit 2 naming the key and the fix; listing pipelines needs no model load."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pipelines.registry import pipeline_version
from node.cli import app

runner = CliRunner()


def test_serve_refuses_a_bad_port(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[node]\nport = 70000\n")
    result = runner.invoke(app, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert "node.port" in result.output and "1 to 65535" in result.output


def test_serve_refuses_an_unknown_pipeline(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[[route]]\npipeline = "chest-xray"\nModality = "^CR$"\n')
    result = runner.invoke(app, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert "route[0].pipeline" in result.output and "radiograph-lesion" in result.output


def test_pipelines_lists_version_and_inputs() -> None:
    result = runner.invoke(app, ["pipelines", "list"])
    assert result.exit_code == 0
    assert f"radiograph-lesion {pipeline_version('radiograph-lesion')}" in result.output and "1988-5" in result.output
    assert "intended use: body parts FEMUR, TIBIA, HUMERUS" in result.output and "0.05-0.5 mm" in result.output


def test_process_unknown_study_says_so(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n')
    result = runner.invoke(app, ["process", "1.2.3.4", "--config", str(config)])
    assert result.exit_code == 1 and "no such study" in result.output


def test_outbox_list_shows_dead_letters_and_retry_requeues_them(tmp_path: Path) -> None:
    from node.store import Store
    from test_outbox import queued

    store = queued(tmp_path / "data", db_name="node.db")
    for item in store.outbox_items():
        store.outbox_failed(item["item_id"], "association rejected", None)
    store.close()
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n'
                      '[pacs]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242\n')
    listed = runner.invoke(app, ["outbox", "list", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    assert "dead    pacs/9.1" in listed.output and "association rejected" in listed.output
    assert "2 item(s)" in listed.output
    bad = runner.invoke(app, ["outbox", "retry", "--destination", "nowhere", "--config", str(config)])
    assert bad.exit_code == 2 and "use one of pacs" in bad.output
    one = runner.invoke(app, ["outbox", "retry", "pacs/9.2", "--config", str(config)])
    assert one.exit_code == 0 and "1 delivery" in one.output
    result = runner.invoke(app, ["outbox", "retry", "--config", str(config)])
    assert result.exit_code == 0 and "1 delivery" in result.output
    assert {i["state"] for i in Store(tmp_path / "data" / "node.db").outbox_items()} == {"pending"}
    pending = runner.invoke(app, ["outbox", "list", "--state", "pending", "--config", str(config)])
    assert "pending pacs/9.1" in pending.output and "attempts=0" in pending.output


def test_reprocess_reopens_the_study_and_status_says_why(tmp_path: Path) -> None:
    from node.store import Store
    from test_outbox import queued

    store = queued(tmp_path / "data", db_name="node.db")
    for item in store.outbox_items():
        store.outbox_sent(item["item_id"])
    store.close()
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n[[route]]\npipeline = "radiograph-lesion"\n')
    bad = runner.invoke(app, ["reprocess", "1.2.3", "--pipeline", "nope", "--config", str(config)])
    assert bad.exit_code == 2 and "radiograph-lesion" in bad.output
    result = runner.invoke(app, ["reprocess", "1.2.3", "--config", str(config)])
    assert result.exit_code == 0, result.output
    study = Store(tmp_path / "data" / "node.db").study("1.2.3")
    assert study is not None and study["state"] == "receiving" and study["reprocess"] == "*"
    status = runner.invoke(app, ["status", "--config", str(config)])
    assert "re-opened: reprocess requested (*)" in status.output and "run 1 current: covers 1 instance(s)" in status.output
