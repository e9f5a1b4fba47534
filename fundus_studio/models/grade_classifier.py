"""A small CNN that reads the DR grade off a semantic label map.

It is the judge of grade fidelity for generated maps (``training/evaluate_labels.py``): trained on
real maps, it scores generated maps of each grade against held-out real maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fundus_studio.labels import NUM_CLASSES, NUM_GRADES


@dataclass(frozen=True)
class GradeClassifierConfig:
    resolution: int = 128  # side of the input map; maps are area-downsampled one-hots (lesion fractions kept)
    num_classes: int = NUM_CLASSES  # input channels
    num_grades: int = NUM_GRADES  # output logits
    channels: int = 16  # width of the first stage, doubled per stage
    max_channels: int = 128  # cap of the width
    min_resolution: int = 8  # the last stage's side before global pooling
    norm_groups: int = 8  # GroupNorm groups
    dropout: float = 0.2  # before the final linear layer

    def __post_init__(self) -> None:
        if self.resolution & (self.resolution - 1) or self.min_resolution & (self.min_resolution - 1):
            raise ValueError("resolution and min_resolution must be powers of two")
        if self.resolution < self.min_resolution:
            raise ValueError(f"resolution {self.resolution} < min_resolution {self.min_resolution}")
        if min(self.channels, self.max_channels, self.num_classes, self.num_grades, self.norm_groups) < 1:
            raise ValueError("widths, classes, grades and groups must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.channels % min(self.norm_groups, self.channels):
            raise ValueError(f"channels {self.channels} not divisible by norm_groups {self.norm_groups}")


class GradeClassifier(nn.Module):
    """Label map → grade logits.

    Shapes: x (B, num_classes, R, R) one-hot or soft map → (B, num_grades) logits. Global average and
    max pooling are concatenated: the mean sees lesion load, the max sees a single small lesion.
    """

    def __init__(self, config: GradeClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = config.num_classes
        stages = int(math.log2(config.resolution // config.min_resolution))
        for i in range(stages + 1):
            c = min(config.max_channels, config.channels * 2**i)
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(min(config.norm_groups, c), c), nn.ReLU()]
            if i < stages:
                layers.append(nn.AvgPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * c_in, config.num_grades))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


def prepare_maps(one_hot: torch.Tensor, *, resolution: int) -> torch.Tensor:
    """(B, C, S, S) one-hot/soft maps → (B, C, R, R) area-downsampled (or bilinear-upsampled) input."""
    if one_hot.shape[-1] == resolution:
        return one_hot
    if one_hot.shape[-1] > resolution:
        return F.adaptive_avg_pool2d(one_hot, resolution)
    return F.interpolate(one_hot, size=resolution, mode="bilinear", align_corners=False)
