"""Helpers for the pipeline tests: settings for a seeded clinic, a restartable Triton, and
looking at our store."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from fhir_adapter.ehr.vendors import vendor_profile
from fhir_adapter.pipeline.jobs import ingest_resources, run_once
from fhir_adapter.pipeline.runner import Progress, RunSummary
from fhir_adapter.runtime import Runtime
from fhir_adapter.settings import (
    ApiAuthSettings,
    ApiSettings,
    ChartTargets,
    EhrConnection,
    ModelSettings,
    Settings,
    WriteTargets,
    load_settings,
)
from fhir_adapter.store import Store, resources
from fhir_adapter.store.resources import Query
from inference_server.classifier import CARD_FILE, HEADS_FILE, WEIGHTS_DIR
from inference_server.client import Backend
from inference_server.triton_server import TritonServer, free_port
from tests.fhir_adapter.pipeline.seed import Clinic
from tests.fhir_adapter.sekmet_server import SekmetServer

CONNECTION = "clinic"


def shipped_weights() -> Path:
    """The packaged weights; fails (never skips) when they are missing."""
    for name in (HEADS_FILE, CARD_FILE):
        if not (WEIGHTS_DIR / name).is_file():
            pytest.fail(
                f"no shipped model at {WEIGHTS_DIR / name}; train it with `homework-fhir train`",
                pytrace=False,
            )
    return WEIGHTS_DIR


@dataclass
class TritonHandle:
    """The session's Triton: a repository and fixed ports, so that it can be stopped and
    restarted at the same address (the pipeline's settings name the address)."""

    repository: Path
    log_dir: Path
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    server: TritonServer | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self.starts += 1
        self.server = TritonServer(
            self.repository,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            log_file=self.log_dir / f"tritonserver-{self.starts}.log",
        ).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def running(self) -> bool:
        return self.server is not None and self.server.running()

    def kill(self) -> None:
        """Crash it: SIGKILL to its process group (its own session: the server and its
        Python-backend stubs), as an OOM kill or a lost node would."""
        if self.server is not None and self.server.pid is not None:
            os.killpg(self.server.pid, signal.SIGKILL)
            while self.server.running():
                time.sleep(0.05)
        self.stop()


def connection(
    server: SekmetServer,
    clinic: Clinic,
    *,
    client: str = "rs384",
    care_plan_store: str = "ehr",
    communication: bool = True,
    vendor: str = "generic",
    base_url: str | None = None,
    scopes: str | None = None,
    **fields: Any,
) -> EhrConnection:
    """The EHR connection to `server` (or a proxy in front of it) for `clinic`'s encounters.

    The token endpoint is named rather than discovered, so that a proxy in front of the FHIR
    base does not change the assertion's audience.
    """
    auth = server.clients[client].auth(scopes, token_endpoint=server.token_endpoint)
    return EhrConnection(
        name=CONNECTION,
        base_url=base_url or server.base_url,
        auth=auth,
        vendor=vendor,
        write=WriteTargets(
            chart=ChartTargets(note=True, communication=communication),
            care_plan_store=care_plan_store,
        ),
        **{
            "encounter_poll": clinic.poll(
                per_patient=vendor_profile(vendor).encounter_search_needs_patient
            ),
            **fields,
        },
    )


def settings_for(
    tmp_path: Path,
    conns: Sequence[EhrConnection],
    *,
    database_url: str | None = None,
    triton: TritonHandle | None = None,
    **more: Any,
) -> Settings:
    """Development settings (dev-embedded API tokens) with the shipped model; `more` sets
    further sections (pipeline=...)."""
    shipped_weights()
    model = (
        ModelSettings(backend="triton", triton_url=triton.url)
        if triton is not None
        else ModelSettings(backend="in-process")
    )
    return load_settings(
        environment="development",
        data_dir=tmp_path / "data",
        database_url=database_url or f"sqlite:///{tmp_path / 'homework.sqlite3'}",
        model=model,
        api=ApiSettings(auth=ApiAuthSettings(mode="dev-embedded")),
        ehr={c.name: c for c in conns},
        **more,
    )


def stored(store: Store, resource_type: str, **query: Any) -> list[dict[str, Any]]:
    """Resources of a type in our store (optionally a search: patient=..., encounter=...)."""
    with store.session() as session:
        found, total = resources.search(session, Query(resource_type, count=1000, **query))
    assert total == len(found)
    return found


def identifier_of(resource: dict[str, Any], system: str) -> str | None:
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == system:
            return str(ident["value"])
    return None


def review_status(task: dict[str, Any]) -> str | None:
    for coding in (task.get("businessStatus") or {}).get("coding") or []:
        if str(coding.get("system", "")).endswith("/homework-review-status"):
            return str(coding["code"])
    return None


def config_toml(path: Path, settings: Settings, conn: EhrConnection) -> Path:
    """Write `settings` with one SMART connection as the TOML file an operator would."""
    auth = conn.auth
    assert auth.type == "smart-backend"
    lines = [
        'environment = "development"',
        f'data_dir = "{settings.data_dir}"',
        f'database_url = "{settings.database_url}"',
        "",
        "[model]",
        'backend = "triton"',
        f'triton_url = "{settings.model.triton_url}"',
        "",
        "[api.auth]",
        'mode = "dev-embedded"',
        "",
        f"[ehr.{conn.name}]",
        f'base_url = "{conn.base_url}"',
        f'vendor = "{conn.vendor}"',
        "",
        f"[ehr.{conn.name}.auth]",
        'type = "smart-backend"',
        f'client_id = "{auth.client_id}"',
        f'private_key_file = "{auth.private_key_file}"',
        f'kid = "{auth.kid}"',
        f'algorithm = "{auth.algorithm}"',
        f'scopes = "{" ".join(auth.scopes)}"',
        f'token_endpoint = "{auth.token_endpoint}"',
        *([f'jwks_url = "{auth.jwks_url}"'] if auth.jwks_url else []),
        "",
        f"[ehr.{conn.name}.write]",
        f'care_plan_store = "{conn.write.care_plan_store}"',
        "",
        f"[ehr.{conn.name}.write.chart]",
        f"communication = {str(conn.write.chart.communication).lower()}",
        "",
        f"[ehr.{conn.name}.encounter_poll]",
        'lookback = "P30D"',
        f'scope = "{conn.encounter_poll.scope}"',
        *([f'group = "{conn.encounter_poll.group}"'] if conn.encounter_poll.group else []),
        "",
        f"[ehr.{conn.name}.encounter_poll.extra_params]",
        *[f'"{k}" = "{v}"' for k, v in conn.encounter_poll.extra_params.items()],
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def run_pass(
    settings: Settings, store: Store, backend: Backend, progress: Progress | None = None
) -> RunSummary:
    """One `run --once` pass, as a process would run it: its own Runtime over the test's store
    and model backend (which the test owns), FHIR clients opened and closed with it."""
    async with Runtime(settings, store, backend) as runtime:
        return await run_once(runtime, progress)


async def ingest_pass(
    settings: Settings,
    store: Store,
    backend: Backend,
    resources: Iterable[dict[str, Any]],
    connection: str | None = None,
) -> RunSummary:
    """A push or backfill of `resources`, in a Runtime of its own (see `run_pass`)."""
    async with Runtime(settings, store, backend) as runtime:
        return await ingest_resources(runtime, resources, connection)


def deadlocked_once(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    """`owner.name` raises what PostgreSQL's deadlock detection raises, on its first call only;
    the calls counted."""
    real, calls = getattr(owner, name), []

    def once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            deadlock = psycopg.errors.DeadlockDetected("deadlock detected")
            raise OperationalError("SELECT ... FOR UPDATE", None, deadlock)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, once)
    return calls
