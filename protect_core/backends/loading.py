"""Turning a user's ``--model`` into a :class:`~protect_core.host.HostModel`, fully offline.

Accepted specs (nothing is ever fetched from a hub):

* ``None`` / ``toy``: the embedded default, the trained toy model shipped in ``protect_core/assets/toy`` (see
  :mod:`protect_core.toy`); ``None`` falls back to ``tiny`` with a warning if those files are missing;
* ``atelier`` (or any name in :mod:`protect_core.worlds`): a shipped measurement world, found through the registry;
* ``tiny`` / ``tiny-v`` / ``tiny-xl``: the seeded (untrained) tiny test models;
* ``sd15-random`` / ``sd2-random`` / ``sd2-v-random`` / ``sdxl-random``: full-size architectures with random weights
  (performance work only, see :mod:`protect_core.random_models`);
* a diffusers pipeline folder (``model_index.json`` inside);
* a single-file ``.safetensors`` checkpoint (SD 1.x, SD 2.x or SDXL in the original ldm layout). The family is read
  from the tensor names; configs come from ``protect_core/configs`` (or from the file's own metadata when StyleCloak
  wrote it). SD 2.x 512-base (epsilon) and 768-v (v-prediction) files cannot be told apart by their tensors: pass
  ``prediction_type=``; otherwise a ``v_pred`` marker tensor, then the file name (``768``/``v``/``vpred`` ->
  v-prediction, ``512``/``base`` -> epsilon) decide, and plain SD 2.x defaults to v-prediction (SD 2.x 768 models
  are the common ones);
* pickle checkpoints (``.ckpt .pt .pth .bin``) only with ``allow_pickle=True``, and then only through
  ``torch.load(weights_only=True)``. A pickle has no metadata: pass ``config=`` unless it is a standard model.

``config=`` (a shipped kind or a diffusers folder) overrides the configs a checkpoint is read with.

Tokenizer: a real checkpoint needs the CLIP BPE vocabulary. It is taken from ``tokenizer=DIR``, else
``$STYLECLOAK_TOKENIZER``, else a ComfyUI checkout (``comfy/sd1_tokenizer``), else the Hugging Face cache; failing all
of these the tiny tokenizer stands in and a warning says prompts will not mean what they should.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import torch

from ..errors import ModelError

DEFAULT_MODEL = "toy"
FALLBACK_MODEL = "tiny"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
log = logging.getLogger("stylecloak.loading")

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _random_specs() -> dict[str, str]:
    from ..configs import KINDS

    return {f"{k}-random": k for k in KINDS}


def _dtype(name: str | torch.dtype | None) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    table = {None: torch.float32, "fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use fp32, fp16 or bf16")
    return table[name]


def _prediction_type(value: str | None) -> str | None:
    table = {None: None, "epsilon": "epsilon", "eps": "epsilon", "v_prediction": "v_prediction", "v": "v_prediction"}
    if value not in table:
        raise ValueError(f"unknown prediction_type {value!r}; use epsilon or v_prediction")
    return table[value]


@contextlib.contextmanager
def quiet_libraries():
    """Silence diffusers/transformers load-time notices (fp32 module hints, torchvision fallbacks) for a while."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    old = dlog.get_verbosity(), tlog.get_verbosity(), dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers\..*")
            yield
    finally:
        dlog.set_verbosity(old[0])
        tlog.set_verbosity(old[1])
        if old[2]:
            dlog.enable_progress_bar()
        if old[3]:
            tlog.enable_progress_bar()


def _default_spec() -> str:
    from ..worlds import get_world

    if get_world(DEFAULT_MODEL).available():
        return DEFAULT_MODEL
    log.warning("the shipped toy model is missing (protect_core/assets/toy); using the untrained %r model",
                FALLBACK_MODEL)
    return FALLBACK_MODEL


def spec_options() -> str:
    from ..tiny_models import FLAVOURS

    from ..worlds import world_names

    names = ", ".join(world_names() + FLAVOURS + tuple(_random_specs()))
    return f"one of {names}, a diffusers folder (with model_index.json), or a .safetensors checkpoint"


