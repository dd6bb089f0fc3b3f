"""The method registry: one module per method (peft style), an explicit dict, no import-time magic.

Each module follows the method protocol of DESIGN sec. 5. Every module implements `apply(pipe, artifact) -> undo`
for inference; the training side (`setup`, `trainable_parameters`, `training_step`, `artifact`) arrives with the
training loop.
"""

from personalize.methods import custom_diffusion, dreambooth, lora, textual_inversion

METHODS = {
    "textual_inversion": textual_inversion,
    "dreambooth": dreambooth,
    "custom_diffusion": custom_diffusion,
    "lora": lora,
}
