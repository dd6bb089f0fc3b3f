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


@pytest.fixture
def pipe_sd1(tiny_sd1):
    from personalize.pipeline import load_pipeline

    return load_pipeline(str(tiny_sd1), device="cpu")


@pytest.fixture(scope="session")
def concept_dir(tmp_path_factory) -> Path:
    from helpers import write_concept_images

    return write_concept_images(tmp_path_factory.mktemp("concept"))
