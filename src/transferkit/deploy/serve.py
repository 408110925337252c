"""``transferkit serve``: the run's model behind HTTP (FastAPI + uvicorn).

    POST /predict[?topk=5]  an image as multipart field ``file`` or as the raw body
                            -> {"predictions": [{"label", "index", "prob"}], "model", "ms"}
    GET  /                  a self-contained page: drop an image, see the top-5 as bars
    GET  /healthz           liveness, and how many batches have run
    GET  /metadata          classes, backbone, preprocessing, final metrics of the run

The model is loaded once, before the port opens; no request can name a model or a file.
Every refusal is a JSON ``{"error": reason}`` and the server carries on:
413 body over ``max_bytes`` (from Content-Length before reading, else counted while streaming),
422 not an image / too many pixels (from the header, before decoding) / bad ``topk``,
408 body still arriving at the deadline (a slow or stalled client), 503 queue full, 504 past the
deadline after the body arrived. Request bodies are never logged.
"""
# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations
# (``request: Request``) at definition time, and fastapi is imported inside create_app.
import asyncio
import io
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from transferkit.core.errors import UserError
from transferkit.data.images import BadImage, load_uint8
from transferkit.data.tta import tta_views
from transferkit.deploy.backends import load_backend
from transferkit.deploy.batcher import DynamicBatcher, Overloaded
from transferkit.deploy.decodes import DecodePool, default_size
from transferkit.deploy.predict import image_probabilities, top_predictions
from transferkit.deploy.serve_page import page_html
from transferkit.models.usercode import code_trusted, trusting_code

log = logging.getLogger("transferkit.serve")
ENV_CONFIG = "TRANSFERKIT_SERVE_CONFIG"  # how `--workers N` hands the settings to each worker process


@dataclass
class ServeSettings:
    max_bytes: int = 10_000_000  # a phone photo is 2-6 MB; the model sees 224x224 anyway
    max_pixels: int = 50_000_000  # a 200 MP image would take 600 MB as RGB: refused from its header
    timeout: float = 10.0  # seconds for the whole request, upload included (slow clients too)
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_decodes: int = 0  # images decoded at once (deploy/decodes.py); 0: default_size()


class Refuse(Exception):
    """Answer ``status`` with ``{"error": message}``: the client's request, not the server, is at fault."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class _BodyTooLarge(Exception):
    pass


class Service:
    """The loaded model and what it needs to answer requests."""

    def __init__(self, module, pre, classes: list[str], run: dict, backend: str, run_name: str, temperature: float = 1.0,
                 engine: str = "", tta: tuple = ()):
        self.module, self.pre, self.classes, self.run = module.eval(), pre, list(classes), run
        self.backend, self.run_name, self.temperature = backend, run_name, temperature
        self.model_name = run.get("model", {}).get("name", "model")
        self.engine = engine  # the log line naming the engine that answers, and its measured speed
        self.tta, self.views = tuple(tta), tta_views(tuple(tta))  # --tta: views averaged as eval and predict do

    @classmethod
    def from_run(cls, run_dir: str | Path, backend: str = "torch", precision: str = "fp32", threads: int = 0,
                 tta: tuple = ()) -> "Service":
        p = load_backend(run_dir, backend, precision, threads, mode="latency")
        name = getattr(p.module, "label", backend)  # auto resolves to the engine it chose
        return cls(p.module, p.pre, p.classes, p.run, name, Path(run_dir).resolve().name, p.temperature, p.message, tta)

    def decode(self, data: bytes, max_pixels: int) -> np.ndarray:
        """Bytes -> ``(3, S, S)`` uint8, by the same rules as training (raises BadImage)."""
        return load_uint8(io.BytesIO(data), self.pre.size, self.pre.interpolation, max_pixels)

    def forward(self, arrays: list[np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One forward pass over a batch (runs in the batcher's thread): (calibrated probabilities,
        logits that rank them) per image."""
        with torch.inference_mode():  # grad mode is per thread: set it here, not at start-up
            probs, ranking = image_probabilities(self.module, torch.from_numpy(np.stack(arrays)), self.pre, "cpu",
                                                 self.temperature, self.views)
            return list(zip(probs, ranking))

    def metadata(self, settings: ServeSettings) -> dict:
        backbone = {k: v for k, v in self.run.get("backbone", {}).items() if k != "weights_source"}  # may hold paths
        return {"run": self.run_name, "model": self.model_name, "backend": self.backend,
                "head": self.run.get("model", {}).get("head"), "classes": self.classes,
                "num_classes": len(self.classes), "backbone": backbone, "preprocess": self.pre.to_json(),
                "calibration": {"temperature": self.temperature,
                                "meaning": "probabilities are softmax(logits / temperature)"}, "tta": list(self.tta),
                "metrics": self.run.get("metrics"), "created": self.run.get("created"),
                "limits": {"max_bytes": settings.max_bytes, "max_pixels": settings.max_pixels,
                           "timeout_s": settings.timeout, "max_batch": settings.max_batch,
                           "max_decodes": settings.max_decodes or default_size()}}


