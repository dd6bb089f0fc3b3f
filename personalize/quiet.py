"""Silence the third-party messages that say nothing to a personalize user, and only those.

- transformers: "`CLIPImageProcessor` requires torchvision (not installed); falling back to ..." (twice per
  model load): the image processor is the safety checker's feature extractor, off unless asked for, and the
  PIL fallback is what it uses anyway.
- diffusers: "No LoRA keys associated to CLIPTextModel found ...": a LoRA file trained on the UNet only (ours,
  most kohya files) loads exactly as intended.

Filters sit on the loggers that emit them (found by their module names), so every other message of these
libraries still shows. The entry points (`personalize ...`, training/train.py, the app) call `quiet()`.
"""

from __future__ import annotations

import logging

NOISE = {
    "transformers.utils.import_utils": "requires torchvision (not installed)",
    "diffusers.loaders.peft": "No LoRA keys associated to CLIPTextModel",
    "diffusers.loaders.lora_pipeline": "No LoRA keys associated to CLIPTextModel",
}


class DropMessages(logging.Filter):
    """Drops records whose message contains `needle`."""

    def __init__(self, needle: str):
        super().__init__()
        self.needle = needle

    def filter(self, record: logging.LogRecord) -> bool:
        return self.needle not in record.getMessage()


def quiet() -> None:
    """Attach the filters (once per logger)."""
    for name, needle in NOISE.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) and f.needle == needle for f in log.filters):
            log.addFilter(DropMessages(needle))


def no_loader_bars() -> None:
    """--no-progress also hides the loaders' bars ("Loading pipeline components", "Loading weights")."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
