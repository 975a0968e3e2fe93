"""A minimal stand-in for the ComfyUI modules StyleCloak's nodes import (tests only, no ComfyUI needed).

It provides ``comfy_api.latest`` (``io`` with the V3 Schema / ComfyNode / NodeOutput / Hidden and the socket types
the nodes use, ``ComfyExtension``), ``comfy.utils.ProgressBar``, ``comfy.model_management`` (interrupt flag,
``InterruptProcessingException``, a recording ``load_models_gpu``), ``comfy.model_sampling`` (EPS, V_PREDICTION) and
``folder_paths`` (input / output / temp folders under one directory).

The constructors take the same keyword arguments as ComfyUI's own (``comfy_api/latest/_io.py``), so a misspelt
keyword fails here as it would in ComfyUI, and :meth:`Schema.validate` makes the checks ComfyUI makes when it
registers a node (unique ids, a combo default among its options, numbers within their bounds).

:func:`install` puts the fakes into ``sys.modules`` and returns a function that restores every module it replaced
or that was imported while the fakes were in place (StyleCloak's ``nodes`` package included).
"""
from __future__ import annotations

import enum
import os
import sys
import tempfile
import types
from dataclasses import dataclass, field
from typing import Any

FAKE_PREFIXES = ("comfy_api", "comfy", "folder_paths", "nodes")


# ------------------------------------------------------------------------------------------------ comfy_api.io
class _Input:
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None, raw_link: bool = None):
        self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
        self.lazy, self.extra_dict, self.raw_link = lazy, extra_dict or {}, raw_link

    @property
    def io_type(self) -> str:
        return self.Parent.io_type

    def check(self) -> list[str]:
        return []


class _WidgetInput(_Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, socketless=None,
                 widget_type=None, force_input=None, extra_dict=None, raw_link=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, \
            force_input


class _Output:
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name or id, tooltip, \
            is_output_list

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


def _socket_type(io_type: str, input_cls=_Input):
    cls = type(io_type.title().replace("_", ""), (), {"io_type": io_type})
    cls.Input = type("Input", (input_cls,), {"Parent": cls})
    cls.Output = type("Output", (_Output,), {"Parent": cls})
    return cls


def _numeric_input(kind):
    class NumberInput(_WidgetInput):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                     max=None, step=None, **kw):
            allowed = {"control_after_generate", "display_mode", "socketless", "force_input", "extra_dict",
                       "raw_link", "round"} - ({"round"} if kind is int else {"control_after_generate"})
            unknown = set(kw) - allowed
            if unknown:
                raise TypeError(f"unexpected keyword(s) {sorted(unknown)}")
            super().__init__(id, display_name, optional, tooltip, lazy, default)
            self.min, self.max, self.step = min, max, step

        def check(self):
            bad = []
            if not isinstance(self.default, kind) or isinstance(self.default, bool):
                bad.append(f"{self.id}: default {self.default!r} is not {kind.__name__}")
            elif (self.min is not None and self.default < self.min) or \
                    (self.max is not None and self.default > self.max):
                bad.append(f"{self.id}: default {self.default} outside [{self.min}, {self.max}]")
            return bad

    return NumberInput


class _StringInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False,
                 placeholder=None, default=None, dynamic_prompts=None, socketless=None, force_input=None,
                 extra_dict=None, raw_link=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.multiline, self.placeholder = multiline, placeholder

    def check(self):
        return [] if self.default is None or isinstance(self.default, str) else [f"{self.id}: default not a str"]


class _BooleanInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, label_on=None,
                 label_off=None, socketless=None, force_input=None, extra_dict=None, raw_link=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)

    def check(self):
        return [] if isinstance(self.default, bool) else [f"{self.id}: default {self.default!r} is not a bool"]


class _ComboInput(_WidgetInput):
    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 control_after_generate=None, upload=None, image_folder=None, remote=None, socketless=None,
                 extra_dict=None, raw_link=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.options = list(options or [])

    def check(self):
        if not self.options:
            return [f"{self.id}: a combo without options"]
        if self.default is not None and self.default not in self.options:
            return [f"{self.id}: default {self.default!r} not among {self.options}"]
        return []


