"""``dicom-ai-node users``: the web application's local accounts (add or change, list, remove).

The password comes from a prompt (typed twice) or, when stdin is not a terminal, from its first line, so that
scripts can pipe it in; it is never an argument (arguments show in the process list and the shell's history).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from node.config import ConfigError, load_settings

users_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Accounts for the web application (roles: reader, admin).")

ConfigOpt = typer.Option(..., "--config", "-c", help="TOML config file (see README: Configuration).")


def _db(config: Path) -> Path:
    try:
        return load_settings(config).node.data_dir / "node.db"
    except ConfigError as exc:
        typer.echo(f"config error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@users_app.command("add")
def add(name: str = typer.Argument(..., help="the user name people log in with"),
        role: str = typer.Option(..., "--role", help="reader (worklist and study pages) or admin (also /admin)"),
        config: Path = ConfigOpt) -> None:
    """Create an account, or set a new password and role for an existing one (its sessions end)."""
    from node.store import Store
    from node.web.auth import AuthError, hash_password, parse_role

    db = _db(config)
    try:
        checked = parse_role(role)
        if not name.strip() or any(c.isspace() for c in name):
            raise AuthError(f"user name {name!r}: use one word without spaces")
        password_hash = hash_password(_password())
    except AuthError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    store = Store(db)
    try:
        existed = store.user(name) is not None
        store.add_user(name, password_hash, checked.value)
    finally:
        store.close()
    typer.echo(f"{'updated' if existed else 'added'} {name} ({checked.value})")


@users_app.command("list")
def list_users(config: Path = ConfigOpt) -> None:
    """The accounts and their roles (never the hashes)."""
    from node.store import Store

    store = Store(_db(config))
    try:
        for user in store.users():
            typer.echo(f"{user['username']}\t{user['role']}")
    finally:
        store.close()


@users_app.command("remove")
def remove(name: str, config: Path = ConfigOpt) -> None:
    """Delete an account and end its sessions."""
    from node.store import Store

    store = Store(_db(config))
    try:
        if not store.remove_user(name):
            typer.echo(f"error: no account {name!r}; 'dicom-ai-node users list' shows them", err=True)
            raise typer.Exit(1)
    finally:
        store.close()
    typer.echo(f"removed {name}")
