"""The render measures of issue 12 (training.evaluate_renders) on hand-made images with known answers:
CIELAB colour distance, background texture energy and ratio, blur inside the FOV, class-mean painting."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import deltaE_cie76, rgb2lab

from fundus_studio import labels
from training import evaluate_renders as er

SIZE = 512


def _lab(rgb: tuple[int, int, int]) -> np.ndarray:
    return rgb2lab(np.array([[rgb]], np.uint8))[0, 0]


def test_colour_distance_of_uniform_images_is_their_delta_e() -> None:
    a, b = (190, 80, 40), (120, 140, 200)
    img_a, img_b = np.full((16, 16, 3), a, np.uint8), np.full((8, 12, 3), b, np.uint8)  # sizes may differ
    fov_a, fov_b = np.ones((16, 16), bool), np.ones((8, 12), bool)
    assert er.colour_distance(img_a, img_a, render_fov=fov_a, photo_fov=fov_a) == pytest.approx(0.0, abs=1e-9)
    expected = deltaE_cie76(_lab(a), _lab(b))
    assert er.colour_distance(img_a, img_b, render_fov=fov_a, photo_fov=fov_b) == pytest.approx(expected, rel=1e-6)


def test_colour_distance_adds_the_sd_difference_and_ignores_outside_the_fov() -> None:
    """Half one grey, half another, against a uniform grey: ΔE of the means plus the L* sd (greys have
    a* = b* = 0, so only L* spreads)."""
    g1, g2, g3 = (60, 60, 60), (180, 180, 180), (100, 100, 100)
    render = np.zeros((10, 20, 3), np.uint8)
    render[:, :10], render[:, 10:] = g1, g2
    photo = np.full((10, 20, 3), g3, np.uint8)
    photo[0, 0] = (255, 0, 0)  # outside the photo's FOV: ignored
    fov = np.ones((10, 20), bool)
    photo_fov = fov.copy()
    photo_fov[0, 0] = False
    l1, l2, l3 = _lab(g1)[0], _lab(g2)[0], _lab(g3)[0]
    expected = abs((l1 + l2) / 2 - l3) + abs(l1 - l2) / 2
    assert er.colour_distance(render, photo, render_fov=fov, photo_fov=photo_fov) == pytest.approx(expected, abs=0.01)
    with pytest.raises(ValueError, match="non-empty"):
        er.colour_distance(render, photo, render_fov=~fov, photo_fov=fov)


def _sinusoid(amplitude: float, period: float) -> np.ndarray:
    x = np.arange(SIZE)
    img = np.full((SIZE, SIZE, 3), 120.0)
    img[..., 1] += amplitude * np.sin(2 * np.pi * x / period)[None, :]
    return img.astype(np.float32)


def test_texture_energy_of_a_sinusoid_is_its_band_passed_robust_variance() -> None:
    """A sinusoid of amplitude A and period p through the difference of Gaussians (σ 1 and 4 px at 512)
    has amplitude A·g, g = exp(−2π²σ₀²/p²) − exp(−2π²σ₁²/p²); the median |value| of a sinusoid of
    amplitude B is B/√2, so the robust energy is (1.4826 B/√2)². The image is kept float (no rounding)."""
    retina = np.full((SIZE, SIZE), labels.RETINA, np.uint8)
    amplitude, period = 6.0, 12.37  # not a whole number of pixels: the samples cover every phase
    g = np.exp(-2 * np.pi**2 * 1.0**2 / period**2) - np.exp(-2 * np.pi**2 * 4.0**2 / period**2)
    expected = (1.4826 * amplitude * g / np.sqrt(2)) ** 2
    from fundus_studio.style import texture_energy

    measured = texture_energy(_sinusoid(amplitude, period)[..., 1], retina)
    assert measured == pytest.approx(expected, rel=0.03)
    assert texture_energy(np.full((SIZE, SIZE), 120.0, np.float32), retina) == pytest.approx(0.0, abs=1e-8)


def test_texture_ignores_vessels_disc_and_lesions_and_the_ratio_is_an_energy_ratio() -> None:
    photo = np.rint(_sinusoid(6.0, 12.0)).astype(np.uint8)
    m = np.full((SIZE, SIZE), labels.RETINA, np.uint8)
    base = er.texture_energy(photo, m)
    marked, m2 = photo.copy(), m.copy()
    for k, rows in ((labels.VESSEL, slice(100, 104)), (labels.OPTIC_DISC, slice(200, 260)),
                    (labels.HAEMORRHAGE, slice(400, 410))):
        marked[rows] = (20, 0, 0)  # very dark: would dominate any energy that counted it
        m2[rows] = k
    assert er.texture_energy(marked, m2) == pytest.approx(base, rel=0.05)
    double = np.rint(_sinusoid(12.0, 12.0)).astype(np.uint8)
    assert er.texture_ratio(double, photo, render_map=m, photo_map=m) == pytest.approx(4.0, rel=0.05)
    flat = np.full_like(photo, 120)
    assert er.texture_ratio(photo, flat, render_map=m, photo_map=m) is None  # undefined against no texture
    assert er.texture_ratio(flat, photo, render_map=m, photo_map=m) == pytest.approx(0.0, abs=1e-6)


def test_blur_inside_the_fov_keeps_a_uniform_image_uniform_up_to_its_edge() -> None:
    yy, xx = np.mgrid[:64, :64]
    fov = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 <= 30**2
    img = np.zeros((64, 64, 3), np.uint8)
    img[fov] = (200, 90, 40)
    out = er.blur_inside_fov(img, fov, sigma=2.0)
    assert (out[fov] == (200, 90, 40)).all() and (out[~fov] == 0).all()  # the black surround does not bleed in
    spot = img.copy()
    spot[32, 32] = (255, 255, 255)
    assert er.blur_inside_fov(spot, fov, sigma=2.0)[32, 32, 2] < 255  # but it does blur


def test_painting_each_class_its_mean_colour() -> None:
    m = np.array([[0, 1], [1, 2]], np.uint8)
    photo = np.array([[[9, 9, 9], [10, 20, 30]], [[20, 40, 60], [200, 100, 0]]], np.uint8)
    assert er.paint_class_means(photo, m).tolist() == [[[9, 9, 9], [15, 30, 45]], [[15, 30, 45], [200, 100, 0]]]