def load_host(model: str | None = None, device: str = "cpu", dtype: str | torch.dtype | None = None, **kw):
    """Load ``model`` (see module doc) onto ``device`` and wrap it for the engine.

    Keywords: ``seed`` (tiny/random models), ``tokenizer`` (folder with vocab.json + merges.txt),
    ``prediction_type`` (``epsilon`` / ``v_prediction``, overrides what the files say), ``allow_pickle``, and for
    checkpoints ``config`` (a shipped kind ``sd15``/``sd2``/``sd2-v``/``sdxl`` or a diffusers folder whose configs
    describe the file; default: the file's own metadata, else the shipped config of the detected family).
    """
    from ..tiny_models import FLAVOURS, build_tiny_host

    dt = _dtype(dtype)
    override = _prediction_type(kw.get("prediction_type"))
    spec = str(model) if model is not None else _default_spec()
    with quiet_libraries():
        from ..worlds import get_world, world_names

        if spec in world_names():
            host = get_world(spec).build_host(dtype=dt)
        elif spec in FLAVOURS:
            host = build_tiny_host(spec, seed=kw.get("seed", 0), dtype=dt)
        elif spec in _random_specs():
            from ..random_models import build_random_host

            host = build_random_host(_random_specs()[spec], dtype=dt, device=device, seed=kw.get("seed", 0))
        else:
            host = _load_path(spec, dt, kw)
        if override:
            host.prediction_type = override
        return _to(host, device)


def _load_path(spec: str, dt: torch.dtype, kw: dict):
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError(f"{spec}: no such model file or folder (expected {spec_options()})")
    if path.is_dir():
        return load_diffusers_folder(path, dt)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return load_single_file(path, dt, **_file_options(kw))
    if suffix in PICKLE_SUFFIXES:
        return load_pickle_checkpoint(path, dt, allow_pickle=kw.get("allow_pickle", False), **_file_options(kw))
    raise ModelError(f"{path}: unsupported model file type {path.suffix!r} (expected {spec_options()})")


def _file_options(kw: dict) -> dict:
    return {k: kw.get(k) for k in ("tokenizer", "prediction_type", "config")}


def load_diffusers_folder(path: Path, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    from .diffusers_host import DiffusersHost

    path = Path(path)
    if not (path / "model_index.json").exists():
        hint = " (this is one of its sub-folders; pass the folder above it)" if (path.parent / "model_index.json"
                                                                                 ).exists() else ""
        raise ModelError(f"{path}: not a diffusers pipeline folder (no model_index.json){hint}")
    try:
        with quiet_libraries():
            pipe = DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True,
                                                     use_safetensors=True, safety_checker=None)
    except Exception as e:  # diffusers raises many types; the user needs the path and the reason
        raise ModelError(f"{path}: could not load diffusers pipeline: {e}") from e
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        m = getattr(pipe, name, None)
        if m is not None:
            m.eval().requires_grad_(False)
    return DiffusersHost.from_pipeline(pipe)


# ---- single-file checkpoints ----------------------------------------------------------------------------------
class _Tensors:
    """Names, shapes and lazy reads of a checkpoint's tensors (a safetensors file or an in-memory dict)."""

    def __init__(self, path: Path, handle=None, tensors: dict | None = None):
        self.path, self.handle, self.tensors = path, handle, tensors
        self.keys = set(handle.keys()) if handle is not None else set(tensors)
        self.metadata = (handle.metadata() or {}) if handle is not None else {}

    def shape(self, key: str) -> tuple:
        if self.handle is not None:
            return tuple(self.handle.get_slice(key).get_shape())
        return tuple(self.tensors[key].shape)

    def read(self, key: str) -> torch.Tensor:
        if key not in self.keys:
            raise KeyError(key)
        return self.handle.get_tensor(key) if self.handle is not None else self.tensors[key]


def load_single_file(path: Path, dtype: torch.dtype = torch.float32, tokenizer=None, prediction_type=None,
                     config=None):
    """A host from an ldm-layout ``.safetensors`` checkpoint (SD 1.x / 2.x / XL), without loading unused tensors."""
    from safetensors import safe_open

    path = Path(path)
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:
        raise ModelError(f"{path}: not a readable safetensors file ({e})") from e
    with handle:  # every tensor is copied out, so the file is released once loading ends
        return _host_from_tensors(_Tensors(path, handle=handle), dtype, tokenizer, prediction_type, config)


