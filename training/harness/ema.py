"""Exponential moving average of a model's weights (used for sampling from GAN generators)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` to hold the averaged weights."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, *, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model for parameters; buffers are copied."""
    for e, m in zip(ema.parameters(), model.parameters()):
        e.lerp_(m.detach(), 1.0 - decay)
    for e, m in zip(ema.buffers(), model.buffers()):
        e.copy_(m)


def ema_decay(*, half_life_images: float, batch_images: int) -> float:
    """Per-step decay for an EMA whose weight halves every ``half_life_images`` images (StyleGAN)."""
    return 0.5 ** (batch_images / max(half_life_images, 1e-8))
