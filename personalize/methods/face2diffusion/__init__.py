"""Face2Diffusion (Shiohara & Yamasaki, CVPR 2024): one face photo -> two word vectors, no tuning per person.

    model.py          MSID encoder and mapping network (official state-dict names and sizes)
    inject.py         the text path: the vectors replace the input hidden states at "f l"
    losses.py         ArcFace, CGDR, expression guidance's per-sample choice
    data.py           face folders (photo, crop, mask, expression) and the toy world's faces
    msid_stage.py     method f2d_msid: stage 1, the encoder pretrained with ArcFace
    mapping_stage.py  method face2diffusion: stage 2, the mapping network with CGDR and expression guidance
    encoder.py        the encoder file, strict loading
    edit.py           inference: the generation edit and the per-person file
"""

from personalize.artifacts import ArtifactError


def apply_refused(sd_pipe, artifact):
    """Face2Diffusion files change no weight of the pipeline: they are read by the face edit."""
    raise ArtifactError(f"{artifact.path} is a Face2Diffusion {artifact.kind} file, not a pipeline artifact: pass it "
                        "as face_encoder (encoder) or person (person file) to generate / --face-encoder / --person")