def load_pickle_checkpoint(path: Path, dtype: torch.dtype = torch.float32, allow_pickle: bool = False,
                           tokenizer=None, prediction_type=None, config=None):
    """A host from a pickle checkpoint; refused unless ``allow_pickle``, and then read with ``weights_only=True``."""
    path = Path(path)
    if not allow_pickle:
        raise ModelError(
            f"{path}: pickle checkpoints ({', '.join(PICKLE_SUFFIXES)}) can run arbitrary code when opened, so "
            f"StyleCloak does not open them by default. Use a .safetensors version of the model, or convert this "
            f"file once in a trusted environment (e.g. load it and save its state_dict with "
            f"safetensors.torch.save_file). If you trust the file, pass allow_pickle=True: it is then read with "
            f"torch.load(weights_only=True), which accepts plain tensors only.")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"{path}: could not be read with torch.load(weights_only=True) (it holds more than "
                         f"plain tensors, or is not a torch file): {e}") from e
    while isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise ModelError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return _host_from_tensors(_Tensors(path, tensors=tensors), dtype, tokenizer, prediction_type, config)


def _host_from_tensors(src: _Tensors, dtype, tokenizer, prediction_type, config=None):
    from .. import ldm_convert
    from ..configs import assemble_pipeline
    from .diffusers_host import DiffusersHost

    try:
        layout = ldm_convert.detect_layout(src.keys)
    except ValueError as e:
        raise ModelError(f"{src.path}: not a Stable Diffusion checkpoint StyleCloak can use: {e}") from None
    bundle, ptype, reason = _bundle_for(src, layout, _prediction_type(prediction_type), config)
    try:
        with quiet_libraries():
            modules = ldm_convert.ldm_to_modules(src.read, bundle, layout, dtype)
    except KeyError as e:
        raise ModelError(f"{src.path}: incomplete {layout.upper()} checkpoint, tensor {e} is missing") from None
    except ValueError as e:
        raise ModelError(f"{src.path}: does not match the {bundle['family']} architecture: {e}") from None
    tokenizers = {part: tokenizer_for(bundle, part, tokenizer, src.path.name)
                  for part in ("tokenizer", "tokenizer_2") if part in bundle}
    with quiet_libraries():
        pipe = assemble_pipeline(bundle, modules, tokenizers)
    host = DiffusersHost.from_pipeline(pipe, family=bundle["family"])
    host.prediction_type = ptype
    log.info("%s: %s checkpoint, %s (%s)", src.path.name, bundle["family"], ptype, reason)
    return host


def _bundle_for(src: _Tensors, layout: str, override: str | None, config=None) -> tuple[dict, str, str]:
    """Config bundle and prediction type for a checkpoint: ``config`` if given, else the file's own metadata (when
    StyleCloak wrote it), else the shipped config of the detected family."""
    from ..configs import read_bundle
    from ..ldm_convert import UNET

    meta = src.metadata.get("stylecloak.configs")
    if config is not None or meta:
        try:
            bundle, where = (read_bundle(config), f"config {config}") if config is not None else (
                json.loads(meta), "the file's metadata")
        except (ValueError, OSError) as e:
            raise ModelError(str(e)) from None
        ptype = bundle["scheduler"].get("prediction_type", "epsilon")
        return bundle, override or ptype, "given" if override else f"from {where}"
    if override:
        ptype, reason = override, "given"
    else:
        ptype, reason = guess_prediction_type(layout, src.keys, src.path.name)
    kind = {"sd1": "sd15", "sdxl": "sdxl"}.get(layout) or ("sd2-v" if ptype == "v_prediction" else "sd2")
    bundle = read_bundle(kind)
    unet_in = src.shape(UNET + "input_blocks.0.0.weight")[1]
    if unet_in != bundle["unet"]["in_channels"]:
        raise ModelError(f"{src.path}: UNet takes {unet_in} input channels (an inpainting or other special "
                         f"model); StyleCloak needs a plain text-to-image {bundle['family']} checkpoint")
    return bundle, ptype, reason


