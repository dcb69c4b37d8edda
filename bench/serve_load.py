"""Latency and throughput of ``editseg serve`` on the default model, 1 vs N concurrent clients.

Starts one server process (``python -m editseg.cli serve``, default model toy-shapes) on a free
localhost port, warms it up, then for each scenario sends a fixed number of one-expression
requests from 1 and from N client threads (``editseg.serve.loadtest``: every answer is checked
against its request). Scenarios: ``one scene`` (every request on the same built-in scene,
different expressions: the case batching serves) and ``mixed scenes`` (six scenes in turn).
Prints a Markdown table for docs/benchmarks.md.

    python bench/serve_load.py --requests 60 --clients 8
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from editseg.serve.loadtest import example_requests, run_load  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, extra: list[str]) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(
        [sys.executable, "-m", "editseg.cli", "serve", "--port", str(port), "--log-level", "warning", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60, help="requests per run (default: 60)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the second run (default: 8)")
    parser.add_argument("--server-args", default="", help="extra `editseg serve` options, e.g. '--batch-size 4'")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(port, args.server_args.split())
    try:
        run_load(url, example_requests(url, 12, prefix="warm"), clients=2)  # warm-up
        rows = []
        for scenario, scenes in (("one scene", ["shapes-1"]), ("mixed scenes", None)):
            for clients in (1, args.clients):
                requests = example_requests(url, args.requests, prefix=f"{scenario[:3]}{clients}-", scenes=scenes)
                report = run_load(url, requests, clients=clients)
                if report.errors:
                    raise SystemExit(f"errors: {report.errors[:3]}")
                s = report.summary()
                rows.append(
                    f"| {scenario} | {clients} | {s['requests']} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | "
                    f"{s['throughput_rps']:.1f} | {s['mean_batch_requests']:.2f} |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait(20)
    print("| requests on | clients | requests | p50 ms | p95 ms | req/s | requests per model turn |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
