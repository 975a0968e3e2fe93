"""Writes an offline Hugging Face cache entry for ``openai/clip-vit-large-patch14`` (config + tokenizer, no weights).

Automatic1111 builds the SD 1.x text encoder with ``CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14")``
and ``CLIPTextModel.from_pretrained`` (weights come from the checkpoint; only ``config.json`` is read), so a web UI
on a machine that cannot reach the hub needs those files in its cache. This tool writes them from public facts only:

* ``config.json``: the published CLIP ViT-L/14 values (text: width 768, 12 layers, 12 heads, MLP 3072, vocabulary
  49408, 77 positions, quick_gelu; vision: width 1024, 24 layers, 16 heads, patch 14 at 224 px; projection 768);
* ``vocab.json`` / ``merges.txt``: derived from the CLIP BPE merge list that ships in the ``open_clip_torch`` package
  (``bpe_simple_vocab_16e6.txt.gz``) exactly as OpenAI's ``SimpleTokenizer`` builds its encoder: 256 byte symbols,
  the same with ``</w>``, one token per merge (48894), then ``<|startoftext|>`` and ``<|endoftext|>`` (49408 ids);
* ``tokenizer_config.json`` / ``special_tokens_map.json``: lower-casing, 77 tokens, ``<|endoftext|>`` as unk/pad/eos.

Layout is the hub cache's (``<HF_HOME>/hub/models--openai--clip-vit-large-patch14/{refs/main,snapshots/<rev>/}``), the
revision a hash of the files written. Only the standard library is used.

Usage:
    python tools/a1111_offline_cache.py HF_HOME [--bpe PATH/bpe_simple_vocab_16e6.txt.gz]
(``--bpe`` defaults to the copy inside the running interpreter's ``open_clip`` package.) Then run the web UI with
``HF_HOME=<that folder> HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_tiny_tokenizer import bytes_to_unicode  # noqa: E402

REPO = "openai/clip-vit-large-patch14"
N_MERGES = 49152 - 256 - 2  # SimpleTokenizer reads lines 1 .. 48894 of the merge list (line 0 is a header)

TEXT_CONFIG = {"model_type": "clip_text_model", "hidden_size": 768, "intermediate_size": 3072,
               "num_attention_heads": 12, "num_hidden_layers": 12, "max_position_embeddings": 77,
               "vocab_size": 49408, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768,
               "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
               "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
VISION_CONFIG = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                 "num_attention_heads": 16, "num_hidden_layers": 24, "image_size": 224, "patch_size": 14,
                 "num_channels": 3, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768,
                 "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02}
CONFIG = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 768,
          "logit_scale_init_value": 2.6592, "initializer_factor": 1.0, "torch_dtype": "float32",
          "text_config": TEXT_CONFIG, "vision_config": VISION_CONFIG}
SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
           "pad_token": "<|endoftext|>"}
TOKENIZER_CONFIG = {**SPECIAL, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                    "add_prefix_space": False, "errors": "replace"}


def default_bpe() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("open_clip is not installed in this Python; pass --bpe PATH/bpe_simple_vocab_16e6.txt.gz")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def clip_vocab(bpe: Path) -> tuple[dict[str, int], list[str]]:
    """(token -> id, merge lines) built the way OpenAI's SimpleTokenizer builds its encoder."""
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")[1:N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise SystemExit(f"{bpe} is not the CLIP BPE merge list ({len(merges)} merges read, {N_MERGES} expected)")
    base = list(bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != TEXT_CONFIG["vocab_size"]:
        raise SystemExit(f"built {len(vocab)} distinct tokens, expected {TEXT_CONFIG['vocab_size']}")
    return vocab, [" ".join(m) for m in merges]


def cache_files(bpe: Path) -> dict[str, str]:
    vocab, merges = clip_vocab(bpe)
    return {"config.json": json.dumps(CONFIG, indent=2),
            "vocab.json": json.dumps(vocab, ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
            "tokenizer_config.json": json.dumps(TOKENIZER_CONFIG, indent=2),
            "special_tokens_map.json": json.dumps(SPECIAL, indent=2)}


def write_cache(hf_home: Path, bpe: Path) -> Path:
    """Write the cache entry under ``hf_home/hub``; returns the snapshot folder."""
    files = cache_files(bpe)
    revision = hashlib.sha1("".join(k + v for k, v in sorted(files.items())).encode()).hexdigest()
    repo_dir = hf_home / "hub" / ("models--" + REPO.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (snapshot / name).write_text(text, encoding="utf-8")
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    (hf_home / "hub" / "version.txt").write_text("1")  # the cache layout version transformers checks (no migration)
    return snapshot


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("hf_home", type=Path, help="the folder to use as HF_HOME (the cache goes in its hub/)")
    p.add_argument("--bpe", type=Path, default=None, help="bpe_simple_vocab_16e6.txt.gz (default: open_clip's)")
    args = p.parse_args(argv)
    snapshot = write_cache(args.hf_home.resolve(), args.bpe or default_bpe())
    print(f"wrote {REPO} (config + tokenizer, no weights) to {snapshot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
