"""The Ray Serve application: AdaSFFuse behind HTTP.

    serve run serve/config.yaml        # import_path: adaray.serving.app:build_app
    adaray serve [--config serve/config.yaml]

Two deployments. `FusionAPI` is the FastAPI ingress: it parses and checks each request
(multipart parts, task, sizes, pixel limit) and answers refusals as JSON `{"error": reason}`
with a 4xx/5xx status. Limits come before work: the bearer token (`BearerAuth`), the number of
requests held (503 with Retry-After), the body size (413, from Content-Length and while
reading), image sizes from their headers (413 before decoding) and the time per request (504).
`FusionModels` holds the models: one deployment for every task through Serve model
multiplexing (model id = task, an LRU of `max_models_per_replica` loaded models per replica),
and `@serve.batch` groups concurrent requests so that those of one task and size are fused in
one forward pass. `build_app(args)` builds the application from a `ServeConfig` dict
(`build_application(args, deployments)` also applies deployment options).
"""

import asyncio
import base64
import hmac
import os
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaray import metrics as fusion_metrics
from adaray.config import ConfigError, from_dict, to_dict
from adaray.data.io import encode_png
from adaray.errors import RequestError
from adaray.fusion import fuse_batch
from adaray.serving.checks import check_output, check_pair, check_task, decode_source
from adaray.serving.config import ServeConfig
from adaray.serving.sources import describe_source, load_task_model
from adaray.tracking import ModelRegistry

api = FastAPI(title="adaray fusion", version="1",
              description="Fuse two source images with AdaSFFuse (task-generalized fusion).")


MAX_FORM_FILES = 8  # multipart file parts parsed per request ('a' and 'b' are used)
MAX_FORM_FIELDS = 16  # text parts parsed per request; each at most 1 MiB (Starlette's limit)
OPEN_PATHS = ("/healthz",)  # answered without a token (load balancers' health checks)


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


class BearerAuth:
    """ASGI middleware: when the replica set `api.state.bearer_token`, every path except
    OPEN_PATHS needs `Authorization: Bearer <token>`: 401 with WWW-Authenticate without one,
    403 with another. Tokens are compared in constant time and never logged or echoed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = getattr(scope["app"].state, "bearer_token", None) if "app" in scope else None
        if scope["type"] != "http" or token is None or scope["path"].endswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            response = _error(401, "missing bearer token (send 'Authorization: Bearer <token>')",
                              {"WWW-Authenticate": 'Bearer realm="adaray"'})
        elif not hmac.compare_digest(given.strip().encode(), token.encode()):
            response = _error(403, "invalid bearer token",
                              {"WWW-Authenticate": 'Bearer realm="adaray", error="invalid_token"'})
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


api.add_middleware(BearerAuth)


def limited_receive(receive: Receive, limit: int) -> Receive:
    """`receive` that refuses (413) a body growing past `limit` bytes while it streams in."""
    seen = 0

    async def receive_within_limit() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise RequestError(413, f"request body is larger than the limit of {limit} "
                                        "bytes (max_request_bytes)")
        return message

    return receive_within_limit


def check_content_length(request: Request, limit: int) -> None:
    """413 when the declared Content-Length is above `limit` (400 when it is not a number)."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise RequestError(400, f"invalid Content-Length header {declared[:40]!r}")
    if int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes is larger than the limit of "
                                f"{limit} bytes (max_request_bytes)")


@api.exception_handler(RequestError)
async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    return _error(exc.status, exc.reason, exc.headers)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                         for e in exc.errors())
    return _error(422, problems or "invalid request")


@api.exception_handler(StarletteHTTPException)
async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _limit_threads() -> None:
    """Torch threads = the CPUs Ray gave this replica (OMP_NUM_THREADS), not the host's."""
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)


