"""The studio dataset format: write, read, resume after an interruption, refuse to clobber."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fundus_studio import labels
from fundus_studio.dataset import INFO_FILE, MANIFEST_FILE, DatasetWriter, StudioDataset
from fundus_studio.errors import DatasetError, InputError

SIZE = 64


def _pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, labels.NUM_CLASSES, (SIZE, SIZE)).astype(np.uint8)
    return labels.to_color(label), label


def _writer(root, **kw) -> DatasetWriter:
    return DatasetWriter(root, size=SIZE, created_by="test", **kw)


def test_write_then_read(tmp_path) -> None:
    w = _writer(tmp_path / "ds", extra_columns=("split",), meta={"note": "unit test"})
    for i in range(3):
        image, label = _pair(i)
        w.add(sample_id=f"s{i}", image=image, label=label, grade=i if i < 2 else None, source="test", seed=100 + i,
              extra={"split": "train"})
    ds = StudioDataset.open(tmp_path / "ds")
    info = json.loads((tmp_path / "ds" / INFO_FILE).read_text())
    assert info["format"] == "fundus-studio-dataset" and info["version"] == 1 and info["size"] == SIZE
    assert [c["name"] for c in info["classes"]] == list(labels.NAMES)
    assert info["classes"][labels.VESSEL]["color"] == list(labels.CLASSES[labels.VESSEL].color)
    assert len(ds) == 3 and ds.grades() == [0, 1, None]
    assert ds.samples[1].seed == 101 and ds.samples[0].extra == {"split": "train"}
    for i in range(3):
        image, label = _pair(i)
        assert np.array_equal(ds.label(i), label)
        assert np.array_equal(ds.image(f"s{i}"), image)
        assert np.allclose(ds.samples[i].fractions, labels.class_fractions(label), atol=1e-6)


def test_manifest_columns(tmp_path) -> None:
    _writer(tmp_path / "ds")
    header = (tmp_path / "ds" / MANIFEST_FILE).read_text().splitlines()[0].split(",")
    assert header[:6] == ["id", "grade", "source", "image", "label", "seed"]
    assert header[6:] == [f"frac_{n}" for n in labels.NAMES]


def test_resume_keeps_finished_samples_and_drops_a_cut_row(tmp_path) -> None:
    w = _writer(tmp_path / "ds")
    for i in range(2):
        image, label = _pair(i)
        w.add(sample_id=f"s{i}", image=image, label=label, grade=0, source="test")
    # An interruption in the middle of writing a third row, and a row whose files never landed.
    with open(tmp_path / "ds" / MANIFEST_FILE, "a") as fh:
        fh.write("s9,0,test,images/s9.png,labels/s9.png,,0.1\n")
        fh.write("s2,0,te")
    with pytest.raises(DatasetError):  # the row with too few columns is caught on reading
        StudioDataset.open(tmp_path / "ds")
    (tmp_path / "ds" / MANIFEST_FILE).write_text(
        (tmp_path / "ds" / MANIFEST_FILE).read_text().replace("s9,0,test,images/s9.png,labels/s9.png,,0.1\n", "")
    )
    resumed = _writer(tmp_path / "ds")
    assert resumed.done_ids == {"s0", "s1"}
    image, label = _pair(2)
    resumed.add(sample_id="s2", image=image, label=label, grade=1, source="test")
    ds = StudioDataset.open(tmp_path / "ds")
    assert [s.id for s in ds] == ["s0", "s1", "s2"]
    assert (tmp_path / "ds" / MANIFEST_FILE).read_text().endswith("\n")


def test_resume_forgets_rows_whose_files_are_gone(tmp_path) -> None:
    w = _writer(tmp_path / "ds")
    for i in range(2):
        image, label = _pair(i)
        w.add(sample_id=f"s{i}", image=image, label=label, grade=0, source="test")
    (tmp_path / "ds" / "labels" / "s1.png").unlink()
    assert _writer(tmp_path / "ds").done_ids == {"s0"}
    assert len(StudioDataset.open(tmp_path / "ds")) == 1


def test_refuses_to_clobber_a_foreign_folder(tmp_path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="exists and is not a studio dataset"):
        _writer(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]


def test_refuses_a_dataset_of_another_size_or_columns(tmp_path) -> None:
    _writer(tmp_path / "ds")
    with pytest.raises(DatasetError, match="64-px samples"):
        DatasetWriter(tmp_path / "ds", size=128, created_by="test")
    with pytest.raises(DatasetError, match="columns"):
        _writer(tmp_path / "ds", extra_columns=("split",))


def test_bad_samples_are_refused(tmp_path) -> None:
    w = _writer(tmp_path / "ds")
    image, label = _pair(0)
    with pytest.raises(InputError, match="photo must be"):
        w.add(sample_id="a", image=image[:32], label=label, grade=0, source="t")
    with pytest.raises(InputError, match="grade 7"):
        w.add(sample_id="a", image=image, label=label, grade=7, source="t")
    with pytest.raises(InputError, match="letters, digits"):
        w.add(sample_id="../evil", image=image, label=label, grade=0, source="t")
    with pytest.raises(InputError, match="outside 0..9"):
        w.add(sample_id="a", image=image, label=label + 10, grade=0, source="t")
    assert len(StudioDataset.open(tmp_path / "ds")) == 0
    assert not any((tmp_path / "ds" / "images").iterdir())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda info: info.update(format="something-else"), "not a fundus-studio-dataset"),
        (lambda info: info.update(version=99), "format version 99"),
        (lambda info: info["classes"].pop(), "differ from this release's taxonomy"),
    ],
)
def test_foreign_descriptions_are_refused(tmp_path, edit, message: str) -> None:
    _writer(tmp_path / "ds")
    info_path = tmp_path / "ds" / INFO_FILE
    info = json.loads(info_path.read_text())
    edit(info)
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=message):
        StudioDataset.open(tmp_path / "ds")


def test_not_a_dataset(tmp_path) -> None:
    with pytest.raises(DatasetError, match="not a studio dataset"):
        StudioDataset.open(tmp_path)
    (tmp_path / INFO_FILE).write_text("{broken")
    with pytest.raises(DatasetError, match="unreadable"):
        StudioDataset.open(tmp_path)
