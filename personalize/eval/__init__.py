"""Evaluation of generated images: `faces` scores identity (face-recognition cosine to the input face), the
detection rate of faces, and text alignment (CLIP), as Face2Diffusion (Shiohara & Yamasaki, CVPR 2024) reports them."""
