"""Every kind of image a third-party folder holds: read as the RGB picture training needs, or refused by name.

    pytest -q tests/test_images.py
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from data_pipeline.row_steps import FilterBatch, reason_group
from vlm_core.data.dataset import ConversationDataset, DataError
from vlm_core.data.images import ImageError, image_problem, open_rgb

from .conftest import formatter_for


def _jpeg_bytes(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    rng = np.random.default_rng(0)  # texture: a plain colour would compress into too few bytes to truncate
    arr = np.clip(np.array(colour) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_every_mode_becomes_rgb_with_its_colours(tmp_path):
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)  # red in CMYK
    Image.new("L", (8, 6), 128).save(tmp_path / "grey.png")
    Image.fromarray(np.full((6, 8), 65535, np.uint16)).save(tmp_path / "white16.png")  # 16-bit: white, not clipped
    Image.new("RGBA", (8, 6), (0, 0, 255, 0)).save(tmp_path / "clear.png")  # fully transparent blue
    Image.new("LA", (8, 6), (0, 255)).save(tmp_path / "black_la.png")  # opaque black
    pal = Image.new("P", (8, 6), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.save(tmp_path / "green.gif")
    pal.save(tmp_path / "clear.gif", transparency=1)
    frames = [Image.new("RGB", (8, 6), c) for c in ("blue", "red", "red")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    expected = {"cmyk.jpg": (255, 0, 0), "grey.png": (128, 128, 128), "white16.png": (255, 255, 255),
                "clear.png": (255, 255, 255), "black_la.png": (0, 0, 0), "green.gif": (0, 200, 0),
                "clear.gif": (255, 255, 255), "anim.gif": (0, 0, 255)}
    for name, colour in expected.items():
        img = open_rgb(tmp_path / name)
        assert img.mode == "RGB" and img.size == (8, 6), name
        assert np.abs(np.asarray(img)[3, 4].astype(int) - colour).max() <= 3, (name, np.asarray(img)[3, 4])


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (8, 4), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": a phone held upright
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert open_rgb(tmp_path / "phone.jpg").size == (4, 8)


def test_broken_images_are_refused_by_name_with_the_fix(tmp_path):
    good = _jpeg_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_bytes(b"<html>404 not found</html>")
    Image.new("RGB", (60, 50)).save(tmp_path / "big.png")
    with Image.open(tmp_path / "truncated.jpg") as img:
        img.verify()  # the header check alone passes a truncated JPEG: only a full decode finds it
    cases = {"truncated.jpg": "cannot be decoded", "empty.jpg": "empty (0 bytes)",
             "text.jpg": "not a readable image", "missing.jpg": "image not found",
             "big.png": "image too large (60×50 = 0.003 megapixels, over the 0.002 MP cap"}
    for name, problem in cases.items():
        with pytest.raises(ImageError, match="data build --check-images") as err:
            open_rgb(tmp_path / name, max_pixels=2000)
        assert str(tmp_path / name) in str(err.value) and problem in str(err.value), str(err.value)
        assert image_problem(tmp_path / name, max_pixels=2000).startswith(err.value.problem)
    assert image_problem(tmp_path / "big.png") is None  # under the default cap


def test_data_build_quarantines_each_broken_image_counted_by_kind(tmp_path):
    (tmp_path / "coco").mkdir()
    good = _jpeg_bytes()
    (tmp_path / "coco" / "ok.jpg").write_bytes(good)
    (tmp_path / "coco" / "cut1.jpg").write_bytes(good[:-600])
    (tmp_path / "coco" / "cut2.jpg").write_bytes(good[: len(good) // 3])
    images = ["coco/ok.jpg", "coco/cut1.jpg", "coco/cut2.jpg"]
    out = FilterBatch("coco/", True, str(tmp_path))({"image": images, "reason": [""] * 3, "stage": [""] * 3})
    assert out["reason"][0] == "" and out["stage"] == ["", "image", "image"]
    assert reason_group(out["reason"][1]) == reason_group(out["reason"][2]) == "image cannot be decoded"


def test_training_names_the_record_and_file_of_a_bad_image(tmp_path, tiny_cfg, tiny_model):
    (tmp_path / "a.jpg").write_bytes(_jpeg_bytes()[:300])
    rec = {"id": "row-7", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                              {"from": "gpt", "value": "A cat."}]}
    ds = ConversationDataset([rec], formatter_for(tiny_cfg), tiny_model.vision.preprocess, tmp_path)
    with pytest.raises(DataError, match=r"record row-7: .*a\.jpg: image cannot be decoded"):
        ds[0]
