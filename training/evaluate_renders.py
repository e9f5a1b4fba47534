"""How close are a SPADE renderer's photos to the real photos of held-out label maps?

    python -m training.evaluate_renders --checkpoint runs/spade-demo/spade.safetensors \
        --data data/phantoms-test --count 50 --out report.json

Each held-out label map is rendered through ``pipeline.Renderer`` (a) with a style code drawn from
a seed and, when the checkpoint has a style encoder, (b) in the style of the pair's own photo; the
render is compared with that photo: mean absolute error in 8-bit units (L1, lower is better) and SSIM
(skimage, ``channel_axis=-1, data_range=255``; higher is better). The same is measured for an
untrained generator (and encoder) of the same architecture, seeded, as the baseline, and for a harder
reference the label maps painted with each class's mean colour in the evaluated photos. Pairs are
resized to the resolution the checkpoint was trained at (its JSON's ``data.resolution``) unless
``--resolution`` says otherwise. Prints a markdown table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.metrics import structural_similarity

from fundus_studio.checkpoint import paths_for, read_info
from fundus_studio.errors import StudioError
from fundus_studio.labels import NAMES, NUM_CLASSES, OUTSIDE
from fundus_studio.metrics import SegmentationMetrics
from fundus_studio.models.spade import SpadeGenerator, StyleEncoder
from fundus_studio.models.unet import UNet
from fundus_studio.pipeline import Renderer, photo_to_tensor
from training import harness
from training.evaluate_segmentation import score_batch

PIXEL_RANGE = 255  # photos are 8-bit


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: Path  # spade.safetensors (spade_encoder.safetensors beside it is used if present)
    data: Path  # held-out studio dataset of (photo, label map) pairs
    count: int = 50  # pairs evaluated (a seeded choice when the dataset holds more)
    seed: int = 0  # picks the pairs, the style codes and the untrained baseline's weights
    resolution: int = 0  # 0 = the checkpoint's training resolution
    untrained: bool = True  # also evaluate an untrained model of the same architecture
    out: Path | None = None  # JSON report

    def __post_init__(self) -> None:
        if self.count < 1 or self.resolution < 0:
            raise ValueError(f"count must be positive and resolution ≥ 0, got {self.count}, {self.resolution}")


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate_renders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="RUN/spade.safetensors")
    parser.add_argument("--data", type=Path, required=True, help="held-out studio dataset")
    parser.add_argument("--count", type=int, default=50, help="pairs to evaluate (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of pairs, style codes, baseline")
    parser.add_argument("--resolution", type=int, default=0, help="render size (default: the training resolution)")
    parser.add_argument("--no-untrained", dest="untrained", action="store_false", help="skip the untrained baseline")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    try:
        return EvalConfig(**vars(args))
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable


def photo_metrics(render: np.ndarray, photo: np.ndarray) -> tuple[float, float]:
    """(H, W, 3) uint8 pair → (mean |render − photo| in 8-bit units, SSIM)."""
    l1 = float(np.abs(render.astype(np.float32) - photo.astype(np.float32)).mean())
    ssim = float(structural_similarity(render, photo, channel_axis=-1, data_range=PIXEL_RANGE))
    return l1, ssim


# --- a real photo's style: colour distance and background texture (issue 12) ---------------------

OWN_STYLE_BLUR_PX = 2.0  # σ of the Gaussian blur before pixel metrics of own-style renders


def colour_distance(render: np.ndarray, photo: np.ndarray, *, render_fov: np.ndarray, photo_fov: np.ndarray) -> float:
    """CIELAB colour distance of two fundus images inside their fields of view: ΔE*76 (Euclidean
    distance in L*a*b*) between the two mean colours, plus the Euclidean norm of the differences of
    the per-channel standard deviations. 0 for equal colour statistics; same units as ΔE (about 2.3
    is a just-noticeable difference). ``render``, ``photo``: ``(H, W, 3)`` uint8 sRGB; the FOVs
    ``(H, W)`` bool (the two images may differ in size)."""
    from skimage.color import rgb2lab

    if not render_fov.any() or not photo_fov.any():
        raise ValueError("colour distance needs non-empty fields of view")
    a, b = rgb2lab(render)[render_fov], rgb2lab(photo)[photo_fov]
    return float(np.linalg.norm(a.mean(axis=0) - b.mean(axis=0)) + np.linalg.norm(a.std(axis=0) - b.std(axis=0)))


def texture_energy(image: np.ndarray, label_map: np.ndarray) -> float:
    """Background texture of a fundus image ``(H, W, 3)`` uint8 drawn from / extracted as ``label_map``
    ``(H, W)``: the energy (8-bit units²) of the green channel's band-pass residual — a difference of
    Gaussians of σ = side/512 and 4·side/512 px, each a normalised convolution over the retinal
    background only — over the background pixels at least 2 px from vessels, disc, lesions and the
    FOV's edge. The energy is robust, (1.4826 × MAD)², so that vessels an extracted map misses do not
    count as texture (``fundus_studio.style.texture_energy``, the measure the style transfer matches)."""
    from fundus_studio.style import texture_energy as energy

    return energy(image[..., 1].astype(np.float32), label_map)


def texture_ratio(render: np.ndarray, photo: np.ndarray, *, render_map: np.ndarray, photo_map: np.ndarray
                  ) -> float | None:
    """Background texture energy of ``render`` / of ``photo`` (1 = as much fine structure as the photo);
    None when the photo has none."""
    ref = texture_energy(photo, photo_map)
    return texture_energy(render, render_map) / ref if ref > 0 else None


def blur_inside_fov(image: np.ndarray, fov: np.ndarray, *, sigma: float = OWN_STYLE_BLUR_PX) -> np.ndarray:
    """Gaussian blur of σ px by normalised convolution inside ``fov`` (black outside stays out of it);
    ``(H, W, 3)`` uint8 → uint8, black outside the FOV."""
    from fundus_studio.style import masked_blur

    out = np.rint(masked_blur(image.astype(np.float32), fov, sigma)).clip(0, 255).astype(np.uint8)
    out[~fov] = 0
    return out


def paint_class_means(photo: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """The label map painted with this photo's own mean colour per class: ``(H, W, 3)`` uint8."""
    means = np.zeros((NUM_CLASSES, 3))
    for k in np.unique(label_map):
        means[k] = photo[label_map == k].mean(axis=0)
    return np.rint(means[label_map]).astype(np.uint8)