class _NoSniff:
    """Pure ASGI (BaseHTTPMiddleware would wrap the body stream): browsers must not guess types."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_with_header if scope["type"] == "http" else send)


def _limited(receive, max_bytes: int):
    """An ASGI ``receive`` that raises once more than ``max_bytes`` of body have arrived."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise _BodyTooLarge()
        return message

    return wrapped


async def read_image_bytes(request, max_bytes: int) -> bytes:
    """The uploaded file (multipart field ``file``) or the raw body, never more than ``max_bytes``."""
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request

    too_large = Refuse(413, f"request body over the {max_bytes}-byte limit")
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise Refuse(400, "Content-Length is not a number")
        if int(length) > max_bytes:
            raise too_large  # refused before a single body byte is read
    limited = Request(request.scope, _limited(request.receive, max_bytes))
    try:
        if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            form = await limited.form(max_files=1, max_fields=4)
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise Refuse(422, "multipart body has no file field named 'file'")
                data = await upload.read()
            finally:
                await form.close()
        else:
            data = await limited.body()
    except _BodyTooLarge:
        raise too_large from None
    except HTTPException as exc:  # starlette's answer to a malformed multipart body
        raise Refuse(400, f"malformed multipart body ({exc.detail})") from None
    except ClientDisconnect:
        raise Refuse(400, "the client went away before the body arrived") from None
    if not data:
        raise Refuse(422, "empty body: send an image as multipart field 'file' or as the raw request body")
    return data


def _parse_topk(value: str | None, num_classes: int) -> int:
    if value is None:
        return min(5, num_classes)
    if not value.strip().isdigit() or int(value) < 1:
        raise Refuse(422, f"topk must be a whole number >= 1, got '{value[:20]}'")
    return min(int(value), num_classes)


async def _before(deadline, work):
    """``work``'s result, or ``asyncio.TimeoutError`` when ``deadline()`` returns first (``work`` is then
    cancelled and unwound: its place in the queue, its decode). ``asyncio.wait_for`` with the deadline
    as something to await, so that a test can decide when time is up instead of racing a clock."""
    task, timer = asyncio.ensure_future(work), asyncio.ensure_future(deadline())
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        finished = task.done()
        if not finished:
            task.cancel()
            await asyncio.wait({task})
    if not finished:
        raise asyncio.TimeoutError
    return task.result()


