"""Options and error handling every stage program shares (`--config`, `--set`, `--force`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from shared.config import Config, load_config

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="TOML config of the run.")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config value: section.key=value (repeatable).")]
ForceOption = Annotated[bool, typer.Option("--force", help="Redo the stage even if up to date.")]

F = TypeVar("F", bound=Callable[..., Any])


class StageFailure(Exception):
    """An expected failure: print its one-line message and exit with its code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def load(config: Path, overrides: list[str] | None) -> Config:
    """Load the config with the `--set` overrides."""
    return load_config(config, overrides or [])


def one_line_errors(func: F) -> F:
    """Turn expected errors (bad config, data, checkpoint, store) into `error: ...` + exit 2."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:  # a deliberate exit status (click's Exit is a RuntimeError)
            raise
        except StageFailure as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.code) from None
        except (ValueError, RuntimeError, OSError, KeyError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None
    return wrapper  # type: ignore[return-value]
