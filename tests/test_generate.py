"""Generation at scale: sampled datasets (seeded per sample, resumable, sharded), merging, rendering a file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fundus_studio import generate, labels
from fundus_studio.dataset import MANIFEST_FILE, StudioDataset
from fundus_studio.editor import blank_template
from fundus_studio.errors import CheckpointError, DatasetError, InputError
from fundus_studio.export import PROVENANCE_COLUMNS, hashes_text
from fundus_studio.generate import merge_datasets, parse_shard, render_file, sample_dataset
from fundus_studio.imageio import read_image, read_label_map, save_label_png, save_png
from fundus_studio.phantom import sample_seed, write_phantoms
from fundus_studio.pipeline import Renderer
from fundus_studio.studio import Studio

SIZE = 64
COUNT = 7  # not a multiple of the shard count: shards differ in length
SEED = 3


def _sample(out: Path, checkpoints: Path, **kwargs) -> Path:
    args = {"count": COUNT, "grade": None, "seed": SEED, "size": SIZE, "checkpoints": checkpoints,
            "progress": False, **kwargs}
    return sample_dataset(out, **args)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*s/*.png"))}


@pytest.fixture(scope="module")
def whole_run(tiny_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete run of COUNT samples (the reference the other tests compare with)."""
    return _sample(tmp_path_factory.mktemp("whole") / "run", tiny_checkpoints)


def test_sampling_writes_a_dataset_with_seeds_grades_and_provenance(whole_run: Path, tiny_checkpoints: Path) -> None:
    ds = StudioDataset.open(whole_run)
    hashes = {k: v for k, v in Studio.from_checkpoints(tiny_checkpoints).checkpoint_hashes().items()
              if k in ("label_flow", "label_upsampler", "spade")}  # the default generator: the flow prior
    assert [s.id for s in ds] == [f"sample-{i:06d}" for i in range(COUNT)]
    assert [s.grade for s in ds] == [i % labels.NUM_GRADES for i in range(COUNT)]
    assert [s.seed for s in ds] == [sample_seed(SEED, i) for i in range(COUNT)]
    assert {s.source for s in ds} == {generate.source_name("flow")} == {"flow+spade"}
    assert ds.extra_columns == PROVENANCE_COLUMNS
    assert {s.extra["provenance"] for s in ds} == {"sampled"}
    assert {s.extra["checkpoints"] for s in ds} == {hashes_text(hashes)}
    meta = ds.info["meta"]
    assert [meta[k] for k in ("seed", "count", "grade", "size", "shard")] == [SEED, COUNT, None, SIZE, [0, 1]]
    assert meta["checkpoints"] == hashes and ds.size == SIZE


def test_a_sample_is_reproduced_by_the_studio_api(whole_run: Path, tiny_checkpoints: Path) -> None:
    ds, studio = StudioDataset.open(whole_run), Studio.from_checkpoints(tiny_checkpoints)
    s = ds.samples[4]
    label_map = studio.sample_labels(grade=s.grade, count=1, seed=s.seed, size=SIZE)[0]
    assert np.array_equal(label_map, ds.label(s))
    assert np.array_equal(studio.render(label_map, seed=generate.render_seed(s.seed)), ds.image(s))


def test_a_fixed_grade_is_given_to_every_sample(tiny_checkpoints: Path, tmp_path: Path) -> None:
    ds = StudioDataset.open(_sample(tmp_path / "g2", tiny_checkpoints, grade=2, count=3))
    assert ds.grades() == [2, 2, 2]


