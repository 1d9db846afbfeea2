"""Keep resource bodies out of logged exceptions.

Our own errors are written to carry ids and positions, never transcript text. Library errors
are not: pydantic repeats the input it refused, a database driver may quote a value, a
`KeyError` is its key. So a traceback is logged with every frame but only the messages of
exception types known to be safe; any other message is replaced by its length. Database errors
keep the driver's first line and the statement, never the parameters (the engines are also made
with `hide_parameters=True`, `store.db`).
"""

from __future__ import annotations

import logging
import re
import traceback

from sqlalchemy.exc import StatementError

# Modules whose exception messages are written for logs (ids, positions, URLs, settings).
_SAFE_MODULES = frozenset({"fhir_adapter", "mapping", "inference_server", "httpx", "httpcore",
                           "asyncio", "procrastinate", "alembic", "ssl"})  # fmt: skip
_SAFE_BUILTINS = (OSError, TimeoutError, MemoryError, NotImplementedError)
# Database drivers: the first line of their message says what failed ("database is locked",
# "deadlock detected"); the lines after it (DETAIL, CONTEXT) may quote the row or the JSON.
_DRIVERS = frozenset({"psycopg", "psycopg2", "sqlite3"})
# A quoted value this long in a driver's first line is data, not a column or constraint name.
_LONG_QUOTE = re.compile(r'"[^"]{40,}"|\'[^\']{40,}\'')
# Causes and contexts followed (a chain longer than this is cut).
_MAX_CHAIN = 8


def _first_line(text: str) -> str:
    line = text.strip().split("\n", 1)[0]
    return _LONG_QUOTE.sub("<withheld>", line)


def _message(exc: BaseException) -> str:
    module = type(exc).__module__.split(".")[0]
    if module in _SAFE_MODULES or isinstance(exc, _SAFE_BUILTINS):
        return str(exc)
    if isinstance(exc, StatementError):
        # The statement has placeholders, not values; the parameters stay out.
        orig = exc.orig
        driver = f"{type(orig).__name__}: {_first_line(str(orig))}" if orig else "error"
        return f"{driver} [SQL: {' '.join(str(exc.statement or '').split())[:500]}]"
    if module in _DRIVERS:
        return _first_line(str(exc))
    return f"<message withheld, {len(str(exc))} characters: it may carry data>"


def _describe(exc: BaseException) -> str:
    name = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    return f"{name}: {_message(exc)}"


def redacted_traceback(exc: BaseException) -> str:
    """The traceback of `exc` and its causes, frames in full, unsafe messages withheld."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < _MAX_CHAIN:
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    parts: list[str] = []
    for link in reversed(chain):
        if parts:
            parts.append("\nThe above exception led to the following one:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(link.__traceback__))
        parts.append(_describe(link) + "\n")
    return "".join(parts).rstrip("\n")


class RedactExceptions(logging.Filter):
    """Renders a record's exception with `redacted_traceback` before any formatter sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = record.exc_info
        if info and info[1] is not None:
            record.exc_text = redacted_traceback(info[1])
            # The formatter would render exc_info again; exc_text alone is what it prints.
            record.exc_info = None
        return True


def install(handler: logging.Handler) -> None:
    handler.addFilter(RedactExceptions())

