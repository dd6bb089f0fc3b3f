"""training/train.py as users run it: configs, overrides, bad inputs, and two processes under accelerate launch."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write_concept_images

from personalize.artifacts import read_safetensors

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "training" / "train.py"


def _main():
    spec = importlib.util.spec_from_file_location("train_entry", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _args(model, data, out, *extra):
    return ["--config", str(ROOT / "configs" / "lora.yaml"), f"--model.pretrained={model}",
            f"--data.instance_data_dir={data}", f"--train.output_dir={out}", "--train.max_train_steps=2",
            "--train.report_to=none", "--train.validation_prompt=null", *extra]


def test_accelerate_config_files_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    single = load_config_from_file(str(ROOT / "training" / "accelerate.yaml"))
    zero2 = load_config_from_file(str(ROOT / "training" / "deepspeed_zero2.yaml"))
    assert (single.distributed_type.value, single.num_processes) == ("NO", 1)
    assert zero2.distributed_type.value == "DEEPSPEED" and zero2.deepspeed_config["zero_stage"] == 2


def test_config_and_overrides_train_an_artifact(tmp_path, tiny_sd1, concept_dir, capsys):
    assert _main()(_args(tiny_sd1, concept_dir, tmp_path / "out", "--method.rank=2")) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path == tmp_path / "out" / "lora.safetensors" and path.is_file()
    down = [v for k, v in read_safetensors(path)[0].items() if k.endswith(".lora_down.weight")]
    assert down and all(v.shape[0] == 2 for v in down)  # the override reached the method


def _bad_folder(tmp_path, kind):
    folder = write_concept_images(tmp_path / "data")
    if kind == "empty":
        for p in folder.iterdir():
            p.unlink()
    elif kind == "corrupt":
        (folder / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    elif kind == "non-image":
        (folder / "notes.md").write_text("my cat")
    return folder


@pytest.mark.parametrize("kind, extra, message", [
    ("empty", [], "has no images"),
    ("corrupt", [], "3.jpg: not a readable image"),
    ("non-image", [], "not images: ['notes.md']"),
    ("ok", ["--method.name=dreamboat"], "unknown method 'dreamboat'"),
    ("ok", ["--method.placeholder_token=cat"], "belongs to method textual_inversion / dct, not lora"),
    ("ok", ["--train.learnign_rate=1"], "unknown config key 'train.learnign_rate'"),
    ("ok", ["--data.instance_prompt=a {} dog"], "adds no token"),
])
def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path, tiny_sd1, capsys, kind, extra, message):
    folder = _bad_folder(tmp_path, kind)
    out = tmp_path / "out"
    assert _main()(_args(tiny_sd1, folder, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("personalize train: error: ") and message in err
    assert not out.exists()


def test_bad_input_exit_code_from_a_real_process(tmp_path, tiny_sd1):
    folder = _bad_folder(tmp_path, "empty")
    proc = subprocess.run([sys.executable, str(TRAIN), *_args(tiny_sd1, folder, tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "has no images" in proc.stderr
    assert "Traceback" not in proc.stderr


def _launch(n: int, script: list[str], env: dict, cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", *script]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def test_launch_where_every_process_thinks_it_is_rank_zero_is_refused(tmp_path, tiny_sd1, concept_dir):
    """--multi_gpu on a machine without GPUs and without ACCELERATE_USE_CPU: two worlds of one."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"} | {"CUDA_VISIBLE_DEVICES": ""}
    proc = _launch(2, [str(TRAIN), *_args(tiny_sd1, concept_dir, tmp_path / "out")], env, tmp_path)
    assert proc.returncode != 0
    assert "every process would act as rank 0" in proc.stderr and "ACCELERATE_USE_CPU=1" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_two_processes_train_identical_weights_and_only_rank0_writes(tmp_path, tiny_sd1, concept_dir):
    """ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 (gloo on this CPU machine)."""
    out, dumps = tmp_path / "out", tmp_path / "dumps"
    overrides = _args(tiny_sd1, concept_dir, out, "--train.checkpointing_steps=1", "--method.name=textual_inversion",
                      "--train.learning_rate=5e-2", "--method.rank=null")[2:]
    overrides = [o for o in overrides if not o.startswith("--method.rank")]
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = _launch(2, [str(ROOT / "tests" / "dist_train.py"), str(dumps), *overrides], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (read_safetensors(dumps / f"rank{r}.safetensors")[0] for r in (0, 1))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "checkpoint-2", "config.yaml", "sks.safetensors"]
    final = read_safetensors(out / "sks.safetensors")[0]["sks"]
    table = next(v for k, v in rank0.items() if k.endswith("token_embedding.weight"))  # (49409, 32)
    assert len(rank0) > 50 and table.shape[0] == 49409 and torch.equal(final, table[-1:])
    from transformers import CLIPTokenizer

    init_id = CLIPTokenizer.from_pretrained(str(tiny_sd1), subfolder="tokenizer").encode("object")[1]
    assert not torch.allclose(final[0], table[init_id])  # the row was trained, from the initializer's
