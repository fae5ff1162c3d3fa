"""The Ray Serve application: AdaSFFuse behind HTTP.

    serve run serve/config.yaml        # import_path: adaray.serving.app:build_app
    adaray serve [--config serve/config.yaml]

Two deployments. `FusionAPI` is the FastAPI ingress: it parses and checks each request
(multipart parts, task, sizes, pixel limit) and answers refusals as JSON `{"error": reason}`
with a 4xx/503 status. `FusionModels` holds the models: one deployment for every task through
Serve model multiplexing (model id = task, an LRU of `max_models_per_replica` loaded models per
replica), and `@serve.batch` groups concurrent requests so that those of one task and size are
fused in one forward pass. `build_app(args)` builds the application from a `ServeConfig` dict
(`build_application(args, deployments)` also applies deployment options).
"""

import asyncio
import base64
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

from adaray import metrics as fusion_metrics
from adaray.config import from_dict, to_dict
from adaray.data.io import encode_png
from adaray.errors import RequestError
from adaray.fusion import fuse_batch
from adaray.serving.checks import check_output, check_pair, check_task, decode_source
from adaray.serving.config import ServeConfig
from adaray.serving.sources import describe_source, load_task_model
from adaray.tracking import ModelRegistry

api = FastAPI(title="adaray fusion", version="1",
              description="Fuse two source images with AdaSFFuse (task-generalized fusion).")


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


@api.exception_handler(RequestError)
async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    return _error(exc.status, exc.reason)


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
        """
        started = time.perf_counter()
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise RequestError(415, f"expected multipart/form-data with parts 'a' and 'b', got "
                                    f"content type {content_type or 'none'!r}")
        try:
            form = await request.form()
        except Exception as exc:  # malformed multipart body
            raise RequestError(422, f"cannot parse the multipart body: {exc}") from None
        task = check_task(task or _text(form.get("task")), self.config.tasks)
        output = check_output(output or _text(form.get("output")))
        metrics = metrics or _text(form.get("metrics")) in ("true", "1", "yes")
        images = {}
        for name in ("a", "b"):
            part = form.get(name)
            if part is None:
                raise RequestError(422, f"missing part {name!r} (send two image files, "
                                        "'a' and 'b')")
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
    models = FusionModels.options(**model_options)
    ingress = FusionAPI.options(**options.get("FusionAPI", {}))
    return ingress.bind(models.bind(config), config)