def _summary(values: list[float | None]) -> dict[str, float | None]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else None, "sd": float(v.std()) if v.size else None,
            "median": float(np.median(v)) if v.size else None, "count": int(v.size)}


def own_style(renderer: Renderer, photos: np.ndarray, maps: np.ndarray, *, seed: int, keep: int = 0
              ) -> tuple[dict[str, Any], list[tuple[np.ndarray, ...]]]:
    """Each map of ``maps`` ``(N, S, S)`` rendered in the style of its own photo of ``photos``
    ``(N, S, S, 3)`` (``render(map, style=photo)``), scored against
    the photo after a ``OWN_STYLE_BLUR_PX`` blur inside the FOV (blur first: no map fixes a texture's
    phase, so unblurred pixel metrics reward blur): L1 and SSIM, beside the same for the map painted
    with the photo's own class means; plus texture ratio and colour distance. → (summary, the first
    ``keep`` (photo, map, render, painted) tuples for a figure)."""
    rows: dict[str, list[float | None]] = {k: [] for k in ("l1", "ssim", "flat_l1", "flat_ssim", "texture_ratio",
                                                            "colour_distance")}
    shown = []
    for i, (photo, label) in enumerate(zip(photos, maps)):
        fov = label != OUTSIDE
        render = renderer.render(label, seed=seed + i, style=photo)
        painted = paint_class_means(photo, label)
        ref = blur_inside_fov(photo, fov)
        l1, ssim = photo_metrics(blur_inside_fov(render, fov), ref)
        fl1, fssim = photo_metrics(blur_inside_fov(painted, fov), ref)
        for key, value in (("l1", l1), ("ssim", ssim), ("flat_l1", fl1), ("flat_ssim", fssim),
                           ("texture_ratio", texture_ratio(render, photo, render_map=label, photo_map=label)),
                           ("colour_distance", colour_distance(render, photo, render_fov=fov, photo_fov=fov))):
            rows[key].append(value)
        if i < keep:
            shown.append((photo, label, render, painted))
    return {"count": len(maps), "side": int(maps.shape[-1]), "blur_px": OWN_STYLE_BLUR_PX,
            **{k: _summary(v) for k, v in rows.items()}}, shown


