"""The Gradio app on the toy world: Studio (no UI), the API through gradio_client, security, and the queue."""

import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from personalize.artifacts import ArtifactError, save_embedding
from personalize.errors import PersonalizeError

PROMPT = "a photo of a smiling person wearing glasses"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    arts = root / "artifacts"
    save_embedding(arts, "sks", torch.randn(1, 48, generator=torch.Generator().manual_seed(0)) * 2,
                   "textual_inversion", "toyworld")
    save_embedding(arts, "wide", torch.randn(1, 768), "textual_inversion", "sd15")  # another model family
    _save_erasure(arts / "erase.safetensors")
    return arts, root / "outputs"


def _save_erasure(path):
    """An erasure-kind artifact (a random difference on one cross-attention value projection)."""
    from personalize.artifacts import save_artifact
    from personalize.pipeline import load_pipeline

    unet = load_pipeline("toyworld", device="cpu").sd.unet.state_dict()
    key = next(k for k in unet if "attn2.to_v" in k)
    diff = torch.randn(unet[key].shape, generator=torch.Generator().manual_seed(0))
    save_artifact(path, "esd", "toyworld", weights={f"unet.{key}": diff}, kind="diff", concepts="a triangle")


@pytest.fixture(scope="module")
def studio(folders):
    from personalize.pipeline import load_pipeline
    from personalize.studio import Studio

    return Studio(load_pipeline("toyworld", device="cpu"), *folders)


# ------------------------------------------------------------------------------------------- Studio


def test_checkpoint_folders_are_not_listed(tmp_path):
    from personalize.studio import scan_artifacts

    save_embedding(tmp_path / "run", "tok", torch.randn(1, 48), "textual_inversion", "toyworld")
    save_embedding(tmp_path / "run" / "checkpoint-100", "tok", torch.randn(1, 48), "textual_inversion", "toyworld")
    assert [Path(e.path).relative_to(tmp_path).as_posix() for e in scan_artifacts(tmp_path, 48)] == ["run/tok.safetensors"]


def test_app_command_line(capsys):
    from personalize.cli import main

    with pytest.raises(SystemExit) as done:
        main(["app", "--help"])
    assert done.value.code == 0 and "--artifacts-dir" in capsys.readouterr().out
    assert main(["app", "--base", "/no/such/model", "--port", str(free_port())]) == 2
    assert "personalize app: error:" in capsys.readouterr().err


def test_entries_list_every_file_with_its_metadata(studio):
    entries = {e.name: e for e in studio.entries()}
    assert entries["sks"].usable and entries["sks"].triggers == ["sks"] and entries["sks"].base_model == "toyworld"
    assert "textual_inversion" in entries["sks"].label
    assert not entries["wide"].usable and "768" in entries["wide"].reason and "48" in entries["wide"].reason


def test_a_class_token_is_listed_with_its_class(tmp_path):
    from personalize.studio import describe

    path = save_embedding(tmp_path, "dct-tiger-cat", torch.randn(1, 48), "dct", "toyworld", target_label="tiger cat")
    entry = describe(path, 48)
    assert entry.usable and "| dct | dct-tiger-cat (class: tiger cat) | base: toyworld" in entry.label


def test_generate_swaps_artifacts_and_honours_the_seed(studio, folders):
    plain = studio.generate(PROMPT, seed=7, steps=5, num_images=1)[0]
    with_sks = studio.generate(PROMPT + " sks", artifacts=["sks.safetensors"], seed=7, steps=5)[0]
    assert [a.name for a in studio.pipe.artifacts] == ["sks"]
    again = studio.generate(PROMPT, seed=7, steps=5)[0]  # the artifact is taken off again
    assert studio.pipe.artifacts == []
    assert np.array_equal(np.asarray(plain.image), np.asarray(again.image))
    assert with_sks.settings["artifacts"] == ["sks"]
    drawn = studio.generate(PROMPT, seed=-1, steps=2)[0]
    assert drawn.settings["seed"] >= 0 and f"seeds: {drawn.settings['seed']}" in studio.info([drawn])


def test_bad_requests_are_refused(studio):
    with pytest.raises(PersonalizeError, match="not a .safetensors file in"):
        studio.generate(PROMPT, artifacts=["../../etc/passwd"], steps=2)
    with pytest.raises(PersonalizeError, match="prompt is empty"):
        studio.generate("  ", steps=2)


