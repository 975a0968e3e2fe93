"""The upload service's HTTP pieces that need no Ray: parameters, multipart bodies, the engine's refusals as HTTP
statuses, the settings of one request, and the Prometheus counters (used by :mod:`stylecloak_platform.serve`).
"""
from __future__ import annotations

import bisect
import collections
import email.parser
import email.policy
import json
import math
import statistics

from protect_core.cli_support import values

INTENSITIES = ("low", "default", "high")
PARAMS = ("method", "intensity", "eps", "steps", "seed", "response")
BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ApiError(Exception):
    """A refusal: HTTP ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def engine_status(message: str) -> int:
    """The HTTP status for the engine's one-line refusal of an upload (``work.cloak_bytes``' error)."""
    if "over the limit of max_pixels" in message or "out of memory" in message:
        return 413
    if "is not an image" in message or "files are not supported" in message:
        return 415
    return 400


def parse_params(raw: dict, config: dict) -> dict:
    """Query/form parameters over the service's defaults; ApiError 400 naming the first bad one."""
    unknown = sorted(set(raw) - set(PARAMS))
    if unknown:
        raise ApiError(400, f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMS)}")
    p = dict(config["defaults"])
    checks = {"eps": values.finite_float(0, 255, lo_open=True), "steps": values.int_range(1, config["max_steps"]),
              "seed": values.seed_int}
    for key, text in raw.items():
        if key == "method" and text not in config["methods"]:
            raise ApiError(400, f"unknown method {text!r}; choose from {', '.join(config['methods'])}")
        if key == "intensity" and text not in INTENSITIES:
            raise ApiError(400, f"intensity must be one of {', '.join(INTENSITIES)}, got {text!r}")
        if key == "response" and text not in ("png", "json"):
            raise ApiError(400, f"response must be png or json, got {text!r}")
        try:
            p[key] = checks[key](text) if key in checks else text
        except Exception as e:   # argparse.ArgumentTypeError: one line that says what is allowed
            raise ApiError(400, f"{key}: {e}") from None
    return p


def parse_multipart(body: bytes, content_type: str) -> tuple[bytes, dict]:
    """(image bytes, other fields) of a multipart/form-data body (stdlib parser: no python-multipart needed)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    parts = list(msg.iter_parts()) if msg.is_multipart() else []
    image, fields = None, {}
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "image":
            image = payload
        elif name:
            fields[name] = payload.decode("utf-8", "replace").strip()
    if not parts:
        raise ApiError(400, "malformed multipart/form-data body (no parts; check the boundary)")
    if not image:
        raise ApiError(400, "multipart upload without a non-empty 'image' field (curl: -F image=@art.png)")
    return image, fields


def build_settings(params: dict, config: dict):
    """The engine's CloakSettings for one request, as ``stylecloak cloak`` builds them (protect_core.cloak.cli)."""
    from protect_core.cloak.base import CloakSettings, get_method
    from protect_core.cloak.optimize import validate_settings
    from protect_core.cloak.presets import settings_for

    method = get_method(params["method"])
    base = CloakSettings(method=params["method"], seed=int(params["seed"]))
    eps = params.get("eps")
    settings = settings_for(method, params["intensity"], base, eps=None if eps is None else eps / 255,
                            steps=params.get("steps"))
    settings = settings.resolved(method)
    validate_settings(settings)
    if settings.steps > config["max_steps"]:
        raise ValueError(f"{settings.steps} steps ({params['method']} at intensity {params['intensity']}) is over "
                         f"this service's limit of {config['max_steps']}; pass steps=N or a lower intensity")
    return settings


def report_header(report: dict) -> str:
    return json.dumps(report, separators=(",", ":"), ensure_ascii=True, default=str)


class Metrics:
    """Counters in the gateway's memory, written as Prometheus text."""

    def __init__(self):
        self.requests = collections.Counter()          # (endpoint, code) -> answered
        self.rejected = 0                              # 503: the queue was full
        self.in_flight = 0
        self.hist = collections.defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.sums = collections.Counter()
        self.model_seconds = collections.deque(maxlen=256)

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests[(endpoint, code)] += 1
        self.hist[endpoint][bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[endpoint] += seconds

    def retry_after(self) -> int:
        return min(60, max(1, math.ceil(statistics.median(self.model_seconds)))) if self.model_seconds else 1

    def text(self, jobs: collections.Counter) -> str:
        def family(name, kind, help_, rows):
            return [f"# HELP stylecloak_{name} {help_}", f"# TYPE stylecloak_{name} {kind}", *rows]

        out = family("requests_total", "counter", "HTTP requests answered, by endpoint and status code",
                     [f'stylecloak_requests_total{{endpoint="{e}",code="{c}"}} {n}'
                      for (e, c), n in sorted(self.requests.items())])
        out += family("rejected_total", "counter", "uploads refused with 503: the queue was full",
                      [f"stylecloak_rejected_total {self.rejected}"])
        out += family("in_flight", "gauge", "requests inside the gateway now",
                      [f"stylecloak_in_flight {self.in_flight}"])
        out += family("jobs", "gauge", "async jobs in the store, by state",
                      [f'stylecloak_jobs{{state="{s}"}} {jobs.get(s, 0)}' for s in ("pending", "done", "error")])
        rows = []
        for e, counts in sorted(self.hist.items()):
            cumulative = [sum(counts[:i + 1]) for i in range(len(counts))]
            rows += [f'stylecloak_request_seconds_bucket{{endpoint="{e}",le="{le}"}} {n}'
                     for le, n in zip([*map(str, BUCKETS), "+Inf"], cumulative)]
            rows += [f'stylecloak_request_seconds_sum{{endpoint="{e}"}} {self.sums[e]:.6f}',
                     f'stylecloak_request_seconds_count{{endpoint="{e}"}} {cumulative[-1]}']
        out += family("request_seconds", "histogram", "time to answer, by endpoint", rows)
        ms = list(self.model_seconds)
        q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
        out += family("model_seconds", "summary", "seconds a replica spent per cloak (the last 256)",
                      [f'stylecloak_model_seconds{{quantile="{k / 100:g}"}} {q[k - 1]:.4f}' for k in (50, 95, 99)
                       if q] + [f"stylecloak_model_seconds_count {len(ms)}",
                                f"stylecloak_model_seconds_sum {sum(ms):.6f}"])
        return "\n".join(out) + "\n"


def endpoint_of(path: str) -> str:
    if path.startswith("/v1/jobs/"):
        return "/v1/jobs/{id}/image" if path.endswith("/image") else "/v1/jobs/{id}"
    return path if path in ("/v1/cloak", "/v1/jobs", "/healthz", "/metrics", "/docs", "/openapi.json") else "other"
