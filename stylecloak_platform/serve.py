"""``stylecloak serve``: the upload service, a Ray Serve application of two deployments.

* :class:`Cloaker`, the model: each replica loads the model once and cloaks one image per call
  (``max_ongoing_requests=1``) with :func:`stylecloak_platform.work.cloak_bytes`. Serve's autoscaler keeps
  ``--min-replicas`` .. ``--max-replicas`` of them, aiming at ``--target-ongoing`` requests (running or queued) per
  replica: up after 10 s above it, down after 5 min below (a replica that cannot load the model fails the start).
  Uploads waiting for a replica are bounded by Serve's ``max_queued_requests`` (``--max-queue``), counted where the
  handle is called (the gateway): past it ``await handle.cloak.remote(...)`` raises
  :class:`~ray.serve.exceptions.BackPressureError` at once (checked on Ray 2.60), and the client gets 503 with a
  ``Retry-After`` header. Serve counts a request as queued until a replica takes it, so a burst can be refused a
  little before the queue is strictly full; nothing is ever queued without bound.
* :class:`Gateway`, the FastAPI ingress (one replica, no CPU reserved): checks the token, the body size (from
  ``Content-Length``, then while reading) and the parameters, calls the model, answers, keeps the bounded store of
  async jobs (in its memory: a restart forgets them) and the Prometheus counters.

=====================  ================================================================================
``POST /v1/cloak``     the image as the raw body (``image/*``, ``application/octet-stream``) or multipart
                       field ``image``; params (query or form): method, intensity, eps (0..255), steps,
                       seed, response=png|json. png: the cloaked PNG, report in ``X-StyleCloak-Report``
``POST /v1/jobs``      same inputs; 202 ``{"job_id", ...}``; ``GET /v1/jobs/{id}`` status and report,
                       ``GET /v1/jobs/{id}/image`` the PNG (409 until done); finished jobs past
                       ``--max-jobs`` are forgotten oldest first
``GET /healthz``       200 + JSON when the model deployment answers (no token needed)
``GET /metrics``       Prometheus text: requests by endpoint and code, 503 rejections, in-flight, latency
=====================  ================================================================================

Every refusal is one line of JSON ``{"error": "..."}``: 400 bad parameters or a damaged image, 401 token missing or
wrong (``Authorization: Bearer TOKEN``; ``/healthz``, ``/docs`` and ``/openapi.json`` are open), 404, 413 body or
image too large, 415 not an image, 503 busy. The engine's own message says what was wrong with an image. Serve's proxy
echoes the client's ``X-Request-ID`` (or one it made up) on every answer. The parts that need no Ray (parameters,
multipart, status mapping, metrics) are in :mod:`stylecloak_platform.serve_http`.
"""
# no "from __future__ import annotations": FastAPI reads the routes' annotations again in the replica, where
# this module's classes arrive by value and string annotations would not resolve (Request became a query field)
import asyncio
import base64
import collections
import hmac
import importlib
import logging
import os
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException

from protect_core import __version__

from .serve_http import ApiError, Metrics, build_settings, endpoint_of, engine_status, one_line, parse_multipart, \
    parse_params, report_header

log = logging.getLogger("stylecloak.serve")
APP_NAME = "stylecloak"
HEALTH_TIMEOUT_S = 10.0
JOB_WAIT_S = 600.0      # an accepted job waits at most this long for a queue slot
_STATE: dict = {}       # the gateway's config and metrics, for the middleware (one gateway per process)


