"""A real photo's style on a render (fundus_studio.style): class colours, illumination, texture, seams,
determinism, odd photos and the statistics cache. Photos and renders are painted by hand, so every
expected figure is known."""

from __future__ import annotations

import numpy as np
import pytest

from fundus_studio import labels, style
from fundus_studio.errors import InputError

SIZE = 128


def _map(*, vessels: bool = True, disc: bool = True, lesion: bool = False) -> np.ndarray:
    """A circular FOV with a disc on the left, two 3-px vessels and optionally a haemorrhage."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    c = (SIZE - 1) / 2
    m = np.where((yy - c) ** 2 + (xx - c) ** 2 <= (SIZE / 2 - 2) ** 2, labels.RETINA, labels.OUTSIDE).astype(np.uint8)
    if disc:
        m[(yy - c) ** 2 + (xx - 30) ** 2 <= 10**2] = labels.OPTIC_DISC
    if vessels:
        m[40:43, 20:110] = labels.VESSEL
        m[85:88, 20:110] = labels.VESSEL
    if lesion:
        m[60:70, 80:90] = labels.HAEMORRHAGE
    return m


def _paint(label_map: np.ndarray, colours: dict[int, tuple[int, int, int]], *, noise: float = 0.0,
           gradient: float = 0.0, seed: int = 0) -> np.ndarray:
    """Each class its colour, plus a left-to-right brightness ramp of ±``gradient`` and Gaussian noise."""
    img = np.zeros((*label_map.shape, 3), np.float64)
    for k, c in colours.items():
        img[label_map == k] = c
    img += gradient * np.linspace(-1, 1, label_map.shape[1])[None, :, None]
    img += np.random.default_rng(seed).normal(0, noise, img.shape) if noise else 0
    img[label_map == labels.OUTSIDE] = 0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


PHOTO_COLOURS = {labels.RETINA: (190, 80, 40), labels.OPTIC_DISC: (250, 200, 120), labels.VESSEL: (140, 30, 30)}
RENDER_COLOURS = {labels.RETINA: (200, 120, 110), labels.OPTIC_DISC: (235, 215, 190), labels.VESSEL: (170, 80, 80),
                  labels.HAEMORRHAGE: (120, 50, 50)}


def _class_lab(image: np.ndarray, label_map: np.ndarray, k: int, *, core: bool = True) -> np.ndarray:
    """Mean Lab of class k (its pixels 2 px away from other classes when ``core``)."""
    mask = label_map == k
    if core:
        import cv2

        mask = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) if k != labels.VESSEL else mask
    return style.rgb_to_lab(image)[mask].mean(axis=0)


@pytest.fixture(scope="module")
def photo_stats() -> tuple[np.ndarray, np.ndarray, style.StyleStats]:
    m = _map()
    photo = _paint(m, PHOTO_COLOURS, noise=3.0, gradient=20.0)
    return photo, m, style.statistics_of(photo, m, seed=1)


def test_class_means_move_to_the_photos(photo_stats) -> None:
    photo, m, stats = photo_stats
    render = _paint(m, RENDER_COLOURS)
    out = style.apply_style(render, m, stats)
    for k in (labels.RETINA, labels.OPTIC_DISC, labels.VESSEL):
        before = np.linalg.norm(_class_lab(render, m, k) - _class_lab(photo, m, k))
        after = np.linalg.norm(_class_lab(out, m, k) - _class_lab(photo, m, k))
        assert before > 10 and after < 3, (labels.NAMES[k], before, after)
    assert (out[m == labels.OUTSIDE] == render[m == labels.OUTSIDE]).all()  # outside the FOV: as drawn


def test_illumination_follows_the_photo(photo_stats) -> None:
    photo, m, stats = photo_stats
    out = style.apply_style(_paint(m, RENDER_COLOURS), m, stats)  # a flat render
    bg = style.background_mask(m, margin_px=3)
    left, right = bg & (np.arange(SIZE) < SIZE // 3)[None, :], bg & (np.arange(SIZE) > 2 * SIZE // 3)[None, :]
    lab_p, lab_o = style.rgb_to_lab(photo), style.rgb_to_lab(out)
    ramp_photo = lab_p[right][:, 0].mean() - lab_p[left][:, 0].mean()
    ramp_out = lab_o[right][:, 0].mean() - lab_o[left][:, 0].mean()
    assert ramp_photo > 5 and ramp_out == pytest.approx(ramp_photo, rel=0.2)


def test_background_texture_reaches_the_photos_energy(photo_stats) -> None:
    photo, m, stats = photo_stats
    green = lambda x: x[..., 1].astype(np.float32)  # noqa: E731
    flat = style.apply_style(_paint(m, RENDER_COLOURS), m, stats)  # no texture of its own: the grain fills it
    noisy = style.apply_style(_paint(m, RENDER_COLOURS, noise=12.0, seed=3), m, stats)  # too much: damped
    target = style.texture_energy(green(photo), m)
    assert target > 0
    for out in (flat, noisy):
        assert style.texture_energy(green(out), m) / target == pytest.approx(1.0, abs=0.3)


def test_classes_the_photo_lacks_keep_their_colour_relative_to_the_retina(photo_stats) -> None:
    _, _, stats = photo_stats
    m = _map(lesion=True)
    render = _paint(m, RENDER_COLOURS)
    out = style.apply_style(render, m, stats)
    diff = lambda x: _class_lab(x, m, labels.HAEMORRHAGE) - _class_lab(x, m, labels.RETINA)  # noqa: E731
    change = diff(out) - diff(render)  # moved with the retina; a*, b* also clipped to the gamut
    assert abs(change[0]) < 3 and np.linalg.norm(change) < 8
    assert np.linalg.norm(_class_lab(out, m, labels.RETINA) - _class_lab(render, m, labels.RETINA)) > 10


def test_no_seams_or_halos_at_class_borders(photo_stats) -> None:
    """A render whose vessel edges fade into the background: after the transfer the pixels beside the
    vessels are no brighter than the background far from them, and the disc's edge steps monotonically."""
    _, m, stats = photo_stats
    render = _paint(m, RENDER_COLOURS)
    render[39] = render[43] = np.where(m[39:40, :, None] == labels.RETINA, render[39], (185, 100, 95))  # blends
    out = style.rgb_to_lab(style.apply_style(render, m, stats))[..., 0]
    beside = out[[38, 44, 84, 89], 30:100]
    far = out[50:75, 40:100]
    assert beside.mean() <= far.mean() + 1.0
    row = out[int((SIZE - 1) / 2), 5:31]  # background → disc centre
    smooth = np.convolve(row, np.ones(3) / 3, mode="valid")
    assert np.all(np.diff(smooth[-12:]) > -1.5)  # rising into the disc, no dip at its edge
    assert np.abs(np.diff(out[60:70, 40:100], axis=1)).max() < 12  # inside the background: no jumps


