"""Procedural phantoms: determinism, grade statistics, geometry, photo semantics, dataset writing, CLI."""

from __future__ import annotations

import hashlib
import json
import math

import cv2
import numpy as np
import pytest

from fundus_studio import labels, phantom
from fundus_studio.cli import main
from fundus_studio.dataset import StudioDataset
from fundus_studio.errors import DatasetError, InputError
from fundus_studio.phantom import (
    LESION_KINDS,
    PhantomConfig,
    draw_lesion,
    generate_label_map,
    generate_phantom,
    render_photo,
    sample_layout,
    sample_seed,
    write_phantoms,
)

SMALL = 128  # most statistics are checked at this size: fast, and large enough for every lesion class
SEEDS = range(20)
VASCULAR = (labels.VESSEL, labels.NEOVASCULARISATION, labels.IRMA)


def _components(mask: np.ndarray) -> int:
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def _label_and_layout(grade: int, seed: int, size: int = SMALL) -> tuple[np.ndarray, phantom.PhantomLayout]:
    layout = sample_layout(rng=np.random.default_rng([seed, 99]), size=size)
    label = generate_label_map(grade=grade, rng=np.random.default_rng([seed, grade]), size=size, layout=layout)
    return label, layout


@pytest.fixture(scope="module")
def maps_by_grade() -> dict[int, list[np.ndarray]]:
    """Label maps for every grade and 20 seeds at 128²."""
    return {
        g: [generate_label_map(grade=g, rng=np.random.default_rng([s, g]), size=SMALL) for s in SEEDS]
        for g in range(labels.NUM_GRADES)
    }


# --- determinism -----------------------------------------------------------------------------------


def test_same_seed_same_phantom_and_different_seeds_differ() -> None:
    a = generate_phantom(grade=3, seed=7, size=SMALL)
    b = generate_phantom(grade=3, seed=7, size=SMALL)
    c = generate_phantom(grade=3, seed=8, size=SMALL)
    assert np.array_equal(a.label, b.label) and np.array_equal(a.image, b.image)
    assert (a.grade, a.seed) == (3, 7)
    assert not np.array_equal(a.label, c.label)
    assert not np.array_equal(a.image, c.image)
    assert a.label.shape == (SMALL, SMALL) and a.label.dtype == np.uint8
    assert a.image.shape == (SMALL, SMALL, 3) and a.image.dtype == np.uint8


def test_photo_is_a_function_of_label_and_seed() -> None:
    ph = generate_phantom(grade=4, seed=3, size=SMALL)
    # The phantom's photo is exactly the renderer applied to its label map.
    assert np.array_equal(render_photo(ph.label, seed=3), ph.image)
    assert np.array_equal(render_photo(ph.label, seed=11), render_photo(ph.label.copy(), seed=11))
    assert not np.array_equal(render_photo(ph.label, seed=11), ph.image)
    # Another label with the same seed paints another photo.
    other = generate_label_map(grade=0, rng=np.random.default_rng(5), size=SMALL)
    assert not np.array_equal(render_photo(other, seed=3), ph.image)


