"""Concept templates: a concept erased across the phrasings it appears in, not only as the one prompt it was typed.

ESD and All-but-One train on the prompts they are given: the official code erases exactly `--prompt` (one string
per run). A bare name ("triangle", "Van Gogh") then leaves other phrasings of it ("a photo of a triangle", "a red
triangle and a circle") partly intact. With `method.templates` each concept is written into every template
("a photo of a {}") and one of the results is drawn per sample, as the concept itself is drawn among several.

An entry is a template holding "{}", or the name of a kind whose list is below (object, style, attribute). The
lists are ours (unverified on real models; the toy world's measurement is in docs/effects.md); an empty
`templates` (the default) is the official single-prompt recipe, exactly.
"""

from __future__ import annotations

from personalize.methods.base import MethodError

KINDS = {
    "object": ["{}", "a {}", "a photo of a {}", "a picture of a {}", "an image of a {}", "a drawing of a {}",
               "a close-up photo of a {}", "a large {}", "a small {}", "a photo of one {}"],
    "style": ["{}", "art by {}", "a painting by {}", "a painting in the style of {}", "an artwork in the style of {}",
              "a landscape in the style of {}", "a portrait in the style of {}", "a drawing in the style of {}"],
    "attribute": ["{}", "a {} object", "a photo of something {}", "a picture of a {} thing", "an image of {}",
                  "a {} shape", "something {}"],
}


def template_list(entries: list[str]) -> list[str]:
    """The templates of `entries` (kind names expanded, order kept, duplicates dropped)."""
    out: list[str] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise MethodError(f"method.templates entries must be templates with '{{}}' or one of {', '.join(KINDS)}; "
                              f"got {entry!r}")
        items = KINDS.get(entry.strip())
        if items is None and "{}" not in entry:
            raise MethodError(f"method.templates entry {entry!r} has no '{{}}' for the concept and is not a kind; "
                              f"expected e.g. 'a photo of a {{}}' or one of {', '.join(KINDS)}")
        out += [t for t in (items or [entry]) if t not in out]
    return out


def expand(concept: str, templates: list[str]) -> list[str]:
    """The training prompts of one concept: itself without templates, else every template filled with it."""
    return [concept] if not templates else [t.replace("{}", concept) for t in templates]