def create_app(service: Service, settings: ServeSettings | None = None, deadline=None):
    """The FastAPI app around a loaded ``service``. ``deadline()``: awaited beside each request, it
    returns when the request's time is up (default: after ``settings.timeout`` seconds)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    settings = settings or ServeSettings()
    deadline = deadline or (lambda: asyncio.sleep(settings.timeout))
    batcher = DynamicBatcher(service.forward, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue)
    decodes = DecodePool(settings.max_decodes or default_size())

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()
        decodes.close()

    app = FastAPI(title="transferkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.settings, app.state.batcher, app.state.decodes = service, settings, batcher, decodes

    @app.exception_handler(Refuse)
    async def refused(_request, exc: Refuse):
        log.info("refused with %d: %s", exc.status, exc.message)  # the reason only, never the body
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    app.add_middleware(_NoSniff)

    async def answer(request: Request, topk: int, start: float, arrived: asyncio.Event) -> dict:
        data = await read_image_bytes(request, settings.max_bytes)
        arrived.set()
        try:
            array = await decodes.run(service.decode, data, settings.max_pixels)
        except BadImage as bad:
            raise Refuse(422, f"not a usable image: {bad.reason}") from None
        finally:
            del data
        try:
            probs, ranking = await batcher.submit(array)
        except Overloaded:
            raise Refuse(503, "server busy: too many requests waiting; retry shortly", {"Retry-After": "1"}) from None
        return {"predictions": top_predictions(probs, service.classes, topk, ranking), "model": service.model_name,
                "ms": round((time.perf_counter() - start) * 1000, 2)}

    @app.post("/predict")
    async def predict(request: Request):
        start = time.perf_counter()
        topk = _parse_topk(request.query_params.get("topk"), len(service.classes))
        arrived = asyncio.Event()
        try:
            return await _before(deadline, answer(request, topk, start, arrived))
        except asyncio.TimeoutError:
            if not arrived.is_set():  # the client's fault: its body was still on the way
                raise Refuse(408, f"the request body did not arrive within the {settings.timeout:g} s deadline") from None
            raise Refuse(504, f"no answer within the {settings.timeout:g} s deadline; retry, or send a smaller image") from None

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def page():
        # Inline script and style only, nothing fetched from elsewhere: the page works offline.
        policy = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                  "img-src blob: data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'")
        return HTMLResponse(page_html(), headers={"Content-Security-Policy": policy})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": service.model_name, "backend": service.backend,
                "batches": batcher.batches, "predictions": batcher.items}

    @app.get("/metadata")
    async def metadata():
        return service.metadata(settings)

    return app


def app_from_environment():
    """uvicorn's factory for ``--workers N``: each worker process loads the model itself."""
    import json

    config = json.loads(os.environ[ENV_CONFIG])
    threads = config.get("threads") or max(1, (os.cpu_count() or 1) // max(1, config["workers"]))
    torch.set_num_threads(threads)  # N workers share the cores instead of each claiming all (so do the engines)
    with trusting_code(config.get("trust_code", False)):  # the serve command's --trust-code
        service = Service.from_run(config["run_dir"], config["backend"], config.get("precision", "fp32"), threads,
                                   tuple(config.get("tta", ())))
    return create_app(service, ServeSettings(**config["settings"]))


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, backend: str = "torch", workers: int = 1,
          settings: ServeSettings | None = None, precision: str = "fp32", threads: int = 0, tta: tuple = ()) -> None:
    """Load the model (errors surface here, before the port opens), then serve until interrupted."""
    import json

    import uvicorn

    settings = settings or ServeSettings()
    settings = replace(settings, max_decodes=settings.max_decodes or default_size(workers))  # each worker's share
    _check_port(host, port)
    # With several workers each gets its share of the cores; the check below runs with that share too.
    threads = threads or (max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0)
    service = Service.from_run(run_dir, backend, precision, threads, tta)
    if service.engine:
        print(service.engine, flush=True)
    common = dict(host=host, port=port, log_level="info", access_log=True, timeout_keep_alive=5,
                  limit_concurrency=settings.max_queue * 4,  # uvicorn answers 503 past this many
                  log_config=_log_config())
    views = f", tta {','.join(tta)} ({len(service.views)} views a request)" if tta else ""
    print(f"serving {service.run_name} ({service.model_name}, {len(service.classes)} classes, backend {service.backend}{views}) "
          f"on http://{host}:{port}/  (POST /predict, GET /metadata, GET /healthz)", flush=True)
    if workers == 1:
        uvicorn.run(create_app(service, settings), **common)
        return
    del service  # the check is done; each worker loads its own copy
    # Each worker converts nothing again (the converted file is cached) but checks its engine itself.
    os.environ[ENV_CONFIG] = json.dumps({"run_dir": str(Path(run_dir).resolve()), "backend": backend,
                                         "precision": precision, "threads": threads, "tta": list(tta),
                                         "trust_code": code_trusted(),
                                         "workers": workers, "settings": asdict(settings)})
    uvicorn.run("transferkit.deploy.serve:app_from_environment", factory=True, workers=workers, **common)


def _check_port(host: str, port: int) -> None:
    """A taken port is a user error (exit 2), found before the model spends seconds loading."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(infos[0][4])
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or --host") from None


def _log_config() -> dict:
    """uvicorn's logging, plus our one-line refusals (reasons only) in the same format."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["transferkit"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def parse_size(text: str) -> int:
    """``10MB``, ``512KB``, ``2MiB``, ``1000000`` -> bytes (KB/MB/GB are powers of 1000, KiB/MiB of 1024)."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "k": 10**3, "m": 10**6, "g": 10**9,
             "kib": 2**10, "mib": 2**20, "gib": 2**30}
    clean = text.strip().lower().replace(" ", "")
    number = clean.rstrip("kmgib")
    try:
        value = float(number) * units[clean[len(number):]]
    except (ValueError, KeyError):
        raise UserError(f"cannot read size '{text}'; write it like 10MB, 512KB or 1048576") from None
    if value < 1:
        raise UserError(f"size '{text}' must be at least 1 byte")
    return int(value)
