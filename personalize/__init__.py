"""personalize: teach Stable Diffusion new subjects and edit what it knows.

The Python API is `load_pipeline(base, artifacts)` -> `Pipeline.generate(...)` and
`train(load_config([...yaml], [...overrides]))`, the same loop `training/train.py` runs. Heavy imports
(diffusers, transformers, accelerate) happen when these are first used.
"""

__version__ = "0.1.0"


def load_pipeline(*args, **kwargs):
    """See `personalize.pipeline.load_pipeline`."""
    from personalize.pipeline import load_pipeline as _load

    return _load(*args, **kwargs)


def load_config(*args, **kwargs):
    """See `personalize.config.load_config`."""
    from personalize.config import load_config as _load

    return _load(*args, **kwargs)


def train(config, **kwargs):
    """See `personalize.trainer.train`: returns a `TrainResult` whose `.artifact` is the written file."""
    from personalize.trainer import train as _train

    return _train(config, **kwargs)


__all__ = ["load_pipeline", "load_config", "train", "__version__"]