class Hidden(str, enum.Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        issues = []
        ids_in, ids_out = [i.id for i in self.inputs], [o.id for o in self.outputs]
        if len(set(ids_in)) != len(ids_in) or len(set(ids_out)) != len(ids_out):
            issues.append("input and output ids must be unique")
        for i in self.inputs:
            issues += i.check()
        if issues:
            raise ValueError(f"{self.node_id}: " + "; ".join(issues))


class HiddenHolder:
    def __init__(self, unique_id=None, **kw):
        self.unique_id = unique_id
        self.__dict__.update(kw)

    def __getattr__(self, key):
        return None


class ComfyNode:
    hidden = HiddenHolder(unique_id="fake-node")

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand=None, block_execution=None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args or None

    def __getitem__(self, index):
        return self.args[index]


def Custom(io_type: str):  # noqa: N802 (ComfyUI's name)
    return _socket_type(io_type)


def _make_io_module() -> types.ModuleType:
    io = types.ModuleType("comfy_api.latest.io")
    io.Schema, io.ComfyNode, io.NodeOutput, io.Hidden, io.Custom = Schema, ComfyNode, NodeOutput, Hidden, Custom
    io.Input, io.WidgetInput, io.Output = _Input, _WidgetInput, _Output
    for name, io_type in [("Image", "IMAGE"), ("Mask", "MASK"), ("Model", "MODEL"), ("Clip", "CLIP"),
                          ("Vae", "VAE"), ("ClipVision", "CLIP_VISION"), ("ClipVisionOutput", "CLIP_VISION_OUTPUT"),
                          ("Latent", "LATENT"), ("Conditioning", "CONDITIONING")]:
        setattr(io, name, _socket_type(io_type))
    io.Int = _socket_type("INT", _numeric_input(int))
    io.Float = _socket_type("FLOAT", _numeric_input(float))
    io.String = _socket_type("STRING", _StringInput)
    io.Boolean = _socket_type("BOOLEAN", _BooleanInput)
    io.Combo = _socket_type("COMBO", _ComboInput)
    return io


# ------------------------------------------------------------------------------------------------ comfy.*
class InterruptProcessingException(Exception):
    pass


class ProgressBar:
    """Records every update as (value, total, preview, node_id) in ``ProgressBar.updates`` (class-wide, newest
    last) and calls ``ProgressBar.hook(*update)`` when a test sets one (e.g. to press Cancel mid-way)."""

    updates: list = []
    hook = None

    def __init__(self, total, node_id=None):
        self.total, self.current, self.node_id = total, 0, node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        ProgressBar.updates.append((self.current, self.total, preview, self.node_id))
        if ProgressBar.hook is not None:
            ProgressBar.hook(self.current, self.total, preview, self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)


def _make_model_management() -> types.ModuleType:
    mm = types.ModuleType("comfy.model_management")
    state = {"interrupted": False}
    mm.InterruptProcessingException = InterruptProcessingException
    mm.loaded = []

    def interrupt_current_processing(value=True):
        state["interrupted"] = value

    mm.interrupt_current_processing = interrupt_current_processing
    mm.processing_interrupted = lambda: state["interrupted"]
    mm.load_models_gpu = lambda models, *a, **k: mm.loaded.append(list(models))
    return mm


def _make_model_sampling(eps_cls, v_cls) -> types.ModuleType:
    ms = types.ModuleType("comfy.model_sampling")
    ms.EPS, ms.V_PREDICTION = eps_cls, v_cls
    return ms


def _make_folder_paths(root: str) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    dirs = {k: os.path.join(root, k) for k in ("input", "output", "temp")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    fp.get_input_directory = lambda: dirs["input"]
    fp.get_output_directory = lambda: dirs["output"]
    fp.get_temp_directory = lambda: dirs["temp"]
    return fp


# ------------------------------------------------------------------------------------------------ install
def _ours(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in FAKE_PREFIXES)


def install(root: str | None = None, eps_cls=None, v_cls=None):
    """Install the fakes into ``sys.modules``; returns ``restore()``, which puts every replaced module back.

    ``eps_cls`` / ``v_cls``: the classes ``comfy.model_sampling.EPS`` / ``V_PREDICTION`` stand for (so a test's
    stand-in model sampling objects pass ComfyHost's ``isinstance`` checks).
    """
    saved = {k: v for k, v in sys.modules.items() if _ours(k)}
    for k in saved:
        del sys.modules[k]
    root = root or tempfile.mkdtemp(prefix="fake_comfy_")
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.__path__ = []
    latest = types.ModuleType("comfy_api.latest")
    latest.__path__ = []
    latest.io = _make_io_module()

    class ComfyExtension:
        async def on_load(self):
            pass

        async def get_node_list(self):
            return []

    latest.ComfyExtension = ComfyExtension
    comfy_api.latest = latest
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    ProgressBar.updates = []
    comfy.utils = utils
    comfy.model_management = _make_model_management()
    eps_cls = eps_cls or type("EPS", (), {})
    v_cls = v_cls or type("V_PREDICTION", (eps_cls,), {})
    comfy.model_sampling = _make_model_sampling(eps_cls, v_cls)
    sys.modules.update({"comfy_api": comfy_api, "comfy_api.latest": latest, "comfy_api.latest.io": latest.io,
                        "comfy": comfy, "comfy.utils": utils, "comfy.model_management": comfy.model_management,
                        "comfy.model_sampling": comfy.model_sampling, "folder_paths": _make_folder_paths(root)})

    def restore():
        for k in [k for k in sys.modules if _ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)

    return restore
