"""Where the bundled data lives: the toy world, its judges, the example subject, the configs.

Three places, first match wins:
  1. `$PERSONALIZE_DATA`, a folder holding `assets/` and `configs/` (an override: your own copy, a shared drive);
  2. the source checkout this package sits in (`pip install -e .` or running from a clone): `<repo>/assets`;
  3. the copy a wheel or a non-editable `pip install .` carries inside the package: `personalize/_data/`
     (pyproject's `package-dir` maps `assets/` and `configs/` there at build time).
"""

from __future__ import annotations

import os
from pathlib import Path

from personalize.errors import PersonalizeError

ENV = "PERSONALIZE_DATA"
_PACKAGE = Path(__file__).resolve().parent


def data_root() -> Path:
    """The folder holding `assets/` and `configs/` (see the module docstring for the order)."""
    override = os.environ.get(ENV)
    if override:
        root = Path(override).expanduser()
        if not (root / "assets").is_dir():
            raise PersonalizeError(f"${ENV}={override!r} must be a folder holding assets/ (and configs/); "
                                   f"{root / 'assets'} is not a folder")
        return root
    checkout = _PACKAGE.parent
    if (checkout / "assets" / "toyworld" / "model_index.json").is_file():
        return checkout
    return _PACKAGE / "_data"


def asset(*parts: str) -> Path:
    """`assets/<parts>` in the data root, e.g. asset("examples", "outlined-circle")."""
    return data_root().joinpath("assets", *parts)


def config_file(*parts: str) -> Path:
    """`configs/<parts>` in the data root, e.g. config_file("lora.yaml")."""
    return data_root().joinpath("configs", *parts)
