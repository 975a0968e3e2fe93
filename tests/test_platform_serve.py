"""``stylecloak serve`` (stylecloak_platform.serve) on real Ray Serve, as a user runs it: ``python -m protect_core
serve ...`` in a subprocess on a free loopback port, the shipped toy model, the encoder-only ``pid`` method with two
steps and 32-64 px PNGs. Two services per run of this module (each started once): ``service`` (token, a roomy
queue, 1..2 autoscaled replicas, 1 MiB uploads, 64x64 images, 3 jobs kept) and ``tight`` (one replica, a queue of
one). Each is stopped at the end by a signal, which must leave none of its Ray processes behind.

Fast tests (no Ray started): protect_core never imports Ray; the CLI refuses before Ray starts; the HTTP helpers.
"""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import serve_load as sl  # noqa: E402

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHEAP = ["--method", "pid", "--steps", "2", "--eps", "8", "--num-cpus", "2"]


def png(w=48, h=40, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "protect_core", "serve", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, **(env or {})})


def assert_one_line_error(status, headers, body, code, contains=""):
    assert status == code, (status, body[:300])
    assert headers.get("content-type") == "application/json"
    doc = json.loads(body)
    assert list(doc) == ["error"] and "\n" not in doc["error"] and "Traceback" not in doc["error"], doc
    assert contains.lower() in doc["error"].lower(), doc
    return doc["error"]


# ----------------------------------------------------------------------------------------- fast: no Ray started
def test_protect_core_never_imports_ray():
    code = ("import sys; from protect_core import cli; cli.build_parser(); cli.build_parser(['serve', '--help'][:1]); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'fastapi', 'starlette')); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for path in (ROOT / "protect_core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import ray" not in text and "from ray" not in text and "fastapi" not in text, path


@pytest.mark.parametrize("args, env, says", [
    (["--host", "0.0.0.0"], {}, "without a token"),
    (["--host", "0.0.0.0", "--token", "short"], {}, "at least 8"),
    (["--token", "abcdefgh12", "--no-token"], {}, "contradict"),
    (["--min-replicas", "2", "--max-replicas", "1"], {}, "below --min-replicas"),
    (["--method", "nope"], {}, "unknown cloak method"),
    (["--port", "70000"], {}, "--port"),
])
def test_cli_refuses_before_ray_starts(args, env, says):
    r = cli(*args, env={"STYLECLOAK_SERVE_TOKEN": "", **env})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], r.stderr


