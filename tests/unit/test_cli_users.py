"""``dicom-ai-node users``: accounts made from the command line log in, with the role given; bad input names the
fix; the hash never leaves the database."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from node.cli import app
from node.store import Store
from node.web.auth import login


def test_users_add_list_remove(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n')
    runner = CliRunner()
    added = runner.invoke(app, ["users", "add", "rita", "--role", "reader", "--config", str(config)],
                          input="a long password\n")
    assert added.exit_code == 0 and "added rita (reader)" in added.output
    store = Store(tmp_path / "data" / "node.db")
    assert login(store, "rita", "a long password") and not login(store, "rita", "another password")
    listed = runner.invoke(app, ["users", "list", "--config", str(config)])
    assert listed.output.strip() == "rita\treader" and "argon2" not in listed.output

    bad_role = runner.invoke(app, ["users", "add", "ann", "--role", "root", "--config", str(config)], input="x" * 9)
    assert bad_role.exit_code == 2 and "use one of reader, admin" in bad_role.output
    short = runner.invoke(app, ["users", "add", "ann", "--role", "admin", "--config", str(config)], input="short\n")
    assert short.exit_code == 2 and "at least 8 characters" in short.output
    assert runner.invoke(app, ["users", "remove", "rita", "--config", str(config)]).exit_code == 0
    assert not login(store, "rita", "a long password")
    assert runner.invoke(app, ["users", "remove", "rita", "--config", str(config)]).exit_code == 1
