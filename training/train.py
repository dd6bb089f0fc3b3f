"""Train any method: `accelerate launch training/train.py --config configs/<method>.yaml [--a.b=value ...]`.

Several --config files merge left to right; dotted overrides win. The same as `personalize train ...` (which an
installed package provides); single-process `python training/train.py ...` works too and skips the launcher.
The loop is `personalize.trainer.train`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from personalize.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