def test_check_refuses_what_generate_would_refuse_without_denoising(studio, monkeypatch):
    monkeypatch.setattr(studio.pipe, "generate", lambda *a, **k: pytest.fail("check must not generate"))
    studio.check(PROMPT)  # good settings: no error
    with pytest.raises(PersonalizeError, match="prompt is empty"):
        studio.check("")
    with pytest.raises(PersonalizeError, match="1..16"):
        studio.check(PROMPT, num_images=17)
    with pytest.raises(PersonalizeError, match="not a .safetensors file in"):
        studio.check(PROMPT, artifacts=["../x.safetensors"])
    with pytest.raises(PersonalizeError, match="zebra"):  # a suppressed word that is not in the prompt
        studio.check(PROMPT, edits={"suppress_eot": {"words": ["zebra"]}})


def test_compare_shows_each_seed_with_and_without_the_erasure(tmp_path):
    from personalize.pipeline import load_pipeline
    from personalize.studio import Studio

    pipe = load_pipeline("toyworld", device="cpu")
    _save_erasure(tmp_path / "erase.safetensors")
    save_embedding(tmp_path, "sks", torch.randn(1, 48, generator=torch.Generator().manual_seed(0)),
                   "textual_inversion", "toyworld")
    studio = Studio(pipe, tmp_path, tmp_path / "out")
    chosen = ["sks.safetensors", "erase.safetensors"]
    assert studio.erasures(chosen) == ["erase.safetensors"]
    erased, without = studio.compare(PROMPT + " sks", "", chosen, seed=-1, steps=5, num_images=2)
    seeds = [g.settings["seed"] for g in erased]
    assert [g.settings["seed"] for g in without] == seeds and seeds[1] == seeds[0] + 1
    assert without[0].settings["artifacts"] == ["sks"] and erased[0].settings["artifacts"] == ["sks", "erase"]
    alone = studio.generate(PROMPT + " sks", artifacts=["sks.safetensors"], seed=seeds[0], steps=5, num_images=2)[0]
    assert np.array_equal(np.asarray(alone.image), np.asarray(without[0].image))  # the same seed, the erasure off
    assert not np.array_equal(np.asarray(erased[0].image), np.asarray(without[0].image))
    with pytest.raises(PersonalizeError, match="needs an erasure artifact"):
        studio.check(PROMPT, ["sks.safetensors"], compare=True)
    with pytest.raises(PersonalizeError, match="needs an erasure artifact"):
        studio.compare(PROMPT, "", ["sks.safetensors"], seed=1, steps=2)


def test_save_writes_pngs_with_settings(studio, folders):
    images = studio.generate(PROMPT, seed=3, steps=3, num_images=2)
    paths = studio.save(images)
    assert len(paths) == 2 and all(p.parent == folders[1] for p in paths)
    with Image.open(paths[1]) as im:
        assert "Seed: 4" in im.text["parameters"]


def test_upload_refuses_pickles_and_copies_good_files(studio, tmp_path):
    pickle = tmp_path / "evil.pt"
    torch.save({"emb_params": torch.ones(1, 48)}, str(pickle))
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(pickle.read_bytes())
    for bad in (pickle, disguised):
        with pytest.raises(ArtifactError, match="pickle"):
            studio.upload(bad)
    assert not (studio.artifacts_dir / "evil.safetensors").exists() and not (studio.artifacts_dir / "evil.pt").exists()
    good = save_embedding(tmp_path, "newtok", torch.randn(1, 48), "textual_inversion", "toyworld")
    assert studio.upload(good).usable and (studio.artifacts_dir / "newtok.safetensors").is_file()
    with pytest.raises(ArtifactError, match="already"):
        studio.upload(good)


# ------------------------------------------------------------------------------------ the running app


@pytest.fixture(scope="module")
def server(folders):
    from app.main import build_parser, make_app

    arts, outputs = folders
    port = free_port()
    args = build_parser().parse_args(["--artifacts-dir", str(arts), "--outputs-dir", str(outputs),
                                      "--port", str(port), "--queue-size", "3", "--device", "cpu"])
    demo, launch = make_app(args)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch)
    yield f"http://127.0.0.1:{port}/", demo, args
    demo.close()


def _call(client, seed, artifacts=(), steps=4, n=2, prompt=PROMPT):
    return client.predict(prompt, "", list(artifacts), seed, steps, 5, 32, 32, n, "", "off", api_name="/generate")


def _pixels(gallery) -> list[np.ndarray]:
    return [np.asarray(Image.open(item["image"]).convert("RGB")) for item in gallery]


