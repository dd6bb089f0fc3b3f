"""A non-editable install carries what the commands need, and runs from any folder (no checkout in sight).

The wheel is built offline from a copy of the sources (`pip wheel --no-build-isolation --no-index`), installed
with `--no-deps` into a bare venv that borrows this venv's dependencies through a .pth line (a path listed in a
.pth is not itself a site folder, so this venv's editable-install hook is not run there), and every command runs
from a temporary directory.
"""

import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_list_matches_the_package_folders():
    """pyproject lists packages by hand (so that the data can be mapped in): a new subpackage must be listed."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "personalize").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject [tool.setuptools] packages: {sorted(found - listed)}"


def _run(cmd, cwd, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a venv holding the built wheel, a working folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("personalize", "assets", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          str(src), "-w", str(tmp / "dist")], cwd=tmp)
    wheel = next((tmp / "dist").glob("personalize-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("personalize/_data/assets/toyworld/model_index.json",
                   "personalize/_data/assets/toyworld_judge_b/judge.safetensors",
                   "personalize/_data/assets/examples/outlined-circle/0.png",
                   "personalize/_data/configs/lora.yaml", "personalize/_data/configs/toyworld/sude.yaml",
                   "personalize/app/main.py"):
        assert needed in names, f"the wheel lacks {needed}"
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       cwd=tmp).stdout.strip())
    (target / "borrowed-deps.pth").write_text(site.getsitepackages()[0] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], cwd=tmp)
    work = tmp / "elsewhere"
    work.mkdir()
    return python, work


def test_installed_package_finds_its_data_outside_the_checkout(installed):
    python, work = installed
    out = _run([str(python), "-c", "import personalize, personalize.resources as r; "
                "print(personalize.__file__); print(r.data_root())"], cwd=work).stdout.split()
    assert not out[0].startswith(str(ROOT)) and out[1].endswith("personalize/_data"), out
    _run([str(python), "-c", "from personalize.toyworld import Judge; Judge.load('b'); Judge.load('a'); "
          "import personalize.app.main"], cwd=work)
    config = _run([str(python), "-m", "personalize.cli", "config", "--config", "configs/toyworld/sude.yaml"],
                  cwd=work).stdout
    assert "name: sude" in config


def test_installed_generate_and_quickstart_run_from_another_folder(installed):
    python, work = installed
    _run([str(python), "-m", "personalize.cli", "generate", "--prompt", "a red circle", "--steps", "2",
          "--out", "gen", "--no-progress"], cwd=work)
    assert (work / "gen" / "grid.png").is_file()
    _run([str(python), "-m", "personalize.cli", "quickstart", "--out", "qs", "--seeds", "1", "--train-steps", "3"],
         cwd=work)
    assert (work / "qs" / "report.md").is_file() and (work / "qs" / "subject.png").is_file()
