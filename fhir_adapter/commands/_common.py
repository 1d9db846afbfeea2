"""Helpers shared by CLI commands: the one way to report bad input."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from mapping.errors import MappingError

EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print one line on stderr and exit; the message should say what to do next."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def bad_input_exits() -> Iterator[None]:
    """Turn the errors that mean "bad input" into exit code 2 with one line."""
    try:
        yield
    except MappingError as exc:
        fail(str(exc))
    except FileNotFoundError as exc:
        fail(f"no such file: {exc.filename}")
    except IsADirectoryError as exc:
        fail(f"expected a file, got a directory: {exc.filename}")
    except UnicodeDecodeError as exc:
        fail(f"file is not UTF-8 text (byte {exc.start}); convert it to UTF-8 and retry")
