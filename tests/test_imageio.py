"""Reading user files: every odd or broken image gets a one-line error or a clean conversion."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fundus_studio import imageio, labels
from fundus_studio.errors import InputError


def _photo(h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(InputError, match=r"nope\.png: no such file"):
        imageio.read_image(tmp_path / "nope.png")


def test_folder_instead_of_file(tmp_path) -> None:
    with pytest.raises(InputError, match="is a folder"):
        imageio.read_image(tmp_path)


def test_empty_file(tmp_path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png: empty file"):
        imageio.read_image(tmp_path / "empty.png")


def test_non_image_file(tmp_path) -> None:
    (tmp_path / "notes.png").write_text("these are not pixels\n" * 20)
    with pytest.raises(InputError, match=r"notes\.png: not an image file"):
        imageio.read_image(tmp_path / "notes.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt: str) -> None:
    path = tmp_path / f"cut.{fmt.lower()}"
    Image.fromarray(_photo(256, 256)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.\w+: unreadable or truncated image"):
        imageio.read_image(path)


def test_too_small(tmp_path) -> None:
    Image.fromarray(_photo(40, 200)).save(tmp_path / "tiny.png")
    with pytest.raises(InputError, match=r"tiny\.png: image is 200×40 px; at least 64"):
        imageio.read_image(tmp_path / "tiny.png")


def test_rgba_is_composited_over_black(tmp_path) -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:32, :, 3] = 255  # top half opaque, bottom transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    img = imageio.read_image(tmp_path / "a.png")
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert (img[:32] == 200).all() and (img[32:] == 0).all()


def test_sixteen_bit_greyscale_is_rescaled(tmp_path) -> None:
    grey16 = np.full((64, 64), 65535, np.uint16)
    grey16[:, :32] = 32768
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    img = imageio.read_image(tmp_path / "g16.png")
    assert img.shape == (64, 64, 3)
    assert img[0, 63, 0] == 255 and abs(int(img[0, 0, 0]) - 128) <= 1


def test_palette_and_greyscale_become_rgb(tmp_path) -> None:
    Image.fromarray(_photo()).convert("P").save(tmp_path / "p.png")
    Image.fromarray(_photo()).convert("L").save(tmp_path / "l.png")
    assert imageio.read_image(tmp_path / "p.png").shape == (96, 128, 3)
    grey = imageio.read_image(tmp_path / "l.png")
    assert grey.shape == (96, 128, 3) and (grey[..., 0] == grey[..., 2]).all()


def test_huge_photo_is_downscaled_while_reading(tmp_path) -> None:
    Image.new("RGB", (5000, 3000), (180, 80, 40)).save(tmp_path / "big.jpg", quality=80)
    img = imageio.read_image(tmp_path / "big.jpg")
    assert max(img.shape[:2]) <= imageio.MAX_SIDE
    assert img.shape[1] / img.shape[0] == pytest.approx(5000 / 3000, rel=0.02)


def test_masks_rgb_binary_and_255(tmp_path) -> None:
    truth = np.zeros((64, 64), bool)
    truth[10:20, 30:40] = True
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[truth, 0] = 255  # IDRiD: lesion in the red channel
    Image.fromarray(rgb).save(tmp_path / "rgb.tif", format="TIFF")
    Image.fromarray(truth.astype(np.uint8)).save(tmp_path / "01.tif", format="TIFF")
    Image.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "255.png")
    for name in ("rgb.tif", "01.tif", "255.png"):
        assert np.array_equal(imageio.read_mask(tmp_path / name), truth), name


def test_label_map_forms(tmp_path) -> None:
    idx = np.zeros((64, 64), np.uint8)
    idx[8:40, 8:40] = labels.RETINA
    idx[20:24, :] = labels.VESSEL
    idx[30, 30] = labels.MICROANEURYSM
    imageio.save_label_png(tmp_path / "pal.png", idx)
    imageio.save_png(tmp_path / "col.png", labels.to_color(idx))
    Image.fromarray(idx).save(tmp_path / "raw.png")  # greyscale of raw indices
    for name in ("pal.png", "col.png", "raw.png"):
        assert np.array_equal(imageio.read_label_map(tmp_path / name), idx), name


def test_atomic_write_leaves_nothing_on_failure(tmp_path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with imageio.atomic_write(target) as fh:
            fh.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