def test_sample_seed_is_stable_distinct_and_non_negative() -> None:
    seeds = [sample_seed(0, i) for i in range(1000)]
    assert seeds == [sample_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(1, 0) != sample_seed(0, 0) and sample_seed(0, 1) != sample_seed(1, 0)


# --- grades ----------------------------------------------------------------------------------------


def test_grade_0_has_no_lesion_pixels(maps_by_grade: dict[int, list[np.ndarray]]) -> None:
    for label in maps_by_grade[0]:
        assert not np.isin(label, labels.LESIONS).any()


def test_grade_1_has_only_microaneurysms(maps_by_grade: dict[int, list[np.ndarray]]) -> None:
    others = [c for c in labels.LESIONS if c != labels.MICROANEURYSM]
    for label in maps_by_grade[1]:
        assert not np.isin(label, others).any()
        assert 1 <= _components(label == labels.MICROANEURYSM) <= 5


def test_grade_2_lesion_mix(maps_by_grade: dict[int, list[np.ndarray]]) -> None:
    for label in maps_by_grade[2]:
        assert (label == labels.HAEMORRHAGE).any()
        assert not np.isin(label, (labels.NEOVASCULARISATION, labels.IRMA)).any()
    # Exudates in ~60 % and cotton-wool spots in ~30 % of grade-2 eyes: some, not all.
    ex = np.mean([(m == labels.HARD_EXUDATE).any() for m in maps_by_grade[2]])
    se = np.mean([(m == labels.SOFT_EXUDATE).any() for m in maps_by_grade[2]])
    assert 0.3 <= ex <= 0.9 and 0.05 <= se <= 0.6


def test_grade_3_is_severe_without_neovascularisation(maps_by_grade: dict[int, list[np.ndarray]]) -> None:
    for label in maps_by_grade[3]:
        assert not (label == labels.NEOVASCULARISATION).any()
        assert (label == labels.IRMA).any() and (label == labels.SOFT_EXUDATE).any()
        # ≥ 15 microaneurysms are drawn; a few may touch and merge into one component.
        assert _components(label == labels.MICROANEURYSM) >= 10
        assert _components(label == labels.HAEMORRHAGE) >= 10


def test_grade_4_has_neovascularisation(maps_by_grade: dict[int, list[np.ndarray]]) -> None:
    for label in maps_by_grade[4]:
        assert (label == labels.NEOVASCULARISATION).sum() >= 10


def test_lesion_burden_rises_with_grade(maps_by_grade: dict[int, list[np.ndarray]]) -> None:
    pixels = [np.mean([np.isin(m, labels.LESIONS).sum() for m in maps_by_grade[g]]) for g in range(labels.NUM_GRADES)]
    comps = [np.mean([_components(np.isin(m, labels.LESIONS)) for m in maps_by_grade[g]])
             for g in range(labels.NUM_GRADES)]
    assert all(a < b for a, b in zip(pixels, pixels[1:])), pixels
    assert all(a < b for a, b in zip(comps, comps[1:])), comps


def test_microaneurysm_size_at_512() -> None:
    label = generate_label_map(grade=3, rng=np.random.default_rng(1), size=512)
    n, _, stats, _ = cv2.connectedComponentsWithStats((label == labels.MICROANEURYSM).astype(np.uint8), connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_WIDTH:cv2.CC_STAT_HEIGHT + 1].max(axis=1)
    assert n > 1
    # 1–5 px at 512 (DATA.md); two neighbours may touch, and an MA may be cut by a haemorrhage.
    assert np.median(sizes) <= 5 and sizes.min() >= 1


# --- geometry --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [SMALL, 256])
def test_field_of_view_is_a_centred_circle(size: int) -> None:
    label, layout = _label_and_layout(2, 0, size)
    inside = label != labels.OUTSIDE
    yy, xx = np.mgrid[:size, :size]
    circle = np.hypot(xx - layout.center[0], yy - layout.center[1]) <= layout.fov_radius
    iou = (inside & circle).sum() / (inside | circle).sum()
    assert iou > 0.98
    assert 0.9 * size / 2 <= layout.fov_radius <= size / 2
    # No lesion, vessel or disc pixel outside the circle (allowing the rasterised rim).
    ring_out = np.hypot(xx - layout.center[0], yy - layout.center[1]) > layout.fov_radius + 1
    assert (label[ring_out] == labels.OUTSIDE).all()


def test_layout_follows_the_anatomy() -> None:
    sides = set()
    for seed in range(40):
        lay = sample_layout(rng=np.random.default_rng(seed), size=512)
        fov_d = 2 * lay.fov_radius
        assert 0.11 <= lay.dd / fov_d <= 0.14
        dist = math.dist(lay.disc, lay.fovea) / lay.dd
        assert 2.5 - 1e-9 <= dist <= 2.8 + 1e-9
        assert lay.fovea[1] > lay.disc[1]  # the fovea lies slightly below the disc
        assert math.dist(lay.fovea, lay.center) < 0.1 * lay.fov_radius  # near the image centre
        sides.add(lay.disc_on_left)
    assert sides == {True, False}


def test_disc_is_drawn_where_the_layout_puts_it() -> None:
    seen = set()
    for seed in range(8):
        label, lay = _label_and_layout(0, seed, 256)
        ys, xs = np.nonzero(label == labels.OPTIC_DISC)
        assert abs(xs.mean() - lay.disc[0]) < 0.15 * lay.dd and abs(ys.mean() - lay.disc[1]) < 0.2 * lay.dd
        # The disc with the vessels crossing it spans about one disc diameter.
        assert 0.85 * lay.dd <= xs.max() - xs.min() + 1 <= 1.15 * lay.dd
        seen.add(bool(xs.mean() < 128))
    assert seen == {True, False}


@pytest.mark.parametrize("size", [SMALL, 256, 512])
def test_vessel_fraction_is_plausible(size: int) -> None:
    seeds = range(6) if size < 512 else range(2)
    for seed in seeds:
        label = generate_label_map(grade=0, rng=np.random.default_rng(seed), size=size)
        fov = (label != labels.OUTSIDE).sum()
        frac = (label == labels.VESSEL).sum() / fov
        assert 0.04 <= frac <= 0.2, (size, seed, frac)


def test_vessel_tree_is_connected_and_tapers() -> None:
    for seed in range(4):
        label, lay = _label_and_layout(0, seed, 512)
        ves = (label == labels.VESSEL).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(ves, connectivity=8)
        assert stats[1:, cv2.CC_STAT_AREA].max() >= 0.85 * ves.sum()  # one tree, not scattered strokes
        # Widths on the centre lines (local maxima of the distance transform, ≈ (width + 1) / 2).
        dist = cv2.distanceTransform(ves, cv2.DIST_L2, 3)
        centre = (ves > 0) & (dist == cv2.dilate(dist, np.ones((3, 3), np.uint8)))
        width = (2 * dist - 1) / lay.dd
        yy, xx = np.mgrid[:512, :512]
        r_disc = np.hypot(xx - lay.disc[0], yy - lay.disc[1]) / lay.dd
        # Main vessels near the disc are ≈ 0.06–0.09 DD wide (DATA.md); far from it they are thinner.
        near = np.percentile(width[centre & (r_disc > 0.6) & (r_disc < 1.2)], 90)
        far = np.percentile(width[centre & (r_disc > 3.5)], 90)
        assert 0.05 <= near <= 0.11
        assert far < 0.8 * near


@pytest.mark.parametrize("grade", [0, 4])
def test_fovea_is_avascular(grade: int) -> None:
    for seed in range(6):
        label, lay = _label_and_layout(grade, seed, 256)
        yy, xx = np.mgrid[:256, :256]
        near_fovea = np.hypot(xx - lay.fovea[0], yy - lay.fovea[1]) < 0.4 * lay.dd
        assert not np.isin(label[near_fovea], VASCULAR).any()
        # ...while the ring just beyond the arcades' reach is not empty of vessels.
        ring = (np.hypot(xx - lay.fovea[0], yy - lay.fovea[1]) > 1.5 * lay.dd) & \
               (np.hypot(xx - lay.fovea[0], yy - lay.fovea[1]) < 2.5 * lay.dd)
        assert (label[ring] == labels.VESSEL).mean() > 0.03


def test_lesions_keep_off_the_disc_centre_and_outside() -> None:
    for seed in range(6):
        label, lay = _label_and_layout(3, seed, 256)
        yy, xx = np.mgrid[:256, :256]
        disc_core = np.hypot(xx - lay.disc[0], yy - lay.disc[1]) < 0.2 * lay.dd
        dots = (labels.MICROANEURYSM, labels.HARD_EXUDATE)
        assert not np.isin(label[disc_core], dots).any()


# --- photo -----------------------------------------------------------------------------------------


def test_photo_colours_follow_the_label() -> None:
    ph = generate_phantom(grade=4, seed=2, size=512)
    lab, img = ph.label, ph.image.astype(np.float64)
    retina = img[lab == labels.RETINA].mean(axis=0)
    # A fundus is orange-red: R > G > B, close to the mean of skimage.data.retina() (206, 82, 60).
    assert retina[0] > retina[1] > retina[2]
    assert 150 < retina[0] < 250 and 50 < retina[1] < 120
    assert img[lab == labels.OUTSIDE].mean() < 12  # black surround
    disc = img[lab == labels.OPTIC_DISC].mean(axis=0)
    assert disc.sum() > 1.25 * retina.sum()  # bright disc
    assert img[lab == labels.VESSEL][:, 1].mean() < 0.85 * retina[1]  # dark vessels (green channel)
    he = img[lab == labels.HAEMORRHAGE].mean(axis=0)
    assert he.sum() < 0.8 * retina.sum()  # dark red haemorrhages
    if (lab == labels.HARD_EXUDATE).any():
        ex = img[lab == labels.HARD_EXUDATE].mean(axis=0)
        assert ex[1] > 1.5 * retina[1]  # yellow: green rises far above the retina's
    se = img[lab == labels.SOFT_EXUDATE].mean(axis=0)
    assert se[2] > 1.5 * retina[2]  # pale cotton-wool spots


def test_photo_macula_is_darker() -> None:
    label, lay = _label_and_layout(0, 1, 256)
    img = render_photo(label, seed=1).astype(np.float64)
    yy, xx = np.mgrid[:256, :256]
    r = np.hypot(xx - lay.fovea[0], yy - lay.fovea[1]) / lay.dd
    ret = label == labels.RETINA
    assert img[(r < 0.3) & ret].mean() < 0.92 * img[(r > 1.5) & (r < 2.5) & ret].mean()


def test_render_photo_handles_any_label_map() -> None:
    blank = render_photo(np.zeros((96, 128), np.uint8), seed=0)
    assert blank.shape == (96, 128, 3) and blank.max() < 12
    no_disc = render_photo(np.full((80, 80), labels.RETINA, np.uint8), seed=0)
    assert no_disc.mean() > 40
    with pytest.raises(InputError):
        render_photo(np.full((64, 64), labels.NUM_CLASSES, np.uint8), seed=0)


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"grade": 5, "seed": 0, "size": 128},
    {"grade": -1, "seed": 0, "size": 128},
    {"grade": 0, "seed": -1, "size": 128},
    {"grade": 0, "seed": 0, "size": 100},
    {"grade": 0, "seed": 0, "size": 48},
])
def test_bad_arguments_raise_input_error(kwargs: dict) -> None:
    with pytest.raises(InputError):
        generate_phantom(**kwargs)


