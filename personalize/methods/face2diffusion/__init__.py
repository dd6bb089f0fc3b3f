"""Face2Diffusion (Shiohara & Yamasaki, CVPR 2024): one face photo -> two word vectors, no tuning per person.

    model.py          MSID encoder and mapping network (official state-dict names and sizes)
    inject.py         the text path: the vectors replace the input hidden states at "f l"
    losses.py         ArcFace, CGDR, expression guidance's per-sample choice
    data.py           face folders (photo, crop, mask, expression) and the toy world's faces
    msid_stage.py     method f2d_msid: stage 1, the encoder pretrained with ArcFace
    mapping_stage.py  method face2diffusion: stage 2, the mapping network with CGDR and expression guidance
    encoder.py        the encoder file, strict loading
    edit.py           inference: the generation edit (a real photo aligned first: personalize/face.py), person files
    convert.py        the official weights (msid.pt, mapping.pt pickles, read weights-only) as one encoder file
"""

from personalize.artifacts import ArtifactError

# inference_f2d.py: StableDiffusionPipeline with EulerAncestralDiscreteScheduler, 30 steps, guidance 7, SD's 512 px
INFERENCE_PRESET = {"scheduler": "euler_a", "steps": 30, "guidance_scale": 7.0, "height": 512, "width": 512}


def apply_refused(sd_pipe, artifact):
    """Face2Diffusion files change no weight of the pipeline: they are read by the face edit."""
    raise ArtifactError(f"{artifact.path} is a Face2Diffusion {artifact.kind} file, not a pipeline artifact: pass it "
                        "to the face edit: personalize.edits(face_encoder=...) or person=..., --face-encoder or --person")


def describe(art) -> dict:
    """An encoder or person file is a choice of the face edit (its `file` option), not an artifact to apply."""
    shows = {"f2d_encoder": "encoder", "f2d_identity": "person"}.get(art.kind)
    return {"shows": shows, "edit": "face2diffusion"} if shows else {}
