"""The ASGI app: the web page, ``POST /api/segment``, ``GET /api/health`` and API docs.

    from editseg import Segmenter
    from editseg.serve.app import create_app
    app = create_app(Segmenter.from_pretrained())     # run with any ASGI server, e.g. uvicorn

Every failure is JSON ``{"detail": "..."}`` with a 4xx/5xx status: 400 malformed request body,
404 unknown example, 413 body above ``max_upload_bytes``, 422 unusable input (not an image, too
many pixels, bad expressions or settings), 429 queue full (with ``Retry-After``), 503 out of
memory, 504 request timeout. A client never names a server path: images are uploaded, or built-in
examples are named by id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from importlib import resources
from typing import Any, Optional

from ..errors import EditsegError, OutOfMemoryError

try:
    from fastapi import FastAPI, File, Form, Header, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
except ModuleNotFoundError as _missing:  # pragma: no cover - depends on the environment
    raise EditsegError(
        f"editseg serve needs the web extra ({_missing.name} is missing): pip install 'editseg[serve]'"
    ) from None

from .. import __version__
from ..config import MethodConfig, parse_block_selection
from ..text import INSTRUCTION_TEMPLATES, normalize_expression
from .encoding import OUTPUTS, parse_outputs, result_json
from .engine import BatchingEngine, QueueFullError, RequestTimeout
from .examples import example_size_for, load_examples
from .limits import ServeLimits
from .uploads import ImageTooLargeError, decode_image

log = logging.getLogger("editseg.serve")
STATIC = resources.files("editseg.serve") / "static"
PAGES = {"/": "index.html", "/docs": "docs.html"}
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "docs.js": "text/javascript"}


# -- response schemas (documentation in /openapi.json) ---------------------------------------------
class RLE(BaseModel):
    size: list[int]
    counts: str


class ExpressionResult(BaseModel):
    expression: str
    instruction: str
    mask_area: int
    box: Optional[list[int]] = None
    size: list[int]
    timings: dict[str, float]
    mask_rle: Optional[RLE] = None
    mask_png: Optional[str] = None
    overlay_png: Optional[str] = None
    maps_png: Optional[dict[str, str]] = None
    heatmaps_png: Optional[dict[str, str]] = None


class ImageInfo(BaseModel):
    width: int
    height: int
    sha256: Optional[str] = None
    example: Optional[str] = None


class SegmentResponse(BaseModel):
    request_id: Optional[str] = None
    model: str
    method: str
    image: ImageInfo
    results: list[ExpressionResult]
    timings: dict[str, float]


class ErrorResponse(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "malformed request body", 404: "unknown example id", 413: "request body too large",
        422: "unusable image, expressions or settings", 429: "queue full; retry after Retry-After seconds",
        503: "the model ran out of memory", 504: "the request timed out",
    }.items()
}  # fmt: skip


class UploadTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"The request body is larger than this server accepts ({limit:,} bytes).")


class BodyLimit:
    """ASGI middleware: 413 for bodies above ``limit`` bytes, by ``Content-Length`` or while reading."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            error = UploadTooLarge(self.limit)
            response = JSONResponse({"detail": error.detail}, status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise UploadTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


def _backbone(segmenter: Any) -> Any:
    method = getattr(segmenter, "method", None)
    return getattr(method, "backbone", None) if method is not None else getattr(segmenter, "backbone", None)


def _method_name(segmenter: Any) -> str:
    return str(getattr(getattr(segmenter, "method", None), "name", "early-grounding"))


def _model_name(segmenter: Any) -> str:
    return str(getattr(_backbone(segmenter), "name", "") or getattr(getattr(segmenter, "method", None), "model", "") or "model")


def _device(segmenter: Any) -> str:
    return str(getattr(_backbone(segmenter), "device", "") or "")


def base_config(segmenter: Any) -> MethodConfig | None:
    """The segmenter's early-grounding settings; ``None`` for methods without them."""
    try:
        return segmenter.config
    except (EditsegError, AttributeError):
        return None


def create_app(segmenter: Any, limits: ServeLimits | None = None, *, engine: BatchingEngine | None = None) -> FastAPI:
    """The app around a loaded ``Segmenter``; its worker thread starts and stops with the app."""
    limits = limits or ServeLimits()
    engine = engine or BatchingEngine(segmenter, limits)
    model, method = _model_name(segmenter), _method_name(segmenter)
    examples = load_examples(example_size_for(model))
    defaults = base_config(segmenter)

    async def lifespan(_: FastAPI):
        engine.start()
        yield
        await run_in_threadpool(engine.stop)

    app = FastAPI(
        title="editseg",
        version=__version__,
        summary="Referring segmentation from the grounding inside an image-editing model.",
        description=(
            f"Model: {model}, method: {method}. POST an image and one expression per line to /api/segment; masks come back as "
            "COCO RLE and, on request, PNGs. Limits: " + ", ".join(f"{k}={v}" for k, v in limits.to_dict().items())
        ),
        docs_url=None,  # the default /docs loads Swagger UI from a CDN; ours works offline
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes)

    @app.exception_handler(EditsegError)
    async def _editseg_error(_: Request, error: EditsegError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg', 'invalid')}" for e in error.errors()
        )
        return JSONResponse({"detail": f"Invalid request: {problems}."}, status_code=422)

    # -- page ------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    @app.get("/docs", include_in_schema=False)
    async def page(request: Request) -> Response:
        name = PAGES[request.url.path]
        return Response((STATIC / name).read_bytes(), media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:  # a fixed list: nothing a client sends becomes a path
            raise HTTPException(404, "no such file")
        return Response((STATIC / name).read_bytes(), media_type=ASSETS[name])

    # -- API -------------------------------------------------------------------------------------
    @app.get("/api/health", summary="Liveness, model, queue and limits")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model,
            "method": method,
            "device": _device(segmenter),
            "version": __version__,
            "pid": os.getpid(),
            "queue": {"pending": engine.pending, "capacity": limits.queue_size},
            "limits": limits.to_dict(),
            "stats": dict(engine.stats),
            "settings": defaults.to_dict() if defaults is not None else {},
        }

    @app.get("/api/examples", summary="Built-in example scenes (shapes world) with suggested expressions")
    async def list_examples() -> list[dict[str, Any]]:
        return [
            {"id": e.id, "width": e.image.width, "height": e.image.height, "expressions": list(e.expressions),
             "url": f"/api/examples/{e.id}.png"}
            for e in examples.values()
        ]  # fmt: skip

    @app.get("/api/examples/{example_id}.png", summary="An example scene as PNG", responses={404: ERRORS[404]})
    async def example_png(example_id: str) -> Response:
        if example_id not in examples:
            raise HTTPException(404, f"No example {example_id!r}; see /api/examples.")
        return Response(examples[example_id].png, media_type="image/png")

    @app.post(
        "/api/segment",
        response_model=SegmentResponse,
        summary="Segment what each expression refers to",
        responses={k: v for k, v in ERRORS.items() if k != 404},
    )
    async def segment(
        image: Optional[UploadFile] = File(None, description="the image (any format Pillow reads); or give `example`"),
        example: Optional[str] = Form(None, description="a built-in example id from /api/examples, instead of `image`"),
        expressions: str = Form(..., description="referring expressions, one per line"),
        outputs: str = Form("rle", description=f"comma-separated, any of: {', '.join(OUTPUTS)}"),
        mode: Optional[str] = Form(None, description="full | ram | cam (server default: full)"),
        tau: Optional[float] = Form(None, description="RAM threshold for the prototype region"),
        map_threshold: Optional[float] = Form(None, description="binarisation threshold in ram/cam modes"),
        attention_blocks: Optional[str] = Form(None, description="all | double | single | indices like 0-3,5"),
        prompt_tokens: Optional[str] = Form(None, description="expression | expression-content | instruction | all"),
        template: Optional[str] = Form(None, description=f"instruction template: {' | '.join(INSTRUCTION_TEMPLATES)}"),
        similarity: Optional[str] = Form(None, description="cosine | dot"),
        seed: Optional[int] = Form(None, description="seed of the first-step noise"),
        timeout_s: Optional[float] = Form(None, description=f"give up after this many seconds (at most {limits.timeout_s})"),
        request_id: Optional[str] = Form(None, description="echoed back, to match answers to requests"),
        x_request_id: Optional[str] = Header(None, description="echoed back when `request_id` is not given"),
    ) -> JSONResponse:
        started = time.perf_counter()
        lines = _expressions(expressions, limits)
        try:
            wanted = parse_outputs(outputs)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        config = _config(defaults, method, mode, tau, map_threshold, attention_blocks, prompt_tokens, template, similarity, seed)
        if timeout_s is not None and not timeout_s > 0:
            raise HTTPException(422, "timeout_s must be positive.")
        if (image is None) == (example is None):
            raise HTTPException(422, "Send exactly one of `image` (a file) and `example` (an example id).")
        if example is not None:
            if example not in examples:
                raise HTTPException(422, f"No example {example!r}; see /api/examples.")
            pil, key, info = examples[example].image, f"example:{example}", {"example": example}
        else:
            data = await image.read()
            pil, digest = await run_in_threadpool(decode_image, data, limits.max_pixels)
            key, info = f"sha256:{digest}", {"sha256": digest}
        job = engine.submit(pil, key, lines, config, timeout_s)
        wait = max(0.0, job.deadline - time.perf_counter())
        try:
            results, batch = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job.future)), wait)
        except asyncio.TimeoutError:
            job.cancel()
            limit = limits.timeout_s if timeout_s is None else min(timeout_s, limits.timeout_s)
            raise RequestTimeout(f"The request did not finish within its timeout of {limit:g} s.") from None
        entries = await run_in_threadpool(lambda: [result_json(r, pil, wanted) for r in results])
        body = {
            "request_id": request_id if request_id is not None else x_request_id,
            "model": model,
            "method": method,
            "image": {"width": pil.width, "height": pil.height, **info},
            "results": entries,
            "timings": {
                "queue_s": batch.queue_s, "model_s": batch.model_s, "total_s": time.perf_counter() - started,
                "batch_requests": batch.batch_requests, "batch_images": batch.batch_images,
                "batch_expressions": batch.batch_expressions,
            },
        }  # fmt: skip
        return JSONResponse(body)

    return app


