"""Reading and writing images at the boundary: validation, conversion and atomic writes.

Every file the project reads from a user goes through :func:`read_image`, :func:`read_mask` or
:func:`read_label_map`; every file it writes goes through :func:`atomic_write` so that an
interrupted run never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fundus_studio import labels
from fundus_studio.errors import InputError

# Images smaller than this cannot carry a usable fundus (the U-Net's stride alone is 16).
MIN_SIDE: int = 64
# Photos larger than this are reduced while decoding so that memory stays bounded; every model
# works at ≤ 1024 px.
MAX_SIDE: int = 2048
# PIL's decompression-bomb guard, raised for real 4288×2848 fundus photos but still bounded.
Image.MAX_IMAGE_PIXELS = 120_000_000
# Truncated files must fail, never be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# EXIF tag 0x0112: how a viewer must turn the stored pixels to show them upright (1 = as stored).
_ORIENTATION_TAG = 0x0112
_ORIENTATIONS = {2: "mirrored", 3: "rotated 180°", 4: "flipped upside down", 5: "mirrored and rotated 90°",
                 6: "rotated 90° clockwise", 7: "mirrored and rotated 270°", 8: "rotated 90° counter-clockwise"}


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1–8) an image declares; 1 when it declares none or nonsense."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not make the pixels unreadable
        return 1
    return value if value in _ORIENTATIONS else 1


def _open(path: Path, *, max_side: int | None, name: str | None = None, upright: bool = True) -> Image.Image:
    """Open, fully decode and (for huge images) shrink an image, or raise a one-line InputError.

    ``name`` is how messages call the file (default: its path; the app passes the uploaded file's
    original name so that no server path reaches the user). ``upright=True`` (photos) applies the
    EXIF orientation, as phone cameras and smartphone fundus adapters store their pictures turned;
    ``upright=False`` (label maps, masks) refuses a file that declares one, since turning a map
    silently would misplace it against its photo and keeping it as stored would show it turned.
    """
    name = str(path) if name is None else name
    if not path.exists():
        raise InputError(f"{name}: no such file")
    if path.is_dir():
        raise InputError(f"{name}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise InputError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if max_side is not None and img.format == "JPEG":
                # JPEG can decode directly at 1/2, 1/4 or 1/8 scale: huge photos never hit memory whole.
                img.draft("RGB", (max_side, max_side))
            img.load()
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{name}: image too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{name}: unreadable or truncated image ({_without_path(str(err), path, name)})") from None
    if min(img.size) < MIN_SIDE:
        raise InputError(f"{name}: image is {img.size[0]}×{img.size[1]} px; at least {MIN_SIDE} px per side is needed")
    orientation = _orientation(img)
    if orientation != 1 and not upright:
        raise InputError(f"{name}: carries an EXIF orientation tag ({orientation}: {_ORIENTATIONS[orientation]}); "
                         "label maps are read pixel for pixel and never turned: save the map upright without the tag")
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(size, Image.Resampling.BOX if img.mode not in ("P", "1") else Image.Resampling.NEAREST)
    return img


def _without_path(message: str, path: Path, name: str) -> str:
    """A decoder's message with the file's path replaced by the name the user knows it by."""
    return message.replace(str(path), name) if str(path) != name else message


def _to_uint8(img: Image.Image) -> np.ndarray:
    """Any PIL mode → uint8 array, (H, W) or (H, W, C); 16-bit and float data are rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if img.mode == "1":
        return np.asarray(img.convert("L"))
    return np.asarray(img)


