"""The Python API: ``Studio.from_checkpoints(dir)`` with numpy in, numpy out.

The app, the CLI and the exporter all go through it. Models are loaded on first use, once, and
shared by every caller (a lock makes the first load safe under the app's concurrent requests).

>>> studio = Studio.from_checkpoints("checkpoints")               # doctest: +SKIP
>>> maps = studio.sample_labels(grade=3, count=2, seed=0, size=512)   # (2, 512, 512) uint8
>>> photo = studio.render(maps[0], seed=0)                          # (512, 512, 3) uint8
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fundus_studio.errors import CheckpointError, InputError
from fundus_studio.style import PhotoCache

if TYPE_CHECKING:  # imported where used: they bring OpenCV, and the CLI starts without it
    from fundus_studio.photo_edit import ExtractedPhoto
    from fundus_studio.suggestions import LesionSuggestions

# The checkpoint names a checkpoints folder may hold, and what each is for.
MODEL_ROLES: dict[str, str] = {
    "label_flow": "label-map generator (flow-matching prior over 64² soft maps): grade → label map",
    "label_upsampler": "label upsampler: a generator's coarse class fractions → sharp 512² classes",
    "acgan": "label-map generator (ACGAN, the paper's method): grade → label map",
    "spade": "renderer (SPADE): label map → photo",
    "unet": "lesion segmenter (U-Net): photo → lesion masks",
    "grade_classifier": "grade classifier: label map → DR grade",
}
# Label-map generators by the name users choose them with (--generator, the app, the API) → checkpoint.
GENERATORS: dict[str, str] = {"flow": "label_flow", "acgan": "acgan"}
# The default when its checkpoint is present (it measures best: docs/training.md); else the ACGAN.
DEFAULT_GENERATOR = "flow"
UPSAMPLER = "label_upsampler"
# The render latent is drawn from its own stream of the sample's seed, apart from the label latent.
RENDER_STREAM = 1
EXTRACTED_CACHE = 4  # photos whose extraction (map, lesion probabilities) a Studio keeps


def pair_seeds(seed: int, index: int) -> tuple[int, int]:
    """(label seed, render seed) of sample ``index`` of a run seeded ``seed``: the label seed is
    ``sample_seed(seed, index)`` (recorded in manifests), the render seed a stream apart from it."""
    from fundus_studio.phantom import sample_seed

    label_seed = sample_seed(seed, index)
    return label_seed, sample_seed(label_seed, RENDER_STREAM)


CARD_FENCE = "---\n"  # the model card's YAML front matter sits between two of these at its start


def split_front_matter(text: str) -> tuple[str | None, str]:
    """A model card → ``(front matter with its fences, or None; the markdown after it)``."""
    if text.startswith(CARD_FENCE):
        end = text.find("\n" + CARD_FENCE, len(CARD_FENCE) - 1)
        if end >= 0:
            return text[: end + 1 + len(CARD_FENCE)], text[end + 1 + len(CARD_FENCE):]
    return None, text


REGENERATE = "run `make checkpoints` to regenerate the demo checkpoints, or pass --checkpoints DIR"


class Studio:
    """Grade → label map → photo → lesion map, over one folder of checkpoints.

    ``generator`` picks the label-map generator (a key of :data:`GENERATORS`); None: the default
    (:data:`DEFAULT_GENERATOR` when its checkpoint is present, else the ACGAN).
    """

    def __init__(self, checkpoints: str | os.PathLike[str], *, generator: str | None = None) -> None:
        if generator is not None and generator not in GENERATORS:
            raise InputError(f"unknown generator {generator!r}; choose one of {', '.join(GENERATORS)}")
        self.checkpoints = Path(checkpoints)
        self.generator = generator
        self._models: dict[str, Any] = {}
        self._extracted: PhotoCache[ExtractedPhoto] = PhotoCache(size=EXTRACTED_CACHE)
        self._lock = threading.RLock()  # re-entrant: a sampler loads the upsampler while holding it

    @classmethod
    def from_checkpoints(cls, checkpoints: str | os.PathLike[str], *, generator: str | None = None) -> Studio:
        return cls(checkpoints, generator=generator)

    def generator_name(self, generator: str | None = None) -> str:
        """The generator a call uses: ``generator``, else the Studio's choice, else the default."""
        name = generator or self.generator
        if name is None:  # half a checkpoint (weights or JSON) still chooses it: its error beats a silent fallback
            default = self.path(GENERATORS[DEFAULT_GENERATOR])
            return DEFAULT_GENERATOR if default.is_file() or default.with_suffix(".json").is_file() else "acgan"
        if name not in GENERATORS:
            raise InputError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
        return name

    def sampling_checkpoints(self, generator: str | None = None) -> tuple[str, ...]:
        """The checkpoints a sampled label map depends on: the generator's, the upsampler's when it is
        used (see ``pipeline.takes_upsampler``) and the label calibration when it applies."""
        name = GENERATORS[self.generator_name(generator)]
        sampler = self._get(name)
        from fundus_studio.calibration import CALIBRATION

        return (name, *((UPSAMPLER,) if sampler.upsampler is not None else ()),
                *((CALIBRATION,) if sampler.calibration is not None else ()))

    def reload(self, checkpoints: str | os.PathLike[str]) -> None:
        """Switch to another folder; models load again on next use."""
        with self._lock:
            self.checkpoints = Path(checkpoints)
            self._models.clear()
            self._extracted.clear()

    # --- loading ---------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.checkpoints / f"{name}.safetensors"

    def has(self, name: str) -> bool:
        return self.path(name).is_file() and self.path(name).with_suffix(".json").is_file()

    def model(self, name: str) -> Any:
        """The loaded pipeline object for ``name`` (``acgan``, ``label_flow`` → LabelSampler,
        ``label_upsampler`` → LabelUpsampler, ``spade`` → Renderer, ``unet`` → Segmenter,
        ``grade_classifier`` → GradeJudge); CheckpointError if missing or corrupt."""
        return self._get(name)

    def _get(self, name: str) -> Any:
        with self._lock:
            if name not in self._models:
                if not self.has(name):
                    raise CheckpointError(
                        f"{self.path(name)}: missing ({MODEL_ROLES[name]}); {REGENERATE}"
                    )
                self._models[name] = self._build(name)
            return self._models[name]

    def _build(self, name: str) -> Any:
        from fundus_studio import pipeline

        if name in GENERATORS.values():
            from fundus_studio.checkpoint import load_model
            from fundus_studio.models.acgan import Generator
            from fundus_studio.models.label_flow import FlowUNet

            prior = load_model(self.path(name), expected=FlowUNet if name == "label_flow" else Generator)
            # A prior of hard labels (the demo ACGAN) or of another side: probabilities upsampled bilinearly.
            use = self.has(UPSAMPLER) and pipeline.takes_upsampler(self.path(name), self.path(UPSAMPLER))
            from fundus_studio.calibration import calibration_for

            calibration = calibration_for(self.path(name), self.path(UPSAMPLER) if use else None)
            return pipeline.LabelSampler(prior, upsampler=self._get(UPSAMPLER) if use else None,  # type: ignore[arg-type]
                                         calibration=calibration)
        if name == UPSAMPLER:
            from fundus_studio.checkpoint import load_model
            from fundus_studio.models.label_flow import LabelUpsampler

            return load_model(self.path(name), expected=LabelUpsampler)
        if name == "spade":
            return pipeline.Renderer.from_checkpoint(self.path(name))
        if name == "unet":
            return pipeline.Segmenter.from_checkpoint(self.path(name))
        if name == "grade_classifier":
            return pipeline.GradeJudge.from_checkpoint(self.path(name))
        raise KeyError(name)

    # --- the steps -------------------------------------------------------------------------------

    def sampler(self, generator: str | None = None) -> Any:
        """The LabelSampler of ``generator`` (see :meth:`generator_name`)."""
        return self._get(GENERATORS[self.generator_name(generator)])

    def sample_labels(self, *, grade: int, count: int, seed: int, size: int = 512,
                      generator: str | None = None) -> np.ndarray:
        """``count`` label maps of DR ``grade`` → ``(count, size, size)`` uint8."""
        return self.sampler(generator).sample(grade=grade, count=count, seed=seed, size=size)

    def render(self, label_map: np.ndarray, *, seed: int, style: np.ndarray | None = None) -> np.ndarray:
        """``(S, S)`` label map → ``(S, S, 3)`` uint8 photo; ``style`` is an optional reference fundus photo
        (any size) whose colour per class region, illumination and background texture the render
        takes (``fundus_studio.style``; its statistics are measured once per photo)."""
        return self._get("spade").render(label_map, seed=seed, style=style)

    def sample_pairs(
        self, *, grades: Sequence[int], per_grade: int, seed: int, size: int = 512, generator: str | None = None
    ) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
        """``per_grade`` (label map, render, grade, seed) pairs for each grade. Pair i (grades in turn)
        is seeded exactly as ``fundus-studio sample`` seeds sample i: see :func:`pair_seeds`."""
        if not grades:
            raise InputError("choose at least one grade")
        out = []
        for i, grade in enumerate(g for g in grades for _ in range(per_grade)):
            label_seed, photo_seed = pair_seeds(seed, i)
            index_map = self.sample_labels(grade=grade, count=1, seed=label_seed, size=size, generator=generator)[0]
            out.append((index_map, self.render(index_map, seed=photo_seed), grade, label_seed))
        return out

    def segment(self, photo: np.ndarray, *, size: int = 512) -> dict[int, np.ndarray]:
        """Lesion masks ``{class index: (size, size) bool}`` of a photo (U-Net)."""
        return self._get("unet").segment(photo, size=size)

    def extract(self, photo: np.ndarray, *, size: int = 512) -> np.ndarray:
        """Photo → label map: field of view, disc and vessels (classical), lesions from the U-Net when
        a ``unet`` checkpoint is present."""
        from fundus_studio.pipeline import extract_with_lesions

        return extract_with_lesions(photo, size=size, segmenter=self._get("unet") if self.has("unet") else None)

    def extract_photo(self, photo: np.ndarray, *, size: int = 512) -> ExtractedPhoto:
        """Photo → what editing it through its map starts from: the photo squared by the one
        preprocessing path, its map (field of view, disc, vessels: classical) and, when a ``unet``
        checkpoint is present, the U-Net's lesion probabilities as suggestions, not in the map (it was
        trained on phantoms only). Cached per photo and size: moving the suggestion threshold or
        editing again re-runs nothing."""
        return self._extracted.get(photo, side=size, compute=lambda: self._extract_photo(photo, size=size))

    def _extract_photo(self, photo: np.ndarray, *, size: int) -> ExtractedPhoto:
        from fundus_studio.extract import label_map_from_preprocessed
        from fundus_studio.photo_edit import ExtractedPhoto
        from fundus_studio.preprocess import preprocess
        from fundus_studio.suggestions import LesionSuggestions

        pre = preprocess(photo, size=size)
        suggestions, exclude = None, None
        if self.has("unet"):
            segmenter = self._get("unet")
            suggestions = LesionSuggestions(segmenter.lesion_probabilities(pre.photo, pre.fov))
            # The vessel search skips what the U-Net would call a lesion at its own thresholds, as extract() does.
            exclude = np.zeros(pre.fov.shape, bool)
            for k, t in segmenter.class_thresholds.items():
                if k in suggestions.probabilities:
                    exclude |= suggestions.probabilities[k] >= t
        label_map = label_map_from_preprocessed(pre.photo, pre.fov, exclude=exclude)
        return ExtractedPhoto(photo=pre.photo, label_map=label_map, suggestions=suggestions)

    def lesion_probabilities(self, photo: np.ndarray, *, size: int = 512) -> LesionSuggestions | None:
        """The lesion U-Net's per-class probabilities on a photo, in its squared geometry (cached with
        :meth:`extract_photo`); None without a ``unet`` checkpoint."""
        return self.extract_photo(photo, size=size).suggestions

    def edit_photo(self, photo: np.ndarray, original_map: np.ndarray, edited_map: np.ndarray, *,
                   seed: int) -> np.ndarray:
        """A real photo edited through its map: ``photo`` ``(S, S, 3)`` (``extract_photo(...).photo``) kept
        wherever ``edited_map`` equals ``original_map``; the changed regions rendered in the photo's own
        style and Poisson-blended in (:mod:`fundus_studio.photo_edit`). ``seed`` is unused by a
        renderer with a style encoder (the photo sets the style) and seeds one without."""
        from fundus_studio import photo_edit

        return photo_edit.edit_photo(photo, original_map, edited_map,
                                     render=lambda m: self.render(m, seed=seed, style=photo))

    def warm_style(self, photo: np.ndarray) -> None:
        """Measure a style photo's statistics now (an extraction: seconds), so its first render is quick."""
        self._get("spade").styles.get(photo, side=max(photo.shape[:2]))

    def classify_grade(self, label_map: np.ndarray) -> np.ndarray | None:
        """Grade probabilities ``(NUM_GRADES,)`` of a label map, or None without a classifier."""
        if not self.has("grade_classifier"):
            return None
        return self._get("grade_classifier").probabilities(label_map)

    # --- description -----------------------------------------------------------------------------

    def checkpoint_hashes(self) -> dict[str, str]:
        """Short SHA-256 of each present checkpoint's weights (recorded in exports' provenance)."""
        out = {}
        for name in MODEL_ROLES:
            if self.has(name):
                try:
                    info = json.loads(self.path(name).with_suffix(".json").read_text())
                    out[name] = str(info.get("sha256", ""))[:16]
                except (OSError, json.JSONDecodeError):
                    out[name] = "unreadable"
        from fundus_studio.calibration import CALIBRATION, calibration_hash

        if (calibrated := calibration_hash(self.checkpoints)) is not None:
            out[CALIBRATION] = calibrated  # it changes what the flow prior's maps contain
        return out

    def describe(self) -> str:
        """Markdown: the loaded checkpoints, their cards, and how to use others."""
        lines = [f"### Checkpoints in `{self.checkpoints}`", "", "| model | role | status | trained on | steps |",
                 "|---|---|---|---|---|"]
        for name, role in MODEL_ROLES.items():
            if not self.has(name):
                lines.append(f"| {name} | {role} | missing | | |")
                continue
            try:
                info = json.loads(self.path(name).with_suffix(".json").read_text())
                data = info.get("data") or {}
                real = data.get("real") or [{}]
                trained = data.get("description") or data.get("dataset") or real[0].get("dataset") or "?"
                if data.get("preset"):
                    trained += f" (preset {data['preset']})"
                lines.append(f"| {name} | {role} | present | {trained} | {info.get('step', '')} |")
            except (OSError, json.JSONDecodeError) as err:
                lines.append(f"| {name} | {role} | unreadable ({err}) | | |")
        card = self.checkpoints / "README.md"
        if card.is_file():  # its markdown, without the YAML metadata that model zoos read
            lines += ["", split_front_matter(card.read_text())[1].lstrip("\n")]
        lines += [
            "",
            "### Other checkpoints",
            "Train on IDRiD or FGADR (see `docs/training.md`), then start the studio on the new folder:",
            "`python app.py --checkpoints runs/my-checkpoints`.",
        ]
        return "\n".join(lines)
