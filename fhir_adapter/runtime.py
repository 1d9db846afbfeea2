"""The composition root: settings -> store, model backend, model info, FHIR clients.

Every entry point opens one `Runtime` and passes it down: the API in its lifespan, a CLI
command at its start, a worker process once. Nothing below it reads settings to open a
connection or loads a model::

    async with open_runtime(settings) as runtime:
        summary = await run_once(runtime)

The FHIR clients are opened the first time a connection is used (its CapabilityStatement is
checked then) and kept, with their token caches, until the runtime closes; a connection whose
EHR was down is tried again on its next use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fhir_adapter.connections import ConnectionClients
from fhir_adapter.model_backend import make_backend, model_card, model_info
from fhir_adapter.settings import EhrConnection, Settings
from fhir_adapter.store import Store, open_store
from fhir_adapter.store.leases import process_owner
from inference_server.client import Backend
from mapping.fhir.context import ModelInfo

log = logging.getLogger(__name__)


class Runtime:
    """What one process holds open. Built by `open_runtime`, or by tests from parts they own."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        backend: Backend,
        model: ModelInfo | None = None,
        card: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend
        self.card = card if card is not None else model_card(settings)
        self.model = model or model_info(settings)
        # Names this process in leases, so that replicas never process one patient at once.
        self.owner = process_owner()
        self._clients: dict[str, ConnectionClients] = {}
        self._opening = asyncio.Lock()
        self._background: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        # With queue.backend "procrastinate": queues a connection's waiting work as jobs for
        # the workers (set by `open_runtime`); None runs it in this process.
        self.scheduler: Callable[[str], Awaitable[None]] | None = None
        self.queue: Any = None  # the opened procrastinate App, when there is one

    def connection(self, name: str) -> EhrConnection | None:
        """The configured EHR connection `name`; None for work filed under no EHR."""
        return self.settings.ehr.get(name)

    async def clients(self, conn: EhrConnection) -> ConnectionClients:
        """The connection's clients, opened (and its write targets verified) on first use."""
        async with self._opening:
            clients = self._clients.get(conn.name)
            if clients is None:
                clients = await ConnectionClients.open(conn, verify=True)
                self._clients[conn.name] = clients
            return clients

    def kick(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` in the background, one at a time per `name`.

        A kick while `name` runs makes it run once more when it ends (work that came in
        meanwhile is not missed), never twice at once: the pipeline's leases are per process,
        so two runs of one connection inside one process must not overlap.
        """
        if name in self._background:
            self._again.add(name)
            return

        async def loop() -> None:
            try:
                while True:
                    self._again.discard(name)
                    try:
                        await work()
                    except Exception:  # logged; the work is resumable from the store
                        log.exception("background work %s failed", name)
                    if name not in self._again:
                        return
            finally:
                self._background.pop(name, None)

        self._background[name] = asyncio.get_running_loop().create_task(loop())

    async def idle(self) -> None:
        """Wait until no background work is running (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*self._background.values(), return_exceptions=True)

    async def close_clients(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for opened in clients:
            await opened.aclose()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Background work is cancelled, not awaited: its state is in the store and the next
        # run resumes it. The store and backend belong to whoever made them; the clients and
        # the background tasks are the runtime's.
        tasks = list(self._background.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.close_clients()


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Open everything `settings` name, once, and close it all at the end.

    Raises FileNotFoundError when the model card or weights are missing, SettingsError for a
    configuration that cannot work; nothing is left open when it raises.
    """
    card = model_card(settings)
    model = model_info(settings)
    backend = make_backend(settings)
    try:
        await _check_served_version(backend, model)
        store = open_store(settings.database_url)
    except BaseException:
        await backend.close()
        raise
    try:
        async with Runtime(settings, store, backend, model, card) as runtime:
            if settings.queue.backend == "procrastinate":
                async with _queue(runtime):
                    yield runtime
            else:
                yield runtime
    finally:
        await backend.close()
        store.close()


class ModelVersionMismatchError(RuntimeError):
    """The model server serves other weights than the model card this process reads."""


async def _check_served_version(backend: Backend, model: ModelInfo) -> None:
    """Refuse to write drafts under one model version while another one answers.

    Device and Provenance name `model.version`, and the operating point comes from the same
    card: both must be the served model's. A server that publishes no version (a repository
    not built by `serve-model`) or is down now is logged, not refused.
    """
    served_version = getattr(backend, "served_version", None)
    if served_version is None:
        return
    served = await served_version()
    if served is None:
        log.warning("the model server does not say which model version it serves; recording "
                    "%s from the local model card", model.version)  # fmt: skip
    elif served != model.version:
        raise ModelVersionMismatchError(
            f"the model server serves model version {served} but the local model card is "
            f"{model.version}; point model.model_dir at the served weights' folder, or serve "
            "these weights (`homework-fhir serve-model`)"
        )


@asynccontextmanager
async def _queue(runtime: Runtime) -> AsyncIterator[None]:
    """Open the task queue for the runtime: jobs are deferred through it, and it is the app a
    worker runs."""
    from fhir_adapter.queue import defer_waiting, ensure_schema, make_app

    app = make_app(runtime.settings)
    async with app.open_async():
        await ensure_schema(app, runtime.settings.database_url)

        async def schedule(connection: str) -> None:
            await defer_waiting(app, runtime, connection)

        runtime.queue, runtime.scheduler = app, schedule
        try:
            yield
        finally:
            runtime.queue, runtime.scheduler = None, None
