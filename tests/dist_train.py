"""Run under `accelerate launch` by test_train_cli.py: train, then dump this rank's UNet and text encoder.

    dist_train.py <dump_dir> <override>...    (overrides as for training/train.py)

On ranks other than 0 every atomic write of the library raises, so a test run fails if any rank but the main
one writes an artifact, a checkpoint, a config or a validation image.
"""

import os
import sys
from pathlib import Path


def main() -> int:
    import personalize.atomic as atomic
    from safetensors.torch import save_file

    from personalize.config import load_config
    from personalize.trainer import train

    dump_dir, overrides = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        def refuse(path):
            raise AssertionError(f"rank {rank} tried to write {path}")
        atomic.atomic_path = refuse
    result = train(load_config([], overrides))
    c = result.method.c
    state = {f"{name}.{k}": v.detach().contiguous() for name, module in (("unet", c.unet), ("te", c.text_encoder))
             for k, v in module.state_dict().items()}
    dump_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dump_dir / f"rank{rank}.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
