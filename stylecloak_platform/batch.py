"""A whole gallery as one resumable job on Ray: a pool of actors that each load the model once.

:func:`run_batch` (also ``stylecloak batch``) plans the job on the driver: the inputs in key order, cut into
groups of ``batch_size`` consecutive images (the same groups on every run, so every image's bytes are the same
whatever worker ran it and however often the job was interrupted; see :mod:`.work`), minus what the manifest
(:mod:`.manifest`) already records as done for an unchanged input. Groups go to the actors with at most two in
flight per actor (bounded memory on the driver); each result's outputs are written atomically by the driver, then
recorded, so only the driver writes and nothing is written twice. A dead actor (killed, out of memory, node lost)
is restarted by Ray and loads the model again; its group is sent again (``retries`` times, then its images are
recorded as errors and the job goes on). Bad images are ``error`` records and never stop the job.
Without ``ray_address`` a local Ray is started on this machine (and shut down at the end), so the same command
runs on a laptop; with ``"auto"`` or ``"ray://HOST:10001"`` / ``"HOST:6379"`` it joins that cluster (the model
path must then be readable on every worker node; the inputs travel as bytes through Ray's object store).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import NAME, Manifest
from .work import settings_record, sha256

log = logging.getLogger(__name__)


class CloakWorker:
    """One Ray actor: the model, loaded once, and :func:`.work.cloak_group` on whatever groups it is sent."""

    def __init__(self, model, device, dtype, load_options, threads, run):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        from protect_core.backends.loading import load_host

        t0 = time.time()
        self.host = load_host(model, device=device, dtype=dtype, **load_options)
        self.load_seconds = time.time() - t0
        self.run = run
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def info(self) -> dict:
        return {"worker": self.name, "pid": os.getpid(), "load_seconds": round(self.load_seconds, 3)}

    def cloak(self, items: list[dict]) -> dict:
        from .work import cloak_group

        r = self.run
        out = cloak_group(self.host, items, r["settings"], batch_size=r["batch_size"], max_pixels=r["max_pixels"],
                          tile=r["tile"], memory=r["memory"])
        return {"worker": self.name, "results": out}


@dataclass
class Job:
    """What the driver plans: the inputs (``(source, key)``), their outputs, and the run's settings."""

    items: list
    outputs: list
    dst: Path
    settings: object
    run: dict
    manifest: Path
    overwrite: bool = False
    retry_errors: bool = True
    written: int = 0    # outputs this run wrote (the other counts come from the manifest at the end)
    finished: list = field(default_factory=list)   # per item: nothing to do (set by plan())


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def plan(job: Job, man: Manifest, on_record) -> list[list[int]]:
    """The groups that still have work (lists of item indices); records what needs no work (skipped inputs)."""
    settings = settings_record(job.settings)
    finished = []
    for k, ((src, key), out) in enumerate(zip(job.items, job.outputs)):
        rec = man.get(key)
        if job.overwrite or rec is None:
            if rec is None and out.exists() and not job.overwrite:
                on_record({"input": key, "output": _rel(out, job.dst), "status": "skipped",
                           "error": None, "note": "the output existed before this job (pass --overwrite to redo)"})
                finished.append(True)
            else:
                finished.append(False)
            continue
        if rec.get("settings") not in (None, settings) and rec.get("status") == "done":
            from protect_core.errors import StyleCloakError

            diff = sorted(k2 for k2 in set(settings) | set(rec["settings"])
                          if settings.get(k2) != rec["settings"].get(k2))
            raise StyleCloakError(f"the manifest '{job.manifest}' records '{key}' done with other settings "
                                  f"({', '.join(diff)} differ); use another output folder, or --overwrite to redo "
                                  "every image with these")
        if rec.get("status") == "error":
            finished.append(not job.retry_errors)
            continue
        if rec.get("status") == "skipped":
            finished.append(True)
            continue
        same = out.exists() and rec.get("output_sha256")
        if same and (rec.get("size"), rec.get("mtime_ns")) != _stat(src):
            same = rec.get("sha256") == sha256(src.read_bytes())   # touched: compare the content
        finished.append(bool(same))
    size = job.run["batch_size"]
    groups = [list(range(i, min(i + size, len(job.items)))) for i in range(0, len(job.items), size)]
    job.finished = finished
    return [g for g in groups if not all(finished[k] for k in g)]


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def run_batch(job: Job, *, ray_address=None, workers: int | None = None, cpus_per_worker: float = 1,
              gpus_per_worker: float = 0, retries: int = 2, load: dict | None = None, quiet: bool = False) -> dict:
    """Run ``job`` on Ray (see the module docstring); returns the summary (counts, seconds, images/s, errors)."""
    import ray
    from protect_core.atomic import atomic_write_bytes

    load = dict(load or {})
    man = Manifest(job.manifest)
    t0 = time.time()

    def record(rec: dict) -> None:
        man.add({"time": round(time.time(), 3), **rec})
        job.written += rec["status"] == "done"

    groups = plan(job, man, record)
    todo = sum(1 for g in groups for k in g if not job.finished[k])
    already = sum(1 for k, f in enumerate(job.finished) if f)
    summary = {"inputs": len(job.items), "already_done": already, "to_do": todo, "manifest": str(job.manifest)}
    if not groups:
        man.compact()
        man.close()
        return {**summary, **_final_counts(job, man), "seconds": round(time.time() - t0, 3)}
    started = False
    if not ray.is_initialized():
        kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if ray_address is None:   # "local": a private Ray, never a cluster someone started with `ray start`
            kw["num_cpus"] = max(1, os.cpu_count() or 1)
        # ray.init installs its own SIGTERM handler: put back the caller's (the CLI's: SIGTERM stops the job cleanly)
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig}
        ray.init(address=ray_address or "local", **kw)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        started = True
    try:
        n = workers or max(1, int(ray.cluster_resources().get("GPU", 0) // gpus_per_worker) if gpus_per_worker
                           else 1)
        Actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=-1,
                           max_task_retries=0)(CloakWorker)
        threads = max(1, int(cpus_per_worker)) if not gpus_per_worker else 0
        actors = [Actor.remote(job.run["model"], job.run["device"], job.run["dtype"], load, threads, job.run)
                  for _ in range(n)]
        summary.update(workers=n, **_drive(ray, actors, groups, job, record, atomic_write_bytes, retries, quiet))
    finally:
        man.compact()
        man.close()
        if started:
            ray.shutdown()
    return {**summary, **_final_counts(job, man), "seconds": round(time.time() - t0, 3),
            "images_per_second": round(job.written / max(1e-9, time.time() - t0), 4)}


