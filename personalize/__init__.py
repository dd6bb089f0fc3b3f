"""personalize: teach Stable Diffusion new subjects and edit what it knows.

The Python API is `load_pipeline(base, artifacts)` -> `Pipeline.generate(...)`; training goes through
`training/train.py`. Heavy imports (diffusers, transformers) happen when these are first used.
"""

__version__ = "0.1.0"


def load_pipeline(*args, **kwargs):
    """See `personalize.pipeline.load_pipeline`."""
    from personalize.pipeline import load_pipeline as _load

    return _load(*args, **kwargs)


__all__ = ["load_pipeline", "__version__"]
