"""The networks: ``nn.Module``s only, each built from one frozen config dataclass."""

from fundus_studio.models.acgan import ACGANConfig, Discriminator, Generator
from fundus_studio.models.grade_classifier import GradeClassifier, GradeClassifierConfig
from fundus_studio.models.label_flow import FlowUNet, LabelFlowConfig, LabelUpsampler, UpsamplerConfig

__all__ = ["ACGANConfig", "Discriminator", "FlowUNet", "GradeClassifier", "GradeClassifierConfig", "Generator",
           "LabelFlowConfig", "LabelUpsampler", "UpsamplerConfig"]
