"""Serve questions over HTTP: the model loaded once, many clients answered together (rag.server).

Listens on 127.0.0.1 by default; the address is printed once the socket is open, and /health
says 200 once the model is loaded. Concurrent questions are answered in dynamic batches
(--max_batch, --max_wait_ms); a full queue (--max_queue) answers 503 with Retry-After. A web
page is at /, the OpenAPI description at /openapi.json (and /docs). SIGTERM or Ctrl-C finishes
the requests in flight, then exits 0.

Passages can be added and removed (POST /v1/passages, DELETE /v1/passages/ID) only when an admin
token is given, in a file (--admin_token_file) or in $RAGQA_ADMIN_TOKEN; --persist also writes
the changes to the index directory.

Example:
    ragqa serve                                   # the starter and its embedded corpus
    ragqa serve --model runs/rag-copy --index runs/index-l6 --port 8080
    curl -s localhost:8000/v1/answer -d '{"question": "Who designed the Eiffel Tower?"}'
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from rag.commands.cli import parse
from rag.common.device import DeviceConfig
from rag.common.errors import UserError
from rag.common.options import Changes, option
from rag.config import RUN_CHANGES, LoadConfig
from rag.server import create_app
from rag.service import ServeConfig, Service
from retriever.fusion import RetrievalConfig

log = logging.getLogger(__name__)
LOCAL = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "RAGQA_ADMIN_TOKEN"


@dataclass(frozen=True)
class Args:
    model: str | None = option(None, "RAG model directory; default: the starter shipped with ragqa")
    index: str | None = option(None, "index directory; default: the model's own (the starter: "
                               "the embedded corpus)")


def admin_token(config: ServeConfig) -> str | None:
    """The admin token from --admin_token_file or $RAGQA_ADMIN_TOKEN (None: no write endpoints)."""
    if config.admin_token_file:
        path = Path(config.admin_token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"--admin_token_file {path}: cannot be read ({type(err).__name__})"
                            ) from None
        if not token:
            raise UserError(f"--admin_token_file {path}: empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), port 0 meaning any free one; UserError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror})"
                        ) from None
    sock.listen(2048)
    return sock


def main() -> None:
    args, changes, loading, retrieval, where, config = parse(
        [Args, RUN_CHANGES, LoadConfig, Changes(RetrievalConfig), DeviceConfig, ServeConfig],
        description=__doc__)
    token = admin_token(config)
    if config.persist and token is None:
        raise UserError("--persist writes passage changes, which need an admin token "
                        f"(--admin_token_file or ${TOKEN_ENV})")
    device = where.resolve()
    if config.host not in LOCAL:
        print(f"warning: --host {config.host} serves to other machines; nothing here "
              "authenticates readers", file=sys.stderr)
    # lazy: uvicorn, and the model's stack (faiss, datasets, the generator): --help goes without them
    import uvicorn

    from rag.loading import load_model

    def load():
        model, _ = load_model(args.model, args.index, changes, retrieval, device, loading.quantize)
        if config.persist and (model.index is None or model.index.path is None
                               or model.index.mmap):
            raise UserError("--persist needs a whole index loaded from a directory, not "
                            "memory-mapped or sharded")
        return model

    info = {"model": args.model or "starter", "index": args.index, "device": str(device),
            "versions": {"ragqa": metadata.version("ragqa"), "python": sys.version.split()[0]}}
    service = Service(load, config, token, info)
    app = create_app(service)
    sock = open_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving http://{shown}:{port} (loading the model; /health says when it is ready)",
          flush=True)
    service.start()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=60,
                                           access_log=False))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again for the
    # handler it found: make that one return, so a graceful shutdown exits 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    server.run(sockets=[sock])
    print("stopped", flush=True)
