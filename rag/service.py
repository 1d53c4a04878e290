"""The model behind ``ragqa serve`` (``rag.server``): loaded once, on a thread of its own, and
worked by the one batcher thread (``rag.batcher``): batches of questions with per-request
settings, and the passage writes of the admin endpoints, which never interleave with them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass

from rag.common.errors import UserError
from rag.common.options import NON_NEGATIVE, POSITIVE, Range, check_fields, option, updated
from retriever.batch_encode import encode_texts
from retriever.encoder import Encoder

from .answers import with_offsets
from .batcher import Batcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """How ``ragqa serve`` listens, batches and limits requests."""

    host: str = option("127.0.0.1", "address to listen on; anything but 127.0.0.1/localhost/::1 "
                       "exposes the server to other machines (a warning says so)")
    port: int = option(8000, "port; 0 = any free one (the address is printed)",
                       within=Range(0, 65535, integer=True))
    max_batch: int = option(16, "questions answered together in one batch", within=POSITIVE)
    max_wait_ms: float = option(10.0, "how long a batch waits for more questions before it runs",
                                within=NON_NEGATIVE)
    max_queue: int = option(256, "questions waiting at most; past it requests get 503 with "
                            "Retry-After", within=POSITIVE)
    timeout_s: float = option(60.0, "a request not answered in this many seconds gets 504",
                              within=POSITIVE)
    max_body_bytes: int = option(65536, "largest request body; larger gets 413", within=POSITIVE)
    max_question_chars: int = option(2000, "longest question; longer gets 422", within=POSITIVE)
    admin_token_file: str | None = option(
        None, "file holding the admin token that enables POST/DELETE /v1/passages (or set "
        "RAGQA_ADMIN_TOKEN); never on the command line, where ps shows it")
    persist: bool = option(False, "write passage changes to the index directory (atomically)")

    def __post_init__(self) -> None:
        check_fields(self)


class Service:
    """The model behind the API, loaded on a thread of its own; all model work goes through the
    batcher's one worker thread."""

    def __init__(self, load, config: ServeConfig, admin_token: str | None, info: dict):
        self.load, self.config, self.admin_token = load, config, admin_token
        self.info_fields = info  # what /v1/info says of the model, index and versions
        self.model = None
        self.error: str | None = None
        self.batcher: Batcher | None = None
        self.context_encoder = None  # loaded on the first added passage

    def start(self) -> None:
        threading.Thread(target=self._load, name="ragqa-load", daemon=True).start()

    def _load(self) -> None:
        try:
            model = self.load()
            self.base = model.config
            self.base_mode = model.retriever.mode if model.retriever else None
            self.batcher = Batcher(self._answer, self.config.max_batch, self.config.max_wait_ms,
                                   self.config.max_queue)
            self.batcher.start()
            self.model = model  # last: the API serves once this is set, batcher and all
            log.info("model loaded; ready")
        except UserError as err:
            self.error = str(err)
            log.error("cannot load the model: %s", err)
        except Exception as err:  # noqa: BLE001 - reported by /health, the server stays up
            self.error = f"{type(err).__name__}: {err}"
            log.exception("cannot load the model")

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()

    # ----------------------------------------------------------- worker thread
    def _settings(self, key: tuple):
        """Set the model up for one batch's settings ``key`` (``_answer`` restores its own)."""
        _, k, beams, constrain, retrieval = key
        model = self.model
        changes = {name: value for name, value in (("k", k), ("num_beams", beams),
                                                    ("constrain", constrain)) if value is not None}
        model.config = updated(self.base, **changes) if changes else self.base
        if model.retriever is not None:
            model.retriever.mode = retrieval or self.base_mode

    def _answer(self, key: tuple, questions: list[str]) -> list:
        self._settings(key)
        try:
            if key[0] == "retrieve":
                result = self.model.retriever.retrieve(questions, key[1] or self.base.k)
                return [{"question": q, "passages": p}
                        for q, p in zip(questions, result.passages, strict=True)]
            return [asdict(with_offsets(a)) for a in self.model.answer(questions)]
        finally:
            self.model.config = self.base
            if self.model.retriever is not None:
                self.model.retriever.mode = self.base_mode

    def add_passages(self, rows: list[dict]) -> dict:
        """Encode and add passages to both sides of the index (on the worker thread)."""
        index = self.model.index
        if self.context_encoder is None:
            self.context_encoder = Encoder.from_pretrained(index.manifest["encoder"]["name"])
        vectors = encode_texts(self.context_encoder, [r["text"] for r in rows],
                               [r["title"] for r in rows])
        index.add(vectors, rows)
        self._persist()
        return {"added": [r["id"] for r in rows], "count": len(index)}

    def remove_passage(self, passage_id: str) -> dict:
        self.model.index.remove([passage_id])
        self._persist()
        return {"removed": passage_id, "count": len(self.model.index)}

    def _persist(self) -> None:
        """With ``persist``, rewrite the index directory it was loaded from (atomically)."""
        if self.config.persist:
            self.model.index.save(self.model.index.path, overwrite=True)
            log.info("index saved to %s", self.model.index.path)
