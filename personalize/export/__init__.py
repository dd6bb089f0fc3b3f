"""Leaving the project: artifacts as files other tools load (`personalize export`).

  changes.py   what an artifact changes on its base, read off a live pipeline (the method's own `apply`)
  lora.py      those changes as one kohya-layout LoRA (a LoRA's own factors, or a truncated SVD), with its error
  ldm.py       a diffusers model as a single-file checkpoint in the original (LDM) layout
  command.py   the command: formats, refusals, paths, atomic writes
It sits on the front ends' floor (beside eval/): it reads the method registry; nothing in the library imports it.
"""
