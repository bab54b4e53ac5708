"""Shared CLI plumbing: common options, clean errors, JSON output.

Exit codes (cli.md): 0 success; 1 runtime failure; 2 bad usage or input.
Expected failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

PROG = "roder-analyticsd"


class Failure(click.ClickException):
    """A runtime failure: exit 1 with a one-line reason."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"{PROG}: error: {self.format_message()}", err=True)


class UsageProblem(click.UsageError):
    """Bad usage or bad input: exit 2 with a one-line reason, no usage banner."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        message = " ".join(self.format_message().split())
        click.echo(f"{PROG}: error: {message}", err=True)


class OneLineErrors(click.Group):
    """A group whose usage errors (its own and its sub-commands') print one line."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None


class LazyGroup(OneLineErrors):
    """A group whose sub-commands' modules are imported only when one of
    them runs (or help lists them): `stats tokens` need not load the
    receiver, the dashboard or the service installer."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})  # name → "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


def _one_line(exc: click.UsageError) -> click.UsageError:
    # `stats` with no sub-command shows its help: keep that as it is
    if isinstance(exc, UsageProblem | click.exceptions.NoArgsIsHelpError):
        return exc
    return UsageProblem(exc.format_message(), exc.ctx)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class StoreParam(click.ParamType):
    """A store path, or (for `serve` and `stats fleet`) a PostgreSQL URL,
    kept as the string it is (a Path would fold its `//`)."""

    name = "path"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and value.lower().startswith(POSTGRES_SCHEMES):
            return value
        return click.Path(path_type=Path, dir_okay=False).convert(value, param, ctx)


def data_options(func: F) -> F:
    """--data-dir / --store / --json, accepted on every command."""
    func = click.option(
        "--json", "as_json", is_flag=True, help="Machine-readable output on stdout."
    )(func)
    func = click.option(
        "--store",
        type=StoreParam(),
        help="The SQLite store (default: [analytics].store, else <data-dir>/analytics/usage.sqlite3).",  # noqa: E501
    )(func)
    func = click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="The Roder data dir (default: $RODER_CONFIG_DIR, $RODER_DATA_DIR, ~/.roder).",
    )(func)
    return func


def settings_for(data_dir: Path | None, store: Path | str | None):
    from roder_analyticsd.config import ConfigError, load_settings

    if isinstance(store, str):  # a PostgreSQL URL: only fleet commands take one
        raise UsageProblem(
            "--store postgresql://… is for `serve` and `stats fleet` only (this store is SQLite)"
        )
    try:
        return load_settings(data_dir, store)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def run_async(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run an async command body with anyio, mapping expected errors to exits."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import anyio

        return exits_mapped(anyio.run, functools.partial(func, *args, **kwargs))

    return wrapper


def run_blocking(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run an async command body that awaits only a blocking store
    connection (store/blocking.py), with no event loop; errors as run_async."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from roder_analyticsd.store import blocking

        return exits_mapped(blocking.run, func(*args, **kwargs))

    return wrapper


def exits_mapped(run: Callable[..., Any], *args: Any) -> Any:
    """`run(*args)`, the expected errors mapped to one-line exits."""
    import sqlite3

    from roder_analyticsd.store.connection import StorePathError
    from roder_analyticsd.store.schema import StoreError

    try:
        return run(*args)
    except StorePathError as exc:
        raise UsageProblem(str(exc)) from None
    except StoreError as exc:
        raise Failure(str(exc)) from None
    except sqlite3.Error as exc:
        raise Failure(f"store: {exc}") from None
    except OSError as exc:
        raise Failure(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")
