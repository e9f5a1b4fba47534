"""A phantom's label map: the anatomy, then the grade's lesions, composed in the taxonomy's paint order."""

from __future__ import annotations

import cv2
import numpy as np

from fundus_studio import labels
from fundus_studio.errors import InputError
from fundus_studio.phantom.anatomy import TreeBuilder, sample_layout
from fundus_studio.phantom.config import PhantomConfig, PhantomLayout, check_grade, check_size
from fundus_studio.phantom.draw import SHIFT, SHIFT_SCALE, Canvas, fixed_point, int_in
from fundus_studio.phantom.lesions import LesionPainter

# --- label map -------------------------------------------------------------------------------------


def generate_label_map(*, grade: int, rng: np.random.Generator, size: int = 512,
                       config: PhantomConfig = PhantomConfig(), layout: PhantomLayout | None = None) -> np.ndarray:
    """Draw a phantom label map, ``(size, size)`` uint8 class indices (see :mod:`fundus_studio.labels`).

    ``layout`` fixes the anatomy's positions (default: drawn from ``rng`` with :func:`sample_layout`,
    which is the first thing drawn, so a caller can reproduce it from an identical generator).
    """
    grade, size = check_grade(grade), check_size(size)
    cfg = config
    layout = layout if layout is not None else sample_layout(rng=rng, size=size, config=cfg)
    if layout.size != size:
        raise InputError(f"layout is for {layout.size}-px phantoms, asked for {size} px")
    shape = (size, size)

    # Field of view, disc.
    fov = np.zeros(shape, np.uint8)
    cv2.circle(fov, fixed_point(layout.center), round(layout.fov_radius * SHIFT_SCALE), 1, -1, cv2.LINE_8, SHIFT)
    fov = fov.astype(bool)
    disc = np.zeros(shape, np.uint8)
    axes = (round(layout.dd / 2 * SHIFT_SCALE), round(layout.dd / 2 * layout.disc_aspect * SHIFT_SCALE))
    tilt = float(rng.uniform(-cfg.disc_tilt, cfg.disc_tilt))
    cv2.ellipse(disc, fixed_point(layout.disc), axes, tilt, 0, 360, 1, -1, cv2.LINE_8, SHIFT)

    # Vessel tree.
    tree = TreeBuilder(rng, layout, cfg)
    vessels = Canvas(size, cfg.supersample)
    for path in tree.build():
        vessels.path(path, min_px=cfg.min_vessel_px)

    # Lesions of the grade.
    paint = LesionPainter(rng, layout, cfg, tree)
    paint.microaneurysms(int_in(rng, cfg.ma_count[grade]))
    paint.haemorrhages(int_in(rng, cfg.he_count[grade]), cfg.he_flame_fraction[grade])
    if rng.random() < cfg.ex_probability[grade]:
        paint.exudates(max(1, int_in(rng, cfg.ex_groups[grade])))
    if rng.random() < cfg.se_probability[grade]:
        paint.cotton_wool(max(1, int_in(rng, cfg.se_count[grade])))
    if rng.random() < cfg.irma_probability[grade]:
        paint.irma(max(1, int_in(rng, cfg.irma_count[grade])))
    at_disc = rng.random() < cfg.nvd_probability[grade]
    elsewhere = int_in(rng, cfg.nve_count) if rng.random() < cfg.nve_probability[grade] else 0
    if cfg.nvd_probability[grade] > 0 and not at_disc and not elsewhere:
        at_disc = True  # proliferative DR has NV somewhere: fall back to the disc
    if at_disc or elsewhere:
        paint.neovascularisation(at_disc=at_disc, elsewhere=elsewhere)

    masks: dict[int, np.ndarray] = {labels.RETINA: fov, labels.OPTIC_DISC: disc.astype(bool) & fov,
                                    labels.VESSEL: vessels.mask() & fov}
    faz = np.zeros(shape, np.uint8)
    cv2.circle(faz, fixed_point(layout.fovea), round(layout.faz_radius * SHIFT_SCALE), 1, -1, cv2.LINE_8, SHIFT)
    for cls, canvas in paint.canvases.items():
        m = canvas.mask() & fov
        if cls in (labels.NEOVASCULARISATION, labels.IRMA):
            m &= ~faz.astype(bool)  # new and abnormal vessels stay out of the avascular fovea too
        masks[cls] = m
    if paint.ma_centres:
        c = np.clip(np.floor(np.asarray(paint.ma_centres)).astype(int), 0, size - 1)
        ma = masks[labels.MICROANEURYSM]
        ma[c[:, 1], c[:, 0]] = fov[c[:, 1], c[:, 0]]  # the smallest MA keeps at least one pixel
    return labels.compose(masks, shape=shape, base=labels.OUTSIDE)
