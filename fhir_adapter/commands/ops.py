"""Operators' commands: `check` a deployment's EHR connections; look at and retry the outbox
(writes) and the work (encounters) that failed.

Exit status everywhere: 0 fine, 1 something needs an operator, 2 bad input or configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fhir_adapter.commands._common import (
    check_output_path,
    configure_logging,
    fail,
    load_settings_or_exit,
    store_only,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (else HOMEWORK_FHIR_* variables)."),
]
ConnectionOption = Annotated[
    str | None, typer.Option("--connection", help="Only this EHR connection.")
]


def _when(value: object) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else "-"


def register(app: typer.Typer) -> None:
    @app.command()
    def check(
        config: ConfigOption = None,
        connection: ConnectionOption = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ) -> None:
        """Check each EHR connection: metadata, token, scopes, write targets, one search.

        Loads no model and writes nothing; exit 1 when any check fails.
        """
        import asyncio

        from fhir_adapter.connection_check import CheckLine, check_connection

        configure_logging(verbose)
        settings = load_settings_or_exit(config)
        conns = list(settings.ehr.values())
        if connection is not None:
            conns = [c for c in conns if c.name == connection]
            if not conns:
                names = ", ".join(sorted(settings.ehr)) or "none configured"
                fail(f"no EHR connection {connection!r} (configured: {names})")
        if not conns:
            fail("no EHR connection configured: add an [ehr.NAME] table (see README)")

        async def all_checks() -> list[CheckLine]:
            lines: list[CheckLine] = []
            for conn in conns:
                lines += await check_connection(conn)
            return lines

        lines = asyncio.run(all_checks())
        for line in lines:
            mark = "ok  " if line.ok else "FAIL"
            typer.echo(f"{line.connection:<16} {line.step:<14} {mark} {line.detail}")
        if not all(line.ok for line in lines):
            raise typer.Exit(1)

    outbox_app = typer.Typer(help="The writes waiting for, or refused by, a FHIR server.")
    app.add_typer(outbox_app, name="outbox")

    feedback_app = typer.Typer(help="Clinicians' decisions as labelled data for the model team.")
    app.add_typer(feedback_app, name="feedback")

    @feedback_app.command("export")
    def feedback_export(
        out: Annotated[Path, typer.Argument(help="JSON Lines file to write.")],
        config: ConfigOption = None,
    ) -> None:
        """Write one JSON line per clinician decision on a Task: no patient reference, but the
        session's quoted turns (PHI), so the file is written readable by its owner alone."""
        from fhir_adapter.smart.feedback import export

        check_output_path(out, "OUT", folder=False, make_parents=False)
        settings = load_settings_or_exit(config)
        with store_only(settings) as store:
            try:
                count = export(store, out)
            except OSError as exc:  # no permission, disk full
                fail(f"cannot write {out}: {exc.strerror}; check the path and its permissions")
        typer.echo(f"{count} feedback records written to {out} (mode 0600: it quotes session "
                   "turns; handle it as PHI, like the transcripts)")  # fmt: skip

    @outbox_app.command("list")
    def outbox_list(
        config: ConfigOption = None,
        connection: ConnectionOption = None,
        status: Annotated[
            str | None, typer.Option(help="pending, done or failed (default: all).")
        ] = None,
        limit: Annotated[int, typer.Option(min=1)] = 50,
    ) -> None:
        """Writes, newest change first: id, status, target, resource, attempts, next, error."""
        from fhir_adapter.store import outbox

        settings = load_settings_or_exit(config)
        wanted = None
        if status is not None:
            try:
                wanted = outbox.OutboxStatus(status)
            except ValueError:
                fail(f"--status {status!r}: use one of pending, done, failed")
        with store_only(settings) as store, store.session() as session:
            counts = outbox.counts(session, connection)
            rows = outbox.listing(session, connection, wanted, limit)
            typer.echo("  ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "empty")
            for row in rows:
                error = (row.last_error or "").splitlines()[0][:120] if row.last_error else ""
                typer.echo(
                    f"{row.id:>6} {row.status:<8} {row.connection}/{row.target:<16} "
                    f"{row.resource_type}/{row.server_id or '-'} attempts {row.attempts} "
                    f"next {_when(row.next_attempt_at)} {error}".rstrip()
                )

    @outbox_app.command("retry")
    def outbox_retry(
        ids: Annotated[
            list[int] | None, typer.Argument(help="Row ids (default: all failed).")
        ] = None,
        config: ConfigOption = None,
        connection: ConnectionOption = None,
        pending: Annotated[
            bool,
            typer.Option(help="Also pull waiting retries forward to now (not writes in flight)."),
        ] = False,
    ) -> None:
        """Put failed writes back in the queue (after fixing the cause); the next run sends them.

        A note's Provenance comes back with its note. A note version superseded by a later
        one (its text stale) stays failed, with its Provenance. With --pending, writes a writer
        holds (claimed, in flight) are left to it: pulled forward, another would send them again.
        """
        from fhir_adapter.store import outbox

        settings = load_settings_or_exit(config)

        def retry(session: Session) -> tuple[int, int, int]:
            n = outbox.requeue(session, connection, ids or ())
            stale = outbox.superseded(session, connection, ids or ())
            busy = 0
            if pending:
                n += outbox.requeue(session, connection, ids or (), outbox.OutboxStatus.PENDING)
                busy = outbox.in_flight(session, connection, ids or ())
            return n, stale, busy

        # It locks every failed row, in id order; a draft or a decision holding one of them
        # while waiting on another can deadlock with it on PostgreSQL: run again, it waits.
        with store_only(settings) as store:
            n, stale, busy = store.run(retry)
        typer.echo(
            f"requeued {n} writes"
            + (f"; left {busy} in flight alone" if busy else "")
            + (f"; left {stale} writes of superseded note versions alone (a later version "
               "carries the note; see `outbox list --status failed`)" if stale else "")
        )  # fmt: skip

    work_app = typer.Typer(help="Encounters in the pipeline, and those set aside after failing.")
    app.add_typer(work_app, name="work")

    @work_app.command("list")
    def work_list(
        config: ConfigOption = None,
        connection: ConnectionOption = None,
        step: Annotated[
            list[str] | None,
            typer.Option(help="fetch, detect, draft, done, skipped or failed (repeatable)."),
        ] = None,
        limit: Annotated[int, typer.Option(min=1)] = 50,
    ) -> None:
        """Encounters, most recently changed first: step, attempts, next try, last error."""
        from fhir_adapter.pipeline.steps import Step
        from fhir_adapter.store import work

        settings = load_settings_or_exit(config)
        for name in step or []:
            if name not in {s.value for s in Step}:
                fail(f"--step {name!r}: use one of {', '.join(s.value for s in Step)}")
        with store_only(settings) as store, store.session() as session:
            for row in work.listing(session, step or (), connection, limit):
                failed_at = row.state.get("failed_at")
                where = f"{row.step} (at {failed_at})" if failed_at else row.step
                error = (row.last_error or "").splitlines()[0][:120] if row.last_error else ""
                typer.echo(
                    f"{row.connection}/{row.encounter} {row.patient} {where} "
                    f"attempts {row.attempts} next {_when(row.retry_at)} {error}".rstrip()
                )

    @work_app.command("retry")
    def work_retry(
        encounters: Annotated[
            list[str] | None,
            typer.Argument(help="Encounter references (default: every failed one)."),
        ] = None,
        config: ConfigOption = None,
        connection: ConnectionOption = None,
    ) -> None:
        """Put dead-lettered encounters back at the step they failed at; the next run takes them."""
        from fhir_adapter.pipeline.steps import Step
        from fhir_adapter.store import work

        settings = load_settings_or_exit(config)
        wanted = [e if "/" in e else f"Encounter/{e}" for e in encounters or []]
        with store_only(settings) as store, store.session() as session:
            rows = work.retry(session, Step.FAILED, connection, wanted)
            for row in rows:
                typer.echo(f"{row.connection}/{row.encounter} -> {row.step}")
        typer.echo(f"requeued {len(rows)} encounters")
