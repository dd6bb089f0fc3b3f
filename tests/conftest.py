"""Shared fixtures: the real CLIP tokenizer and tiny random SD models saved as diffusers folders."""

from pathlib import Path

import pytest

from personalize.cpu import TOY_THREADS, configure_threads

configure_threads(TOY_THREADS)  # tiny models: one thread is faster than two here (benchmarks/bench_threads.py)

FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZER_DIR = FIXTURES / "clip_tokenizer"


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return TOKENIZER_DIR


def _tiny(tmp_path_factory, name, variant, width):
    from personalize.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp(name), TOKENIZER_DIR, variant, width)


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> Path:
    """SD1-shaped tiny model with a test-sized width (32)."""
    return _tiny(tmp_path_factory, "tiny_sd1", "sd1", 32)


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory) -> Path:
    """SD2-shaped tiny model (v-prediction, linear proj) with a test-sized width (48)."""
    return _tiny(tmp_path_factory, "tiny_sd2", "sd2", 48)


@pytest.fixture(scope="session")
def real_width_sd1(tmp_path_factory) -> Path:
    """SD1-shaped tiny model with the real CLIP width 768."""
    return _tiny(tmp_path_factory, "sd1_768", "sd1", None)


@pytest.fixture(scope="session")
def real_width_sd2(tmp_path_factory) -> Path:
    """SD2-shaped tiny model with the real OpenCLIP width 1024."""
    return _tiny(tmp_path_factory, "sd2_1024", "sd2", None)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """SDXL-shaped tiny model: text encoders of widths 32 and 64 (context 96), `text_time` conditioning."""
    from personalize.tiny import save_tiny_sdxl_model

    return save_tiny_sdxl_model(tmp_path_factory.mktemp("tiny_sdxl"), TOKENIZER_DIR)


@pytest.fixture
def pipe_sd1(tiny_sd1):
    from personalize.pipeline import load_pipeline

    return load_pipeline(str(tiny_sd1), device="cpu")


@pytest.fixture(scope="session")
def concept_dir(tmp_path_factory) -> Path:
    from helpers import write_concept_images

    return write_concept_images(tmp_path_factory.mktemp("concept"))


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    """A random ViTForImageClassification built from a config (no download), saved with its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, num_labels=3, id2label={0: "tiger cat, cat", 1: "Great_Dane", 2: "car"},
                       label2id={"tiger cat, cat": 0, "Great_Dane": 1, "car": 2})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder
