"""Concept erasure: ESD-x / ESD-u (`esd`) and All-but-One (`abo`), fine-tuning the UNet against a frozen copy."""
