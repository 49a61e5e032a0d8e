"""The HTTP server: one model directory behind a JSON API, and a page to use it from a browser.

The model is loaded once, in eval mode, and only read afterwards: requests run on worker threads
side by side, with no per-request mode switching and nothing global that one request changes for
another. Next-word requests that arrive together are read as one batch (see `batching`).

Every error a client can cause is a 4xx JSON object {"error": "...", "field": "..." or null};
a request that runs past the time limit gets 504.
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
import time
from functools import partial
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._version import __version__
from ..errors import RnnkitError
from ..training import load_model
from ..training.checkpoint import read_config
from .batching import MicroBatcher

MAX_BODY = 64 * 1024  # bytes of a JSON request
MAX_UPLOAD = 4 * 1024 * 1024  # bytes of an uploaded image
MAX_TOKENS = 2000  # of a prompt or a source sentence
MAX_ATTRIBUTION_TOKENS = 200  # occlusion reads (T - 1) x 10 variants of the prompt: quadratic in T
MAX_LENGTH = 1000  # tokens generated
MAX_BEAM = 16
STATIC = resources.files("rnnkit.serve") / "static"


class ApiError(Exception):
    """A client's mistake: its status, the field it concerns, and a one-line message."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.field = status, field


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


class BodyLimit:
    """Refuse request bodies over `limit` bytes (413) before they are read whole: by their
    Content-Length, or, sent in chunks, as soon as the count passes it (the app then sees the
    client gone, and what it answers is dropped). Uploads get `upload_limit`."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int) -> None:
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        limit = self.upload_limit if headers.get(b"content-type", b"").startswith(b"multipart/") else self.limit
        refusal = _error(413, f"the request body is over the limit of {limit} bytes")
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            return await refusal(scope, receive, send)
        seen, refused = 0, False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit and not refused:
                refused = True
                await refusal(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)


# ----------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _unicode(text: str) -> str:
    """JSON may carry a lone surrogate (\\ud800), which is no character: refuse it here, not as a
    500 when the answer echoes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]
Number = partial(Field, allow_inf_nan=False)


class PredictBody(_Body):
    text: Text
    top_k: int = Field(5, ge=1)


class GenerateBody(_Body):
    text: Text = ""
    length: int = Field(50, ge=1, le=MAX_LENGTH)
    temperature: float = Number(1.0, gt=0)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Number(None, gt=0, le=1)
    beam: int | None = Field(None, ge=1, le=MAX_BEAM)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False


class AttributionBody(_Body):
    text: Text
    target: Text | None = None
    candidates: list[Text] | None = Field(None, min_length=2, max_length=1000)


class TranslateBody(_Body):
    text: Text
    beam: int = Field(5, ge=1, le=MAX_BEAM)
    length_penalty: float = Number(1.0, ge=0, le=5)


def _validation_error(error: RequestValidationError) -> JSONResponse:
    """FastAPI's list of problems as one line naming the first field; 400 for a body that is not JSON."""
    first = error.errors()[0]
    if first.get("type") == "json_invalid":
        return _error(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})")
    where = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(where) or None
    if field is None:
        return _error(422, f"the body must be a JSON object ({first.get('msg', 'invalid')})")
    if first.get("type") == "missing":
        return _error(422, f"{field} is required", field)
    return _error(422, f"{field}: {first.get('msg', 'invalid')}", field)


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Served:
    """The loaded model and what the routes need to know of it."""

    kind: str
    model: torch.nn.Module
    assets: Any  # a language model's tokenizer, a translator's vocabularies, ...
    timeout: float


def _deadline(timeout: float) -> float:
    return time.monotonic() + timeout


def _check_deadline(deadline: float, timeout: float) -> None:
    if time.monotonic() > deadline:
        raise ApiError(504, f"the request ran past the time limit of {timeout:g} s")


async def _within(served: Served, work: Any) -> Any:
    """Await `work`, or 504 once the time limit has passed."""
    try:
        return await asyncio.wait_for(work, served.timeout)
    except TimeoutError:
        raise ApiError(504, f"the request ran past the time limit of {served.timeout:g} s") from None


