"""The API under a hostile and a maximal request: figures for README and deploy/README.

Starts `homework-fhir serve` (development settings, SQLite, in-process model) and measures:

1. A 50 MB `POST /ingest` with no token: time to the answer, and the server's resident memory
   before and after (it must be refused without reading the body).
2. `/healthz` latency (a probe every 20 ms) while an authorised Bundle just under
   `api.max_body_bytes` is sent, parsed, validated, staged and its sessions processed.

    .venv/bin/python bench/request_limits.py [--json out.json]

Run from the repository root; figures are from this machine, reported as measured.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _paths import check_output_file

from fhir_adapter.samples.build import build_resources
from inference_server.triton_server import free_port

BIN = Path(sys.executable).parent
MAX_BODY = 10 * 1024 * 1024  # api.max_body_bytes, the default


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def unauthenticated_50mb(host: str, port: int, pid: int) -> dict[str, float]:
    """Send the headers and the first megabyte of a 50 MB body; time the answer."""
    before = rss_mb(pid)
    size = 50 * 1024 * 1024
    with socket.create_connection((host, port)) as sock:
        start = time.perf_counter()
        sock.sendall(
            f"POST /ingest HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/fhir+json\r\n"
            f"Content-Length: {size}\r\n\r\n".encode()
        )
        with contextlib.suppress(OSError):  # the server may close first: that is the point
            sock.sendall(b" " * (1024 * 1024))
        answer = sock.recv(4096)
        elapsed = time.perf_counter() - start
    status = int(answer.split(b" ", 2)[1])
    time.sleep(0.5)
    return {"status": status, "answer_ms": elapsed * 1000, "rss_before_mb": before,
            "rss_after_mb": rss_mb(pid)}  # fmt: skip


def maximal_bundle() -> bytes:
    """The bundled samples repeated under new ids until the next copy would pass the limit."""
    base = [r for kind in build_resources().values() for r in kind]
    entries: list[dict[str, Any]] = []
    copy_n = 0
    while True:
        batch = []
        for resource in base:
            clone = copy.deepcopy(resource)
            clone["id"] = f"c{copy_n}-{clone['id']}"[:64]
            text = json.dumps(clone)
            for ref_id in {r["id"] for r in base}:  # references follow the renamed ids
                text = text.replace(f'/{ref_id}"', f'/c{copy_n}-{ref_id}"')
            batch.append({"resource": json.loads(text)})
        candidate = json.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": entries + batch}).encode()  # fmt: skip
        if len(candidate) > MAX_BODY:
            return json.dumps({"resourceType": "Bundle", "type": "collection",
                               "entry": entries}).encode()  # fmt: skip
        entries += batch
        copy_n += 1


def healthz_during_ingest(url: str, token: str, body: bytes) -> dict[str, Any]:
    latencies: list[float] = []
    during_accept: list[float] = []
    accepting = threading.Event()
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                start = time.perf_counter()
                client.get(f"{url}/healthz").raise_for_status()
                latency = (time.perf_counter() - start) * 1000
                latencies.append(latency)
                if accepting.is_set():
                    during_accept.append(latency)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    start = time.perf_counter()
    accepting.set()
    answer = httpx.post(f"{url}/ingest", content=body, headers=headers, timeout=600)
    accepting.clear()
    accepted_s = time.perf_counter() - start
    status_url = answer.headers.get("Content-Location")
    while status_url and httpx.get(status_url, headers=headers, timeout=30).status_code == 202:
        time.sleep(0.5)
    processed_s = time.perf_counter() - start
    stop.set()
    prober.join()
    ordered = sorted(latencies)
    return {
        "status": answer.status_code,
        "body_mb": len(body) / 1024 / 1024,
        "accepted_s": accepted_s,
        "processed_s": processed_s,
        "healthz_probes": len(latencies),
        "healthz_median_ms": statistics.median(ordered),
        "healthz_p99_ms": ordered[int(0.99 * (len(ordered) - 1))],
        "healthz_max_ms": ordered[-1],
        "healthz_max_while_accepting_ms": max(during_accept, default=0.0),
        "healthz_over_100ms": sum(1 for x in ordered if x > 100),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    check_output_file(parser, args.json, "--json")
    port = free_port()
    with tempfile.TemporaryDirectory() as root:
        env = {**os.environ, "HOMEWORK_FHIR_ENVIRONMENT": "development",
               "HOMEWORK_FHIR_DATA_DIR": root, "HOMEWORK_FHIR_API__AUTH__MODE": "dev-embedded",
               "HOMEWORK_FHIR_API__PORT": str(port),
               "HOMEWORK_FHIR_MODEL__BACKEND": "in-process"}  # fmt: skip
        server = subprocess.Popen(  # noqa: S603 - our own CLI
            [BIN / "homework-fhir", "serve"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("serve did not start")
                time.sleep(0.5)
            done = subprocess.run(  # noqa: S603 - our own CLI
                [BIN / "homework-fhir", "token", "--scope", "system/Bundle.c"],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            token = done.stdout.strip().splitlines()[-1]
            figures = {
                "unauthenticated_50mb": unauthenticated_50mb("127.0.0.1", port, server.pid),
                "maximal_ingest": healthz_during_ingest(url, token, maximal_bundle()),
            }
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
