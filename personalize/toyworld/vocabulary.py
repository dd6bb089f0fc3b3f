"""The words the toy model was trained on, and a one-line hint for a prompt that uses others.

Everyday Stable Diffusion prompts ("a photo of a dog on the beach") mean nothing to the toy model: its text
encoder only ever saw the toy world's captions (world.caption). The vocabulary is read off those captions, so it
follows the grammar as it changes.
"""

from __future__ import annotations

import functools
import random
import re

from personalize.toyworld import world as w

_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def vocabulary(samples: int = 3000, seed: int = 0) -> set[str]:
    """Every word of the captions the toy model is trained and evaluated on (random phrasings of every split)."""
    rng = random.Random(seed)
    words: set[str] = set()
    for k in range(samples):
        split = ("train", "heldout_objects", "heldout_faces")[k % 3]
        scene = w.sample_scene(rng, split)
        for text in (w.caption(scene), w.caption(scene, rng),
                     w.caption(scene, rng, w.HELD_OUT_PREFIXES if k % 2 else None)):
            words |= set(_WORD.findall(text.lower()))
    return words | {"outline", "with", "an", "and"}


@functools.lru_cache(maxsize=1)
def cached_vocabulary() -> frozenset[str]:
    """`vocabulary()` with its defaults, computed once per process (about 0.3 s)."""
    return frozenset(vocabulary())


def unknown_words(prompt: str, known: set[str], triggers: list[str] = ()) -> list[str]:
    """The words of `prompt` the toy model never saw (trigger words of loaded artifacts are known), in order."""
    allowed = known | {t.lower() for t in triggers}
    text = prompt.lower()
    for t in sorted(triggers, key=len, reverse=True):  # a trigger may hold digits ("dct-person-18"): cut it out
        # whole, and only as a whole word (Face2Diffusion's "f" is not the f of "of")
        text = re.sub(rf"(?<![a-z0-9-]){re.escape(t.lower())}(?![a-z0-9-])", " ", text)
    seen, out = set(), []
    for word in _WORD.findall(text):
        if word not in allowed and word not in seen:
            seen.add(word)
            out.append(word)
    return out


def unknown_in(prompts: list[str], known: set[str], triggers: list[str] = ()) -> list[str]:
    """`unknown_words` over several prompts, each word once, in order of appearance."""
    return list(dict.fromkeys(u for p in prompts for u in unknown_words(p, known, triggers)))


def hint_for(unknown: list[str]) -> str | None:
    """One line naming the unknown words and what the toy world does draw; None when there are none."""
    if not unknown:
        return None
    from personalize.resources import asset

    return (f"the toy world does not know {', '.join(repr(u) for u in unknown[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}: it draws shapes (e.g. 'a small red circle with stripes on a "
            "black background') and faces ('a photo of a smiling person wearing glasses'); its grammar is in "
            f"{asset('toyworld', 'README.md')}")