# ------------------------------------------------------------------------------------------------------- model
@serve.deployment(max_ongoing_requests=1)
class Cloaker:
    """One model per replica; one image per call."""

    def __init__(self, config: dict):
        import torch

        from protect_core.backends.loading import load_host

        torch.set_num_threads(max(1, int(config["cpus_per_replica"])))
        self.config = config
        self.host = load_host(config["model"], device=config["device"], dtype=config["dtype"], **config["model_kw"])
        self.info = {"pid": os.getpid(), **self.host.describe()}

    def ping(self) -> dict:
        return self.info

    def cloak(self, data: bytes, params: dict) -> dict:
        """``{"status": "done", "data", "report"}`` or ``{"status": "error", "code", "error"}``; never raises."""
        from protect_core.errors import StyleCloakError

        from stylecloak_platform.work import cloak_bytes

        t0 = time.perf_counter()
        try:
            settings = build_settings(params, self.config)
        except (StyleCloakError, ValueError) as e:
            return {"status": "error", "code": 400, "error": str(e)}
        try:
            r = cloak_bytes(self.host, data, settings, name="upload.png", max_pixels=self.config["max_pixels"],
                            memory=self.config["memory"])
        except Exception as e:   # noqa: BLE001 - an engine bug must not become a traceback on the wire
            log.exception("cloak failed")
            return {"status": "error", "code": 500, "error": f"internal error: {one_line(e)}"}
        if r["status"] != "done":
            message = r["error"] or "the image could not be cloaked"
            return {"status": "error", "code": engine_status(message), "error": message}
        width, height = int.from_bytes(r["data"][16:20], "big"), int.from_bytes(r["data"][20:24], "big")  # IHDR
        stats = dict(r["stats"] or {})
        if isinstance(stats.get("memory"), dict):
            stats["memory"] = stats["memory"].get("name")
        report = {"method": settings.method, "intensity": params["intensity"], "eps_255": round(settings.eps * 255, 4),
                  "steps": settings.steps, "seed": settings.seed, "width": width, "height": height,
                  "sha256": r["sha256"], "stats": stats, "warnings": r["warnings"],
                  "seconds": round(time.perf_counter() - t0, 3)}
        return {"status": "done", "data": r["data"], "report": report}


# ------------------------------------------------------------------------------------------------------ gateway
app = FastAPI(title="StyleCloak upload service", version=__version__,
              description="Cloak artwork against style mimicry: upload an image, get the cloaked PNG and its report.")
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_QUERY = (("method", "string", "cloak method"), ("intensity", "string", "low, default or high"),
          ("eps", "number", "L-inf budget in 0..255"), ("steps", "integer", ">= 1"), ("seed", "integer", "random seed"),
          ("response", "string", "png (default: the PNG, report in X-StyleCloak-Report) or json"))
_FORM = {"schema": {"type": "object", "properties": {"image": _BINARY["schema"]}, "required": ["image"]}}
_INPUT_DOC = {   # the routes read the request themselves (raw or multipart body): describe it for /docs
    "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d}
                   for n, t, d in _QUERY],
    "requestBody": {"required": True, "content": {"image/png": _BINARY, "application/octet-stream": _BINARY,
                                                  "multipart/form-data": _FORM}}}
_PNG_DOC = {200: {"content": {"image/png": {}}, "description": "the cloaked PNG"}}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@app.exception_handler(ApiError)
async def _api_error(request, exc: ApiError):
    return _error(exc.status, exc.message, exc.headers)


@app.exception_handler(HTTPException)
async def _http_error(request, exc: HTTPException):
    return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request, exc: RequestValidationError):
    return _error(400, "bad request: " + "; ".join(str(e.get("msg")) for e in exc.errors())[:300])