def test_an_interrupted_run_resumes_without_redoing_samples(
    whole_run: Path, tiny_checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, k = tmp_path / "run", 3
    real_render, calls = Renderer.render, []

    def failing_render(self, label_map, **kwargs):
        if len(calls) == k:
            raise KeyboardInterrupt
        calls.append(1)
        return real_render(self, label_map, **kwargs)

    monkeypatch.setattr(Renderer, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        _sample(out, tiny_checkpoints)
    assert [s.id for s in StudioDataset.open(out)] == [f"sample-{i:06d}" for i in range(k)]
    before = {p: p.stat().st_mtime_ns for p in out.glob("*s/*.png")}

    def counting_render(self, label_map, **kwargs):
        calls.append(1)
        return real_render(self, label_map, **kwargs)

    calls.clear()
    monkeypatch.setattr(Renderer, "render", counting_render)
    _sample(out, tiny_checkpoints)
    assert len(calls) == COUNT - k  # only the missing samples were made
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished ones untouched
    assert (out / MANIFEST_FILE).read_text() == (whole_run / MANIFEST_FILE).read_text()
    assert _files(out) == _files(whole_run)
    calls.clear()
    _sample(out, tiny_checkpoints)  # a finished run makes nothing
    assert not calls


def test_merged_shards_equal_the_whole_run(whole_run: Path, tiny_checkpoints: Path, tmp_path: Path) -> None:
    shards = [_sample(tmp_path / f"shard{i}", tiny_checkpoints, shard=(i, 2)) for i in range(2)]
    assert [s.id for s in StudioDataset.open(shards[1])] == [f"sample-{i:06d}" for i in (1, 3, 5)]
    merged = merge_datasets(shards, out=tmp_path / "merged", progress=False)
    assert (merged / MANIFEST_FILE).read_text() == (whole_run / MANIFEST_FILE).read_text()
    assert _files(merged) == _files(whole_run)
    assert [src["meta"]["shard"] for src in StudioDataset.open(merged).info["meta"]["sources"]] == [[0, 2], [1, 2]]
    # Merging again, or with an overlapping source, adds nothing.
    merge_datasets([whole_run, *shards], out=merged, progress=False)
    assert (merged / MANIFEST_FILE).read_text() == (whole_run / MANIFEST_FILE).read_text()


OTHER_RUN = {"seed": SEED + 1, "grade": 1, "size": SIZE + 16, "shard": (1, 2)}


@pytest.mark.parametrize("key", [*OTHER_RUN, "checkpoints"])
def test_a_conflicting_rerun_is_refused(whole_run: Path, tiny_checkpoints: Path, tmp_path: Path, key: str) -> None:
    from tiny_checkpoints import write_tiny_checkpoints

    out = Path(shutil.copytree(whole_run, tmp_path / "run"))
    manifest = (out / MANIFEST_FILE).read_text()
    other = write_tiny_checkpoints(tmp_path / "other", seed=1) if key == "checkpoints" else tiny_checkpoints
    with pytest.raises(DatasetError, match=f"{out}.*(different {key}|{SIZE}-px)"):
        _sample(out, other, **{k: v for k, v in OTHER_RUN.items() if k == key})
    assert (out / MANIFEST_FILE).read_text() == manifest


def test_sampling_refuses_another_kind_of_dataset(tiny_checkpoints: Path, tmp_path: Path) -> None:
    phantoms = write_phantoms(tmp_path / "phantoms", count=1, grade=0, size=SIZE, progress=False)
    with pytest.raises(DatasetError, match="not sampled pairs"):
        _sample(phantoms, tiny_checkpoints)


@pytest.mark.parametrize("kwargs", [{"count": 0}, {"grade": 5}, {"seed": -1}, {"size": 32}, {"shard": (2, 2)}])
def test_bad_arguments_are_refused(tiny_checkpoints: Path, tmp_path: Path, kwargs) -> None:
    with pytest.raises(InputError):
        _sample(tmp_path / "run", tiny_checkpoints, **kwargs)
    assert not (tmp_path / "run").exists()


def test_parse_shard() -> None:
    assert parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(InputError, match="shard"):
            parse_shard(bad)


def test_merge_refuses_mismatched_datasets(whole_run: Path, tiny_checkpoints: Path, tmp_path: Path) -> None:
    bigger = _sample(tmp_path / "bigger", tiny_checkpoints, size=SIZE + 16, count=1)
    with pytest.raises(DatasetError, match=f"{bigger}.*{SIZE + 16}-px"):
        merge_datasets([whole_run, bigger], out=tmp_path / "m1", progress=False)
    phantoms = write_phantoms(tmp_path / "phantoms", count=1, grade=0, size=SIZE, progress=False)
    with pytest.raises(DatasetError, match="columns"):
        merge_datasets([whole_run, phantoms], out=tmp_path / "m2", progress=False)
    with pytest.raises(InputError, match="one of the sources"):
        merge_datasets([whole_run], out=whole_run, progress=False)
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


def test_merge_refuses_different_samples_under_one_id(whole_run: Path, tiny_checkpoints: Path, tmp_path: Path) -> None:
    other = _sample(tmp_path / "other", tiny_checkpoints, seed=SEED + 1, count=2)
    with pytest.raises(DatasetError, match="sample-000000 differs"):
        merge_datasets([whole_run, other], out=tmp_path / "merged", progress=False)
    assert not (tmp_path / "merged").exists()


MAP_SIZE = 2 * SIZE  # JPEG's 4:2:0 chroma loses strokes two pixels wide: draw them four wide


def _label_map() -> np.ndarray:
    m = blank_template(size=MAP_SIZE)
    m[40:68, 24:60] = labels.HAEMORRHAGE
    m[60:80, 72:100] = labels.HARD_EXUDATE
    m[20:100, 62:66] = labels.VESSEL
    return m


def test_render_file_from_palette_png_and_jpeg(tiny_checkpoints: Path, tmp_path: Path) -> None:
    m = _label_map()
    palette = save_label_png(tmp_path / "map.png", m)
    jpeg = tmp_path / "map.jpg"
    Image.fromarray(labels.to_color(m)).save(jpeg, quality=90)
    from_jpeg = read_label_map(jpeg)
    assert (from_jpeg == m).mean() >= 0.99  # JPEG edges may move a few pixels

    a = render_file(palette, tmp_path / "a.png", seed=5, checkpoints=tiny_checkpoints)
    b = render_file(jpeg, tmp_path / "b.png", seed=5, checkpoints=tiny_checkpoints)
    studio = Studio.from_checkpoints(tiny_checkpoints)
    assert np.array_equal(read_image(a), studio.render(m, seed=5))
    assert np.array_equal(read_image(b), studio.render(from_jpeg, seed=5))
    c = render_file(palette, tmp_path / "c.jpg", seed=5, checkpoints=tiny_checkpoints)
    assert read_image(c).shape == (MAP_SIZE, MAP_SIZE, 3)


def test_render_file_with_a_style_photo(tiny_checkpoints: Path, tmp_path: Path) -> None:
    palette = save_label_png(tmp_path / "map.png", _label_map())
    style = tmp_path / "style.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (MAP_SIZE, MAP_SIZE, 3), dtype=np.uint8)).save(style)
    a = render_file(palette, tmp_path / "a.png", seed=0, style=style, checkpoints=tiny_checkpoints)
    b = render_file(palette, tmp_path / "b.png", seed=9, style=style, checkpoints=tiny_checkpoints)
    assert np.array_equal(read_image(a), read_image(b))  # the style replaces the seed's latent


def test_render_file_refuses_unknown_colours_unless_nearest(tiny_checkpoints: Path, tmp_path: Path) -> None:
    colour = labels.to_color(_label_map())
    colour[10:90, 10:90] = (123, 45, 200)  # a wide area off the palette
    path = tmp_path / "odd.png"
    Image.fromarray(colour).save(path)
    with pytest.raises(InputError, match=f"{path}.*--nearest"):
        render_file(path, tmp_path / "out.png", checkpoints=tiny_checkpoints)
    assert not (tmp_path / "out.png").exists()
    assert render_file(path, tmp_path / "out.png", checkpoints=tiny_checkpoints, nearest=True).is_file()


def test_render_file_refuses_other_formats(tiny_checkpoints: Path, tmp_path: Path) -> None:
    palette = save_label_png(tmp_path / "map.png", _label_map())
    with pytest.raises(InputError, match="out.tif"):
        render_file(palette, tmp_path / "out.tif", checkpoints=tiny_checkpoints)
    with pytest.raises(InputError, match="label map itself"):
        render_file(palette, palette, checkpoints=tiny_checkpoints)


@pytest.mark.parametrize("damage", ["corrupt spade", "missing label_flow", "corrupt label_upsampler"])
def test_a_bad_checkpoint_fails_before_any_output(tiny_checkpoints: Path, tmp_path: Path, damage: str) -> None:
    checkpoints = Path(shutil.copytree(tiny_checkpoints, tmp_path / "checkpoints"))
    kind, name = damage.split()
    path = checkpoints / f"{name}.safetensors"
    if kind == "corrupt":
        data = bytearray(path.read_bytes())
        mid = len(data) // 2  # inside the weights (the last bytes may hold zero-initialised layers)
        data[mid: mid + 100] = bytes(b ^ 0xFF for b in data[mid: mid + 100])
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match=f"{path}.*{kind}") as err:
        _sample(tmp_path / "run", checkpoints)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()
    if name == "spade":
        label = save_label_png(tmp_path / "map.png", _label_map())
        with pytest.raises(CheckpointError, match=str(path)):
            render_file(label, tmp_path / "sub" / "out.png", checkpoints=checkpoints)
        assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize(("change", "same"), [(1, True), (4, False)])
def test_merge_tolerates_render_rounding_only(whole_run: Path, tmp_path: Path, change: int, same: bool) -> None:
    """A sample rendered on another thread count may differ by a grey level: still the same sample."""
    twin = Path(shutil.copytree(whole_run, tmp_path / "twin"))
    photo = read_image(twin / "images/sample-000000.png").astype(np.int16)
    photo[10:20, 10:20] = np.clip(photo[10:20, 10:20] + change, 0, 255)  # photos are never all-white
    save_png(twin / "images/sample-000000.png", photo.astype(np.uint8))
    if same:
        merged = merge_datasets([whole_run, twin], out=tmp_path / "merged", progress=False)
        assert _files(merged) == _files(whole_run)  # the first source's copy is kept
    else:
        with pytest.raises(DatasetError, match="sample-000000 differs"):
            merge_datasets([whole_run, twin], out=tmp_path / "merged", progress=False)


def test_the_acgan_samples_when_asked_and_a_run_never_mixes_generators(tiny_checkpoints: Path, tmp_path: Path) -> None:
    out = generate.sample_dataset(tmp_path / "acgan", count=2, grade=None, seed=SEED, size=SIZE,
                                  checkpoints=tiny_checkpoints, generator="acgan", progress=False)
    ds = StudioDataset.open(out)
    assert {s.source for s in ds} == {"acgan+spade"}
    assert set(ds.info["meta"]["checkpoints"]) == {"acgan", "spade"}
    with pytest.raises(DatasetError, match="checkpoints"):
        generate.sample_dataset(out, count=2, grade=None, seed=SEED, size=SIZE, checkpoints=tiny_checkpoints,
                                progress=False)
