"""Tiny, untrained checkpoints of all four models: the plumbing of the Studio and the app is tested
on them (tests of what the models *learn* live with their trainers)."""

from __future__ import annotations

from pathlib import Path

import torch

from fundus_studio.checkpoint import save_model
from fundus_studio.labels import LESIONS
from fundus_studio.models.acgan import ACGANConfig, Generator
from fundus_studio.models.grade_classifier import GradeClassifier, GradeClassifierConfig
from fundus_studio.models.label_flow import FlowUNet, LabelFlowConfig, LabelUpsampler, UpsamplerConfig
from fundus_studio.models.spade import SPADE_PRESETS, SpadeGenerator, StyleEncoder
from fundus_studio.models.unet import UNET_PRESETS, UNet, UNetConfig


def write_tiny_checkpoints(folder: Path, *, seed: int = 0) -> Path:
    """Save seeded, randomly initialised label_flow + label_upsampler / acgan / spade (+ encoder) / unet /
    grade_classifier models."""
    torch.manual_seed(seed)
    smoke = SPADE_PRESETS["smoke"]
    models = {
        "label_flow": FlowUNet(LabelFlowConfig(resolution=16, channels=(8, 16), emb_dim=16)),
        "label_upsampler": LabelUpsampler(UpsamplerConfig(coarse_resolution=16, factor=4, channels=(8, 8, 8),
                                                          coarse_blocks=1)),
        "acgan": Generator(ACGANConfig(resolution=32, z_dim=16, grade_dim=4, g_channels=8, g_max_channels=16,
                                       d_channels=4, d_max_channels=8)),
        "spade": SpadeGenerator(smoke.generator),
        "spade_encoder": StyleEncoder(smoke.encoder),
        "unet": UNet(UNetConfig(**{**UNET_PRESETS["smoke"].__dict__, "classes": LESIONS})),
        "grade_classifier": GradeClassifier(GradeClassifierConfig(resolution=32, channels=8, max_channels=16)),
    }
    for name, model in models.items():
        data = {"description": "untrained test model"}
        if name == "label_flow":
            data["downsample"] = "fractions"  # a prior of soft maps: the upsampler follows it
        save_model(model.eval(), folder / name, data=data, step=0, created_by="tests/tiny_checkpoints.py")
    return folder
