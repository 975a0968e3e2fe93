"""``stylecloak serve``: run the upload service (:mod:`stylecloak_platform.serve`) until Ctrl-C or SIGTERM.

Without ``--ray-address`` a local Ray is started (``--num-cpus``, no dashboard) and shut down at the end; with one,
the application is deployed on that cluster and deleted from it at the end (Serve itself stays up there). Every
value is checked before Ray starts (``check``); the replicas load the model, not this process (``needs_host``).
The service listens on 127.0.0.1 unless ``--host`` says otherwise; any other address needs ``--token`` (or
``STYLECLOAK_SERVE_TOKEN``), or an explicit ``--no-token``.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from protect_core.cli_support.values import finite_float, int_range, positive_int
from protect_core.errors import StyleCloakError

TOKEN_ENV = "STYLECLOAK_SERVE_TOKEN"


def add_arguments(parser) -> None:
    g = parser.add_argument_group("service")
    g.add_argument("--ray-address", default=None, metavar="auto|ADDR", help="deploy on this Ray cluster (auto: the "
                   "one this machine is part of); default: start a local Ray for the service and stop it at the end")
    g.add_argument("--num-cpus", type=finite_float(0, lo_open=True), default=None,
                   help=f"CPUs the local Ray may use (default: all, {os.cpu_count()})")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other needs "
                   "--token or --no-token)")
    g.add_argument("--port", type=int_range(1, 65535), default=8000, help="port (default 8000)")
    g.add_argument("--token", default=None, help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV})")
    g.add_argument("--no-token", action="store_true", help="serve a non-loopback address without a token (anyone "
                   "who can reach it can use the service)")
    c = parser.add_argument_group("cloak defaults (each request may override method, intensity, eps, steps, seed)")
    c.add_argument("--method", default="glaze", help="cloak method (stylecloak cloak --list-methods; default glaze)")
    c.add_argument("--intensity", default="default", choices=["low", "default", "high"])
    c.add_argument("--eps", type=finite_float(0, 255, lo_open=True), default=None, help="L-inf budget in 0..255")
    c.add_argument("--steps", type=positive_int, default=None, help="optimisation steps (default: the method's)")
    c.add_argument("--max-steps", type=positive_int, default=1500,
                   help="most steps a request may ask for, after the intensity preset (default 1500)")
    c.add_argument("--memory", default="auto", choices=["auto", "fast", "balanced", "low"])
    from protect_core.cli import add_max_pixels

    add_max_pixels(parser)
    s = parser.add_argument_group("scale and limits")
    s.add_argument("--min-replicas", type=positive_int, default=1, help="model replicas kept running (default 1)")
    s.add_argument("--max-replicas", type=positive_int, default=1,
                   help="most model replicas the autoscaler may start under load (default 1)")
    s.add_argument("--target-ongoing", type=finite_float(0, lo_open=True), default=1.0,
                   help="autoscaling target: requests running or queued per replica (default 1)")
    s.add_argument("--cpus-per-replica", type=finite_float(0, lo_open=True), default=1.0, help="default 1")
    s.add_argument("--gpus-per-replica", type=finite_float(0), default=0.0, help="default 0 (use with --device cuda)")
    s.add_argument("--max-queue", type=positive_int, default=16, help="uploads that may wait for a replica; past "
                   "that a request gets 503 with Retry-After (default 16)")
    s.add_argument("--max-upload-mb", type=finite_float(0, lo_open=True), default=32.0,
                   help="largest request body in MiB (default 32); larger ones get 413")
    s.add_argument("--max-jobs", type=positive_int, default=64,
                   help="finished async jobs kept for fetching; older ones are forgotten (default 64)")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://[{shown}]:{port}" if ":" in shown and not shown.startswith("[") else f"http://{shown}:{port}"


def check(args) -> None:
    """Everything before Ray starts: token policy, port, scale, method and settings. Leaves ``args._config``."""
    args.token = args.token if args.token is not None else (os.environ.get(TOKEN_ENV) or None)
    if args.token is not None and args.no_token:
        raise StyleCloakError("--token and --no-token contradict each other; pass one")
    if args.token is not None and (len(args.token) < 8 or not args.token.isascii() or not args.token.isprintable()
                                   or " " in args.token):
        raise StyleCloakError("--token must be at least 8 printable ASCII characters without spaces")
    if not is_loopback(args.host) and args.token is None and not args.no_token:
        raise StyleCloakError(f"refusing to serve {args.host} without a token: anyone who can reach it could use the "
                              f"service; pass --token TOKEN (or set {TOKEN_ENV}), or --no-token to do it anyway")
    if args.max_replicas < args.min_replicas:
        raise StyleCloakError(f"--max-replicas {args.max_replicas} is below --min-replicas {args.min_replicas}")
    if args.gpus_per_replica > 0 and args.device == "cpu":
        raise StyleCloakError("--gpus-per-replica needs a GPU device: pass --device cuda")
    if args.ray_address is None:
        from protect_core.cli_support.values import check_device

        check_device(args.device)
        _check_model(args.model)
        cpus = args.num_cpus or os.cpu_count() or 1
        if args.max_replicas * args.cpus_per_replica > cpus:
            raise StyleCloakError(f"--max-replicas {args.max_replicas} x --cpus-per-replica {args.cpus_per_replica:g} "
                                  f"needs {args.max_replicas * args.cpus_per_replica:g} CPUs but the local Ray has "
                                  f"{cpus:g} (--num-cpus); lower one of them")
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        raise StyleCloakError('stylecloak serve needs Ray Serve: pip install "stylecloak[ray]"') from None
    from protect_core.cloak.base import available_methods

    from .serve_http import build_settings

    methods = sorted(available_methods())
    if args.method not in methods:
        raise StyleCloakError(f"unknown cloak method {args.method!r}; choose from {', '.join(methods)}")
    args._config = service_config(args, methods)
    try:
        build_settings(args._config["defaults"], args._config)
    except ValueError as e:
        raise StyleCloakError(f"the default settings cannot work: {e}") from None
    if args.ray_address is None:
        _check_port(args.host, args.port)


def _check_model(model: str | None) -> None:
    """A --model that is neither a shipped name nor an existing path (on a cluster it must exist on the replicas'
    nodes, so this is checked only for a local Ray); its loading errors come from the replicas."""
    if model is None or Path(model).expanduser().exists():
        return
    from protect_core.backends.loading import spec_options
    from protect_core.configs import KINDS
    from protect_core.tiny_models import FLAVOURS
    from protect_core.worlds import world_names

    if model not in {*world_names(), *FLAVOURS, *(f"{k}-random" for k in KINDS)}:
        raise StyleCloakError(f"--model {model}: no such model file or folder (expected {spec_options()})")


def _check_port(host: str, port: int) -> None:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.strip("[]"), port))
    except OSError as e:
        raise StyleCloakError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port or "
                              "--host") from None


def service_config(args, methods: list[str]) -> dict:
    """The plain dict both deployments get (no argparse objects: it travels to the replicas)."""
    model = args.model
    if model and Path(model).exists():
        model = str(Path(model).resolve())   # replicas do not share this process's working directory
    model_kw = {k: v for k, v in (("tokenizer", args.tokenizer), ("prediction_type", args.prediction_type),
                                  ("config", args.model_config)) if v}
    if args.tokenizer and Path(args.tokenizer).exists():
        model_kw["tokenizer"] = str(Path(args.tokenizer).resolve())
    return {"model": model, "device": args.device, "dtype": args.dtype,
            "model_kw": {**model_kw, "allow_pickle": args.allow_pickle},
            "defaults": {"method": args.method, "intensity": args.intensity, "eps": args.eps, "steps": args.steps,
                         "seed": args.seed, "response": "png"},
            "methods": methods, "max_steps": args.max_steps, "max_pixels": args.max_pixels, "memory": args.memory,
            "max_upload_bytes": int(args.max_upload_mb * 2 ** 20), "max_jobs": args.max_jobs,
            "max_queue": args.max_queue, "capacity": args.max_replicas + args.max_queue,
            "min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
            "target_ongoing": args.target_ongoing, "cpus_per_replica": args.cpus_per_replica,
            "gpus_per_replica": args.gpus_per_replica, "token": args.token}


def needs_host(args) -> bool:
    return False   # each replica loads the model


def run(args, host) -> dict:
    import ray
    from ray import serve

    from . import serve as service

    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    local = args.ray_address is None
    t0 = time.time()
    # ray.init installs its own SIGTERM handler (and the core worker a fatal-signal one that ends the process without
    # cleanup): put back the command line's, so SIGTERM/SIGHUP stop Serve and Ray as Ctrl-C does
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig}
    if local:   # address="local": a new private Ray, never a cluster someone else started with `ray start`
        ray.init(address="local", num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(address=args.ray_address, log_to_driver=False, logging_level=logging.WARNING)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    try:
        quiet = {"log_level": "WARNING", "enable_access_log": False}
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config=quiet)
        try:
            serve.run(service.build_app(args._config), name=service.APP_NAME, route_prefix="/", blocking=False,
                      logging_config=quiet)
        except RuntimeError as e:   # e.g. the replicas could not load the model: say why, in one line
            raise StyleCloakError(f"the service could not start: {_deploy_error(serve, service.APP_NAME) or e}") \
                from None
        url = url_of(args.host, args.port)
        print(f"stylecloak serve: ready in {time.time() - t0:.0f} s at {url}/v1/cloak (docs: {url}/docs; "
              f"{args.min_replicas}..{args.max_replicas} replica(s), queue {args.max_queue}"
              f"{', token required' if args.token else ''}); Ctrl-C stops it", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    finally:
        _stop(local, serve, ray, service.APP_NAME)


def _deploy_error(serve, app_name: str) -> str:
    """The last line of the first failing deployment's message (a replica's traceback ends with the error)."""
    try:
        app = serve.status().applications.get(app_name)
        messages = [d.message for d in app.deployments.values() if d.message] if app else []
    except Exception:   # noqa: BLE001 - only for a better message
        return ""
    lines = [line.strip() for line in (messages[0] if messages else "").splitlines() if line.strip()]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else ""


#: Seconds a stop waits for Serve's graceful shutdown (replicas finish what they run) before the local Ray is ended
#: anyway: on a loaded machine Serve's own shutdown alone took over 90 s, too long for a Ctrl-C.
GRACE_S = 20.0


def _bounded(fn, seconds: float) -> None:
    """Run ``fn`` for at most ``seconds`` (in a daemon thread; whatever it raises is dropped: this is a stop)."""
    def quietly():
        try:
            fn()
        except BaseException:   # noqa: BLE001 - the stop goes on regardless
            pass
    worker = threading.Thread(target=quietly, name="stylecloak-serve-stop", daemon=True)
    worker.start()
    worker.join(seconds)


def _stop(local: bool, serve, ray, app_name: str) -> None:
    """Delete the application (a cluster given with --ray-address keeps Serve) or stop Serve and the local Ray;
    a local Serve gets :data:`GRACE_S` to finish, then the local Ray (every replica with it) is ended."""
    try:
        if local:
            _bounded(serve.shutdown, GRACE_S)
        else:   # a cluster's Serve outlives this command: wait until the application is really gone
            serve.delete(app_name)
    finally:
        ray.shutdown()
