"""Load test of the upload service (``stylecloak serve``): N uploads from C concurrent clients over loopback HTTP.

Starts the service (the shipped toy model, a cheap encoder-only method) for each ``--max-queue`` value, or targets
a running one with ``--url``; every request carries its own ``X-Request-ID`` and must come back exactly once: a
200 with a valid PNG of the same size, or a 503 with ``Retry-After`` (queue full). Prints a markdown table.

    python benchmarks/serve_load.py --requests 200 --clients 8 [--size 32] [--max-queue 64,1] [--url URL --token T]

The tests (tests/test_platform_serve.py) use :func:`start_service`, :func:`load_test` and :func:`make_png` too.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
from PIL import Image


def make_png(size: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, path: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None,
            timeout: float = 120) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one HTTP request; a fresh connection each time."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method or ("POST" if body is not None else "GET"), path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def ctrl_c_reaches_child() -> None:
    """Popen's ``preexec_fn``: SIGINT at its default in the child, as in a terminal. A program started in the
    background by a non-interactive shell (``cmd &``, as CI scripts and ``nohup ... &`` do) inherits SIGINT
    *ignored*, and Python then installs no KeyboardInterrupt handler, so a Ctrl-C test would wait for nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_service(args: list[str], timeout: float = 240) -> tuple[subprocess.Popen, str]:
    """``python -m protect_core serve ARGS`` on a free loopback port; returns (process, base URL) once /healthz
    answers 200. Its stderr goes to a temporary file (``proc.stderr_path``); Ctrl-C reaches it (see
    :func:`ctrl_c_reaches_child`)."""
    port = free_port()
    err = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"stylecloak-serve-{port}.err"), "w+b")
    proc = subprocess.Popen([sys.executable, "-m", "protect_core", "serve", "--host", "127.0.0.1", "--port",
                             str(port), *args], stdout=subprocess.PIPE, stderr=err,
                            preexec_fn=ctrl_c_reaches_child)
    proc.stderr_path = err.name
    url, deadline = f"http://127.0.0.1:{port}", time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stylecloak serve exited {proc.returncode}: {open(err.name).read()[-2000:]}")
        try:
            if request(url, "/healthz", timeout=15)[0] == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    stop_service(proc)
    raise RuntimeError(f"stylecloak serve did not answer /healthz within {timeout:g} s")