def test_http_helpers():
    from stylecloak_platform.serve_http import ApiError, Metrics, engine_status, parse_multipart, parse_params

    data = os.urandom(3000) + b"\r\n--x\r\n\r\n" + os.urandom(50) + b"\r"
    bd = "----b0undary"
    body = (f"--{bd}\r\nContent-Disposition: form-data; name=\"steps\"\r\n\r\n3\r\n--{bd}\r\nContent-Disposition: "
            f"form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + \
        f"\r\n--{bd}--\r\n".encode()
    assert parse_multipart(body, f"multipart/form-data; boundary={bd}") == (data, {"steps": "3"})
    with pytest.raises(ApiError, match="no parts"):
        parse_multipart(b"garbage", "multipart/form-data; boundary=zz")
    config = {"defaults": {"method": "pid", "intensity": "default", "eps": None, "steps": None, "seed": 0,
                           "response": "png"}, "methods": ["glaze", "pid"], "max_steps": 10}
    assert parse_params({"eps": "4", "steps": "3", "seed": "7"}, config) == {
        "method": "pid", "intensity": "default", "eps": 4.0, "steps": 3, "seed": 7, "response": "png"}
    for raw, says in (({"eps": "0"}, "eps"), ({"eps": "nan"}, "finite"), ({"steps": "11"}, "1 to 10"),
                      ({"method": "x"}, "unknown method"), ({"response": "gif"}, "png or json"),
                      ({"intensity": "max"}, "intensity"), ({"colour": "red"}, "unknown parameter")):
        with pytest.raises(ApiError, match=says) as e:
            parse_params(raw, config)
        assert e.value.status == 400
    assert engine_status("cannot use image 'u': the file is not an image (its content ...)") == 415
    assert engine_status("cannot use image 'u': 80x80 pixels (0.0 MP) is over the limit of max_pixels=4096") == 413
    assert engine_status("cannot use image 'u': the file is truncated or damaged (x)") == 400
    m = Metrics()
    m.observe("/v1/cloak", 200, 0.3)
    m.model_seconds.extend([0.2, 0.4])
    text = m.text({"done": 2})
    assert 'stylecloak_requests_total{endpoint="/v1/cloak",code="200"} 1' in text
    assert 'stylecloak_request_seconds_bucket{endpoint="/v1/cloak",le="0.5"} 1' in text
    assert 'stylecloak_jobs{state="done"} 2' in text and 'stylecloak_model_seconds{quantile="0.5"}' in text


# ------------------------------------------------------------------------------------------ slow: real Ray Serve
def descendants(root: int) -> dict[int, str]:
    """pid -> start time of ``root`` and every process below it (from /proc)."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            rest = stat[stat.rindex(")") + 2:].split()
            table[int(d)] = (int(rest[1]), rest[19], rest[0])
    found, grew = {root}, True
    while grew:
        grew = False
        for pid, (ppid, _, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return {p: table[p][1] for p in found if p in table}


def still_running(procs: dict[int, str]) -> list[int]:
    left = []
    for pid, start in procs.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        if rest[19] == start and rest[0] != "Z":
            left.append(pid)
    return left


def stop_and_check(proc, sig) -> tuple[int, str]:
    """Send ``sig``; (exit status, stderr); asserts that no process the service started is left."""
    procs = descendants(proc.pid)
    assert len(procs) > 3, "the service should have started Ray processes"
    proc.send_signal(sig)
    rc = proc.wait(90)
    deadline = time.time() + 20
    while still_running(procs) and time.time() < deadline:
        time.sleep(0.5)
    left = still_running(procs)
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left]
    return rc, Path(proc.stderr_path).read_text()


def _start(args):
    pytest.importorskip("ray.serve")
    pytest.importorskip("fastapi")
    proc, url = sl.start_service(args)
    deadline = time.time() + 60   # /healthz answers a moment before serve.run returns and the ready line is printed
    while "ready in" not in Path(proc.stderr_path).read_text() and time.time() < deadline:
        time.sleep(0.2)
    return proc, url


@pytest.fixture(scope="module")
def service():
    proc, url = _start([*CHEAP, "--token", TOKEN, "--max-queue", "64", "--min-replicas", "1", "--max-replicas", "2",
                        "--max-upload-mb", "1", "--max-pixels", "64x64", "--max-jobs", "3"])
    yield proc, url
    sl.stop_service(proc)


@pytest.fixture(scope="module")
def tight():
    proc, url = _start([*CHEAP, "--max-queue", "1", "--max-replicas", "1"])
    yield proc, url
    sl.stop_service(proc)


def post(url, path, body, headers=None, **kw):
    return sl.request(url, path, body, {"Content-Type": "image/png", **AUTH, **(headers or {})}, **kw)


@pytest.mark.slow
def test_ready_line_health_and_docs(service):
    proc, url = service
    err = Path(proc.stderr_path).read_text()
    ready = [line for line in err.splitlines() if "ready in" in line]
    assert len(ready) == 1 and f"{url}/v1/cloak" in ready[0] and f"{url}/docs" in ready[0], err
    status, _, body = sl.request(url, "/healthz")     # open without the token
    assert status == 200 and json.loads(body)["status"] == "ok" and json.loads(body)["model"]["family"] == "toy"
    status, _, body = sl.request(url, "/openapi.json")
    assert status == 200 and {"/v1/cloak", "/v1/jobs", "/v1/jobs/{job_id}"} <= set(json.loads(body)["paths"])
    status, headers, _ = sl.request(url, "/docs")
    assert status == 200 and headers["content-type"].startswith("text/html")


@pytest.mark.slow
def test_png_round_trip(service):
    _, url = service
    data = png(48, 40)
    status, headers, body = post(url, "/v1/cloak?seed=3", data, {"X-Request-ID": "round-trip-1"})
    assert status == 200 and headers["content-type"] == "image/png", body[:300]
    assert headers["x-request-id"] == "round-trip-1"
    assert headers["x-stylecloak-report"].isascii()
    report = json.loads(headers["x-stylecloak-report"])
    out = pixels(body)
    assert out.shape == (40, 48, 3) and (report["width"], report["height"]) == (48, 40)
    assert 0 < np.abs(out - pixels(data)).max() <= 8 == report["eps_255"]
    assert report["stats"]["psnr"] > 20 and report["method"] == "pid" and report["steps"] == 2
    import hashlib

    assert report["sha256"] == hashlib.sha256(body).hexdigest()
    assert post(url, "/v1/cloak?seed=3", data)[2] == body      # same upload, same seed: same bytes


@pytest.mark.slow
def test_multipart_json_and_jobs(service):
    _, url = service
    data = png(32, 32, seed=1)
    bd = "----stylecloak-test"
    def field(name, value, extra=""):
        return (f"--{bd}\r\nContent-Disposition: form-data; name=\"{name}\"{extra}\r\n\r\n").encode() + value + b"\r\n"

    form = field("response", b"json") + field("steps", b"1") + \
        field("image", data, '; filename="art.png"\r\nContent-Type: image/png') + f"--{bd}--\r\n".encode()
    status, headers, body = post(url, "/v1/cloak", form, {"Content-Type": f"multipart/form-data; boundary={bd}"})
    assert status == 200 and headers["content-type"] == "application/json", body[:300]
    doc = json.loads(body)
    assert doc["report"]["steps"] == 1 and pixels(base64.b64decode(doc["image_base64"])).shape == (32, 32, 3)

    ids = []
    for seed in range(5):   # --max-jobs 3: the first two finished jobs are forgotten
        status, headers, body = post(url, "/v1/jobs", png(32, 32, seed=seed))
        assert status == 202, body
        ids.append(json.loads(body)["job_id"])
        assert headers["location"] == f"/v1/jobs/{ids[-1]}"
        deadline = time.time() + 60
        while json.loads(sl.request(url, f"/v1/jobs/{ids[-1]}", headers=AUTH)[2])["status"] == "pending":
            assert time.time() < deadline
            time.sleep(0.2)
    job = json.loads(sl.request(url, f"/v1/jobs/{ids[-1]}", headers=AUTH)[2])
    assert job["status"] == "done" and job["report"]["stats"]["psnr"] > 20
    status, headers, body = sl.request(url, f"/v1/jobs/{ids[-1]}/image", headers=AUTH)
    assert status == 200 and headers["content-type"] == "image/png" and pixels(body).shape == (32, 32, 3)
    for old in ids[:2]:
        assert_one_line_error(*sl.request(url, f"/v1/jobs/{old}", headers=AUTH), 404, "no job")
    assert sl.request(url, f"/v1/jobs/{ids[2]}", headers=AUTH)[0] == 200
    assert_one_line_error(*sl.request(url, "/v1/jobs/nope/image", headers=AUTH), 404, "no job")
    status, _, body = post(url, "/v1/jobs", b"not an image")     # accepted, then the engine refuses it
    job_id = json.loads(body)["job_id"]
    deadline = time.time() + 60
    while (job := json.loads(sl.request(url, f"/v1/jobs/{job_id}", headers=AUTH)[2]))["status"] == "pending":
        assert time.time() < deadline
        time.sleep(0.2)
    assert job["status"] == "error" and job["http_status"] == 415 and "not an image" in job["error"]
    assert_one_line_error(*sl.request(url, f"/v1/jobs/{job_id}/image", headers=AUTH), 409, "failed")


@pytest.mark.slow
def test_bad_requests_are_one_line_4xx_and_the_service_goes_on(service):
    _, url = service
    data = png(48, 40)
    cases = [
        (post(url, "/v1/cloak", data[: len(data) // 2]), 400, "truncated"),
        (post(url, "/v1/cloak", b"\x00not an image at all" * 10), 415, "not an image"),
        (post(url, "/v1/cloak", data, {"Content-Type": "text/plain"}), 415, "not an image upload"),
        (post(url, "/v1/cloak", b""), 400, "empty"),
        (post(url, "/v1/cloak", png(80, 80)), 413, "max_pixels"),          # --max-pixels 64x64
        (post(url, "/v1/cloak", png(8, 8)), 400, "too small"),
        (post(url, "/v1/cloak", os.urandom(int(1.5 * 2 ** 20))), 413, "1 MiB"),   # --max-upload-mb 1
        (post(url, "/v1/cloak?eps=300", data), 400, "eps"),
        (post(url, "/v1/cloak?steps=0", data), 400, "steps"),
        (post(url, "/v1/cloak?method=nope", data), 400, "unknown method"),
        (post(url, "/v1/cloak?intensity=max", data), 400, "intensity"),
        (post(url, "/v1/cloak?colour=red", data), 400, "unknown parameter"),
        (post(url, "/v1/cloak", b"--x\r\n", {"Content-Type": "multipart/form-data; boundary=y"}), 400, "multipart"),
        (post(url, "/v1/jobs?eps=-1", data), 400, "eps"),
        (sl.request(url, "/v1/cloak", headers=AUTH), 405, "not allowed"),
        (sl.request(url, "/nowhere", headers=AUTH), 404, "not found"),
    ]
    for (status, headers, body), code, says in cases:
        assert_one_line_error(status, headers, body, code, says)
    # a body over the limit sent chunked (no Content-Length) is cut off while reading
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=60)
    conn.putrequest("POST", "/v1/cloak")
    for k, v in {"Content-Type": "image/png", "Transfer-Encoding": "chunked", **AUTH}.items():
        conn.putheader(k, v)
    conn.endheaders()
    try:
        for _ in range(6):
            chunk = os.urandom(2 ** 18)
            conn.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except OSError:
        pass   # the service may answer and close before the rest is sent
    r = conn.getresponse()
    assert_one_line_error(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read(), 413, "1 MiB")
    conn.close()
    status, _, body = post(url, "/v1/cloak", data)
    assert status == 200 and pixels(body).shape == (40, 48, 3)


@pytest.mark.slow
def test_token(service):
    _, url = service
    data = png()
    assert_one_line_error(*sl.request(url, "/v1/cloak", data, {"Content-Type": "image/png"}), 401, "token")
    status, headers, body = post(url, "/v1/cloak", data, {"Authorization": "Bearer wrong-token-123"})
    assert_one_line_error(status, headers, body, 401, "token")
    assert headers.get("www-authenticate") == "Bearer"
    assert sl.request(url, "/metrics")[0] == 401 and sl.request(url, "/v1/jobs/x")[0] == 401
    assert sl.request(url, "/healthz")[0] == 200


@pytest.mark.slow
def test_load_roomy_queue_no_503(service):
    _, url = service
    r = sl.load_test(url, 200, 8, sl.make_png(32), token=TOKEN)
    print(f"\nroomy queue: {r['ok']} x 200, {r['busy']} x 503 in {r['seconds']:.1f} s ({r['throughput']:.1f} req/s); "
          f"latency p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms")
    assert r["answered"] == 200 and r["lost"] == 0 and r["duplicated"] == 0 and r["mismatched_ids"] == 0
    assert r["ok"] == 200 and r["busy"] == 0 and r["bad_png"] == 0 and r["no_report"] == 0
    metrics = sl.metrics_text(url, TOKEN)
    assert "stylecloak_rejected_total 0" in metrics and 'code="401"' in metrics
    assert 'stylecloak_request_seconds_count{endpoint="/v1/cloak"}' in metrics


@pytest.mark.slow
def test_sigterm_stops_cleanly(service):
    proc, _ = service
    rc, err = stop_and_check(proc, signal.SIGTERM)
    assert rc == 143, err
    assert "stopped by SIGTERM" in err.strip().splitlines()[-1], err


@pytest.mark.slow
def test_load_full_queue_gives_503_with_retry_after(tight):
    _, url = tight
    r = sl.load_test(url, 200, 8, sl.make_png(32))
    print(f"\nqueue of 1: {r['ok']} x 200, {r['busy']} x 503 in {r['seconds']:.1f} s; latency of the 200s p50 "
          f"{r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms; 503s {r['busy_p50_ms']:.0f} ms")
    assert r["answered"] == 200 and r["lost"] == 0 and r["duplicated"] == 0 and r["mismatched_ids"] == 0
    assert r["ok"] + r["busy"] == 200 and r["ok"] >= 1 and r["busy"] >= 1 and r["bad_png"] == 0
    assert r["busy_without_retry_after"] == 0
    status, headers, body = sl.request(url, "/v1/cloak", sl.make_png(32), {"Content-Type": "image/png"})
    assert status == 200 and headers["content-type"] == "image/png"      # still serving afterwards
    metrics = sl.metrics_text(url)
    assert f"stylecloak_rejected_total {r['busy']}" in metrics
    assert f'stylecloak_requests_total{{endpoint="/v1/cloak",code="503"}} {r["busy"]}' in metrics


@pytest.mark.slow
def test_sigint_stops_cleanly(tight):
    proc, _ = tight
    rc, err = stop_and_check(proc, signal.SIGINT)
    assert rc == 130, err
    assert err.strip().splitlines()[-1].startswith("stylecloak: interrupted"), err