def guess_prediction_type(layout: str, keys, filename: str) -> tuple[str, str]:
    """(prediction type, why) for a checkpoint without metadata; see the module doc for the rules."""
    if "v_pred" in keys:
        return "v_prediction", "the checkpoint has a 'v_pred' marker tensor"
    if layout != "sd2":
        return "epsilon", f"{layout.upper()} checkpoints predict noise"
    name = filename.lower()
    tokens = set(re.split(r"[^a-z0-9]+", name.rsplit(".", 1)[0]))
    if tokens & {"v", "vpred", "768", "768v"} or "v-pred" in name or "v_pred" in name or "768-v" in name:
        return "v_prediction", f"the file name {filename!r} says v-prediction"
    if tokens & {"512", "base", "eps", "epsilon"}:
        return "epsilon", f"the file name {filename!r} says 512-base (epsilon)"
    log.warning("%s: SD 2.x checkpoint; assuming v-prediction (SD 2.x 768-v). If it is a 512-base model, pass "
                "prediction_type='epsilon'.", filename)
    return "v_prediction", "SD 2.x default"


# ---- tokenizers -----------------------------------------------------------------------------------------------
def _has_vocab(folder: Path) -> bool:
    return (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()


def tokenizer_candidates() -> list[Path]:
    """Well-known local places that may hold the real CLIP BPE vocabulary, in order of preference."""
    found = []
    if os.environ.get("STYLECLOAK_TOKENIZER"):
        found.append(Path(os.environ["STYLECLOAK_TOKENIZER"]).expanduser())
    comfy = sys.modules.get("comfy")  # running inside ComfyUI (never imported here)
    for root in (getattr(comfy, "__path__", None) or []):
        found.append(Path(root) / "sd1_tokenizer")
    for var in ("COMFYUI_PATH", "COMFYUI_DIR"):
        if os.environ.get(var):
            found.append(Path(os.environ[var]).expanduser() / "comfy" / "sd1_tokenizer")
    hub = os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"
    hub = Path(hub).expanduser()
    for repo, sub in (("openai--clip-vit-large-patch14", ""), ("runwayml--stable-diffusion-v1-5", "tokenizer"),
                      ("stable-diffusion-v1-5--stable-diffusion-v1-5", "tokenizer")):
        found.extend(sorted((hub / f"models--{repo}" / "snapshots").glob(f"*/{sub}".rstrip("/"))))
    return found


def find_tokenizer_dir(explicit=None) -> Path | None:
    """The folder to read the CLIP vocabulary from: ``explicit`` (must be valid) or the first valid candidate."""
    if explicit is not None:
        folder = Path(explicit).expanduser()
        if not _has_vocab(folder):
            raise ModelError(f"{folder}: tokenizer folder must contain vocab.json and merges.txt")
        return folder
    return next((c for c in tokenizer_candidates() if _has_vocab(c)), None)


def tokenizer_for(bundle: dict, part: str, explicit=None, model_name: str = "model"):
    """The CLIP tokenizer for ``bundle[part]``: the tiny one for the tiny text encoders; for real ones, ``explicit``
    or the bundle's own vocabulary or a well-known local copy, else the tiny stand-in with a warning."""
    from transformers import CLIPTokenizer

    from ..tiny_models import load_tiny_tokenizer

    cfg = bundle.get(part) or {}
    te = bundle["text_encoder_2" if part == "tokenizer_2" else "text_encoder"]
    tiny = load_tiny_tokenizer()
    if explicit is None and te["vocab_size"] == len(tiny):
        folder = None
    else:
        folder = find_tokenizer_dir(explicit if explicit is not None else cfg.get("vocab_dir"))
    if folder is None:
        tok = tiny
        if te["vocab_size"] != len(tiny):
            log.warning("%s: no CLIP tokenizer vocabulary found, using StyleCloak's tiny stand-in: prompts will not "
                        "mean what they should. Point tokenizer=DIR or $STYLECLOAK_TOKENIZER at a folder with "
                        "vocab.json and merges.txt (e.g. ComfyUI's comfy/sd1_tokenizer).", model_name)
    else:
        tok = CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
        if len(tok) > te["vocab_size"]:
            raise ModelError(f"{folder}: tokenizer has {len(tok)} tokens but the text encoder of {model_name} "
                             f"knows only {te['vocab_size']}")
    tok.model_max_length = int(cfg.get("model_max_length", 77))
    if cfg.get("pad_token"):
        tok.pad_token = cfg["pad_token"]
    return tok


def _to(host, device):
    for m in host.host_modules().values():
        m.to(device)
    host._alphas = host._alphas.to(device)
    return host
