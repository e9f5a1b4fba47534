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


# --- EXIF orientation -----------------------------------------------------------------------------


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _upright_photo() -> np.ndarray:
    """A (96, 128) photo with a bright "disc" near the top-left corner: where it lands shows the turn."""
    img = np.full((96, 128, 3), 60, np.uint8)
    img[8:24, 10:30] = 250
    return img


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_photo_stored_turned_with_orientation_6_comes_back_upright(tmp_path, fmt: str) -> None:
    upright = _upright_photo()
    # Tag 6: the camera stored the picture turned 90° counter-clockwise; viewers turn it clockwise.
    stored = np.ascontiguousarray(np.rot90(upright, 1))
    path = tmp_path / f"phone.{fmt.lower()}"
    Image.fromarray(stored).save(path, format=fmt, exif=_exif(6), quality=95)
    img = imageio.read_image(path)
    assert img.shape == upright.shape
    assert np.abs(img.astype(int) - upright).mean() < 2  # JPEG: up to compression noise
    assert img[16, 20].min() > 200  # the disc is at the top-left, not at the bottom


@pytest.mark.parametrize("orientation,turn", [(3, lambda a: np.rot90(a, 2)), (8, lambda a: np.rot90(a, -1)),
                                              (2, lambda a: a[:, ::-1])])
def test_other_orientations_are_applied(tmp_path, orientation: int, turn) -> None:
    upright = _upright_photo()
    Image.fromarray(np.ascontiguousarray(turn(upright))).save(tmp_path / "p.png", exif=_exif(orientation))
    assert np.array_equal(imageio.read_image(tmp_path / "p.png"), upright)


def test_orientation_1_and_no_tag_read_as_stored(tmp_path) -> None:
    upright = _upright_photo()
    Image.fromarray(upright).save(tmp_path / "one.png", exif=_exif(1))
    Image.fromarray(upright).save(tmp_path / "none.png")
    assert np.array_equal(imageio.read_image(tmp_path / "one.png"), upright)
    assert np.array_equal(imageio.read_image(tmp_path / "none.png"), upright)


def test_label_map_with_orientation_tag_is_refused_not_turned(tmp_path) -> None:
    idx = np.full((64, 96), labels.RETINA, np.uint8)
    idx[4:10, 4:10] = labels.OPTIC_DISC
    imageio.label_image(idx).save(tmp_path / "turned_map.png", exif=_exif(6))
    with pytest.raises(InputError, match=r"turned_map\.png: carries an EXIF orientation tag \(6: rotated 90° "
                                         r"clockwise\); label maps are read pixel for pixel and never turned"):
        imageio.read_label_map(tmp_path / "turned_map.png")
    Image.fromarray(idx * 20).save(tmp_path / "mask.png", exif=_exif(8))
    with pytest.raises(InputError, match="never turned"):
        imageio.read_mask(tmp_path / "mask.png")
    imageio.label_image(idx).save(tmp_path / "upright_map.png", exif=_exif(1))
    assert np.array_equal(imageio.read_label_map(tmp_path / "upright_map.png"), idx)


# --- names in messages ----------------------------------------------------------------------------


@pytest.mark.parametrize("reader", [imageio.read_image, imageio.read_label_map, imageio.read_mask])
def test_messages_use_the_name_given_instead_of_the_path(tmp_path, reader) -> None:
    hidden = tmp_path / "3f9a0c" / "upload.png"
    hidden.parent.mkdir()
    hidden.write_text("not pixels\n" * 10)
    with pytest.raises(InputError) as err:
        reader(hidden, name="fundus.png")
    assert str(err.value).startswith("fundus.png: not an image file") and str(tmp_path) not in str(err.value)
    Image.fromarray(_photo(256, 256)).save(hidden)
    hidden.write_bytes(hidden.read_bytes()[:300])  # truncated: the decoder's own message is kept, without the path
    with pytest.raises(InputError) as err:
        reader(hidden, name="fundus.png")
    assert str(err.value).startswith("fundus.png: unreadable or truncated") and str(tmp_path) not in str(err.value)
