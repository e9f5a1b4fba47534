"""The inference pipeline: grade → label map → photo → lesion masks, plus the grade judge.
Every step is seeded by an explicit ``torch.Generator``: same seed, same output.

Photos enter and leave every network as ``(B, 3, H, W)`` float tensors in [-1, 1]
(:func:`photo_to_tensor` / :func:`tensor_to_photo`); label maps as one-hot ``(B, C, H, W)``
(:func:`one_hot_tensor`). The trainers use the same functions.

Label sampling: a prior draws class probabilities at its coarse side R — the ACGAN generator (the
paper's method: softmax of its logits) or the flow-matching prior (soft class fractions, integrated
from noise). The label upsampler, when present, turns them into sharp classes at R × its factor;
the probabilities are resized to the output size and arg-maxed, and the field of view is made a
clean disc: everything outside the circle is ``outside``, nothing inside is.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fundus_studio.calibration import LabelCalibration, calibration_for
from fundus_studio.checkpoint import config_to_dict, load_model, paths_for, read_info
from fundus_studio.errors import CheckpointError, InputError
from fundus_studio.labels import LESIONS, NAMES, NUM_CLASSES, NUM_GRADES, OUTSIDE, VESSEL, check_index_map
from fundus_studio.lesion_spots import LesionSpotsConfig, redraw_spots
from fundus_studio.lesion_tangles import LesionTanglesConfig, redraw_tangles
from fundus_studio.models.acgan import Generator
from fundus_studio.models.grade_classifier import GradeClassifier, prepare_maps
from fundus_studio.models.label_flow import FlowUNet, LabelUpsampler
from fundus_studio.models.spade import SpadeGenerator, StyleEncoder, fold_spectral_norm
from fundus_studio.models.unet import UNet
from fundus_studio.style import PhotoCache, StyleCache, StyleConfig, apply_style
from fundus_studio.vessel_tree import VesselTreeConfig, redraw_vessels

log = logging.getLogger(__name__)

# A disc whose radius reaches the corners covers the whole square.
MAX_FOV_RADIUS: float = math.sqrt(2.0)


@dataclass(frozen=True)
class FlowSamplingConfig:
    """How the flow-matching prior is integrated (the ODE from noise at t = 0 to a map at t = 1)."""

    # Euler steps (network calls per map: steps, plus one per guided step). 12 steps guided on their first
    # half take 18 calls a map (session 10: 16 steps guided throughout, 32 calls) and meet every label
    # target once neovascularisation is drawn as tangles (docs/training.md, "Sampling speed (session 12)").
    steps: int = 12
    guidance: float = 2.0  # classifier-free guidance weight w: v = v_uncond + w (v_grade − v_uncond); 1 = off
    # Steps starting at t in [lo, hi) are guided; the others take the grade's velocity alone, one network
    # call instead of two (Kynkäänniemi et al. 2024 limit guidance to an interval). The layout is settled
    # early in the path, so guiding the first half keeps the grade.
    guidance_interval: tuple[float, float] = (0.0, 0.5)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.guidance < 0:
            raise ValueError(f"steps must be positive and guidance ≥ 0, got {self.steps}, {self.guidance}")
        lo, hi = self.guidance_interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 ≤ lo ≤ hi ≤ 1, got {self.guidance_interval}")

    def guided(self, t: float) -> bool:
        """Whether the step starting at time ``t`` is guided."""
        lo, hi = self.guidance_interval
        return self.guidance != 1.0 and lo <= t < hi


@dataclass(frozen=True)
class LabelSamplingConfig:
    size: int = 512  # side of the returned maps (upsampled from the generator's resolution)
    fov_radius: float | None = None  # FOV radius as a fraction of half the side; None: estimated per map
    # maps per generator call (does not change the result); 8 measured ≈ 10 % faster than 16 on 2 cores
    batch_size: int = 8
    # maps per label-upsampler call (no effect on the result): one 512² map's 10-class tensors stay in
    # the CPU's caches, which makes a batch of 16 about 3× faster than 4 at a time (docs/training.md)
    upsample_batch: int = 1
    flow: FlowSamplingConfig = FlowSamplingConfig()  # ODE integration of a flow-matching prior
    # Vessels drawn as a tree from the vessel probability (fundus_studio.vessel_tree); None: arg-max
    # vessels (blobs and fragments from a coarse prior, docs/training.md).
    vessel_tree: VesselTreeConfig | None = VesselTreeConfig()
    # Microaneurysms and hard exudates drawn as spots where the arg-max drew blobs
    # (fundus_studio.lesion_spots); None: the arg-max's blobs.
    lesion_spots: LesionSpotsConfig | None = LesionSpotsConfig()
    # Neovascularisation and IRMA drawn as tangles of strands where the arg-max drew solid blobs, which
    # split the optic disc (fundus_studio.lesion_tangles); None: the arg-max's blobs.
    lesion_tangles: LesionTanglesConfig | None = LesionTanglesConfig()
    # Batches sampled at once on the CPU, each on its own thread with an equal share of torch's
    # threads (no effect on the result). The small networks here use one core each better than two
    # together: 1.13× the maps a second on 2 cores (docs/training.md, "Sampling speed"). None: one
    # worker per torch thread; 1: batches one after another with every thread.
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.size < 1 or self.batch_size < 1 or self.upsample_batch < 1:
            raise ValueError("size, batch_size and upsample_batch must be positive")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be positive, got {self.workers}")
        if self.fov_radius is not None and not 0.0 < self.fov_radius <= MAX_FOV_RADIUS:
            raise ValueError(f"fov_radius must lie in (0, √2], got {self.fov_radius}")


def fov_disc(size: int, radius: torch.Tensor, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) radii (fractions of half the side) → (B, size, size) bool discs centred in the image."""
    c = (size - 1) / 2.0
    yy, xx = torch.meshgrid(torch.arange(size, device=device, dtype=torch.float32),
                            torch.arange(size, device=device, dtype=torch.float32), indexing="ij")
    dist = torch.sqrt((yy - c) ** 2 + (xx - c) ** 2) / (size / 2.0)  # (S, S), 1.0 at the inscribed circle
    return dist.unsqueeze(0) <= radius.to(device).view(-1, 1, 1)