@app.middleware("http")
async def _frame(request: Request, call_next):
    """Token, metrics and the last line of defence (a one-line 500, never a traceback). Serve's proxy echoes the
    client's ``X-Request-ID`` (or one it made up) on every answer."""
    t0, metrics, config = time.perf_counter(), _STATE["metrics"], _STATE["config"]
    endpoint = endpoint_of(request.url.path)
    metrics.in_flight += 1
    try:
        token = config.get("token")
        if token and endpoint not in ("/healthz", "/docs", "/openapi.json", "other") and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(), f"Bearer {token}".encode()):
            response = _error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'",
                              {"WWW-Authenticate": "Bearer"})
        else:
            response = await call_next(request)
    except Exception as e:   # noqa: BLE001
        log.exception("request failed")
        response = _error(500, f"internal error: {one_line(e)}")
    finally:
        metrics.in_flight -= 1
    metrics.observe(endpoint, response.status_code, time.perf_counter() - t0)
    return response


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Gateway:
    """The HTTP front door (see the module docstring)."""

    def __init__(self, cloaker, config: dict):
        self.model, self.config = cloaker, config
        self.metrics = Metrics()
        self.jobs: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self.tasks: set = set()
        # this class travels to the replica by value (with copies of its globals); the middleware is imported there
        importlib.import_module(__name__)._STATE.update(config=config, metrics=self.metrics)

    async def _read(self, request: Request) -> tuple[bytes, dict]:
        limit = self.config["max_upload_bytes"]
        too_big = ApiError(413, f"upload over the limit of {limit / 2**20:g} MiB (--max-upload-mb); downscale it "
                                "or ask for a higher limit")
        length = request.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ApiError(400, f"bad Content-Length {length!r}")
            if int(length) > limit:
                raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        body = b"".join(chunks)
        ctype = request.headers.get("content-type", "application/octet-stream")
        kind = ctype.split(";")[0].strip().lower()
        raw = dict(request.query_params)
        if kind == "multipart/form-data":
            body, fields = parse_multipart(body, ctype)
            raw.update(fields)
        elif not (kind.startswith("image/") or kind == "application/octet-stream"):
            raise ApiError(415, f"Content-Type {kind!r} is not an image upload: send the image as the raw body "
                                "(Content-Type image/png, application/octet-stream) or as multipart field 'image' "
                                "(curl: --data-binary @art.png -H 'Content-Type: image/png', or -F image=@art.png)")
        if not body:
            raise ApiError(400, "empty upload: send the image as the request body")
        return body, parse_params(raw, self.config)

    def _busy(self) -> ApiError:
        self.metrics.rejected += 1
        wait = self.metrics.retry_after()
        return ApiError(503, f"busy: the queue of {self.config['max_queue']} waiting uploads is full; retry in "
                             f"{wait} s", {"Retry-After": str(wait)})

    async def _cloak(self, data: bytes, params: dict) -> dict:
        """The model's result dict; BackPressureError (queue full) passes through."""
        try:
            result = await self.model.cloak.remote(data, params)
        except BackPressureError:
            raise
        except Exception as e:   # noqa: BLE001 - a replica died, the deployment is unavailable, ...
            log.exception("model call failed")
            return {"status": "error", "code": 503, "error": f"the model deployment failed: {one_line(e)}"}
        if result["status"] == "done":
            self.metrics.model_seconds.append(result["report"]["seconds"])
        return result

    @app.post("/v1/cloak", openapi_extra=_INPUT_DOC, response_class=Response,
              responses=_PNG_DOC)
    async def cloak(self, request: Request):
        """Cloak one image and answer with it (the report in ``X-StyleCloak-Report``) or with JSON."""
        data, params = await self._read(request)
        try:
            result = await self._cloak(data, params)
        except BackPressureError:
            raise self._busy() from None
        if result["status"] != "done":
            raise ApiError(result["code"], result["error"])
        if params["response"] == "json":
            return JSONResponse({"report": result["report"],
                                 "image_base64": base64.b64encode(result["data"]).decode("ascii")})
        return Response(result["data"], media_type="image/png",
                        headers={"X-StyleCloak-Report": report_header(result["report"])})

    @app.post("/v1/jobs", status_code=202, openapi_extra=_INPUT_DOC)
    async def submit(self, request: Request):
        """Queue one image; poll ``/v1/jobs/{id}``, then fetch ``/v1/jobs/{id}/image``."""
        data, params = await self._read(request)
        if sum(j["status"] == "pending" for j in self.jobs.values()) >= self.config["capacity"]:
            raise self._busy()
        job_id = uuid.uuid4().hex
        self.jobs[job_id] = {"job_id": job_id, "status": "pending", "created": time.time()}
        task = asyncio.get_running_loop().create_task(self._run_job(job_id, data, params))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        url = f"/v1/jobs/{job_id}"
        return JSONResponse({"job_id": job_id, "status": "pending", "status_url": url, "image_url": url + "/image"},
                            status_code=202, headers={"Location": url})

    async def _run_job(self, job_id: str, data: bytes, params: dict) -> None:
        job, deadline = self.jobs[job_id], time.monotonic() + JOB_WAIT_S
        while True:   # an accepted job waits for a queue slot (pending jobs are bounded by the capacity)
            try:
                result = await self._cloak(data, params)
                break
            except BackPressureError:
                if time.monotonic() > deadline:
                    result = {"status": "error", "code": 503, "error": f"no queue slot within {JOB_WAIT_S:g} s"}
                    break
                await asyncio.sleep(0.5)
        job.update(finished=time.time(), status=result["status"])
        if result["status"] == "done":
            job.update(report=result["report"], data=result["data"])
        else:
            job.update(error=result["error"], http_status=result["code"])
        finished = [k for k, j in self.jobs.items() if j["status"] != "pending"]
        for k in finished[:max(0, len(finished) - self.config["max_jobs"])]:
            del self.jobs[k]

    def _job(self, job_id: str) -> dict:
        if job_id not in self.jobs:
            raise ApiError(404, f"no job {job_id!r} (unknown, or finished long enough ago to be forgotten)")
        return self.jobs[job_id]

    @app.get("/v1/jobs/{job_id}")
    async def job(self, job_id: str):
        """A job's status: pending, done (with its report) or error (with the message and its HTTP status)."""
        return {k: v for k, v in self._job(job_id).items() if k != "data"}

    @app.get("/v1/jobs/{job_id}/image", response_class=Response, responses=_PNG_DOC)
    async def job_image(self, job_id: str):
        job = self._job(job_id)
        if job["status"] != "done":
            what = f"failed: {job['error']}" if job["status"] == "error" else "still pending; poll /v1/jobs/" + job_id
            raise ApiError(409, f"job {job_id} {what}")
        return Response(job["data"], media_type="image/png",
                        headers={"X-StyleCloak-Report": report_header(job["report"])})

    @app.get("/healthz")
    async def healthz(self):
        """200 with the model's description when a model replica answers; 503 otherwise."""
        try:
            info = await asyncio.wait_for(self._ping(), timeout=HEALTH_TIMEOUT_S)
        except BackPressureError:
            return {"status": "busy", "version": __version__}
        except asyncio.TimeoutError:
            raise ApiError(503, f"the model deployment did not answer within {HEALTH_TIMEOUT_S:g} s") from None
        except Exception as e:   # noqa: BLE001
            raise ApiError(503, f"the model deployment is not available: {one_line(e)}") from None
        return {"status": "ok", "version": __version__, "model": info}

    async def _ping(self):
        return await self.model.ping.remote()

    @app.get("/metrics", response_class=Response)
    async def metrics_text(self):
        jobs = collections.Counter(j["status"] for j in self.jobs.values())
        return Response(self.metrics.text(jobs), media_type="text/plain; version=0.0.4")


def build_app(config: dict):
    """The bound application for ``serve.run`` (``config``: see ``stylecloak_platform.serve_cli.service_config``)."""
    scale = ({"num_replicas": config["min_replicas"]} if config["min_replicas"] == config["max_replicas"] else
             {"autoscaling_config": {"min_replicas": config["min_replicas"], "max_replicas": config["max_replicas"],
                                     "initial_replicas": config["min_replicas"], "upscale_delay_s": 10,
                                     "downscale_delay_s": 300, "target_ongoing_requests": config["target_ongoing"]}})
    cloaker = Cloaker.options(max_ongoing_requests=1, max_queued_requests=config["max_queue"],
                              max_constructor_retry_count=2,   # a model that cannot load fails the start quickly
                              ray_actor_options={"num_cpus": config["cpus_per_replica"],
                                                 "num_gpus": config["gpus_per_replica"]}, **scale).bind(config)
    return Gateway.options(max_ongoing_requests=config["capacity"] + 64, max_queued_requests=256,
                           backpressure_config={"retry_after_s": 1}).bind(cloaker, config)
