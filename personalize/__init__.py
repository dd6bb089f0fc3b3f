"""personalize: teach Stable Diffusion new subjects and edit what it knows.

The Python API is `load_pipeline(base, artifacts)` -> `Pipeline.generate(..., edits=edits(...))` and
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


def edits(suppress=None, suppress_mode: str = "swr", suppress_options: dict | None = None, face=None,
          face_encoder: str | None = None, person=None, face_detector=None) -> list[tuple[str, dict]]:
    """The Python API's shorthands as a plain edit description for `Pipeline.generate(edits=...)`, which the
    registry's inference methods make into edits (`personalize.methods.edits_from`):

        pipe.generate("a man wearing glasses", edits=personalize.edits(suppress="glasses"))
        pipe.generate("a photo of f l", edits=personalize.edits(face="me.jpg", face_encoder="f2d.safetensors"))

    `suppress`: words or spans of the prompt to leave out (SuppressEOT, Li et al., ICLR 2024), `suppress_mode`
    "swr" or "swr+ito", `suppress_options` any other `Suppression` field. `face`: a face photo (path or PIL image,
    or one per prompt) put where the prompt says "f l" (Face2Diffusion, Shiohara & Yamasaki, CVPR 2024), encoded
    by `face_encoder` (default: the base's shipped one, the toy world's) and aligned by `face_detector`
    (`personalize.face`); `person`: `<name>.f2d.safetensors` files instead of photos."""
    pairs = []
    if suppress:
        pairs.append(("suppress_eot", {"words": suppress, "suppress_mode": suppress_mode, **(suppress_options or {})}))
    if face is not None or person is not None:
        pairs.append(("face2diffusion", {"face": face, "person": person, "encoder": face_encoder or "",
                                         "detector": face_detector or ""}))
    return pairs


__all__ = ["load_pipeline", "load_config", "train", "edits", "__version__"]
