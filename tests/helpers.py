"""Small helpers shared by tests (not fixtures): state snapshots, a real diffusers LoRA file, and the CLI's
argv for a tiny LoRA run with the one-line error it should print."""

from pathlib import Path

import numpy as np
import torch

from personalize.tiny import write_concept_images  # noqa: F401 (the tests' name for it)


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def pixels(generated) -> np.ndarray:
    return np.asarray(generated.image, dtype=np.int16)


def write_diffusers_lora(model_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """A LoRA file as diffusers' train_text_to_image_lora.py writes it (peft adapter -> save_lora_weights)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet", local_files_only=True)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(str(out_dir), unet_lora_layers=layers, safe_serialization=True)
    return out_dir / "pytorch_lora_weights.safetensors"


def prompt_for(method: str) -> str:
    """`{}` is the trigger of methods that add a token; the others name the identifier themselves."""
    return "a photo of {} dog" if method in ("textual_inversion", "custom_diffusion") else "a photo of sks dog"


def train_config(model: Path, data: Path, out: Path, method: str, method_opts=None, **train):
    """A config for a short CPU run on a tiny model: no logging unless asked, checkpoints off unless asked."""
    from personalize.config import load_config

    train_opts = {"output_dir": str(out), "max_train_steps": 3, "checkpointing_steps": 10_000,
                  "report_to": "none", "learning_rate": 1e-2} | train
    return load_config([], {
        "model": {"pretrained": str(model)},
        "data": {"instance_data_dir": str(data), "instance_prompt": prompt_for(method)},
        "train": train_opts, "method": {"name": method, **(method_opts or {})},
    })


F2D_MSID_SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "ext_depths": [0, 1]}
F2D_MAP_SMALL = {"middle_dim": 32, "n_layer": 2, "dropout": 0.1, "exp_dim": 3}


def train_tiny_f2d(root: Path, msid_options: dict | None = None, map_options: dict | None = None):
    """Both Face2Diffusion stages on the toy world, 2 steps each with small networks: (msid file, encoder file)."""
    from personalize.config import load_config
    from personalize.trainer import train

    def config(out, method, batch):
        return load_config([], {"model": {"pretrained": "toyworld"},
                                "train": {"output_dir": str(out), "max_train_steps": 2, "train_batch_size": batch,
                                          "checkpointing_steps": 10_000, "report_to": "none", "learning_rate": 1e-3},
                                "method": method})

    msid = train(config(root / "msid", {"name": "f2d_msid", **(msid_options or F2D_MSID_SMALL)}, 4)).artifact
    f2d = train(config(root / "map", {"name": "face2diffusion", "msid": str(msid), **(map_options or F2D_MAP_SMALL)},
                       2)).artifact
    return msid, f2d


def train_argv(model, data, out, *extra):
    """`personalize train` argv for a rank-2 LoRA on a tiny model, no validation, no tracker."""
    return ["train", "--config", "lora", f"--model.pretrained={model}", f"--data.instance_data_dir={data}",
            f"--train.output_dir={out}", "--train.report_to=none", "--train.validation_prompt=null",
            "--method.rank=2", *extra]


def one_line(capsys) -> str:
    """The message: the last line of stderr (progress bars may come before it), and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith("\n"), err
    return err.splitlines()[-1]