def estimate_fov_radius(probs: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) class probabilities → (B,) radius of the centred disc with the same area as the
    map's expected inside-FOV area, as a fraction of half the side."""
    inside = 1.0 - probs[:, OUTSIDE].mean(dim=(1, 2))  # fraction of the square inside the FOV
    return torch.sqrt(inside * 4.0 / math.pi).clamp(min=1e-3, max=MAX_FOV_RADIUS)


def resize_probabilities(probs: torch.Tensor, *, size: int) -> torch.Tensor:
    """(B, C, R, R) → (B, C, size, size): bilinear up, area down (probabilities, never labels, are
    resized: smooth class boundaries)."""
    if probs.shape[-1] < size:
        return F.interpolate(probs, size=(size, size), mode="bilinear", align_corners=False)
    if probs.shape[-1] > size:
        return F.interpolate(probs, size=(size, size), mode="area")
    return probs


def probabilities_to_labels(probs: torch.Tensor, *, size: int, fov_radius: float | None = None) -> torch.Tensor:
    """(B, C, R, R) probabilities → (B, size, size) uint8 index maps with a clean circular FOV."""
    probs = resize_probabilities(probs, size=size).clone()  # modified below; the caller's tensor is left alone
    radius = (estimate_fov_radius(probs) if fov_radius is None
              else torch.full((probs.shape[0],), float(fov_radius), device=probs.device))
    disc = fov_disc(size, radius, device=probs.device)
    probs[:, OUTSIDE] = -1.0  # inside the disc the best non-outside class wins
    labels = probs.max(dim=1).indices  # (max is several times faster than argmax over dim 1 on CPU)
    return torch.where(disc, labels, torch.full_like(labels, OUTSIDE)).to(torch.uint8)


def flow_state_to_fractions(x: torch.Tensor) -> torch.Tensor:
    """The flow's state at t = 1 (x = 2 f − 1) → class fractions f ≥ 0 with rows summing to 1."""
    f = ((x.float() + 1.0) / 2.0).clamp(min=0.0)
    total = f.sum(dim=1, keepdim=True)
    uniform = torch.full_like(f, 1.0 / f.shape[1])
    return torch.where(total > 1e-6, f / total.clamp(min=1e-6), uniform)


