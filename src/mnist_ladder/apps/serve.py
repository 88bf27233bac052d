"""`ladder serve`: draw a digit in the browser and see what each step's model thinks.

A local web page: a canvas, the 28x28 image the model sees (the same preprocessing as
`ladder predict`), and the ten probabilities of each chosen model side by side.

Framework: Starlette, served by uvicorn. Starlette is the ASGI toolkit FastAPI is built on,
maintained by the encode team (as is uvicorn), and it brings little else (anyio). Three JSON
endpoints and one static page need neither FastAPI's pydantic layer nor a UI framework: Gradio,
the field's habit, pulls in a large dependency tree (FastAPI, pandas, its own front end) and
has needed several releases to stop fetching fonts and assets from the internet
(gradio-app/gradio#9367, #13463), while this page must work offline. Everything the page needs
is in `static/`, shipped with the package; it makes no request beyond this server.

API:
  GET  /             the page
  GET  /api/models   finished runs with weights, from the stores, and the default choice
  POST /api/predict?model=ID&model=ID   body: the image (PNG from the canvas, or any image
                     Pillow reads, at most 2 MB) -> the 28x28 input and each model's answer
Errors are JSON `{"error": "..."}`: 400 a bad image, 404 an unknown run, 413 too large.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import socket
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from torch import nn

from ..runs.catalog import catalog
from ..runs.experiment import WEIGHTS, ModelFileError, load_model
from ..runs.results import best_run
from ..runs.store import StoreError, Stores
from .predict import (
    NON_FINITE,
    PredictError,
    decode_image,
    mnist_style,
    predict_arrays,
    resolve_run,
    to_gray,
)

STATIC = Path(__file__).with_name("static")
MAX_UPLOAD = 2 * 1024 * 1024  # a 280x280 canvas PNG is a few KB; a photo still fits
# Memory, whatever arrives: at most MAX_IN_FLIGHT requests are read and decoded at once (the
# rest wait, holding only their sockets), each at most MAX_UPLOAD bytes and SERVE_MAX_PIXELS
# pixels, about 100 MB of decoding at the limit (RGBA plus float copies): under 0.5 GB in all.
MAX_IN_FLIGHT = 4
SERVE_MAX_PIXELS = 4_000_000
MAX_MODELS = 12  # models per request: each is a forward pass, some are 6M parameters
SIDE_BY_SIDE = ("step0", "step6", "step13")  # ticked by default beside the best, where present


@dataclass(frozen=True)
class ModelInfo:
    """A finished run with weights, as the page lists it."""

    id: str
    step: str
    seed: int
    protocol: str
    params: int
    test_acc: float | None
    val_acc: float | None
    store: str


def step_order(step: str) -> tuple[int, str]:
    """step2 before step10; a step's variants (step7.wider) right after it."""
    m = re.match(r"step(\d+)", step)
    return (int(m.group(1)) if m else 10**6, step)


def list_models(paths: list[Path]) -> list[ModelInfo]:
    """Every finished run with weights; a run in two stores is listed from the first."""
    found: dict[str, ModelInfo] = {}
    with Stores(paths) as stores:
        for store in stores.stores:
            in_store = store.ids_with_weights()
            for r in store.runs(status="finished"):
                if r.id in found or (r.id not in in_store and not (Path(r.run_dir) / WEIGHTS).is_file()):
                    continue
                last = (store.epochs(r.id) or [{}])[-1]
                found[r.id] = ModelInfo(
                    r.id,
                    r.step,
                    r.seed,
                    r.protocol,
                    r.params,
                    last.get("test_acc"),
                    last.get("val_acc"),
                    str(store.path),
                )
    return sorted(found.values(), key=lambda m: (step_order(m.step), m.protocol, m.seed, m.id))


def best_model(paths: list[Path]) -> str | None:
    """`ladder predict best`'s run (the same function chooses it), if the stores have one."""
    with Stores(paths) as stores:
        found = best_run(stores, list(catalog()))
    return found[0].id if found else None