def to_rgb(img: Image.Image) -> np.ndarray:
    """PIL image of any mode → (H, W, 3) uint8 RGB. Transparency is composited over black."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        return (rgba[..., :3] * (rgba[..., 3:] / 255.0) + 0.5).astype(np.uint8)
    if img.mode in ("RGB",):
        return np.asarray(img)
    if img.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"))
    grey = _to_uint8(img)
    return np.repeat(grey[..., None], 3, axis=2) if grey.ndim == 2 else grey[..., :3]


def read_image(path: str | os.PathLike[str], *, max_side: int | None = MAX_SIDE, name: str | None = None) -> np.ndarray:
    """Read a photo as (H, W, 3) uint8 RGB, upright, converting 16-bit, greyscale, palette and RGBA images.

    The EXIF orientation is applied (a photo stored turned, tag 6, comes back upright). Raises
    :class:`InputError` naming the file (``name``, default its path) for a missing, empty,
    non-image or truncated file or one under ``MIN_SIDE`` pixels.
    """
    return to_rgb(_open(Path(path), max_side=max_side, name=name))


def read_mask(path: str | os.PathLike[str], *, threshold: int = 1, name: str | None = None) -> np.ndarray:
    """Read a binary mask as (H, W) bool: maximum over channels ≥ ``threshold``.

    Accepts RGB masks (lesion in one channel), 0/1 and 0/255 greyscale, 16-bit and palette files;
    refuses one with an EXIF orientation tag (see :func:`read_label_map`).
    """
    img = _open(Path(path), max_side=None, name=name, upright=False)
    if img.mode == "P":
        img = img.convert("RGB")
    arr = _to_uint8(img)
    if arr.ndim == 3:
        # Chained maximum: several times faster than .max(axis=2) on 4288×2848 masks.
        arr = np.maximum(np.maximum(arr[..., 0], arr[..., 1]), arr[..., 2]) if arr.shape[2] >= 3 else arr[..., 0]
    return arr >= threshold


def label_map_from_image(img: Image.Image, *, nearest: bool = False, what: str = "label map") -> np.ndarray:
    """A label image (palette PNG with class indices, or a colour image) → (H, W) uint8 indices."""
    if img.mode == "P" and _has_taxonomy_palette(img):
        return labels.check_index_map(np.asarray(img), what=what)
    if img.mode in ("L", "I;16", "I", "P") and not _looks_colour(img):
        # A greyscale map of raw class indices (values 0..C-1) is accepted as such.
        arr = _to_uint8(img) if img.mode != "P" else np.asarray(img)
        if arr.max() < labels.NUM_CLASSES:
            return arr.astype(np.uint8)
    return labels.from_color(to_rgb(img), nearest=nearest, what=what)


def read_label_map(path: str | os.PathLike[str], *, nearest: bool = False, name: str | None = None) -> np.ndarray:
    """Read a label map file: our palette PNG, a raw-index greyscale PNG, or a colour image.

    A map that declares an EXIF orientation other than "as stored" is refused with a message that
    says so: maps are never turned silently.
    """
    path = Path(path)
    name = str(path) if name is None else name
    return label_map_from_image(_open(path, max_side=None, name=name, upright=False), nearest=nearest, what=name)


def _has_taxonomy_palette(img: Image.Image) -> bool:
    pal = img.getpalette() or []
    head = np.asarray(pal[: 3 * labels.NUM_CLASSES], dtype=np.uint8)
    return head.size == 3 * labels.NUM_CLASSES and np.array_equal(head.reshape(-1, 3), labels.COLORS)


def _looks_colour(img: Image.Image) -> bool:
    if img.mode != "P":
        return False
    pal = np.asarray(img.getpalette() or [0, 0, 0], dtype=np.uint8).reshape(-1, 3)
    return bool((pal.max(axis=1) != pal.min(axis=1)).any())


# --- writing --------------------------------------------------------------------------------------


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[io.IOBase]:
    """Write to a temporary file in the same folder, then rename over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes files private; ours are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_png(path: str | os.PathLike[str], image: np.ndarray | Image.Image) -> Path:
    """Write an RGB/greyscale uint8 array or a PIL image as PNG, atomically."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    with atomic_write(path) as fh:
        img.save(fh, format="PNG", compress_level=1)  # speed over size: PNG stays lossless
    return Path(path)


def label_image(index_map: np.ndarray) -> Image.Image:
    """An index map as an 8-bit palette ("P") image: value = class, palette = taxonomy colours."""
    img = Image.fromarray(np.ascontiguousarray(labels.check_index_map(index_map)))  # mode "L"
    img.putpalette(labels.palette_bytes())  # turns "L" into "P" without touching the values
    return img


def save_label_png(path: str | os.PathLike[str], index_map: np.ndarray) -> Path:
    """Write an index map as a palette PNG, atomically."""
    return save_png(path, label_image(index_map))
