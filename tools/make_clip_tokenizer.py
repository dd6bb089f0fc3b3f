"""Rebuild the CLIP BPE tokenizer (vocab.json + merges.txt) offline.

Stable Diffusion 1.x/2.x use OpenAI's CLIP byte-level BPE vocabulary (49,408 tokens). The same
vocabulary ships, as a gzipped merge list, inside the ``open_clip_torch`` wheel
(``open_clip/bpe_simple_vocab_16e6.txt.gz``). This script rebuilds the Hugging Face files from it,
with the token order of CLIP's ``SimpleTokenizer``: the 256 byte symbols, the same with ``</w>``,
one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>``.

    pip download --no-deps open_clip_torch -d /tmp/oc
    python tools/make_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl tests/fixtures/clip_tokenizer
"""

import argparse
import gzip
import json
import zipfile
from pathlib import Path

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges of the file


def bytes_to_unicode() -> dict[int, str]:
    """Map each byte to a printable unicode character (GPT-2 / CLIP byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: b for b in printable}  # insertion order matters: printable bytes come first
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {b: chr(c) for b, c in chars.items()}


def build(merge_lines: list[str]) -> tuple[dict[str, int], list[str]]:
    merges = merge_lines[1 : N_MERGES + 1]  # line 0 is a version header
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def tokenizer_config() -> dict:
    """The tokenizer_config.json that Stable Diffusion 1.x ships (pad = <|endoftext|>)."""
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="open_clip_torch wheel file")
    parser.add_argument("out", type=Path, help="output folder")
    args = parser.parse_args()
    with zipfile.ZipFile(args.wheel) as zf:
        text = gzip.decompress(zf.read(BPE_MEMBER)).decode("utf-8")
    vocab, merges = build(text.split("\n"))
    assert len(vocab) == 49408, len(vocab)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (args.out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (args.out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (args.out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    print(f"wrote {len(vocab)} tokens to {args.out}")


if __name__ == "__main__":
    main()