def stop_service(proc: subprocess.Popen, timeout: float = 60) -> int:
    """Ctrl-C (SIGINT) and wait; the exit status (killed after ``timeout``)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def load_test(url: str, n: int = 200, clients: int = 8, image: bytes | None = None, token: str | None = None,
              query: str = "", timeout: float = 300) -> dict:
    """Send ``n`` uploads from ``clients`` threads; count what came back (see the module docstring)."""
    image = image or make_png()
    size = Image.open(io.BytesIO(image)).size
    todo: queue.Queue = queue.Queue()
    for i in range(n):
        todo.put(f"load-{i:05d}")
    answers: dict[str, list] = {}
    lock = threading.Lock()
    lost, errors = [], []

    def client():
        while True:
            try:
                rid = todo.get_nowait()
            except queue.Empty:
                return
            headers = {"Content-Type": "image/png", "X-Request-ID": rid}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            t0 = time.perf_counter()
            try:
                status, h, body = request(url, "/v1/cloak" + (f"?{query}" if query else ""), image, headers,
                                          timeout=timeout)
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    lost.append(rid)
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            seconds = time.perf_counter() - t0
            ok_png = False
            if status == 200:
                try:
                    ok_png = Image.open(io.BytesIO(body)).size == size and h.get("content-type") == "image/png"
                except Exception:   # noqa: BLE001
                    ok_png = False
            with lock:
                answers.setdefault(h.get("x-request-id", "?"), []).append(
                    {"sent": rid, "status": status, "seconds": seconds, "png": ok_png,
                     "retry_after": h.get("retry-after"), "report": h.get("x-stylecloak-report")})

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    rows = [a for v in answers.values() for a in v]
    ok = [a for a in rows if a["status"] == 200]
    busy = [a for a in rows if a["status"] == 503]
    lat = [a["seconds"] * 1000 for a in ok]
    return {"requests": n, "clients": clients, "answered": len(rows), "ok": len(ok), "busy": len(busy),
            "client_errors": sum(400 <= a["status"] < 500 for a in rows),
            "server_errors": sum(a["status"] >= 500 and a["status"] != 503 for a in rows),
            "lost": len(lost), "lost_errors": errors[:5],
            "duplicated": sum(len(v) - 1 for v in answers.values() if len(v) > 1),
            "mismatched_ids": sum(a["sent"] != k for k, v in answers.items() for a in v),
            "bad_png": sum(not a["png"] for a in ok), "no_report": sum(not a["report"] for a in ok),
            "busy_without_retry_after": sum(not a["retry_after"] for a in busy),
            "seconds": wall, "throughput": len(ok) / wall if wall else 0.0,
            "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "p99_ms": percentile(lat, 99),
            "busy_p50_ms": percentile([a["seconds"] * 1000 for a in busy], 50)}


def metrics_text(url: str, token: str | None = None) -> str:
    return request(url, "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})[2].decode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="a running service (default: start one per --max-queue value)")
    p.add_argument("--token", default=None)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--method", default="pid")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--max-queue", default="64,1", help="comma list: one service start each (default 64,1)")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=1)
    args = p.parse_args()
    image = make_png(args.size)
    print(f"$ python benchmarks/serve_load.py {' '.join(sys.argv[1:])}\n")
    print(f"run {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC on {platform.machine()} "
          f"{platform.system()}, {os.cpu_count()} CPU cores (other jobs may have run alongside); "
          f"Python {platform.python_version()}, ray {_version('ray')}\n")
    print(f"toy model, method {args.method}, {args.steps} steps, eps 8, {args.size}x{args.size} PNG uploads to "
          f"POST /v1/cloak over loopback, one warm-up request first; latency (ms) of the 200s; every request sent "
          f"its own X-Request-ID, and lost / duplicated count the ids that did not come back exactly once\n")
    print("| max queue | replicas | requests | clients | 200 | 503 | 4xx | 5xx | lost | duplicated | wall s | "
          "throughput (200s/s) | p50 ms | p95 ms | p99 ms | 503 p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for q in (["(running)"] if args.url else args.max_queue.split(",")):
        proc = None
        url = args.url
        if url is None:
            proc, url = start_service(["--method", args.method, "--steps", str(args.steps), "--eps", "8",
                                       "--max-queue", q, "--min-replicas", str(args.min_replicas),
                                       "--max-replicas", str(args.max_replicas), "--num-cpus",
                                       str(max(os.cpu_count() or 1, args.max_replicas))])
        try:
            request(url, "/v1/cloak", image, {"Content-Type": "image/png", **(
                {"Authorization": f"Bearer {args.token}"} if args.token else {})})   # warm-up, not counted
            r = load_test(url, args.requests, args.clients, image, args.token)
        finally:
            if proc is not None:
                stop_service(proc)
        print(f"| {q} | {args.min_replicas}..{args.max_replicas} | {r['requests']} | {r['clients']} | {r['ok']} | "
              f"{r['busy']} | {r['client_errors']} | {r['server_errors']} | {r['lost']} | {r['duplicated']} | "
              f"{r['seconds']:.1f} | {r['throughput']:.2f} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | "
              f"{_ms(r['p99_ms'])} | {_ms(r['busy_p50_ms'])} |", flush=True)
        if r["lost"] or r["duplicated"] or r["bad_png"] or r["mismatched_ids"] or r["busy_without_retry_after"]:
            keys = ("lost", "lost_errors", "duplicated", "bad_png", "mismatched_ids", "busy_without_retry_after")
            print(f"\nproblems: {json.dumps({k: r[k] for k in keys})}")


def _ms(x: float) -> str:
    return "-" if x != x else f"{x:.0f}"


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:   # noqa: BLE001
        return "?"


if __name__ == "__main__":
    main()
