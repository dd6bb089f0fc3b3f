"""Concept images and the pure pieces of the training step, checked against hand-computed values."""

import random

import pytest
import torch
from PIL import Image

from personalize.data import (
    ConceptImages, DataError, Example, PositionSampler, examples_from_folder, list_images,
    load_image, read_caption, rescale_augment, resize_crop,
)
from personalize.methods.blocks import masked_mse, snr_weights
from personalize.photos import to_rgb


def test_list_images_accepts_images_captions_and_hidden_files(tmp_path):
    for name in ["b.png", "a.JPG", "c.jpeg", "d.webp"]:
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG" if name.endswith("png") else
                                      "JPEG" if "jp" in name.lower() else "WEBP")
    (tmp_path / "a.txt").write_text("a caption")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.jpeg", "d.webp"]


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "has no images"),
    (lambda d: (d / "x.gif").write_bytes(b"GIF89a"), "not images: ['x.gif']"),
    (lambda d: (d / "x.png").write_text("hello"), "x.png: not a readable image"),
])
def test_bad_folders_name_the_problem(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        examples_from_folder(tmp_path, "a photo", "data.instance_data_dir")


def test_missing_folder_and_unset_folder(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        list_images(tmp_path / "nope")
    with pytest.raises(DataError, match="is not set"):
        list_images(None)


def test_truncated_image_is_an_error_naming_it(tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="a.png"):
        load_image(tmp_path / "a.png")


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (30, 10), "blue")
    image.paste(Image.new("RGB", (5, 10), "red"), (0, 0))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    loaded = load_image(tmp_path / "r.jpg")
    assert loaded.size == (10, 30)
    r, g, b = loaded.getpixel((5, 2))  # the left strip is now at the top
    assert r > 200 and b < 60


def test_transparency_is_flattened_onto_white(tmp_path):
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 255))
    image.save(tmp_path / "t.png")
    loaded = load_image(tmp_path / "t.png")
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (255, 0, 0)
    half = to_rgb(Image.new("LA", (1, 1), (0, 128)))
    assert half.getpixel((0, 0))[0] in (127, 128)  # black at half alpha on white


def test_caption_from_txt_beside_the_image(tmp_path):
    (tmp_path / "a.png").touch()
    (tmp_path / "a.txt").write_text("  a photo of {} on grass \n")
    assert read_caption(tmp_path / "a.png", "default") == "a photo of {} on grass"
    assert read_caption(tmp_path / "b.png", "default") == "default"
    with pytest.raises(DataError, match="has no caption"):
        read_caption(tmp_path / "b.png", None)


def test_resize_crop_center_and_random():
    image = Image.new("RGB", (40, 20))
    image.paste(Image.new("RGB", (20, 20), "white"), (10, 0))  # white middle half
    center, offset = resize_crop(image, 10, True, random.Random(0))
    assert center.size == (10, 10) and offset == (5, 0)
    assert center.convert("L").getextrema()[0] > 200  # the center crop is the white middle
    offsets = {resize_crop(image, 10, False, random.Random(s))[1] for s in range(30)}
    assert len(offsets) > 3 and all(0 <= x <= 10 and y == 0 for x, y in offsets)


def test_dataset_item_is_fixed_by_its_key(tmp_path):
    image = Image.new("RGB", (24, 16), "red")
    image.paste(Image.new("RGB", (4, 4), "white"), (0, 0))
    image.save(tmp_path / "a.png")
    ds = ConceptImages([Example(tmp_path / "a.png", ["t1 {}", "t2 {}"])], 16, center_crop=False,
                       random_flip=True, vae_factor=2)
    a, b = ds[(0, 123)], ds[(0, 123)]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["caption"] == b["caption"]
    assert a["pixel_values"].shape == (3, 16, 16) and a["mask"].shape == (8, 8)
    assert -1.0 <= a["pixel_values"].min() and a["pixel_values"].max() <= 1.0
    variants = {(ds[(0, s)]["caption"], ds[(0, s)]["pixel_values"].sum().item()) for s in range(40)}
    assert len({c for c, _ in variants}) == 2 and len({v for _, v in variants}) > 2
    assert a["cache_key"] is None  # a random crop cannot be cached


def test_position_sampler_covers_each_image_once_per_epoch_and_resumes():
    single = PositionSampler(5, 2, seed=3)
    stream = [i for m in range(5) for i, _ in single.keys(m)]  # 10 samples = 2 epochs
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:]) == list(range(5))
    resumed = iter(PositionSampler(5, 2, seed=3, start=3))
    assert next(resumed) == single.keys(3)
    # two ranks together draw what one process draws, interleaved by micro-batch
    r0, r1 = PositionSampler(5, 2, 3, rank=0, world=2), PositionSampler(5, 2, 3, rank=1, world=2)
    assert r0.keys(0) + r1.keys(0) == single.keys(0) + single.keys(1)
    assert PositionSampler(5, 2, seed=4).keys(0) != single.keys(0)


def test_rescale_augment_masks_the_blank_canvas():
    pixels = torch.ones(3, 32, 32)
    for seed in range(30):
        out, mask, prefix = rescale_augment(pixels, random.Random(seed), factor=4)
        assert out.shape == (3, 32, 32) and mask.shape == (8, 8)
        covered = (out.abs().sum(0) > 0).float()
        if prefix in ("zoomed in ", "close up "):  # enlarged and cropped: everything is image
            assert covered.min() == 1.0 and mask.min() == 1.0
        else:  # shrunk onto a blank canvas: masked cells lie inside the image, one cell in from its edge
            cells = torch.nn.functional.avg_pool2d(covered[None, None], 4)[0, 0]
            assert 0 < mask.sum() < 64 and torch.all(cells[mask > 0] == 1.0)
            assert prefix in ("", "a far away ", "very small ")


def test_masked_mse_hand_computed():
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]], [[3.0, 0.0], [0.0, 0.0]]]])
    assert torch.allclose(masked_mse(pred, target), torch.tensor([(1 + 4 + 9) / 8]))
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # only the top-left cell
    # Custom Diffusion: sum over channels of the masked errors / number of masked cells = (1 + 9) / 1
    assert torch.allclose(masked_mse(pred, target, mask), torch.tensor([10.0]))


def test_snr_weights_hand_computed():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="linear", beta_start=0.1, beta_end=0.2, num_train_timesteps=2)
    # alpha_bar_0 = 0.9, alpha_bar_1 = 0.9 * 0.8 = 0.72; SNR = a / (1 - a) = 9 and 2.5714
    t = torch.tensor([0, 1])
    assert torch.allclose(snr_weights(sched, t, 5.0), torch.tensor([5 / 9, 1.0]), atol=1e-5)
    sched_v = DDPMScheduler(beta_schedule="linear", beta_start=0.1, beta_end=0.2, num_train_timesteps=2,
                            prediction_type="v_prediction")
    assert torch.allclose(snr_weights(sched_v, t, 5.0), torch.tensor([5 / 10, (0.72 / 0.28) / (0.72 / 0.28 + 1)]),
                          atol=1e-5)


def test_missing_class_images_tops_up_to_the_number_asked(tmp_path):
    from personalize.data import missing_class_images

    assert missing_class_images(tmp_path / "none", 3) == [0, 1, 2]
    Image.new("RGB", (4, 4)).save(tmp_path / "class-00000.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "mine.jpg")  # a user's own class image counts too
    (tmp_path / "mine.txt").write_text("a dog")
    assert missing_class_images(tmp_path, 4) == [1, 2]
    assert missing_class_images(tmp_path, 2) == []