def real_photo(renderer: Renderer, photo: np.ndarray, *, size: int, seed: int
               ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A real fundus photo: preprocessed to ``size`` by the one path, its map extracted (FOV, disc,
    vessels: ``fundus-studio extract``), rendered in its own style and in the style of ``seed``; colour
    distance and texture ratio of both against the photo. → (figures, images for a figure)."""
    from fundus_studio.extract import label_map_from_preprocessed
    from fundus_studio.preprocess import preprocess

    pre = preprocess(photo, size=size)
    label = label_map_from_preprocessed(pre.photo, pre.fov)
    fov = label != OUTSIDE
    images = {"photo": pre.photo, "map": label, "own": renderer.render(label, seed=seed, style=photo),
              "seeded": renderer.render(label, seed=seed)}
    figures: dict[str, Any] = {"size": size, "classes": {name: int((label == k).sum()) for k, name in enumerate(NAMES)
                                                         if (label == k).any()}}
    for mode in ("own", "seeded"):
        figures[mode] = {
            "colour_distance": colour_distance(images[mode], pre.photo, render_fov=fov, photo_fov=fov),
            "texture_ratio": texture_ratio(images[mode], pre.photo, render_map=label, photo_map=label)}
    return figures, images


def untrained_like(renderer: Renderer, *, seed: int) -> Renderer:
    """A freshly initialised (seeded) generator and encoder with the renderer's architecture."""
    torch.manual_seed(seed)
    g = SpadeGenerator(renderer.generator.config)
    e = StyleEncoder(renderer.encoder.config) if renderer.encoder is not None else None
    return Renderer(g, encoder=e, device=renderer.device)


def class_mean_baseline(pairs: harness.Pairs) -> dict[str, dict[str, float]]:
    """Paint each label map with its classes' mean colours, measured on these very photos: what a
    renderer that knows only flat per-class colours (an oracle's) would score."""
    images, maps = pairs.images.numpy().astype(np.float64), pairs.maps.numpy()
    means = np.zeros((NUM_CLASSES, 3))
    for k in np.unique(maps):
        means[k] = images[maps == k].mean(axis=0)
    painted = np.rint(means[maps]).astype(np.uint8)
    arr = np.array([photo_metrics(painted[i], pairs.images[i].numpy()) for i in range(len(pairs))])
    return {"flat": {"l1": float(arr[:, 0].mean()), "l1_std": float(arr[:, 0].std()),
                     "ssim": float(arr[:, 1].mean()), "ssim_std": float(arr[:, 1].std())}}


def render_seeded(renderer: Renderer, pairs: harness.Pairs, *, seed: int) -> np.ndarray:
    """``(N, R, R, 3)`` uint8: pair i's label map rendered with the style code of seed ``seed + i``."""
    return np.stack([renderer.render(pairs.maps[i].numpy(), seed=seed + i) for i in range(len(pairs))])


def render_styled(renderer: Renderer, pairs: harness.Pairs, *, seed: int) -> np.ndarray:
    """``(N, R, R, 3)`` uint8: pair i's label map rendered in the style of its own photo."""
    return np.stack([renderer.render(pairs.maps[i].numpy(), seed=seed + i, style=pairs.images[i].numpy())
                     for i in range(len(pairs))])


def evaluate(renderer: Renderer, pairs: harness.Pairs, *, seed: int, seeded: np.ndarray | None = None,
             styled: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of L1 and SSIM per style mode ("seeded", and "photo" with an encoder).
    ``seeded`` / ``styled``: the pairs' :func:`render_seeded` / :func:`render_styled` renders when the
    caller already has them (e.g. drawn at another side and resized as the photos were)."""
    renders = render_seeded(renderer, pairs, seed=seed) if seeded is None else seeded
    if styled is None and renderer.encoder is not None:
        styled = render_styled(renderer, pairs, seed=seed)
    scores: dict[str, list[tuple[float, float]]] = {"seeded": []}
    if styled is not None:
        scores["photo"] = []
    for i in range(len(pairs)):
        photo = pairs.images[i].numpy()
        scores["seeded"].append(photo_metrics(renders[i], photo))
        if styled is not None:
            scores["photo"].append(photo_metrics(styled[i], photo))
    out = {}
    for mode, vals in scores.items():
        arr = np.array(vals)
        out[mode] = {"l1": float(arr[:, 0].mean()), "l1_std": float(arr[:, 0].std()),
                     "ssim": float(arr[:, 1].mean()), "ssim_std": float(arr[:, 1].std())}
    return out


@torch.inference_mode()
def segmentation_fidelity(unet: UNet, pairs: harness.Pairs, *, renders: np.ndarray, batch: int = 8
                          ) -> dict[str, dict[str, Any]]:
    """SPADE's mIoU protocol: a U-Net trained on real photos segments (a) the real photos and (b)
    ``renders`` ``(N, R, R, 3)``, the renders of their label maps; both are scored against the label
    maps. → ``{"real": metrics, "render": metrics}`` (``fundus_studio.metrics`` results over the
    U-Net's classes; predictions outside the FOV dropped, as in ``training.evaluate_segmentation``).
    A renderer as good as the real photos for the U-Net scores the same IoU on both."""
    unet = unet.eval()
    scored = {name: SegmentationMetrics(classes=unet.config.classes) for name in ("real", "render")}
    for start in range(0, len(pairs), batch):
        maps = pairs.maps[start:start + batch]
        photos = {"real": pairs.images[start:start + batch].numpy(), "render": renders[start:start + batch]}
        for name, images in photos.items():
            x = photo_to_tensor(images).contiguous(memory_format=torch.channels_last)
            score_batch(scored[name], torch.sigmoid(unet(x).float()), maps)
    return {name: m.compute() for name, m in scored.items()}


def markdown(results: dict[str, dict[str, dict[str, float]]], *, count: int, resolution: int) -> str:
    style_names = {"seeded": "seeded N(0, I) code", "photo": "the held-out photo's own style (encoder μ)",
                   "flat": "– (each class painted its mean colour in these photos)"}
    lines = [f"{count} held-out pairs at {resolution}²; L1 in 8-bit units (lower is better), SSIM (higher is better)",
             "", "| model | style code | L1 ↓ | SSIM ↑ |", "|---|---|---|---|"]
    for model, modes in results.items():
        for mode, m in modes.items():
            lines.append(f"| {model} | {style_names[mode]} | {m['l1']:.2f} ± {m['l1_std']:.2f} | "
                         f"{m['ssim']:.3f} ± {m['ssim_std']:.3f} |")
    return "\n".join(lines)


def run(cfg: EvalConfig) -> dict[str, Any]:
    renderer = Renderer.from_checkpoint(cfg.checkpoint)
    info = read_info(paths_for(cfg.checkpoint)[1])
    trained_data = info.get("data", {})
    resolution = cfg.resolution or int(trained_data.get("resolution") or 0)
    if resolution < 1:
        raise ValueError(f"{cfg.checkpoint}: no training resolution recorded; pass --resolution")
    pairs = harness.load_pairs(cfg.data, resolution=resolution, downsample=trained_data.get("downsample", "nearest"))
    pick = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.count]
    pairs = pairs.subset(pick)
    results = {"trained": evaluate(renderer, pairs, seed=cfg.seed)}
    if cfg.untrained:
        results["untrained"] = evaluate(untrained_like(renderer, seed=cfg.seed), pairs, seed=cfg.seed)
    results["class-mean colours"] = class_mean_baseline(pairs)
    report = {"checkpoint": str(cfg.checkpoint), "step": info.get("step"), "data": str(cfg.data),
              "count": len(pairs), "resolution": resolution, "seed": cfg.seed, "ids": list(pairs.ids),
              "results": results, "table": markdown(results, count=len(pairs), resolution=resolution)}
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        report = run(cfg)
    except (StudioError, ValueError) as err:
        print(f"training.evaluate_renders: error: {err}", file=sys.stderr)
        return 2
    print(report["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
