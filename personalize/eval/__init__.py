"""Evaluation of generated images: `faces` scores identity (face-recognition cosine to the input face), the
detection rate of faces, and text alignment (CLIP), as Face2Diffusion (Shiohara & Yamasaki, CVPR 2024) reports them.

The harness measured in the toy world (`personalize.toyworld`): the model's suites (`evaluate`), the multi-seed effect
harness (`effects`, `stats`, `mechanism`) and each method family's measurement (`appearance`, `class_tokens`,
`erasure`, `robustness`, `suppression`, `face_effect`), and `personalize quickstart` (`quickstart`)."""
