"""End-to-end tests in a real ComfyUI (run when COMFYUI_PATH points at a checkout; skipped otherwise).

They install the pack (a symlink in custom_nodes), make an SD1.5-shaped checkpoint with random weights, start
ComfyUI on CPU on a loopback port, queue each example workflow through the HTTP API, and check the outputs and
reports; that the host model is unchanged (a KSampler image made before and after StyleCloak's nodes is
bit-identical); that an interrupt mid-cloak stops within seconds; that the memory modes checkpoint
ComfyUI's own modules; and that a Mimicry Test judged by a CLIP vision model from ComfyUI's own *Load CLIP Vision*
node (random ViT-L/14 weights from tools/make_random_clip_vision.py) says so in its report.
Python for ComfyUI: $COMFYUI_PYTHON, else $COMFYUI_PATH/.venv/bin/python, else this interpreter. Extra ComfyUI
arguments: $COMFYUI_ARGS (e.g. ``--front-end-root DIR`` to try another front end).
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFY = os.environ.get("COMFYUI_PATH")
pytestmark = [pytest.mark.host, pytest.mark.slow,
              pytest.mark.skipif(not COMFY, reason="set COMFYUI_PATH to a ComfyUI checkout to run")]

sys.path.insert(0, str(ROOT / "example_workflows"))
from definitions import CHECKPOINT, CPU_TEST_OVERRIDES, WORKFLOWS, api_format  # noqa: E402

CLIP_VISION = "stylecloak_random_vitl.safetensors"


def _python() -> str:
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    venv = Path(COMFY) / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url, payload=None, timeout=30):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body else {}


class Server:
    def __init__(self, root: Path, port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                      "--disable-auto-launch", *shlex.split(os.environ.get("COMFYUI_ARGS", ""))],
                                     cwd=root, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                _call(f"{self.url}/system_stats", timeout=5)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"ComfyUI exited; see {log}")
                time.sleep(2)
        raise RuntimeError(f"ComfyUI did not start; see {log}")

    def queue(self, graph: dict) -> str:
        reply = _call(f"{self.url}/prompt", {"prompt": graph})
        assert not reply.get("node_errors"), reply
        return reply["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 1800) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = _call(f"{self.url}/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                return hist[prompt_id]
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("status_str") in ("error", "success"):
                return hist[prompt_id]
            time.sleep(1)
        raise TimeoutError(prompt_id)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = Path(COMFY)
    pack = root / "custom_nodes" / "StyleCloak"
    if not pack.exists():
        pack.symlink_to(ROOT, target_is_directory=True)
    ckpt = root / "models" / "checkpoints" / CHECKPOINT
    if not ckpt.exists():
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_random_checkpoint.py"), str(ckpt),
                        "--kind", "sd15", "--dtype", "fp16"], check=True)
    inputs = root / "input"
    (inputs / "artist").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    art = Image.open(ROOT / "examples" / "artwork.png").convert("RGB")
    art.save(inputs / "artwork.png")
    for k in range(3):
        art.rotate(90 * k).save(inputs / "artist" / f"art_{k}.png")
    clip_vision = root / "models" / "clip_vision" / CLIP_VISION
    if not clip_vision.exists():
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_random_clip_vision.py"), str(clip_vision)],
                       check=True)
    srv = Server(root, _free_port(), tmp_path_factory.mktemp("comfy") / "server.log")
    yield srv
    srv.stop()


def _failure(history: dict) -> str:
    """The node error of a failed prompt, traceback tail included."""
    for kind, msg in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{msg.get('node_type')}: {msg.get('exception_message')}\n" + "".join(msg.get("traceback", []))[-3000:]
    return json.dumps(history.get("status"))[:2000]


def _outputs(history: dict) -> dict:
    return history.get("outputs", {})


def _ksampler_graph(seed=1):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a painting", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": seed, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "positive": ["2", 0], "negative": ["2", 0],
                                                   "latent_image": ["3", 0], "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "stylecloak_probe"}},
    }


def _image_bytes(server_root: Path, history: dict, node: str) -> bytes:
    img = _outputs(history)[node]["images"][0]
    return (server_root / "output" / img.get("subfolder", "") / img["filename"]).read_bytes()


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_example_workflow_runs(server, name):
    hist = server.wait(server.queue(api_format(name, CPU_TEST_OVERRIDES[name])))
    assert hist["status"]["status_str"] == "success", _failure(hist)
    saved = [n for n, out in _outputs(hist).items() if out.get("images")]
    assert saved, "the workflow saved or previewed no image"


def test_model_unchanged_after_stylecloak_nodes(server):
    """A KSampler image from the same model and seed is bit-identical before and after a cloak + mimicry test."""
    root = Path(COMFY)
    before = _image_bytes(root, server.wait(server.queue(_ksampler_graph())), "6")
    name = "protect_folder_and_test_mimicry"
    hist = server.wait(server.queue(api_format(name, CPU_TEST_OVERRIDES[name])))
    assert hist["status"]["status_str"] == "success", _failure(hist)
    after = _image_bytes(root, server.wait(server.queue(_ksampler_graph())), "6")
    assert before == after


def test_interrupt_mid_cloak_stops_within_seconds(server):
    graph = api_format("protect_one_image", {"3": {"method": "photoguard", "steps": 5000}})
    prompt_id = server.queue(graph)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until the cloak node is running
        q = _call(f"{server.url}/queue")
        if any(item[1] == prompt_id for item in q.get("queue_running", [])):  # ours, not an earlier prompt
            time.sleep(20)  # checkpoint load + first cloak steps
            break
        time.sleep(1)
    t0 = time.time()
    _call(f"{server.url}/interrupt", {})
    hist = server.wait(prompt_id, timeout=120)
    stopped = time.time() - t0
    assert hist["status"]["status_str"] == "error" or hist["status"].get("completed") is False
    assert any(m[0] == "execution_interrupted" for m in hist["status"].get("messages", [])), hist["status"]
    assert stopped < 30, f"took {stopped:.1f}s to stop"


@pytest.mark.parametrize("method,memory,probe_seed", [("mist", "low", 11), ("aspl", "balanced", 12)])
def test_memory_modes_checkpoint_the_real_model(server, method, memory, probe_seed):
    """The node's ``memory`` input reaches the engine, whose gradient checkpointing recognises ComfyUI's own UNet and
    VAE modules by their layout (memory_checkpoint.py); the model is unchanged afterwards."""
    root = Path(COMFY)
    probe = _ksampler_graph(seed=probe_seed)  # a graph of its own: ComfyUI reports nothing for a cached one
    before = _image_bytes(root, server.wait(server.queue(probe)), "6")
    graph = api_format("protect_one_image", {"3": {"method": method, "steps": 2, "memory": memory}})
    hist = server.wait(server.queue(graph))
    assert hist["status"]["status_str"] == "success", _failure(hist)
    pairs = _outputs(hist).get("3", {}).get("stylecloak_compare", [])
    mem = pairs[0]["stats"]["memory"] if pairs else None
    assert isinstance(mem, dict) and mem["name"] == memory and not mem["fallbacks"], mem
    assert mem["checkpointed_modules"] > 0, "no ComfyUI module was checkpointed"
    after = _image_bytes(root, server.wait(server.queue(probe)), "6")
    assert before == after


def test_mimicry_test_judged_by_comfyui_clip_vision(server):
    """The optional ``clip_vision`` input takes the CLIP_VISION of ComfyUI's own loader; the report names that judge
    and its embedding width (768 for ViT-L/14), and the scores are finite."""
    name = "protect_folder_and_test_mimicry"
    graph = api_format(name, CPU_TEST_OVERRIDES[name])
    graph["90"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP_VISION}}
    graph["8"]["inputs"]["clip_vision"] = ["90", 0]
    hist = server.wait(server.queue(graph))
    assert hist["status"]["status_str"] == "success", _failure(hist)
    (report,) = _outputs(hist)["8"]["stylecloak_mimicry"]
    judge = report["style_embedding"]
    assert judge["judge"] == "clip_vision" and "CLIP_VISION" in judge["source"], judge
    assert judge["dimensions"] == 768, judge
    sims = [c["style_similarity"]["mean"] for c in report["conditions"].values()]
    assert sims and all(isinstance(v, float) and -1.0 <= v <= 1.0 for v in sims), report["conditions"]