@torch.no_grad()
def integrate_flow(model: FlowUNet, noise: torch.Tensor, grades: torch.Tensor, *,
                   config: FlowSamplingConfig) -> torch.Tensor:
    """Euler integration of dx/dt = v(x, t, grade) from ``noise`` (B, C, R, R) at t = 0 to t = 1, with
    classifier-free guidance; returns (B, C, R, R) class fractions. Deterministic given the noise."""
    b = noise.shape[0]
    x = noise.float().contiguous(memory_format=torch.channels_last)
    uncond = torch.full_like(grades, model.config.num_grades)
    dt = 1.0 / config.steps
    for i in range(config.steps):
        t = torch.full((b,), i * dt, device=x.device)
        if config.guided(i * dt):
            v_grade, v_uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([grades, uncond])).float().chunk(2)
            v = v_uncond + config.guidance * (v_grade - v_uncond)
        else:
            v = model(x, t, grades).float()
        x = x + dt * v
    return flow_state_to_fractions(x)


LabelPrior = Generator | FlowUNet  # what draws a coarse map for a grade


def takes_upsampler(prior_path: str | os.PathLike[str], upsampler_path: str | os.PathLike[str]) -> bool:
    """Whether the label upsampler at ``upsampler_path`` belongs after the prior at ``prior_path``: the
    prior was trained on soft class fractions (the flow prior, the soft ACGAN — not an ACGAN of hard
    labels, whose near one-hot maps the upsampler would misread) at the upsampler's coarse side."""
    prior = read_info(prior_path)
    return ((prior.get("data") or {}).get("downsample") == "fractions"
            and read_info(upsampler_path)["config"].get("coarse_resolution") == prior["config"].get("resolution"))