def default_choice(models: list[ModelInfo], best: str | None) -> list[str]:
    """Ticked when the page opens: the best model, then the most accurate run of each of
    SIDE_BY_SIDE's steps."""
    chosen = [best] if best else []
    for step in SIDE_BY_SIDE:
        runs = [m for m in models if m.step == step]
        if runs:
            chosen.append(max(runs, key=lambda m: (m.test_acc or 0.0, m.val_acc or 0.0)).id)
    return list(dict.fromkeys(chosen)) or [m.id for m in models[:1]]


@lru_cache(maxsize=32)
def cached_model(run_id: str, store: str) -> nn.Module:
    with Stores([Path(store)]) as stores:
        model, _ = load_model(resolve_run(run_id, stores))
    return model


def png_data_url(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray((image * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(stores: list[Path]) -> Starlette:
    """The app over these results stores (earlier ones win where a run is in two)."""
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def page(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def models(request: Request) -> JSONResponse:
        found = await run_in_threadpool(list_models, stores)
        best = await run_in_threadpool(best_model, stores)
        return JSONResponse(
            {"models": [asdict(m) for m in found], "best": best, "default": default_choice(found, best)}
        )

    async def predict(request: Request) -> JSONResponse:
        ids = request.query_params.getlist("model")
        if not ids:
            return error(400, "choose at least one model (?model=RUN_ID)")
        if len(ids) > MAX_MODELS:
            return error(400, f"at most {MAX_MODELS} models at once, got {len(ids)}")
        async with in_flight:  # a bound on the memory of the requests being worked on
            return await predict_one(request, ids)

    async def predict_one(request: Request, ids: list[str]) -> JSONResponse:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_UPLOAD:
            return error(413, f"the image is over the {MAX_UPLOAD // 2**20} MB limit")
        body = bytearray()
        async for chunk in request.stream():  # a body without (or lying in) Content-Length
            body += chunk
            if len(body) > MAX_UPLOAD:
                return error(413, f"the image is over the {MAX_UPLOAD // 2**20} MB limit")
        if not body:
            return error(400, "no image in the request body")
        by_id = {m.id: m for m in await run_in_threadpool(list_models, stores)}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            return error(404, f"no finished run with weights called {unknown[0]!r} in the stores")
        try:
            return JSONResponse(await run_in_threadpool(answer, bytes(body), [by_id[i] for i in ids]))
        except (PredictError, ModelFileError) as e:
            return error(400, str(e))

    async def store_broken(request: Request, exc: Exception) -> JSONResponse:
        return error(500, str(exc))  # a damaged or unreadable store: say which, keep serving

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/models", models),
            Route("/api/predict", predict, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={StoreError: store_broken},
    )


def answer(image: bytes, chosen: list[ModelInfo]) -> dict:
    seen = mnist_style(to_gray(decode_image(io.BytesIO(image), "the upload", SERVE_MAX_PIXELS)))
    out = []
    for m in chosen:
        probs = predict_arrays(cached_model(m.id, m.store), [seen])[0]
        if not torch.isfinite(probs).all():
            raise PredictError(f"model {m.id}: {NON_FINITE}")
        out.append(
            {
                "model": m.id,
                "digit": int(probs.argmax()),
                "probabilities": [round(float(p), 6) for p in probs],
            }
        )
    return {"input": png_data_url(seen), "predictions": out}


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts, so a taken port is one clear error
    (and port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OverflowError as e:  # a port outside 0-65535
        raise OSError(f"cannot listen on {host}:{port} ({e})") from None
    except OSError as e:  # its reason without Python's "(while attempting to bind on ...)"
        reason = (e.strerror or str(e)).split(" (while attempting")[0]
        raise OSError(f"cannot listen on {host}:{port} ({reason})") from None


def make_server(stores: list[Path]) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(create_app(stores), log_level="warning"))
