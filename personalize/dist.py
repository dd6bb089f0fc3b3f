"""Process state for multi-process runs under `accelerate launch`, with the one CPU quirk handled.

`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 ...` starts two
processes with RANK/WORLD_SIZE set, but a bare `PartialState()` ignores ACCELERATE_USE_CPU (only
`AcceleratorState` reads it), so on a machine without GPUs each process would believe it is rank 0 of 1
and both would write the same files. We pass the flag through, and refuse a mismatch.
"""

from __future__ import annotations

import os

from personalize.errors import PersonalizeError


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def check_world(num_processes: int) -> None:
    """Refuse to run when the launcher started N processes but each of them sees a world of fewer."""
    launched = launched_world_size()
    if launched != num_processes:
        raise PersonalizeError(
            f"the launcher started {launched} processes (WORLD_SIZE) but this one sees a world of {num_processes}: "
            "every process would act as rank 0 and write the same files. On a machine without GPUs launch with "
            "ACCELERATE_USE_CPU=1 (or `accelerate launch --cpu`)"
        )


def process_state():
    """An accelerate `PartialState` that honours ACCELERATE_USE_CPU, checked against WORLD_SIZE."""
    from accelerate import PartialState

    state = PartialState(cpu=env_flag("ACCELERATE_USE_CPU"))
    check_world(state.num_processes)
    return state
