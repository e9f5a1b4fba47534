"""The networks: ``nn.Module``s only, each built from one frozen config dataclass."""

from fundus_studio.models.acgan import ACGANConfig, Discriminator, Generator
from fundus_studio.models.grade_classifier import GradeClassifier, GradeClassifierConfig

__all__ = ["ACGANConfig", "Discriminator", "GradeClassifier", "GradeClassifierConfig", "Generator"]
