"""A real FHIR R4 server for tests: sekmet-fhir, in a subprocess on a free loopback port.

Registered as a pytest plugin in tests/conftest.py, so any test can ask for the
session-scoped `sekmet_server` fixture::

    async def test_something(sekmet_server: SekmetServer) -> None:
        endpoint = sekmet_server.endpoint("es384")            # FhirEndpoint, SMART ES384 auth
        conn = sekmet_server.connection("rs384", vendor="generic",
                                        write={"care_plan_store": "ehr"})  # EhrConnection
        refs = sekmet_server.seed([patient_json, encounter_json])  # -> ["Patient/<id>", ...]
        async with FhirClient(conn) as fhir:
            ...
        bundle = sekmet_server.admin_get("CarePlan", {"subject": refs[0]})  # check what we wrote

What the server is: sekmet's FastAPI app (`sekmet.main:app_factory`) under uvicorn, with its
own SQLite file in a temp directory, inbound validation "strict" (every resource must validate
as R4B), its lab/pharmacy simulator off, and SMART Backend Services auth (no anonymous
access). Its token endpoint is discovered at `{base_url}/.well-known/smart-configuration`;
tokens live `token_lifetime_s` (300 s on the session server).

Clients registered on the session server (`sekmet_server.clients[name]`):

    rs384     SMART, RS384 key, may ask for system/*.cruds
    es384     SMART, ES384 key (EC P-384), system/*.cruds
    rotated   SMART, JWK Set registered with two keys; signs with the second (key rotation)
    readonly  SMART, RS384, registered for system/*.rs only (writes get 403)
    secret    client-secret (client_secret_basic), system/*.cruds
    admin     client-secret used by `seed` / `admin_get` / `admin_request`

sekmet reads its clients once at start-up, so "registering" a client means starting a
server with it: `with start_sekmet(tmp_path, clients=[backend_client(tmp_path, "mine",
"ES384", "system/Task.cru")], token_lifetime_s=2) as server:` gives a dedicated server
(about 2 s to start) for tests that need other clients or short-lived tokens.

If the server cannot start, the fixture fails (never skips) and shows sekmet's log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_adapter.ehr.keys import Algorithm, KeyFiles, generate_key_pair, public_jwk
from fhir_adapter.ehr.vendors import vendor_profile
from fhir_adapter.settings import (
    ClientSecretAuth,
    EhrConnection,
    FhirEndpoint,
    SmartBackendAuth,
)

__all__ = [
    "RegisteredClient",
    "SekmetServer",
    "backend_client",
    "default_clients",
    "secret_client",
    "sekmet_server",
    "start_sekmet",
]

ALL_SCOPES = "system/*.cruds"
ADMIN_SECRET = "sekmet-admin-test-secret"
# Sent as `jku` by connections with vendor profiles that require a JWK Set URL; sekmet
# ignores `jku` and checks the keys registered with the client.
TEST_JWKS_URL = "https://homework-fhir.test/.well-known/jwks.json"
STARTUP_TIMEOUT_S = 60.0  # sekmet starts in ~2 s; a loaded 2-core CI machine can be slower


@dataclass(frozen=True)
class RegisteredClient:
    """A client registered with the server; `auth()` gives the settings to use it."""

    name: str
    client_id: str
    registered_scopes: str
    algorithm: Algorithm | None = None
    kid: str | None = None
    private_key_file: Path | None = None
    client_secret: str | None = None
    # The JWK Set registered with the server (several keys for the rotation case).
    jwks: Mapping[str, Any] | None = None

    def auth(
        self, scopes: str | Sequence[str] | None = None, **fields: Any
    ) -> SmartBackendAuth | ClientSecretAuth:
        """Auth settings for this client; `scopes` defaults to everything it may ask for."""
        scope_list = (scopes.split() if isinstance(scopes, str) else list(scopes or [])) or (
            self.registered_scopes.split()
        )
        if self.client_secret is not None:
            return ClientSecretAuth(
                type="client-secret",
                client_id=self.client_id,
                client_secret=self.client_secret,
                scopes=scope_list,
                **fields,
            )
        assert self.private_key_file and self.kid and self.algorithm
        return SmartBackendAuth(
            type="smart-backend",
            client_id=self.client_id,
            private_key_file=self.private_key_file,
            kid=self.kid,
            algorithm=self.algorithm,
            scopes=scope_list,
            **{"jwks_url": TEST_JWKS_URL, **fields},
        )

    def sekmet_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"client_id": self.client_id, "scopes": self.registered_scopes}
        if self.client_secret is not None:
            entry["client_secret"] = self.client_secret
        if self.jwks is not None:
            entry["jwks"] = dict(self.jwks)
        return entry


def backend_client(
    key_dir: Path,
    name: str,
    algorithm: Algorithm,
    registered_scopes: str = ALL_SCOPES,
    *,
    extra_keys: int = 0,
) -> RegisteredClient:
    """A SMART backend client with fresh keys in `key_dir`.

    With `extra_keys`, that many older keys are registered too and the client signs with
    the newest (what a JWK Set looks like during a key rotation).
    """
    keys: list[KeyFiles] = [
        generate_key_pair(algorithm, key_dir, f"{name}-{i}") for i in range(extra_keys + 1)
    ]
    jwks = {"keys": [public_jwk(k.public_key_file, k.algorithm, k.kid) for k in keys]}
    signing = keys[-1]
    return RegisteredClient(
        name=name,
        client_id=f"homework-{name}",
        registered_scopes=registered_scopes,
        algorithm=algorithm,
        kid=signing.kid,
        private_key_file=signing.private_key_file,
        jwks=jwks,
    )


def secret_client(name: str, secret: str, registered_scopes: str = ALL_SCOPES) -> RegisteredClient:
    return RegisteredClient(
        name=name,
        client_id=f"homework-{name}",
        registered_scopes=registered_scopes,
        client_secret=secret,
    )


def default_clients(key_dir: Path) -> list[RegisteredClient]:
    """The clients of the session server (see the module docstring)."""
    return [
        backend_client(key_dir, "rs384", "RS384"),
        backend_client(key_dir, "es384", "ES384"),
        backend_client(key_dir, "rotated", "ES384", extra_keys=1),
        backend_client(key_dir, "readonly", "RS384", "system/*.rs"),
        secret_client("secret", "sekmet-client-test-secret"),
    ]


@dataclass
class SekmetServer:
    """A running sekmet-fhir server. `base_url` is the FHIR base (…/fhir)."""

    base_url: str
    root_url: str
    workdir: Path
    log_file: Path
    token_lifetime_s: int
    clients: dict[str, RegisteredClient] = field(default_factory=dict)
    _admin_token: tuple[str, float] | None = None

    @property
    def token_endpoint(self) -> str:
        return f"{self.root_url}/auth/token"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- settings for our code

    def endpoint(
        self,
        client: str = "rs384",
        *,
        scopes: str | Sequence[str] | None = None,
        **fields: Any,
    ) -> FhirEndpoint:
        """A FhirEndpoint for this server as `client` (e.g. vendor=..., page_size=...)."""
        return FhirEndpoint(base_url=self.base_url, auth=self._auth(client, scopes), **fields)

    def connection(
        self,
        client: str = "rs384",
        *,
        name: str = "sekmet",
        scopes: str | Sequence[str] | None = None,
        **fields: Any,
    ) -> EhrConnection:
        """An EhrConnection for this server as `client` (write=..., vendor=..., ...).

        Vendors that search encounters per patient get a Group poll unless one is given (these
        connections are for client tests; pipeline tests poll a seeded clinic's own Group)."""
        if vendor_profile(fields.get("vendor", "generic")).encounter_search_needs_patient:
            fields.setdefault("encounter_poll", {"scope": "group", "group": "Group/panel"})
        return EhrConnection(
            name=name, base_url=self.base_url, auth=self._auth(client, scopes), **fields
        )

    def _auth(
        self, client: str, scopes: str | Sequence[str] | None
    ) -> SmartBackendAuth | ClientSecretAuth:
        try:
            return self.clients[client].auth(scopes)
        except KeyError:
            raise KeyError(f"no client {client!r}; registered: {sorted(self.clients)}") from None

    # -- direct access, for seeding and for checking what our code wrote

    def _admin_headers(self) -> dict[str, str]:
        now = time.monotonic()
        if self._admin_token is None or self._admin_token[1] < now:
            response = httpx.post(
                self.token_endpoint,
                data={"grant_type": "client_credentials", "scope": ALL_SCOPES},
                auth=("homework-admin", ADMIN_SECRET),
                timeout=30,
            )
            response.raise_for_status()
            body = response.json()
            self._admin_token = (body["access_token"], now + body["expires_in"] / 2)
        return {
            "Authorization": f"Bearer {self._admin_token[0]}",
            "Accept": "application/fhir+json",
        }

    def admin_request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to `{base_url}/{path}` with full rights (not through our client)."""
        headers = {**self._admin_headers(), **kwargs.pop("headers", {})}
        return httpx.request(
            method, f"{self.base_url}/{path.lstrip('/')}", headers=headers, timeout=30, **kwargs
        )

    def admin_get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        response = self.admin_request("GET", path, params=params)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def seed(self, resources: Sequence[Mapping[str, Any]]) -> list[str]:
        """Store resources in one transaction; returns their "Type/id" references in order.

        Resources with an `id` are PUT under it; others are POSTed (the server assigns ids).
        Entries may refer to each other by `fullUrl` ("urn:uuid:...") as in any transaction.
        """
        entries = []
        for resource in resources:
            rtype = resource["resourceType"]
            entry: dict[str, Any] = {"resource": dict(resource)}
            if resource.get("id"):
                entry["request"] = {"method": "PUT", "url": f"{rtype}/{resource['id']}"}
            else:
                entry["request"] = {"method": "POST", "url": rtype}
            if "fullUrl" in resource:
                entry["fullUrl"] = entry["resource"].pop("fullUrl")
            entries.append(entry)
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        response = self.admin_request(
            "POST", "", json=bundle, headers={"Content-Type": "application/fhir+json"}
        )
        if response.status_code != 200:
            raise AssertionError(f"seeding failed with {response.status_code}: {response.text}")
        refs = []
        for entry in response.json()["entry"]:
            location = entry["response"]["location"]
            parts = httpx.URL(location).path.split("/")
            at = parts.index("_history") if "_history" in parts else len(parts)
            refs.append(f"{parts[at - 2]}/{parts[at - 1]}")
        return refs


def _free_listening_socket() -> socket.socket:
    # Bound and listening before the server starts: no race for the port, and connections
    # made while it starts wait in the backlog instead of being refused.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextmanager
def start_sekmet(
    workdir: Path,
    *,
    clients: Sequence[RegisteredClient] | None = None,
    token_lifetime_s: int = 300,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
    extra_config: Mapping[str, Any] | None = None,
    auth_types: Sequence[str] = ("smart",),
) -> Iterator[SekmetServer]:
    """Start sekmet-fhir in `workdir`, wait until it answers, stop it afterwards.

    `extra_config` is merged into sekmet's settings (top-level keys replace ours), e.g.
    `{"server_behaviour": {"absolute_references": True}}` for a server that answers with
    absolute references as some vendors do. `auth_types` are the inbound schemes sekmet
    accepts: ("smart", "none") also lets in requests it cannot authenticate, such as those with
    a clinician's token from another authorization server (sekmet checks only its own). Fails
    the test (pytest.fail) with the server's log if it does not come up.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    key_dir = workdir / "keys"
    registered = list(default_clients(key_dir) if clients is None else clients)
    registered.append(secret_client("admin", ADMIN_SECRET))
    sock = _free_listening_socket()
    port = sock.getsockname()[1]
    root_url = f"http://127.0.0.1:{port}"
    config = {
        "base_url": f"{root_url}/fhir",
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(workdir / "data"),
        "db_path": str(workdir / "sekmet.sqlite3"),
        "own_private_key_path": str(workdir / "sekmet-own-key.pem"),
        "log_inbound": False,
        "simulator": {"enabled": False},
        "validation": {"inbound": "strict"},
        "server_auth": {
            "types": list(auth_types),
            "token_lifetime": token_lifetime_s,
            "enforce_scopes": True,
            "smart_clients": [c.sekmet_entry() for c in registered],
        },
    }
    config.update(extra_config or {})
    config_file = workdir / "sekmet.yaml"
    config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log_file = workdir / "sekmet.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    env["SEKMET_CONFIG"] = str(config_file)
    command = [
        sys.executable, "-m", "uvicorn", "sekmet.main:app_factory", "--factory",
        "--fd", str(sock.fileno()), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    server = SekmetServer(
        base_url=f"{root_url}/fhir",
        root_url=root_url,
        workdir=workdir,
        log_file=log_file,
        token_lifetime_s=token_lifetime_s,
        clients={c.name: c for c in registered},
    )
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(sock.fileno(),),
        )
    sock.close()  # the child holds it now
    try:
        _wait_ready(server, process, startup_timeout_s)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: SekmetServer, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"sekmet-fhir exited with code {process.returncode} while starting; its log "
                f"({server.log_file}):\n{server.log_tail()}",
                pytrace=False,
            )
        try:
            response = httpx.get(f"{server.base_url}/metadata", timeout=5)
            if response.status_code == 200:
                return
            last_error = f"/metadata answered {response.status_code}"
        except httpx.HTTPError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    _stop(process)
    pytest.fail(
        f"sekmet-fhir did not answer within {timeout:.0f}s ({last_error}); its log "
        f"({server.log_file}):\n{server.log_tail()}",
        pytrace=False,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def sekmet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetServer]:
    """One sekmet-fhir server for the whole test session (see the module docstring)."""
    with start_sekmet(tmp_path_factory.mktemp("sekmet")) as server:
        yield server