def test_config_is_validated_and_serialisable() -> None:
    with pytest.raises(ValueError):
        PhantomConfig(ma_count=((1, 2), (1, 5), (5, 30), (15, 60), (20, 80)))  # grade 0 must stay clean
    with pytest.raises(ValueError):
        PhantomConfig(he_count=((0, 0), (0, 0), (5, 1), (20, 80), (30, 100)))
    d = PhantomConfig().to_dict()
    assert json.loads(json.dumps(d)) == d and d["photo"]["retina_rgb"] == list(PhantomConfig().photo.retina_rgb)


# --- datasets and CLI ------------------------------------------------------------------------------


def test_write_phantoms_writes_a_valid_dataset(tmp_path) -> None:
    out = write_phantoms(tmp_path / "ph", count=6, grade=None, size=64, seed=3, progress=False)
    ds = StudioDataset.open(out)
    assert [s.id for s in ds] == [f"phantom-{i:06d}" for i in range(6)]
    assert ds.grades() == [i % labels.NUM_GRADES for i in range(6)]
    assert [s.seed for s in ds] == [sample_seed(3, i) for i in range(6)]
    assert {s.source for s in ds} == {"phantom"}
    assert ds.info["created_by"].startswith("fundus-studio phantom")
    assert ds.info["meta"]["seed"] == 3 and ds.info["meta"]["config"] == PhantomConfig().to_dict()
    ref = generate_phantom(grade=2, seed=sample_seed(3, 2), size=64)
    assert np.array_equal(ds.label(2), ref.label) and np.array_equal(ds.image(2), ref.image)


