"""The committed CLIP tokenizer fixture gives Stable Diffusion's token ids."""

import json

from transformers import CLIPTokenizer


def test_sd_token_ids(tokenizer_dir):
    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    assert len(tok) == 49408
    assert tok("a photo of a sks dog").input_ids == [49406, 320, 1125, 539, 320, 48136, 1929, 49407]


def test_special_tokens_and_padding(tokenizer_dir):
    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    ids = tok("a dog", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[:4] == [49406, 320, 1929, 49407] and set(ids[4:]) == {49407}


def test_vocab_layout_matches_clip(tokenizer_dir):
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["!"] == 0 and vocab["a</w>"] == 320
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert sorted(vocab.values()) == list(range(49408))


def test_rebuild_script_bytes_order():
    """The byte alphabet puts printable bytes first, as CLIP's SimpleTokenizer does."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "tools" / "make_clip_tokenizer.py"
    spec = importlib.util.spec_from_file_location("mk", path)
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    table = mk.bytes_to_unicode()
    assert len(table) == 256 and list(table)[:3] == [33, 34, 35] and table[ord("a")] == "a"
    assert table[0] == chr(256) and table[32] == chr(256 + 32)
    vocab, merges = mk.build(["#version", "a b", "ab c"])
    assert vocab["ab"] == 512 and vocab["abc"] == 513 and vocab["<|endoftext|>"] == 515
