"""The example workflows, defined once: ComfyUI API-format graphs plus the small overrides tests use on CPU.

``tools/make_workflows.py`` turns these into the UI-format ``*.json`` files beside this module (what users drag
into ComfyUI) using a running ComfyUI's ``/object_info``; the real-host tests queue the API format directly.
A link is written ``(node_id, output_index)``; anything else is a widget value.
"""
CHECKPOINT = "sd15_random.safetensors"

WORKFLOWS = {
    "protect_one_image": {
        "title": "Protect one image: cloak, save as PNG, compare before/after",
        "nodes": {
            "1": ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}),
            "2": ("LoadImage", {"image": "artwork.png"}),
            "3": ("StyleCloak_CloakImage", {"image": ("2", 0), "model": ("1", 0), "clip": ("1", 1),
                                            "vae": ("1", 2), "method": "glaze", "intensity": "default",
                                            "seed": 0, "robust": False, "target_prompt": "", "steps": 0,
                                            "eps_255": 0.0}),
            "4": ("SaveImage", {"images": ("3", 0), "filename_prefix": "stylecloak/cloaked"}),
            "5": ("PreviewImage", {"images": ("3", 1)}),
            "6": ("StyleCloak_ProtectionReport", {"clean": ("2", 0), "protected": ("3", 0)}),
            "7": ("SaveImage", {"images": ("6", 0), "filename_prefix": "stylecloak/compare"}),
        },
    },
    "protect_folder_and_test_mimicry": {
        "title": "Protect a folder with StyleProtect on selected layers, then test mimicry (clean vs cloaked)",
        "nodes": {
            "1": ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}),
            "2": ("StyleCloak_LoadImageFolder", {"folder": "artist", "size": 512}),
            "3": ("StyleCloak_SelectStyleLayers", {"images": ("2", 0), "model": ("1", 0), "clip": ("1", 1),
                                                   "vae": ("1", 2), "top_k": 4,
                                                   "style_prompt": "a painting in sks style",
                                                   "content_prompt": "a painting", "timesteps": "200,500,800",
                                                   "noise_seeds": 2, "size": 512, "seed": 0}),
            "4": ("StyleCloak_CloakImage", {"image": ("2", 0), "model": ("1", 0), "clip": ("1", 1),
                                            "vae": ("1", 2), "method": "styleprotect", "intensity": "default",
                                            "seed": 0, "robust": False, "target_prompt": "", "steps": 0,
                                            "eps_255": 0.0, "layers": ("3", 0)}),
            "5": ("SaveImage", {"images": ("4", 0), "filename_prefix": "stylecloak/folder_cloaked"}),
            "6": ("StyleCloak_SaveLayerSelection", {"selection": ("3", 0), "filename": "stylecloak_layers.json"}),
            "7": ("PreviewImage", {"images": ("3", 1)}),
            "8": ("StyleCloak_MimicryTest", {"clean": ("2", 0), "train": ("4", 0), "train_name": "cloaked",
                                             "model": ("1", 0), "clip": ("1", 1), "vae": ("1", 2),
                                             "method": "lora", "steps": 200, "rank": 4, "lr": 0.0,
                                             "samples": 8, "resolution": 512, "seed": 0, "sample_steps": 25,
                                             "reference_samples": 8}),
            "9": ("SaveImage", {"images": ("8", 0), "filename_prefix": "stylecloak/mimicry_card"}),
        },
    },
    "attack_with_purify_and_retest": {
        "title": "Attack a protection: cloak, purify with IMPRESS, and re-test mimicry on both",
        "nodes": {
            "1": ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}),
            "2": ("StyleCloak_LoadImageFolder", {"folder": "artist", "size": 512}),
            "3": ("StyleCloak_CloakImage", {"image": ("2", 0), "model": ("1", 0), "clip": ("1", 1),
                                            "vae": ("1", 2), "method": "mist", "intensity": "default",
                                            "seed": 0, "robust": True, "target_prompt": "", "steps": 0,
                                            "eps_255": 0.0}),
            "4": ("StyleCloak_Purify", {"image": ("3", 0), "method": "impress", "chain": "", "params": "",
                                        "seed": 0, "model": ("1", 0), "clip": ("1", 1), "vae": ("1", 2)}),
            "5": ("StyleCloak_ProtectionReport", {"clean": ("3", 0), "protected": ("4", 0)}),
            "6": ("PreviewImage", {"images": ("5", 0)}),
            "7": ("StyleCloak_MimicryTest", {"clean": ("2", 0), "train": ("3", 0), "train_name": "cloaked",
                                             "train_2": ("4", 0), "train_2_name": "purified",
                                             "model": ("1", 0), "clip": ("1", 1), "vae": ("1", 2),
                                             "method": "lora", "steps": 200, "rank": 4, "lr": 0.0,
                                             "samples": 8, "resolution": 512, "seed": 0, "sample_steps": 25,
                                             "reference_samples": 8}),
            "8": ("SaveImage", {"images": ("7", 0), "filename_prefix": "stylecloak/attack_card"}),
        },
    },
}

#: What the CPU tests change (an SD1.5-size model with random weights on 2 cores): tiny sizes, few steps.
CPU_TEST_OVERRIDES = {
    "protect_one_image": {"3": {"method": "photoguard", "steps": 2}},
    "protect_folder_and_test_mimicry": {
        "2": {"size": 64}, "3": {"size": 64, "timesteps": "500", "noise_seeds": 1, "top_k": 2},
        "4": {"steps": 1}, "8": {"steps": 1, "samples": 2, "resolution": 64, "sample_steps": 2,
                                                       "reference_samples": 2}},
    "attack_with_purify_and_retest": {
        "2": {"size": 64}, "3": {"steps": 1, "robust": False},
        "4": {"params": "{\"iterations\": 2}"}, "7": {"steps": 1, "samples": 2, "resolution": 64, "sample_steps": 2,
                                                       "reference_samples": 2}},
}


def api_format(name: str, overrides: dict | None = None) -> dict:
    """The ComfyUI /prompt payload of workflow ``name`` with per-node widget ``overrides``."""
    graph = {}
    for node_id, (class_type, inputs) in WORKFLOWS[name]["nodes"].items():
        values = dict(inputs)
        values.update((overrides or {}).get(node_id, {}))
        graph[node_id] = {"class_type": class_type,
                          "inputs": {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}
    return graph