def _expressions(text: str, limits: ServeLimits) -> list[str]:
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines:
        raise HTTPException(422, "No expressions given: send one or more, one per line.")
    if len(lines) > limits.max_expressions:
        raise HTTPException(422, f"{len(lines)} expressions; this server accepts at most {limits.max_expressions} per request.")
    for line in lines:
        if len(line) > limits.max_expression_chars:
            raise HTTPException(
                422, f"An expression has {len(line)} characters; the limit is {limits.max_expression_chars}: {line[:60]!r}..."
            )
        normalize_expression(line)  # ExpressionError → 422
    return lines


def _config(base: MethodConfig | None, method: str, mode, tau, map_threshold, blocks, prompt_tokens, template, similarity, seed) -> MethodConfig | None:
    given = [mode, tau, map_threshold, blocks, prompt_tokens, template, similarity, seed]
    if base is None:
        if any(v is not None for v in given):
            raise HTTPException(422, f"The settings switches belong to the early-grounding method; this server runs {method}.")
        return None
    if template is not None and template not in INSTRUCTION_TEMPLATES:
        raise HTTPException(422, f"template must be one of {', '.join(INSTRUCTION_TEMPLATES)} over HTTP; got {template!r}.")
    changes = {
        "mode": mode, "tau": tau, "map_threshold": map_threshold, "prompt_tokens": prompt_tokens,
        "instruction_template": template, "similarity": similarity, "seed": seed,
        "attention_blocks": None if blocks is None else parse_block_selection(blocks),
    }  # fmt: skip
    return base.replace(**{k: v for k, v in changes.items() if v is not None})  # ConfigError → 422


def _error_response(error: EditsegError) -> JSONResponse:
    if isinstance(error, QueueFullError):
        return JSONResponse({"detail": str(error)}, status_code=429, headers={"Retry-After": "1"})
    if isinstance(error, RequestTimeout):
        return JSONResponse({"detail": str(error)}, status_code=504)
    if isinstance(error, OutOfMemoryError):
        return JSONResponse({"detail": str(error)}, status_code=503)
    if isinstance(error, ImageTooLargeError):
        return JSONResponse({"detail": str(error)}, status_code=422)
    return JSONResponse({"detail": str(error)}, status_code=422)
