"""Train any method: `accelerate launch training/train.py --config configs/<method>.yaml [--a.b=value ...]`.

Several --config files merge left to right; dotted overrides win. Thin on purpose: the loop
is `personalize.trainer.train`.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from personalize.config import load_config
    from personalize.errors import PersonalizeError
    from personalize.trainer import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[], help="YAML config (repeatable)")
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = train(load_config(args.config, overrides))
    except PersonalizeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.artifact is not None:
        print(result.artifact)
    return 0


if __name__ == "__main__":
    sys.exit(main())