def _sse(event: str | None, data: dict[str, Any]) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _lm_routes(app: FastAPI, served: Served, batch_window: float, max_batch: int) -> None:
    from ..apps.lm import beam_search, read_prompts, sample
    from ..diagnostics import attribute

    model, tokenizer = served.model, served.assets
    vocab = tokenizer.vocab_size

    def prompt_ids(text: str, limit: int = MAX_TOKENS) -> None:
        count = len(tokenizer.encode_prompt(text)) - 1
        if count > limit:
            raise ApiError(422, f"text: {count} tokens, over the limit of {limit}", "text")

    def predict_many(items: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
        log_probs, _ = read_prompts(model, tokenizer, [text for text, _ in items])  # (N, V)
        top = log_probs.topk(max(k for _, k in items), dim=-1)
        results = []
        for row, (text, k) in enumerate(items):
            values, indices = top.values[row, :k].exp().tolist(), top.indices[row, :k].tolist()
            results.append({"prompt": text, "unknown": tokenizer.unknown_words(text),
                            "predictions": [{"token": tokenizer.token(i), "prob": p} for p, i in zip(values, indices)]})
        return results

    batcher: MicroBatcher[tuple[str, int], dict[str, Any]] = MicroBatcher(predict_many, batch_window, max_batch)
    app.router.on_shutdown.append(batcher.close)

    @app.post("/v1/predict", summary="The most probable next tokens after a text, as `rnnkit predict --json`")
    async def predict(body: PredictBody) -> dict[str, Any]:
        if body.top_k > vocab:
            raise ApiError(422, f"top_k: at most the vocabulary size, {vocab}", "top_k")
        prompt_ids(body.text)
        return await _within(served, batcher((body.text, body.top_k)))

    def pieces(body: GenerateBody, deadline: float) -> Iterator[str]:
        if body.beam is not None:
            text, _ = beam_search(model, tokenizer, body.text, body.length, body.beam)
            yield text
            return
        for piece in sample(model, tokenizer, body.text, body.length, body.temperature, body.top_k, body.top_p,
                            body.seed):
            _check_deadline(deadline, served.timeout)
            yield piece

    @app.post("/v1/generate", summary="Continue a text by sampling or beam search; server-sent events with stream")
    async def generate(body: GenerateBody) -> Any:
        if body.top_k is not None and body.top_k > vocab:
            raise ApiError(422, f"top_k: at most the vocabulary size, {vocab}", "top_k")
        prompt_ids(body.text)
        deadline = _deadline(served.timeout)
        if not body.stream:
            text = await asyncio.to_thread(lambda: "".join(pieces(body, deadline)))
            return {"prompt": body.text, "text": text}

        def events() -> Iterator[str]:  # run on a worker thread by Starlette, one piece at a time
            done = []
            try:
                for piece in pieces(body, deadline):
                    done.append(piece)
                    yield _sse(None, {"text": piece})
            except (ApiError, RnnkitError) as error:
                yield _sse("error", {"error": str(error)})
                return
            yield _sse("done", {"text": "".join(done)})

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/attribution", summary="Which words of the text drove the prediction of a target word")
    async def attribution(body: AttributionBody) -> dict[str, Any]:
        prompt_ids(body.text, MAX_ATTRIBUTION_TOKENS)
        if not body.text.strip():
            raise ApiError(422, "text: empty; there is nothing to attribute", "text")

        def run() -> dict[str, Any]:
            target = body.target
            if target is None:
                log_probs, _ = read_prompts(model, tokenizer, [body.text])
                target = tokenizer.token(int(log_probs[0].argmax()))
            for name, words in (("target", [target]), ("candidates", body.candidates or [])):
                for word in words:
                    try:
                        tokenizer.id(word)
                    except RnnkitError as error:
                        raise ApiError(422, f"{name}: {error}", name) from None
            try:
                a = attribute(model, tokenizer, body.text, target, body.candidates)
            except RnnkitError as error:  # a target outside the candidates
                raise ApiError(422, f"target: {error}", "target") from None
            return {"tokens": a.tokens, "target": a.target, "prob": a.prob, "ig_delta": a.ig_delta,
                    "scores": {"occlusion": a.occlusion, "integrated_gradients": a.integrated_gradients,
                               "gradient_x_input": a.gradient_x_input}}

        return await _within(served, asyncio.to_thread(run))


def _translate_routes(app: FastAPI, served: Served) -> None:
    from ..apps.translate.task import translate

    @app.post("/v1/translate", summary="Translate a sentence (greedy with beam 1, else beam search)")
    async def translate_route(body: TranslateBody) -> dict[str, Any]:
        count = len(body.text.split())
        if count > MAX_TOKENS:
            raise ApiError(422, f"text: {count} words, over the limit of {MAX_TOKENS}", "text")
        if not body.text.strip():
            raise ApiError(422, "text: empty; there is nothing to translate", "text")
        [t] = await _within(served, asyncio.to_thread(
            translate, served.model, served.assets, [body.text], body.beam, body.length_penalty))
        return {"source": t.source, "translation": t.text, "score": t.score,
                "truncated": t.encoded.truncated, "unknown": t.encoded.unknown}


def _caption_routes(app: FastAPI, served: Served) -> None:
    from ..apps.caption.data import read_image
    from ..apps.caption.task import describe

    model = served.model

    @app.post("/v1/caption", summary="Describe an uploaded image (PNG, JPEG, ...)")
    async def caption(image: Annotated[UploadFile, File()], beam: int = 3) -> dict[str, Any]:
        if not 1 <= beam <= MAX_BEAM:
            raise ApiError(422, f"beam: between 1 and {MAX_BEAM}", "beam")
        data = io.BytesIO(await image.read())
        data.name = image.filename or "the uploaded image"

        def run() -> dict[str, Any]:
            try:
                pixels = read_image(data, (model.config.image_height, model.config.image_width))
            except RnnkitError as error:
                raise ApiError(422, f"image: {error}", "image") from None
            [c] = describe(model, served.assets, torch.from_numpy(pixels).permute(2, 0, 1)[None], beam)
            return {"caption": c.text, "score": c.score}

        return await _within(served, asyncio.to_thread(run))


def _handle(app: FastAPI, kind: type[Exception], response: Any) -> None:
    async def handler(request: Request, error: Exception) -> JSONResponse:
        return response(error)

    app.add_exception_handler(kind, handler)


def _speech_routes(app: FastAPI, served: Served) -> None:
    from ..apps.speech import transcribe_file

    @app.post("/v1/transcribe", summary="Transcribe an uploaded WAV file (greedy with beam 1, else prefix beam search)")
    async def transcribe(audio: Annotated[UploadFile, File()], beam: int = 1) -> dict[str, Any]:
        if not 1 <= beam <= MAX_BEAM:
            raise ApiError(422, f"beam: between 1 and {MAX_BEAM}", "beam")
        data = await audio.read()

        def run() -> dict[str, Any]:
            # the wave module reads a file by name; the upload gets a private one for the request
            with tempfile.TemporaryDirectory(prefix="rnnkit-serve-") as folder:
                path = Path(folder) / "upload.wav"
                path.write_bytes(data)
                try:
                    text, notes = transcribe_file(served.model, path, beam)
                except RnnkitError as error:
                    raise ApiError(422, f"audio: {str(error).replace(str(path), audio.filename or 'the upload')}",
                                   "audio") from None
            return {"text": text, "notes": notes}

        return await _within(served, asyncio.to_thread(run))


ROUTES = {"lm": ("/v1/predict", "/v1/generate", "/v1/attribution"), "translate": ("/v1/translate",),
          "caption": ("/v1/caption",), "speech": ("/v1/transcribe",)}


def create_app(
    model_dir: str | Path, batch_window_ms: float = 2.0, max_batch: int = 64, timeout_s: float = 10.0
) -> FastAPI:
    """The app serving the model in `model_dir` (a language model, translator or captioner, by the
    directory's kind). Next-word requests arriving within `batch_window_ms` share one forward pass
    (up to `max_batch`; 0 turns batching off); a request running past `timeout_s` gets 504."""
    directory = Path(model_dir)
    config = read_config(directory)
    if config["kind"] not in ROUTES:
        raise RnnkitError(f"{directory} holds a {config['kind']!r} model, which the server does not serve "
                          f"(it serves {', '.join(ROUTES)})")
    if batch_window_ms < 0 or max_batch < 1 or timeout_s <= 0:
        raise RnnkitError("batch_window_ms must be >= 0, max_batch >= 1 and timeout_s > 0")
    model, assets = load_model(directory, kind=config["kind"])
    served = Served(config["kind"], model, assets, timeout_s)

    app = FastAPI(title="rnnkit", version=__version__,
                  description=f"The {served.kind!r} model in {directory.name}, served by rnnkit.")
    app.add_middleware(BodyLimit, limit=MAX_BODY, upload_limit=MAX_UPLOAD)
    _handle(app, ApiError, lambda e: _error(e.status, str(e), e.field))
    _handle(app, RnnkitError, lambda e: _error(422, str(e)))
    _handle(app, RequestValidationError, _validation_error)
    _handle(app, HTTPException, lambda e: _error(e.status_code, str(e.detail)))

    if served.kind == "lm":
        _lm_routes(app, served, batch_window_ms / 1000, max_batch)
    elif served.kind == "translate":
        _translate_routes(app, served)
    elif served.kind == "speech":
        _speech_routes(app, served)
    else:
        _caption_routes(app, served)

    @app.get("/healthz", summary="Whether the server answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "kind": served.kind}

    @app.get("/v1/model", summary="The served model: its kind, config and vocabulary")
    async def model_info() -> dict[str, Any]:
        info: dict[str, Any] = {"kind": served.kind, "config": config["model"], "endpoints": list(ROUTES[served.kind]),
                                "limits": {"max_body_bytes": MAX_BODY, "max_upload_bytes": MAX_UPLOAD,
                                           "max_text_tokens": MAX_TOKENS, "max_length": MAX_LENGTH,
                                           "max_attribution_tokens": MAX_ATTRIBUTION_TOKENS, "max_beam": MAX_BEAM,
                                           "timeout_s": served.timeout}}
        if served.kind == "lm":
            info |= {"tokenizer": assets.kind, "vocab_size": assets.vocab_size}
        return info

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
