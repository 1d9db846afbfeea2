"""Helpers shared by CLI commands: the one way to report bad input."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from mapping.errors import MappingError

if TYPE_CHECKING:
    from fhir_adapter.settings import Settings
    from fhir_adapter.store import Store
    from mapping.domain import Transcript

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


LOG_FORMAT_ENV = "HOMEWORK_FHIR_LOG_FORMAT"


def log_handler(stream: Any = None) -> logging.Handler:
    """The handler every process logs through: text or JSON (`HOMEWORK_FHIR_LOG_FORMAT`), with
    exception text redacted (`log_redaction`)."""
    from fhir_adapter import log_redaction

    handler = logging.StreamHandler(stream)
    if os.environ.get(LOG_FORMAT_ENV, "text").lower() == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log_redaction.install(handler)
    return handler


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr; only entry points call this. Records carry ids, never transcript text.

    `HOMEWORK_FHIR_LOG_FORMAT=json` writes one JSON object per line (time, level, logger,
    message) for log collectors; an environment variable rather than a setting, so that even
    a bad config file is reported in that format.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[log_handler()])
    logging.captureWarnings(True)  # settings warnings too, in the same format
    # Per-request lines from the HTTP stack would drown the pipeline's own.
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_settings_or_exit(config: Path | None, **overrides: Any) -> Settings:
    """Settings for an entry point; a bad config is exit 2 with the full list of problems."""
    from fhir_adapter.settings import SettingsError, load_settings

    try:
        return load_settings(config, **overrides)
    except SettingsError as exc:
        fail(str(exc))


@contextmanager
def store_only(settings: Settings) -> Iterator[Store]:
    """The store alone, for commands that need no model and no EHR; exit 1 when the
    database cannot be opened."""
    from sqlalchemy.exc import SQLAlchemyError

    from fhir_adapter.store import open_store

    try:
        store = open_store(settings.database_url)
    except SQLAlchemyError as exc:
        fail(f"cannot open the database: {type(exc).__name__}; check database_url", 1)
    except OSError as exc:  # e.g. data_dir is a file, so the SQLite file's folder cannot be made
        fail(store_path_message(exc))
    try:
        yield store
    finally:
        store.close()


def store_path_message(exc: OSError) -> str:
    """The line for a store (or data_dir) path that cannot be used: paths only."""
    return (
        f"cannot open the store{f' at {exc.filename}' if exc.filename else ''}: "
        f"{exc.strerror or type(exc).__name__}; data_dir must be a folder "
        "and database_url must name a file in one (check both)"
    )


def check_output_path(
    path: Path, option: str, *, folder: bool, make_parents: bool = True
) -> None:
    """Exit 2 before any work when `path` could not be written at the end: a file where a
    folder goes (`folder`) or a folder where a file goes, a file in the way of the parent
    folders the writer would make (or, for a writer that makes none, a missing parent
    folder), or no write permission."""
    if path.exists() and path.is_dir() != folder:
        is_, wanted = ("a file", "a folder") if folder else ("a folder", "a file path")
        fail(f"{option} {path} already exists as {is_}; pass {wanted}")
    if not make_parents and not path.parent.is_dir():
        fail(f"no folder {path.parent} for {option}; create it first")
    existing = next((p for p in (path, *path.parents) if p.exists()), path)
    if not existing.is_dir() and existing != path:
        fail(f"{option} {path}: {existing} is a file, not a folder; pass a path under a folder")
    if not os.access(existing, os.W_OK):
        fail(f"{option} {path}: no permission to write in {existing}; pass another path")


def progress_bar(description: str) -> Callable[[Iterable[str], int], Iterable[str]]:
    """A tqdm progress bar over encounter references (on stderr; silent when not a TTY)."""
    import sys

    from tqdm import tqdm

    def wrap(items: Iterable[str], total: int) -> Iterable[str]:
        bar: Iterable[str] = tqdm(items, total=total, desc=description, unit="enc",
                    disable=not sys.stderr.isatty() or total == 0)  # fmt: skip
        return bar

    return wrap


def read_transcript_file(
    path: Path, fmt: str, therapists: Sequence[str], clients: Sequence[str]
) -> Transcript:
    """Read a transcript file ('-' = stdin) with --therapist/--client names as explicit roles.

    A name given as both, or matching no speaker (a typo, not a hint to ignore), or a FHIR
    resource that only links to its transcript, is bad input: exit 2 with one line.
    """
    from mapping.domain import Role, RoleHints
    from mapping.errors import AttachmentNotInlineError
    from mapping.transcripts import read_transcript
    from mapping.transcripts.roles import speaker_key

    both = {speaker_key(n) for n in therapists} & {speaker_key(n) for n in clients}
    if both:
        fail(f"{sorted(both)[0]!r} is given as both --therapist and --client; give it once")
    explicit = {name: Role.THERAPIST for name in therapists}
    explicit.update({name: Role.CLIENT for name in clients})
    hints = RoleHints(explicit=explicit)
    with bad_input_exits():
        content = _read(path)
        try:
            result = read_transcript(content, fmt, hints, filename=path.name)  # type: ignore[arg-type]
        except AttachmentNotInlineError as exc:
            fail(
                f"the resource does not hold the transcript but links to {', '.join(exc.urls)}; "
                "download it and pass that file instead"
            )
    known = {speaker_key(d.speaker) for d in result.roles}
    for name in explicit:
        if speaker_key(name) not in known:
            speakers = ", ".join(d.speaker for d in result.roles)
            fail(f"no speaker {name!r} in the transcript; its speakers are: {speakers}")
    return result


def _read(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise  # bad_input_exits words these
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}; check the path and its permissions")