@serve.deployment(name="FusionModels")
class FusionModels:
    """Loads task models on demand (multiplexed by task) and fuses batched requests."""

    def __init__(self, config: dict[str, Any]) -> None:
        _limit_threads()
        self.config = from_dict(ServeConfig, config)
        self.loaded: dict[str, dict[str, Any]] = {}  # task -> info of the models held here
        self.fuse_group.set_max_batch_size(self.config.max_batch_size)
        self.fuse_group.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        loader = self._load  # a plain function: Serve keeps its LRU on the wrapped object

        async def load(task: str) -> tuple[Any, dict[str, Any]]:
            return await loader(task)

        self.model_for = serve.multiplexed(
            max_num_models_per_replica=self.config.max_models_per_replica)(load)

    async def _load(self, task: str) -> tuple[Any, dict[str, Any]]:
        model, info = await asyncio.to_thread(load_task_model, self.config, task)
        if torch.cuda.is_available():  # a replica given a GPU (ray_actor_options.num_gpus)
            model = model.cuda()
        self.loaded[task] = info
        return _Unloading(model, info, self.loaded, task), info

    async def fuse(self, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        """Fuse one pair with the model of the request's multiplexed task."""
        task = serve.get_multiplexed_model_id()
        try:
            holder, info = await self.model_for(task)
        except RequestError as exc:
            return {"error": exc.reason, "status": exc.status}
        started = time.perf_counter()
        fused, batch_size = await self.fuse_group(holder.model, task, a, b)
        return {"fused": fused, "batch_size": batch_size, "info": info,
                "fuse_ms": (time.perf_counter() - started) * 1000}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def fuse_group(self, models: list[Any], tasks: list[str], a: list[np.ndarray],
                         b: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """One forward pass per (task, size) group of the batch; returns (fused, group size)."""
        groups: dict[tuple[str, tuple[int, int]], list[int]] = defaultdict(list)
        for index, (task, image) in enumerate(zip(tasks, a, strict=True)):
            groups[(task, image.shape[:2])].append(index)
        results: list[Any] = [None] * len(tasks)
        for indices in groups.values():
            model = models[indices[0]]
            fused = await asyncio.to_thread(fuse_batch, model, [(a[i], b[i]) for i in indices])
            for i, image in zip(indices, fused, strict=True):
                results[i] = (image, len(indices))
        return results

    def loaded_models(self) -> dict[str, dict[str, Any]]:
        """Tasks whose models this replica holds, with their source, version and score."""
        return dict(self.loaded)


class _Unloading:
    """A loaded model that forgets its entry in `loaded` when Serve's LRU drops it."""

    def __init__(self, model: Any, info: dict[str, Any], loaded: dict[str, Any],
                 task: str) -> None:
        self.model, self.info, self._loaded, self._task = model, info, loaded, task

    def __del__(self) -> None:
        if self._loaded.get(self._task) is self.info:
            del self._loaded[self._task]


@serve.deployment(name="FusionAPI")
@serve.ingress(api)
class FusionAPI:
    """HTTP: POST /fuse, GET /healthz, GET /models, OpenAPI docs at /docs."""

    def __init__(self, models: DeploymentHandle, config: dict[str, Any]) -> None:
        self.models = models
        self.config = from_dict(ServeConfig, config)
        api.state.bearer_token = self.config.bearer_token()  # read by BearerAuth
        self.held = 0  # /fuse requests this replica holds now (max_queued_requests)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness: the ingress answers; lists the served tasks."""
        return {"status": "ok", "tasks": self.config.tasks}

    @api.get("/models")
    async def models_info(self) -> dict[str, Any]:
        """Per task: the model source served, registered alias, version and score, loaded in a
        replica or not; `instead_of` names the champion alias a shipped model stands in for."""
        loaded = await self.models.loaded_models.remote()
        registry = None
        answer = {}
        for task in self.config.tasks:
            entry: dict[str, Any] = {"source": self.config.model_source(task),
                                     "loaded": task in loaded}
            try:
                if task in loaded:
                    entry.update(loaded[task])
                else:
                    registry = registry or ModelRegistry(self.config.tracking_uri())
                    entry.update(describe_source(self.config, task, registry))
            except Exception as exc:  # the registry being down is an answer, not a 500
                entry["error"] = f"registry unavailable: {exc}"
            answer[task] = entry
        return {"models": answer}

    @api.post("/fuse")
    async def fuse(self, request: Request, task: str | None = None, output: str | None = None,
                   metrics: bool = False) -> Response:
        """Fuse multipart parts `a` and `b` (image files) with the task's model.

        `task`, `output` (png|json) and `metrics` (json only) come from the query or the form.
        At most `max_queued_requests` are held at once (503 with Retry-After beyond), each for
        at most `request_timeout_s` (504), reading at most `max_request_bytes` (413).
        """
        if self.held >= self.config.max_queued_requests:
            raise RequestError(503, f"busy: {self.held} requests are already queued here "
                                    "(max_queued_requests); retry shortly",
                               {"Retry-After": "1"})
        self.held += 1
        try:
            return await asyncio.wait_for(self._fuse(request, task, output, metrics),
                                          self.config.request_timeout_s)
        except TimeoutError:
            raise RequestError(504, f"request not answered within {self.config.request_timeout_s}"
                                    " s (request_timeout_s)") from None
        finally:
            self.held -= 1

    async def _fuse(self, request: Request, task: str | None, output: str | None,
                    metrics: bool) -> Response:
        started = time.perf_counter()
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise RequestError(415, f"expected multipart/form-data with parts 'a' and 'b', got "
                                    f"content type {content_type[:100] or 'none'!r}")
        limit = self.config.max_request_bytes
        check_content_length(request, limit)
        body = Request(request.scope, limited_receive(request.receive, limit))
        try:
            form = await body.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
        except RequestError:
            raise
        except Exception as exc:  # malformed multipart body
            raise RequestError(422, f"cannot parse the multipart body: {exc}") from None
        task = check_task(task or _text(form.get("task")), self.config.tasks)
        output = check_output(output or _text(form.get("output")))
        metrics = metrics or _text(form.get("metrics")) in ("true", "1", "yes")
        images = {}
        for name in ("a", "b"):
            parts = form.getlist(name)
            if not parts:
                raise RequestError(422, f"missing part {name!r} (send two image files, "
                                        "'a' and 'b')")
            if len(parts) > 1:
                raise RequestError(422, f"part {name!r} sent {len(parts)} times (send one file "
                                        "per part)")
            part = parts[0]
            if isinstance(part, str):
                raise RequestError(422, f"part {name!r} must be a file upload, got a text field")
            data = await part.read()
            images[name] = decode_source(data, name, part.filename, self.config.max_pixels)
        check_pair(images["a"], images["b"])
        try:
            result = await self.models.options(multiplexed_model_id=task).fuse.remote(
                images["a"], images["b"])
        except RayActorError as exc:  # the model replica died mid-request; Serve restarts it
            raise RequestError(503, f"model replica unavailable, retry shortly ({exc})") from None
        if "error" in result:
            raise RequestError(result["status"], result["error"])
        fused, info = result["fused"], result["info"]
        png = encode_png(fused, "fused")
        headers = {"x-adaray-task": task, "x-adaray-model-source": info["source"],
                   "x-adaray-model-version": str(info["version"] or ""),
                   "x-adaray-batch-size": str(result["batch_size"]),
                   "x-adaray-fuse-ms": f"{result['fuse_ms']:.1f}",
                   "x-adaray-total-ms": f"{(time.perf_counter() - started) * 1000:.1f}"}
        if output == "png":
            return Response(png, media_type="image/png", headers=headers)
        body: dict[str, Any] = {
            "task": task, "image_png_base64": base64.b64encode(png).decode(),
            "width": int(fused.shape[1]), "height": int(fused.shape[0]),
            "channels": 1 if fused.ndim == 2 else int(fused.shape[2]),
            "model": info, "batch_size": result["batch_size"],
            "fuse_ms": result["fuse_ms"], "total_ms": (time.perf_counter() - started) * 1000}
        if metrics:
            body["metrics"] = fusion_metrics.evaluate_images(fused, images["a"], images["b"])
        return JSONResponse(body, headers=headers)


def build_app(args: dict[str, Any]) -> Any:
    """The application builder of serve/config.yaml (`import_path:
    adaray.serving.app:build_app`):
    `args` is a ServeConfig dict; `serve run` applies the config's `deployments:` itself."""
    return build_application(args)


def build_application(args: dict[str, Any],
                      deployments: dict[str, dict[str, Any]] | None = None) -> Any:
    """The Serve application for `args` (a ServeConfig dict), with Serve deployment options
    given as {deployment name: options} (how `adaray serve` applies the config's)."""
    config = to_dict(from_dict(ServeConfig, dict(args or {})))  # bad config fails at deploy
    options = deployments or {}
    # A replica must accept enough requests at once for its batches to fill.
    model_options = {"max_ongoing_requests": 4 * config["max_batch_size"],
                     **options.get("FusionModels", {})}
    # The API replica must be sent more requests than it holds, or the extra ones would wait
    # in Serve's proxy, unbounded, instead of getting 503 (room left for /healthz and /models).
    api_options = {"max_ongoing_requests": config["max_queued_requests"] + 16,
                   **options.get("FusionAPI", {})}
    if api_options["max_ongoing_requests"] <= config["max_queued_requests"]:
        raise ConfigError(f"deployments FusionAPI.max_ongoing_requests "
                          f"({api_options['max_ongoing_requests']}) must be above "
                          f"args.max_queued_requests ({config['max_queued_requests']}), or "
                          "requests beyond it wait in the proxy instead of getting 503")
    models = FusionModels.options(**model_options)
    ingress = FusionAPI.options(**api_options)
    return ingress.bind(models.bind(config), config)