def test_api_generates_with_and_without_an_artifact(server):
    from gradio_client import Client

    client = Client(server[0], verbose=False)
    plain, info = _call(client, 11)
    same, _ = _call(client, 11)
    other, _ = _call(client, 12)
    with_art, _ = _call(client, 11, ["sks.safetensors"], prompt=PROMPT + " sks")
    assert len(plain) == 2 and info.startswith("seeds: 11, 12")
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(plain), _pixels(same)))  # same seed, same image
    assert not np.array_equal(_pixels(plain)[0], _pixels(other)[0])
    assert not np.array_equal(_pixels(plain)[0], _pixels(with_art)[0])
    saved = client.predict(api_name="/save")  # this client's session: the last run, with the artifact
    written = [Path(p) for p in re.findall(r"`([^`]+)`", saved)]
    assert saved.startswith("Saved:") and len(written) == 2
    assert all(p.parent == Path(server[2].outputs_dir) for p in written)
    with Image.open(written[0]) as im:
        assert '"artifacts": ["sks"]' in im.text["personalize"] and "Seed: 11" in im.text["parameters"]


def test_api_suppression(server):
    from gradio_client import Client

    client = Client(server[0], verbose=False)
    plain, _ = _call(client, 5, steps=10, n=1)
    suppressed, info = client.predict(PROMPT, "", [], 5, 10, 5, 32, 32, 1, "glasses", "swr", api_name="/generate")
    assert '"suppress"' in info and not np.array_equal(_pixels(plain)[0], _pixels(suppressed)[0])
    with pytest.raises(Exception, match="cannot suppress .zebra."):  # the API refuses it too (the page's check step is private)
        client.predict(PROMPT, "", [], 5, 10, 5, 32, 32, 1, "zebra", "swr", api_name="/generate")
    assert "/check" not in str(client.view_api(print_info=False, return_format="dict"))


def test_api_compare_pairs_each_seed_and_refuses_without_an_erasure(server):
    from gradio_client import Client

    client = Client(server[0], verbose=False)
    pairs, info = client.predict(PROMPT, "", ["erase.safetensors"], 5, 4, 5, 32, 32, 1, "", "off", True,
                                 api_name="/generate")
    assert [item["caption"] for item in pairs] == ["seed 5 · without erasure", "seed 5 · erased"]
    plain, _ = _call(client, 5, n=1)
    without, erased = _pixels(pairs)
    assert np.array_equal(without, _pixels(plain)[0]) and not np.array_equal(without, erased)
    with pytest.raises(Exception, match="needs an erasure artifact"):
        client.predict(PROMPT, "", [], 5, 2, 5, 32, 32, 1, "", "off", True, api_name="/generate")


def test_files_outside_the_allowed_folders_are_not_served(server):
    import requests

    url, demo, _ = server
    source = Path(__file__).resolve().parents[1] / "app" / "ui.py"
    for path in ("/etc/passwd", str(source), "../../etc/passwd"):
        for prefix in ("gradio_api/file=", "file="):
            r = requests.get(url + prefix + path, timeout=10)
            assert r.status_code in (403, 404), (prefix, path, r.status_code)
    assert demo.server_name == "127.0.0.1"


def test_pickle_upload_is_refused_through_the_app(server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server[0], verbose=False)
    pickle = tmp_path / "model.safetensors"
    torch.save({"emb_params": torch.ones(1, 48)}, str(pickle))
    with pytest.raises(Exception, match="pickle"):
        client.predict(handle_file(str(pickle)), api_name="/upload")


def test_ten_concurrent_requests_finish_or_are_refused(server):
    from gradio_client import Client

    client = Client(server[0], verbose=False)
    jobs = [client.submit(PROMPT, "", [], i, 4, 5, 32, 32, 1, "", "off", api_name="/generate") for i in range(10)]
    outcomes = []
    start = time.time()
    for job in jobs:
        try:
            gallery, _ = job.result(timeout=120)
            outcomes.append("done" if len(gallery) == 1 else "bad")
        except Exception as err:  # refused by the queue limit: a clean error, not a hang
            outcomes.append("refused" if "queue" in str(err).lower() else f"error: {err}")
    print(f"10 concurrent requests, queue size 3: {outcomes} in {time.time() - start:.1f} s")
    assert time.time() - start < 120
    assert set(outcomes) <= {"done", "refused"}, outcomes
    assert outcomes.count("done") >= 3, outcomes


def test_api_exports_a_file_for_other_tools(server):
    """The export accordion: the chosen file as a kohya LoRA under the outputs folder, downloaded through the
    app; an export that cannot be made is a message naming why."""
    from gradio_client import Client
    from safetensors.torch import load_file

    client = Client(server[0], verbose=False)
    files, text = client.predict("erase.safetensors", "lora", api_name="/export")
    (lora,) = files
    keys = load_file(lora)
    assert keys and all(k.startswith("lora_unet_") and "_attn2_to_v." in k for k in keys)
    assert text.startswith("$ personalize export ") and "--format lora" in text and "rank" in text
    assert (Path(server[2].outputs_dir) / "exports" / "erase-lora.safetensors").is_file()
    with pytest.raises(Exception, match="no token embedding"):
        client.predict("erase.safetensors", "embedding", api_name="/export")
