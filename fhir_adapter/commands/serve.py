"""`homework-fhir serve` (the API) and `homework-fhir token` (a development token)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fhir_adapter.commands._common import configure_logging, fail, load_settings_or_exit

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (else HOMEWORK_FHIR_* variables)."),
]


def serve_app(settings_config: Path | None, host: str | None, port: int | None) -> None:
    import uvicorn

    from fhir_adapter.service import build_service
    from fhir_adapter.settings import SettingsError

    settings = load_settings_or_exit(settings_config)
    try:
        service = build_service(settings)
    except SettingsError as exc:
        fail(str(exc))
    # The app's lifespan opens the runtime (store, model, EHR clients) and closes it on exit.
    uvicorn.run(
        service.app,
        host=host or settings.api.host,
        port=port or settings.api.port,
        log_config=None,  # keep our logging set-up; uvicorn's access log lines carry no PHI
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        config: ConfigOption = None,
        host: Annotated[str | None, typer.Option(help="Overrides api.host.")] = None,
        port: Annotated[
            int | None, typer.Option(help="Overrides api.port.", min=1, max=65535)
        ] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ) -> None:
        """Serve the API: FHIR search over the drafts, POST /ingest, health checks."""
        configure_logging(verbose)
        serve_app(config, host, port)

    @app.command()
    def token(
        config: ConfigOption = None,
        scope: Annotated[str, typer.Option(help="Space-separated SMART scopes.")] = "system/*.read",
        lifetime: Annotated[
            int | None,
            typer.Option(help="Seconds the token is valid (default and most: "
                         "api.auth.max_token_lifetime_s).", min=60),
        ] = None,
    ) -> None:
        """Print a bearer token for the API in development mode (api.auth.mode=dev-embedded)."""
        from fhir_adapter.service import dev_token

        settings = load_settings_or_exit(config)
        if settings.api.auth.mode != "dev-embedded":
            fail("tokens are minted here only with api.auth.mode = 'dev-embedded' (development); "
                 "in production get one from your identity provider")  # fmt: skip
        from fhir_adapter.settings import SettingsError

        try:
            typer.echo(dev_token(settings, scope, lifetime))
        except SettingsError as exc:
            fail(str(exc))
