"""`homework-fhir keys generate`: a signing key pair for SMART Backend Services."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fhir_adapter.commands._common import fail


class KeyAlgorithm(StrEnum):
    RS384 = "RS384"
    ES384 = "ES384"


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(
        help="Signing keys for SMART Backend Services.",
        no_args_is_help=True,
    )

    @keys_app.command("generate")
    def generate(
        out: Annotated[
            Path, typer.Option("--out", help="Directory for <kid>.private.pem and .public.pem.")
        ],
        alg: Annotated[
            KeyAlgorithm, typer.Option("--alg", help="RS384 (RSA 2048) or ES384 (EC P-384).")
        ] = KeyAlgorithm.RS384,
        kid: Annotated[
            str | None,
            typer.Option("--kid", help="Key id; default: the key's RFC 7638 thumbprint."),
        ] = None,
    ) -> None:
        """Write a new key pair; print its kid, a JWK Set with its public key, and config."""
        from fhir_adapter.ehr.keys import KeyFileError, generate_key_pair, public_jwk

        if out.exists() and not out.is_dir():
            fail(f"--out {out} is a file; give a directory")
        try:
            files = generate_key_pair(alg.value, out, kid)
            jwk = public_jwk(files.public_key_file, files.algorithm, files.kid)
        except KeyFileError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"cannot write keys into {out}: {exc.strerror or exc}")
        typer.echo(f"kid: {files.kid}")
        typer.echo(f"private key: {files.private_key_file} (mode 0600: keep it secret)")
        typer.echo(f"public key: {files.public_key_file}")
        typer.echo("JWK Set with the public key (what the EHR registers):")
        typer.echo(json.dumps({"keys": [jwk]}, indent=2))
        typer.echo("For the connection's [ehr.<name>.auth] table:")
        typer.echo(f'  private_key_file = "{files.private_key_file.resolve()}"')
        typer.echo(f'  kid = "{files.kid}"')
        typer.echo(f'  algorithm = "{files.algorithm}"')

    app.add_typer(keys_app, name="keys")
