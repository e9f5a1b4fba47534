"""Exports: a valid studio dataset in a zip, with provenance, and nothing half-written."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from fundus_studio import labels
from fundus_studio.dataset import StudioDataset
from fundus_studio.editor import blank_template
from fundus_studio.errors import InputError
from fundus_studio.export import GalleryItem, export_items, extract_zip

SIZE = 64


def _item(i: int, provenance: str = "sampled") -> GalleryItem:
    m = blank_template(size=SIZE)
    m[10 + i, 20:30] = labels.HAEMORRHAGE
    return GalleryItem(label=m, image=labels.to_color(m), grade=i % labels.NUM_GRADES, seed=i, provenance=provenance)


def test_export_zip_is_a_studio_dataset(tmp_path) -> None:
    items = [_item(0), _item(1, "painted"), _item(2, "edited")]
    path = export_items(items, out_dir=tmp_path, size=SIZE, checkpoint_hashes={"acgan": "abc", "spade": "def"},
                        progress=False)
    assert path.suffix == ".zip" and zipfile.is_zipfile(path)
    root = extract_zip(path, tmp_path / "unzipped")
    ds = StudioDataset.open(root)
    assert len(ds) == 3
    assert [s.extra["provenance"] for s in ds] == ["sampled", "painted", "edited"]
    assert ds.samples[0].extra["checkpoints"] == "acgan:abc;spade:def"
    assert ds.info["meta"]["checkpoints"] == {"acgan": "abc", "spade": "def"}
    assert [s.grade for s in ds] == [0, 1, 2] and [s.seed for s in ds] == [0, 1, 2]
    for i, s in enumerate(ds):
        assert np.array_equal(ds.label(s), items[i].label)


def test_interrupted_export_leaves_no_zip(tmp_path, monkeypatch) -> None:
    import fundus_studio.export as export

    calls = {"n": 0}
    real_write = zipfile.ZipFile.write

    def failing_write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        export.export_items([_item(0), _item(1)], out_dir=tmp_path, size=SIZE, checkpoint_hashes={}, progress=False)
    assert not list(tmp_path.glob("*.zip"))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_empty_export_and_bad_provenance_are_refused(tmp_path) -> None:
    with pytest.raises(InputError, match="nothing to export"):
        export_items([], out_dir=tmp_path, size=SIZE, checkpoint_hashes={})
    with pytest.raises(InputError, match="provenance"):
        GalleryItem(label=blank_template(size=SIZE), image=np.zeros((SIZE, SIZE, 3), np.uint8), grade=0, seed=0,
                    provenance="stolen")


def test_zip_with_escaping_paths_is_refused(tmp_path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(InputError, match="outside"):
        extract_zip(evil, tmp_path / "x")
    assert not (tmp_path / "outside.txt").exists()


def test_kept_status() -> None:
    it = _item(0)
    assert it.status == "undecided"
    assert it.with_kept(True).status == "kept" and it.with_kept(False).status == "discarded"
    assert it.kept is None  # frozen: with_kept returns a copy