def test_write_phantoms_resumes_without_touching_existing_samples(tmp_path) -> None:
    out = tmp_path / "ph"
    write_phantoms(out, count=2, grade=1, size=64, seed=0, progress=False)
    files = sorted((out / "images").glob("*.png")) + sorted((out / "labels").glob("*.png"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    write_phantoms(out, count=4, grade=1, size=64, seed=0, progress=False)
    ds = StudioDataset.open(out)
    assert len(ds) == 4 and ds.grades() == [1] * 4
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before
    write_phantoms(out, count=4, grade=1, size=64, seed=0, progress=False)  # nothing left to do
    assert len(StudioDataset.open(out)) == 4
    with pytest.raises(DatasetError):
        write_phantoms(out, count=5, grade=1, size=64, seed=1, progress=False)  # another run's folder
    with pytest.raises(DatasetError):
        write_phantoms(out, count=5, grade=2, size=64, seed=0, progress=False)


@pytest.mark.parametrize("kwargs", [{"count": 0}, {"count": 2, "size": 72}, {"count": 2, "grade": 7},
                                    {"count": 2, "seed": -5}])
def test_write_phantoms_validates(tmp_path, kwargs: dict) -> None:
    args = {"grade": None, "size": 64, "progress": False, **kwargs}
    with pytest.raises(InputError):
        write_phantoms(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_cli_phantom(tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["phantom", "--out", str(out), "--count", "3", "--size", "64", "--seed", "5"]) == 0
    assert len(StudioDataset.open(out)) == 3
    assert main(["phantom", "--out", str(out), "--count", "3", "--size", "64", "--seed", "-2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "seed" in err


@pytest.mark.parametrize("argv", [["--size", "100"], ["--grade", "9"], ["--count", "0"]])
def test_cli_phantom_rejects_bad_arguments(tmp_path, capsys, argv: list[str]) -> None:
    base = {"--out": str(tmp_path / "o"), "--count": "2", "--size": "64"}
    for k, v in zip(argv[::2], argv[1::2]):
        base[k] = v
    with pytest.raises(SystemExit) as exc:
        main(["phantom", *[x for kv in base.items() for x in kv]])
    assert exc.value.code != 0
    assert "Traceback" not in capsys.readouterr().err


# Same seed, same bytes: SHA-256 prefixes of label maps and photos recorded before phantom.py became a
# package. A change here changes every phantom dataset: bump GENERATOR_VERSION and re-record on purpose.
# (cv2 or numpy releases that change their arithmetic could move these too; the pins say so at once.)
PINNED: tuple[tuple[int, int, int, str, str], ...] = (
    (0, 0, 64, "1e93288df7fd4fa5", "7b85355b54123426"),
    (1, 1, 128, "8711f8b0eaf8c92d", "461f1fc5055fe7be"),
    (2, 5, 128, "57e6b74b714bd207", "de14fe600fdbfbf3"),
    (3, 7, 256, "be40ecc06ffae21c", "d2876520009e9dff"),
    (4, 11, 128, "9123f562fa3805bf", "83a0dccacf67b3f4"),
    (4, 3, 256, "fd48c347fb63d535", "1f7b9c3176a95084"),
    (2, 12345678901, 96, "d82e2d46920d4def", "fac542698776c283"),
    (3, 42, 512, "f26f514fb176622c", "6f4805e86c7ed474"),
)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize(("grade", "seed", "size", "label_sha", "photo_sha"), PINNED)
def test_phantom_bytes_are_pinned(grade: int, seed: int, size: int, label_sha: str, photo_sha: str) -> None:
    ph = generate_phantom(grade=grade, seed=seed, size=size)
    assert (_sha(ph.label), _sha(ph.image)) == (label_sha, photo_sha)


# --- lesion stamps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(LESION_KINDS))
def test_draw_lesion_is_seeded_local_and_pure(kind: str) -> None:
    base = generate_label_map(grade=0, rng=np.random.default_rng(1), size=SMALL)
    before = base.copy()
    centre = (70.0, 60.0)
    a = draw_lesion(base, kind, centre=centre, diameter=12.0, seed=3, angle=0.5)
    b = draw_lesion(base, kind, centre=centre, diameter=12.0, seed=3, angle=0.5)
    assert np.array_equal(base, before)  # the input is not modified
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == base.shape
    changed = a != base
    assert changed.any() and set(np.unique(a[changed])) == {LESION_KINDS[kind]}
    ys, xs = np.nonzero(changed)
    assert np.hypot(xs - centre[0], ys - centre[1]).max() <= 12.0  # within the diameter (plus lobes)
    if kind != "microaneurysm":  # a dot has no random shape
        others = [draw_lesion(base, kind, centre=centre, diameter=12.0, seed=s, angle=0.5) for s in (4, 5)]
        assert any(not np.array_equal(a, o) for o in others)


def test_draw_lesion_stays_inside_the_field_of_view_and_validates() -> None:
    base = generate_label_map(grade=0, rng=np.random.default_rng(2), size=SMALL)
    out = draw_lesion(base, "blot_haemorrhage", centre=(2.0, 2.0), diameter=20.0, seed=0)
    assert np.array_equal(out == labels.OUTSIDE, base == labels.OUTSIDE)
    tiny = draw_lesion(base, "microaneurysm", centre=(64.3, 64.7), diameter=0.2, seed=0)
    assert tiny[64, 64] == labels.MICROANEURYSM  # the smallest dot keeps its pixel
    with pytest.raises(InputError, match="unknown lesion kind"):
        draw_lesion(base, "drusen", centre=(64.0, 64.0), diameter=5.0, seed=0)
    with pytest.raises(InputError, match="diameter"):
        draw_lesion(base, "hard_exudate", centre=(64.0, 64.0), diameter=0.0, seed=0)
