"""The HTTP API of ``ragqa serve``: one process, the model loaded once, many clients at a time.

Endpoints (FastAPI; OpenAPI at ``/openapi.json``, browsable at ``/docs``):

- ``POST /v1/answer``: ``{"question": str | [str], "k"?, "num_beams"?, "constrain"?,
  "retrieval"?}`` -> what ``ragqa ask --format json`` prints (an object, or a list for a list),
  each passage holding the answer as a stretch of its text with ``answer_start``/``answer_end``.
- ``POST /v1/retrieve``: ``{"question", "k"?, "retrieval"?}`` -> passages and scores only.
- ``GET /health``: 200 once the model is loaded, 503 before. ``GET /v1/info``: model, index,
  settings, versions. ``GET /``: the web page (``rag/static/index.html``).
- With an admin token only: ``POST /v1/passages`` ``{"passages": [{"id", "title"?, "text"}]}``
  and ``DELETE /v1/passages/{id}``, hot-swapping the dense and BM25 sides; ``Authorization:
  Bearer TOKEN`` (401 without, 403 when wrong; compared in constant time). With ``persist`` the
  index directory is rewritten atomically after each change.

Questions are answered in dynamic batches (``rag.batcher``) by the model behind the API
(``rag.service``). Bad input is a 4xx with
``{"error": "..."}`` naming the field; an unexpected failure a 500 with a one-line error (the
traceback goes to the server's log); the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from rag.common.errors import UserError

from .batcher import Busy
from .service import ServeConfig, Service

log = logging.getLogger(__name__)
PAGE = Path(__file__).parent / "static" / "index.html"
MAX_BEAMS = 16


def _request_models():
    """The pydantic request bodies (strict: no type coercion, no unknown fields)."""
    class Query(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        question: str | list[str]
        k: int | None = None
        retrieval: Literal["dense", "sparse", "hybrid"] | None = None

    class AnswerQuery(Query):
        num_beams: int | None = None
        constrain: Literal["none", "spans"] | None = None

    class Passage(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        id: str
        title: str = ""
        text: str

    class Passages(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        passages: list[Passage]

    return Query, AnswerQuery, Passages


def check_questions(question: str | list[str], config: ServeConfig) -> list[str]:
    """The request's questions as a list, refused (UserError naming the field) when there are
    none, one is empty or only spaces, one is too long, or there are more than the queue holds."""
    questions = [question] if isinstance(question, str) else question
    if not questions:
        raise UserError("question: an empty list")
    if len(questions) > config.max_queue:
        raise UserError(f"question: {len(questions)} questions, at most {config.max_queue}")
    for i, q in enumerate(questions):
        where = "question" if isinstance(question, str) else f"question[{i}]"
        if not q.strip():
            raise UserError(f"{where}: empty")
        if len(q) > config.max_question_chars:
            raise UserError(f"{where}: {len(q)} characters, at most {config.max_question_chars}")
    return [q.strip() for q in questions]


def create_app(service: Service):
    """The FastAPI application over ``service`` (module doc)."""
    config = service.config

    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has answered the requests in flight; finish what is queued, then stop
        await asyncio.to_thread(service.stop)

    app = FastAPI(title="ragqa", description="Open-domain question answering with the passages "
                  "each answer came from.", lifespan=lifespan,
                  version=service.info_fields.get("versions", {}).get("ragqa", "0"))
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return error(400, f"body: not valid JSON ({first.get('msg', '')})")
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or "body"
        return error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.exception("while answering %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server log has details")

    def model_or_error():
        if service.model is not None:
            return None
        if service.error is not None:
            return error(503, f"the model could not be loaded: {service.error}")
        return error(503, "loading the model; try again shortly", {"Retry-After": "5"})

    def check_k(k: int | None):
        if k is None:
            return None
        size = len(service.model.index) if service.model.index is not None else 0
        if not 1 <= k <= min(size, 100):
            return error(422, f"k: must be in 1..{min(size, 100)}, got {k}")
        return None

    async def run(key: tuple, questions: list[str]):
        try:
            return await service.batcher.submit(key, questions, config.timeout_s)
        except Busy as busy:
            return error(503, f"busy: {busy}; try again shortly", {"Retry-After": "1"})
        except TimeoutError:
            return error(504, f"not answered within {config.timeout_s:g} s")
        except UserError as err:
            return error(422, str(err))

    Query, AnswerQuery, Passages = _request_models()

    async def parse(request: Request, model):
        """The JSON body (whatever the content type says, as curl -d sends it) as ``model``, or
        the 4xx response naming what is wrong."""
        try:
            raw = await request.body()
        except ClientDisconnect:  # it hung up mid-body: nobody is left to answer
            return error(400, "body: the client went away before sending it all")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            return error(400, f"body: not valid JSON ({str(err).splitlines()[0]})")
        try:
            return model.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ())) or "body"
            return error(422, f"{where}: {first.get('msg', 'invalid')}")

    def schema(model) -> dict:
        return {"requestBody": {"required": True, "content": {
            "application/json": {"schema": model.model_json_schema()}}}}

    class _Refused(Exception):
        def __init__(self, response: JSONResponse):
            self.response = response

    async def query(request: Request, model) -> tuple:
        """The checked request: ``(body, questions)``; raises :class:`_Refused` with the 4xx/503
        answer when the model is not ready or the body, a question, k or retrieval is bad."""
        if (refusal := model_or_error()) is not None:
            raise _Refused(refusal)
        body = await parse(request, model)
        if isinstance(body, JSONResponse):
            raise _Refused(body)
        try:
            questions = check_questions(body.question, config)
        except UserError as err:
            raise _Refused(error(422, str(err))) from None
        if (refusal := check_k(body.k) or check_retrieval(body.retrieval)) is not None:
            raise _Refused(refusal)
        return body, questions

    def check_retrieval(mode: str | None):
        if mode is None:
            return None
        index = service.model.index
        if mode in ("sparse", "hybrid") and (index is None or index.sparse is None):
            return error(422, f"retrieval: {mode!r} needs an index with a BM25 side")
        if mode == "hybrid" and service.model.retriever.fusion.fusion == "rrf":
            return error(422, "retrieval: hybrid with rrf fusion gives no scores for p(z|x)")
        return None

    async def respond(body, key: tuple, questions: list[str]):
        out = await run(key, questions)
        if isinstance(out, JSONResponse):
            return out
        return out[0] if isinstance(body.question, str) else out

    @app.post("/v1/answer", openapi_extra=schema(AnswerQuery))
    async def answer(request: Request):
        """Answer one question (an object) or several (a list), with their passages."""
        try:
            body, questions = await query(request, AnswerQuery)
        except _Refused as refused:
            return refused.response
        if body.num_beams is not None and not 1 <= body.num_beams <= MAX_BEAMS:
            return error(422, f"num_beams: must be in 1..{MAX_BEAMS}, got {body.num_beams}")
        return await respond(body, ("answer", body.k, body.num_beams, body.constrain,
                                    body.retrieval), questions)

    @app.post("/v1/retrieve", openapi_extra=schema(Query))
    async def retrieve(request: Request):
        """The passages retrieved for each question, with their scores; no answer."""
        if service.model is not None and service.model.retriever is None:
            return error(422, "this model is closed-book: it retrieves nothing")
        try:
            body, questions = await query(request, Query)
        except _Refused as refused:
            return refused.response
        return await respond(body, ("retrieve", body.k, None, None, body.retrieval), questions)

    @app.get("/health")
    async def health():
        """200 once the model is loaded; 503 while loading or when it could not be."""
        if service.model is not None:
            return {"status": "ready"}
        return error(503, "loading" if service.error is None else service.error)

    @app.get("/v1/info")
    async def info():
        """What is being served: model, index, passages, settings, versions."""
        if (refusal := model_or_error()) is not None:
            return refusal
        model = service.model
        return {**service.info_fields, "passages": len(model.index) if model.index else 0,
                "config": asdict(service.base),
                "retrieval": None if model.retriever is None else {
                    "mode": service.base_mode, **asdict(model.retriever.fusion)},
                "batching": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms,
                             "max_queue": config.max_queue,
                             "batches": service.batcher.batch_count},
                "writes": service.admin_token is not None}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    if service.admin_token is not None:
        def authorised(request: Request):
            given = request.headers.get("authorization", "")
            if not given.startswith("Bearer "):
                return error(401, "authorization: send Authorization: Bearer <admin token>",
                             {"WWW-Authenticate": "Bearer"})
            if not hmac.compare_digest(given[7:].encode(), service.admin_token.encode()):
                return error(403, "authorization: wrong admin token")
            return None

        @app.post("/v1/passages", openapi_extra=schema(Passages))
        async def add(request: Request):
            """Add passages (id, title, text) to the index: dense and BM25 sides."""
            if (refusal := authorised(request) or model_or_error()) is not None:
                return refusal
            body = await parse(request, Passages)
            if isinstance(body, JSONResponse):
                return body
            rows = [p.model_dump() for p in body.passages]
            if not rows:
                return error(422, "passages: an empty list")
            for i, row in enumerate(rows):
                if not row["id"].strip() or not row["text"].strip():
                    return error(422, f"passages[{i}]: id and text must not be empty")
            try:
                return await service.batcher.call(lambda: service.add_passages(rows),
                                                  config.timeout_s)
            except UserError as err:
                return error(409 if "already" in str(err) else 422, str(err))

        @app.delete("/v1/passages/{passage_id}")
        async def delete(passage_id: str, request: Request):
            """Remove a passage from the index: dense and BM25 sides."""
            if (refusal := authorised(request) or model_or_error()) is not None:
                return refusal
            try:
                return await service.batcher.call(lambda: service.remove_passage(passage_id),
                                                  config.timeout_s)
            except UserError as err:
                return error(404 if "not in the index" in str(err) else 422, str(err))

    return app


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before it is parsed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": f"body: larger than {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass

