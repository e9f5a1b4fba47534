"""Exports for other tools: nnU-Net v2 raw datasets and IDRiD's layout (round trip through prepare)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fundus_studio import labels
from fundus_studio.cli import main
from fundus_studio.dataset import DatasetWriter, StudioDataset
from fundus_studio.errors import DatasetError, InputError
from fundus_studio.export import PROVENANCE_COLUMNS
from fundus_studio.formats import PROVENANCE_FILE, export_dataset, held_out
from fundus_studio.phantom import generate_phantom
from fundus_studio.prepare import prepare_dataset
from fundus_studio.preprocess import fit_geometry

SIZE = 96
GRADES = (0, 1, 2, 3, 4, 3, 4, 2)
HASHES = {"acgan": "2bab900419239f28", "spade": "c1813c10f6e44f78"}

# nnU-Net v2's dataset.json (documentation/dataset_format.md, "dataset.json"): these four are required;
# the others it documents are optional and nnU-Net ignores keys it does not know.
NNUNET_REQUIRED = {"channel_names", "labels", "numTraining", "file_ending"}
NNUNET_OPTIONAL = {"name", "description", "reference", "licence", "release", "overwrite_image_reader_writer",
                   "regions_class_order"}


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A studio dataset like prepared data (the field of view spans the side), with provenance columns."""
    root = tmp_path_factory.mktemp("src") / "studio"
    writer = DatasetWriter(root, size=SIZE, created_by="fundus-studio sample", extra_columns=PROVENANCE_COLUMNS,
                           meta={"checkpoints": HASHES})
    for i, grade in enumerate(GRADES):
        ph = generate_phantom(grade=grade, seed=100 + i, size=SIZE)
        geometry = fit_geometry(ph.label != labels.OUTSIDE, size=SIZE)  # what prepare does to a photo
        label, image = geometry.index_map(ph.label), geometry.photo(ph.image)
        image[label == labels.OUTSIDE] = 0
        writer.add(sample_id=f"sampled-{i:05d}", image=image, label=label, grade=grade, source="fundus-studio",
                   seed=100 + i, extra={"provenance": "sampled", "checkpoints": "acgan:2bab;spade:c181"})
    return root


def _validate_nnunet(folder: Path) -> dict:
    """Check a raw dataset against nnU-Net v2's documented format; return its dataset.json."""
    assert re.fullmatch(r"Dataset\d{3}_[A-Za-z0-9_-]+", folder.name)
    info = json.loads((folder / "dataset.json").read_text())
    assert NNUNET_REQUIRED <= set(info)
    assert set(info) - NNUNET_REQUIRED - NNUNET_OPTIONAL <= {"fundus_studio_labels", "fundus_studio_background"}
    # channel_names: string keys "0", "1", … (an RGB PNG is nnU-Net's one multi-channel file: R, G, B).
    assert info["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    # labels: name → int, background 0, consecutive.
    values = sorted(info["labels"].values())
    assert info["labels"]["background"] == 0 and values == list(range(len(values)))
    assert all(isinstance(v, int) for v in values)
    assert info["file_ending"] == ".png"  # lossless, as nnU-Net requires
    for split in ("Tr", "Ts"):
        images = sorted((folder / f"images{split}").glob("*.png")) if (folder / f"images{split}").is_dir() else []
        cases = sorted(p.name[: -len("_0000.png")] for p in images)
        assert all(p.name.endswith("_0000.png") for p in images)
        if split == "Tr":
            assert info["numTraining"] == len(cases) > 0
            assert sorted(p.stem for p in (folder / "labelsTr").glob("*.png")) == cases
        for case in cases:
            img = Image.open(folder / f"images{split}" / f"{case}_0000.png")
            seg = Image.open(folder / f"labels{split}" / f"{case}.png")
            assert img.mode == "RGB" and seg.mode == "L" and img.size == seg.size
            assert set(np.unique(np.asarray(seg)).tolist()) <= set(values)
    return info


def test_nnunet_export_follows_nnunets_documented_format(studio: Path, tmp_path: Path) -> None:
    out = export_dataset(studio, tmp_path / "raw", format="nnunet", dataset_id=501, name="Fundus", progress=False)
    assert out == tmp_path / "raw" / "Dataset501_Fundus"
    info = _validate_nnunet(out)
    assert list(info["labels"]) == ["background", "optic_disc", "vessel", "microaneurysm", "haemorrhage",
                                    "hard_exudate", "soft_exudate", "neovascularisation", "irma"]
    assert info["numTraining"] == len(GRADES) and not (out / "imagesTs").exists()
    assert "outside, retina" in info["description"] and "background" in info["description"]
    ds = StudioDataset.open(studio)
    label = np.asarray(Image.open(out / "labelsTr" / "sampled-00004.png"))
    original = ds.label("sampled-00004")
    for name, value in info["labels"].items():
        expected = np.isin(original, [labels.OUTSIDE, labels.RETINA]) if name == "background" \
            else original == labels.class_index(name)
        assert np.array_equal(label == value, expected), name
    assert info["fundus_studio_labels"]["vessel"] == {"taxonomy_index": labels.VESSEL, "label": 2}
    photo = np.asarray(Image.open(out / "imagesTr" / "sampled-00004_0000.png"))
    assert np.array_equal(photo, ds.image("sampled-00004"))


def test_nnunet_class_choice_and_held_out_split(studio: Path, tmp_path: Path) -> None:
    out = export_dataset(studio, tmp_path, format="nnunet", classes=["haemorrhage", "microaneurysm"],
                         test_fraction=0.4, progress=False)
    info = _validate_nnunet(out)
    assert info["labels"] == {"background": 0, "haemorrhage": 1, "microaneurysm": 2}
    assert "vessel" in info["description"] and "vessel" in info["fundus_studio_background"]
    ds = StudioDataset.open(studio)
    test_ids = [s.id for s in ds if held_out(s.id, 0.4)]
    assert 0 < len(test_ids) < len(ds)  # the fixture's ids split both ways at 0.4
    assert sorted(p.name for p in (out / "imagesTs").glob("*.png")) == sorted(f"{i}_0000.png" for i in test_ids)
    assert info["numTraining"] == len(ds) - len(test_ids)
    sample = test_ids[0]
    seg = np.asarray(Image.open(out / "labelsTs" / f"{sample}.png"))
    original = ds.label(sample)
    assert np.array_equal(seg == 1, original == labels.HAEMORRHAGE)
    assert np.array_equal(seg == 2, original == labels.MICROANEURYSM)
    assert np.array_equal(seg == 0, ~np.isin(original, [labels.HAEMORRHAGE, labels.MICROANEURYSM]))


def test_provenance_records_source_seeds_grades_and_checkpoints(studio: Path, tmp_path: Path) -> None:
    out = export_dataset(studio, tmp_path, format="nnunet", progress=False)
    prov = json.loads((out / PROVENANCE_FILE).read_text())
    assert prov["complete"] is True and prov["settings"]["format"] == "nnunet"
    assert prov["source"]["path"] == str(studio) and prov["source"]["checkpoints"] == HASHES
    assert prov["source"]["count"] == len(GRADES)
    by_id = {s["id"]: s for s in prov["samples"]}
    for s in StudioDataset.open(studio):
        assert (by_id[s.id]["seed"], by_id[s.id]["grade"]) == (s.seed, s.grade)
        assert by_id[s.id]["checkpoints"] == "acgan:2bab;spade:c181"


def test_refuses_foreign_folders_and_other_settings(studio: Path, tmp_path: Path) -> None:
    (tmp_path / "Dataset500_FundusStudio").mkdir()
    (tmp_path / "Dataset500_FundusStudio" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a fundus-studio export"):
        export_dataset(studio, tmp_path, format="nnunet", progress=False)
    (tmp_path / "idrid").mkdir()
    (tmp_path / "idrid" / "x.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="not a fundus-studio export"):
        export_dataset(studio, tmp_path / "idrid", format="idrid", progress=False)
    out = export_dataset(studio, tmp_path / "raw", format="nnunet", classes=["vessel"], progress=False)
    with pytest.raises(DatasetError, match="other settings"):
        export_dataset(studio, tmp_path / "raw", format="nnunet", classes=["optic_disc"], progress=False)
    assert (out / "notes.txt").exists() is False


def test_interrupted_export_resumes_to_the_same_files(studio: Path, tmp_path: Path) -> None:
    out = export_dataset(studio, tmp_path / "a", format="nnunet", progress=False)
    whole = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # An interruption: the provenance says incomplete, dataset.json and some cases are missing.
    prov = json.loads((out / PROVENANCE_FILE).read_text())
    (out / PROVENANCE_FILE).write_text(json.dumps({**prov, "complete": False}))
    (out / "dataset.json").unlink()
    for p in sorted((out / "imagesTr").glob("*.png"))[3:]:
        p.unlink()
    again = export_dataset(studio, tmp_path / "a", format="nnunet", progress=False)
    assert {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()} == whole
    assert export_dataset(studio, tmp_path / "a", format="nnunet", progress=False) == out  # complete: no-op


@pytest.mark.parametrize("kwargs", [
    {"format": "coco"}, {"format": "nnunet", "classes": ["drusen"]}, {"format": "nnunet", "classes": ["outside"]},
    {"format": "nnunet", "dataset_id": 1000}, {"format": "nnunet", "name": "a b"},
    {"format": "nnunet", "test_fraction": 1.0}, {"format": "idrid", "classes": ["vessel"]},
])
def test_bad_settings_raise_input_error(studio: Path, tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(InputError):
        export_dataset(studio, tmp_path / "o", progress=False, **kwargs)
    assert not (tmp_path / "o").exists()


def test_idrid_export_round_trips_through_prepare(studio: Path, tmp_path: Path) -> None:
    out = export_dataset(studio, tmp_path / "idrid", format="idrid", test_fraction=0.4, progress=False)
    seg = out / "A. Segmentation"
    assert (seg / "1. Original Images" / "a. Training Set" / "IDRiD_01.jpg").is_file() or \
        (seg / "1. Original Images" / "b. Testing Set" / "IDRiD_01.jpg").is_file()
    for split in ("a. Training Set", "b. Testing Set"):
        folders = sorted(p.name for p in (seg / "2. All Segmentation Groundtruths" / split).iterdir())
        assert folders == ["1. Microaneurysms", "2. Haemorrhages", "3. Hard Exudates", "4. Soft Exudates",
                           "5. Optic Disc"]
    names = {p.name for p in (seg / "2. All Segmentation Groundtruths").rglob("*.tif")}
    assert names and all(re.fullmatch(r"IDRiD_\d{2,}_(MA|HE|EX|SE|OD)\.tif", n) for n in names)
    with open(out / "B. Disease Grading" / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv") as fh:
        assert next(csv.reader(fh)) == ["Image name", "Retinopathy grade", "Risk of macular edema "]
    prov = json.loads((out / PROVENANCE_FILE).read_text())
    assert set(prov["not_in_idrid"]["classes"]) == {"vessel", "neovascularisation", "irma"}

    back = StudioDataset.open(prepare_dataset("idrid", out, tmp_path / "back", size=SIZE, progress=False))
    src = StudioDataset.open(studio)
    by_case = {s["case"]: s for s in prov["samples"]}
    assert len(back) == len(src)
    for sample in back:
        orig = by_case[Path(sample.extra["original"]).stem]
        assert sample.extra["split"] == orig["split"] and sample.grade == orig["grade"]
        a, b = src.label(orig["id"]), back.label(sample)
        # The four lesion classes IDRiD holds come back pixel for pixel.
        for cls in (labels.MICROANEURYSM, labels.HAEMORRHAGE, labels.HARD_EXUDATE, labels.SOFT_EXUDATE):
            assert np.array_equal(a == cls, b == cls), (sample.id, labels.NAMES[cls])
        # The disc too, where prepare's vessel pseudo-labels (painted over the disc) leave it visible.
        assert np.all(a[b == labels.OPTIC_DISC] == labels.OPTIC_DISC)
        assert np.all(np.isin(b[a == labels.OPTIC_DISC], [labels.OPTIC_DISC, labels.VESSEL]))
        # NV and IRMA have no IDRiD folder: they do not come back.
        assert not np.isin(b, [labels.NEOVASCULARISATION, labels.IRMA]).any()
        # The field of view is detected again from the photo: it may differ along its rim only.
        assert np.mean((a == labels.OUTSIDE) != (b == labels.OUTSIDE)) < 0.03


def test_cli_export(studio: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(studio), "--format", "nnunet", "--out", str(tmp_path), "--classes", "hard_exudate",
                 "--dataset-id", "7", "--name", "Ex"]) == 0
    assert "Dataset007_Ex" in capsys.readouterr().out
    _validate_nnunet(tmp_path / "Dataset007_Ex")
    assert main(["export", str(studio), "--format", "nnunet", "--out", str(tmp_path / "x"), "--classes", "drusen"]) == 2
    err = capsys.readouterr().err
    assert "drusen" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
