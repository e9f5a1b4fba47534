"""The Python API over a checkpoints folder: every step in and out as numpy, seeded, with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from fundus_studio import labels
from fundus_studio.editor import blank_template
from fundus_studio.errors import CheckpointError, InputError
from fundus_studio.studio import Studio

SIZE = 64


@pytest.fixture(scope="module")
def studio(tiny_checkpoints) -> Studio:
    return Studio.from_checkpoints(tiny_checkpoints)


def test_sample_labels_is_seeded_and_valid(studio: Studio) -> None:
    a = studio.sample_labels(grade=3, count=2, seed=5, size=SIZE)
    b = studio.sample_labels(grade=3, count=2, seed=5, size=SIZE)
    c = studio.sample_labels(grade=3, count=2, seed=6, size=SIZE)
    assert a.shape == (2, SIZE, SIZE) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.max() < labels.NUM_CLASSES
    assert a[0, 0, 0] == labels.OUTSIDE  # the corners lie outside the circular field of view


def test_render_is_seeded_and_sized(studio: Studio) -> None:
    m = blank_template(size=SIZE)
    m[20:30, 20:30] = labels.HAEMORRHAGE
    a, b = studio.render(m, seed=1), studio.render(m, seed=1)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, studio.render(m, seed=2))


def test_render_pads_odd_shapes_and_crops_back(studio: Studio) -> None:
    m = np.full((50, 70), labels.RETINA, np.uint8)  # neither square nor a multiple of the stride
    assert studio.render(m, seed=0).shape == (50, 70, 3)


def test_render_refuses_unknown_classes(studio: Studio) -> None:
    m = blank_template(size=SIZE)
    m[0, 0] = 42
    with pytest.raises(InputError, match="outside 0..9"):
        studio.render(m, seed=0)


def test_style_photo_changes_the_render(studio: Studio) -> None:
    m = blank_template(size=SIZE)
    rng = np.random.default_rng(0)
    s1 = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    s2 = np.full((SIZE, SIZE, 3), 30, np.uint8)
    r1 = studio.render(m, seed=0, style=s1)
    assert np.array_equal(r1, studio.render(m, seed=99, style=s1))  # the style replaces the seed's latent
    assert not np.array_equal(r1, studio.render(m, seed=0, style=s2))


def test_extract_uses_the_segmenter_when_present(studio: Studio) -> None:
    from skimage import data

    photo = data.retina()[::4, ::4].copy()
    out = studio.extract(photo, size=SIZE)
    masks = studio.segment(photo, size=SIZE)
    assert out.shape == (SIZE, SIZE) and out[0, 0] == labels.OUTSIDE
    assert set(masks) == set(labels.LESIONS)
    assert all(m.shape == (SIZE, SIZE) and m.dtype == bool for m in masks.values())
    any_lesion = np.logical_or.reduce(list(masks.values()))
    assert any_lesion.any()  # an untrained net fires somewhere: enough to see the masks are used
    assert np.isin(out[any_lesion], labels.LESIONS).all()
    for k in labels.LESIONS:
        assert masks[k][out == k].all()


def test_extract_photo_offers_lesions_as_suggestions_and_is_cached(studio: Studio) -> None:
    from skimage import data

    photo = data.retina()[::4, ::4].copy()
    got = studio.extract_photo(photo, size=SIZE)
    assert got.photo.shape == (SIZE, SIZE, 3) and got.label_map.shape == (SIZE, SIZE)
    assert not np.isin(got.label_map, labels.LESIONS).any()  # the U-Net's finds are not in the map ...
    masks = studio.segment(photo, size=SIZE)
    thresholds = studio.model("unet").class_thresholds
    offered = {k: p >= thresholds[k] for k, p in got.suggestions.probabilities.items()}
    assert set(offered) == set(masks) and all(np.array_equal(offered[k], masks[k]) for k in masks)  # ... but offered
    assert (got.photo[got.label_map == labels.OUTSIDE] == 0).all()  # the squared photo the map belongs to
    assert studio.extract_photo(photo.copy(), size=SIZE) is got  # cached by content: no second U-Net run
    assert studio.lesion_probabilities(photo, size=SIZE) is got.suggestions


def test_edit_photo_keeps_the_photo_away_from_the_change(studio: Studio) -> None:
    from skimage import data

    got = studio.extract_photo(data.retina()[::4, ::4].copy(), size=SIZE)
    assert np.array_equal(studio.edit_photo(got.photo, got.label_map, got.label_map, seed=0), got.photo)
    edited = got.label_map.copy()
    edited[30:34, 40:44] = labels.HAEMORRHAGE
    out = studio.edit_photo(got.photo, got.label_map, edited, seed=0)
    near = np.zeros((SIZE, SIZE), bool)
    near[30 - 16:34 + 16, 40 - 16:44 + 16] = True
    assert np.array_equal(out[~near], got.photo[~near]) and not np.array_equal(out[near], got.photo[near])
    assert np.array_equal(out, studio.edit_photo(got.photo, got.label_map, edited, seed=0))  # deterministic


def test_grade_probabilities(studio: Studio) -> None:
    p = studio.classify_grade(blank_template(size=SIZE))
    assert p.shape == (labels.NUM_GRADES,) and p.sum() == pytest.approx(1.0, abs=1e-5)


def test_sample_pairs_seeds_each_pair(studio: Studio) -> None:
    pairs = studio.sample_pairs(grades=[0, 4], per_grade=2, seed=3, size=SIZE)
    assert [g for _, _, g, _ in pairs] == [0, 0, 4, 4]
    assert len({s for _, _, _, s in pairs}) == 4
    again = studio.sample_pairs(grades=[0, 4], per_grade=2, seed=3, size=SIZE)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(pairs, again))


def test_missing_checkpoint_says_how_to_regenerate(tmp_path) -> None:
    studio = Studio.from_checkpoints(tmp_path)
    with pytest.raises(CheckpointError, match=r"spade\.safetensors: missing .*make checkpoints"):
        studio.render(blank_template(size=SIZE), seed=0)
    assert studio.classify_grade(blank_template(size=SIZE)) is None
    assert "missing" in studio.describe()


@pytest.mark.parametrize("name, generator", [("label_flow", None), ("label_upsampler", None), ("acgan", "acgan")])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, tiny_checkpoints, name: str, generator: str | None) -> None:
    import shutil

    for f in tiny_checkpoints.iterdir():
        shutil.copy(f, tmp_path / f.name)
    weights = tmp_path / f"{name}.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{name}\.safetensors: corrupt"):
        Studio.from_checkpoints(tmp_path).sample_labels(grade=0, count=1, seed=0, size=SIZE, generator=generator)


def test_checkpoint_hashes_and_description(studio: Studio) -> None:
    hashes = studio.checkpoint_hashes()
    assert set(hashes) == {"label_flow", "label_upsampler", "acgan", "spade", "unet", "grade_classifier"}
    assert all(len(h) == 16 for h in hashes.values())
    assert "untrained test model" in studio.describe()


def test_the_flow_prior_is_the_default_generator_and_the_acgan_stays_selectable(tiny_checkpoints) -> None:
    from fundus_studio import Studio as TopLevel  # the package exports the API

    studio = TopLevel.from_checkpoints(tiny_checkpoints)
    assert studio.generator_name() == "flow"
    assert studio.sampling_checkpoints() == ("label_flow", "label_upsampler")
    assert studio.sampling_checkpoints("acgan") == ("acgan",)  # an ACGAN of hard labels: no upsampler
    flow = studio.sample_labels(grade=2, count=1, seed=3, size=SIZE)
    acgan = studio.sample_labels(grade=2, count=1, seed=3, size=SIZE, generator="acgan")
    assert not np.array_equal(flow, acgan)
    assert np.array_equal(acgan, Studio(tiny_checkpoints, generator="acgan").sample_labels(grade=2, count=1, seed=3,
                                                                                           size=SIZE))
    with pytest.raises(InputError, match="unknown generator"):
        studio.sample_labels(grade=2, count=1, seed=3, generator="diffusion")
    with pytest.raises(InputError, match="unknown generator"):
        Studio(tiny_checkpoints, generator="gan")


def test_without_a_flow_prior_the_acgan_is_the_default(tiny_checkpoints, tmp_path) -> None:
    import shutil

    folder = tmp_path / "ck"
    shutil.copytree(tiny_checkpoints, folder)
    for name in ("label_flow.safetensors", "label_flow.json"):
        (folder / name).unlink()
    studio = Studio(folder)
    assert studio.generator_name() == "acgan"
    assert studio.sample_labels(grade=1, count=1, seed=0, size=SIZE).shape == (1, SIZE, SIZE)
    with pytest.raises(CheckpointError, match="label_flow"):
        studio.sample_labels(grade=1, count=1, seed=0, generator="flow")


def test_models_tab_shows_the_card_without_its_yaml_metadata(tiny_checkpoints, tmp_path) -> None:
    import shutil

    from fundus_studio.studio import split_front_matter

    folder = tmp_path / "ck"
    shutil.copytree(tiny_checkpoints, folder)
    (folder / "README.md").write_text("---\nlicense: mit\ntags: [a]\n---\n\n# The card\n")
    assert split_front_matter((folder / "README.md").read_text())[0] == "---\nlicense: mit\ntags: [a]\n---\n"
    text = Studio(folder).describe()
    assert "# The card" in text and "license: mit" not in text
    assert split_front_matter("# no metadata\n") == (None, "# no metadata\n")


def test_the_upsampler_follows_only_priors_of_soft_maps_at_its_side(tiny_checkpoints, tmp_path) -> None:
    import json
    import shutil

    from fundus_studio.pipeline import takes_upsampler

    folder = tmp_path / "ck"
    shutil.copytree(tiny_checkpoints, folder)
    up = folder / "label_upsampler.safetensors"
    assert takes_upsampler(folder / "label_flow.safetensors", up)
    assert not takes_upsampler(folder / "acgan.safetensors", up)  # trained on hard labels
    info = json.loads((folder / "label_flow.json").read_text())
    info["config"]["resolution"] = 32  # a prior of another side (the JSON alone decides)
    (folder / "label_flow.json").write_text(json.dumps(info))
    assert not takes_upsampler(folder / "label_flow.safetensors", up)
