"""Run under `accelerate launch` by test_train_dist.py: train, then dump this rank's trainable weights.

    dist_train.py <dump_dir> <override>...    (overrides as for training/train.py)

On ranks other than 0 every atomic write of the library raises, so a test run fails if any rank but the main
one writes an artifact, a checkpoint, a config or a validation image.
"""

import os
import sys
from pathlib import Path


def main() -> int:
    import personalize.artifacts as artifacts
    from safetensors.torch import save_file

    from personalize.config import load_config
    from personalize.trainer import train

    dump_dir, overrides = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        def refuse(path):
            raise AssertionError(f"rank {rank} tried to write {path}")
        artifacts.atomic_path = refuse
    result = train(load_config([], overrides))
    state = {k: v.contiguous() for k, v in result.method.trainable_state().items()}
    dump_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dump_dir / f"rank{rank}.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