def test_the_transfer_and_the_statistics_are_deterministic(photo_stats) -> None:
    photo, m, stats = photo_stats
    render = _paint(m, RENDER_COLOURS, noise=2.0)
    assert np.array_equal(style.apply_style(render, m, stats), style.apply_style(render, m, stats))
    again = style.statistics_of(photo, m, seed=1)
    assert np.array_equal(again.grain, stats.grain) and np.array_equal(again.field, stats.field)


def test_a_photo_without_disc_or_vessels_keeps_the_renders_structure() -> None:
    """A grey photo: no disc brighter than the background, no vessels. The render keeps its disc
    brighter and vessels darker than the retina, which takes the grey."""
    grey = np.full((SIZE, SIZE, 3), 128, np.uint8)
    m_photo = _map(vessels=False)
    stats = style.statistics_of(grey, m_photo)
    assert set(stats.classes) == {labels.RETINA} and labels.OPTIC_DISC in stats.absent
    assert stats.texture == 0.0
    m = _map()
    out = style.apply_style(_paint(m, RENDER_COLOURS), m, stats)
    retina = _class_lab(out, m, labels.RETINA)
    assert np.abs(retina - style.rgb_to_lab(grey)[0, 0]).max() < 2
    assert _class_lab(out, m, labels.OPTIC_DISC)[0] > retina[0] + 5 > retina[0] > _class_lab(out, m, labels.VESSEL)[0]


def test_odd_inputs_raise_clear_errors_or_pass_through() -> None:
    with pytest.raises(InputError, match="style photo: no field of view"):
        style.style_statistics(np.zeros((64, 64, 3), np.uint8), side=64)
    with pytest.raises(InputError, match="style photo: expected an \\(H, W, 3\\) uint8"):
        style.style_statistics(np.zeros((64, 64), np.uint8), side=64)
    with pytest.raises(InputError, match="no retinal background"):
        style.statistics_of(np.zeros((SIZE, SIZE, 3), np.uint8), np.zeros((SIZE, SIZE), np.uint8))
    stats = style.statistics_of(np.full((SIZE, SIZE, 3), 100, np.uint8), _map())
    blank = np.full((SIZE, SIZE, 3), 7, np.uint8)
    assert np.array_equal(style.apply_style(blank, np.zeros((SIZE, SIZE), np.uint8), stats), blank)  # no FOV
    with pytest.raises(InputError, match="do not match"):
        style.apply_style(blank[:64, :64], _map()[:64, :64], stats)


def test_a_uniform_grey_photo_goes_through_the_whole_path() -> None:
    """Preprocessing and extraction on a photo with nothing in it: a style, not a crash."""
    stats = style.style_statistics(np.full((80, 100, 3), 90, np.uint8), side=64)
    assert stats.side == 64 and labels.RETINA in stats.classes and labels.VESSEL not in stats.classes


def test_the_cache_measures_each_photo_once_per_side_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(photo: np.ndarray, *, side: int, config: style.StyleConfig) -> str:
        calls.append((int(photo[0, 0, 0]), side))
        return f"stats {photo[0, 0, 0]} {side}"

    monkeypatch.setattr(style, "style_statistics", fake)
    cache = style.StyleCache(size=2)
    photos = [np.full((8, 8, 3), v, np.uint8) for v in (1, 2, 3)]
    assert cache.get(photos[0], side=64) == cache.get(photos[0].copy(), side=64) == "stats 1 64"
    cache.get(photos[0], side=32)
    assert calls == [(1, 64), (1, 32)] and cache.misses == 2
    cache.get(photos[1], side=64)  # evicts the least recently used: (photo 1, 64)
    assert len(cache) == 2
    cache.get(photos[0], side=64)
    assert calls[-1] == (1, 64) and cache.misses == 4
    with pytest.raises(InputError, match="style photo"):
        cache.get(np.zeros((8, 8), np.float32), side=64)


@pytest.mark.parametrize("bad", [{"field_side": 4}, {"field_sigma": 0.0}, {"band": (4 / 512, 1 / 512)},
                                 {"band": (1 / 512, 0.1)}, {"max_gain": 0.5}, {"cache_size": 0}, {"seam_sigma_px": -1}])
def test_invalid_configs_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        style.StyleConfig(**bad)