def _final_counts(job: Job, man: Manifest) -> dict:
    """``written`` this run; ``failed``: inputs whose record is an error now (this run's or kept from an earlier
    one); ``skipped``: the rest (done before, or outputs that existed): what the exit status is computed from."""
    keys = [key for _, key in job.items]
    failed = sum(1 for k in keys if (man.get(k) or {}).get("status") == "error")
    written = job.written
    errors = [f"{k}: {man.get(k)['error']}" for k in keys if (man.get(k) or {}).get("status") == "error"]
    return {"written": written, "skipped": len(keys) - failed - written, "failed": failed,
            "errors": errors[:20] + ([f"... and {len(errors) - 20} more (see the manifest)"] if len(errors) > 20 else [])}


def _drive(ray, actors, groups, job: Job, record, write, retries: int, quiet: bool) -> dict:
    """Keep every actor busy (two groups in flight each) until every group is recorded."""
    from ray.exceptions import RayError

    total = sum(1 for g in groups for k in g if not job.finished[k])
    bar = _Progress(total, quiet)
    queue = [(g, 0, None) for g in groups]   # (group, attempt, actor to avoid)
    inflight: dict = {}   # ObjectRef -> (group, attempt, actor index, items)
    load = [0] * len(actors)
    resent, busy, t_busy = 0, 0.0, time.perf_counter()
    while queue or inflight:
        while queue and min(load) < 2:
            g, attempt, avoid = queue.pop(0)
            a = min((i for i in range(len(actors)) if i != avoid or len(actors) == 1), key=lambda i: load[i])
            if a == avoid:
                _wait_restarted(ray, actors[a])
            items = [{"key": job.items[k][1], "data": job.items[k][0].read_bytes(), "suffix": job.outputs[k].suffix,
                      "skip": job.finished[k]} for k in g]
            inflight[actors[a].cloak.remote(items)] = (g, attempt, a, items)
            load[a] += 1
        busy += time.perf_counter() - t_busy
        ready, _ = ray.wait(list(inflight), num_returns=1)
        t_busy = time.perf_counter()
        ref = ready[0]
        g, attempt, a, items = inflight.pop(ref)
        load[a] -= 1
        try:
            reply = ray.get(ref)
        except RayError as e:   # the actor died (killed, out of memory, node lost) or the task itself failed
            if attempt < retries:
                resent += 1
                log.warning("a worker failed while cloaking %d image(s) (%s); sending them to another",
                            len(g), type(e).__name__)
                queue.insert(0, (g, attempt + 1, a))
                continue
            reply = {"worker": None, "results": [
                {"key": it["key"], "status": "skipped" if it["skip"] else "error", "data": None,
                 "error": f"the worker failed {attempt + 1} times while cloaking it ({type(e).__name__})"}
                for it in items]}
        for k, it, res in zip(g, items, reply["results"]):
            if it["skip"]:
                continue
            src, key = job.items[k]
            out = job.outputs[k]
            size, mtime = _stat(src)
            rec = {"input": key, "size": size, "mtime_ns": mtime, "sha256": sha256(it["data"]),
                   "output": _rel(out, job.dst), "method": job.settings.method,
                   "settings": settings_record(job.settings), "seed": job.settings.seed,
                   "status": res["status"], "error": res.get("error"), "worker": reply["worker"],
                   "seconds": res.get("seconds")}
            if res["status"] == "done":
                write(out, res["data"])
                st = res.get("stats") or {}
                rec.update(output_sha256=res["sha256"], psnr=st.get("psnr"), ssim=st.get("ssim"),
                           linf_255=st.get("linf_255"), warnings=res.get("warnings") or [])
            record(rec)
            bar.step(res["status"] != "done")
        del ref
    bar.close()
    busy += time.perf_counter() - t_busy
    # the driver's own time (reading inputs, hashing, writing outputs, the manifest): what caps a large cluster
    return {"resent_groups": resent, "driver_seconds": round(busy, 3)}


def _wait_restarted(ray, actor, timeout: float = 600) -> None:
    """Wait until a restarting actor answers again (it reloads the model), so a resent group is not lost to it."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            ray.get(actor.info.remote(), timeout=30)
            return
        except Exception:   # noqa: BLE001 - still restarting (unavailable, dead for now, or slow)
            time.sleep(1)


class _Progress:
    """``images done/total, errors, images/s, ETA`` on stderr (tqdm when available)."""

    def __init__(self, total: int, quiet: bool):
        self.bar = None
        self.failed = 0
        if quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, desc="batch", unit="img", file=sys.stderr, dynamic_ncols=True,
                        mininterval=0.5)

    def step(self, failed: bool) -> None:
        self.failed += int(failed)
        if self.bar is not None:
            if failed:
                self.bar.set_postfix(errors=self.failed, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
