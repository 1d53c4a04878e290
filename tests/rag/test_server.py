"""``ragqa serve`` against live servers on 127.0.0.1 and an ephemeral port, each started and stopped
here, on the tiny RAG fixtures: answers as RagModel.answer gives them, batched or not; bad input;
a full queue; SIGTERM with requests in flight; the admin endpoints; a real browser on the page."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rag.config import DecodeConfig, RagConfig
from rag.model import RagModel
from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.index import DenseIndex
from retriever.sparse import SparseConfig

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ["what is the capital of france?", "who wrote hamlet?", "what is paris?",
             "where is the river nile?", "which planet is red?", "who is the king?"]


class Server:
    """A ``ragqa serve`` subprocess; ``url`` once it listens, ``ready()`` once /health says so."""

    def __init__(self, *args, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from rag.commands import main; main()", "serve", "--port", "0",
             *map(str, args)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                 "TOKENIZERS_PARALLELISM": "false", **(env or {})})
        line = self.proc.stdout.readline()
        found = re.search(r"http://[\d.]+:\d+", line)
        assert found, line + self.proc.stderr.read()
        self.url = found.group(0)
        deadline = time.monotonic() + 120
        while self.get("/health")[0] != 200:
            assert self.proc.poll() is None, self.proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)

    def request(self, method: str, path: str, body=None, raw: bytes | None = None,
                headers: dict | None = None) -> tuple[int, object, dict]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), dict(err.headers)

    def get(self, path: str):
        try:
            return self.request("GET", path)[:2]
        except (urllib.error.URLError, ConnectionError):
            return 0, None

    def post(self, path: str, body=None, **kwargs):
        return self.request("POST", path, body, **kwargs)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_encoder_dir, corpus_jsonl) -> dict[str, Path]:
    """The tiny RAG model over an index with a BM25 side."""
    from generator.warmstart import warm_start_bart

    d = tmp_path_factory.mktemp("serve")
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64)
    build_index(corpus_jsonl, encoder, d / "idx", BuildConfig(encode=EncodeConfig(progress=False),
                                                              sparse=SparseConfig()))
    generator, tokenizer = warm_start_bart(tiny_encoder_dir, d / "bart", cross_attention="copy_self")
    config = RagConfig(k=3, max_input_length=64, decode=DecodeConfig(num_beams=1, max_length=8),
                       index=str(d / "idx"))
    RagModel(encoder, generator, tokenizer, DenseIndex.load(d / "idx"), config).save_pretrained(
        d / "model")
    return {"model": d / "model", "index": d / "idx", "root": d}


@pytest.fixture(scope="module")
def server(tiny):
    s = Server("--model", tiny["model"], "--max_batch", "8", "--max_wait_ms", "50")
    yield s
    assert s.stop() == 0


def reference(tiny, questions):
    model = RagModel.from_pretrained(tiny["model"]).eval()
    return [model.answer(q) for q in questions]


def same(got: dict, want) -> None:
    assert got["answer"] == want.answer
    assert got["score"] == pytest.approx(want.score, abs=1e-4)
    assert [p["id"] for p in got["passages"]] == [p["id"] for p in want.passages]
    for p in got["passages"]:  # offsets, where given, point at the answer in the passage
        if "answer_start" in p:
            assert p["text"][p["answer_start"] : p["answer_end"]].lower() == got["answer"].lower()


def test_answers_equal_the_models_own(server, tiny):
    want = reference(tiny, QUESTIONS)
    status, one, _ = server.post("/v1/answer", {"question": QUESTIONS[0]})
    assert status == 200
    same(one, want[0])
    status, many, _ = server.post("/v1/answer", {"question": QUESTIONS})
    assert status == 200 and len(many) == len(QUESTIONS)
    for got, expected in zip(many, want, strict=True):
        same(got, expected)


def test_concurrent_requests_are_batched_and_equal_one_at_a_time(server, tiny):
    want = reference(tiny, QUESTIONS)
    before = server.get("/v1/info")[1]["batching"]["batches"]
    jobs = [QUESTIONS[i % len(QUESTIONS)] for i in range(24)]
    with ThreadPoolExecutor(24) as pool:
        replies = list(pool.map(lambda q: server.post("/v1/answer", {"question": q}), jobs))
    for q, (status, body, _) in zip(jobs, replies, strict=True):
        assert status == 200, body
        same(body, want[QUESTIONS.index(q)])
    batches = server.get("/v1/info")[1]["batching"]["batches"] - before
    assert batches < len(jobs)  # several questions went in one batch


def test_retrieve_and_info(server, tiny):
    status, body, _ = server.post("/v1/retrieve", {"question": QUESTIONS[0], "k": 2})
    assert status == 200 and len(body["passages"]) == 2
    assert all({"id", "title", "text", "score"} <= set(p) for p in body["passages"])
    status, info = server.get("/v1/info")
    assert status == 200 and info["passages"] == len(DenseIndex.load(tiny["index"]))
    assert info["config"]["k"] == 3 and info["writes"] is False


BAD = [
    ("invalid JSON", None, b"{not json", 400, "body"),
    ("not an object", [1, 2], None, 422, "body"),
    ("no question", {"k": 2}, None, 422, "question"),
    ("empty question", {"question": ""}, None, 422, "question"),
    ("whitespace question", {"question": "   "}, None, 422, "question"),
    ("empty in a list", {"question": ["ok?", " "]}, None, 422, "question[1]"),
    ("empty list", {"question": []}, None, 422, "question"),
    ("question too long", {"question": "a" * 2001}, None, 422, "question"),
    ("question a number", {"question": 3}, None, 422, "question"),
    ("k a string", {"question": "q?", "k": "3"}, None, 422, "k"),
    ("k zero", {"question": "q?", "k": 0}, None, 422, "k"),
    ("k too large", {"question": "q?", "k": 10_000}, None, 422, "k"),
    ("beams zero", {"question": "q?", "num_beams": 0}, None, 422, "num_beams"),
    ("unknown constrain", {"question": "q?", "constrain": "all"}, None, 422, "constrain"),
    ("unknown retrieval", {"question": "q?", "retrieval": "magic"}, None, 422, "retrieval"),
    ("unknown field", {"question": "q?", "temperature": 1}, None, 422, "temperature"),
    ("oversized body", None, b'{"question": "' + b"a" * 70_000 + b'"}', 413, "body"),
]


@pytest.mark.parametrize(("name", "body", "raw", "status", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_naming_the_field(server, name, body, raw, status, field):
    got, reply, _ = server.post("/v1/answer", body, raw=raw)
    assert got == status, reply
    assert set(reply) == {"error"} and "\n" not in reply["error"]
    assert reply["error"].startswith(field), reply
    assert server.get("/health")[0] == 200  # and the server keeps serving


def test_unknown_path_and_no_write_endpoints(server):
    status, reply, _ = server.request("DELETE", "/v1/passages/p1")
    assert status in (404, 405) and "error" in reply
    assert server.get("/nothing-here")[0] == 404


def test_a_full_queue_gets_503_with_retry_after(tiny):
    s = Server("--model", tiny["model"], "--max_queue", "2", "--max_batch", "64",
               "--max_wait_ms", "3000")
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(s.post, "/v1/answer", {"question": QUESTIONS[:2]})
            time.sleep(0.5)  # the first two questions wait for their batch to fill
            status, reply, headers = s.post("/v1/answer", {"question": QUESTIONS[2]})
            assert status == 503 and "busy" in reply["error"]
            assert headers.get("retry-after") or headers.get("Retry-After")
            assert first.result()[0] == 200
    finally:
        assert s.stop() == 0


def test_sigterm_answers_the_requests_in_flight_then_exits(tiny):
    s = Server("--model", tiny["model"], "--max_batch", "64", "--max_wait_ms", "1500")
    with ThreadPoolExecutor(3) as pool:
        inflight = [pool.submit(s.post, "/v1/answer", {"question": q}) for q in QUESTIONS[:3]]
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGTERM)
        replies = [f.result() for f in inflight]
    assert [r[0] for r in replies] == [200, 200, 200]
    assert s.proc.wait(timeout=60) == 0


def test_admin_endpoints(tiny, tmp_path):
    index = tmp_path / "idx"
    shutil.copytree(tiny["index"], index)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    args = ("--model", tiny["model"], "--index", index, "--admin_token_file", token_file,
            "--persist")
    new = {"passages": [{"id": "zz", "title": "Zebra", "text": "zebra zebra stripes"}]}
    ok = {"authorization": "Bearer s3cret"}

    def ids(srv, retrieval):  # every passage of the index, best first
        every = srv.get("/v1/info")[1]["passages"]
        status, body, _ = srv.post("/v1/retrieve", {"question": "zebra stripes", "k": every,
                                                    "retrieval": retrieval})
        assert status == 200, body
        return [p["id"] for p in body["passages"]]

    s = Server(*args)
    try:
        assert s.post("/v1/passages", new)[0] == 401
        assert s.post("/v1/passages", new, headers={"authorization": "Bearer nope"})[0] == 403
        assert s.request("DELETE", "/v1/passages/zz")[0] == 401
        status, body, _ = s.post("/v1/passages", new, headers=ok)
        assert status == 200 and body["added"] == ["zz"], body
        assert s.post("/v1/passages", new, headers=ok)[0] == 409  # already there
        assert ids(s, "sparse")[0] == "zz" and "zz" in ids(s, "dense")
    finally:
        assert s.stop() == 0
    s = Server(*args)  # --persist: the added passage survived the restart
    try:
        assert ids(s, "sparse")[0] == "zz" and "zz" in ids(s, "dense")
        assert s.request("DELETE", "/v1/passages/zz", headers=ok)[0] == 200
        assert s.request("DELETE", "/v1/passages/zz", headers=ok)[0] == 404
        assert "zz" not in ids(s, "sparse") and "zz" not in ids(s, "dense")
    finally:
        assert s.stop() == 0


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run "
                    "installs it)")
def test_the_page_in_a_real_browser(server, tiny, tmp_path):
    want = reference(tiny, [QUESTIONS[1]])[0]
    url = server.url + "/?q=" + urllib.request.quote(QUESTIONS[1])
    start = time.monotonic()
    dom = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True, text=True, timeout=60).stdout
    assert time.monotonic() - start < 30
    answer = re.search(r'<p id="answer"[^>]*>(.*?)</p>', dom, re.S)
    assert answer and answer.group(1) == want.answer.replace("&", "&amp;"), dom[-3000:]
    for p in want.passages:  # every passage, titled, in the page
        assert p["title"] in dom
    assert dom.count("<li>") == len(want.passages)
