"""Writes protect_core/assets/tiny_tokenizer/{vocab.json,merges.txt}: a small CLIP-style BPE vocabulary.

Byte-level base symbols (with and without the end-of-word marker) plus merges that spell out a fixed list of words
used by StyleCloak's prompts and the toy world, so common prompts tokenise to whole words. Run once; the output is
committed. Usage: python tools/make_tiny_tokenizer.py
"""
import json
from pathlib import Path



def bytes_to_unicode():
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to code points from 256 up."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = [b for b in range(256) if b not in keep]
    return {b: chr(b) for b in keep} | {b: chr(256 + i) for i, b in enumerate(extra)}

WORDS = """a an the of in on and with by painting artwork art image picture photo drawing sketch illustration
style styles sks ohwx artist by landscape portrait city tree house cat dog person face flower sky sea mountain
abstract oil watercolor pencil ink digital anime cartoon impressionist cubist pop noir
stripes dots checker gradient rings strokes waves blobs grid spiral mosaic hatching
red green blue yellow black white orange purple pink grey gray bright dark colorful pastel
k 0 1 2 3 4 5 6 7 8 9 style0 style1 style2 style3 style4 style5 style6 style7 style8 style9 in style
high quality detailed simple blurry noisy low""".split()


def main():
    out = Path(__file__).resolve().parents[1] / "protect_core" / "assets" / "tiny_tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    base = list(bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base]
    merges = []
    seen = set(vocab)
    for word in dict.fromkeys(WORDS):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            a, b = symbols[0], symbols[1]
            merged = a + b
            if (a, b) not in merges:
                merges.append((a, b))
            if merged not in seen:
                vocab.append(merged)
                seen.add(merged)
            symbols = [merged] + symbols[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {out}")


if __name__ == "__main__":
    main()
