"""Textual inversion (Gal et al., 2022): new token rows only. Artifact: embeddings, no weights."""

from personalize.methods.common import apply_parts as apply  # noqa: F401
