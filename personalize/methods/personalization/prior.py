"""Prior preservation (DreamBooth, Ruiz et al. 2023, sec. 3.3): class images made with the *base* model when the
class folder has too few, and their batches beside the instance batches (diffusers `train_dreambooth.py`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from personalize.data import examples_from_folder, generate_class_images, missing_class_images

logger = logging.getLogger(__name__)


def class_examples(config, components, accelerator):
    """The class-prior examples for `train.with_prior_preservation`, or None. Missing images are generated first,
    each rank its share, without touching the global RNG (new trainable weights are drawn from it afterwards)."""
    data, train = config.data, config.train
    if not train.with_prior_preservation:
        return None
    folder = Path(data.class_data_dir or Path(train.output_dir) / "class_images")
    todo = missing_class_images(folder, data.num_class_images)
    if todo:
        logger.info("generating %d class images into %s", len(todo), folder)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            generate_class_images(components, folder, data.class_prompt, todo, train.seed,
                                  data.class_generation_steps, accelerator.process_index, accelerator.num_processes,
                                  accelerator.device)
    accelerator.wait_for_everyone()
    return examples_from_folder(folder, data.class_prompt, "data.class_data_dir")
