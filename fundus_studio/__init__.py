"""Fundus Studio: grade-conditioned label maps, their renders as fundus photos, lesion segmentation.

>>> from fundus_studio import Studio          # doctest: +SKIP
>>> studio = Studio.from_checkpoints("checkpoints")
"""

from fundus_studio.studio import Studio

__all__ = ["Studio"]
