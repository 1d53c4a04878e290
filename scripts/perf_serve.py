"""Load on `ragqa serve`, side by side: dynamic batching against --max_batch 1, then faults.

Starts the server twice on loopback (the model and index given, or the starter), each time
sending dev questions from 1, 8 and 32 concurrent clients (each client a bounded number of
requests of one question) and reporting q/s, p50/p95/p99 latency and errors. The batching
server then takes --rss_requests more requests (32 clients), with its RSS read before and after
(VmRSS of its process), and the fault mix: clients that send half a request or a whole one and
hang up before the answer, malformed bodies, and good requests between them, every good one of
which must be answered.

Example (the figures in docs/benchmarks.md):
    python scripts/perf_serve.py --questions ../shared/data/squad-open/dev.json \
        --json runs/perf_serve.json
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.commands.cli import parse, run
from rag.common.atomic import check_output_parent, write_json
from rag.common.options import POSITIVE, check_fields, option
from rag.common.questions import read_questions

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Args:
    questions: str = option("../shared/data/squad-open/dev.json", "questions to send")
    model: str | None = option(None, "model directory; default: the starter")
    index: str | None = option(None, "index directory; default: the model's own")
    clients: list[int] = option([1, 8, 32], "concurrent clients of each level", within=POSITIVE)
    requests: int = option(96, "requests per level (split among its clients)", within=POSITIVE)
    rss_requests: int = option(2000, "requests between the two RSS readings", within=POSITIVE)
    faults: int = option(60, "requests in the fault mix (a third of them good)", within=POSITIVE)
    max_batch: int = option(16, "the batching server's --max_batch", within=POSITIVE)
    max_wait_ms: float = option(10.0, "the batching server's --max_wait_ms", within=POSITIVE)
    json: str | None = option(None, "write the figures (JSON) here")

    def __post_init__(self) -> None:
        check_fields(self)


class Served:
    """A ``ragqa serve`` subprocess on an ephemeral port of 127.0.0.1."""

    def __init__(self, args: Args, *extra: str):
        cmd = [sys.executable, "-c", "from rag.commands import main; main()", "serve", "--port",
               "0", "--max_queue", "4096", *extra]
        if args.model:
            cmd += ["--model", args.model]
        if args.index:
            cmd += ["--index", args.index]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        found = re.search(r"http://([\d.]+):(\d+)", self.proc.stdout.readline())
        if not found:
            raise SystemExit("error: the server did not start")
        self.host, self.port = found.group(1), int(found.group(2))
        while self.call("GET", "/health")[0] != 200:
            if self.proc.poll() is not None:
                raise SystemExit("error: the server stopped while loading")
            time.sleep(0.3)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
            conn.request(method, path, body, {"content-type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return 0, b""

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)


def load(server: Served, questions: list[str], clients: int, requests: int) -> dict:
    """``requests`` one-question requests from ``clients`` threads: q/s, latency, errors."""
    per = [requests // clients + (c < requests % clients) for c in range(clients)]
    latencies, errors = [], []
    lock = threading.Lock()

    def client(c: int) -> None:
        rng = random.Random(c)
        for _ in range(per[c]):
            body = json.dumps({"question": rng.choice(questions)}).encode()
            start = time.perf_counter()
            status, _ = server.call("POST", "/v1/answer", body)
            with lock:
                (latencies if status == 200 else errors).append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    seconds = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"clients": clients, "requests": requests, "seconds": round(seconds, 2),
            "qps": round(len(latencies) / seconds, 2), "errors": len(errors),
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) if len(ms) else None
               for q in (50, 95, 99)}}


def faults(server: Served, questions: list[str], n: int) -> dict:
    """Hang-ups and malformed bodies interleaved with good requests; all good ones answered?"""
    kinds = ["good", "hangup_half", "hangup_whole", "malformed"] * (n // 4 + 1)
    random.Random(0).shuffle(kinds)
    kinds = kinds[:n]
    outcome = {"good": 0, "good_answered": 0, "malformed_4xx": 0, "hangups": 0}

    def one(i: int) -> None:
        kind = kinds[i]
        body = json.dumps({"question": questions[i % len(questions)]}).encode()
        if kind == "good":
            status, _ = server.call("POST", "/v1/answer", body)
            outcome["good"] += 1
            outcome["good_answered"] += status == 200
        elif kind == "malformed":
            status, _ = server.call("POST", "/v1/answer", b'{"question": ' + body[:7])
            outcome["malformed_4xx"] += 400 <= status < 500
        else:
            head = (f"POST /v1/answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            with socket.create_connection((server.host, server.port), timeout=30) as sock:
                sock.sendall(head + (body[: len(body) // 2] if kind == "hangup_half" else body))
            outcome["hangups"] += 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(n)))
    time.sleep(1.0)  # let the hung-up requests finish on the server
    outcome["healthy_after"] = server.call("GET", "/health")[0] == 200
    return outcome


def main() -> None:
    (args,) = parse([Args], description=__doc__)
    if args.json:
        check_output_parent(args.json)
    questions = [q.question for q in read_questions(args.questions)]
    report: dict = {"args": vars(args) | {"clients": list(args.clients)}, "servers": {}}
    for name, extra in (("batching", ["--max_batch", str(args.max_batch), "--max_wait_ms",
                                      str(args.max_wait_ms)]),
                        ("max_batch_1", ["--max_batch", "1", "--max_wait_ms", "0"])):
        server = Served(args, *extra)
        try:
            rows = []
            for clients in args.clients:
                rows.append(load(server, questions, clients, args.requests))
                print(f"{name}: {json.dumps(rows[-1])}", flush=True)
            entry = {"levels": rows}
            if name == "batching":
                before = server.rss_mib()
                entry["rss_run"] = load(server, questions, max(args.clients), args.rss_requests)
                after = server.rss_mib()
                entry["rss_mib"] = {"start": round(before, 1), "after": round(after, 1),
                                    "growth": round(after / before - 1, 4)}
                print(f"{name}: RSS {before:.1f} -> {after:.1f} MiB after "
                      f"{args.rss_requests} requests ({100 * (after / before - 1):+.1f}%), "
                      f"{entry['rss_run']['errors']} errors", flush=True)
                entry["faults"] = faults(server, questions, args.faults)
                print(f"{name}: faults {json.dumps(entry['faults'])}", flush=True)
            report["servers"][name] = entry
        finally:
            server.stop()
    top = max(args.clients)
    speed = {r["clients"]: r["qps"] for r in report["servers"]["batching"]["levels"]}
    single = {r["clients"]: r["qps"] for r in report["servers"]["max_batch_1"]["levels"]}
    report["speedup_at_max_clients"] = round(speed[top] / single[top], 2)
    print(f"dynamic batching / --max_batch 1 at {top} clients: "
          f"{report['speedup_at_max_clients']:.2f}x")
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    run(main)
