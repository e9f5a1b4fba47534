"""IDRiD and FGADR → studio datasets, on small copies of both layouts with every quirk of DATA.md."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fundus_studio import cli, labels
from fundus_studio.dataset import StudioDataset
from fundus_studio.errors import InputError
from fundus_studio.imageio import read_image
from fundus_studio.prepare import fgadr_split, locate, prepare_dataset
from fundus_studio.preprocess import preprocess

SIZE = 128
W, H = 300, 200  # IDRiD-like landscape photos whose circle is cut at top and bottom
FOV_R = 110
HE_AT = (120, 60)  # haemorrhage centre in photo pixels (x, y)
EX_AT = (200, 130)  # hard exudate
DISC_AT = (80, 100)


def fake_photo(*, seed: int, width: int = W, height: int = H, radius: int = FOV_R) -> np.ndarray:
    """A dark frame with a reddish disc-shaped field of view, a bright optic disc and a few vessels."""
    rng = np.random.default_rng(seed)
    disc = DISC_AT if width == W else (width // 3, height // 2)
    img = np.full((height, width, 3), (170, 70, 35), np.uint8)
    cv2.circle(img, disc, radius // 8, (250, 210, 150), -1)
    for _ in range(6):
        end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(img, disc, end, (110, 25, 20), 2)
    img = img + rng.normal(0, 4, img.shape)
    fov = np.zeros((height, width), np.uint8)
    cv2.circle(fov, (width // 2, height // 2), radius, 1, -1)
    return np.clip(img * fov[..., None], 0, 255).astype(np.uint8)


def save_jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="JPEG", quality=92)


def blob(shape: tuple[int, int], at: tuple[int, int], radius: int, *, scale: int = 1) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, (at[0] * scale, at[1] * scale), radius * scale, 1, -1)
    return m


def save_tiff(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="TIFF")


# --- IDRiD fixture ------------------------------------------------------------------------------


def make_idrid(root: Path, *, nested: bool = True) -> Path:
    """``root/IDRiD/A. Segmentation/A. Segmentation/…`` plus the grading part's CSVs.

    IDRiD_01 (train): HE as an RGB TIFF (red channel) at twice the photo's resolution, EX as a 0/1
    TIFF, OD as 0/255; no MA or SE file. IDRiD_02 (train): no lesion at all. IDRiD_01 (test): same name
    as the training photo, HE only.
    """
    top = root / "IDRiD"
    seg = top / "A. Segmentation" / ("A. Segmentation" if nested else "")
    images = seg / "1. Original Images"
    truth = seg / "2. All Segmentation Groundtruths"
    for split in ("a. Training Set", "b. Testing Set"):
        for folder in ("1. Microaneurysms", "2. Haemorrhages", "3. Hard Exudates", "4. Soft Exudates", "5. Optic Disc"):
            (truth / split / folder).mkdir(parents=True, exist_ok=True)
    train, test = "a. Training Set", "b. Testing Set"
    save_jpeg(images / train / "IDRiD_01.jpg", fake_photo(seed=1))
    save_jpeg(images / train / "IDRiD_02.jpg", fake_photo(seed=2))
    save_jpeg(images / test / "IDRiD_01.jpg", fake_photo(seed=3))
    (images / train / "._IDRiD_01.jpg").write_bytes(b"AppleDouble junk")  # must be ignored
    he = np.zeros((2 * H, 2 * W, 3), np.uint8)
    he[..., 0] = 255 * blob((2 * H, 2 * W), HE_AT, 8, scale=2)
    save_tiff(truth / train / "2. Haemorrhages" / "IDRiD_01_HE.tif", he)
    save_tiff(truth / train / "3. Hard Exudates" / "IDRiD_01_EX.tif", blob((H, W), EX_AT, 6))  # 0/1
    save_tiff(truth / train / "5. Optic Disc" / "IDRiD_01_OD.tif", 255 * blob((H, W), DISC_AT, FOV_R // 8))
    save_tiff(truth / test / "2. Haemorrhages" / "IDRiD_01_HE.tif", 255 * blob((H, W), EX_AT, 8))
    grading = top / "B. Disease Grading" / "2. Groundtruths"
    grading.mkdir(parents=True)
    header = "Image name,Retinopathy grade,Risk of macular edema ,,\n"
    (grading / "a. IDRiD_Disease Grading_Training Labels.csv").write_text(
        header + "IDRiD_001,2,1,,\nIDRiD_01,3,2,,\n\n\n")
    (grading / "b. IDRiD_Disease Grading_Testing Labels.csv").write_text(header + "IDRiD_01,1,0,,\n\n")
    return top


def expected_at(photo_path: Path, xy: tuple[int, int]) -> tuple[int, int]:
    """Where a photo pixel lands in the prepared sample (through the one preprocessing path)."""
    g = preprocess(read_image(photo_path), size=SIZE).geometry
    x, y = g.to_output(*xy)
    return round(x), round(y)


@pytest.fixture(scope="module")
def idrid_prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("idrid")
    src = make_idrid(base)
    out = prepare_dataset("idrid", src, base / "out", size=SIZE, progress=False)
    return src, out


def test_idrid_samples_grades_and_splits(idrid_prepared: tuple[Path, Path]) -> None:
    _, out = idrid_prepared
    ds = StudioDataset.open(out)
    by_id = {s.id: s for s in ds}
    assert set(by_id) == {"idrid-train-IDRiD_01", "idrid-train-IDRiD_02", "idrid-test-IDRiD_01"}
    # Grades by split + name: the training and testing CSVs both list IDRiD_01 with different grades.
    assert by_id["idrid-train-IDRiD_01"].grade == 3
    assert by_id["idrid-test-IDRiD_01"].grade == 1
    assert by_id["idrid-train-IDRiD_02"].grade is None  # no row: unknown, not 0
    assert by_id["idrid-test-IDRiD_01"].extra["split"] == "test"
    assert by_id["idrid-train-IDRiD_01"].extra["optic_disc"] == "annotated"
    assert by_id["idrid-train-IDRiD_02"].extra["optic_disc"] == "detected"
    assert by_id["idrid-train-IDRiD_01"].extra["original"] == "1. Original Images/a. Training Set/IDRiD_01.jpg"
    assert ds.info["meta"]["source"] == "idrid"


def test_idrid_lesions_land_where_drawn(idrid_prepared: tuple[Path, Path]) -> None:
    src, out = idrid_prepared
    ds = StudioDataset.open(out)
    photo = next(src.rglob("a. Training Set/IDRiD_01.jpg"))
    label = ds.label("idrid-train-IDRiD_01")
    assert label.shape == (SIZE, SIZE)
    x, y = expected_at(photo, HE_AT)
    assert label[y, x] == labels.HAEMORRHAGE  # RGB mask, red channel, twice the photo's resolution
    x, y = expected_at(photo, EX_AT)
    assert label[y, x] == labels.HARD_EXUDATE  # 0/1 mask
    x, y = expected_at(photo, DISC_AT)
    assert labels.OPTIC_DISC in label[y - 1 : y + 2, x - 1 : x + 2]  # 0/255 mask (vessels may cross it)
    present = set(np.unique(label))
    assert labels.MICROANEURYSM not in present and labels.SOFT_EXUDATE not in present  # missing files
    assert {labels.OUTSIDE, labels.RETINA, labels.VESSEL} <= present
    # Nothing but background classes where no mask was given.
    assert not set(np.unique(ds.label("idrid-train-IDRiD_02"))) & set(labels.LESIONS)
    # The test photo's haemorrhage is at EX_AT: the test masks were not confused with the training ones.
    test_label = ds.label("idrid-test-IDRiD_01")
    x, y = expected_at(photo, EX_AT)
    assert test_label[y, x] == labels.HAEMORRHAGE


def test_idrid_photo_is_square_and_black_outside(idrid_prepared: tuple[Path, Path]) -> None:
    _, out = idrid_prepared
    ds = StudioDataset.open(out)
    image, label = ds.image(0), ds.label(0)
    assert image.shape == (SIZE, SIZE, 3)
    assert image[label == labels.OUTSIDE].max() == 0
    # The cut top and bottom of the circle were padded, the circle fills the width.
    assert (label[0] == labels.OUTSIDE).all() and (label[:, SIZE // 2] != labels.OUTSIDE).sum() < SIZE


def test_idrid_split_selection_and_resume(tmp_path: Path) -> None:
    src = make_idrid(tmp_path, nested=False)
    out = tmp_path / "out"
    prepare_dataset("idrid", src, out, size=SIZE, split="test", progress=False)
    assert [s.id for s in StudioDataset.open(out)] == ["idrid-test-IDRiD_01"]
    before = (out / "images" / "idrid-test-IDRiD_01.png").stat().st_mtime_ns
    prepare_dataset("idrid", src / "A. Segmentation", out, size=SIZE, split="all", progress=False)
    ds = StudioDataset.open(out)
    assert sorted(s.id for s in ds) == ["idrid-test-IDRiD_01", "idrid-train-IDRiD_01", "idrid-train-IDRiD_02"]
    assert (out / "images" / "idrid-test-IDRiD_01.png").stat().st_mtime_ns == before  # not redone


def test_corrupt_photo_is_skipped_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = make_idrid(tmp_path)
    bad = next(src.rglob("a. Training Set/IDRiD_02.jpg"))
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    with caplog.at_level(logging.WARNING, logger="fundus_studio.prepare"):
        out = prepare_dataset("idrid", src, tmp_path / "out", size=SIZE, progress=False)
    assert sorted(s.id for s in StudioDataset.open(out)) == ["idrid-test-IDRiD_01", "idrid-train-IDRiD_01"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("IDRiD_02.jpg" in m for m in messages)
    assert any("skipped 1 of 3" in m for m in messages)
    assert not list((tmp_path / "out").rglob("*.tmp"))
    # Resuming with only the corrupt photo left is not an error: the dataset holds the others.
    prepare_dataset("idrid", src, tmp_path / "out", size=SIZE, progress=False)
    assert len(StudioDataset.open(out)) == 2


def test_nothing_readable_is_an_error(tmp_path: Path) -> None:
    src = make_fgadr(tmp_path)
    for photo in (src / "Seg-set" / "Original_Images").iterdir():
        photo.write_text("not a PNG")
    with pytest.raises(InputError, match="none of the 3 photos"):
        prepare_dataset("fgadr", src, tmp_path / "out", size=SIZE, progress=False)


def test_mask_of_another_shape_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = make_idrid(tmp_path)
    ex = next(src.rglob("IDRiD_01_EX.tif"))
    save_tiff(ex, np.zeros((H, H), np.uint8))  # square: not the photo's aspect ratio
    with caplog.at_level(logging.WARNING, logger="fundus_studio.prepare"):
        out = prepare_dataset("idrid", src, tmp_path / "out", size=SIZE, split="train", progress=False)
    assert [s.id for s in StudioDataset.open(out)] == ["idrid-train-IDRiD_02"]
    assert any("IDRiD_01_EX.tif" in r.getMessage() and "aspect" in r.getMessage() for r in caplog.records)


# --- FGADR fixture ------------------------------------------------------------------------------

FGADR_SIDE = 240


def antialiased(at: tuple[int, int], radius: int, *, value: int = 255) -> np.ndarray:
    """A greyscale disc with soft edges, drawn at 4× and area-reduced like a real anti-aliased mask."""
    big = np.zeros((FGADR_SIDE * 4,) * 2, np.uint8)
    cv2.circle(big, (at[0] * 4, at[1] * 4), radius * 4, value, -1)
    return cv2.resize(big, (FGADR_SIDE,) * 2, interpolation=cv2.INTER_AREA)


def make_fgadr(root: Path) -> Path:
    """``root/FGADR/Seg-set/…`` with a header-less CSV, ``Hemohedge_Masks`` and sparse IRMA masks."""
    seg = root / "FGADR" / "Seg-set"
    names = ["0040_2", "0041_1", "1001_3"]
    for i, name in enumerate(names):
        photo = fake_photo(seed=10 + i, width=FGADR_SIDE, height=FGADR_SIDE, radius=FGADR_SIDE // 2 - 4)
        (seg / "Original_Images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(seg / "Original_Images" / f"{name}.png")
    for folder in ("Microaneurysms_Masks", "Hemohedge_Masks", "HardExudate_Masks", "SoftExudate_Masks",
                   "IRMA_Masks", "Neovascularization_Masks"):
        (seg / folder).mkdir()
        for name in names:
            if folder == "IRMA_Masks" and name != "0040_2":
                continue  # sparse: missing file = empty mask
            Image.fromarray(np.zeros((FGADR_SIDE,) * 2, np.uint8)).save(seg / folder / f"{name}.png")
    Image.fromarray(antialiased((150, 80), 10)).save(seg / "Hemohedge_Masks" / "0040_2.png")
    Image.fromarray(antialiased((100, 170), 8)).save(seg / "IRMA_Masks" / "0040_2.png")
    # A faint anti-aliased smudge below 128 everywhere: must not become a lesion.
    Image.fromarray(antialiased((170, 170), 20, value=100)).save(seg / "SoftExudate_Masks" / "0041_1.png")
    rgb = np.repeat(antialiased((60, 120), 9)[..., None], 3, axis=2)  # RGB with equal channels
    Image.fromarray(rgb).save(seg / "HardExudate_Masks" / "0041_1.png")
    (seg / "DR_Seg_Grading_Label.csv").write_text("0040_2.png,3\n0041_1.png,0\n1001_3.png,4\n")
    return root / "FGADR"


@pytest.fixture(scope="module")
def fgadr_prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("fgadr")
    src = make_fgadr(base)
    return src, prepare_dataset("fgadr", src, base / "out", size=SIZE, progress=False)


def _fgadr_at(src: Path, name: str, xy: tuple[int, int]) -> tuple[int, int]:
    return expected_at(src / "Seg-set" / "Original_Images" / f"{name}.png", xy)


def test_fgadr_grades_lesions_and_detected_disc(fgadr_prepared: tuple[Path, Path]) -> None:
    src, out = fgadr_prepared
    ds = StudioDataset.open(out)
    by_id = {s.id: s for s in ds}
    assert {k: s.grade for k, s in by_id.items()} == {"fgadr-0040_2": 3, "fgadr-0041_1": 0, "fgadr-1001_3": 4}
    assert all(s.extra["optic_disc"] == "detected" for s in ds)
    assert all(s.extra["split"] == fgadr_split(s.id.removeprefix("fgadr-")) for s in ds)
    a = ds.label("fgadr-0040_2")
    x, y = _fgadr_at(src, "0040_2", (150, 80))
    assert a[y, x] == labels.HAEMORRHAGE  # from Hemohedge_Masks
    x, y = _fgadr_at(src, "0040_2", (100, 170))
    assert a[y, x] == labels.IRMA
    b = ds.label("fgadr-0041_1")
    x, y = _fgadr_at(src, "0041_1", (60, 120))
    assert b[y, x] == labels.HARD_EXUDATE  # RGB mask with equal channels
    assert labels.SOFT_EXUDATE not in b  # the smudge is below the 128 threshold
    assert labels.IRMA not in b  # no IRMA file
    # The disc was detected on the bright blob drawn at a third of the width.
    disc = np.argwhere(a == labels.OPTIC_DISC).mean(axis=0)
    x, y = _fgadr_at(src, "0040_2", (FGADR_SIDE // 3, FGADR_SIDE // 2))
    assert np.hypot(disc[1] - x, disc[0] - y) < 0.1 * SIZE


def test_fgadr_split_is_deterministic_and_about_80_20() -> None:
    names = [f"{i:04d}_{j}" for i in range(500) for j in (1, 2)]
    train = sum(fgadr_split(n) == "train" for n in names) / len(names)
    assert 0.76 < train < 0.84
    assert fgadr_split("0040_2") == fgadr_split("0040_2")


def test_fgadr_found_from_the_seg_set_folder_itself(tmp_path: Path) -> None:
    src = make_fgadr(tmp_path)
    layout = locate("fgadr", src / "Seg-set")
    assert layout.root == src / "Seg-set" and len(layout.items) == 3


# --- refusals -----------------------------------------------------------------------------------


def test_wrong_layout_aborts_before_writing(tmp_path: Path) -> None:
    src = make_fgadr(tmp_path)
    with pytest.raises(InputError, match="not an IDRiD segmentation folder"):
        prepare_dataset("idrid", src, tmp_path / "out", size=SIZE, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="no such folder"):
        prepare_dataset("fgadr", tmp_path / "missing", tmp_path / "out", size=SIZE, progress=False)
    with pytest.raises(InputError, match="not an FGADR Seg-set folder"):
        prepare_dataset("fgadr", make_idrid(tmp_path), tmp_path / "out", size=SIZE, progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_grade_in_csv_names_the_line(tmp_path: Path) -> None:
    src = make_fgadr(tmp_path)
    (src / "Seg-set" / "DR_Seg_Grading_Label.csv").write_text("0040_2.png,3\n0041_1.png,7\n")
    with pytest.raises(InputError, match=r"DR_Seg_Grading_Label.csv:2: grade 7 is outside 0..4"):
        locate("fgadr", src)


def test_refuses_to_mix_datasets(tmp_path: Path, fgadr_prepared: tuple[Path, Path]) -> None:
    _, out = fgadr_prepared
    with pytest.raises(Exception, match="fgadr"):
        prepare_dataset("idrid", make_idrid(tmp_path), out, size=SIZE, progress=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prepare", "idrid", "{tmp}/nowhere", "--out", "{tmp}/out"], "nowhere: no such folder"),
        (["prepare", "idrid", "{tmp}/empty", "--out", "{tmp}/out"], "not an IDRiD segmentation folder"),
    ],
)
def test_cli_reports_one_line_and_exit_2(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    code = cli.main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
