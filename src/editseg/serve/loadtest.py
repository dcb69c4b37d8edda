"""A bounded load generator for ``editseg serve``: N client threads, a fixed number of requests.

    python -m editseg.serve.loadtest http://127.0.0.1:8000 --clients 8 --requests 200

Each request is one built-in example scene and one of its suggested expressions (or uploads the
scene's PNG with ``--upload``), tagged with a ``request_id``. Every answer is checked against its
request (id, expression, image), so batching can never hand one client another's result; the
report gives p50/p95 latency and throughput. Several base URLs are served round-robin (replicas).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True)
class LoadRequest:
    request_id: str
    example: str
    expression: str
    png: bytes | None = None  # upload these bytes instead of naming the example


@dataclass
class LoadReport:
    clients: int
    requests: int
    seconds: float
    latencies: list[float]
    answers: dict[str, dict] = field(default_factory=dict)  # request_id -> response JSON
    errors: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]

    def summary(self) -> dict[str, Any]:
        batches = [a["timings"]["batch_requests"] for a in self.answers.values()]
        return {
            "clients": self.clients, "requests": self.requests, "ok": len(self.latencies), "errors": len(self.errors),
            "p50_ms": 1000 * self.percentile(50), "p95_ms": 1000 * self.percentile(95),
            "mean_ms": 1000 * statistics.fmean(self.latencies) if self.latencies else float("nan"),
            "throughput_rps": self.throughput, "mean_batch_requests": statistics.fmean(batches) if batches else 0.0,
        }  # fmt: skip


def example_requests(
    base_url: str, count: int, upload: bool = False, prefix: str = "r", scenes: Sequence[str] | None = None
) -> list[LoadRequest]:
    """``count`` requests cycling through the server's examples (or ``scenes`` of them) and their
    suggested expressions."""
    import httpx

    with httpx.Client(base_url=base_url, timeout=30) as client:
        examples = client.get("/api/examples").raise_for_status().json()
    if scenes:
        examples = [e for e in examples if e["id"] in scenes]
    with httpx.Client(base_url=base_url, timeout=30) as client:
        pngs = {e["id"]: client.get(e["url"]).raise_for_status().content for e in examples} if upload else {}
    longest = max(len(e["expressions"]) for e in examples)
    # scene by scene in turn, so consecutive requests name different images
    pairs = [(e["id"], e["expressions"][j]) for j in range(longest) for e in examples if j < len(e["expressions"])]
    cycle = itertools.cycle(pairs)
    return [
        LoadRequest(f"{prefix}{n}", example, expression, pngs.get(example))
        for n, (example, expression) in zip(range(count), cycle)
    ]


def check_answer(request: LoadRequest, status: int, body: dict) -> str | None:
    """Why an answer does not belong to its request (``None`` when it does)."""
    if status != 200:
        return f"{request.request_id}: HTTP {status}: {body.get('detail')}"
    if body.get("request_id") != request.request_id:
        return f"{request.request_id}: answer carries request_id {body.get('request_id')!r}"
    results = body.get("results") or []
    if len(results) != 1 or results[0].get("expression") != request.expression:
        return f"{request.request_id}: answer is for {[r.get('expression') for r in results]}, not {request.expression!r}"
    if request.png is None and body.get("image", {}).get("example") != request.example:
        return f"{request.request_id}: answer is for image {body.get('image')}, not {request.example!r}"
    return None


def run_load(
    base_urls: str | Sequence[str], requests: Sequence[LoadRequest], clients: int, outputs: str = "rle", timeout: float = 60.0
) -> LoadReport:
    """Send ``requests`` from ``clients`` threads (each its own keep-alive connection per server)."""
    import httpx

    urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
    report = LoadReport(clients, len(requests), 0.0, [])
    lock = threading.Lock()
    todo = iter(enumerate(requests))

    def worker() -> None:
        sessions = [httpx.Client(base_url=u, timeout=timeout) for u in urls]
        try:
            while True:
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                n, request = item
                data = {"expressions": request.expression, "outputs": outputs, "request_id": request.request_id}
                files = None
                if request.png is None:
                    data["example"] = request.example
                else:
                    files = {"image": (f"{request.example}.png", request.png, "image/png")}
                started = time.perf_counter()
                try:
                    response = sessions[n % len(urls)].post("/api/segment", data=data, files=files)
                    body = response.json()
                    status = response.status_code
                except (httpx.HTTPError, ValueError) as error:
                    status, body = 0, {"detail": repr(error)}
                elapsed = time.perf_counter() - started
                problem = check_answer(request, status, body)
                with lock:
                    if problem:
                        report.errors.append(problem)
                    else:
                        report.latencies.append(elapsed)
                        report.answers[request.request_id] = body
        finally:
            for session in sessions:
                session.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.seconds = time.perf_counter() - started
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editseg.serve.loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("urls", nargs="+", help="base URL(s) of editseg serve; several are used round-robin")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--upload", action="store_true", help="upload the scene PNGs instead of naming examples")
    parser.add_argument("--scenes", nargs="*", help="example ids to use (default: all)")
    args = parser.parse_args(argv)
    load = example_requests(args.urls[0], args.requests, args.upload, scenes=args.scenes)
    report = run_load(args.urls, load, args.clients)
    print(json.dumps(report.summary(), indent=2))
    for problem in report.errors[:10]:
        print("error:", problem)
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