def map_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of map ``index`` of a call seeded ``seed`` (like its latent, it does not depend on
    how many maps the call draws)."""
    return np.random.default_rng([seed % 2**63, index])


class LabelSampler:
    """Samples grade-conditioned label maps: a prior (the ACGAN generator, or the flow-matching prior)
    draws class probabilities at its side R; the label upsampler, when given, turns them into sharp
    classes at R × its factor; the result is resized to the output size and arg-maxed inside a clean
    circular field of view.

    >>> sampler = LabelSampler.from_checkpoint("checkpoints/label_flow.safetensors",
    ...     upsampler="checkpoints/label_upsampler.safetensors")   # doctest: +SKIP
    >>> maps = sampler.sample(grade=3, count=4, seed=7)     # (4, 512, 512) uint8
    """

    def __init__(self, prior: LabelPrior, *, upsampler: LabelUpsampler | None = None,
                 config: LabelSamplingConfig = LabelSamplingConfig(), calibration: LabelCalibration | None = None,
                 device: torch.device | str = "cpu") -> None:
        # The sampler owns its networks: they are moved, put in eval mode and made channels-last.
        self.prior = prior.to(device, memory_format=torch.channels_last).eval()
        if upsampler is not None and upsampler.config.coarse_resolution != self.resolution:
            raise InputError(f"the label upsampler reads {upsampler.config.coarse_resolution}² maps but the "
                             f"generator draws {self.resolution}²")
        self.upsampler = None if upsampler is None else upsampler.to(device, memory_format=torch.channels_last).eval()
        self.config = config
        self.calibration = calibration  # per-grade lesion weights before the arg-max (fundus_studio.calibration)
        self.device = torch.device(device)
        self._check_calibration_settings()

    def _check_calibration_settings(self) -> None:
        """Warn when the calibration was fitted for another way of sampling the flow prior: its lesion
        weights still apply, but each class's share may drift from the one it was fitted for."""
        fitted = None if self.calibration is None else self.calibration.fit.get("flow_sampling")
        if self.is_flow and isinstance(fitted, dict) and fitted != config_to_dict(self.config.flow):
            log.warning("the label calibration was fitted for flow sampling %s, not %s: lesion shares may drift; "
                        "refit with `python -m training.calibrate_labels` and the same --flow-steps, --guidance "
                        "and --guidance-interval", fitted, config_to_dict(self.config.flow))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, upsampler: str | os.PathLike[str] | None = None,
                        config: LabelSamplingConfig = LabelSamplingConfig(), calibrated: bool = True,
                        device: torch.device | str = "cpu") -> LabelSampler:
        """Load the prior at ``path`` (ACGAN or flow) and optionally an upsampler (CheckpointError naming
        the file if one cannot be loaded); with ``calibrated``, the ``label_calibration.json`` beside the
        prior when it was fitted for these checkpoints (:func:`fundus_studio.calibration.calibration_for`)."""
        prior = load_model(path, expected=(Generator, FlowUNet), device=device)
        up = None if upsampler is None else load_model(upsampler, expected=LabelUpsampler, device=device)
        calibration = calibration_for(path, upsampler) if calibrated else None
        return cls(prior, upsampler=up, config=config, calibration=calibration, device=device)  # type: ignore[arg-type]

    @property
    def generator(self) -> LabelPrior:
        """The prior (kept under its old name: the ACGAN generator)."""
        return self.prior

    @property
    def is_flow(self) -> bool:
        return isinstance(self.prior, FlowUNet)

    @property
    def resolution(self) -> int:
        return self.prior.config.resolution

    @property
    def output_resolution(self) -> int:
        """Side of the probabilities before the final resize: the upsampler's, else the prior's."""
        return self.upsampler.config.resolution if self.upsampler is not None else self.resolution

    def latents(self, *, count: int, seed: int) -> torch.Tensor:
        """Latents drawn on the CPU from ``seed`` so every device gets the same ones; latent i does
        not depend on ``count``. ACGAN: (count, z_dim); flow: (count, C, R, R) initial noise."""
        gen = torch.Generator().manual_seed(seed)
        if self.is_flow:
            c = self.prior.config
            return torch.randn(count, c.num_classes, c.resolution, c.resolution, generator=gen)
        return torch.randn(count, self.prior.config.z_dim, generator=gen)

    @torch.no_grad()
    def probabilities(self, z: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        """Latents, (B,) grades → (B, C, R, R) class probabilities at the prior's R."""
        out = []
        for zb, gb in zip(z.split(self.config.batch_size), grades.split(self.config.batch_size)):
            zb, gb = zb.to(self.device), gb.to(self.device)
            if self.is_flow:
                out.append(integrate_flow(self.prior, zb, gb, config=self.config.flow))  # type: ignore[arg-type]
            else:
                out.append(self.prior(zb, gb).float().softmax(dim=1))
        return torch.cat(out)

    @torch.no_grad()
    def refine(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) coarse probabilities → the upsampler's (B, C, R·f, R·f) probabilities (or as they are).
        The caller bounds B: :meth:`sample_grades` passes ``upsample_batch`` maps at a time."""
        if self.upsampler is None:
            return probs
        return self.upsampler(probs.contiguous(memory_format=torch.channels_last)).float().softmax(dim=1)

    def workers(self, *, batches: int) -> int:
        """How many batches to sample at once (:attr:`LabelSamplingConfig.workers`); 1 off the CPU."""
        if self.device.type != "cpu":
            return 1
        wanted = self.config.workers or torch.get_num_threads()
        return max(1, min(wanted, batches, torch.get_num_threads()))

    @torch.no_grad()
    def sample_grades(self, grades: list[int] | torch.Tensor, *, seed: int, size: int | None = None) -> np.ndarray:
        """One map per entry of ``grades`` (latent i for entry i) → (N, size, size) uint8."""
        grades = torch.as_tensor(grades, dtype=torch.long)
        if grades.ndim != 1 or grades.numel() == 0:
            raise InputError("grades must be a non-empty list of integers")
        if (grades < 0).any() or (grades >= NUM_GRADES).any():
            raise InputError(f"grade must be 0..{NUM_GRADES - 1}, got {grades.tolist()}")
        size = self.config.size if size is None else size
        if size < 1:
            raise InputError(f"size must be positive, got {size}")
        z = self.latents(count=len(grades), seed=seed)
        bs = self.config.batch_size

        def batch(first: int) -> np.ndarray:
            return self.sample_batch(z=z[first:first + bs], grades=grades[first:first + bs], seed=seed,
                                     first=first, size=size)

        firsts = range(0, len(grades), bs)
        workers = self.workers(batches=len(firsts))
        if workers == 1:
            return np.concatenate([batch(f) for f in firsts])
        # torch releases the GIL, so the workers' networks and numpy decoding run side by side.
        threads = max(1, torch.get_num_threads() // workers)
        with ThreadPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
            return np.concatenate(list(pool.map(batch, firsts)))

    @torch.no_grad()
    def sample_batch(self, *, z: torch.Tensor, grades: torch.Tensor, seed: int, first: int, size: int) -> np.ndarray:
        """Maps ``first`` … ``first + B − 1`` of a call seeded ``seed``, from their (B, …) latents and
        (B,) grades → (B, size, size) uint8."""
        out = []
        coarse = self.probabilities(z, grades)
        for i, (p, g) in enumerate(zip(coarse.split(self.config.upsample_batch), grades.split(self.config.upsample_batch))):
            fine = self.refine(p)
            if self.calibration is not None:
                fine = self.calibration.apply(fine, g)
            maps, p_vessel = self.decode(fine, size=size)
            start = first + i * self.config.upsample_batch
            out.append(self.redraw(maps, p_vessel, rngs=[map_rng(seed, start + j) for j in range(len(g))]))
        return np.concatenate(out)

    def decode(self, probs: torch.Tensor, *, size: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, C, R, R) probabilities → (B, size, size) uint8 arg-max maps inside a clean field of view,
        and the (B, size, size) vessel probability the tree is drawn from (None without a tree)."""
        probs = resize_probabilities(probs, size=size)
        maps = probabilities_to_labels(probs, size=size, fov_radius=self.config.fov_radius).cpu().numpy()
        p_vessel = None if self.config.vessel_tree is None else probs[:, VESSEL].float().cpu().numpy()
        return maps, p_vessel

    def redraw(self, maps: np.ndarray, p_vessel: np.ndarray | None, *, rngs: list[np.random.Generator]) -> np.ndarray:
        """Arg-max maps → final maps: (with ``config.lesion_spots``) small lesions redrawn as spots, then
        (with ``config.lesion_tangles``) new vessels (NV, IRMA) as tangles, map i drawing from ``rngs[i]``,
        then (with ``config.vessel_tree``) the vessels redrawn as a tree."""
        maps = np.stack([self._redraw_lesions(m, rng=r) for m, r in zip(maps, rngs)])
        if p_vessel is None:
            return maps
        return np.stack([redraw_vessels(p, m, config=self.config.vessel_tree) for p, m in zip(p_vessel, maps)])

    def _redraw_lesions(self, index_map: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        if self.config.lesion_spots is not None:
            index_map = redraw_spots(index_map, rng=rng, config=self.config.lesion_spots)
        if self.config.lesion_tangles is not None:
            index_map = redraw_tangles(index_map, rng=rng, config=self.config.lesion_tangles)
        return index_map

    def sample(self, *, grade: int, count: int, seed: int, size: int | None = None) -> np.ndarray:
        """``count`` maps of DR ``grade`` → (count, size, size) uint8 class indices."""
        if count < 1:
            raise InputError(f"count must be positive, got {count}")
        return self.sample_grades([grade] * count, seed=seed, size=size)


# --- photos ⇄ tensors -----------------------------------------------------------------------------


def photo_to_tensor(photo: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 (or ``(B, H, W, 3)``) → ``(B, 3, H, W)`` float32 in [-1, 1], as every
    network here (renderer output, style encoder and segmenter input) sees photos."""
    if photo.dtype != np.uint8 or photo.shape[-1] != 3 or photo.ndim not in (3, 4):
        raise InputError(f"expected (H, W, 3) uint8 photos, got {photo.shape} {photo.dtype}")
    t = torch.from_numpy(np.array(photo if photo.ndim == 4 else photo[None]))  # a writable copy
    return t.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def tensor_to_photo(x: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in [-1, 1] → ``(B, H, W, 3)`` uint8."""
    return ((x.float().clamp(-1, 1) + 1.0) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def one_hot_tensor(index_maps: np.ndarray) -> torch.Tensor:
    """``(H, W)`` or ``(B, H, W)`` uint8 indices → ``(B, C, H, W)`` float32 one-hot."""
    maps = torch.from_numpy(np.array(index_maps if index_maps.ndim == 3 else index_maps[None]))  # a writable copy
    return F.one_hot(maps.long(), NUM_CLASSES).permute(0, 3, 1, 2).float()


def pad_to_stride(index_map: np.ndarray, *, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad a map with ``outside`` to a square whose side is a multiple of ``stride``; return it and the
    original (H, W) to crop the render back to. Non-square maps are centred in the square."""
    h, w = index_map.shape
    side = -(-max(h, w) // stride) * stride
    if (h, w) == (side, side):
        return index_map, (h, w)
    out = np.full((side, side), OUTSIDE, np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = index_map
    return out, (h, w)


def _crop_back(photo: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    side = photo.shape[0]
    h, w = shape
    top, left = (side - h) // 2, (side - w) // 2
    return photo[top : top + h, left : left + w]


def encoder_path_for(path: str | os.PathLike[str]) -> Path:
    """The style encoder saved beside a renderer: ``NAME_encoder.safetensors`` for ``NAME.safetensors``."""
    weights, _ = paths_for(path)
    return weights.with_name(weights.name.replace(".safetensors", "_encoder.safetensors"))


class Renderer:
    """Label map → photo with a SPADE generator, tuned for CPU latency.

    At load, spectral norm is folded into plain weights and the network is made channels-last; each
    render runs under ``torch.inference_mode``. Label maps of any size are accepted: a map that is
    not square or whose side is not a multiple of the network's stride is padded with ``outside``
    (centred) and the render is cropped back to the map's size.

    With a style photo, the network draws the map with the encoder's code for that photo, then
    :func:`fundus_studio.style.apply_style` moves the render's colour per class region, illumination
    and background texture to the photo's (the network alone, trained on phantoms, cannot reach a
    real photograph's colours). The photo's statistics are cached by content hash (``self.styles``).

    >>> renderer = Renderer.from_checkpoint("checkpoints/spade.safetensors")   # doctest: +SKIP
    >>> photo = renderer.render(label_map, seed=0)   # (H, W, 3) uint8
    """

    def __init__(self, generator: SpadeGenerator, *, encoder: StyleEncoder | None = None,
                 style: StyleConfig = StyleConfig(), device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.generator = fold_spectral_norm(generator).to(self.device, memory_format=torch.channels_last).eval()
        self.encoder = None if encoder is None else fold_spectral_norm(encoder).to(self.device).eval()
        # A style photo's statistics (an extraction: seconds) are measured once per photo and side, and
        # its code once per photo (the encoder's pass is ~15 % of a 512² render: each stroke of a photo
        # edit would pay it again).
        self.styles = StyleCache(size=style.cache_size, config=style)
        self.codes: PhotoCache[torch.Tensor] = PhotoCache(size=style.cache_size)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> Renderer:
        """Load ``spade.safetensors`` and, when present beside it, ``spade_encoder.safetensors``."""
        weights, _ = paths_for(path)
        encoder_path = encoder_path_for(path)
        encoder = load_model(encoder_path, expected=StyleEncoder) if encoder_path.is_file() else None
        return cls(load_model(weights, expected=SpadeGenerator), encoder=encoder, device=device)  # type: ignore[arg-type]

    @property
    def stride(self) -> int:
        return self.generator.config.stride

    def latent(self, *, seed: int, style: np.ndarray | None) -> torch.Tensor | None:
        """The style code: the encoder's mean for a reference photo, else N(0, I) drawn from ``seed``."""
        z_dim = self.generator.config.z_dim
        if z_dim == 0:
            if style is not None:
                raise InputError("this renderer has no style input (z_dim = 0)")
            return None
        if style is not None:
            if self.encoder is None:
                raise InputError("this renderer was trained without a style encoder; render without a style photo")
            encoder = self.encoder
            return self.codes.get(style, side=0,  # the encoder resizes any photo to its own input side
                                  compute=lambda: encoder(photo_to_tensor(style).to(self.device))[0])
        return torch.randn(1, z_dim, generator=torch.Generator().manual_seed(seed)).to(self.device)

    @torch.inference_mode()
    def render(self, label_map: np.ndarray, *, seed: int, style: np.ndarray | None = None) -> np.ndarray:
        """``(H, W)`` uint8 class indices → ``(H, W, 3)`` uint8 photo. Unknown class values raise.

        ``style``: an ``(h, w, 3)`` uint8 fundus photo of any size whose colour, illumination and
        background texture the render takes (then ``seed`` is not used); InputError if it has no field
        of view or this renderer has no style input.
        """
        label_map = check_index_map(label_map, what="label map to render")
        padded, shape = pad_to_stride(label_map, stride=self.stride)
        latent = self.latent(seed=seed, style=style)  # a renderer without style input refuses first
        stats = None if style is None else self.styles.get(style, side=max(label_map.shape))
        x = one_hot_tensor(padded).to(self.device).contiguous(memory_format=torch.channels_last)
        out = _crop_back(tensor_to_photo(self.generator(x, latent))[0], shape)
        return out if stats is None else apply_style(out, label_map, stats, config=self.styles.config)


class Segmenter:
    """Photo → lesion masks with a U-Net (one sigmoid per predicted class, each with its threshold).

    The photo goes through the one preprocessing path (field of view, crop, square, resize) first,
    so masks come out in the geometry of :func:`fundus_studio.extract.extract_label_map`.

    Args:
        threshold: one threshold for every class, or one per class in the order of ``unet.config.classes``;
            each in (0, 1). :meth:`from_checkpoint` uses the thresholds the trainer recorded.
    """

    DEFAULT_THRESHOLD = 0.5  # where a checkpoint records none (those trained before operating points)

    def __init__(self, unet: UNet, *, threshold: float | Sequence[float] = DEFAULT_THRESHOLD,
                 resolution: int | None = None, device: torch.device | str = "cpu") -> None:
        k = len(unet.config.classes)
        thresholds = (float(threshold),) * k if isinstance(threshold, (int, float)) else tuple(map(float, threshold))
        if len(thresholds) != k or not all(0.0 < t < 1.0 for t in thresholds):
            raise ValueError(f"threshold must be one value or {k} values (one per class), each in (0, 1), "
                             f"got {threshold}")
        self.device = torch.device(device)
        self.unet = unet.to(self.device, memory_format=torch.channels_last).eval()
        self.thresholds = thresholds
        # Lesion sizes in pixels are what the network learnt: it sees photos at its training side.
        self.resolution = resolution

    @staticmethod
    def recorded_thresholds(info: dict[str, Any], *, classes: tuple[int, ...], where: str) -> tuple[float, ...]:
        """Per class, the threshold a checkpoint's ``data.thresholds`` (class name → value, written by
        ``training.unet`` from its validation split) records, else 0.5. ``where`` names the file in errors."""
        recorded = (info.get("data") or {}).get("thresholds") or {}
        if not isinstance(recorded, dict):
            raise CheckpointError(f"{where}: data.thresholds must map class names to numbers, got {recorded!r}")
        out = []
        for k in classes:
            t = recorded.get(NAMES[k], Segmenter.DEFAULT_THRESHOLD)
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
                raise CheckpointError(f"{where}: data.thresholds[{NAMES[k]!r}] must lie in (0, 1), got {t!r}")
            out.append(float(t))
        return tuple(out)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> Segmenter:
        """Load ``path``; the side it was trained at (its JSON's ``data.resolution``) and the
        per-class thresholds chosen on its validation split (``data.thresholds``; 0.5 where absent) are kept."""
        info = read_info(path)
        resolution = (info.get("data") or {}).get("resolution")
        unet = load_model(path, expected=UNet)
        thresholds = cls.recorded_thresholds(info, classes=unet.config.classes,  # type: ignore[attr-defined]
                                            where=str(paths_for(path)[1]))
        side = resolution if isinstance(resolution, int) else None
        return cls(unet, threshold=thresholds, resolution=side, device=device)  # type: ignore[arg-type]

    @property
    def classes(self) -> tuple[int, ...]:
        return self.unet.config.classes

    @torch.inference_mode()
    def probabilities(self, photo: np.ndarray) -> np.ndarray:
        """A squared ``(S, S, 3)`` photo (S a multiple of the U-Net's stride) → ``(K, S, S)`` float32
        per-class probabilities, channel k for class ``self.classes[k]``."""
        x = photo_to_tensor(photo).to(self.device).contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(self.unet(x))[0].float().cpu().numpy()

    def segment(self, photo: np.ndarray, *, size: int = 512) -> dict[int, np.ndarray]:
        """Any fundus photo → ``{class index: (size, size) bool}`` for the predicted lesion classes."""
        from fundus_studio.preprocess import preprocess

        pre = preprocess(photo, size=size)
        return self.segment_preprocessed(pre.photo, pre.fov)

    @property
    def class_thresholds(self) -> dict[int, float]:
        """``{class index: threshold}`` (the ones the checkpoint recorded, 0.5 where none)."""
        return {int(k): t for k, t in zip(self.classes, self.thresholds)}

    def lesion_probabilities(self, photo: np.ndarray, fov: np.ndarray) -> dict[int, np.ndarray]:
        """A photo already squared by ``preprocess`` (``(S, S, 3)``, FOV ``(S, S)``) → ``{lesion class:
        (S, S) float32}``, 0 outside the FOV: the photo goes to the side the U-Net was trained at and
        the probabilities come back to S."""
        size = photo.shape[0]
        work = photo
        if self.resolution is not None and self.resolution != size:
            work = cv2.resize(work, (self.resolution, self.resolution), interpolation=cv2.INTER_AREA)
        stride = self.unet.config.stride
        if work.shape[0] % stride:
            raise InputError(f"the segmenter needs a side that is a multiple of {stride}, got {work.shape[0]}")
        probs = self.probabilities(work)
        if probs.shape[-1] != size:
            probs = F.interpolate(torch.from_numpy(probs)[None], size=(size, size), mode="bilinear",
                                  align_corners=False)[0].numpy()
        return {int(k): np.where(fov, probs[i], 0.0).astype(np.float32)
                for i, k in enumerate(self.classes) if k in LESIONS}

    def segment_preprocessed(self, photo: np.ndarray, fov: np.ndarray) -> dict[int, np.ndarray]:
        """A photo already squared by ``preprocess`` (``(S, S, 3)``, FOV ``(S, S)``) → lesion masks, each
        class at its threshold."""
        thresholds = self.class_thresholds
        return {k: (p >= thresholds[k]) & fov for k, p in self.lesion_probabilities(photo, fov).items()}


def extract_with_lesions(photo: np.ndarray, *, size: int, segmenter: Segmenter | None) -> np.ndarray:
    """Photo → label map: classical field of view, disc and vessels, lesions from ``segmenter`` when
    given. The photo is preprocessed once and both steps share it."""
    from fundus_studio.extract import label_map_from_preprocessed
    from fundus_studio.preprocess import preprocess

    pre = preprocess(photo, size=size)
    lesions = segmenter.segment_preprocessed(pre.photo, pre.fov) if segmenter is not None else None
    return label_map_from_preprocessed(pre.photo, pre.fov, lesions=lesions)


class GradeJudge:
    """Label map → DR-grade probabilities with the grade classifier."""

    def __init__(self, classifier: GradeClassifier, *, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.classifier = classifier.to(self.device).eval()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> GradeJudge:
        return cls(load_model(path, expected=GradeClassifier), device=device)  # type: ignore[arg-type]

    @torch.inference_mode()
    def probabilities(self, label_map: np.ndarray) -> np.ndarray:
        """``(S, S)`` or ``(B, S, S)`` maps → ``(NUM_GRADES,)`` or ``(B, NUM_GRADES)`` probabilities."""
        maps = np.asarray(label_map)
        x = prepare_maps(one_hot_tensor(maps).to(self.device), resolution=self.classifier.config.resolution)
        probs = self.classifier(x).softmax(dim=1).cpu().numpy()
        return probs[0] if maps.ndim == 2 else probs
