"""Content suppression at inference time: SuppressEOT's soft-weighted regularization and its optimization."""
